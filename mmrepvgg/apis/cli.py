"""Command-line options shared by ``tools/train.py`` and ``tools/test.py``."""
from __future__ import annotations

import argparse
import os

from mmengine.config import DictAction


def add_runner_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--trust-checkpoint``, ``--cfg-options``, ``--launcher`` and ``--local-rank``.

    Args:
        parser: The tool's parser.

    Returns:
        The same parser.
    """
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow full unpickling of checkpoints that weights-only loading '
                        'refuses (load_from, --resume); only for files you trust')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value (e.g. model.backbone.init_cfg=None)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def parse_runner_args(parser: argparse.ArgumentParser,
                      argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, and export ``LOCAL_RANK`` for launchers that pass ``--local-rank``."""
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args
