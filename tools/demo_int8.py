"""`make demo-int8`: the `make demo-cls` digits classifier -> fp32 and int8 ONNX (ONNX Runtime)
-> held-out top-1 of both, CPU speed ratio, layer sensitivity; the tiny Cityscapes PSPNet of
`make demo` -> ONNX with the same mIoU as PyTorch.

    python tools/demo_int8.py [--work-dir work_dirs/demo_int8] [--calib-method minmax]

Fails if int8 top-1 < fp32 top-1 - 2 points or the PSPNet's ONNX mIoU differs by > 0.1.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

# the checkout's demo/ and projects/ (and this mmrepvgg) come first
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from demo.demo_int8 import run_int8_demo
from mmrepvgg.cli import non_negative_int, positive_int, run_tool
from mmrepvgg.deploy.quantize import CALIBRATORS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/demo_int8',
                        help='output folder (emptied)')
    parser.add_argument('--cls-work-dir', default='work_dirs/demo_cls',
                        help='make demo-cls output: its checkpoint is reused, else trained there')
    parser.add_argument('--seg-work-dir', default='work_dirs/demo',
                        help='make demo output: its checkpoint is reused, else trained there')
    parser.add_argument('--no-seg', action='store_true', help='skip the PSPNet export check')
    parser.add_argument('--calib-method', choices=list(CALIBRATORS), default='minmax')
    parser.add_argument('--per-tensor', action='store_true', help='per-tensor weight scales')
    parser.add_argument('--keep-float', type=non_negative_int, default=0, metavar='K',
                        help='keep the K most sensitive layers in float')
    parser.add_argument('--max-drop', type=float, default=2.0,
                        help='fail if int8 top-1 < fp32 top-1 - this (points)')
    parser.add_argument('--threads', type=positive_int,
                        help='threads (default: 1 on a busy machine, else all cores)')
    args = parser.parse_args(argv)
    results = []
    status = run_tool(lambda: results.append(run_int8_demo(
        args.work_dir, args.cls_work_dir, None if args.no_seg else args.seg_work_dir,
        args.calib_method, not args.per_tensor, args.keep_float, args.max_drop, args.threads)))
    return status or (0 if results[0].ok else 1)


if __name__ == '__main__':
    sys.exit(main())
