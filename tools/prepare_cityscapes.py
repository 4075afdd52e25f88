"""Make Cityscapes' ``*_gtFine_labelTrainIds.png`` from the official download.

Unzip ``gtFine_trainvaltest.zip`` and ``leftImg8bit_trainvaltest.zip`` into one folder, then::

    python tools/prepare_cityscapes.py data/cityscapes --nproc 8
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

# the checkout's demo/ (the data makers) and this mmrepvgg come first
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from demo.datasets import prepare_cityscapes  # noqa: E402
from mmrepvgg.cli import positive_int, run_tool  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Prepare; a folder without the Cityscapes files prints one ``error:`` line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', help='Cityscapes root (holds leftImg8bit/ and gtFine/)')
    parser.add_argument('--gt-dir', default='gtFine', help='annotation folder under root')
    parser.add_argument('--nproc', type=positive_int, default=1, help='worker processes')
    args = parser.parse_args(argv)
    return run_tool(lambda: prepare_cityscapes(args.root, gt_dir=args.gt_dir, nproc=args.nproc))


if __name__ == '__main__':
    sys.exit(main())
