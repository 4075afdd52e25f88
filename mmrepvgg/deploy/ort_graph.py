"""What ONNX Runtime really runs: integer vs float convolutions in its optimized graph.

A QDQ int8 file is only fast if ONNX Runtime fuses every ``DequantizeLinear -> Conv ->
QuantizeLinear`` into an integer convolution (``QLinearConv``, NHWC ``com.microsoft``
``QLinearConv``, ``ConvInteger``). When it cannot (e.g. a conv bias that is not an
initializer, as the TorchScript exporter writes it behind an ``Identity``), the Conv runs
in float between Quantize/Dequantize pairs and int8 is *slower* than fp32. The only
reliable check is the graph the session optimized for this CPU
(``SessionOptions.optimized_model_filepath``), which :func:`executed_convs` reads.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from collections import Counter
from typing import Any

from mmengine.logging import print_log

from ..utils.errors import QuantizationError
from ..utils.optional import require

#: Ops that are integer convolutions (any domain).
INTEGER_CONV_OPS = ('QLinearConv', 'ConvInteger')
#: Ops that are float convolutions (any domain: ``Conv``, NCHWc ``Conv``, ``FusedConv``).
FLOAT_CONV_OPS = ('Conv', 'FusedConv')


@dataclasses.dataclass
class ConvExecution:
    """Convolutions in the graph ONNX Runtime optimized for this CPU.

    Args:
        integer: Integer convolutions.
        float: Float convolutions.
        float_nodes: Names of the float ones (as ONNX Runtime named them).
        ops: ``'domain.op'`` -> count over the optimized graph.
    """

    integer: int
    float: int
    float_nodes: list[str]
    ops: dict[str, int]

    @property
    def total(self) -> int:
        return self.integer + self.float

    def summary(self) -> str:
        """One line: how many convs run as integer convs."""
        ints = ', '.join(f'{v} {k.split(".")[-1]}' for k, v in self.ops.items()
                         if k.split('.')[-1] in INTEGER_CONV_OPS) or 'none'
        return (f'ONNX Runtime runs {self.integer} of {self.total} convolutions as integer '
                f'convolutions ({ints}), {self.float} in float')

    def as_dict(self) -> dict:
        return dict(integer_convs=self.integer, float_convs=self.float,
                    float_conv_nodes=self.float_nodes, optimized_ops=self.ops)


def executed_convs(model: str | os.PathLike | bytes | Any, threads: int | None = 1
                   ) -> ConvExecution:
    """Count integer and float convolutions in ONNX Runtime's optimized graph of ``model``.

    Args:
        model: ONNX file, serialized bytes or ``ModelProto``.
        threads: Threads of the (throw-away) session.

    Returns:
        A :class:`ConvExecution`.
    """
    onnx = require('onnx')
    ort = require('onnxruntime')
    with tempfile.TemporaryDirectory(prefix='mmrepvgg-ortgraph-') as tmp:
        if not isinstance(model, (str, os.PathLike)):
            src = os.path.join(tmp, 'model.onnx')
            with open(src, 'wb') as f:
                f.write(model if isinstance(model, bytes) else model.SerializeToString())
            model = src
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        opts.optimized_model_filepath = os.path.join(tmp, 'optimized.onnx')
        ort.InferenceSession(os.fspath(model), opts, providers=['CPUExecutionProvider'])
        graph = onnx.load(opts.optimized_model_filepath, load_external_data=False).graph
    ops = Counter(f'{n.domain or "ai.onnx"}.{n.op_type}' for n in graph.node)
    floats = [n.name for n in graph.node if n.op_type in FLOAT_CONV_OPS]
    integer = sum(1 for n in graph.node if n.op_type in INTEGER_CONV_OPS)
    return ConvExecution(integer, len(floats), floats, dict(sorted(ops.items())))


def check_integer_convs(execution: ConvExecution, kept_float: int = 0, strict: bool = True,
                        where: str = 'the int8 model') -> str:
    """Fail (or warn) loudly where a quantized convolution runs in float.

    Args:
        execution: What :func:`executed_convs` found.
        kept_float: Convolutions deliberately kept in float (``--keep-float``): expected.
        strict: Raise; else log a warning.
        where: The model, for the message.

    Returns:
        The summary line (with the kept-float count).

    Raises:
        QuantizationError: ``strict`` and more convolutions run in float than were kept
            float.
    """
    line = execution.summary()
    if kept_float:
        line += f' ({kept_float} kept in float on purpose)'
    extra = execution.float - kept_float
    if extra > 0:
        names = ', '.join(execution.float_nodes[:3])
        message = (f'{where}: {extra} quantized convolution(s) run in float in ONNX Runtime '
                   f'(e.g. {names}): the QDQ Conv was not fused into an integer conv, so int8 '
                   'is not faster there (is the conv bias an initializer? export with the '
                   'dynamo exporter)')
        if strict:
            raise QuantizationError(message)
        print_log(f'WARNING: {message}', logger='current', level=30)
    if execution.integer == 0:
        message = f'{where}: no convolution runs as an integer convolution in ONNX Runtime'
        if strict:
            raise QuantizationError(message)
        print_log(f'WARNING: {message}', logger='current', level=30)
    return line
