"""What every command-line tool shares: runner options and the one way to report an error.

A tool runs its work through :func:`run_tool`: bad input (a missing or unsafe file, a
config that builds nothing, an output that must not be written, weights that cannot be
folded) is printed as one plain line on stderr, ``error: <message>``, and the tool exits
with status 1 (130 after Ctrl-C), without a traceback and without mmengine's logger prefix.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, NoReturn

from mmengine.config import Config, DictAction

from .deploy.keymaps import SOURCES
from .utils.config import merge_options
from .utils.errors import error_message, user_errors


_TRUST_HELP = ('allow full unpickling of checkpoints that weights-only loading refuses, and '
               'the config code they may carry (load_from, --resume, init_cfg): it can run '
               'code from the file; only for files you trust')


def add_runner_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--trust-checkpoint``, ``--cfg-options``, ``--launcher`` and ``--local-rank``.

    Args:
        parser: The tool's parser.

    Returns:
        The same parser.
    """
    parser.add_argument('--trust-checkpoint', action='store_true', help=_TRUST_HELP)
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value (e.g. model.backbone.init_cfg=None)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def add_checkpoint_args(parser: argparse.ArgumentParser, force_help: str = 'overwrite OUT',
                        cfg_options: bool = True) -> argparse.ArgumentParser:
    """Add the options of the tools that read a checkpoint and write a file.

    ``--source`` (checkpoint layout), ``--force``, ``--trust-checkpoint`` and, for tools that
    take a config, ``--cfg-options`` (see :func:`load_tool_config`).

    Args:
        parser: The tool's parser.
        force_help: What ``--force`` overwrites.
        cfg_options: Add ``--cfg-options``.

    Returns:
        The same parser.
    """
    parser.add_argument('--source', choices=SOURCES,
                        help='checkpoint layout (default: detected from the keys)')
    parser.add_argument('--force', action='store_true', help=force_help)
    parser.add_argument('--trust-checkpoint', action='store_true', help=_TRUST_HELP)
    if cfg_options:
        parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                            help='override config settings, as in tools/train.py')
    return parser


def positive_int(text: str) -> int:
    """An ``argparse`` type: an int >= 1 (counts of batches, rounds, images, threads)."""
    value = int(text)  # a ValueError becomes argparse's "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, got {value}')
    return value


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: an int >= 0 (warm-up runs, layers kept in float)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be at least 0, got {value}')
    return value


def load_tool_config(args: argparse.Namespace) -> Config:
    """``args.config`` loaded, with ``args.cfg_options`` merged."""
    cfg = Config.fromfile(args.config)
    return merge_options(cfg, args.cfg_options)


def parse_runner_args(parser: argparse.ArgumentParser,
                      argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, and export ``LOCAL_RANK`` for launchers that pass ``--local-rank``."""
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def print_error(message: str) -> None:
    """Print ``error: <message>`` on stderr (continuation lines indented as given)."""
    print(f'error: {message}', file=sys.stderr, flush=True)


def fail(message: str, status: int = 1) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with ``status``."""
    print_error(message)
    sys.exit(status)


def run_tool(work: Callable[[], Any],
             errors: tuple[type[BaseException], ...] | None = None) -> int:
    """Run a tool's work and turn bad input into one ``error:`` line and an exit status.

    Args:
        work: The tool's work.
        errors: The errors to report as one line (default: :func:`user_errors`).

    Returns:
        0 if ``work`` returned; 1 after one of ``errors``; 130 after Ctrl-C. Other
        exceptions propagate with their traceback.
    """
    errors = user_errors() if errors is None else errors
    try:
        work()
    except KeyboardInterrupt:
        print_error('interrupted')
        return 130
    except errors as err:
        print_error(error_message(err))
        return 1
    return 0
