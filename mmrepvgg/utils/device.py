"""The device a tool runs on, what it is, and how to wait for it.

:func:`resolve_device` checks a ``--device`` before anything is built; :func:`device_info`
records what numbers were measured on; :func:`device_sync` waits for a device's queued work
before a clock is read.
"""
from __future__ import annotations

import os
import platform
from typing import Callable

import torch
from torch import nn

from .precision import DTYPES, tf32_state


def device_info(device: str | torch.device = 'cpu') -> dict:
    """What the numbers were measured on: CPU model, threads, GPU, library versions, and the
    float32 precision switches in effect now (:func:`~mmrepvgg.utils.precision.tf32_state`).
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
