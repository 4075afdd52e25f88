"""Speed (examples/second) and peak memory in the paper's protocol (Sect. 4.1, Table 4, 8).

Protocol of the paper: batch 128 at 224x224 (classification) or batch 16 at 713x713
(segmentation), fp32, 50 warm-up batches, then 50 timed batches; every model on the same
device; the baselines' conv-BN pairs folded into convs with bias. Here each model is
measured in one or more *variants*:

- RepVGG: ``train`` (the training-time multi-branch model, in eval mode) and ``deploy``
  (re-parameterized: one 3x3 conv per block);
- baselines: ``fused`` (conv-BN folded, the paper's protocol) and, on request, ``unfused``.

Timed rounds are interleaved over all variants (round 1 of every variant, then round 2, ...),
so a noisy machine slows them all alike; the speed of a variant is its median round (the
best round is kept too), and ratios are computed from the same run.
"""
from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from ..models.block import reparameterize
from .conv_bn import fuse_conv_bn_pairs
from .memory import peak_forward_memory
from .models import TensorForward, build_model, default_input_shape, example_input

#: The paper's speed protocol per task: batch, (H, W), warm-up batches, timed batches.
PAPER_PROTOCOL = {'cls': dict(batch=128, shape=(224, 224), warmup=50, iters=50),
                  'seg': dict(batch=16, shape=(713, 713), warmup=50, iters=50)}

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def device_info(device: str | torch.device = 'cpu') -> dict:
    """What the numbers were measured on: CPU model, threads, GPU, library versions."""
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
                mkldnn=torch.backends.mkldnn.is_available())
    if device.type == 'cuda':
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


@dataclass
class Variant:
    """One model form to time.

    Attributes:
        model: Display name of the model (``'RepVGG-A0'``).
        variant: ``'train'``, ``'deploy'``, ``'fused'`` or ``'unfused'``.
        family: ``'repvgg'`` or ``'baseline'``.
        task: ``'cls'`` or ``'seg'``.
        module: The callable module (``TensorForward``-wrapped).
        params: Parameters of this form.
    """

    model: str
    variant: str
    family: str
    task: str
    module: nn.Module
    params: int
    result: dict = field(default_factory=dict)


def prepare_variants(spec: str, variants: Sequence[str] = ('train', 'deploy', 'fused'),
                     num_classes: int = 1000, probe_shape: tuple[int, int] = (224, 224),
                     cfg_options: dict | None = None) -> list[Variant]:
    """Build the requested forms of one model.

    Args:
        spec: Arch name, baseline name or config path.
        variants: Forms to build, among ``train``/``deploy`` (RepVGG models) and
            ``fused``/``unfused`` (baselines); those that do not apply are skipped.
        num_classes: Classes of a classifier built from a name.
        probe_shape: Input size for finding and checking the conv-BN pairs of a baseline.
        cfg_options: Overrides for a config.

    Returns:
        The forms, each in eval mode on the CPU in fp32.
    """
    built = build_model(spec, num_classes=num_classes, cfg_options=cfg_options)
    base = TensorForward(built.model).eval()
    out = []

    def add(name: str, module: nn.Module) -> None:
        out.append(Variant(built.name, name, built.family, built.task, module,
                           sum(p.numel() for p in module.parameters())))

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


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def backend_supported(dtype: str, device: str | torch.device) -> tuple[bool, str]:
    """Whether a reduced precision runs on the device (tried on a tiny conv).

    Returns:
        ``(ok, reason)``.
    """
    if dtype == 'fp32':
        return True, ''
    device = torch.device(device)
    try:
        conv = nn.Conv2d(3, 4, 3).to(device=device, dtype=DTYPES[dtype])
        with torch.no_grad():
            conv(torch.zeros(1, 3, 8, 8, device=device, dtype=DTYPES[dtype]))
    except (RuntimeError, NotImplementedError) as err:
        return False, f'{dtype} conv not supported on {device.type}: {err}'.splitlines()[0]
    if device.type == 'cpu' and dtype == 'bf16' and hasattr(torch.backends, 'mkldnn'):
        if not torch.backends.mkldnn.is_available():
            return False, 'bf16 on CPU needs oneDNN'
    return True, ''


#: Backends that run an exported ONNX model in ONNX Runtime (CPU, fp32 in and out).
ORT_BACKENDS = ('onnxruntime', 'onnxruntime-int8')


