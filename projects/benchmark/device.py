"""The device a benchmark runs on and its precision: ``--device`` checked before anything is
built, what the numbers were measured on, waiting for queued work, float32 precision on CUDA
(TF32 or strict IEEE), cuDNN autotuning and the matmul peak.

On Ampere and newer GPUs PyTorch lets cuDNN run float32 convolutions as TF32 (10-bit
mantissa) by default, while float32 matmuls stay IEEE. A table that says "fp32" then times
TF32 convs; the paper's GTX 1080Ti has no TF32. The benchmark therefore sets both switches
explicitly for the run and records what was in effect:

- ``fp32``: strict IEEE float32 for cuDNN convs and CUDA matmuls (TF32 off), the paper's.
- ``tf32``: float32 tensors, TF32 allowed for cuDNN convs and CUDA matmuls.
- ``bf16`` / ``fp16``: the tensors themselves are reduced precision; the float32 switches are
  set as for ``fp32`` (they only matter for ops that still see float32).

PyTorch has two APIs for the switches. torch >= 2.9 has per-backend ``fp32_precision``
strings (``torch.backends.cudnn.conv.fp32_precision``,
``torch.backends.cuda.matmul.fp32_precision``: ``'ieee'``, ``'tf32'`` or ``'none'`` = inherit)
and refuses to *read* the legacy ``allow_tf32`` flags once the new ones were set; older torch
has only ``torch.backends.cudnn.allow_tf32`` / ``torch.backends.cuda.matmul.allow_tf32``.
:func:`float32_precision` uses the new API where it exists, the legacy one elsewhere, and
always restores the previous state.
"""
from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from typing import Callable, Iterator

import torch
from torch import nn

from mmrepvgg.utils.device import device_info as _base_device_info


#: ``--dtype`` -> tensor dtype; ``tf32`` is float32 tensors with TF32 convs and matmuls.
DTYPES = {'fp32': torch.float32, 'tf32': torch.float32, 'bf16': torch.bfloat16,
          'fp16': torch.float16}


def _new_api() -> bool:
    cudnn_conv = getattr(torch.backends.cudnn, 'conv', None)
    matmul = getattr(torch.backends.cuda, 'matmul', None)
    try:
        return (cudnn_conv is not None and matmul is not None
                and isinstance(cudnn_conv.fp32_precision, str)
                and isinstance(matmul.fp32_precision, str))
    except (AttributeError, RuntimeError):
        return False


def _resolve(chain: list[str]) -> bool | None:
    """TF32 on/off from the first explicit value of an inheritance chain, None if all 'none'."""
    for value in chain:
        if value == 'tf32':
            return True
        if value == 'ieee':
            return False
    return None


def _legacy(getter) -> bool | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            return bool(getter())
    except (RuntimeError, AttributeError):
        return None


def tf32_state() -> dict:
    """The float32 precision switches in effect now, as recorded in a benchmark's json.

    Returns:
        ``dict(api, cudnn_conv_tf32, matmul_tf32, cudnn_benchmark, ...)``: ``api`` is
        ``'fp32_precision'`` (torch >= 2.9) or ``'allow_tf32'``; the two booleans say whether
        TF32 is allowed for cuDNN convs / CUDA matmuls (``None`` where torch cannot tell);
        the raw settings of the API in use are kept beside them.
    """
    b = torch.backends
    state: dict = dict(cudnn_benchmark=bool(b.cudnn.benchmark))
    if _new_api():
        conv = b.cudnn.conv.fp32_precision
        cudnn = getattr(b.cudnn, 'fp32_precision', 'none')
        matmul = b.cuda.matmul.fp32_precision
        generic = getattr(b, 'fp32_precision', 'none')
        state.update(api='fp32_precision', cudnn_conv_fp32_precision=conv,
                     cudnn_fp32_precision=cudnn, cuda_matmul_fp32_precision=matmul,
                     generic_fp32_precision=generic)
        conv_tf32 = _resolve([conv, cudnn, generic])
        matmul_tf32 = _resolve([matmul, generic])
        if conv_tf32 is None:
            conv_tf32 = _legacy(lambda: b.cudnn.allow_tf32)
        if matmul_tf32 is None:
            matmul_tf32 = _legacy(lambda: b.cuda.matmul.allow_tf32)
    else:
        conv_tf32 = _legacy(lambda: b.cudnn.allow_tf32)
        matmul_tf32 = _legacy(lambda: b.cuda.matmul.allow_tf32)
        state.update(api='allow_tf32', cudnn_allow_tf32=conv_tf32,
                     cuda_matmul_allow_tf32=matmul_tf32)
    state.update(cudnn_conv_tf32=conv_tf32, matmul_tf32=matmul_tf32)
    return state


