"""RepVGG vs QARepVGG on scikit-learn's digits: fp32 top-1, int8 top-1 and int8 weight error.

Trains the `make demo-cls` classifier (configs/demo/repvgg-small_digits.py) and its QARepVGG
twin (configs/demo/qarepvgg-small_digits.py, same recipe) for each seed on the CPU, then
reports fp32 top-1 as trained and deployed; int8 top-1 of the deployed model under ONNX
Runtime static quantization (the quantizer of tools/quantize.py: QDQ, int8 weights per
channel and per tensor, int8 activations, calibrated on 256 train images; the headline
columns use minmax, the tool's default, and every --calibrators entry is reported); and the
per-layer int8 SQNR of the folded kernels (per channel and per tensor; min and median over
layers), as json and markdown in WORK_DIR.

    python tools/compare_qa_digits.py [--seeds 0 1 2] [--work-dir work_dirs/compare_qa_digits]
        [--max-epochs 8] [--threads 1] [--calibrators minmax entropy percentile]
"""
from __future__ import annotations

import argparse
import functools
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    from mmrepvgg.cli import positive_int, run_tool
    from projects.qa_digits.qa_compare import (
        INT8_CALIBRATORS,
        compare_blocks,
        comparison_markdown,
        int8_top1,
    )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--work-dir', default='work_dirs/compare_qa_digits',
                        help='output folder (emptied if a previous run made it)')
    parser.add_argument('--max-epochs', type=positive_int, help='training epochs (config: 8)')
    parser.add_argument('--threads', type=positive_int,
                        help='torch and ONNX Runtime threads (default: 1 on a busy machine, '
                        'else all cores)')
    parser.add_argument('--calibrators', nargs='+', choices=INT8_CALIBRATORS,
                        default=list(INT8_CALIBRATORS),
                        help='ONNX Runtime calibrators of the int8 step; the first one gives '
                        'the headline int8 columns (default: minmax entropy percentile)')
    args = parser.parse_args(argv)
    repeated = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
    if repeated:
        from mmrepvgg.cli import print_error
        print_error(f'--seeds: seed {", ".join(map(str, repeated))} given more than once; each '
                    'seed trains one pair of models into its own folder')
        return 1

    def work() -> None:
        int8 = functools.partial(int8_top1, calibrators=tuple(args.calibrators))
        report = compare_blocks(args.work_dir, tuple(args.seeds), max_epochs=args.max_epochs,
                                threads=args.threads, int8=int8)
        print(comparison_markdown(report))
        print(f'Wrote {osp.join(args.work_dir, "qa_digits.json")} and qa_digits.md')

    return run_tool(work)


if __name__ == '__main__':
    sys.exit(main())
