"""int8 post-training quantization with ONNX Runtime (QDQ): a loaded model -> verified fp32
ONNX -> int8 ONNX that really runs integer convolutions, with sensitivity and evaluation.

The library behind ``tools/quantize.py`` (which owns the paths and ``--force``) and
``make demo-int8``; :func:`quantize_for_timing` is the benchmark's int8 backend.
:func:`quantize_model` exports and pre-processes the fp32 model, calibrates once on the
tensors the deployed model is fed (train images, or a folder's, through the test pipeline
and the model's own inference), ranks the layers by output SQNR with each one alone int8,
quantizes keeping the K most sensitive (or named) layers float, reads back the graph the
session optimized for this CPU (every quantized Conv must run as an integer conv), and
evaluates and times fp32 against int8 on the val/test split.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import platform
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from torch import nn
from tqdm import tqdm

from mmrepvgg_runtime.metadata import RUNTIME_KEY

from ..utils.device import device_info
from ..utils.errors import ExportError
from ..utils.metrics import tensor_sqnr_db
from ..utils.optional import require
from .onnx import (ExportOptions, as_proto, create_session, export_onnx, graph_summary,
                   input_name, node_module, read_metadata, run_session, set_metadata)
from .onnx_eval import (OnnxPredictor, calib_images, capture_inputs, eval_split, evaluate,
                        main_metric, time_sessions)

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

    The defaults are the settings measured fastest (docs/int8.md,
    projects/int8_settings/README.md): uint8 activations and int8 per-channel weights
    (U8S8). With int8 activations (S8S8, ONNX Runtime's default) some convolutions are not
    fused into integer convs and stay float.

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
    model = as_proto(model)
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
        ExportError: For a name that is neither, listing a few valid ones.
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
            raise ExportError(f'No weighted layer {name!r} in the graph; give module '
                                    f'paths such as {examples} (or ONNX node names)')
    return list(dict.fromkeys(out))


def qdq_summary(model: str | os.PathLike | Any) -> dict:
    """QDQ nodes, int8 weights and which weighted layers are quantized in a QDQ model.

    A weighted layer counts as quantized when its weight input comes from a
    ``DequantizeLinear`` of an int8 initializer; ``max_weight_scales`` is the most scales
    such a weight has (its output channels per channel, 1 per tensor; 0 if none).
    """
    onnx, model = require('onnx'), as_proto(model)
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
    """int8 QDQ quantization calibrated on random inputs: for timing only (the benchmark's
    ``onnxruntime-int8`` backend), not accuracy.

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


# ----------------------------------------------------------------------- what really runs

#: Ops that are integer convolutions (any domain).
INTEGER_CONV_OPS = ('QLinearConv', 'ConvInteger')
#: Ops that are float convolutions (any domain: ``Conv``, NCHWc ``Conv``, ``FusedConv``).
FLOAT_CONV_OPS = ('Conv', 'FusedConv')


@dataclasses.dataclass
class ConvExecution:
    """Convolutions in the graph ONNX Runtime optimized for this CPU (a QDQ Conv it cannot
    fuse into an integer conv runs in float between Quantize/Dequantize pairs).

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
    """Count integer and float convolutions in ONNX Runtime's optimized graph of ``model``
    (an ONNX file, serialized bytes or ``ModelProto``)."""
    with tempfile.TemporaryDirectory(prefix='mmrepvgg-ortgraph-') as tmp:
        optimized = os.path.join(tmp, 'optimized.onnx')
        create_session(model, threads, optimized_model=optimized)
        graph = require('onnx').load(optimized, load_external_data=False).graph
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
        ExportError: ``strict`` and more convolutions run in float than were kept
            float, or none runs as an integer convolution.
    """
    line = execution.summary()
    if kept_float:
        line += f' ({kept_float} kept in float on purpose)'
    problems = []
    extra = execution.float - kept_float
    if extra > 0:
        problems.append(
            f'{where}: {extra} quantized convolution(s) run in float in ONNX Runtime (e.g. '
            f'{", ".join(execution.float_nodes[:3])}): the QDQ Conv was not fused into an '
            'integer conv, so int8 is not faster there (is the conv bias an initializer? '
            'export with the dynamo exporter)')
    if execution.integer == 0:
        problems.append(f'{where}: no convolution runs as an integer convolution in ONNX '
                        'Runtime')
    for message in problems:
        if strict:
            raise ExportError(message)
        print_log(f'WARNING: {message}', logger='current', level=30)
    return line


# ----------------------------------------------------------------------- the whole recipe

