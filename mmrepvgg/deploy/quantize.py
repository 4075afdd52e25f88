"""int8 post-training quantization with ONNX Runtime: settings, calibration, sensitivity.

The building blocks of :func:`mmrepvgg.deploy.ptq.quantize_checkpoint` (``tools/quantize.py``,
``make demo-int8``) and of the benchmark's ``onnxruntime-int8`` backend. The recipe:

1. export the folded fp32 model (:func:`~mmrepvgg.deploy.onnx_export.export_onnx`, verified
   against PyTorch) and run ONNX Runtime's quantization pre-processing on it;
2. **calibration inputs**: a seeded random subset of the **train** split, through the
   config's test pipeline and the model's own inference (a segmentor's slide windows
   included): exactly the tensors the deployed model is fed, from images the report never
   evaluates on (:func:`~mmrepvgg.deploy.onnx_eval.capture_inputs`);
3. **calibration**: ONNX Runtime's calibrator (``minmax``, ``entropy`` or ``percentile``),
   once; its tensor ranges are cached and reused by every quantization below;
4. **sensitivity** (optional): every weighted layer (Conv, Gemm, MatMul) is quantized *alone*
   and ranked by the SQNR of the model's output against fp32 on the first calibration
   inputs (lower = more sensitive);
5. **quantization**: ``quantize_static`` in QDQ format, int8 weights (per-channel by
   default) and int8 activations, keeping the K most sensitive layers (``keep_float``) or
   named ones (``keep_float_layers``) in float: partial quantization as in YOLOv6;
6. **evaluation** (optional): fp32 and int8 ONNX on the config's val/test split with the
   config's evaluator (top-1 / mIoU), and their CPU speed in the same run, interleaved.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..utils.errors import QuantizationError
from ..utils.metrics import tensor_sqnr_db
from ..utils.optional import require
from .onnx_export import graph_summary, node_module
from .ort import create_session, input_name, run_session

#: Calibration methods (ONNX Runtime's ``CalibrationMethod`` names).
CALIBRATORS = {'minmax': 'MinMax', 'entropy': 'Entropy', 'percentile': 'Percentile'}
#: Activation types (weights are always int8).
ACTIVATION_TYPES = {'int8': 'QInt8', 'uint8': 'QUInt8'}
#: Ops whose weights are quantized; each is a "layer" of the sensitivity ranking.
WEIGHTED_OPS = ('Conv', 'ConvTranspose', 'Gemm', 'MatMul')



def _q() -> Any:
    require('onnxruntime')
    from onnxruntime import quantization
    return quantization


@dataclasses.dataclass
class QuantSettings:
    """How to quantize (QDQ format, int8 weights, after ``quant_pre_process``).

    The defaults are the settings measured fastest on this project's CPU with ONNX Runtime
    1.31 (projects/int8_settings/README.md, docs/int8.md): uint8 activations and int8
    per-channel weights (U8S8). With int8 activations (S8S8, ONNX Runtime's default) some
    convolutions of PSPNet-B1g2-fast are not fused into integer convs and stay float (1.6x
    instead of 2.4x over fp32 there); QOperator with int8 activations is 4-6x *slower* than
    fp32; the TorchScript export needs ``quant_pre_process`` to fuse any conv.

    Args:
        calib_method: ``'minmax'``, ``'entropy'`` or ``'percentile'``.
        per_channel: Per-channel weight scales (else one scale per tensor).
        activation_type: ``'uint8'`` (U8S8, the default here) or ``'int8'`` (S8S8, ONNX
            Runtime's default).
    """

    calib_method: str = 'minmax'
    per_channel: bool = True
    activation_type: str = 'uint8'

    def __post_init__(self) -> None:
        if self.calib_method not in CALIBRATORS:
            raise ValueError(f'Unknown calibration method {self.calib_method!r}; expected one '
                             f'of {", ".join(CALIBRATORS)}')
        if self.activation_type not in ACTIVATION_TYPES:
            raise ValueError(f'Unknown activation type {self.activation_type!r}; expected one '
                             f'of {", ".join(ACTIVATION_TYPES)}')


class _Reader:
    """A ``CalibrationDataReader`` over a list of arrays."""

    def __init__(self, name: str, inputs: Sequence[np.ndarray]) -> None:
        self._iter = iter([{name: x} for x in inputs])

    def get_next(self) -> dict | None:
        return next(self._iter, None)

    def __len__(self) -> int:  # pragma: no cover  (asked only for strided calibration)
        raise TypeError('length unknown')


def weighted_layers(model: str | os.PathLike | Any) -> list[tuple[str, str]]:
    """``(node name, op)`` of every node with a constant weight (Conv/Gemm/MatMul), in order."""
    onnx = require('onnx')
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model))
    weights = {i.name for i in model.graph.initializer}
    return [(n.name, n.op_type) for n in model.graph.node
            if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in weights]


def prepare_fp32(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """ONNX Runtime's quantization pre-processing (shape inference, basic graph optimization)."""
    _q().quant_pre_process(str(src), str(dst))


def calibrate(model: str | os.PathLike, inputs: Sequence[np.ndarray], method: str,
              cache: str | os.PathLike, chunk: int = 16, progress: bool = True) -> None:
    """Collect activation ranges once and store them where ``quantize_static`` reads them.

    Args:
        model: The (pre-processed) fp32 ONNX file.
        inputs: Calibration inputs.
        method: A :data:`CALIBRATORS` key.
        cache: The calibration cache file (``quantize_static(calibration_cache_path=...)``).
        chunk: Inputs per ``collect_data`` call (bounds the memory of histogram methods).
        progress: Show a progress bar.
    """
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    q = _q()
    name = input_name(model)
    ops = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # as quantize_static does
    with tempfile.TemporaryDirectory(prefix='mmrepvgg-calib-') as tmp:
        calibrator = q.create_calibrator(
            Path(model), ops, augmented_model_path=os.path.join(tmp, 'augmented.onnx'),
            calibrate_method=getattr(q.CalibrationMethod, CALIBRATORS[method]))
        # the histogram calibrators print a line per chunk on stdout: the bar says as much
        with contextlib.redirect_stdout(io.StringIO()):
            for start in tqdm(range(0, len(inputs), chunk), desc=f'calibration ({method})',
                              unit='chunk', disable=not progress, leave=False):
                calibrator.collect_data(_Reader(name, inputs[start:start + chunk]))
            ranges = calibrator.compute_data()
        del calibrator
    q.save_tensors_data(ranges, cache)


def quantize_file(model: str | os.PathLike, out: str | os.PathLike, cache: str | os.PathLike,
                  settings: QuantSettings, nodes_to_quantize: Sequence[str] | None = None,
                  nodes_to_exclude: Sequence[str] | None = None) -> None:
    """``quantize_static`` (QDQ) with the cached calibration ranges."""
    q = _q()
    q.quantize_static(
        str(model), str(out), calibration_data_reader=None, quant_format=q.QuantFormat.QDQ,
        per_channel=settings.per_channel,
        activation_type=getattr(q.QuantType, ACTIVATION_TYPES[settings.activation_type]),
        weight_type=q.QuantType.QInt8, nodes_to_quantize=list(nodes_to_quantize or []),
        nodes_to_exclude=list(nodes_to_exclude or []),
        calibrate_method=getattr(q.CalibrationMethod, CALIBRATORS[settings.calib_method]),
        calibration_cache_path=str(cache))


def layer_sensitivity(model: str | os.PathLike, cache: str | os.PathLike,
                      inputs: Sequence[np.ndarray], settings: QuantSettings,
                      threads: int | None = None, progress: bool = True,
                      reference: Sequence[torch.Tensor] | None = None) -> list[dict]:
    """Quantize one weighted layer at a time; rank the layers by the output SQNR.

    Args:
        model: The (pre-processed) fp32 ONNX file.
        cache: Its calibration cache.
        inputs: Inputs to measure on (calibration inputs, never evaluation ones).
        settings: Quantization settings.
        threads: ONNX Runtime threads.
        progress: Show a progress bar.
        reference: The fp32 model's outputs on ``inputs``, if the caller has them (else
            computed here).

    Returns:
        ``[dict(node, module, op, sqnr_db, rank)]``, most sensitive (lowest SQNR) first.
    """
    if reference is None:
        fp32 = create_session(model, threads)
        reference = [run_session(fp32, x) for x in inputs]
    rows = []
    with tempfile.TemporaryDirectory(prefix='mmrepvgg-sens-') as tmp:
        out = os.path.join(tmp, 'one_layer.onnx')
        for node, op in tqdm(weighted_layers(model), desc='sensitivity (one layer int8)',
                             unit='layer', disable=not progress, leave=False):
            quantize_file(model, out, cache, settings, nodes_to_quantize=[node])
            session = create_session(out, threads)
            rows.append(dict(node=node, module=node_module(node), op=op,
                             sqnr_db=tensor_sqnr_db(reference, [run_session(session, x)
                                                                for x in inputs])))
    rows.sort(key=lambda r: r['sqnr_db'])
    for i, row in enumerate(rows):
        row['rank'] = i + 1
    return rows


def resolve_layers(names: Sequence[str], layers: Sequence[tuple[str, str]]) -> list[str]:
    """Node names for layer names given as ONNX node names or module paths.

    Raises:
        QuantizationError: For a name that is neither, listing a few valid ones.
    """
    by_node = {n for n, _ in layers}
    by_module = {node_module(n): n for n, _ in layers}
    out = []
    for name in names:
        if name in by_node:
            out.append(name)
        elif name in by_module:
            out.append(by_module[name])
        else:
            examples = ', '.join(node_module(n) for n, _ in layers[:3])
            raise QuantizationError(f'No weighted layer {name!r} in the graph; give module '
                                    f'paths such as {examples} (or ONNX node names)')
    return list(dict.fromkeys(out))


def qdq_summary(model: str | os.PathLike | Any) -> dict:
    """QDQ nodes, int8 weights and which weighted layers are quantized in a QDQ model.

    A weighted layer counts as quantized when its weight input comes from a
    ``DequantizeLinear`` of an int8 initializer; ``max_weight_scales`` is the most scales
    such a weight has (its output channels per channel, 1 per tensor; 0 if none).
    """
    onnx = require('onnx')
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model))
    inits = {i.name: i for i in model.graph.initializer}
    int8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    dq_of = {n.output[0]: n for n in model.graph.node if n.op_type == 'DequantizeLinear'}
    quantized, kept, scales = [], [], [0]
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        dq = dq_of.get(node.input[1])
        if dq is not None and dq.input[0] in inits and inits[dq.input[0]].data_type in int8:
            quantized.append(node.name)
            scale = inits.get(dq.input[1])
            scales.append(math.prod(scale.dims) if scale is not None else 1)
        elif node.input[1] in inits:
            kept.append(node.name)
    nodes = graph_summary(model)
    return dict(QuantizeLinear=nodes.get('QuantizeLinear', 0),
                DequantizeLinear=nodes.get('DequantizeLinear', 0),
                int8_initializers=sum(1 for i in inits.values() if i.data_type in int8),
                quantized_layers=quantized, float_layers=kept, max_weight_scales=max(scales))


