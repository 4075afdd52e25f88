"""Print how exactly re-parameterization reproduces the training-time RepVGG.

For every arch and dilation plan (or the ones given): the max difference between the
folded and the multi-branch backbone (eval mode, randomized BN statistics), relative to the
output scale, in float64 and in float32 on both CPU conv backends.

With ``--dtype``: how far the folded (and the training-time) backbone drifts in fp16/bf16
from itself in fp32 (:func:`projects.exactness.exactness.precision_errors`; default archs
A0 B0 B2 at 224x224).

Example::

    python tools/check_exactness.py                 # all 14 archs x {none, full, fast}
    python tools/check_exactness.py --arch B2 --plan fast
    python tools/check_exactness.py --block QARepVGGBlock   # QARepVGG (every arch but D2se)
    python tools/check_exactness.py --dtype fp16 bf16            # A0, B0, B2 on the CPU
    python tools/check_exactness.py --dtype fp16 bf16 --device cuda
    python tools/check_exactness.py --dtype fp16 bf16 --checkpoint CONFIG CKPT  # trained
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

# the checkout's demo/ and projects/ (and this mmrepvgg) come first
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmrepvgg.cli import fail, positive_int, print_error, run_tool
from mmrepvgg.models import BLOCK_TYPES
from mmrepvgg.models.arch import get_arch
from mmrepvgg.utils.errors import user_errors
from projects.benchmark.device import resolve_device
from projects.exactness.exactness import (
    PLANS,
    PRECISIONS,
    block_archs,
    fold_error_table,
    fold_errors_markdown,
    precision_markdown,
    precision_report,
)


def _precision_table(args: argparse.Namespace) -> None:
    resolve_device(args.device, '--device')  # before any model is built
    rows, notes = precision_report(args.dtype, args.arch, args.shape and tuple(args.shape),
                                   args.batch, args.seed, args.device, args.checkpoint)
    print('\n\n' + precision_markdown(rows, notes, args.device))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--arch', nargs='+', help='arch names (default: every arch the block '
                        'type takes: all 14 for RepVGGBlock, all but D2se for QARepVGGBlock; '
                        'with --dtype: A0 B0 B2)')
    parser.add_argument('--plan', nargs='+', default=list(PLANS), choices=PLANS,
                        help='dilation plans')
    parser.add_argument('--shape', nargs=2, type=positive_int, metavar=('H', 'W'),
                        help='input size (default 40 48; with --dtype 224 224)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--block', default='RepVGGBlock', choices=BLOCK_TYPES,
                        help='block type of every layer')
    parser.add_argument('--dtype', nargs='+', choices=list(PRECISIONS),
                        help='measure these precisions of the folded model instead')
    parser.add_argument('--device', default='cpu', help='device for --dtype')
    parser.add_argument('--batch', type=positive_int,
                        help='batch for --dtype (default 1; images for --checkpoint: 8)')
    parser.add_argument('--checkpoint', nargs=2, metavar=('CONFIG', 'CKPT'),
                        help='with --dtype: also measure this trained model (its logits, on '
                        'its test images if present)')
    args = parser.parse_args(argv)
    for arch in args.arch or []:  # every name before any work: an unknown one is a one-line error
        try:
            spec = get_arch(arch)
        except KeyError as err:
            fail(err.args[0])
        if not args.dtype and args.block != 'RepVGGBlock' and spec.use_se:
            print_error(f'--arch {arch}: {args.block} does not take an SE arch; the archs it '
                        f'takes: {" ".join(block_archs(args.block))}')
            return 1
    if args.dtype:
        # a missing or unsafe checkpoint, a device that is not there: one error line
        return run_tool(lambda: _precision_table(args), user_errors() + (ValueError, ))

    def fold_table() -> None:
        rows = fold_error_table(args.arch, args.plan, tuple(args.shape or (40, 48)), args.seed,
                                args.block)
        print('\n\n' + fold_errors_markdown(rows, args.block))

    # a block / arch pair the models refuse (FoldError, ValueError): one error line
    return run_tool(fold_table, user_errors() + (ValueError, ))


if __name__ == '__main__':
    sys.exit(main())