@dataclasses.dataclass
class QuantizeOptions:
    """What ``tools/quantize.py`` asks for (checked when made).

    Args:
        settings: Calibrator, weight scales, activation type (default: the measured best).
        calib_images: Calibration inputs (all there are if fewer).
        calib_dir: Calibrate on the images of this folder instead of the train split.
        keep_float: Keep the K most sensitive weighted layers in float.
        keep_float_layers: Keep these layers (module paths or node names) in float.
        sensitivity: Rank the layers (needed for ``keep_float``).
        sensitivity_images: Calibration inputs the ranking is measured on.
        run_eval: Evaluate fp32 and int8 on the val/test split and time both.
        max_eval_images: Evaluate on the first N images only.
        threads: ONNX Runtime threads (None: its default).
        speed_iters: Timed runs per round (None: enough for a quarter second).
        speed_rounds: Interleaved timing rounds (the median counts).
        seed: Seed of the calibration subset.
        progress: Show progress bars.
        export: The fp32 export's options (size, exporter, opset).

    Raises:
        ValueError: A count out of range.
        ExportError: ``keep_float`` without ``sensitivity``.
        FileNotFoundError, NotADirectoryError, FileNotFoundError, DataError: A bad
            ``calib_dir`` (:func:`calib_images`).
    """

    settings: QuantSettings = dataclasses.field(default_factory=lambda: QuantSettings())
    calib_images: int = 200
    calib_dir: str | os.PathLike | None = None
    keep_float: int = 0
    keep_float_layers: Sequence[str] = ()
    sensitivity: bool = True
    sensitivity_images: int = 16
    run_eval: bool = False
    max_eval_images: int | None = None
    threads: int | None = None
    speed_iters: int | None = None
    speed_rounds: int = 5
    seed: int = 0
    progress: bool = True
    export: ExportOptions = dataclasses.field(default_factory=lambda: ExportOptions())
    calib_files: list[Path] | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name, least in (('calib_images', 1), ('keep_float', 0), ('sensitivity_images', 1),
                            ('speed_rounds', 1), ('speed_iters', 1), ('max_eval_images', 1)):
            value = getattr(self, name)
            value = least if value is None else value
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f'{name} must be an int >= {least}, got {value!r}')
        if self.keep_float and not self.sensitivity:
            raise ExportError('--keep-float K keeps the K most sensitive layers: it '
                                    'needs the sensitivity ranking')
        if self.calib_dir is not None:
            self.calib_files = calib_images(self.calib_dir)


@dataclasses.dataclass
class Quantized:
    """What :func:`quantize_model` made: the int8 and fp32 models and the report.

    Args:
        int8: The int8 ``ModelProto`` (metadata included).
        fp32: The fp32 ``ModelProto`` it was made from.
        report: The report (json-ready; :func:`report_markdown`, :func:`summary_lines`).
    """

    int8: Any = dataclasses.field(repr=False)
    fp32: Any = dataclasses.field(repr=False)
    report: dict


def _calibration_inputs(cfg: Config, model: nn.Module, session: Any,
                        opts: QuantizeOptions) -> tuple[list[np.ndarray], str]:
    """The calibration inputs and where they come from."""
    files = opts.calib_files
    calib = capture_inputs(cfg, model, session, opts.calib_images, 'train', opts.seed,
                           opts.progress, files)
    return calib, ('train' if files is None else
                   f'folder {opts.calib_dir} ({len(files)} images)')


def _kept_float(ranking: list[dict] | None, requested: list[str], keep: int) -> list[dict]:
    kept = [dict(node=r['node'], module=r['module'], reason=f'sensitivity rank {r["rank"]}')
            for r in (ranking or [])[:keep]]
    for node in requested:
        if node not in {k['node'] for k in kept}:
            kept.append(dict(node=node, module=node_module(node), reason='requested'))
    return kept


def _quantize_checked(prepared: Path, cache: Path, opts: QuantizeOptions, kept: list[dict],
                      layers: list[tuple[str, str]], where: str) -> tuple[Any, dict]:
    """The int8 model, refused unless some layer is int8 and every quantized Conv runs as an
    integer conv in ONNX Runtime; and its ``graph`` report entry."""
    int8_path = prepared.with_name('int8.onnx')
    quantize_file(prepared, int8_path, cache, opts.settings,
                  nodes_to_exclude=[k['node'] for k in kept])
    proto = require('onnx').load(str(int8_path))
    summary = qdq_summary(proto)
    if not summary['quantized_layers'] or not summary['int8_initializers']:
        raise ExportError(f'No layer of {where} would be int8 (quantized layers: '
                                f'{len(summary["quantized_layers"])}, int8 tensors: '
                                f'{summary["int8_initializers"]})')
    ops = dict(layers)
    kept_convs = sum(1 for k in kept if ops.get(k['node']) == 'Conv')
    execution = executed_convs(int8_path, opts.threads)
    line = check_integer_convs(execution, kept_convs, strict=True, where=where)
    print_log(line, logger='current')
    graph = dict(summary, fp32_mb=prepared.with_name('fp32.onnx').stat().st_size / 2**20,
                 int8_mb=int8_path.stat().st_size / 2**20,
                 executed=dict(execution.as_dict(), kept_float_convs=kept_convs, summary=line))
    return proto, graph


