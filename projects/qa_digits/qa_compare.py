"""RepVGG vs QARepVGG on scikit-learn's digits: accuracy and int8 weight error, per seed.

The library behind ``tools/compare_qa_digits.py``. For each block type and seed it trains
the ``make demo-cls`` classifier (:func:`demo.demos.run_cls_demo`: the same data,
recipe and epochs; only ``block_cfg`` differs between ``configs/demo/repvgg-small_digits.py``
and ``configs/demo/qarepvgg-small_digits.py``), then on the held-out 450 images:

- fp32 top-1 as trained and deployed, as the mmengine runner tests them (the deployed one
  through ``RepVGGDeployHook``), and again here on the preprocessed tensors, before and
  after :func:`mmrepvgg.reparameterize`;
- the int8 weight-quantization error of every folded kernel
  (:func:`projects.qa_digits.quant_error.folded_kernel_errors`: SQNR per channel and per tensor);
- int8 top-1 through :func:`int8_top1`: ONNX Runtime static quantization with the library
  behind ``tools/quantize.py`` (:mod:`mmrepvgg.deploy.quantize`), calibrated on train
  images, per-channel and per-tensor int8 weights, ``minmax`` calibration (the tool's
  default) in the headline columns and every other calibrator beside them.
"""
from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from torch import Tensor, nn

from demo.demos import CLS_DEMO_CONFIG, load_demo_config, run_cls_demo
from mmrepvgg.deploy.build import TensorForward, load_model
from mmrepvgg.deploy.onnx_eval import build_dataset, make_loader
from mmrepvgg.deploy.onnx import check_against_pytorch, create_session, export_module, run_session
from mmrepvgg.deploy.quantize import (
    QuantSettings,
    calibrate,
    prepare_fp32,
    qdq_summary,
    quantize_file,
)
from mmrepvgg.models import reparameterize
from mmrepvgg.utils.fileio import fresh_work_dir, write_bytes_atomic, write_json_atomic
from mmrepvgg.utils.metrics import tensor_sqnr_db
from mmrepvgg.utils.optional import require
from projects.benchmark.device import device_info
from projects.benchmark.markdown import fmt
from projects.qa_digits.quant_error import errors_to_dicts, folded_kernel_errors, summarize_errors

QA_DEMO_CONFIG = 'configs/demo/qarepvgg-small_digits.py'
#: The two arms of the comparison: block type -> demo config.
DEMO_CONFIGS = {'RepVGGBlock': CLS_DEMO_CONFIG, 'QARepVGGBlock': QA_DEMO_CONFIG}
SHORT_NAMES = {'RepVGGBlock': 'RepVGG', 'QARepVGGBlock': 'QARepVGG'}
#: Calibrators of the int8 step, first the one the headline columns use: ``minmax``,
#: the default of ``tools/quantize.py`` (:class:`~mmrepvgg.deploy.quantize.QuantSettings`).
INT8_CALIBRATORS = ('minmax', 'entropy', 'percentile')
INT8_NOT_MEASURED = 'int8 top-1 not measured'


@dataclass
class Int8Result:
    """int8 top-1 of a deployed classifier (None when not measured).

    Attributes:
        per_channel: Top-1 (%) with per-channel weight scales and the first calibrator.
        per_tensor: Top-1 (%) with per-tensor weight scales and the first calibrator.
        note: How it was measured, or why it was not.
        calibrator: The calibrator of ``per_channel`` / ``per_tensor``.
        fp32_onnx: Top-1 (%) of the fp32 ONNX model the int8 ones are made from.
        fp32_onnx_max_rel: Its logits vs PyTorch's, max relative difference.
        calibrators: ``{method: {'per_channel': {...}, 'per_tensor': {...}}}`` for every
            calibrator run, each with ``top1``, ``logits_sqnr_db`` (int8 vs fp32 ONNX logits
            on the test images), ``quantized_layers``, ``float_layers`` and
            ``max_weight_scales`` (the most scales one weight has: its output channels
            per-channel, 1 per-tensor).
        calib_inputs: Calibration images (train split).
        seconds: Time the int8 step took.
    """

    per_channel: float | None = None
    per_tensor: float | None = None
    note: str = INT8_NOT_MEASURED
    calibrator: str | None = None
    fp32_onnx: float | None = None
    fp32_onnx_max_rel: float | None = None
    calibrators: dict = field(default_factory=dict)
    calib_inputs: int = 0
    seconds: float = 0.0

    @property
    def measured(self) -> bool:
        return self.per_channel is not None or self.per_tensor is not None


