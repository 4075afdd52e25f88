"""Speed (examples/second) and peak memory in the paper's protocol (Sect. 4.1, Table 4, 8).

Protocol of the paper: batch 128 at 224x224 (classification) or batch 16 at 713x713
(segmentation), fp32, 50 warm-up batches, then 50 timed batches; every model on the same
device; the baselines' conv-BN pairs folded into convs with bias. Here each model is
measured in one or more *variants*:

- RepVGG: ``train`` (the training-time multi-branch model, in eval mode) and ``deploy``
  (re-parameterized: one 3x3 conv per block);
- baselines: ``fused`` (conv-BN folded, the paper's protocol) and, on request, ``unfused``;
- peers (``timm:A0``, ``mmpretrain:A0``, see :mod:`mmrepvgg.analysis.peers`): another
  library's deployed RepVGG, paired with ours of the same arch, given our deployed weights
  (outputs checked equal) unless ``peer_weights='own'``.

Timed rounds are interleaved over all variants (:func:`~mmrepvgg.utils.timing.time_interleaved`: round 1 of every
variant, then round 2, ...; the order is rotated by one each round so that no variant always
runs first), so a noisy
machine slows them all alike; the speed of a variant is its median round (the best round is
kept too), and ratios are computed from the same run.

On CUDA the float32 precision is set explicitly for the run (``fp32`` = strict IEEE, ``tf32``
= TF32 convs and matmuls; :mod:`mmrepvgg.utils.precision`) and ``cudnn.benchmark`` is on
(as in the official speed test); both are restored afterwards and recorded in the report.
"""
from __future__ import annotations

import copy
import datetime
import statistics
import time
from typing import Any, Sequence

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from ..models import RepBlockBase, RepVGG, reparameterize
from ..utils.device import device_info, device_sync, resolve_device
from ..utils.precision import (cudnn_benchmark, float32_precision, measure_matmul_peak,
                               precision_label, tf32_state)
from ..utils.device import backend_supported
from ..utils.optional import require
from ..utils.timing import time_interleaved
from .complexity import count_complexity
from .memory import peak_forward_memory
from .models import example_input
from .peers import PEER_WEIGHTS
from .report import PAPER_PROTOCOL, is_paper_protocol
from .runners import ORT_BACKENDS, make_runner, to_backend
from .variants import Variant, prepare_variants, share_peer_weights, validate_benchmark_specs


def _count_macs(module: nn.Module, x: Tensor) -> int | None:
    try:
        return count_complexity(module, x).flops
    except Exception as err:  # a trace failure only loses the TFLOP/s column
        print_log(f'benchmark: could not count FLOPs: {err}'.splitlines()[0],
                  logger='current')
        return None