def _int8_metadata(proto: Any, fp32_meta: Mapping, quantization: dict, graph: dict) -> None:
    """The fp32 file's metadata, saying int8 where the graph is int8."""
    runtime = dict(fp32_meta.get(RUNTIME_KEY) or {}, precision='int8') \
        if fp32_meta.get(RUNTIME_KEY) else None
    meta_q = dict(quantization, int8_layers=len(graph['quantized_layers']),
                  float_layers=len(graph['float_layers']),
                  integer_convs_in_onnxruntime=graph['executed']['integer_convs'],
                  tool='onnxruntime.quantization.quantize_static')
    set_metadata(proto, dict(fp32_meta, quantization=meta_q, precision='int8',
                             **({RUNTIME_KEY: runtime} if runtime else {})))
    require('onnx').checker.check_model(proto)


def _rank_layers(prepared: Path, cache: Path, inputs: list[np.ndarray], reference: list,
                 opts: QuantizeOptions, split: str) -> dict:
    layers = len(weighted_layers(prepared))
    print_log(f'Sensitivity: quantizing each of {layers} layers alone, output SQNR on '
              f'{len(inputs)} calibration inputs', logger='current')
    ranking = layer_sensitivity(prepared, cache, inputs, opts.settings, opts.threads,
                                opts.progress, reference)
    return dict(method='one weighted layer quantized at a time (all others float); SQNR of '
                'the model output vs fp32, in dB (lower = more sensitive)',
                inputs=len(inputs), split=split, layers=ranking)


def quantize_model(model: nn.Module, cfg: Config, options: QuantizeOptions | None = None,
                   deployed: bool = False, checkpoint_meta: Mapping | None = None,
                   name: str = 'the int8 model') -> Quantized:
    """A loaded model -> verified fp32 ONNX -> int8 QDQ ONNX, checked (see the module doc).

    Args:
        model: The model (:func:`~mmrepvgg.deploy.build.load_model`); folded in place.
        cfg: Its config (data, pipelines, evaluator).
        options: :class:`QuantizeOptions` (the fp32 export's included).
        deployed: The model is already folded.
        checkpoint_meta: The checkpoint's meta (class names).
        name: The int8 model, for messages (the output file).

    Returns:
        :class:`Quantized`.

    Raises:
        ExportError: A ``keep_float_layers`` name the graph does not have; no layer
            left to quantize; a quantized Conv that ONNX Runtime runs in float.
        ExportError, ExportError, ExportError: From the export.
    """
    opts = options or QuantizeOptions()
    fp32_report = export_onnx(model, cfg, opts.export, deployed, checkpoint_meta)
    report: dict[str, Any] = dict(export=dict(
        shape=list(fp32_report.shape), exporter=fp32_report.options.exporter,
        opset=fp32_report.opset, ort_max_rel_diff=fp32_report.max_rel, nodes=fp32_report.nodes))
    with tempfile.TemporaryDirectory(prefix='mmrepvgg-quant-') as tmp:
        fp32_path, prepared = Path(tmp) / 'fp32.onnx', Path(tmp) / 'fp32_prepared.onnx'
        fp32_path.write_bytes(fp32_report.proto.SerializeToString())
        prepare_fp32(fp32_path, prepared)
        layers = weighted_layers(prepared)
        requested = resolve_layers(opts.keep_float_layers, layers)  # a typo fails first
        if opts.keep_float >= len(layers) or len(set(requested)) >= len(layers):
            raise ExportError(
                f'--keep-float {opts.keep_float}{" --keep-float-layers" if requested else ""} '
                f'keeps all {len(layers)} weighted layers in float: nothing would be int8')
        fp32 = create_session(prepared, opts.threads)
        calib, split = _calibration_inputs(cfg, model, fp32, opts)
        cache = Path(tmp) / 'calibration.json'
        print_log(f'Calibrating ({opts.settings.calib_method}) on {len(calib)} inputs from '
                  f'{split}', logger='current')
        calibrate(prepared, calib, opts.settings.calib_method, cache, progress=opts.progress)
        report['quantization'] = _quantization_entry(opts, len(calib), split)
        sens_inputs = calib[:opts.sensitivity_images]
        reference = [run_session(fp32, x) for x in sens_inputs]  # fp32 outputs, once
        if opts.sensitivity:
            report['sensitivity'] = _rank_layers(prepared, cache, sens_inputs, reference,
                                                 opts, split)
        kept = _kept_float((report.get('sensitivity') or {}).get('layers'), requested,
                           opts.keep_float)
        report['quantization']['kept_float'] = kept
        proto, report['graph'] = _quantize_checked(prepared, cache, opts, kept, layers, name)
    int8 = create_session(proto, opts.threads)
    report['output_sqnr_db'] = tensor_sqnr_db(reference, [run_session(int8, x)
                                                          for x in sens_inputs])
    _int8_metadata(proto, read_metadata(fp32_report.proto), report['quantization'],
                   report['graph'])
    if opts.run_eval:
        report['eval'] = _eval_and_time(cfg, model, fp32, int8, calib[0], opts)
    report.update(device=dict(cpu=device_info('cpu')['cpu'], cpu_count=os.cpu_count(),
                              ort_threads=opts.threads), versions=_versions())
    return Quantized(proto, fp32_report.proto, report)


