"""``make demo-int8``: the digits classifier of ``make demo-cls`` to fp32 and int8 ONNX.

Reuses the ``make demo-cls`` checkpoint when its work dir has one (else trains it), exports
the folded model to ONNX (verified against PyTorch), quantizes it to int8 with ONNX
Runtime (calibrated on train digits), evaluates both ONNX models on the held-out digits
with the config's evaluator, times both on the CPU in the same run, ranks the layers by
sensitivity, and checks that int8 top-1 stays within ``max_drop`` points of fp32. It then
exports the tiny Cityscapes PSPNet of ``make demo`` (reused or trained) and checks that the
ONNX model's mIoU equals PyTorch's (within 0.1).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from mmengine.config import Config
from mmengine.logging import print_log

from mmrepvgg.checkpoint import install_mmengine_loader
from mmrepvgg.deploy import load_model
from mmrepvgg.deploy.onnx import ExportOptions
from mmrepvgg.deploy.onnx_eval import evaluate_export
from mmrepvgg.deploy.quantize import QuantizeOptions, QuantSettings, summary_lines
from mmrepvgg.utils.fileio import fresh_work_dir, write_bytes_atomic
from tools.quantize import quantize_file

from .demos import (
    CLS_DEMO_CONFIG,
    SEG_DEMO_CONFIG,
    load_demo_config,
    run_cls_demo,
    run_seg_demo,
    set_threads,
)


@dataclass
class Int8DemoResult:
    """What ``make demo-int8`` measured."""

    work_dir: str
    checkpoint: str = ''
    trained_now: bool = False
    report: dict = field(default_factory=dict)
    report_path: str = ''
    max_drop: float = 2.0
    seg: dict | None = None
    seg_tolerance: float = 0.1
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def fp32_top1(self) -> float:
        return self.report['eval']['fp32']['accuracy/top1']

    @property
    def int8_top1(self) -> float:
        return self.report['eval']['int8']['accuracy/top1']

    @property
    def int8_ok(self) -> bool:
        """int8 top-1 >= fp32 top-1 - ``max_drop`` points."""
        return self.int8_top1 >= self.fp32_top1 - self.max_drop

    @property
    def seg_ok(self) -> bool:
        return self.seg is None or abs(self.seg['diff']) <= self.seg_tolerance

    @property
    def ok(self) -> bool:
        return self.int8_ok and self.seg_ok

    def summary(self) -> str:
        lines = ['=' * 72, f'int8 demo summary ({self.work_dir})',
                 f'  digits classifier      {self.checkpoint} '
                 f'({"trained now" if self.trained_now else "reused from make demo-cls"})']
        lines += [f'  {line}' for line in summary_lines(self.report)]
        lines += [f'  report                 {Path(self.report_path).with_suffix(".md")}',
                  f'  int8 top-1 >= fp32 - {self.max_drop:g}  {"yes" if self.int8_ok else "NO"}']
        if self.seg is not None:
            lines.append(
                f'  tiny Cityscapes PSPNet mIoU PyTorch {self.seg["pytorch"]["mIoU"]:.2f}, '
                f'ONNX {self.seg["onnx"]["mIoU"]:.2f} at {self.seg["shape"][0]}x'
                f'{self.seg["shape"][1]} ({self.seg["out"]}); same within '
                f'{self.seg_tolerance:g}: {"yes" if self.seg_ok else "NO"}')
        lines.append('  time (s)               ' + ', '.join(
            f'{k} {v:.0f}' for k, v in self.seconds.items()))
        lines.append('=' * 72)
        return '\n'.join(lines)


def export_and_evaluate(cfg: Config, checkpoint: str, out: str | Path,
                        threads: int | None = None) -> dict:
    """The checkpoint's model exported to ``out`` and its mIoU as ONNX and as PyTorch
    (:func:`mmrepvgg.deploy.onnx_eval.evaluate_export`)."""
    result = evaluate_export(cfg, *load_model(cfg, checkpoint), threads=threads)
    export = result.pop('export')
    write_bytes_atomic(out, export.proto.SerializeToString())
    export.out = result['out'] = str(out)
    print_log(export.summary(), logger='current')
    return result


def _reusable(work_dir: Path, data: str) -> str | None:
    """The checkpoint a previous demo left in ``work_dir`` (with its data), else None."""
    marker = work_dir / 'train' / 'last_checkpoint'
    if not marker.is_file() or not (work_dir / data).is_dir():
        return None
    ckpt = Path(marker.read_text().strip())
    return str(ckpt) if ckpt.is_file() else None


def run_int8_demo(work_dir: str | Path = 'work_dirs/demo_int8',
                  cls_work_dir: str | Path = 'work_dirs/demo_cls',
                  seg_work_dir: str | Path | None = 'work_dirs/demo',
                  calib_method: str = 'minmax',
                  per_channel: bool = True,
                  keep_float: int = 0,
                  max_drop: float = 2.0,
                  threads: int | None = None) -> Int8DemoResult:
    """Digits classifier -> fp32 / int8 ONNX -> accuracy, speed, sensitivity; tiny PSPNet export.

    Args:
        work_dir: Outputs (ONNX models, report); emptied first.
        cls_work_dir: ``make demo-cls``'s work dir: its checkpoint is reused if present, else
            the classifier is trained there.
        seg_work_dir: ``make demo``'s work dir, likewise (None: skip the PSPNet export).
        calib_method: ``'minmax'``, ``'entropy'`` or ``'percentile'``.
        per_channel: Per-channel weight scales.
        keep_float: Keep the K most sensitive layers in float.
        max_drop: The int8 top-1 may be at most this many points below fp32.
        threads: torch and ONNX Runtime threads (None: see
            :func:`demo.demos.set_threads`).

    Returns:
        The measurements; ``result.ok`` says whether both checks passed.
    """
    t0 = time.time()
    nthreads = set_threads(threads)
    install_mmengine_loader()
    cls_work = Path(cls_work_dir)
    out = fresh_work_dir(work_dir)
    result = Int8DemoResult(work_dir=str(work_dir), max_drop=max_drop)
    ckpt = _reusable(cls_work, 'digits')
    if ckpt is None:
        print_log(f'[1/3] No make demo-cls checkpoint in {cls_work}: training it',
                  logger='current')
        ckpt = run_cls_demo(cls_work, threads=nthreads).checkpoint
        result.trained_now = True
    else:
        print_log(f'[1/3] Reusing {ckpt}', logger='current')
    result.checkpoint = ckpt
    result.seconds['classifier'] = time.time() - t0

    print_log('[2/3] Digits: fp32 ONNX -> int8 (calibrated on train digits) -> test top-1, '
              'CPU speed, sensitivity', logger='current')
    t = time.time()
    cfg = load_demo_config(CLS_DEMO_CONFIG, cls_work / 'digits')
    report_path = out / 'digits_int8.json'
    options = QuantizeOptions(QuantSettings(calib_method, per_channel), keep_float=keep_float,
                              run_eval=True, threads=nthreads,
                              export=ExportOptions(shape=(32, 32)))
    result.report = quantize_file(cfg, ckpt, out / 'digits_int8.onnx', options,
                                  report=report_path, fp32_out=out / 'digits_fp32.onnx',
                                  command='make demo-int8')
    result.report_path = str(report_path)
    result.seconds['quantize'] = time.time() - t

    if seg_work_dir is not None:
        t = time.time()
        seg_work = Path(seg_work_dir)
        seg_ckpt = _reusable(seg_work, 'tiny_cityscapes')
        if seg_ckpt is None:
            print_log(f'[3/3] No make demo checkpoint in {seg_work}: training it',
                      logger='current')
            seg_ckpt = run_seg_demo(seg_work, convert=False, threads=nthreads).checkpoint
        print_log(f'[3/3] Tiny Cityscapes PSPNet {seg_ckpt}: ONNX vs PyTorch mIoU',
                  logger='current')
        seg_cfg = load_demo_config(SEG_DEMO_CONFIG, seg_work / 'tiny_cityscapes')
        result.seg = export_and_evaluate(seg_cfg, seg_ckpt, out / 'pspnet_tiny.onnx',
                                         threads=nthreads)
        result.seconds['pspnet'] = time.time() - t
    result.seconds['total'] = time.time() - t0
    print(result.summary(), flush=True)
    return result