def run_benchmark(specs: Sequence[str], batch: int | None = None,
                  shape: tuple[int, int] | None = None, warmup: int | None = None,
                  iters: int | None = None, rounds: int = 1, device: str | None = 'cpu',
                  dtype: str = 'fp32', backend: str = 'eager',
                  variants: Sequence[str] = ('train', 'deploy', 'fused'),
                  memory: bool = False, memory_batch: int | None = None,
                  num_classes: int = 1000, cfg_options: dict | None = None,
                  cudnn_autotune: bool = True, flops: bool = True,
                  peak_tflops: float | None = None, measure_peak: bool = False,
                  peer_weights: str = 'shared') -> dict:
    """Time every form of every model in one run and compute the ratios.

    Args:
        specs: Models (arch names, baseline names, peer specs ``timm:A0`` /
            ``mmpretrain:A0``, config paths); all of one task.
        batch: Batch size (default: the paper's, 128 or 16).
        shape: ``(H, W)`` (default: the paper's, 224x224 or 713x713).
        warmup: Warm-up batches per variant (default 50).
        iters: Timed batches per variant and round (default 50).
        rounds: Interleaved timed rounds; the median round gives the speed.
        device: ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` (``None``: CUDA if available);
            checked before any model is built
            (:func:`~mmrepvgg.utils.device.resolve_device`).
        dtype: ``'fp32'`` (strict IEEE: TF32 off on CUDA; the paper's), ``'tf32'`` (CUDA:
            fp32 tensors with TF32 convs and matmuls), ``'bf16'`` or ``'fp16'``.
        backend: ``'eager'``, ``'channels_last'``, ``'compile'``, ``'compile_channels_last'``,
            ``'onnxruntime'`` or ``'onnxruntime-int8'``.
        variants: Forms to measure (see :func:`prepare_variants`).
        memory: Also measure the peak inference memory (:mod:`mmrepvgg.analysis.memory`):
            the feature maps (any device) and, on CUDA, the allocator's peak.
        memory_batch: Batch for the memory measurement (default: ``batch``).
        num_classes: Classes of classifiers built from names.
        cfg_options: Overrides for configs.
        cudnn_autotune: Set ``torch.backends.cudnn.benchmark = True`` on CUDA while timing.
        flops: Count each variant's multiply-adds and report the achieved TFLOP/s.
        peak_tflops: The device's peak in this precision (TFLOP/s) for the fraction of peak.
        measure_peak: Measure the peak as a large matmul in this precision on the device.
        peer_weights: ``'shared'``: every peer gets our deployed weights of its arch and its
            output is checked equal to ours (:func:`share_peer_weights`), so that all
            implementations are timed on the same weight values; ``'own'``: each library's
            own random initialization.

    Returns:
        ``dict(device_info, protocol, results, ratios, skipped, peak)``, json-serializable.

    Raises:
        ValueError: A device that is not there, a precision it does not run, models of
            two tasks.
    """
    if peer_weights not in PEER_WEIGHTS:
        raise ValueError(f'peer_weights must be one of {PEER_WEIGHTS}, got {peer_weights!r}')
    dev = resolve_device(device)
    ok, reason = backend_supported(dtype, dev)
    if not ok:
        raise ValueError(reason)
    validate_benchmark_specs(specs)
    if backend in ORT_BACKENDS:  # fail before building models, not with an empty table
        for package in ('onnx', 'onnxruntime'):
            require(package)
    all_variants: list[Variant] = []
    for spec in specs:
        print_log(f'benchmark: building {spec}', logger='current')
        all_variants += prepare_variants(spec, variants, num_classes, cfg_options=cfg_options)
    tasks = {v.task for v in all_variants}
    if len(tasks) > 1:
        raise ValueError(f'benchmark one task at a time, got {sorted(tasks)}')
    task = tasks.pop() if tasks else 'cls'
    proto = dict(PAPER_PROTOCOL[task])
    for key, value in (('batch', batch), ('shape', shape), ('warmup', warmup), ('iters', iters)):
        if value is not None:
            proto[key] = tuple(value) if key == 'shape' else value
    has_peers = any(v.family == 'peer' for v in all_variants)
    if has_peers and peer_weights == 'shared':
        share_peer_weights(all_variants, num_classes, tuple(proto['shape']))
    autotune = cudnn_autotune and dev.type == 'cuda'
    with float32_precision(dtype == 'tf32'), cudnn_benchmark(autotune):
        state = tf32_state()
        info = device_info(dev)
        results, skipped, peak = _measure(all_variants, proto, rounds, dev, dtype, backend,
                                          memory, memory_batch, flops, peak_tflops,
                                          measure_peak)
    cuda = dev.type == 'cuda'
    proto.update(rounds=rounds, dtype=dtype, backend=backend, task=task, device=dev.type,
                 precision=precision_label(dtype, state, dev),
                 tf32_conv=state['cudnn_conv_tf32'] if cuda else False,
                 tf32_matmul=state['matmul_tf32'] if cuda else False,
                 cudnn_benchmark=autotune, order='rotated each round')
    if has_peers:
        proto['peer_weights'] = peer_weights
    proto['paper_protocol'] = is_paper_protocol(proto)
    return dict(device_info=info, protocol=_jsonable(proto), results=results,
                ratios=compute_ratios(results), skipped=skipped, peak=peak,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))


