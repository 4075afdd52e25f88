"""Fold a training-time checkpoint into the deployed (plain 3x3-conv) model and verify it.

Examples::

    # our own checkpoint (PSPNet or classifier), verified on an input of the config's size
    python tools/deploy_convert.py configs/pspnet_repvgg-b2_cityscapes.py \\
        work_dirs/pspnet_repvgg-b2_cityscapes/iter_40000.pth deploy/pspnet_b2_deploy.pth --verify
    # the official RepVGG-A0-train.pth into our ImageNet classifier config
    python tools/deploy_convert.py configs/repvgg-a0_in1k.py RepVGG-A0-train.pth \\
        deploy/repvgg-a0_deploy.pth --source official --verify

Test the result with ``--cfg-options model.backbone.deploy=True``.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from mmengine.config import Config
from mmengine.logging import print_log

import mmrepvgg  # noqa: F401  (registers the backbone)
from mmrepvgg.checkpoint import save_checkpoint_atomic
from mmrepvgg.cli import add_checkpoint_args, load_tool_config, positive_int, run_tool
from mmrepvgg.deploy import (DEFAULT_TOLERANCE, FoldReport, deployed_checkpoint,
                             input_shape_from_config, load_model, source_files)
from mmrepvgg.utils.errors import CheckpointError
from mmrepvgg.utils.fileio import check_output_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='mmseg or mmpretrain config of the model')
    parser.add_argument('checkpoint', help='training-time checkpoint')
    parser.add_argument('out', help='deployed checkpoint to write')
    parser.add_argument('--verify', action='store_true',
                        help='compare outputs before and after folding on a random input of '
                        'the config\'s size; fail above --tolerance')
    parser.add_argument('--tolerance', type=float, default=DEFAULT_TOLERANCE,
                        help='max relative output difference for --verify')
    parser.add_argument('--shape', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help='verification input size (default: from the config)')
    add_checkpoint_args(parser, force_help='overwrite OUT')
    return parser.parse_args(argv)


def convert_checkpoint(config: str | Config, checkpoint: str | os.PathLike,
                       out: str | os.PathLike, source: str | None = None, verify: bool = True,
                       force: bool = False, trust: bool = False,
                       input_shape: tuple[int, int] | None = None,
                       tolerance: float | None = DEFAULT_TOLERANCE, seed: int = 0) -> FoldReport:
    """Training-time checkpoint -> deployed checkpoint for ``config``'s model, written
    atomically (:func:`mmrepvgg.deploy.convert.deployed_checkpoint` makes it).

    Args:
        config: mmseg or mmpretrain config (path or Config).
        checkpoint: Training-time checkpoint (any layout).
        out: Destination; never an input, never an existing file unless ``force`` (checked
            before any work).
        source: Checkpoint layout; None: detect it.
        verify: Compare outputs before and after folding on a random input.
        force: Overwrite ``out``.
        trust: Allow full unpickling of the checkpoint.
        input_shape: ``(H, W)`` of the verification input (default: from the config).
        tolerance: Max relative output difference (None: report only).
        seed: Seed of the verification input.

    Returns:
        The :class:`~mmrepvgg.deploy.verify.FoldReport`.
    """
    sources = source_files(config, checkpoint)
    check_output_path(out, force, sources)
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    model, deployed, meta = load_model(cfg, checkpoint, source, trust)
    if deployed:
        raise CheckpointError(f'{checkpoint} is already deployed (it has branch_reparam '
                              'weights); test it with model.backbone.deploy=True')
    inputs = None
    if verify:
        h, w = input_shape or input_shape_from_config(cfg)
        inputs = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))
    result, report = deployed_checkpoint(model, cfg, inputs, tolerance, meta,
                                         source=meta['source_layout'],
                                         source_checkpoint=str(checkpoint))
    print_log(report.summary(), logger='current')
    save_checkpoint_atomic(result, out, force=force, inputs=sources)
    print_log(f'Wrote deployed checkpoint {out}', logger='current')
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; bad input prints one ``error:`` line and returns 1."""
    args = parse_args(argv)

    def work() -> None:
        cfg = load_tool_config(args)
        convert_checkpoint(cfg, args.checkpoint, args.out, source=args.source,
                           verify=args.verify, force=args.force, trust=args.trust_checkpoint,
                           input_shape=tuple(args.shape) if args.shape else None,
                           tolerance=args.tolerance)

    return run_tool(work)


if __name__ == '__main__':
    sys.exit(main())
