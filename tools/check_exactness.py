"""Print how exactly re-parameterization reproduces the training-time RepVGG.

For every arch and dilation plan (or the ones given): the max difference between the
folded and the multi-branch backbone (eval mode, randomized BN statistics), relative to the
output scale, in float64 and in float32 on both CPU conv backends.

With ``--dtype``: how far the folded (and the training-time) backbone drifts in fp16/bf16
from itself in fp32 (:func:`mmrepvgg.deploy.exactness.precision_errors`; default archs
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
import sys
from pathlib import Path

from mmengine.utils import ProgressBar

from mmrepvgg.analysis.precision import resolve_device
from mmrepvgg.apis.cli import fail, positive_int, run_tool, user_errors
from mmrepvgg.deploy.exactness import (PRECISIONS, checkpoint_precision_errors, fold_errors,
                                       precision_errors)
from mmrepvgg.models import BLOCK_TYPES
from mmrepvgg.models.arch import ARCH_ZOO, get_arch


def _precision_table(args: argparse.Namespace) -> None:
    resolve_device(args.device, '--device')  # before any model is built
    rows, notes = [], []
    if args.checkpoint:
        config, ckpt = args.checkpoint
        found, inputs = checkpoint_precision_errors(
            config, ckpt, tuple(args.dtype), tuple(args.shape) if args.shape else None,
            args.batch if args.batch > 1 else 8, args.seed, args.device)
        rows += found
        notes.append(f'{Path(config).stem}: trained weights, {inputs}')
    if args.arch or not args.checkpoint:
        archs = args.arch or ['A0', 'B0', 'B2']
        shape = tuple(args.shape or (224, 224))
        bar = ProgressBar(len(archs))
        for arch in archs:
            rows += precision_errors(arch, tuple(args.dtype), shape, args.batch, args.seed,
                                     args.device)
            bar.update()
        notes.append(f'{", ".join(archs)}: backbone output, random weights with BN statistics '
                     f'estimated on a random input, input {args.batch}x3x{shape[0]}x{shape[1]}')
    print(f'\n\nOutput in fp16/bf16 vs the same model in fp32 on {args.device} ('
          + '; '.join(notes) + '):\n')
    print('| model | dtype | deployed: max rel | deployed: rel L2 | training-time: max rel |')
    print('|---|---|---|---|---|')
    for r in rows:
        if r.skipped:
            print(f'| {r.arch} | {r.dtype} | not run: {r.skipped} | | |')
        else:
            print(f'| {r.arch} | {r.dtype} | {r.deploy_max:.1e} | {r.deploy_l2:.1e} | '
                  f'{r.train_max:.1e} |')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--arch', nargs='+', help='arch names (default: every arch the block '
                        'type takes: all 14 for RepVGGBlock, all but D2se for QARepVGGBlock; '
                        'with --dtype: A0 B0 B2)')
    parser.add_argument('--plan', nargs='+', default=['none', 'full', 'fast'],
                        choices=['none', 'full', 'fast'], help='dilation plans')
    parser.add_argument('--shape', nargs=2, type=positive_int, metavar=('H', 'W'),
                        help='input size (default 40 48; with --dtype 224 224)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--block', default='RepVGGBlock', choices=BLOCK_TYPES,
                        help='block type of every layer')
    parser.add_argument('--dtype', nargs='+', choices=list(PRECISIONS),
                        help='measure these precisions of the folded model instead')
    parser.add_argument('--device', default='cpu', help='device for --dtype')
    parser.add_argument('--batch', type=positive_int, default=1,
                        help='batch for --dtype (images for --checkpoint: 8 unless given)')
    parser.add_argument('--checkpoint', nargs=2, metavar=('CONFIG', 'CKPT'),
                        help='with --dtype: also measure this trained model (its logits, on '
                        'its test images if present)')
    args = parser.parse_args(argv)
    for arch in args.arch or []:  # every name before any work: an unknown one is a one-line error
        try:
            get_arch(arch)
        except KeyError as err:
            fail(err.args[0])
    if args.dtype:
        # a missing or unsafe checkpoint, a device that is not there: one error line
        return run_tool(lambda: _precision_table(args), user_errors() + (ValueError, ))
    if args.arch is None:
        args.arch = [a for a in ARCH_ZOO
                     if args.block == 'RepVGGBlock' or not ARCH_ZOO[a].use_se]
    cases = [(a, p) for a in args.arch for p in args.plan]
    shape = tuple(args.shape or (40, 48))
    rows, bar = [], ProgressBar(len(cases))
    for arch, plan in cases:
        rows.append((arch, plan, fold_errors(arch, None if plan == 'none' else plan,
                                             shape, args.seed, args.block)))
        bar.update()
    print(f'\n\n{args.block}\n')
    print('| arch | plan | fp64 | fp32 reference backend | fp32 default backend |')
    print('|---|---|---|---|---|')
    for arch, plan, e in rows:
        print(f'| {arch} | {plan} | {e.fp64:.1e} | {e.fp32_reference:.1e} | {e.fp32_default:.1e} |')
    worst = [max(getattr(e, f) for *_, e in rows)
             for f in ('fp64', 'fp32_reference', 'fp32_default')]
    print(f'| **worst** | | {worst[0]:.1e} | {worst[1]:.1e} | {worst[2]:.1e} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
