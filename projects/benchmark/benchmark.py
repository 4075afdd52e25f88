"""Speed (examples/second) and peak memory in the paper's protocol (Sect. 4.1, Table 4, 8).

Protocol of the paper: batch 128 at 224x224 (classification) or batch 16 at 713x713
(segmentation), fp32, 50 warm-up batches, then 50 timed batches; every model on the same
device; the baselines' conv-BN pairs folded into convs with bias. Here each model is
measured in one or more *variants*:

- RepVGG: ``train`` (the training-time multi-branch model, in eval mode) and ``deploy``
  (re-parameterized: one 3x3 conv per block);
- baselines: ``fused`` (conv-BN folded, the paper's protocol) and, on request, ``unfused``;
- peers (``timm:A0``, ``mmpretrain:A0``, see :mod:`projects.benchmark.peers`): another
  library's deployed RepVGG, paired with ours of the same arch, given our deployed weights
  (outputs checked equal) unless ``peer_weights='own'``.

Timed rounds are interleaved over all variants (:func:`mmrepvgg.utils.timing.time_interleaved`:
round 1 of every variant, then round 2, ...; the order is rotated by one each round so that
no variant always runs first), so a noisy machine slows them all alike; the speed of a variant
is its median round (the best round is kept too), and ratios are computed from the same run.

On CUDA the float32 precision is set explicitly for the run (``fp32`` = strict IEEE, ``tf32``
= TF32 convs and matmuls; :mod:`projects.benchmark.device`) and ``cudnn.benchmark`` is on
(as in the official speed test); both are restored afterwards and recorded in the report.
"""
from __future__ import annotations

import copy
import datetime
import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from mmrepvgg.models import RepBlockBase, RepVGG, reparameterize
from mmrepvgg.utils.optional import require
from mmrepvgg.utils.timing import time_interleaved

from .complexity import count_complexity
from .device import (backend_supported, cudnn_benchmark, device_info, device_sync,
                     float32_precision, measure_matmul_peak, precision_label, resolve_device,
                     tf32_state)
from .memory import peak_forward_memory
from .models import example_input
from .peers import PEER_WEIGHTS
from .report import PAPER_PROTOCOL, is_paper_protocol, result_key
from .runners import ORT_BACKENDS, make_runner, to_backend
from .variants import Variant, prepare_variants, share_peer_weights, validate_benchmark_specs


def _count_macs(module: nn.Module, x: Tensor) -> int | None:
    try:
        return count_complexity(module, x).flops
    except Exception as err:  # a trace failure only loses the TFLOP/s column
        print_log(f'benchmark: could not count FLOPs: {err}'.splitlines()[0],
                  logger='current')
        return None


@dataclass
class BenchmarkSettings:
    """How :func:`run_benchmark` times (the protocol) and what else it measures.

    Attributes:
        batch: Batch size (default: the paper's, 128 or 16).
        shape: ``(H, W)`` (default: the size the configs are tested at,
            :func:`~projects.benchmark.models.config_test_shape`, else the paper's, 224x224
            or 713x713).
        warmup: Warm-up batches per variant (default 50).
        iters: Timed batches per variant and round (default 50).
        rounds: Interleaved timed rounds; the median round gives the speed.
        device: ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` (``None``: CUDA if available);
            checked before any model is built
            (:func:`~projects.benchmark.device.resolve_device`).
        dtype: ``'fp32'`` (strict IEEE: TF32 off on CUDA; the paper's), ``'tf32'`` (CUDA:
            fp32 tensors with TF32 convs and matmuls), ``'bf16'`` or ``'fp16'``.
        backend: ``'eager'``, ``'channels_last'``, ``'compile'``, ``'compile_channels_last'``,
            ``'onnxruntime'`` or ``'onnxruntime-int8'``; or several of them: every variant
            runs with each, all interleaved in the same rounds, and ``ratios['backends']``
            gives each backend's speed over the first one's, paired by round (median and
            min-max over rounds).
        variants: Forms to measure (see :func:`prepare_variants`).
        memory: Also measure the peak inference memory (:mod:`projects.benchmark.memory`):
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
    """

    batch: int | None = None
    shape: tuple[int, int] | None = None
    warmup: int | None = None
    iters: int | None = None
    rounds: int = 1
    device: str | None = 'cpu'
    dtype: str = 'fp32'
    backend: str | Sequence[str] = 'eager'
    variants: Sequence[str] = ('train', 'deploy', 'fused')
    memory: bool = False
    memory_batch: int | None = None
    num_classes: int = 1000
    cfg_options: dict | None = None
    cudnn_autotune: bool = True
    flops: bool = True
    peak_tflops: float | None = None
    measure_peak: bool = False
    peer_weights: str = 'shared'

    @property
    def backends(self) -> list[str]:
        """The backends, in order, without repeats."""
        return [self.backend] if isinstance(self.backend, str) else list(
            dict.fromkeys(self.backend))