def _quantization_entry(opts: QuantizeOptions, inputs: int, split: str) -> dict:
    s = opts.settings
    return dict(format='QDQ', weights='int8 ' + ('per-channel' if s.per_channel
                                                 else 'per-tensor'),
                activations=s.activation_type, pre_process='quant_pre_process',
                calibration=dict(method=s.calib_method, inputs=inputs, split=split,
                                 pipeline='test pipeline, model inference (as deployed)',
                                 seed=opts.seed))


def _versions() -> dict:
    onnx, ort = require('onnx'), require('onnxruntime')
    return dict(torch=torch.__version__, onnx=onnx.__version__, onnxruntime=ort.__version__,
                python=platform.python_version())


def _eval_and_time(cfg: Config, model: nn.Module, fp32: Any, int8: Any, example: np.ndarray,
                   opts: QuantizeOptions) -> dict:
    """fp32 and int8 ONNX evaluated with the config's evaluator, and timed interleaved."""
    split = eval_split(cfg)
    metrics = {name: evaluate(cfg, OnnxPredictor(model, session), split, opts.max_eval_images,
                              desc=f'eval {name} ONNX', progress=opts.progress)
               for name, session in (('fp32', fp32), ('int8', int8))}
    key = main_metric(metrics['fp32'])
    speed = time_sessions({'fp32': fp32, 'int8': int8}, example, iters=opts.speed_iters,
                          rounds=opts.speed_rounds)
    iters = speed['fp32']['iters']
    ratios = sorted(f / i for f, i in zip(speed['fp32']['rounds'], speed['int8']['rounds']))
    print_log(f'Timed fp32 vs int8: {opts.speed_rounds} interleaved rounds x {iters} runs',
              logger='current')
    return dict(split=split, images=opts.max_eval_images, metric=key, fp32=metrics['fp32'],
                int8=metrics['int8'], delta=metrics['int8'][key] - metrics['fp32'][key],
                speed=dict(input=list(example.shape), threads=opts.threads, iters=iters,
                           rounds=opts.speed_rounds, fp32_ms=speed['fp32']['ms'],
                           int8_ms=speed['int8']['ms'],
                           fp32_over_int8=speed['fp32']['ms'] / speed['int8']['ms'],
                           ratio_min=ratios[0], ratio_max=ratios[-1],
                           fp32_rounds=speed['fp32']['rounds'],
                           int8_rounds=speed['int8']['rounds']))


# ----------------------------------------------------------------------- the report

#: Short names of the headline metrics.
METRIC_NAMES = {'accuracy/top1': 'top-1', 'mIoU': 'mIoU'}


