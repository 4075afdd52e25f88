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

Timed rounds are interleaved over all variants (:func:`time_interleaved`: round 1 of every
variant, then round 2, ...; the order is rotated by one each round so that no variant always
runs first), so a noisy
machine slows them all alike; the speed of a variant is its median round (the best round is
kept too), and ratios are computed from the same run.

On CUDA the float32 precision is set explicitly for the run (``fp32`` = strict IEEE, ``tf32``
= TF32 convs and matmuls; :mod:`mmrepvgg.analysis.precision`) and ``cudnn.benchmark`` is on
(as in the official speed test); both are restored afterwards and recorded in the report.
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import os.path as osp
import platform
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from ..models.block import reparameterize
from .conv_bn import fuse_conv_bn_pairs
from .memory import peak_forward_memory
from .models import TensorForward, build_model, example_input, resolve_name
from .models import validate_specs as validate_model_specs
from .peers import (PEER_SOURCES, PEER_TOLERANCE, PEER_WEIGHTS, build_peer, check_same_outputs,
                    copy_weights, parse_peer, peer_specs)
from .precision import (DTYPES, backend_supported, cudnn_benchmark, float32_precision,
                        measure_matmul_peak, precision_label, resolve_device, tf32_state)

#: The paper's speed protocol per task: batch, (H, W), warm-up batches, timed batches.
PAPER_PROTOCOL = {'cls': dict(batch=128, shape=(224, 224), warmup=50, iters=50),
                  'seg': dict(batch=16, shape=(713, 713), warmup=50, iters=50)}

#: The speed comparisons the paper makes (faster model, slower model), deployed / fused
#: forms, with the paper's 1080Ti speeds taken from configs/metafile.yml (Tables 4 and 8).
PAPER_PAIRS = [('RepVGG-A0', 'ResNet-18'), ('RepVGG-B0', 'ResNet-34'),
               ('RepVGG-A2', 'ResNet-50'), ('RepVGG-B1g2', 'ResNet-152'),
               ('RepVGG-B2', 'ResNet-101'),
               ('pspnet_repvgg-b1g2-fast_cityscapes', 'pspnet_r50_cityscapes'),
               ('pspnet_repvgg-b2-fast_cityscapes', 'pspnet_r101_cityscapes'),
               ('pspnet_repvgg-b2_cityscapes', 'pspnet_repvgg-b2-fast_cityscapes')]
#: Paper Table 6: RepVGG-B0 with all branches, deployed vs before conversion (examples/s).
PAPER_B0_DEPLOY_VS_TRAIN = (1810, 1061)


def device_info(device: str | torch.device = 'cpu') -> dict:
    """What the numbers were measured on: CPU model, threads, GPU, library versions, and the
    float32 precision switches in effect now (:func:`~mmrepvgg.analysis.precision.tf32_state`).
    """
    device = torch.device(device)
    cpu = platform.processor() or ''
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f
                        if line.startswith('model name')), cpu)
    except OSError:
        pass
    info = dict(device=str(device), cpu=cpu, cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), platform=platform.platform(),
                mkldnn=torch.backends.mkldnn.is_available(), precision=tf32_state())
    if device.type == 'cuda':
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


@dataclass
class Variant:
    """One model form to time.

    Attributes:
        model: Display name of the model (``'RepVGG-A0'``, ``'RepVGG-A0 [timm]'``).
        variant: ``'train'``, ``'deploy'``, ``'fused'`` or ``'unfused'``.
        family: ``'repvgg'``, ``'baseline'`` or ``'peer'``.
        task: ``'cls'`` or ``'seg'``.
        module: The callable module (``TensorForward``-wrapped).
        params: Parameters of this form.
        arch: The RepVGG arch (``'A0'``) of an arch-named RepVGG or a peer, else ``None``.
        source: ``'mmrepvgg'`` for ours, the library of a peer.
        weights: A peer's weights: ``'ours'`` (copied from our deployed model of the same
            arch) or ``'own'``; ``None`` for our models.
        weights_max_rel_diff: A peer given our weights: max relative difference of its
            output from ours (fp32, CPU).
    """

    model: str
    variant: str
    family: str
    task: str
    module: nn.Module
    params: int
    arch: str | None = None
    source: str = 'mmrepvgg'
    weights: str | None = None
    weights_max_rel_diff: float | None = None