@contextlib.contextmanager
def float32_precision(tf32: bool) -> Iterator[dict]:
    """Allow (``tf32=True``) or forbid TF32 for cuDNN convs and CUDA matmuls, then restore.

    Args:
        tf32: Whether float32 convs and matmuls may run as TF32.

    Yields:
        :func:`tf32_state` inside the context (what the run used).
    """
    b = torch.backends
    if _new_api():
        old = (b.cudnn.conv.fp32_precision, b.cuda.matmul.fp32_precision)
        value = 'tf32' if tf32 else 'ieee'
        b.cudnn.conv.fp32_precision = value
        b.cuda.matmul.fp32_precision = value
        try:
            yield tf32_state()
        finally:
            b.cudnn.conv.fp32_precision, b.cuda.matmul.fp32_precision = old
    else:
        old = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32)
        b.cudnn.allow_tf32 = tf32
        b.cuda.matmul.allow_tf32 = tf32
        try:
            yield tf32_state()
        finally:
            b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = old


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """Set ``torch.backends.cudnn.benchmark`` (cuDNN picks the fastest algorithm per shape,
    as the official RepVGG speed test does), then restore it."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def precision_label(dtype: str, state: dict, device: str | torch.device) -> str:
    """How the protocol line states the arithmetic (never "fp32" for TF32 convs).

    Args:
        dtype: The benchmark's ``--dtype``.
        state: :func:`tf32_state` of the run.
        device: The device.

    Returns:
        e.g. ``'fp32 (strict IEEE: TF32 off for cuDNN conv and matmul)'``.
    """
    if torch.device(device).type != 'cuda':
        return f'{dtype} (CPU: no TF32)' if dtype == 'fp32' else dtype

    def onoff(value: bool | None) -> str:
        return 'unknown' if value is None else ('on' if value else 'off')

    conv, matmul = onoff(state.get('cudnn_conv_tf32')), onoff(state.get('matmul_tf32'))
    if dtype == 'fp32' and conv == matmul == 'off':
        return 'fp32 (strict IEEE: TF32 off for cuDNN conv and matmul)'
    if dtype == 'tf32' and conv == matmul == 'on':
        return 'tf32 (fp32 tensors, TF32 on for cuDNN conv and matmul)'
    return f'{dtype} (TF32 {conv} for cuDNN conv, {matmul} for matmul)'


def measure_matmul_peak(device: str | torch.device = 'cuda', dtype: str = 'tf32',
                        size: int | None = None, iters: int = 10,
                        warmup: int = 3) -> dict:
    """The achieved rate of a large square matmul, the practical peak of the device.

    Counted as ``2 * size**3`` floating-point operations per product (a multiply-add is two),
    on random data (never zeros), median of ``iters`` timed products after ``warmup``.

    Args:
        device: Where to measure.
        dtype: ``'fp32'`` (strict IEEE), ``'tf32'``, ``'bf16'`` or ``'fp16'``.
        size: Matrix size (default 8192 on CUDA, 1024 on the CPU).
        iters: Timed products.
        warmup: Untimed products first.

    Returns:
        ``dict(tflops, dtype, size, iters, method)``.
    """
    device = torch.device(device)
    size = size or (8192 if device.type == 'cuda' else 1024)
    gen = torch.Generator(device='cpu').manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=DTYPES[dtype])
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=DTYPES[dtype])
    times = []
    with float32_precision(dtype == 'tf32'):
        for i in range(warmup + iters):
            if device.type == 'cuda':
                start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record()
                torch.mm(a, b)
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1000
            else:
                t0 = time.perf_counter()
                torch.mm(a, b)
                seconds = time.perf_counter() - t0
            if i >= warmup:
                times.append(seconds)
    tflops = 2 * size**3 / statistics.median(times) / 1e12
    return dict(tflops=tflops, dtype=dtype, size=size, iters=iters,
                method=f'{size}^3 torch.mm on random data, median of {iters}, 2 flops per '
                'multiply-add')


def device_info(device: str | torch.device = 'cpu') -> dict:
    """What the numbers were measured on (:func:`mmrepvgg.utils.device.device_info`) and the
    float32 precision switches in effect now (:func:`tf32_state`).

    Args:
        device: The device the numbers come from.
    """
    info = _base_device_info(device)
    gpu = {k: info.pop(k) for k in ('gpu', 'cuda', 'cudnn') if k in info}
    return dict(info, precision=tf32_state(), **gpu)


def device_sync(device: str | torch.device) -> Callable[[], None] | None:
    """What waits for a device's queued work before the clock is read (``None``: the CPU,
    whose calls return when done)."""
    device = torch.device(device)
    if device.type == 'cuda':
        return lambda: torch.cuda.synchronize(device)
    return None


#: Device types the benchmark and the precision measurements run on.
DEVICE_TYPES = ('cpu', 'cuda')


def resolve_device(device: str | torch.device | None = None,
                   what: str = 'device') -> torch.device:
    """The device to run on, checked before anything is built.

    Args:
        device: ``'cpu'``, ``'cuda'`` or ``'cuda:N'``; ``None``: CUDA if available, else
            the CPU.
        what: How an error names the setting (a tool passes ``'--device'``).

    Returns:
        The device.

    Raises:
        ValueError: Not a device string, a device type other than :data:`DEVICE_TYPES`,
            or CUDA (or that CUDA device) not available on this machine.
    """
    if device is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f'{what} {device}: {err}'.splitlines()[0]) from None
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f'{what} {device}: use one of {", ".join(DEVICE_TYPES)}')
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'{what} {device}: CUDA is not available on this machine')
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f'{what} {device}: this machine has {count} CUDA device(s)')
    return dev


def backend_supported(dtype: str, device: str | torch.device) -> tuple[bool, str]:
    """Whether a precision runs on the device (reduced ones tried on a tiny conv).

    Args:
        dtype: ``'fp32'``, ``'tf32'``, ``'bf16'`` or ``'fp16'``.
        device: The device.

    Returns:
        ``(ok, reason)``.

    Raises:
        ValueError: The device itself is not there (:func:`resolve_device`).
    """
    device = resolve_device(device)
    if dtype == 'tf32' and device.type != 'cuda':
        return False, 'tf32 is a CUDA mode (Ampere and newer); use fp32 on the CPU'
    if dtype in ('fp32', 'tf32'):
        return True, ''
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
