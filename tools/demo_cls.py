"""`make demo-cls`: scikit-learn's digits as an image folder -> train a RepVGG classifier
(mmpretrain) on the CPU -> test as trained and deployed (same accuracy, checked) -> summary.

    python tools/demo_cls.py [--work-dir work_dirs/demo_cls] [--max-epochs 8]
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

# the checkout's demo/ and projects/ (and this mmrepvgg) come first
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from demo.demos import CLS_DEMO_CONFIG, run_cls_demo
from mmrepvgg.cli import positive_int, run_tool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/demo_cls',
                        help='output folder (emptied)')
    parser.add_argument('--config', default=CLS_DEMO_CONFIG)
    parser.add_argument('--max-epochs', type=positive_int,
                        help='training epochs (config: 8)')
    parser.add_argument('--threads', type=positive_int,
                        help='torch threads (default: 1 on a busy machine, else all cores)')
    parser.add_argument('--min-accuracy', type=float, default=80.0,
                        help='fail below this test top-1 (%%); chance is 10%%')
    args = parser.parse_args(argv)
    results = []
    status = run_tool(lambda: results.append(
        run_cls_demo(args.work_dir, args.config, args.max_epochs, threads=args.threads)))
    if status:
        return status
    result = results[0]
    ok = result.same and result.trained >= args.min_accuracy
    if result.trained < args.min_accuracy:
        print(f'Top-1 {result.trained:.2f} is below --min-accuracy {args.min_accuracy}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