def run_benchmark(specs: Sequence[str], settings: BenchmarkSettings | None = None) -> dict:
    """Time every form of every model in one run and compute the ratios.

    Args:
        specs: Models (arch names, baseline names, peer specs ``timm:A0`` /
            ``mmpretrain:A0``, config paths); all of one task.
        settings: The protocol and the extra measurements (default: the paper's protocol
            on the CPU).

    Returns:
        ``dict(device_info, protocol, results, ratios, skipped, peak)``, json-serializable.

    Raises:
        ValueError: A device that is not there, a precision it does not run, models of
            two tasks.
    """
    s = settings or BenchmarkSettings()
    dev = _check_settings(specs, s)
    all_variants, task = _build_variants(specs, s)
    proto = dict(PAPER_PROTOCOL[task])
    shape = s.shape or config_shape(all_variants)
    for key, value in (('batch', s.batch), ('shape', shape), ('warmup', s.warmup),
                       ('iters', s.iters)):
        if value is not None:
            proto[key] = tuple(value) if key == 'shape' else value
    has_peers = any(v.family == 'peer' for v in all_variants)
    if has_peers and s.peer_weights == 'shared':
        share_peer_weights(all_variants, s.num_classes, tuple(proto['shape']))
    autotune = s.cudnn_autotune and dev.type == 'cuda'
    x = example_input(proto['shape'], proto['batch'])
    # ONNX Runtime sessions first: torch.export refuses to run under the precision switches
    runners, skipped = _make_runners(all_variants, x, s, dev, ort=True)
    with float32_precision(s.dtype == 'tf32'), cudnn_benchmark(autotune):
        state = tf32_state()
        info = device_info(dev)
        more, skipped_more = _make_runners(all_variants, x, s, dev, ort=False)
        runners = sorted(runners + more, key=lambda r: r[0])
        results, peak = _measure([r[1:] for r in runners], proto, s, dev)
    cuda = dev.type == 'cuda'
    proto.update(rounds=s.rounds, dtype=s.dtype, backend=', '.join(s.backends), task=task,
                 device=dev.type, precision=precision_label(s.dtype, state, dev),
                 tf32_conv=state['cudnn_conv_tf32'] if cuda else False,
                 tf32_matmul=state['matmul_tf32'] if cuda else False,
                 cudnn_benchmark=autotune, order='rotated each round')
    if has_peers:
        proto['peer_weights'] = s.peer_weights
    if len(s.backends) > 1:
        proto['backends'] = s.backends
    proto['paper_protocol'] = is_paper_protocol(proto)
    return dict(device_info=info, protocol=_jsonable(proto), results=results,
                ratios=compute_ratios(results), skipped=skipped + skipped_more, peak=peak,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))


def _check_settings(specs: Sequence[str], s: BenchmarkSettings) -> torch.device:
    """Everything that can be checked before a model is built; the device."""
    if s.peer_weights not in PEER_WEIGHTS:
        raise ValueError(f'peer_weights must be one of {PEER_WEIGHTS}, got {s.peer_weights!r}')
    dev = resolve_device(s.device)
    ok, reason = backend_supported(s.dtype, dev)
    if not ok:
        raise ValueError(reason)
    validate_benchmark_specs(specs)
    if not s.backends:
        raise ValueError('give at least one backend')
    if any(b in ORT_BACKENDS for b in s.backends):  # fail before building models
        for package in ('onnx', 'onnxruntime', 'onnxscript'):
            require(package)
    return dev


def _build_variants(specs: Sequence[str], s: BenchmarkSettings) -> tuple[list[Variant], str]:
    """The forms of every model and the run's one task."""
    all_variants: list[Variant] = []
    for spec in specs:
        print_log(f'benchmark: building {spec}', logger='current')
        all_variants += prepare_variants(spec, s.variants, s.num_classes,
                                         cfg_options=s.cfg_options)
    tasks = {v.task for v in all_variants}
    if len(tasks) > 1:
        raise ValueError(f'benchmark one task at a time, got {sorted(tasks)}')
    return all_variants, tasks.pop() if tasks else 'cls'


