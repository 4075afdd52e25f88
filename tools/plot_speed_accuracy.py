"""Accuracy (from configs/metafile.yml) vs measured speed (a tools/benchmark.py json), Fig. 1.

Example:
    python tools/plot_speed_accuracy.py work_dirs/bench_cpu.json --table 4 \
        --out docs/speed_accuracy_cpu.png --force
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)


def main(argv: list[str] | None = None) -> int:
    """Plot; bad input (a missing json, an existing figure) prints one ``error:`` line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('benchmark', help='json written by tools/benchmark.py --out')
    parser.add_argument('--out', required=True, help='figure path (.png, .pdf, .svg)')
    parser.add_argument('--force', action='store_true', help='overwrite --out')
    parser.add_argument('--table', type=int, default=4, choices=[4, 5, 8],
                        help='paper table of the accuracies (4: 120 epochs, 5: 200 epochs, '
                        '8: Cityscapes mIoU)')
    parser.add_argument('--variants', nargs='+', default=['deploy', 'fused'])
    parser.add_argument('--metafile', help='default: configs/metafile.yml')
    parser.add_argument('--title')
    args = parser.parse_args(argv)
    from projects.benchmark.plot import plot_speed_accuracy
    from mmrepvgg.cli import run_tool
    from mmrepvgg.utils.errors import user_errors

    def work() -> None:
        with open(args.benchmark) as f:
            report = json.load(f)
        inputs = [args.benchmark] + ([args.metafile] if args.metafile else [])
        metafile = args.metafile or osp.join(REPO, 'configs', 'metafile.yml')
        points = plot_speed_accuracy(report, args.out, metafile, args.table, args.variants,
                                     args.title, force=args.force, inputs=inputs)
        for p in points:
            print(f"{p['model']:<16} {p['variant']:<7} {p['speed']:10.2f} examples/s  "
                  f"{p['accuracy']:.2f}")
        print(f'saved {args.out}')

    # ValueError: a json that is no benchmark report, a file name that is no figure
    return run_tool(work, user_errors() + (ValueError, KeyError))


if __name__ == '__main__':
    sys.exit(main())