def _measure(all_variants: list[Variant], proto: dict, rounds: int, dev: torch.device,
             dtype: str, backend: str, memory: bool, memory_batch: int | None, flops: bool,
             peak_tflops: float | None, measure_peak: bool) -> tuple[list, list, dict | None]:
    """The timed part of :func:`run_benchmark` (inside its precision settings)."""
    x = example_input(proto['shape'], proto['batch'])
    skipped = []
    runners = []
    for v in all_variants:
        try:
            runners.append((v, make_runner(v.module, x, backend, dev, dtype)))
        except ImportError as err:
            skipped.append(dict(model=v.model, variant=v.variant, reason=str(err)))
    macs: dict[int, int | None] = {}
    if flops:
        x1 = example_input(proto['shape'], 1)
        if backend not in ORT_BACKENDS:
            x1 = to_backend(x1, dev, dtype, backend)
        for i, (v, _) in enumerate(runners):
            print_log(f'benchmark: counting the FLOPs of {v.model} [{v.variant}]',
                      logger='current')
            macs[i] = _count_macs(v.module, x1)
    per_round = time_interleaved([(f'{v.model} [{v.variant}]', run) for v, run in runners],
                                 proto['iters'], rounds, proto['warmup'], proto['batch'],
                                 device_sync(dev))
    peak = None
    if measure_peak:
        measured = measure_matmul_peak(dev, dtype)
        peak = dict(tflops=measured['tflops'], source=f"measured: {measured['method']}, "
                    f'{dtype}', dtype=dtype)
        print_log(f"benchmark: matmul peak {peak['tflops']:.1f} TFLOP/s ({dtype})",
                  logger='current')
    elif peak_tflops:
        peak = dict(tflops=float(peak_tflops), source='given (--peak-tflops)', dtype=dtype)
    results = []
    for i, (v, _) in enumerate(runners):
        speed = statistics.median(per_round[i])
        res = dict(model=v.model, variant=v.variant, family=v.family, task=v.task,
                   arch=v.arch, source=v.source, params_m=v.params / 1e6,
                   examples_per_s=speed, best_examples_per_s=max(per_round[i]),
                   ms_per_batch=1000 * proto['batch'] / speed, rounds=per_round[i])
        if v.weights is not None:
            res['weights'] = v.weights
        if v.weights_max_rel_diff is not None:
            res['weights_max_rel_diff'] = v.weights_max_rel_diff
        if macs.get(i):
            res.update(gmacs_per_example=macs[i] / 1e9,
                       achieved_tflops=2 * macs[i] * speed / 1e12)
            if peak:
                res['fraction_of_peak'] = res['achieved_tflops'] / peak['tflops']
        if memory:
            try:
                res.update(_memory(v, proto, memory_batch, dev, dtype, backend))
            except (RuntimeError, NotImplementedError) as err:  # keep the speeds
                res['memory_error'] = str(err).splitlines()[0]
                print_log(f"benchmark: memory of {v.model} [{v.variant}] failed: "
                          f"{res['memory_error']}", logger='current')
        results.append(res)
    return results, skipped, peak


