"""Backends the benchmark runs a model with: eager, channels-last, ``torch.compile`` and ONNX
Runtime (fp32 and int8)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from mmengine.logging import print_log

from mmrepvgg.deploy.onnx import create_session, export_module
from mmrepvgg.deploy.quantize import check_integer_convs, executed_convs, quantize_for_timing

from .device import DTYPES


#: Backends that run an exported ONNX model in ONNX Runtime (CPU, fp32 in and out).
ORT_BACKENDS = ('onnxruntime', 'onnxruntime-int8')


class _OrtModule:
    """An ONNX Runtime session with the module's call signature (one tensor in, out).

    The module is exported with the dynamo exporter (conv biases are initializers) with a
    dynamic batch; ``int8`` quantizes it with the measured-best settings
    (:func:`~mmrepvgg.deploy.quantize.quantize_for_timing`: ``quant_pre_process``, QDQ, U8S8,
    per-channel, calibrated on random inputs: the speed is real, the accuracy is not;
    ``tools/quantize.py --eval`` measures both on data) and checks the graph ONNX Runtime
    optimized: every Conv must run as an integer conv, else a loud warning
    (:attr:`info` records the counts for the report).

    Export happens outside the benchmark's float32-precision switches (torch.export refuses
    to run under them): :func:`make_runner` is called before they are set for ORT backends.
    """

    def __init__(self, module: nn.Module, example: Tensor, threads: int,
                 int8: bool = False) -> None:
        proto = export_module(module.eval(), example, 'dynamo', dynamic_batch=True)
        self.info: dict = dict(exporter='dynamo')
        if int8:
            proto = quantize_for_timing(proto, example.numpy())
            execution = executed_convs(proto, threads)
            line = check_integer_convs(execution, strict=False, where='onnxruntime-int8')
            print_log(f'benchmark: {line}', logger='current')
            self.info.update(integer_convs=execution.integer, float_convs=execution.float,
                             quantization='QDQ U8S8 per-channel, quant_pre_process')
        self.session = create_session(proto, threads)
        # read back from the session (create_session decides it): how its threads wait
        stop = self.session.get_session_options().get_session_config_entry(
            'session.force_spinning_stop') == '1'
        self.info['threads_between_runs'] = 'stop spinning' if stop else 'spin'
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

        def run_ort() -> Any:
            return ort(x)

        run_ort.info = ort.info  # type: ignore[attr-defined]
        return run_ort
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
