"""`make demo`: tiny Cityscapes -> train PSPNet-RepVGG on the CPU -> test as trained and
deployed (same mIoU, checked) -> prediction images -> tools/deploy_convert.py -> summary.

    python tools/demo.py [--work-dir work_dirs/demo] [--max-iters 200]
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

# the checkout's demo/ and projects/ (and this mmrepvgg) come first
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from demo.demos import SEG_DEMO_CONFIG, run_seg_demo
from mmrepvgg.cli import positive_int, run_tool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/demo', help='output folder (emptied)')
    parser.add_argument('--config', default=SEG_DEMO_CONFIG)
    parser.add_argument('--max-iters', type=positive_int,
                        help='training iterations (config: 200)')
    parser.add_argument('--num-train', type=positive_int, default=8,
                        help='synthetic train images')
    parser.add_argument('--num-val', type=positive_int, default=4, help='synthetic val images')
    parser.add_argument('--threads', type=positive_int,
                        help='torch threads (default: 1 on a busy machine, else all cores)')
    parser.add_argument('--no-convert', action='store_true',
                        help='skip tools/deploy_convert.py')
    args = parser.parse_args(argv)
    results = []
    status = run_tool(lambda: results.append(run_seg_demo(
        args.work_dir, args.config, args.max_iters, args.num_train, args.num_val,
        convert=not args.no_convert, threads=args.threads)))
    return status or (0 if results[0].same else 1)


if __name__ == '__main__':
    sys.exit(main())
