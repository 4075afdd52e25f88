"""Checkpoint -> verified fp32 ONNX -> int8 ONNX that really runs integer convolutions.

Library behind ``tools/quantize.py`` and ``make demo-int8`` (the steps are in
:mod:`mmrepvgg.deploy.quantize`). What it guarantees:

- **checked before writing anything**: every argument, every output path, the calibration
  folder, the input size (the export's refusals) and ``keep_float`` against the graph's
  layers; all outputs (int8 file, ``fp32_out``, reports) are written at the very end, after
  the evaluation, so a failure leaves nothing partial; SIGTERM unwinds like an error (the
  temporary files of the export, calibration and ONNX Runtime's quantizer are removed);
- **really int8**: the session's optimized graph is read back
  (:func:`~mmrepvgg.deploy.ort_graph.executed_convs`) and every quantized Conv must run as
  an integer convolution, else :class:`~mmrepvgg.utils.errors.QuantizationError`; the report
  states how many do;
- **honest metadata**: the int8 file's metadata describes the layers that are int8 in the
  graph; a request that leaves no layer int8 (``--keep-float 1000``) is refused.
"""
from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import print_log

from mmrepvgg_runtime import RUNTIME_KEY

from ..utils.device import device_info
from ..utils.errors import QuantizationError
from ..utils.fileio import check_output_paths, sigterm_unwinds, write_bytes_atomic
from ..utils.metrics import tensor_sqnr_db
from ..utils.optional import require
from .calib import calib_images as folder_images_of, capture_inputs_from_dir
from .convert import source_files
from .metadata import set_metadata
from .onnx_eval import OnnxPredictor, capture_inputs, evaluate, main_metric, time_sessions
from .onnx_export import DEFAULT_OPSET, export_onnx, node_module
from .ort import create_session, read_metadata, run_session
from .ort_graph import check_integer_convs, executed_convs
from .quant_report import write_report
from .quantize import (QuantSettings, calibrate, layer_sensitivity, prepare_fp32, qdq_summary,
                       quantize_file, resolve_layers, weighted_layers)



def _versions() -> dict:
    onnx, ort = require('onnx'), require('onnxruntime')
    return dict(torch=torch.__version__, onnx=onnx.__version__, onnxruntime=ort.__version__,
                python=platform.python_version())


