"""int8 post-training quantization of the exported model with ONNX Runtime, and its report.

Library behind ``tools/quantize.py`` and ``make demo-int8``. The recipe:

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
import platform
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from tqdm import tqdm

from ..utils.device import device_info
from ..utils.errors import QuantizationError
from ..utils.fileio import check_output_paths, write_bytes_atomic
from ..utils.metrics import tensor_sqnr_db
from ..utils.optional import require
from .convert import source_files
from .metadata import set_metadata
from .onnx_eval import OnnxPredictor, capture_inputs, evaluate, main_metric, time_sessions
from .onnx_export import DEFAULT_OPSET, export_onnx, graph_summary, node_module
from .ort import create_session, input_name, read_metadata, run_session
from .quant_report import write_report

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
    """How to quantize.

    Args:
        calib_method: ``'minmax'``, ``'entropy'`` or ``'percentile'``.
        per_channel: Per-channel weight scales (else one scale per tensor).
        activation_type: ``'int8'`` (ONNX Runtime's default, S8S8) or ``'uint8'`` (U8S8).
    """

    calib_method: str = 'minmax'
    per_channel: bool = True
    activation_type: str = 'int8'

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


def _versions() -> dict:
    import onnx
    import onnxruntime
    return dict(torch=torch.__version__, onnx=onnx.__version__,
                onnxruntime=onnxruntime.__version__, python=platform.python_version())


def quantize_checkpoint(config: str | Config,
                        checkpoint: str | os.PathLike,
                        out: str | os.PathLike,
                        settings: QuantSettings | None = None,
                        calib_images: int = 200,
                        keep_float: int = 0,
                        keep_float_layers: Sequence[str] = (),
                        sensitivity: bool = True,
                        sensitivity_images: int = 16,
                        run_eval: bool = False,
                        max_eval_images: int | None = None,
                        report: str | os.PathLike | None = None,
                        fp32_out: str | os.PathLike | None = None,
                        shape: tuple[int, int] | None = None,
                        exporter: str = 'dynamo',
                        opset: int = DEFAULT_OPSET,
                        threads: int | None = None,
                        speed_iters: int | None = None,
                        speed_rounds: int = 5,
                        force: bool = False,
                        trust: bool = False,
                        source: str | None = None,
                        seed: int = 0,
                        progress: bool = True,
                        command: str | None = None) -> dict:
    """Checkpoint -> fp32 ONNX -> int8 QDQ ONNX, with sensitivity, evaluation and a report.

    Args:
        config: mmseg or mmpretrain config (path or Config).
        checkpoint: Training-time or deployed checkpoint.
        out: The int8 ONNX file to write.
        settings: Quantization settings (default :class:`QuantSettings`).
        calib_images: Calibration inputs (from the train split; all of it if smaller).
        keep_float: Keep the K most sensitive weighted layers in float.
        keep_float_layers: Keep these layers (module paths or node names) in float.
        sensitivity: Rank the layers (needed for ``keep_float``).
        sensitivity_images: Calibration inputs the ranking is measured on.
        run_eval: Evaluate fp32 and int8 on the val/test split and time both.
        max_eval_images: Evaluate on the first N images only.
        report: The json report (a ``.md`` beside it); default ``OUT`` with ``.json``.
        fp32_out: Also keep the fp32 ONNX there (default: a temporary file).
        shape: Input ``(H, W)`` of the graph (default: the config's test crop).
        exporter: ``'dynamo'`` or ``'torchscript'``.
        opset: ONNX opset.
        threads: ONNX Runtime threads (None: its default).
        speed_iters: Timed runs per round (None: enough for a quarter second).
        speed_rounds: Interleaved timing rounds (median counts).
        force: Overwrite existing outputs.
        trust: Allow full unpickling of the checkpoint.
        source: Checkpoint layout (None: detect).
        seed: Seed of the calibration subset.
        progress: Show progress bars.
        command: The command line, recorded in the report.

    Returns:
        The report (also written as json and markdown).

    Raises:
        FileExistsError: An output (``out``, the reports, ``fp32_out``) exists and ``force``
            is False; checked before any work.
        SameFileError: An output is the checkpoint or the config (also through a link), or
            two outputs are the same file (``--report OUT``), whatever ``force`` says.
        QuantizationError: ``keep_float`` without ``sensitivity``, or a
            ``keep_float_layers`` name the graph does not have.
        ValueError: A count that is not a positive int (``keep_float``: non-negative).
    """
    settings = settings or QuantSettings()
    for name, value, least in (('calib_images', calib_images, 1), ('keep_float', keep_float, 0),
                               ('sensitivity_images', sensitivity_images, 1),
                               ('speed_rounds', speed_rounds, 1),
                               ('speed_iters', 1 if speed_iters is None else speed_iters, 1),
                               ('max_eval_images',
                                1 if max_eval_images is None else max_eval_images, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f'{name} must be an int >= {least}, got {value!r}')
    if keep_float and not sensitivity:
        raise QuantizationError('--keep-float K keeps the K most sensitive layers: it needs '
                                'the sensitivity ranking')
    out = Path(out)
    report_json = Path(report) if report else out.with_suffix('.json')
    report_md = report_json.with_suffix('.md')
    sources = source_files(config, checkpoint)
    check_output_paths([out, report_json, report_md, fp32_out], force, sources)
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    result: dict[str, Any] = dict(command=command, config=cfg.filename,
                                  checkpoint=str(checkpoint),
                                  int8_onnx=str(out), fp32_onnx=str(fp32_out) if fp32_out
                                  else None)
    with tempfile.TemporaryDirectory(prefix='mmrepvgg-quant-') as tmp:
        fp32_path = Path(fp32_out) if fp32_out else Path(tmp) / 'fp32.onnx'
        exported = export_onnx(cfg, checkpoint, fp32_path, shape=shape, exporter=exporter,
                               opset=opset, force=force, trust=trust, source=source)
        model = exported.model
        meta = read_metadata(fp32_path)
        result['export'] = dict(shape=list(exported.shape), exporter=exporter, opset=opset,
                                ort_max_rel_diff=exported.max_rel, nodes=exported.nodes)
        prepared = Path(tmp) / 'fp32_prepared.onnx'
        prepare_fp32(fp32_path, prepared)
        layers = weighted_layers(prepared)
        requested = resolve_layers(keep_float_layers, layers)  # a typo fails before the work
        fp32 = create_session(prepared, threads)
        calib = capture_inputs(cfg, model, fp32, calib_images, 'train', seed, progress)
        cache = Path(tmp) / 'calibration.json'
        print_log(f'Calibrating ({settings.calib_method}) on {len(calib)} train inputs',
                  logger='current')
        calibrate(prepared, calib, settings.calib_method, cache, progress=progress)
        result['quantization'] = dict(
            format='QDQ', weights='int8 ' + ('per-channel' if settings.per_channel
                                            else 'per-tensor'),
            activations=settings.activation_type,
            calibration=dict(method=settings.calib_method, inputs=len(calib), split='train',
                             pipeline='test pipeline, model inference (as deployed)',
                             seed=seed))
        sens_inputs = calib[:max(1, sensitivity_images)]
        reference = [run_session(fp32, x) for x in sens_inputs]  # fp32 outputs, once
        ranking = None
        if sensitivity:
            print_log(f'Sensitivity: quantizing each of {len(layers)} layers alone, output SQNR '
                      f'on {len(sens_inputs)} train inputs', logger='current')
            ranking = layer_sensitivity(prepared, cache, sens_inputs, settings, threads,
                                        progress, reference)
            result['sensitivity'] = dict(
                method='one weighted layer quantized at a time (all others float); SQNR of the '
                'model output vs fp32, in dB (lower = more sensitive)',
                inputs=len(sens_inputs), split='train', layers=ranking)
        kept = [dict(node=r['node'], module=r['module'], reason=f'sensitivity rank {r["rank"]}')
                for r in (ranking or [])[:keep_float]]
        for node in requested:
            if node not in {k['node'] for k in kept}:
                kept.append(dict(node=node, module=node_module(node), reason='requested'))
        result['quantization']['kept_float'] = kept
        int8_tmp = Path(tmp) / 'int8.onnx'
        quantize_file(prepared, int8_tmp, cache, settings,
                      nodes_to_exclude=[k['node'] for k in kept])
        onnx = require('onnx')
        proto = onnx.load(str(int8_tmp))
        summary = qdq_summary(proto)
        result['graph'] = dict(summary, fp32_mb=fp32_path.stat().st_size / 2**20,
                               int8_mb=int8_tmp.stat().st_size / 2**20)
        int8 = create_session(proto, threads)
        result['output_sqnr_db'] = tensor_sqnr_db(reference, [run_session(int8, x)
                                                              for x in sens_inputs])
        set_metadata(proto, dict(meta, quantization=dict(
            result['quantization'], calibration=dict(result['quantization']['calibration']),
            tool='onnxruntime.quantization.quantize_static')))
        onnx.checker.check_model(proto)
        write_bytes_atomic(out, proto.SerializeToString(), force=force, inputs=sources)
        print_log(f'Wrote {out}: {len(summary["quantized_layers"])} int8 layers, '
                  f'{len(summary["float_layers"])} float; output SQNR vs fp32 '
                  f'{result["output_sqnr_db"]:.1f} dB', logger='current')
        if run_eval:
            result['eval'] = _eval_and_time(cfg, model, fp32, int8, calib[0], max_eval_images,
                                            threads, speed_iters, speed_rounds, progress)
    result.update(device=dict(cpu=device_info('cpu')['cpu'], cpu_count=os.cpu_count(),
                              ort_threads=threads), versions=_versions())
    write_report(result, report_json, force=force, inputs=sources)
    return result


def _eval_and_time(cfg: Config, model: Any, fp32: Any, int8: Any, example: np.ndarray,
                   max_images: int | None, threads: int | None, iters: int | None,
                   rounds: int, progress: bool) -> dict:
    split = 'test' if cfg.get('test_dataloader') else 'val'
    metrics = {}
    for name, session in (('fp32', fp32), ('int8', int8)):
        metrics[name] = evaluate(cfg, OnnxPredictor(model, session), split, max_images,
                                 desc=f'eval {name} ONNX', progress=progress)
    key = main_metric(metrics['fp32'])
    speed = time_sessions({'fp32': fp32, 'int8': int8}, example, iters=iters, rounds=rounds)
    iters = speed['fp32']['iters']
    print_log(f'Timed fp32 vs int8: {rounds} interleaved rounds x {iters} runs',
              logger='current')
    return dict(split=split, images=max_images, metric=key, fp32=metrics['fp32'],
                int8=metrics['int8'], delta=metrics['int8'][key] - metrics['fp32'][key],
                speed=dict(input=list(example.shape), threads=threads, iters=iters,
                           rounds=rounds, fp32_ms=speed['fp32']['ms'],
                           int8_ms=speed['int8']['ms'],
                           fp32_over_int8=speed['fp32']['ms'] / speed['int8']['ms'],
                           fp32_rounds=speed['fp32']['rounds'],
                           int8_rounds=speed['int8']['rounds']))



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
        settings = QuantSettings()
        calibrate(src, inputs, settings.calib_method, cache, progress=False)
        quantize_file(src, dst, cache, settings)
        return onnx.load(dst)