def quantize_for_timing(proto: Any, example: np.ndarray, batches: int = 4) -> Any:
    """int8 QDQ quantization calibrated on random inputs: for timing only, not accuracy.

    Used by the benchmark's ``onnxruntime-int8`` backend; accuracy numbers come from
    :func:`quantize_checkpoint` with real calibration data.

    Args:
        proto: The fp32 ``ModelProto`` (dynamic batch).
        example: An input batch; calibration uses ``batches`` random batches of its shape.
        batches: Calibration batches.

    Returns:
        The int8 ``ModelProto``.
    """
    onnx = require('onnx')
    gen = np.random.default_rng(0)
    inputs = [gen.standard_normal(example.shape).astype(np.float32) for _ in range(batches)]
    with tempfile.TemporaryDirectory(prefix='mmrepvgg-quant-') as tmp:
        src, cache, dst = (os.path.join(tmp, n) for n in ('fp32.onnx', 'calib.json', 'int8.onnx'))
        onnx.save(proto, src)
        prepared = os.path.join(tmp, 'fp32_prepared.onnx')
        prepare_fp32(src, prepared)
        settings = QuantSettings()
        calibrate(prepared, inputs, settings.calib_method, cache, progress=False)
        quantize_file(prepared, dst, cache, settings)
        return onnx.load(dst)
