"""Write a tiny synthetic Cityscapes in the official layout (polygons, label maps, images).

    python tools/make_tiny_cityscapes.py data/tiny_cityscapes --prepare

ROOT must be new or empty, or a folder this tool (or a demo) made, which is emptied first;
a folder holding anything else is refused and left as it is.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

# the checkout's demo/ (the data makers) and this mmrepvgg come first
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from demo.datasets import make_tiny_cityscapes, prepare_cityscapes  # noqa: E402
from mmrepvgg.cli import positive_int, run_tool  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', help='output folder (new, empty, or made by this tool)')
    parser.add_argument('--num-train', type=positive_int, default=8)
    parser.add_argument('--num-val', type=positive_int, default=4)
    parser.add_argument('--size', type=positive_int, nargs=2, default=(128, 256),
                        metavar=('H', 'W'), help='image size')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--prepare', action='store_true',
                        help='also make the train-id maps (tools/prepare_cityscapes.py)')
    args = parser.parse_args(argv)

    def work() -> None:
        make_tiny_cityscapes(args.root, args.num_train, args.num_val, tuple(args.size),
                             args.seed)
        if args.prepare:
            prepare_cityscapes(args.root)

    return run_tool(work)


if __name__ == '__main__':
    sys.exit(main())
