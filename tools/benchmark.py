"""Speed (examples/s), TFLOP/s and peak inference memory in the paper's protocol.

Examples:
    # the paper's protocol on a GPU (batch 128 at 224x224, strict fp32, 50 + 50 batches)
    python tools/benchmark.py A0 B0 ResNet-18 ResNet-34 --device cuda --out bench.json
    # the same with TF32 convs and matmuls (PyTorch's default for cuDNN convs)
    python tools/benchmark.py A0 B0 ResNet-18 ResNet-34 --device cuda --dtype tf32
    # ours next to timm's and mmpretrain's deployed RepVGG, timed interleaved, every peer
    # given our deployed weights (outputs checked equal; --peer-weights own: their own)
    python tools/benchmark.py A0 B0 --peers --variants deploy --rounds 5
    python tools/benchmark.py A0 timm:repvgg_a0 mmpretrain:A0 --variants deploy
    # reduced for a CPU, with feature-map memory (paper Fig. 3)
    python tools/benchmark.py A0 ResNet-18 --batch 8 --warmup 2 --iters 5 --rounds 3 \
        --threads 1 --memory --out work_dirs/bench_cpu.json
    # segmentation (batch 16 at the config's test size: its slide crop, 713x713 here)
    python tools/benchmark.py configs/pspnet_repvgg-b2_cityscapes.py --batch 1 --shape 256 256
    # the markdown of a saved json; the docs' tables from their json; a B3 backbone's fold
    # time; a matmul peak alone
    python tools/benchmark.py --render bench.json
    python tools/benchmark.py --update-docs docs/benchmark.md
    python tools/benchmark.py --fold-time B3 --threads 1
    python tools/benchmark.py --measure-peak --device cuda --dtype bf16

RepVGG models are timed as trained (multi-branch) and deployed (re-parameterized);
baselines with their conv-BN pairs fused (the paper's protocol) and, with
``--variants ... unfused``, as they are; peers deployed. Ratios come from the same run.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)
#: The paper's numbers (configs/metafile.yml): the paper's speed comparisons in the tables.
METAFILE = osp.join(REPO, 'configs', 'metafile.yml')

from mmengine.config import DictAction  # noqa: E402

from mmrepvgg.cli import non_negative_int, positive_int, run_tool  # noqa: E402
from mmrepvgg.utils.errors import user_errors  # noqa: E402
from projects.benchmark.peers import PEER_SOURCES, PEER_WEIGHTS  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('models', nargs='*', help='arch names, baseline names, peer specs '
                        '(timm:A0, mmpretrain:A0) or config paths (all classifiers or all '
                        'segmentors)')
    parser.add_argument('--batch', type=positive_int, help='batch size (paper: 128 cls, 16 seg)')
    parser.add_argument('--shape', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help="input size (default: the configs' test size, e.g. the slide "
                        'crop or the test Resize; else the paper\'s: 224 224 cls, 713 713 seg)')
    parser.add_argument('--warmup', type=non_negative_int,
                        help='warm-up batches per model (paper: 50)')
    parser.add_argument('--iters', type=positive_int, help='timed batches per round (paper: 50)')
    parser.add_argument('--rounds', type=positive_int, default=1,
                        help='interleaved timed rounds; the median round counts')
    parser.add_argument('--device', default=None, help='cuda if available, else cpu')
    parser.add_argument('--threads', type=positive_int, help='torch.set_num_threads (CPU)')
    parser.add_argument('--dtype', default='fp32', choices=['fp32', 'tf32', 'bf16', 'fp16'],
                        help='fp32: strict IEEE fp32, TF32 off on CUDA (the paper\'s); tf32: '
                        'fp32 tensors with TF32 cuDNN convs and matmuls (CUDA only)')
    parser.add_argument('--backend', nargs='+', default=['eager'], choices=[
        'eager', 'channels_last', 'compile', 'compile_channels_last', 'onnxruntime',
        'onnxruntime-int8'], help='one or several (all timed in the same interleaved rounds; '
        'ratios to the first, paired by round). onnxruntime: the model exported to ONNX '
        '(dynamo exporter, fp32) in ONNX Runtime on the CPU; onnxruntime-int8: the same '
        'quantized to int8 (quant_pre_process, QDQ, U8S8, per-channel: the measured-best '
        'settings, docs/int8.md; calibrated on random inputs: speed only; accuracy: '
        'tools/quantize.py --eval), with a check that every Conv runs as an integer conv')
    parser.add_argument('--variants', nargs='+', default=['train', 'deploy', 'fused'],
                        choices=['train', 'deploy', 'fused', 'unfused'])
    parser.add_argument('--peers', nargs='*', choices=PEER_SOURCES, metavar='SOURCE',
                        help='also time the deployed RepVGG of the same arch from these '
                        'libraries (default both: timm, mmpretrain), interleaved with ours')
    parser.add_argument('--peer-weights', choices=PEER_WEIGHTS, default='shared',
                        help='shared (default): copy our deployed weights into each peer and '
                        'check its output equals ours (fp32, CPU) before timing, so every '
                        "implementation runs the same weight values; own: each library's own "
                        'random initialization (GPU speed depends on the values)')
    parser.add_argument('--memory', action='store_true',
                        help='also measure the feature-map peak (and the CUDA allocator peak)')
    parser.add_argument('--memory-batch', type=positive_int,
                        help='batch for --memory (default --batch)')
    parser.add_argument('--no-cudnn-benchmark', action='store_true',
                        help='leave torch.backends.cudnn.benchmark off while timing on CUDA')
    parser.add_argument('--no-flops', action='store_true',
                        help='do not count FLOPs (no TFLOP/s column)')
    peak = parser.add_mutually_exclusive_group()
    peak.add_argument('--peak-tflops', type=float,
                      help="the device's peak TFLOP/s in this precision, for the %% of peak")
    peak.add_argument('--measure-peak', action='store_true',
                      help='measure the peak as a large matmul in this precision on the device '
                      '(alone if no model is given)')
    parser.add_argument('--num-classes', type=positive_int, default=1000)
    parser.add_argument('--out', help='write the results (json) here, for plotting')
    parser.add_argument('--markdown', help='also write the markdown table here')
    parser.add_argument('--force', action='store_true', help='overwrite --out / --markdown')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parser.add_argument('--render', metavar='JSON',
                        help='print the markdown of a json saved by --out (nothing is run)')
    parser.add_argument('--update-docs', nargs='+', metavar='MD',
                        help='re-render the marked benchmark blocks of these markdown files '
                        'from their json (<!-- benchmark: PATH.json --> ... <!-- /benchmark -->)')
    parser.add_argument('--fold-time', nargs='+', metavar='ARCH',
                        help='time reparameterize() of these backbones instead (CPU)')
    parser.add_argument('--fold-repeats', type=positive_int, default=5,
                        help='fresh copies folded per arch for --fold-time')
    parser.add_argument('--plan', choices=['full', 'fast'],
                        help='dilation plan of the --fold-time backbones')
    args = parser.parse_args(argv)
    modes = sum(bool(x) for x in (args.render, args.fold_time, args.update_docs))
    if modes > 1:
        parser.error('--render, --update-docs and --fold-time are separate modes')
    if not modes and not args.models and not args.measure_peak:
        parser.error('give models (or --render, --update-docs, --fold-time, --measure-peak)')
    if modes and args.models:
        parser.error('models are not used with --render / --update-docs / --fold-time')
    return args


def _check_outputs(args: argparse.Namespace, inputs: tuple[str, ...] = ()) -> None:
    """Before anything runs: --out and --markdown may be written (new or --force, not a
    folder, not under a file, not the same file, not an input such as the --render json)."""
    from mmrepvgg.utils.fileio import check_output_paths
    check_output_paths([args.out, args.markdown], args.force, inputs)


def run(args: argparse.Namespace) -> None:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from projects.benchmark.benchmark import BenchmarkSettings, fold_time, run_benchmark
    from projects.benchmark.metafile import load_metafile
    from projects.benchmark.report import (
        benchmark_markdown,
        fold_time_line,
        load_report,
        render_report,
        save_report,
        update_docs,
    )
    from projects.benchmark.models import spec_files
    from projects.benchmark.variants import validate_benchmark_specs, with_peers
    paper = load_metafile(METAFILE)
    command = 'python tools/benchmark.py ' + ' '.join(sys.argv[1:])
    if args.render:
        if args.out:
            raise ValueError('--render writes --markdown only')
        _check_outputs(args, (args.render, ))
        report = load_report(args.render)
        table = render_report(report, args.render, paper)
        print(table)
        save_report(report, table, markdown=args.markdown, force=args.force,
                       inputs=(args.render, ))
        return
    if args.update_docs:
        for md, target, paths in update_docs(args.update_docs, paper):
            link = f' (a link to {target})' if osp.islink(md) else ''
            print(f"{md}{link}: {len(paths)} table(s) rendered from {', '.join(paths) or '-'}")
        return
    if args.fold_time:
        from mmrepvgg.models.arch import get_arch
        for arch in args.fold_time:
            get_arch(arch)
        _check_outputs(args)
        results = []
        for arch in args.fold_time:
            res = fold_time(arch, args.fold_repeats, args.plan)
            print(fold_time_line(res))
            results.append(res)
        report = dict(command=command, fold_time=results)
        save_report(report, '\n'.join(fold_time_line(r) for r in results), args.out,
                       args.markdown, args.force)
        return
    from projects.benchmark.device import resolve_device
    device = resolve_device(args.device, '--device')  # before any model is built
    specs = list(args.models)
    if args.peers is not None:
        specs = with_peers(specs, args.peers or PEER_SOURCES)  # a config spec: an error
    validate_benchmark_specs(specs)
    _check_outputs(args, tuple(spec_files(specs)))  # never over a config (its _base_ chain)
    report = run_benchmark(specs, BenchmarkSettings(
        batch=args.batch, shape=tuple(args.shape) if args.shape else None,
        warmup=args.warmup, iters=args.iters, rounds=args.rounds, device=str(device),
        dtype=args.dtype, backend=args.backend[0] if len(args.backend) == 1 else args.backend,
        variants=args.variants, memory=args.memory,
        memory_batch=args.memory_batch, num_classes=args.num_classes,
        cfg_options=args.cfg_options, cudnn_autotune=not args.no_cudnn_benchmark,
        flops=not args.no_flops, peak_tflops=args.peak_tflops, measure_peak=args.measure_peak,
        peer_weights=args.peer_weights))
    report['command'] = command
    table = benchmark_markdown(report, paper)
    print(table)
    save_report(report, table, args.out, args.markdown, args.force)


def main(argv: list[str] | None = None) -> int:
    """Run; bad input (an unknown model, an output that may not be written, a missing
    package) prints one ``error:`` line and returns 1."""
    args = parse_args(argv)
    return run_tool(lambda: run(args), user_errors() + (KeyError, ValueError, ImportError))


if __name__ == '__main__':
    sys.exit(main())