def config_shape(all_variants: Sequence[Variant]) -> tuple[int, int] | None:
    """The one size the configs of a run are tested at (None: no config says).

    Args:
        all_variants: The run's variants.

    Raises:
        ValueError: Configs tested at different sizes (one run times one input size).
    """
    shapes = {tuple(v.input_shape) for v in all_variants if v.input_shape}
    if len(shapes) > 1:
        raise ValueError('the configs are tested at different sizes ('
                         + ', '.join(f'{h}x{w}' for h, w in sorted(shapes))
                         + '): give one with --shape H W')
    return shapes.pop() if shapes else None


def _make_runners(all_variants: list[Variant], x: Tensor, s: BenchmarkSettings,
                  dev: torch.device, ort: bool) -> tuple[list, list]:
    """``[(order, variant, backend, runner)]`` of the ONNX Runtime backends (``ort``) or the
    others, and the ``skipped`` entries of those whose package is missing."""
    runners, skipped = [], []
    for i, v in enumerate(all_variants):
        for j, b in enumerate(s.backends):
            if (b in ORT_BACKENDS) != ort:
                continue
            try:
                runners.append(((i, j), v, b, make_runner(v.module, x, b, dev, s.dtype)))
            except ImportError as err:
                skipped.append(dict(model=v.model, variant=v.variant, backend=b,
                                    reason=str(err)))
    return runners, skipped


def _count_all_macs(runners: list, shape: tuple[int, int], dev: torch.device,
                    dtype: str) -> dict[int, int | None]:
    """Each runner's multiply-adds per example (a variant counted once)."""
    x1 = example_input(shape, 1)
    x1 = to_backend(x1, dev, dtype, 'eager') if dev.type != 'cpu' else x1
    counted: dict[int, int | None] = {}
    macs = {}
    for i, (v, _, _) in enumerate(runners):
        if id(v) not in counted:
            print_log(f'benchmark: counting the FLOPs of {v.model} [{v.variant}]',
                      logger='current')
            counted[id(v)] = _count_macs(v.module, x1)
        macs[i] = counted[id(v)]
    return macs


def _peak(s: BenchmarkSettings, dev: torch.device) -> dict | None:
    """The device's peak TFLOP/s: measured, given or None."""
    if s.measure_peak:
        measured = measure_matmul_peak(dev, s.dtype)
        peak = dict(tflops=measured['tflops'], source=f"measured: {measured['method']}, "
                    f'{s.dtype}', dtype=s.dtype)
        print_log(f"benchmark: matmul peak {peak['tflops']:.1f} TFLOP/s ({s.dtype})",
                  logger='current')
        return peak
    if s.peak_tflops:
        return dict(tflops=float(s.peak_tflops), source='given (--peak-tflops)', dtype=s.dtype)
    return None