@dataclass
class DigitsData:
    """Preprocessed digits tensors, as the config's data preprocessor makes them.

    Attributes:
        test_inputs: The 450 held-out images, ``(N, 3, 32, 32)``.
        test_labels: Their labels.
        calib_inputs: Training images without augmentation (int8 calibration).
    """

    test_inputs: Tensor
    test_labels: Tensor
    calib_inputs: Tensor


def _top1_of_logits(logits: Tensor, labels: Tensor) -> float:
    return 100.0 * (logits.argmax(dim=1) == labels).sum().item() / len(labels)


def int8_top1(model: nn.Module, data: DigitsData,
              calibrators: tuple[str, ...] = INT8_CALIBRATORS,
              threads: int | None = None, exporter: str = 'dynamo',
              progress: bool = True) -> Int8Result:
    """int8 top-1 of a deployed (folded) classifier, per-channel and per-tensor weights.

    ONNX Runtime static quantization, through the library behind ``tools/quantize.py``
    (:mod:`mmrepvgg.deploy.quantize`), step by step as it does: the folded model is exported
    (``mode='tensor'``, dynamic batch) and checked against PyTorch, pre-processed
    (``quant_pre_process``), calibrated once per calibrator on ``data.calib_inputs`` (train
    images, one per calibration input as the tool feeds them, never a test image), and
    quantized from that calibration twice: QDQ, int8 weights per channel and per tensor,
    int8 activations. All of them (the fp32 ONNX model too) run on ``data.test_inputs``; top-1
    is against ``data.test_labels``.

    Args:
        model: The deployed classifier, eval mode, CPU, fp32.
        data: Test and calibration tensors.
        calibrators: :data:`~mmrepvgg.deploy.quantize.CALIBRATORS` keys; the first one gives
            ``per_channel`` / ``per_tensor``, every one is in ``calibrators`` of the result.
        threads: ONNX Runtime intra-op threads (None: torch's current number).
        exporter: ``'dynamo'`` or ``'torchscript'``.
        progress: Show the calibration progress bars.

    Returns:
        The int8 top-1s.

    Raises:
        VerificationError: If ONNX Runtime's fp32 logits differ from PyTorch's by more than
            the export tolerance, or either holds NaN or Inf.
    """
    if not calibrators:
        raise ValueError('int8_top1 needs at least one calibrator')
    onnx = require('onnx')
    t0 = time.time()
    threads = threads or torch.get_num_threads()
    with torch.no_grad():
        reference = model(data.test_inputs, mode='tensor')
    calib = [x[None].numpy() for x in data.calib_inputs]
    result = Int8Result(calibrator=calibrators[0], calib_inputs=len(calib))
    with tempfile.TemporaryDirectory(prefix='mmrepvgg-qa-int8-') as tmp:
        fp32_path, prepared = Path(tmp) / 'fp32.onnx', Path(tmp) / 'fp32_prepared.onnx'
        onnx.save(export_module(TensorForward(model).eval(), data.test_inputs[:2], exporter,
                                dynamic_batch=True), str(fp32_path))
        prepare_fp32(fp32_path, prepared)
        fp32_logits = run_session(create_session(prepared, threads), data.test_inputs)
        _, max_rel = check_against_pytorch([reference], [fp32_logits],
                                           where=' on the test images')
        result.fp32_onnx = _top1_of_logits(fp32_logits, data.test_labels)
        for method in calibrators:
            cache = Path(tmp) / f'calibration_{method}.json'
            calibrate(prepared, calib, method, cache, progress=progress)
            runs = {}
            for key, per_channel in (('per_channel', True), ('per_tensor', False)):
                out = Path(tmp) / f'int8_{method}_{key}.onnx'
                quantize_file(prepared, out, cache, QuantSettings(method, per_channel, 'int8'))
                proto = onnx.load(str(out))
                summary = qdq_summary(proto)
                logits = run_session(create_session(proto, threads), data.test_inputs)
                runs[key] = dict(top1=_top1_of_logits(logits, data.test_labels),
                                 logits_sqnr_db=tensor_sqnr_db(fp32_logits, logits),
                                 quantized_layers=len(summary['quantized_layers']),
                                 float_layers=len(summary['float_layers']),
                                 max_weight_scales=summary['max_weight_scales'])
            result.calibrators[method] = runs
    first = result.calibrators[calibrators[0]]
    result.per_channel, result.per_tensor = first['per_channel']['top1'], \
        first['per_tensor']['top1']
    result.seconds = time.time() - t0
    result.note = (f'ONNX Runtime static quantization (mmrepvgg.deploy.quantize), QDQ, int8 '
                   f'weights and activations, {calibrators[0]} calibration on {len(calib)} '
                   f'train images (also: {", ".join(calibrators[1:]) or "none"})')
    result.fp32_onnx_max_rel = max_rel
    print_log(f'int8 top-1 ({calibrators[0]}): per-channel {result.per_channel:.2f}, '
              f'per-tensor {result.per_tensor:.2f} (fp32 ONNX {result.fp32_onnx:.2f}; '
              f'{result.seconds:.0f} s)', logger='current')
    return result


