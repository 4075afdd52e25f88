"""RepVGG vs QARepVGG on scikit-learn's digits: fp32 top-1, int8 weight error (and int8 top-1).

Trains the `make demo-cls` classifier (configs/demo/repvgg-small_digits.py) and its QARepVGG
twin (configs/demo/qarepvgg-small_digits.py, same recipe) for each seed on the CPU, then
reports fp32 top-1 as trained and deployed, and the per-layer int8 SQNR of the folded kernels
(per channel and per tensor; min and median over layers), as json and markdown in WORK_DIR.
int8 top-1 needs the ONNX Runtime quantizer, which is not wired in yet: the report says
"not measured" (mmrepvgg.apis.qa_compare.int8_top1 is where it plugs in).

    python tools/compare_qa_digits.py [--seeds 0 1 2] [--work-dir work_dirs/compare_qa_digits]
        [--max-epochs 8] [--threads 1]
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--work-dir', default='work_dirs/compare_qa_digits',
                        help='output folder (emptied if a previous run made it)')
    parser.add_argument('--max-epochs', type=int, help='training epochs (config: 8)')
    parser.add_argument('--threads', type=int,
                        help='torch threads (default: 1 on a busy machine, else all cores)')
    args = parser.parse_args(argv)
    from mmrepvgg.apis.qa_compare import compare_blocks, comparison_markdown
    try:
        report = compare_blocks(args.work_dir, tuple(args.seeds), max_epochs=args.max_epochs,
                                threads=args.threads)
    except (FileExistsError, ValueError) as err:
        print(f'compare_qa_digits: {err}', file=sys.stderr)
        return 1
    print(comparison_markdown(report))
    print(f'Wrote {osp.join(args.work_dir, "qa_digits.json")} and qa_digits.md')
    return 0


if __name__ == '__main__':
    sys.exit(main())