def _measure(runners: list, proto: dict, s: BenchmarkSettings,
             dev: torch.device) -> tuple[list, dict | None]:
    """The timed part of :func:`run_benchmark` (inside its precision settings).

    Args:
        runners: ``[(variant, backend, runner)]``.
        proto: The protocol (batch, shape, warm-up, iterations).
        s: The settings.
        dev: The device.

    Returns:
        The results and the peak.
    """
    macs = _count_all_macs(runners, proto['shape'], dev, s.dtype) if s.flops else {}
    several = len(s.backends) > 1
    labels = [f'{v.model} [{v.variant}]' + (f' {b}' if several else '') for v, b, _ in runners]
    per_round = time_interleaved(list(zip(labels, [run for _, _, run in runners])),
                                 proto['iters'], s.rounds, proto['warmup'], proto['batch'],
                                 device_sync(dev))
    peak = _peak(s, dev)
    results = []
    for i, (v, b, run) in enumerate(runners):
        speed = statistics.median(per_round[i])
        res = dict(model=v.model, variant=v.variant, family=v.family, task=v.task,
                   arch=v.arch, source=v.source, params_m=v.params / 1e6,
                   examples_per_s=speed, best_examples_per_s=max(per_round[i]),
                   ms_per_batch=1000 * proto['batch'] / speed, rounds=per_round[i])
        if several:
            res['backend'] = b
        if getattr(run, 'info', None):
            res['onnxruntime'] = dict(run.info)
        if v.weights is not None:
            res['weights'] = v.weights
        if v.weights_max_rel_diff is not None:
            res['weights_max_rel_diff'] = v.weights_max_rel_diff
        if macs.get(i):
            res.update(gmacs_per_example=macs[i] / 1e9,
                       achieved_tflops=2 * macs[i] * speed / 1e12)
            if peak:
                res['fraction_of_peak'] = res['achieved_tflops'] / peak['tflops']
        if s.memory and (b not in ORT_BACKENDS or not several):
            try:
                res.update(_memory(v, proto, s.memory_batch, dev, s.dtype, b))
            except (RuntimeError, NotImplementedError) as err:  # keep the speeds
                res['memory_error'] = str(err).splitlines()[0]
                print_log(f"benchmark: memory of {v.model} [{v.variant}] failed: "
                          f"{res['memory_error']}", logger='current')
        results.append(res)
    return results, peak


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
        reference: ``'model/variant'`` (``'model/variant@backend'`` in a run of several
            backends, :func:`~projects.benchmark.report.result_key`) every speed is divided by
            (default: the first result of the paper's protocol form, i.e. ``deploy`` or
            ``fused``).

    Returns:
        ``dict(reference, vs_reference={key: ratio}, deploy_vs_train={model: ratio},
        memory_train_vs_deploy={model: ratio}, allocator_train_vs_deploy={model: ratio},
        ours_vs_peers={arch: {source: ratio}}, backends={model/variant: {backend: dict(vs,
        median, min, max)}})``. A peer or backend ratio is the median over rounds of the two
        speeds in the same round (rounds are paired: they ran back to back); min and max are
        its spread. With several backends, the train/deploy and peer ratios are those of the
        first backend.
    """
    key = {result_key(r): r for r in results}
    first_backend = next((r['backend'] for r in results if r.get('backend')), None)
    base = [r for r in results if r.get('backend') == first_backend]
    base_key = {f'{r["model"]}/{r["variant"]}': r for r in base}
    if reference is None:
        reference = next((result_key(r) for r in base if r['variant'] in ('deploy', 'fused')
                          and r.get('family') != 'peer'), next(iter(key), None))
    out: dict[str, Any] = dict(reference=reference, vs_reference={}, deploy_vs_train={},
                               memory_train_vs_deploy={}, allocator_train_vs_deploy={},
                               ours_vs_peers={}, backends={})
    if reference is None:
        return out
    ref = key[reference]['examples_per_s']
    out['vs_reference'] = {k: r['examples_per_s'] / ref for k, r in key.items()}
    for model in dict.fromkeys(r['model'] for r in base):
        pair = [base_key.get(f'{model}/{v}') for v in ('deploy', 'train')]
        if pair[0] is None or pair[1] is None:
            pair = [base_key.get(f'{model}/{v}') for v in ('fused', 'unfused')]
        if pair[0] is not None and pair[1] is not None:
            out['deploy_vs_train'][model] = pair[0]['examples_per_s'] / pair[1]['examples_per_s']
            for name, field_ in (('memory_train_vs_deploy', 'peak_memory_mb'),
                                 ('allocator_train_vs_deploy', 'allocator_peak_mb')):
                if pair[0].get(field_) and pair[1].get(field_):
                    out[name][model] = pair[1][field_] / pair[0][field_]
    ours = {r['arch']: r for r in base if r.get('family') == 'repvgg' and r.get('arch')
            and r['variant'] == 'deploy'}
    for r in base:
        if r.get('family') != 'peer' or r.get('arch') not in ours:
            continue
        out['ours_vs_peers'].setdefault(ours[r['arch']]['model'], {})[r['source']] = \
            _paired(ours[r['arch']], r)['median']
    for r in results:
        mine = base_key.get(f'{r["model"]}/{r["variant"]}')
        if first_backend is None or r.get('backend') == first_backend or mine is None:
            continue
        out['backends'].setdefault(f'{r["model"]}/{r["variant"]}', {})[r['backend']] = dict(
            vs=first_backend, **_paired(r, mine))
    return out


def _paired(a: dict, b: dict) -> dict:
    """Speed of ``a`` over ``b``: median, min and max over rounds of the same-round ratio."""
    paired = [x / y for x, y in zip(a.get('rounds', []), b.get('rounds', []))]
    if not paired:
        ratio = a['examples_per_s'] / b['examples_per_s']
        return dict(median=ratio, min=ratio, max=ratio)
    return dict(median=statistics.median(paired), min=min(paired), max=max(paired))


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