def _memory(v: Variant, proto: dict, memory_batch: int | None, dev: torch.device, dtype: str,
            backend: str) -> dict:
    mb = memory_batch or proto['batch']
    xm = example_input(proto['shape'], mb)
    if backend not in ORT_BACKENDS:
        xm = to_backend(xm, dev, dtype, backend)
    module = v.module
    with torch.no_grad():  # cudnn.benchmark picks its algorithms outside the measurement
        module(xm)
    mem = peak_forward_memory(lambda: module(xm), dev)
    out = dict(peak_memory_mb=mem['peak_bytes'] / 2**20, memory_method=mem['method'],
               memory_batch=mb)
    if 'allocator_peak_bytes' in mem:
        out.update(allocator_peak_mb=mem['allocator_peak_bytes'] / 2**20,
                   allocator_method=mem['allocator_method'])
    return out


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def compute_ratios(results: list[dict], reference: str | None = None) -> dict:
    """Speed (and memory) ratios from one run.

    Args:
        results: ``run_benchmark()['results']``.
        reference: ``'model/variant'`` every speed is divided by (default: the first result
            of the paper's protocol form, i.e. ``deploy`` or ``fused``).

    Returns:
        ``dict(reference, vs_reference={key: ratio}, deploy_vs_train={model: ratio},
        memory_train_vs_deploy={model: ratio}, allocator_train_vs_deploy={model: ratio},
        ours_vs_peers={arch: {source: ratio}})``. A peer ratio is the median over rounds of
        our deployed model's speed over the peer's in the same round (rounds are paired:
        they ran back to back).
    """
    key = {f'{r["model"]}/{r["variant"]}': r for r in results}
    if reference is None:
        reference = next((k for k, r in key.items() if r['variant'] in ('deploy', 'fused')
                          and r.get('family') != 'peer'),
                         next(iter(key), None))
    out: dict[str, Any] = dict(reference=reference, vs_reference={}, deploy_vs_train={},
                               memory_train_vs_deploy={}, allocator_train_vs_deploy={},
                               ours_vs_peers={})
    if reference is None:
        return out
    ref = key[reference]['examples_per_s']
    out['vs_reference'] = {k: r['examples_per_s'] / ref for k, r in key.items()}
    for model in dict.fromkeys(r['model'] for r in results):
        pair = [key.get(f'{model}/{v}') for v in ('deploy', 'train')]
        if pair[0] is None or pair[1] is None:
            pair = [key.get(f'{model}/{v}') for v in ('fused', 'unfused')]
        if pair[0] is not None and pair[1] is not None:
            out['deploy_vs_train'][model] = pair[0]['examples_per_s'] / pair[1]['examples_per_s']
            for name, field_ in (('memory_train_vs_deploy', 'peak_memory_mb'),
                                 ('allocator_train_vs_deploy', 'allocator_peak_mb')):
                if pair[0].get(field_) and pair[1].get(field_):
                    out[name][model] = pair[1][field_] / pair[0][field_]
    ours = {r['arch']: r for r in results if r.get('family') == 'repvgg' and r.get('arch')
            and r['variant'] == 'deploy'}
    for r in results:
        if r.get('family') != 'peer' or r.get('arch') not in ours:
            continue
        mine = ours[r['arch']]
        paired = [a / b for a, b in zip(mine.get('rounds', []), r.get('rounds', []))]
        ratio = (statistics.median(paired) if paired
                 else mine['examples_per_s'] / r['examples_per_s'])
        out['ours_vs_peers'].setdefault(mine['model'], {})[r['source']] = ratio
    return out



def fold_time(arch: str, repeats: int = 5, dilation_plan: str | None = None) -> dict:
    """Seconds :func:`mmrepvgg.reparameterize` takes to fold a backbone (float64 algebra).

    One backbone is built (eval mode); each repeat folds a fresh deep copy of it, and only
    the fold is timed.

    Args:
        arch: Arch name.
        repeats: Folds to time.
        dilation_plan: ``None``, ``'full'`` or ``'fast'``.

    Returns:
        ``dict(arch, dilation_plan, seconds, median_s, min_s, max_s, blocks, torch_threads,
        device_info)``.
    """
    model = RepVGG(arch=arch, dilation_plan=dilation_plan).eval()
    blocks = sum(isinstance(m, RepBlockBase) for m in model.modules())
    seconds = []
    for _ in range(repeats):
        fresh = copy.deepcopy(model)
        start = time.perf_counter()
        reparameterize(fresh)
        seconds.append(time.perf_counter() - start)
    return dict(arch=arch, dilation_plan=dilation_plan, seconds=seconds,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                median_s=statistics.median(seconds), min_s=min(seconds), max_s=max(seconds),
                blocks=blocks, torch_threads=torch.get_num_threads(),
                device_info=device_info('cpu'))