def _check_counts(**counts: tuple[int | None, int]) -> None:
    for name, (value, least) in counts.items():
        value = least if value is None else value
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f'{name} must be an int >= {least}, got {value!r}')


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
                        command: str | None = None,
                        calib_dir: str | os.PathLike | None = None) -> dict:
    """Checkpoint -> fp32 ONNX -> int8 QDQ ONNX, checked, with sensitivity, evaluation, report.

    Args:
        config: mmseg or mmpretrain config (path or Config).
        checkpoint: Training-time or deployed checkpoint.
        out: The int8 ONNX file to write.
        settings: Quantization settings (default :class:`QuantSettings`: the measured best).
        calib_images: Calibration inputs (all there are if fewer).
        keep_float: Keep the K most sensitive weighted layers in float.
        keep_float_layers: Keep these layers (module paths or node names) in float.
        sensitivity: Rank the layers (needed for ``keep_float``).
        sensitivity_images: Calibration inputs the ranking is measured on.
        run_eval: Evaluate fp32 and int8 on the val/test split and time both.
        max_eval_images: Evaluate on the first N images only.
        report: The json report (a ``.md`` beside it); default ``OUT`` with ``.json``.
        fp32_out: Also write the fp32 ONNX there.
        shape: Input ``(H, W)`` of the graph (default: the export's, from the test behaviour).
        exporter: ``'dynamo'`` (default; conv biases are initializers, so every Conv fuses
            into an integer conv) or ``'torchscript'``.
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
        calib_dir: Calibrate on the images of this folder (through the config's test
            pipeline) instead of the train split.

    Returns:
        The report (also written as json and markdown).

    Raises:
        FileExistsError, SameFileError, IsADirectoryError, NotADirectoryError: An output
            that may not be written (checked before any work).
        FileNotFoundError, ValueError: A bad count or ``calib_dir`` (checked first).
        QuantizationError: ``keep_float`` without ``sensitivity``; a ``keep_float_layers``
            name the graph does not have; no layer left to quantize; a quantized Conv that
            ONNX Runtime runs in float.
        ExportError, RuntimeMetaError, InputSizeError: From the export (nothing written).
    """
    settings = settings or QuantSettings()
    count = calib_images
    _check_counts(calib_images=(count, 1), keep_float=(keep_float, 0),
                  sensitivity_images=(sensitivity_images, 1), speed_rounds=(speed_rounds, 1),
                  speed_iters=(speed_iters, 1), max_eval_images=(max_eval_images, 1))
    if keep_float and not sensitivity:
        raise QuantizationError('--keep-float K keeps the K most sensitive layers: it needs '
                                'the sensitivity ranking')
    folder_images = folder_images_of(calib_dir) if calib_dir is not None else None
    out = Path(out)
    report_json = Path(report) if report else out.with_suffix('.json')
    sources = source_files(config, checkpoint)
    check_output_paths([out, report_json, report_json.with_suffix('.md'), fp32_out], force,
                       sources)
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    result: dict[str, Any] = dict(command=command, config=cfg.filename,
                                  checkpoint=str(checkpoint), int8_onnx=str(out),
                                  fp32_onnx=str(fp32_out) if fp32_out else None)
    with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix='mmrepvgg-quant-') as tmp:
        fp32_path = Path(tmp) / 'fp32.onnx'
        exported = export_onnx(cfg, checkpoint, fp32_path, shape=shape, exporter=exporter,
                               opset=opset, trust=trust, source=source)
        model, meta = exported.model, read_metadata(fp32_path)
        result['export'] = dict(shape=list(exported.shape), exporter=exporter, opset=opset,
                                ort_max_rel_diff=exported.max_rel, nodes=exported.nodes)
        prepared = Path(tmp) / 'fp32_prepared.onnx'
        prepare_fp32(fp32_path, prepared)
        layers = weighted_layers(prepared)
        requested = resolve_layers(keep_float_layers, layers)  # a typo fails before the work
        if keep_float >= len(layers) or len(set(requested)) >= len(layers):
            raise QuantizationError(
                f'--keep-float {keep_float}{" --keep-float-layers" if requested else ""} keeps '
                f'all {len(layers)} weighted layers in float: nothing would be int8')
        fp32 = create_session(prepared, threads)
        if folder_images is not None:
            calib = capture_inputs_from_dir(cfg, model, fp32, calib_dir, count, seed, progress)
            split = f'folder {calib_dir} ({len(folder_images)} images)'
        else:
            calib = capture_inputs(cfg, model, fp32, count, 'train', seed, progress)
            split = 'train'
        cache = Path(tmp) / 'calibration.json'
        print_log(f'Calibrating ({settings.calib_method}) on {len(calib)} inputs from {split}',
                  logger='current')
        calibrate(prepared, calib, settings.calib_method, cache, progress=progress)
        result['quantization'] = dict(
            format='QDQ', weights='int8 ' + ('per-channel' if settings.per_channel
                                            else 'per-tensor'),
            activations=settings.activation_type, pre_process='quant_pre_process',
            calibration=dict(method=settings.calib_method, inputs=len(calib), split=split,
                             pipeline='test pipeline, model inference (as deployed)',
                             seed=seed))
        sens_inputs = calib[:max(1, sensitivity_images)]
        reference = [run_session(fp32, x) for x in sens_inputs]  # fp32 outputs, once
        ranking = None
        if sensitivity:
            print_log(f'Sensitivity: quantizing each of {len(layers)} layers alone, output SQNR '
                      f'on {len(sens_inputs)} calibration inputs', logger='current')
            ranking = layer_sensitivity(prepared, cache, sens_inputs, settings, threads,
                                        progress, reference)
            result['sensitivity'] = dict(
                method='one weighted layer quantized at a time (all others float); SQNR of the '
                'model output vs fp32, in dB (lower = more sensitive)',
                inputs=len(sens_inputs), split=split, layers=ranking)
        kept = [dict(node=r['node'], module=r['module'], reason=f'sensitivity rank {r["rank"]}')
                for r in (ranking or [])[:keep_float]]
        for node in requested:
            if node not in {k['node'] for k in kept}:
                kept.append(dict(node=node, module=node_module(node), reason='requested'))
        result['quantization']['kept_float'] = kept
        int8_tmp = Path(tmp) / 'int8.onnx'
        quantize_file(prepared, int8_tmp, cache, settings,
                      nodes_to_exclude=[k['node'] for k in kept])
        proto = require('onnx').load(str(int8_tmp))
        summary = qdq_summary(proto)
        if not summary['quantized_layers'] or not summary['int8_initializers']:
            raise QuantizationError(f'No layer of {out} would be int8 (quantized layers: '
                                    f'{len(summary["quantized_layers"])}, int8 tensors: '
                                    f'{summary["int8_initializers"]})')
        ops = dict(layers)
        kept_convs = sum(1 for k in kept if ops.get(k['node']) == 'Conv')
        execution = executed_convs(int8_tmp, threads)
        line = check_integer_convs(execution, kept_convs, strict=True, where=str(out))
        print_log(line, logger='current')
        result['graph'] = dict(summary, fp32_mb=fp32_path.stat().st_size / 2**20,
                               int8_mb=int8_tmp.stat().st_size / 2**20,
                               executed=dict(execution.as_dict(), kept_float_convs=kept_convs,
                                             summary=line))
        int8 = create_session(proto, threads)
        result['output_sqnr_db'] = tensor_sqnr_db(reference, [run_session(int8, x)
                                                              for x in sens_inputs])
        runtime = dict(meta.get(RUNTIME_KEY) or {}, precision='int8') \
            if meta.get(RUNTIME_KEY) else None
        meta_q = dict(result['quantization'],
                      int8_layers=len(summary['quantized_layers']),
                      float_layers=len(summary['float_layers']),
                      integer_convs_in_onnxruntime=execution.integer,
                      tool='onnxruntime.quantization.quantize_static')
        set_metadata(proto, dict(meta, quantization=meta_q, precision='int8',
                                 **({RUNTIME_KEY: runtime} if runtime else {})))
        require('onnx').checker.check_model(proto)
        if run_eval:
            result['eval'] = _eval_and_time(cfg, model, fp32, int8, calib[0], max_eval_images,
                                            threads, speed_iters, speed_rounds, progress)
        result.update(device=dict(cpu=device_info('cpu')['cpu'], cpu_count=os.cpu_count(),
                                  ort_threads=threads), versions=_versions())
        # everything is known: write the outputs, all of them or (on an error) none more
        write_bytes_atomic(out, proto.SerializeToString(), force=force, inputs=sources)
        if fp32_out:
            write_bytes_atomic(fp32_out, fp32_path.read_bytes(), force=force, inputs=sources)
        print_log(f'Wrote {out}: {len(summary["quantized_layers"])} int8 layers, '
                  f'{len(summary["float_layers"])} float; output SQNR vs fp32 '
                  f'{result["output_sqnr_db"]:.1f} dB; {line}', logger='current')
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
    ratios = sorted(f / i for f, i in zip(speed['fp32']['rounds'], speed['int8']['rounds']))
    print_log(f'Timed fp32 vs int8: {rounds} interleaved rounds x {iters} runs',
              logger='current')
    return dict(split=split, images=max_images, metric=key, fp32=metrics['fp32'],
                int8=metrics['int8'], delta=metrics['int8'][key] - metrics['fp32'][key],
                speed=dict(input=list(example.shape), threads=threads, iters=iters,
                           rounds=rounds, fp32_ms=speed['fp32']['ms'],
                           int8_ms=speed['int8']['ms'],
                           fp32_over_int8=speed['fp32']['ms'] / speed['int8']['ms'],
                           ratio_min=ratios[0], ratio_max=ratios[-1],
                           fp32_rounds=speed['fp32']['rounds'],
                           int8_rounds=speed['int8']['rounds']))