def summary_lines(result: dict, top: int = 3) -> list[str]:
    """A few lines for the console: both models' metric and speed, the int8 file, the ratio,
    the most sensitive layers."""
    lines = []
    ev = result.get('eval')
    if ev:
        name, sp = METRIC_NAMES.get(ev['metric'], ev['metric']), ev['speed']
        lines += [f'fp32 ONNX  {name} {ev["fp32"][ev["metric"]]:.2f}  '
                  f'({sp["fp32_ms"]:.3f} ms/run)',
                  f'int8 ONNX  {name} {ev["int8"][ev["metric"]]:.2f}  '
                  f'({sp["int8_ms"]:.3f} ms/run)  {result["int8_onnx"]}',
                  f'fp32/int8 CPU time ratio {sp["fp32_over_int8"]:.2f}x{_spread(sp)} '
                  f'({sp["rounds"]} interleaved rounds, ONNX Runtime threads: '
                  f'{sp["threads"] or "default"})']
    else:
        lines.append(f'int8 ONNX  {result["int8_onnx"]}')
    sens = result.get('sensitivity')
    if sens:
        lines.append('most sensitive layers (output SQNR, one layer int8): ' + ', '.join(
            f'{r["module"]} {r["sqnr_db"]:.1f} dB' for r in sens['layers'][:top]))
    kept = result['quantization']['kept_float']
    lines.append('kept in float: ' + (', '.join(k['module'] for k in kept) or 'none'))
    executed = result.get('graph', {}).get('executed')
    if executed:
        lines.append(executed['summary'])
    return lines


def _spread(speed: dict) -> str:
    """`` (min-max over rounds)`` of the per-round fp32/int8 ratio, where the report has it."""
    return (f' (rounds {speed["ratio_min"]:.2f}-{speed["ratio_max"]:.2f}x)'
            if 'ratio_min' in speed else '')


def report_markdown(result: dict, top: int = 10) -> str:
    """The report as markdown: setup, accuracy and speed, kept layers, sensitivity."""
    q = result['quantization']
    lines = ['# int8 quantization report', '']
    if result.get('command'):
        lines += [f'Generated by `{result["command"]}`.', '']
    calib = q['calibration']
    lines += [f'- model: `{result["config"]}`, checkpoint `{result["checkpoint"]}`',
              f'- int8 model: `{result["int8_onnx"]}`',
              f'- quantization: {q["format"]}, weights {q["weights"]}, activations '
              f'{q["activations"]}; {calib["method"]} calibration on {calib["inputs"]} '
              f'{calib["split"]} inputs',
              '- kept in float: ' + (', '.join(f'`{k["module"]}` ({k["reason"]})'
                                                for k in q['kept_float']) or 'none'),
              f'- layers quantized: {len(result["graph"]["quantized_layers"])}, float: '
              f'{len(result["graph"]["float_layers"])}; {result["graph"]["QuantizeLinear"]} '
              f'QuantizeLinear / {result["graph"]["DequantizeLinear"]} DequantizeLinear; size '
              f'{result["graph"]["fp32_mb"]:.2f} MB fp32 -> {result["graph"]["int8_mb"]:.2f} '
              'MB int8',
              f'- output SQNR int8 vs fp32: {result["output_sqnr_db"]:.1f} dB',
              *([f'- {result["graph"]["executed"]["summary"]} (the graph ONNX Runtime '
                 'optimized for this CPU)'] if result['graph'].get('executed') else []),
              f'- device: {result["device"]["cpu"]}, ONNX Runtime threads: '
              f'{result["device"]["ort_threads"] or "default"}; versions: '
              + ', '.join(f'{k} {v}' for k, v in result['versions'].items()), '']
    ev = result.get('eval')
    if ev:
        sp = ev['speed']
        lines += [f'## Accuracy ({ev["split"]} split) and CPU speed', '',
                  f'| model | {ev["metric"]} | ms / run (median of {sp["rounds"]} interleaved '
                  'rounds) |', '|---|---|---|',
                  f'| fp32 ONNX | {ev["fp32"][ev["metric"]]:.2f} | {sp["fp32_ms"]:.3f} |',
                  f'| int8 ONNX | {ev["int8"][ev["metric"]]:.2f} | {sp["int8_ms"]:.3f} |', '',
                  f'int8 - fp32: {ev["delta"]:+.2f}; fp32/int8 time ratio: '
                  f'{sp["fp32_over_int8"]:.2f}x{_spread(sp)} (input '
                  f'{"x".join(map(str, sp["input"]))})', '']
    sens = result.get('sensitivity')
    if sens:
        lines += [f'## Most sensitive layers (top {min(top, len(sens["layers"]))} of '
                  f'{len(sens["layers"])})', '', sens['method'] + f', {sens["inputs"]} '
                  f'{sens["split"]} inputs.', '', '| rank | layer | op | SQNR (dB) |',
                  '|---|---|---|---|']
        lines += [f'| {r["rank"]} | `{r["module"]}` | {r["op"]} | {r["sqnr_db"]:.1f} |'
                  for r in sens['layers'][:top]]
    return '\n'.join(lines) + '\n'