class _OrtModule:
    """An ONNX Runtime session with the module's call signature (one tensor in, out).

    The session is built by :func:`mmrepvgg.deploy.onnx_export.export_for_timing` (dynamic
    batch); ``int8`` quantizes it first (QDQ, calibrated on random inputs: the speed is
    real, the accuracy is not; ``tools/quantize.py --eval`` measures both on data).
    """

    def __init__(self, module: nn.Module, example: Tensor, threads: int,
                 int8: bool = False) -> None:
        from ..deploy.onnx_export import export_for_timing
        transform = None
        if int8:
            from ..deploy.quantize import quantize_for_timing
            transform = lambda proto: quantize_for_timing(proto, example.numpy())  # noqa: E731
        self.session = export_for_timing(module, example, threads, transform=transform)
        self.name = self.session.get_inputs()[0].name

    def __call__(self, x: Tensor) -> Any:
        return self.session.run(None, {self.name: x.numpy()})


def make_runner(module: nn.Module, x: Tensor, backend: str, device: torch.device,
                dtype: str) -> Callable[[], Any]:
    """A no-argument callable that runs one batch with the chosen backend.

    Args:
        module: The module (eval mode, on the CPU in fp32; it is moved here).
        x: The input batch (on the CPU in fp32; it is moved here).
        backend: ``'eager'``, ``'channels_last'``, ``'compile'``, ``'onnxruntime'`` or
            ``'onnxruntime-int8'``.
        device: Where to run.
        dtype: ``'fp32'``, ``'bf16'`` or ``'fp16'``.

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
    x = x.to(device=device, dtype=DTYPES[dtype])
    if backend in ('channels_last', 'compile_channels_last'):
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if backend.startswith('compile'):
        module = torch.compile(module)

    def run() -> Any:
        with torch.no_grad():
            return module(x)

    return run


def time_runner(run: Callable[[], Any], iters: int, device: torch.device) -> float:
    """Seconds for ``iters`` calls of ``run`` (synchronized on CUDA)."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        run()
    _sync(device)
    return time.perf_counter() - start


