"""Backends the benchmark runs a model with: eager, channels-last, ``torch.compile`` and ONNX
Runtime (fp32 and int8)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..deploy.onnx_export import export_for_timing
from ..deploy.quantize import quantize_for_timing
from ..utils.precision import DTYPES


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
        transform = None
        if int8:
            transform = lambda proto: quantize_for_timing(proto, example.numpy())  # noqa: E731
        # TorchScript exporter: torch.export (dynamo) refuses to run under the float32
        # precision switches run_benchmark sets with torch's new TF32 API
        self.session = export_for_timing(module, example, threads, exporter='torchscript',
                                         transform=transform)
        self.name = self.session.get_inputs()[0].name

    def __call__(self, x: Tensor) -> Any:
        return self.session.run(None, {self.name: x.numpy()})


def to_backend(x: Tensor, device: torch.device, dtype: str, backend: str) -> Tensor:
    """``x`` on ``device`` in ``dtype``, channels-last for the channels-last backends."""
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
    x = to_backend(x, device, dtype, backend)
    if 'channels_last' in backend:
        module = module.to(memory_format=torch.channels_last)
    if backend.startswith('compile'):
        module = torch.compile(module)

    def run() -> Any:
        with torch.no_grad():
            return module(x)

    return run
