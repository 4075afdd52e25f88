"""Print how exactly re-parameterization reproduces the training-time RepVGG.

For every arch and dilation plan (or the ones given): the max difference between the
folded and the multi-branch backbone (eval mode, randomized BN statistics), relative to the
output scale, in float64 and in float32 on both CPU conv backends.

Example::

    python tools/check_exactness.py                 # all 14 archs x {none, full, fast}
    python tools/check_exactness.py --arch B2 --plan fast
    python tools/check_exactness.py --block QARepVGGBlock   # QARepVGG (every arch but D2se)
"""
from __future__ import annotations

import argparse
import sys

from mmengine.utils import ProgressBar

from mmrepvgg.apis.cli import fail
from mmrepvgg.deploy.exactness import fold_errors
from mmrepvgg.models import BLOCK_TYPES
from mmrepvgg.models.arch import ARCH_ZOO, get_arch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--arch', nargs='+', help='arch names (default: every arch the block '
                        'type takes: all 14 for RepVGGBlock, all but D2se for QARepVGGBlock)')
    parser.add_argument('--plan', nargs='+', default=['none', 'full', 'fast'],
                        choices=['none', 'full', 'fast'], help='dilation plans')
    parser.add_argument('--shape', nargs=2, type=int, default=(40, 48), metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--block', default='RepVGGBlock', choices=BLOCK_TYPES,
                        help='block type of every layer')
    args = parser.parse_args(argv)
    if args.arch is None:
        args.arch = [a for a in ARCH_ZOO
                     if args.block == 'RepVGGBlock' or not ARCH_ZOO[a].use_se]
    for arch in args.arch:  # every name before any work: an unknown one is a one-line error
        try:
            get_arch(arch)
        except KeyError as err:
            fail(err.args[0])
    cases = [(a, p) for a in args.arch for p in args.plan]
    rows, bar = [], ProgressBar(len(cases))
    for arch, plan in cases:
        rows.append((arch, plan, fold_errors(arch, None if plan == 'none' else plan,
                                             tuple(args.shape), args.seed, args.block)))
        bar.update()
    print(f'\n\n{args.block}\n')
    print('| arch | plan | fp64 | fp32 reference backend | fp32 default backend |')
    print('|---|---|---|---|---|')
    for arch, plan, e in rows:
        print(f'| {arch} | {plan} | {e.fp64:.1e} | {e.fp32_reference:.1e} | {e.fp32_default:.1e} |')
    worst = [max(getattr(e, f) for *_, e in rows) for f in ('fp64', 'fp32_reference', 'fp32_default')]
    print(f'| **worst** | | {worst[0]:.1e} | {worst[1]:.1e} | {worst[2]:.1e} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