def validate_specs(specs: Sequence[str]) -> None:
    """Check every model spec, peers included, before anything is built or timed.

    Peer specs with :func:`~mmrepvgg.analysis.peers.parse_peer`, the others with
    :func:`mmrepvgg.analysis.models.validate_specs`.

    Raises:
        KeyError: An unknown arch, baseline or peer.
        FileNotFoundError: A config path that does not exist.
    """
    validate_model_specs([spec for spec in specs if parse_peer(spec) is None])


def with_peers(specs: Sequence[str], sources: Sequence[str] = PEER_SOURCES) -> list[str]:
    """``specs`` with each RepVGG arch followed by its peers (``A0`` -> ``A0 timm:A0 ...``)."""
    out = []
    for spec in specs:
        out.append(spec)
        if parse_peer(spec) is None:
            kind, name = resolve_name(spec)
            if kind == 'repvgg':
                out += [p for p in peer_specs(name, tuple(sources)) if p not in specs]
    return out


def prepare_variants(spec: str, variants: Sequence[str] = ('train', 'deploy', 'fused'),
                     num_classes: int = 1000, probe_shape: tuple[int, int] = (224, 224),
                     cfg_options: dict | None = None) -> list[Variant]:
    """Build the requested forms of one model.

    Args:
        spec: Arch name, baseline name, peer spec (``timm:A0``) or config path.
        variants: Forms to build, among ``train``/``deploy`` (RepVGG models) and
            ``fused``/``unfused`` (baselines); those that do not apply are skipped. A peer
            is always built deployed.
        num_classes: Classes of a classifier built from a name.
        probe_shape: Input size for finding and checking the conv-BN pairs of a baseline.
        cfg_options: Overrides for a config.

    Returns:
        The forms, each in eval mode on the CPU in fp32.
    """
    peer = parse_peer(spec)
    if peer is not None:
        built = build_peer(spec, num_classes)
        module = TensorForward(built.model).eval()
        return [Variant(built.name, 'deploy', 'peer', 'cls', module,
                        sum(p.numel() for p in module.parameters()), arch=peer[1],
                        source=peer[0], weights='own')]
    kind, name = resolve_name(spec)
    built = build_model(spec, num_classes=num_classes, cfg_options=cfg_options)
    base = TensorForward(built.model).eval()
    arch = name if kind == 'repvgg' else None
    out = []

    def add(vname: str, module: nn.Module) -> None:
        out.append(Variant(built.name, vname, built.family, built.task, module,
                           sum(p.numel() for p in module.parameters()), arch=arch))

    if built.family == 'repvgg':
        if 'train' in variants:
            add('train', copy.deepcopy(base) if 'deploy' in variants else base)
        if 'deploy' in variants:
            add('deploy', reparameterize(base))
    else:
        if 'unfused' in variants:
            add('unfused', copy.deepcopy(base) if 'fused' in variants else base)
        if 'fused' in variants:
            fuse_conv_bn_pairs(base, example_input(probe_shape))
            add('fused', base)
    return out


def share_peer_weights(all_variants: Sequence[Variant], num_classes: int = 1000,
                       shape: tuple[int, int] = (224, 224),
                       tolerance: float = PEER_TOLERANCE) -> None:
    """Give every peer our deployed weights of its arch and check that its output is ours.

    Our deployed model of the arch is taken from ``all_variants`` (or built and folded if the
    run has none). Its parameters and buffers are copied into the peer
    (:func:`~mmrepvgg.analysis.peers.copy_weights`, keys matched through the key maps, shapes
    checked), then both run one random batch of 2 at ``shape`` on the CPU in fp32
    (:func:`~mmrepvgg.analysis.peers.check_same_outputs`). The peer's ``weights`` becomes
    ``'ours'`` and ``weights_max_rel_diff`` the measured difference.

    Args:
        all_variants: The run's variants (CPU, fp32, not yet timed); peers are changed.
        num_classes: Classes of an arch built here.
        shape: ``(H, W)`` of the check batch.
        tolerance: Max relative output difference.

    Raises:
        ValueError: A peer's weights do not map onto ours, or its output differs.
    """
    ours = {v.arch: v for v in all_variants if v.family == 'repvgg' and v.arch
            and v.variant == 'deploy' and v.source == 'mmrepvgg'}
    for v in all_variants:
        if v.family != 'peer':
            continue
        if v.arch not in ours:
            print_log(f'benchmark: building our deployed {v.arch} for its weights',
                      logger='current')
            ours[v.arch] = prepare_variants(v.arch, ('deploy', ), num_classes)[0]
        mine = ours[v.arch]
        copy_weights(mine.module, v.module, 'mmrepvgg', v.source)
        v.weights = 'ours'
        v.weights_max_rel_diff = check_same_outputs(mine.module, v.module, shape, tolerance,
                                                    what=v.model)
        print_log(f'benchmark: {v.model} has our weights; output vs ours: max rel diff '
                  f'{v.weights_max_rel_diff:.3g}', logger='current')