@dataclass
class RunResult:
    """One block type and seed."""

    block: str
    seed: int
    checkpoint: str
    runner_trained: float
    runner_deployed: float
    trained: float
    deployed: float
    int8: Int8Result
    weight_error: dict
    layers: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def load_digits_data(cfg: Config, model: nn.Module, calib_samples: int = 256) -> DigitsData:
    """The test split and a calibration set, through the config's pipeline and preprocessor.

    Both splits are built as the ONNX evaluation builds them
    (:func:`~mmrepvgg.deploy.onnx_eval.build_dataset`: the config's dataset with its test
    pipeline, so the training images come without augmentation).

    Args:
        cfg: A digits demo config (see :func:`load_demo_config`).
        model: The classifier; its ``data_preprocessor`` turns batches into tensors.
        calib_samples: Training images for calibration, a seeded random subset (every
            class: the folders are sorted).

    Returns:
        The tensors.
    """

    def tensors(split: str, count: int | None = None) -> tuple[Tensor, Tensor]:
        dataset = build_dataset(cfg, split)
        order = None
        if count is not None:
            gen = torch.Generator().manual_seed(0)
            order = torch.randperm(len(dataset), generator=gen)[:count].tolist()
        xs, ys = [], []
        for batch in make_loader(cfg, dataset, split, order, batch_size=64):
            data = model.data_preprocessor(batch, False)
            xs.append(data['inputs'])
            ys.append(torch.cat([s.gt_label for s in data['data_samples']]))
        return torch.cat(xs), torch.cat(ys)

    test_x, test_y = tensors('test')
    calib_x, _ = tensors('train', calib_samples)
    return DigitsData(test_x, test_y, calib_x)


def top1(model: nn.Module, inputs: Tensor, labels: Tensor, batch: int = 150) -> float:
    """Top-1 (%) of a classifier called with ``mode='tensor'``."""
    with torch.no_grad():
        logits = torch.cat([model(inputs[i:i + batch], mode='tensor')
                            for i in range(0, len(inputs), batch)])
    return _top1_of_logits(logits, labels)


