"""Time ours and timm's (or mmpretrain's) deployed RepVGG with their weights swapped.

Does a speed gap between two implementations of the same network follow the code or the
weight values? Four models per arch, timed interleaved (order rotated each round), median
round: ours, the peer (each with its own random initialization), ours with the peer's
weights, the peer with ours (each swap checked on the CPU in fp32 against the model whose
weights it took). Library: :mod:`projects.weight_swap.weight_swap`.

Examples:
    # the H200 diagnostic of docs/gpu/h200-2026-11-26-run2/README.md: backbones, batch 128,
    # TF32, cudnn.benchmark, 10 warm-up + 30 timed batches x 5 rounds
    python tools/gpu/peers_weights.py B2 B3 A0 --device cuda --dtype tf32 --backbone
    # whole classifiers, strict fp32, against mmpretrain
    python tools/gpu/peers_weights.py B0 --device cuda --source mmpretrain
    # any CPU, tiny shapes (a check of the tool, not a measurement)
    python tools/gpu/peers_weights.py A0 --device cpu --batch 1 --shape 32 32 --warmup 1 \
        --iters 1 --rounds 2 --threads 1
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmrepvgg.cli import non_negative_int, positive_int, run_tool
from mmrepvgg.utils.errors import user_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('archs', nargs='+', help='RepVGG archs (A0, B2, ...)')
    parser.add_argument('--source', default='timm', choices=['timm', 'mmpretrain'],
                        help='the peer library (default timm)')
    parser.add_argument('--device', help='cuda if available, else cpu')
    parser.add_argument('--dtype', choices=['fp32', 'tf32', 'bf16', 'fp16'],
                        help='default: tf32 on CUDA (as the H200 diagnostic), fp32 on a CPU')
    parser.add_argument('--batch', type=positive_int, default=128)
    parser.add_argument('--shape', type=positive_int, nargs=2, default=[224, 224],
                        metavar=('H', 'W'))
    parser.add_argument('--warmup', type=non_negative_int, default=10,
                        help='warm-up batches per model')
    parser.add_argument('--iters', type=positive_int, default=30, help='timed batches per round')
    parser.add_argument('--rounds', type=positive_int, default=5, help='interleaved rounds')
    parser.add_argument('--backbone', action='store_true',
                        help='time the backbones only (stem and stages), as the diagnostic did')
    parser.add_argument('--no-cudnn-benchmark', action='store_true')
    parser.add_argument('--threads', type=positive_int, help='torch.set_num_threads (CPU)')
    parser.add_argument('--out', help='write the report (json) here')
    parser.add_argument('--markdown', help='also write the markdown here')
    parser.add_argument('--force', action='store_true', help='overwrite --out / --markdown')
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    import torch

    from mmrepvgg.utils.fileio import check_output_paths
    from projects.benchmark.benchmark import BenchmarkSettings
    from projects.benchmark.device import resolve_device
    from projects.benchmark.report import save_report
    from projects.weight_swap.weight_swap import weight_swap_benchmark, weight_swap_markdown
    device = resolve_device(args.device, '--device')  # before any model is built
    check_output_paths([args.out, args.markdown], args.force)  # before the work
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ('tf32' if device.type == 'cuda' else 'fp32')
    report = weight_swap_benchmark(args.archs, args.source, BenchmarkSettings(
        batch=args.batch, shape=tuple(args.shape), warmup=args.warmup, iters=args.iters,
        rounds=args.rounds, device=str(device), dtype=dtype,
        cudnn_autotune=not args.no_cudnn_benchmark), args.backbone)
    report['command'] = 'python tools/gpu/peers_weights.py ' + ' '.join(sys.argv[1:])
    text = weight_swap_markdown(report)
    print(text)
    save_report(report, text, args.out, args.markdown, args.force)


def main(argv: list[str] | None = None) -> int:
    """Run; bad input prints one ``error:`` line and returns 1."""
    args = parse_args(argv)
    return run_tool(lambda: run(args), user_errors() + (KeyError, ValueError))


if __name__ == '__main__':
    sys.exit(main())