#: Backends that run an exported ONNX model in ONNX Runtime (CPU, fp32 in and out).
ORT_BACKENDS = ('onnxruntime', 'onnxruntime-int8')


class _OrtModule:
    """An ONNX Runtime session with the module's call signature (one tensor in, out).

    The session is built by :func:`mmrepvgg.deploy.onnx_export.export_for_timing` (TorchScript
    exporter, dynamic batch); ``int8`` quantizes it first (QDQ, calibrated on random inputs: the speed is
    real, the accuracy is not; ``tools/quantize.py --eval`` measures both on data).
    """

    def __init__(self, module: nn.Module, example: Tensor, threads: int,
                 int8: bool = False) -> None:
        from ..deploy.onnx_export import export_for_timing
        transform = None
        if int8:
            from ..deploy.quantize import quantize_for_timing
            transform = lambda proto: quantize_for_timing(proto, example.numpy())  # noqa: E731
        # TorchScript exporter: torch.export (dynamo) refuses to run under the float32
        # precision switches run_benchmark sets with torch's new TF32 API
        self.session = export_for_timing(module, example, threads, exporter='torchscript',
                                         transform=transform)
        self.name = self.session.get_inputs()[0].name

    def __call__(self, x: Tensor) -> Any:
        return self.session.run(None, {self.name: x.numpy()})


def _to_backend(x: Tensor, device: torch.device, dtype: str, backend: str) -> Tensor:
    x = x.to(device=device, dtype=DTYPES[dtype])
    if 'channels_last' in backend:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def make_runner(module: nn.Module, x: Tensor, backend: str, device: torch.device,
                dtype: str) -> Callable[[], Any]:
    """A no-argument callable that runs one batch with the chosen backend.

    Args:
        module: The module (eval mode, on the CPU in fp32; it is moved here).
        x: The input batch (on the CPU in fp32; it is moved here).
        backend: ``'eager'``, ``'channels_last'``, ``'compile'``, ``'onnxruntime'`` or
            ``'onnxruntime-int8'``.
        device: Where to run.
        dtype: ``'fp32'``, ``'tf32'``, ``'bf16'`` or ``'fp16'``.

    Returns:
        The runner.

    Raises:
        ImportError: ``onnxruntime`` was asked for but is not installed.
    """
    if backend in ORT_BACKENDS:
        if device.type != 'cpu' or dtype != 'fp32':
            raise ValueError(f'the {backend} backend runs fp32 in and out on the CPU here')
        ort = _OrtModule(module, x[:1], torch.get_num_threads(), int8=backend.endswith('int8'))
        return lambda: ort(x)
    module = module.to(device=device, dtype=DTYPES[dtype])
    x = _to_backend(x, device, dtype, backend)
    if 'channels_last' in backend:
        module = module.to(memory_format=torch.channels_last)
    if backend.startswith('compile'):
        module = torch.compile(module)

    def run() -> Any:
        with torch.no_grad():
            return module(x)

    return run


def device_sync(device: str | torch.device) -> Callable[[], None] | None:
    """What waits for a device's queued work before the clock is read (``None``: the CPU,
    whose calls return when done)."""
    device = torch.device(device)
    if device.type == 'cuda':
        return lambda: torch.cuda.synchronize(device)
    return None