def evaluate_checkpoint(config: str, checkpoint: str | Path, data_root: str | Path,
                        int8: Callable[[nn.Module, DigitsData], Int8Result] = int8_top1
                        ) -> dict:
    """fp32 top-1 trained and folded, folded-kernel int8 error and int8 top-1 of a checkpoint.

    Args:
        config: The demo config it was trained with.
        checkpoint: A training-time checkpoint.
        data_root: The digits image folder.
        int8: The int8 step (default :func:`int8_top1`).

    Returns:
        ``dict(trained, deployed, int8, weight_error, layers)``.
    """
    cfg = load_demo_config(config, data_root)
    model, _, _ = load_model(cfg, checkpoint)
    data = load_digits_data(cfg, model)
    trained = top1(model, data.test_inputs, data.test_labels)
    reparameterize(model.eval())
    deployed = top1(model, data.test_inputs, data.test_labels)
    layers = folded_kernel_errors(model)
    return dict(trained=trained, deployed=deployed, int8=int8(model, data),
                weight_error=summarize_errors(layers), layers=errors_to_dicts(layers))


def compare_blocks(work_dir: str | Path = 'work_dirs/compare_qa_digits',
                   seeds: tuple[int, ...] = (0, 1, 2),
                   blocks: tuple[str, ...] = tuple(DEMO_CONFIGS),
                   max_epochs: int | None = None,
                   threads: int | None = None,
                   int8: Callable[[nn.Module, DigitsData], Int8Result] = int8_top1) -> dict:
    """Train and measure every block type for every seed; write json and markdown.

    Args:
        work_dir: Output folder (emptied first if a previous comparison or demo made it).
        seeds: Training seeds.
        blocks: Block types (keys of :data:`DEMO_CONFIGS`).
        max_epochs: Override the demo's 8 epochs.
        threads: torch threads (None: 1 on a busy machine, else all cores).
        int8: The int8 step.

    Returns:
        The report (also in ``work_dir/qa_digits.json`` and ``.md``).
    """
    unknown = [b for b in blocks if b not in DEMO_CONFIGS]
    if unknown or not blocks or not seeds:
        raise ValueError(f'blocks must be among {list(DEMO_CONFIGS)} and seeds non-empty, got '
                         f'blocks={list(blocks)}, seeds={list(seeds)}')
    work_dir = fresh_work_dir(work_dir)
    runs, total, t0 = [], len(blocks) * len(seeds), time.time()
    for i, (seed, block) in enumerate((s, b) for s in seeds for b in blocks):
        print_log(f'[compare {i + 1}/{total}] {block}, seed {seed}', logger='current')
        t = time.time()
        run_dir = work_dir / f'{SHORT_NAMES[block].lower()}_seed{seed}'
        demo = run_cls_demo(run_dir, DEMO_CONFIGS[block], max_epochs, threads, seed=seed)
        measured = evaluate_checkpoint(DEMO_CONFIGS[block], demo.checkpoint,
                                       run_dir / 'digits', int8)
        # same model, same 450 images (the runner's metric is float32: 1e-3, not equality)
        if abs(measured['trained'] - demo.trained) > 1e-3:
            raise RuntimeError(f'top-1 here ({measured["trained"]:.2f}) differs from the '
                               f'runner\'s ({demo.trained:.2f}) for {demo.checkpoint}: the '
                               'evaluation tensors are not what the model was tested on')
        runs.append(RunResult(block, seed, demo.checkpoint, demo.trained, demo.deployed,
                              seconds=time.time() - t, **measured))
    report = dict(seeds=list(seeds), blocks=list(blocks), max_epochs=max_epochs,
                  threads=torch.get_num_threads(), torch=torch.__version__,
                  machine=_machine(), seconds=time.time() - t0,
                  int8_measured=all(r.int8.measured for r in runs),
                  runs=[dict(asdict(r), int8=dict(asdict(r.int8), measured=r.int8.measured))
                        for r in runs])
    report['summary'] = summarize_runs(report['runs'])
    # the work dir was emptied above: an existing report means another writer, not ours
    write_json_atomic(work_dir / 'qa_digits.json', report, indent=2)
    write_bytes_atomic(work_dir / 'qa_digits.md', comparison_markdown(report))
    return report


def _machine() -> dict:
    """The CPU, its core count and the versions the numbers depend on."""
    info = device_info('cpu')
    versions = dict(torch=info['torch'], python=info['python'])
    for name in ('onnx', 'onnxruntime'):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return dict(cpu=info['cpu'], cpu_count=info['cpu_count'], versions=versions)


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


