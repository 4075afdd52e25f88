"""Train a segmentor (mmseg config) or a classifier (mmpretrain config) with mmrepvgg.

Examples::

    python tools/train.py configs/pspnet_repvgg-b2_cityscapes.py
    bash tools/dist_train.sh configs/pspnet_repvgg-b2_cityscapes.py 8
    python tools/train.py configs/repvgg-b1g2_in1k.py --work-dir work_dirs/b1g2 --resume
"""
from __future__ import annotations

import argparse
import os
import sys

from mmengine.config import DictAction

import mmrepvgg  # noqa: F401  (registers the backbone and the deploy hook)
from mmrepvgg.apis import PretrainedNotFoundError, prepare_train_config, train
from mmrepvgg.checkpoint import install_mmengine_loader


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
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow full unpickling of checkpoints that weights-only loading '
                        'refuses (load_from, --resume); only for files you trust')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value (e.g. model.backbone.init_cfg=None)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    install_mmengine_loader(trust=args.trust_checkpoint)
    resume = True if args.resume == 'auto' else (args.resume or False)
    cfg = prepare_train_config(args.config, work_dir=args.work_dir, resume=resume,
                               amp=args.amp, cfg_options=args.cfg_options,
                               launcher=args.launcher)
    if args.auto_scale_lr:
        cfg.auto_scale_lr = dict(cfg.get('auto_scale_lr') or {}, enable=True)
    try:
        train(cfg)
    except PretrainedNotFoundError as err:  # a user error: the message, no traceback
        sys.exit(f'error: {err}')


if __name__ == '__main__':
    main()