def time_interleaved(runs: Mapping[str, Callable[[], Any]]
                     | Sequence[tuple[str, Callable[[], Any]]], iters: int, rounds: int = 1,
                     warmup: int = 1, examples: int = 1, sync: Callable[[], None] | None = None,
                     log: str | None = 'benchmark') -> list[list[float]]:
    """Time callables in interleaved rounds, the one timing loop of the analysis tools.

    Each callable runs one batch (``fn()``, its result ignored): a model on its input
    (:func:`make_runner`), an ONNX Runtime session, anything. First ``warmup`` untimed calls
    of each (at least one: a compiled or cuDNN-autotuned model's first call is not timed).
    Then ``rounds`` rounds; in each, every callable makes ``iters`` calls back to back,
    timed with ``time.perf_counter`` between two ``sync()``. The order is rotated by one each
    round (a, b, c; then b, c, a; ...), so a noisy machine slows them all alike and none always
    runs first.

    Args:
        runs: ``{label: fn}`` or ``[(label, fn)]`` (labels name them in the log only, and
            may repeat in a list).
        iters: Timed calls per callable and round.
        rounds: Timed rounds.
        warmup: Untimed calls of each before the first round (at least 1).
        examples: Examples per call (the batch size): the rates are examples/s; 1 gives
            calls/s.
        sync: Waits for the device's queued work (:func:`device_sync`; ``None``: nothing
            to wait for).
        log: Prefix of the progress lines (``print_log``); ``None``: silent.

    Returns:
        For each callable, in the order given, its examples/s in each round (round order).
        The speed is the median round (``statistics.median``), the best round the max;
        ratios of two callables are best taken per round (they ran back to back).
    """
    items = list(runs.items() if isinstance(runs, Mapping) else runs)
    sync = sync or (lambda: None)

    def timed(fn: Callable[[], Any], calls: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return time.perf_counter() - start

    for label, fn in items:
        if log:
            print_log(f'{log}: warm-up {label} x{max(warmup, 1)}', logger='current')
        timed(fn, max(warmup, 1))
    n = len(items)
    rates: list[list[float]] = [[] for _ in items]
    for r in range(rounds):
        for i in [(r + k) % n for k in range(n)]:
            label, fn = items[i]
            rates[i].append(examples * iters / timed(fn, iters))
            if log:
                print_log(f'{log}: round {r + 1}/{rounds} {label}: {rates[i][-1]:.2f} '
                          'examples/s', logger='current')
    return rates


def protocol_differences(proto: dict) -> list[str]:
    """How a protocol differs from the paper's (empty: it is the paper's protocol).

    The paper's protocol is batch 128 at 224x224 (classification) or batch 16 at 713x713
    (segmentation), 50 warm-up + 50 timed batches, strict fp32 (no TF32), eager PyTorch.
    More than one interleaved round of 50 timed batches does not change it.

    Args:
        proto: ``run_benchmark()['protocol']``.

    Returns:
        Short descriptions of every difference.
    """
    paper = PAPER_PROTOCOL.get(proto.get('task'))
    if paper is None:
        return [f"task {proto.get('task')!r}"]
    out = []
    if proto['batch'] != paper['batch']:
        out.append(f"batch {proto['batch']} (paper {paper['batch']})")
    if tuple(proto['shape']) != tuple(paper['shape']):
        out.append(f"{proto['shape'][0]}x{proto['shape'][1]} "
                   f"(paper {paper['shape'][0]}x{paper['shape'][1]})")
    if (proto['warmup'], proto['iters']) != (paper['warmup'], paper['iters']):
        out.append(f"{proto['warmup']} + {proto['iters']} batches "
                   f"(paper {paper['warmup']} + {paper['iters']})")
    if proto['dtype'] != 'fp32':
        out.append(f"{proto['dtype']} (paper strict fp32)")
    elif proto.get('tf32_conv') or proto.get('tf32_matmul'):
        out.append('TF32 on (paper strict fp32)')
    elif proto.get('tf32_conv') is None or proto.get('tf32_matmul') is None:
        out.append('TF32 state not recorded')
    if proto['backend'] != 'eager':
        out.append(f"{proto['backend']} (paper eager)")
    return out


def is_paper_protocol(proto: dict) -> bool:
    """True exactly for the paper's protocol (see :func:`protocol_differences`)."""
    return not protocol_differences(proto)


def _count_macs(module: nn.Module, x: Tensor) -> int | None:
    from .complexity import count_complexity
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
            (:func:`~mmrepvgg.analysis.precision.resolve_device`).
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
    validate_specs(specs)
    if backend in ORT_BACKENDS:  # fail before building models, not with an empty table
        from ..deploy.onnx_export import require
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
            x1 = _to_backend(x1, dev, dtype, backend)
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
        xm = _to_backend(xm, dev, dtype, backend)
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


def _device_line(info: dict, date: str | None = None) -> str:
    line = (f"Device: {info.get('gpu') or info['cpu']} ({info['device']}, "
            f"{info['torch_threads']} threads), torch {info['torch']}")
    if info.get('cudnn'):
        line += f", CUDA {info.get('cuda')}, cuDNN {info['cudnn']}"
    if date:
        line += f', measured {date[:10]}'
    return line


def _protocol_line(proto: dict) -> str:
    precision = proto.get('precision') or f"{proto['dtype']} (TF32 state not recorded)"
    if proto.get('device') == 'cpu':
        autotune = ''
    elif 'cudnn_benchmark' in proto:
        autotune = f"cudnn.benchmark {'on' if proto['cudnn_benchmark'] else 'off'}, "
    else:
        autotune = 'cudnn.benchmark not recorded, '
    diffs = protocol_differences(proto)
    line = (f"Protocol: batch {proto['batch']} at {proto['shape'][0]}x{proto['shape'][1]}, "
            f"{precision}, {proto['backend']}, {autotune}{proto['warmup']} warm-up + "
            f"{proto['iters']} timed batches x {proto['rounds']} interleaved round(s), "
            'median round')
    if not diffs:
        return line + " (the paper's protocol)"
    return line + f" (differs from the paper's protocol: {'; '.join(diffs)})"


def benchmark_markdown(report: dict) -> str:
    """The benchmark as markdown tables, with the device and protocol above them.

    Works on any saved report, also on json written by older versions (which did not record
    the TF32 state: the protocol line then says so), and on a ``--fold-time`` report (one
    :func:`fold_time_line` per arch).
    """
    if 'fold_time' in report and 'results' not in report:
        return '\n'.join(fold_time_line(r) for r in report['fold_time'])
    info, proto = report['device_info'], report['protocol']
    results = report['results']
    lines = [_device_line(info, report.get('date'))]
    if results:
        lines.append(_protocol_line(proto))
    peak = report.get('peak')
    if peak:
        lines.append(f"Peak: {peak['tflops']:.3g} TFLOP/s ({peak['source']})")
    lines.append('')
    ratios = report['ratios']
    has_mem = any('peak_memory_mb' in r for r in results)
    has_alloc = any('allocator_peak_mb' in r for r in results)
    has_flops = any('achieved_tflops' in r for r in results)
    has_peak = any('fraction_of_peak' in r for r in results)
    old_cuda_mem = has_mem and not has_alloc and any(
        r.get('memory_method') == 'cuda.max_memory_allocated' for r in results)
    head = ['Model', 'Variant', 'Params (M)', 'Examples/s (median)', 'Best round',
            f"Speed vs {ratios['reference']}"]
    if has_flops:
        head += ['GMACs/example', 'TFLOP/s (2 x MACs)']
    if has_peak:
        head.append('% of peak')
    if has_mem:
        head.append('Allocator peak (MB)' if old_cuda_mem else 'Feature maps (MB)')
    if has_alloc:
        head.append('Allocator peak (MB)')
    if results:
        lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in results:
        k = f"{r['model']}/{r['variant']}"
        cells = [r['model'], r['variant'], f"{r['params_m']:.2f}", f"{r['examples_per_s']:.2f}",
                 f"{r.get('best_examples_per_s', r['examples_per_s']):.2f}",
                 f"{ratios['vs_reference'][k]:.2f}x"]
        if has_flops:
            cells += [_fmt(r.get('gmacs_per_example'), '.2f'),
                      _fmt(r.get('achieved_tflops'), '.3g')]
        if has_peak:
            frac = r.get('fraction_of_peak')
            cells.append('-' if frac is None else f'{100 * frac:.0f}%')
        if has_mem:
            mem = r.get('peak_memory_mb')
            cells.append('-' if mem is None else f'{mem:.1f} (batch {r["memory_batch"]})')
        if has_alloc:
            cells.append(_fmt(r.get('allocator_peak_mb'), '.1f'))
        lines.append('| ' + ' | '.join(cells) + ' |')
    if has_flops:
        lines += ['', 'GMACs/example: conv and FC multiply-adds per example '
                  '(`mmrepvgg.analysis.complexity`, the paper\'s FLOPs); TFLOP/s counts a '
                  'multiply-add as 2 operations, as a matmul peak does.']
    if has_mem:
        if old_cuda_mem:
            lines += ['', 'Memory: `torch.cuda.max_memory_allocated` during one forward (this '
                      'older report did not track feature maps; cuDNN workspace included).']
        else:
            lines += ['', "Feature maps: the largest total of tensor storages alive at once "
                      "during one forward (dispatch tracker; weights, input and library "
                      "workspace not counted): what the paper's Fig. 3 is about."]
        if has_alloc:
            lines[-1] += (' Allocator peak: `torch.cuda.max_memory_allocated` during the '
                          'forward minus what was allocated before it (cuDNN workspace '
                          'included).')
    if ratios['deploy_vs_train']:
        lines += ['', 'Same model, deployed (RepVGG: re-parameterized; baseline: conv-BN fused) '
                  'vs training-time form:', '']
        mem_head = ('Allocator peak train/deploy' if old_cuda_mem
                    else 'Feature maps train/deploy')
        row_head = ['Model', 'Speed-up', mem_head]
        if ratios.get('allocator_train_vs_deploy'):
            row_head.append('Allocator peak train/deploy')
        lines += ['| ' + ' | '.join(row_head) + ' |', '|' + '---|' * len(row_head)]
        for model, ratio in ratios['deploy_vs_train'].items():
            mem = ratios['memory_train_vs_deploy'].get(model)
            cells = [model, f'{ratio:.2f}x', '-' if mem is None else f'{mem:.2f}x']
            if ratios.get('allocator_train_vs_deploy'):
                cells.append(_fmt(ratios['allocator_train_vs_deploy'].get(model), '.2f', 'x'))
            lines.append('| ' + ' | '.join(cells) + ' |')
    if ratios.get('ours_vs_peers'):
        lines += ['', 'Ours vs peers, deployed, same input and precision (ratio: median over '
                  'rounds of ours / peer in the same round; > 1.00x: ours is faster). '
                  + _peer_weights_line(proto, results), '']
        sources = [s for s in PEER_SOURCES if any(s in v for v in ratios['ours_vs_peers'].values())]
        speeds = {(r.get('arch'), r.get('source')): r['examples_per_s'] for r in results
                  if r['variant'] == 'deploy'}
        row_head = ['Arch', 'ours (examples/s)']
        for s in sources:
            row_head += [f'{s} (examples/s)', f'ours / {s}']
        lines += ['| ' + ' | '.join(row_head) + ' |', '|' + '---|' * len(row_head)]
        for model, peers in ratios['ours_vs_peers'].items():
            arch = model.replace('RepVGG-', '')
            cells = [model, _fmt(speeds.get((arch, 'mmrepvgg')), '.2f')]
            for s in sources:
                cells += [_fmt(speeds.get((arch, s)), '.2f'), _fmt(peers.get(s), '.3f', 'x')]
            lines.append('| ' + ' | '.join(cells) + ' |')
    lines += _paper_pairs(results, ratios)
    for s in report.get('skipped', []):
        lines.append(f"\nSkipped {s['model']} [{s['variant']}]: {s['reason']}")
    return '\n'.join(lines)


def _peer_weights_line(proto: dict, results: list[dict]) -> str:
    """What weights the peers were timed with (a GPU's speed depends on the values)."""
    mode = proto.get('peer_weights')
    if mode == 'shared':
        diffs = [r['weights_max_rel_diff'] for r in results
                 if r.get('family') == 'peer' and r.get('weights_max_rel_diff') is not None]
        worst = f'max rel diff {max(diffs):.2g}' if diffs else 'max rel diff not recorded'
        return (f'Same weights: ours copied into each peer; outputs checked (fp32, CPU: '
                f'{worst}, allowed {PEER_TOLERANCE:g}).')
    if mode == 'own':
        return ("Own weights: each library's own random initialization (a GPU's speed "
                'depends on the weight values; `--peer-weights shared` times the same '
                'weights).')
    return ("Peer weights not recorded: this report is from before weights were shared, so "
            "each library ran its own random initialization (a GPU's speed depends on the "
            'weight values).')


def _paper_pairs(results: list[dict], ratios: dict) -> list[str]:
    """The paper's speed comparisons found in a report, measured vs the paper's 1080Ti."""
    from .metafile import find_paper_model, load_metafile
    speed = {r['model']: r['examples_per_s'] for r in results
             if r['variant'] in ('deploy', 'fused') and r.get('family') != 'peer'}
    paper = load_metafile()
    rows = []
    for fast, slow in PAPER_PAIRS:
        if fast in speed and slow in speed:
            pf, ps = find_paper_model(fast, paper), find_paper_model(slow, paper)
            key = 'Speed (examples/s, 1080Ti)'
            ref = (pf.paper[key] / ps.paper[key] if pf and ps and key in pf.paper
                   and key in ps.paper else None)
            rows.append(f'| {fast} / {slow} | {speed[fast] / speed[slow]:.2f}x | '
                        f"{_fmt(ref, '.2f', 'x')} |")
    b0 = ratios.get('deploy_vs_train', {}).get('RepVGG-B0')
    if b0 is not None:
        rows.append(f'| RepVGG-B0 deployed / training-time (Table 6) | {b0:.2f}x | '
                    f'{PAPER_B0_DEPLOY_VS_TRAIN[0] / PAPER_B0_DEPLOY_VS_TRAIN[1]:.2f}x |')
    if not rows:
        return []
    return ['', "The paper's speed comparisons (deployed / fused forms; paper: GTX 1080Ti, "
            'fp32, configs/metafile.yml):', '', '| Pair | Measured here | Paper |',
            '|---|---|---|'] + rows


def _fmt(value: float | None, spec: str, suffix: str = '') -> str:
    return '-' if value is None else f'{value:{spec}}{suffix}'


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
    from ..models import RepBlockBase, RepVGG
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


def fold_time_line(res: dict) -> str:
    """One line for a :func:`fold_time` result."""
    plan = f", plan {res['dilation_plan']}" if res.get('dilation_plan') else ''
    info = res['device_info']
    return (f"fold RepVGG-{res['arch']} backbone{plan} ({res['blocks']} blocks): median "
            f"{res['median_s']:.3f} s (min {res['min_s']:.3f}, max {res['max_s']:.3f}) over "
            f"{len(res['seconds'])} fresh copies, {res['torch_threads']} torch thread(s), "
            f"{info['cpu']}, torch {info['torch']}")


def save_report(report: dict, text: str, out: str | None = None, markdown: str | None = None,
                force: bool = False, inputs: Sequence[str] = ()) -> None:
    """Write a benchmark report as json and its markdown (headed by the report's command).

    Both go through :func:`mmrepvgg.checkpoint.write_bytes_atomic`, the one writer of every
    output; the tools check the same paths with
    :func:`mmrepvgg.checkpoint.check_output_paths` before their work.

    Args:
        report: The report (its ``command`` heads the markdown).
        text: The markdown of the report.
        out: The json file (None: not written).
        markdown: The markdown file (None: not written).
        force: Overwrite existing files.
        inputs: Files the report is made from (a rendered json): never overwritten.
    """
    from ..checkpoint import write_bytes_atomic, write_json_atomic
    if out:
        write_json_atomic(out, report, force=force, inputs=inputs)
    if markdown:
        write_bytes_atomic(markdown, f"Generated by `{report.get('command', '?')}`.\n\n{text}\n",
                           force=force, inputs=inputs)


#: A block of a markdown file that ``tools/benchmark.py --update-docs`` re-renders from a json:
#: ``<!-- benchmark: docs/gpu/x.json -->`` ... ``<!-- /benchmark -->``.
_MARKED = re.compile(r'(<!-- benchmark: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- /benchmark -->)',
                     re.S)


def update_marked_tables(text: str, root: str = '.') -> tuple[str, list[str]]:
    """Re-render every marked benchmark block of a markdown text from its json.

    Args:
        text: The markdown (e.g. docs/benchmark.md).
        root: Folder the json paths in the markers are relative to (the repo root).

    Returns:
        The new text and the json paths rendered.

    Raises:
        FileNotFoundError: A marker names a json that does not exist.
    """
    paths = []

    def render(m: re.Match) -> str:
        path = m.group('path')
        with open(osp.join(root, path)) as f:
            report = json.load(f)
        paths.append(path)
        body = (f"Generated by `{report.get('command', '?')}`; this table by "
                f"`python tools/benchmark.py --render {path}`.\n\n"
                f"{benchmark_markdown(report)}\n")
        return m.group(1) + body + m.group(4)

    return _MARKED.sub(render, text), paths
