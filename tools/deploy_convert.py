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
import sys

import mmrepvgg  # noqa: F401  (registers the backbone)
from mmrepvgg.cli import add_checkpoint_args, load_tool_config, positive_int, run_tool
from mmrepvgg.deploy import DEFAULT_TOLERANCE, convert_checkpoint


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