#: Summary columns: name -> how to read it from a run dict.
_COLUMNS = {
    'runner_trained': lambda r: r['runner_trained'],
    'runner_deployed': lambda r: r['runner_deployed'],
    'trained': lambda r: r['trained'],
    'deployed': lambda r: r['deployed'],
    'sqnr_per_channel_min': lambda r: r['weight_error']['per_channel']['min_db'],
    'sqnr_per_channel_median': lambda r: r['weight_error']['per_channel']['median_db'],
    'sqnr_per_tensor_min': lambda r: r['weight_error']['per_tensor']['min_db'],
    'sqnr_per_tensor_median': lambda r: r['weight_error']['per_tensor']['median_db'],
    'max_over_std_max': lambda r: r['weight_error']['max_over_std']['max'],
}
_WEIGHTS = ('per_channel', 'per_tensor')


def _calibrators(runs: list[dict]) -> list[str]:
    """The calibrators every run measured, in the order of the first run."""
    if not runs:
        return []
    return [c for c in runs[0]['int8'].get('calibrators', {})
            if all(c in r['int8'].get('calibrators', {}) for r in runs)]


def summarize_runs(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every column, per block type (int8 only if
    every run measured it).

    ``int8_per_channel`` / ``int8_per_tensor`` are the headline calibrator's top-1;
    ``int8_<calibrator>_<weights>`` and ``logits_sqnr_<calibrator>_<weights>`` cover every
    calibrator that all runs measured, ``fp32_onnx`` the fp32 ONNX top-1.
    """
    summary = {}
    for block in dict.fromkeys(r['block'] for r in runs):
        mine = [r for r in runs if r['block'] == block]
        summary[block] = {k: _mean_std([f(r) for r in mine]) for k, f in _COLUMNS.items()}
        for key in _WEIGHTS:
            values = [r['int8'][key] for r in mine]
            summary[block][f'int8_{key}'] = (_mean_std(values) if None not in values
                                             else None)
        fp32 = [r['int8'].get('fp32_onnx') for r in mine]
        summary[block]['fp32_onnx'] = _mean_std(fp32) if None not in fp32 else None
        for method in _calibrators(mine):
            for key in _WEIGHTS:
                got = [r['int8']['calibrators'][method][key] for r in mine]
                summary[block][f'int8_{method}_{key}'] = _mean_std([g['top1'] for g in got])
                summary[block][f'logits_sqnr_{method}_{key}'] = _mean_std(
                    [g['logits_sqnr_db'] for g in got])
    return summary


def _headline_calibrator(report: dict) -> str | None:
    return next((r['int8'].get('calibrator') for r in report['runs']
                 if r['int8'].get('calibrator')), None)


def comparison_markdown(report: dict) -> str:
    """The report as markdown: one row per run, then mean ± std per block type; then every
    calibrator's int8 top-1 and logits SQNR, likewise."""
    calib = _headline_calibrator(report)
    cal = f' ({calib})' if calib else ''
    head = (f'| block | seed | fp32 top-1 trained | fp32 top-1 deployed | int8 top-1 '
            f'per-channel{cal} | int8 top-1 per-tensor{cal} | weight SQNR per-channel min / '
            'median (dB) | weight SQNR per-tensor min / median (dB) | max abs(w)/std(w) |')
    machine = report.get('machine') or {}
    where = (f' on {machine["cpu"]} ({machine["cpu_count"]} cores), ' + ', '.join(
        f'{k} {v}' for k, v in machine['versions'].items() if v) if machine else '')
    lines = [f'RepVGG vs QARepVGG on scikit-learn digits (450 test images), seeds '
             f'{report["seeds"]}, torch threads {report["threads"]}{where}.', '', head,
             '|' + '---|' * 9]
    for r in report['runs']:
        we = r['weight_error']
        pc, pt = (fmt(r['int8'][k], '.2f', missing='not measured')
                  for k in ('per_channel', 'per_tensor'))
        lines.append(
            f'| {SHORT_NAMES.get(r["block"], r["block"])} | {r["seed"]} | {r["trained"]:.2f} '
            f'| {r["deployed"]:.2f} | {pc} '
            f'| {pt} | {we["per_channel"]["min_db"]:.1f} / '
            f'{we["per_channel"]["median_db"]:.1f} | {we["per_tensor"]["min_db"]:.1f} / '
            f'{we["per_tensor"]["median_db"]:.1f} | {we["max_over_std"]["max"]:.1f} |')

    def ms(s: dict, key: str, digits: int = 2) -> str:
        if s.get(key) is None:
            return 'not measured'
        return f'{s[key][0]:.{digits}f} ± {s[key][1]:.{digits}f}'

    for block, s in report['summary'].items():
        lines.append(
            f'| **{SHORT_NAMES.get(block, block)}** | mean ± std | {ms(s, "trained")} '
            f'| {ms(s, "deployed")} | {ms(s, "int8_per_channel")} | {ms(s, "int8_per_tensor")} '
            f'| {ms(s, "sqnr_per_channel_min", 1)} / {ms(s, "sqnr_per_channel_median", 1)} '
            f'| {ms(s, "sqnr_per_tensor_min", 1)} / {ms(s, "sqnr_per_tensor_median", 1)} '
            f'| {ms(s, "max_over_std_max", 1)} |')
    lines += ['', 'fp32 top-1 from the tensors here; the mmengine runner reported '
              + ', '.join(f'{SHORT_NAMES.get(r["block"], r["block"])}/{r["seed"]}: '
                          f'{r["runner_trained"]:.2f} trained, {r["runner_deployed"]:.2f} '
                          'deployed' for r in report['runs']) + '.',
              'Weight SQNR: symmetric int8 ([-127, 127]) of each block\'s folded 3x3 kernel, '
              'min and median over the layers (projects.qa_digits.quant_error).']
    if not report['int8_measured']:
        lines.append(f'**{INT8_NOT_MEASURED}.**')
        return '\n'.join(lines) + '\n'
    line = f'int8: {report["runs"][0]["int8"]["note"]}.'
    if all(r['int8'].get('fp32_onnx') is not None for r in report['runs']):
        rel = max(r['int8'].get('fp32_onnx_max_rel') or 0.0 for r in report['runs'])
        line += (' The fp32 ONNX models they are made from scored ' + ', '.join(
            f'{SHORT_NAMES.get(r["block"], r["block"])}/{r["seed"]}: '
            f'{r["int8"]["fp32_onnx"]:.2f}' for r in report['runs'])
            + f' (logits within a max rel diff of {rel:.2g} of PyTorch\'s).')
    lines.append(line)
    methods = _calibrators(report['runs'])
    if methods:
        lines += ['', 'int8 top-1 and the SQNR of the int8 logits against the fp32 ONNX logits '
                  '(450 test images), per calibrator:', '',
                  '| block | seed | calibrator | int8 top-1 per-channel | int8 top-1 per-tensor '
                  '| logits SQNR per-channel (dB) | logits SQNR per-tensor (dB) |',
                  '|' + '---|' * 7]
        for r in report['runs']:
            for method in methods:
                got = r['int8']['calibrators'][method]
                lines.append(
                    f'| {SHORT_NAMES.get(r["block"], r["block"])} | {r["seed"]} | {method} '
                    f'| {got["per_channel"]["top1"]:.2f} | {got["per_tensor"]["top1"]:.2f} '
                    f'| {got["per_channel"]["logits_sqnr_db"]:.1f} '
                    f'| {got["per_tensor"]["logits_sqnr_db"]:.1f} |')
        for block, s in report['summary'].items():
            for method in methods:
                lines.append(
                    f'| **{SHORT_NAMES.get(block, block)}** | mean ± std | {method} '
                    f'| {ms(s, f"int8_{method}_per_channel")} '
                    f'| {ms(s, f"int8_{method}_per_tensor")} '
                    f'| {ms(s, f"logits_sqnr_{method}_per_channel", 1)} '
                    f'| {ms(s, f"logits_sqnr_{method}_per_tensor", 1)} |')
    return '\n'.join(lines) + '\n'