def run_benchmark(specs: Sequence[str], batch: int | None = None,
                  shape: tuple[int, int] | None = None, warmup: int | None = None,
                  iters: int | None = None, rounds: int = 1, device: str = 'cpu',
                  dtype: str = 'fp32', backend: str = 'eager',
                  variants: Sequence[str] = ('train', 'deploy', 'fused'),
                  memory: bool = False, memory_batch: int | None = None,
                  num_classes: int = 1000, cfg_options: dict | None = None) -> dict:
    """Time every form of every model in one run and compute the ratios.

    Args:
        specs: Models (arch names, baseline names, config paths); all of one task.
        batch: Batch size (default: the paper's, 128 or 16).
        shape: ``(H, W)`` (default: the paper's, 224x224 or 713x713).
        warmup: Warm-up batches per variant (default 50).
        iters: Timed batches per variant and round (default 50).
        rounds: Interleaved timed rounds; the median round gives the speed.
        device: ``'cpu'`` or ``'cuda'``.
        dtype: ``'fp32'`` (the paper's), ``'bf16'`` or ``'fp16'``.
        backend: ``'eager'``, ``'channels_last'``, ``'compile'``, ``'compile_channels_last'``,
            ``'onnxruntime'`` or ``'onnxruntime-int8'``.
        variants: Forms to measure (see :func:`prepare_variants`).
        memory: Also measure the peak inference memory (:mod:`mmrepvgg.analysis.memory`).
        memory_batch: Batch for the memory measurement (default: ``batch``).
        num_classes: Classes of classifiers built from names.
        cfg_options: Overrides for configs.

    Returns:
        ``dict(device_info, protocol, results, ratios, skipped)``, json-serializable.
    """
    dev = torch.device(device)
    ok, reason = backend_supported(dtype, dev)
    if not ok:
        raise RuntimeError(reason)
    if backend in ORT_BACKENDS:  # fail before building models, not with an empty table
        from ..deploy.onnx_export import require
        for package in ('onnx', 'onnxruntime', 'onnxscript'):
            require(package)
    all_variants: list[Variant] = []
    for spec in specs:
        print_log(f'benchmark: building {spec}', logger='current')
        all_variants += prepare_variants(spec, variants, num_classes, cfg_options=cfg_options)
    tasks = {v.task for v in all_variants}
    if len(tasks) != 1:
        raise ValueError(f'benchmark one task at a time, got {sorted(tasks)}')
    task = tasks.pop()
    proto = dict(PAPER_PROTOCOL[task])
    for key, value in (('batch', batch), ('shape', shape), ('warmup', warmup), ('iters', iters)):
        if value is not None:
            proto[key] = tuple(value) if key == 'shape' else value
    proto.update(rounds=rounds, dtype=dtype, backend=backend, task=task,
                 paper_protocol=proto == {**PAPER_PROTOCOL[task], 'rounds': rounds,
                                          'dtype': 'fp32', 'backend': 'eager', 'task': task}
                 and dtype == 'fp32')
    x = example_input(proto['shape'], proto['batch'])
    skipped = []
    runners = []
    for v in all_variants:
        try:
            runners.append((v, make_runner(v.module, x, backend, dev, dtype)))
        except ImportError as err:
            skipped.append(dict(model=v.model, variant=v.variant, reason=str(err)))
    for v, run in runners:
        print_log(f'benchmark: warm-up {v.model} [{v.variant}] x{proto["warmup"]}',
                  logger='current')
        time_runner(run, max(proto['warmup'], 1), dev)
    per_round: dict[int, list[float]] = {i: [] for i in range(len(runners))}
    for r in range(rounds):
        for i, (v, run) in enumerate(runners):
            seconds = time_runner(run, proto['iters'], dev)
            per_round[i].append(proto['batch'] * proto['iters'] / seconds)
            print_log(f'benchmark: round {r + 1}/{rounds} {v.model} [{v.variant}]: '
                      f'{per_round[i][-1]:.2f} examples/s', logger='current')
    results = []
    for i, (v, _) in enumerate(runners):
        speed = statistics.median(per_round[i])
        res = dict(model=v.model, variant=v.variant, family=v.family, task=v.task,
                   params_m=v.params / 1e6, examples_per_s=speed,
                   best_examples_per_s=max(per_round[i]),
                   ms_per_batch=1000 * proto['batch'] / speed, rounds=per_round[i])
        if memory:
            mb = memory_batch or proto['batch']
            xm = example_input(proto['shape'], mb).to(dev)
            module = v.module.to(dev)
            mem = peak_forward_memory(lambda: module(xm), dev)
            res.update(peak_memory_mb=mem['peak_bytes'] / 2**20, memory_method=mem['method'],
                       memory_batch=mb)
        results.append(res)
        v.result = res
    return dict(device_info=device_info(dev), protocol=_jsonable(proto), results=results,
                ratios=compute_ratios(results), skipped=skipped)


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
        memory_train_vs_deploy={model: ratio})``.
    """
    key = {f'{r["model"]}/{r["variant"]}': r for r in results}
    if reference is None:
        reference = next((k for k, r in key.items() if r['variant'] in ('deploy', 'fused')),
                         next(iter(key), None))
    out: dict[str, Any] = dict(reference=reference, vs_reference={}, deploy_vs_train={},
                               memory_train_vs_deploy={})
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
            if 'peak_memory_mb' in pair[0] and 'peak_memory_mb' in pair[1]:
                out['memory_train_vs_deploy'][model] = (pair[1]['peak_memory_mb']
                                                       / pair[0]['peak_memory_mb'])
    return out


def benchmark_markdown(report: dict) -> str:
    """The benchmark as a markdown table, with the device and protocol above it."""
    info, proto = report['device_info'], report['protocol']
    lines = [f"Device: {info.get('gpu') or info['cpu']} ({info['device']}, "
             f"{info['torch_threads']} threads), torch {info['torch']}",
             f"Protocol: batch {proto['batch']} at {proto['shape'][0]}x{proto['shape'][1]}, "
             f"{proto['dtype']}, {proto['backend']}, {proto['warmup']} warm-up + "
             f"{proto['iters']} timed batches x {proto['rounds']} interleaved round(s), "
             f"median round" + ('' if proto.get('paper_protocol') else
                                " (reduced from the paper's protocol)"),
             '']
    ratios = report['ratios']
    has_mem = any('peak_memory_mb' in r for r in report['results'])
    head = ['Model', 'Variant', 'Params (M)', 'Examples/s (median)', 'Best round',
            f"Speed vs {ratios['reference']}"]
    if has_mem:
        head.append('Peak memory (MB)')
    lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in report['results']:
        k = f"{r['model']}/{r['variant']}"
        cells = [r['model'], r['variant'], f"{r['params_m']:.2f}", f"{r['examples_per_s']:.2f}",
                 f"{r.get('best_examples_per_s', r['examples_per_s']):.2f}",
                 f"{ratios['vs_reference'][k]:.2f}x"]
        if has_mem:
            mem = r.get('peak_memory_mb')
            cells.append('-' if mem is None else f'{mem:.1f} (batch {r["memory_batch"]})')
        lines.append('| ' + ' | '.join(cells) + ' |')
    if ratios['deploy_vs_train']:
        lines += ['', 'Same model, deployed (RepVGG: re-parameterized; baseline: conv-BN fused) '
                  'vs training-time form:', '']
        lines += ['| Model | Speed-up | Peak memory train/deploy |', '|---|---|---|']
        for model, ratio in ratios['deploy_vs_train'].items():
            mem = ratios['memory_train_vs_deploy'].get(model)
            lines.append(f"| {model} | {ratio:.2f}x | {'-' if mem is None else f'{mem:.2f}x'} |")
    for s in report.get('skipped', []):
        lines.append(f"\nSkipped {s['model']} [{s['variant']}]: {s['reason']}")
    return '\n'.join(lines)
