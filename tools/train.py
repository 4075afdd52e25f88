"""Train a segmentor (mmseg config) or a classifier (mmpretrain config) with mmrepvgg.

Examples::

    python tools/train.py configs/pspnet_repvgg-b2_cityscapes.py
    bash tools/dist_train.sh configs/pspnet_repvgg-b2_cityscapes.py 8
    python tools/train.py configs/repvgg-b1g2_in1k.py --work-dir work_dirs/b1g2 --resume

``load_from`` is loaded strictly (every missing, unexpected or mis-shaped key is an error).
"""
from __future__ import annotations

import argparse
import sys

import mmrepvgg  # noqa: F401  (registers the backbone and the deploy hook)
from mmrepvgg.checkpoint import install_mmengine_loader
from mmrepvgg.cli import add_runner_args, parse_runner_args, run_tool
from mmrepvgg.runner import close_distributed, prepare_train_config, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model with a RepVGG backbone')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the latest checkpoint in the work dir, or from the given one')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (the paper trains in fp32)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by (actual batch / base batch)')
    return parse_runner_args(add_runner_args(parser), argv)


def main(argv: list[str] | None = None) -> int:
    """Train; bad input (missing data or weights, an unsafe file) prints one ``error:`` line."""
    args = parse_args(argv)
    install_mmengine_loader(trust=args.trust_checkpoint)

    def work() -> None:
        resume = True if args.resume == 'auto' else (args.resume or False)
        cfg = prepare_train_config(args.config, work_dir=args.work_dir, resume=resume,
                                   amp=args.amp, cfg_options=args.cfg_options,
                                   launcher=args.launcher)
        if args.auto_scale_lr:
            cfg.auto_scale_lr = dict(cfg.get('auto_scale_lr') or {}, enable=True)
        train(cfg)
        close_distributed()

    return run_tool(work)


if __name__ == '__main__':
    sys.exit(main())
