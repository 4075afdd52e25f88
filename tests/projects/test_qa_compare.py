"""The RepVGG vs QARepVGG digits comparison: evaluation, orchestration and report, without
training (an untrained model is evaluated; the orchestration runs on stand-ins)."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import mmrepvgg.deploy.quantize as quantize
import projects.qa_digits.qa_compare as qa_compare
from demo.demos import DemoResult, load_demo_config
from mmrepvgg import reparameterize
from projects.qa_digits.quant_error import LayerQuantError, summarize_errors
from mmrepvgg.deploy import build_model
from projects.qa_digits.qa_compare import (
    DEMO_CONFIGS,
    INT8_NOT_MEASURED,
    QA_DEMO_CONFIG,
    DigitsData,
    Int8Result,
    comparison_markdown,
    evaluate_checkpoint,
    int8_top1,
    top1,
)
from tests.helpers import randomize_bn_


def test_evaluate_checkpoint(tmp_path):
    from demo.datasets import make_digits_folder
    digits = tmp_path / 'digits'
    make_digits_folder(digits)
    torch.manual_seed(0)
    model = randomize_bn_(build_model(load_demo_config(QA_DEMO_CONFIG, digits)))
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, tmp_path / 'qa.pth')
    seen = {}

    def int8(deployed, data):
        seen.update(deploy=deployed.backbone.deploy, test=data.test_inputs.shape,
                    labels=data.test_labels.bincount().tolist(), calib=data.calib_inputs.shape)
        return Int8Result(per_channel=40.0, per_tensor=30.0, note='stand-in')

    out = evaluate_checkpoint(QA_DEMO_CONFIG, tmp_path / 'qa.pth', digits, int8)
    assert 0 <= out['trained'] <= 100
    assert abs(out['trained'] - out['deployed']) <= 100 / 450  # at most one of 450 images
    assert [layer['name'] for layer in out['layers']] == [
        'backbone.stem', 'backbone.stage_1.0', 'backbone.stage_2.0', 'backbone.stage_2.1',
        'backbone.stage_3.0', 'backbone.stage_3.1', 'backbone.stage_3.2', 'backbone.stage_3.3',
        'backbone.stage_4.0']
    assert out['weight_error']['layers'] == 9 and out['int8'].per_tensor == 30.0
    # the int8 step gets the folded model, the 450 test images (every class) and calibration
    assert seen['deploy'] and seen['test'] == (450, 3, 32, 32) and len(seen['labels']) == 10
    assert min(seen['labels']) >= 40 and seen['calib'] == (256, 3, 32, 32)


def test_int8_step_runs_the_real_quantizer(monkeypatch):
    """An untrained QARepVGG digits model through ONNX Runtime's quantizer: both weight
    granularities, two calibrators, calibration on the calibration images only."""
    torch.manual_seed(0)
    model = randomize_bn_(build_model(load_demo_config(QA_DEMO_CONFIG, 'unused'))).eval()
    reparameterize(model)
    gen = torch.Generator().manual_seed(1)
    test = torch.rand(60, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 10, (60, ), generator=gen)
    calib = torch.rand(20, 3, 32, 32, generator=gen)
    calibrated, quantized = [], []
    real_calibrate, real_quantize_file = quantize.calibrate, quantize.quantize_file

    def calibrate(model_path, inputs, method, cache, **kwargs):
        calibrated.append((method, np.concatenate(inputs)))
        return real_calibrate(model_path, inputs, method, cache, **kwargs)

    def quantize_file(model_path, out, cache, settings, **kwargs):
        quantized.append((settings.calib_method, settings.per_channel))
        return real_quantize_file(model_path, out, cache, settings, **kwargs)

    monkeypatch.setattr(qa_compare, 'calibrate', calibrate)
    monkeypatch.setattr(qa_compare, 'quantize_file', quantize_file)
    result = int8_top1(model, DigitsData(test, labels, calib), calibrators=('minmax', 'entropy'),
                       threads=1, progress=False)
    # calibrated on the calibration images only, once per calibrator; both granularities each
    assert [m for m, _ in calibrated] == ['minmax', 'entropy']
    assert all(np.array_equal(x, calib.numpy()) for _, x in calibrated)
    assert quantized == [('minmax', True), ('minmax', False), ('entropy', True),
                         ('entropy', False)]
    assert result.measured and result.calibrator == 'minmax' and result.calib_inputs == 20
    # the fp32 ONNX model scores what the PyTorch model does on the same images and labels
    assert result.fp32_onnx == top1(model, test, labels) and result.fp32_onnx_max_rel <= 1e-4
    assert 'minmax calibration on 20 train images' in result.note
    assert (result.per_channel, result.per_tensor) == (
        result.calibrators['minmax']['per_channel']['top1'],
        result.calibrators['minmax']['per_tensor']['top1'])
    for method in ('minmax', 'entropy'):
        runs = result.calibrators[method]
        for key in ('per_channel', 'per_tensor'):
            got = runs[key]
            correct = got['top1'] * 60 / 100  # a whole number of the 60 images
            assert 0 <= got['top1'] <= 100 and correct == pytest.approx(round(correct))
            assert got['quantized_layers'] == 10 and got['float_layers'] == 0  # 9 blocks + fc
            assert 10 < got['logits_sqnr_db'] < math.inf  # quantized, not garbage
        # per channel: one scale per output channel (stage 4 has 512); per tensor: one
        assert runs['per_channel']['max_weight_scales'] == 512
        assert runs['per_tensor']['max_weight_scales'] == 1


def _stand_ins(monkeypatch, calls: list, int8: Int8Result, offset: float = 0.0):
    def demo(work_dir, config, max_epochs, threads, seed):
        calls.append((config, seed))
        return DemoResult(str(work_dir), f'{work_dir}/epoch_8.pth', 'top-1', 90.0 + seed,
                          90.0 + seed)

    def evaluate(config, checkpoint, data_root, int8_step):
        assert int8_step is qa_compare.int8_top1 and str(data_root).endswith('digits')
        layers = [LayerQuantError(f'backbone.stage_1.{i}', (8, 8, 3, 3), 40.0 + i, 30.0 + i,
                                  1.0, 5.0 + i) for i in range(3)]
        seed = int(re.search(r'seed(\d+)', checkpoint).group(1))
        return dict(trained=90.0 + seed + offset, deployed=90.0 + seed, int8=int8,
                    weight_error=summarize_errors(layers), layers=[])

    monkeypatch.setattr(qa_compare, 'run_cls_demo', demo)
    monkeypatch.setattr(qa_compare, 'evaluate_checkpoint', evaluate)


def test_compare_blocks_report(tmp_path, monkeypatch):
    calls = []
    _stand_ins(monkeypatch, calls, Int8Result())
    report = qa_compare.compare_blocks(tmp_path / 'cmp', seeds=(0, 1))
    assert calls == [(DEMO_CONFIGS['RepVGGBlock'], 0), (DEMO_CONFIGS['QARepVGGBlock'], 0),
                     (DEMO_CONFIGS['RepVGGBlock'], 1), (DEMO_CONFIGS['QARepVGGBlock'], 1)]
    assert [(r['block'], r['seed']) for r in report['runs']] == [
        ('RepVGGBlock', 0), ('QARepVGGBlock', 0), ('RepVGGBlock', 1), ('QARepVGGBlock', 1)]
    assert not report['int8_measured']
    s = report['summary']['QARepVGGBlock']
    assert s['runner_trained'] == (90.5, pytest.approx(math.sqrt(0.5)))
    assert s['sqnr_per_tensor_min'] == (30.0, 0.0) and s['sqnr_per_tensor_median'][0] == 31.0
    assert s['int8_per_channel'] is None and s['int8_per_tensor'] is None
    md = (tmp_path / 'cmp' / 'qa_digits.md').read_text()
    assert md == comparison_markdown(report)
    assert md.count('| not measured | not measured |') == 6 and INT8_NOT_MEASURED in md
    assert (tmp_path / 'cmp' / 'qa_digits.json').is_file()
    # the machine the numbers come from: CPU, cores, versions
    assert report['machine']['cpu_count'] >= 1 and report['machine']['versions']['onnxruntime']
    assert f'({report["machine"]["cpu_count"]} cores), torch {torch.__version__}' in md


def test_a_wired_int8_step_is_reported(tmp_path, monkeypatch):
    def run(top1: float, sqnr: float) -> dict:
        return dict(top1=top1, logits_sqnr_db=sqnr, quantized_layers=10, float_layers=0,
                    max_weight_scales=1)

    calibrators = {'minmax': dict(per_channel=run(40.0, 30.0), per_tensor=run(30.0, 20.0)),
                   'entropy': dict(per_channel=run(41.0, 31.0), per_tensor=run(31.0, 21.0))}
    _stand_ins(monkeypatch, [], Int8Result(per_channel=40.0, per_tensor=30.0, note='test',
                                           calibrator='minmax', fp32_onnx=93.0,
                                           fp32_onnx_max_rel=1e-7, calibrators=calibrators))
    report = qa_compare.compare_blocks(tmp_path / 'cmp', seeds=(3, ), blocks=('QARepVGGBlock', ))
    assert report['int8_measured']
    s = report['summary']['QARepVGGBlock']
    assert s['int8_per_tensor'] == (30.0, 0.0) and s['fp32_onnx'] == (93.0, 0.0)
    assert s['int8_entropy_per_tensor'] == (31.0, 0.0)
    assert s['logits_sqnr_minmax_per_channel'] == (30.0, 0.0)
    md = comparison_markdown(report)
    assert INT8_NOT_MEASURED not in md and 'not measured' not in md and '| 40.00 | 30.00 |' in md
    assert '| int8 top-1 per-channel (minmax) |' in md and 'QARepVGG/3: 93.00' in md
    assert '| QARepVGG | 3 | entropy | 41.00 | 31.00 | 31.0 | 21.0 |' in md
    assert '| **QARepVGG** | mean ± std | minmax | 40.00 ± 0.00 | 30.00 ± 0.00 |' in md
    assert (tmp_path / 'cmp' / 'qa_digits.md').read_text() == md


def test_an_evaluation_that_disagrees_with_the_runner_is_an_error(tmp_path, monkeypatch):
    _stand_ins(monkeypatch, [], Int8Result(), offset=1.0)
    with pytest.raises(RuntimeError, match='differs from the runner'):
        qa_compare.compare_blocks(tmp_path / 'cmp', seeds=(0, ), blocks=('RepVGGBlock', ))


def test_bad_arguments_and_foreign_work_dir(tmp_path, capsys):
    with pytest.raises(ValueError, match='blocks must be'):
        qa_compare.compare_blocks(tmp_path / 'x', blocks=('ResNet', ))
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'data.txt').write_text('keep')
    from tools.compare_qa_digits import main
    assert main(['--work-dir', str(tmp_path / 'mine'), '--seeds', '0']) == 1
    assert capsys.readouterr().err.splitlines() == [
        f'error: {tmp_path / "mine"} exists and was not made by a demo; choose another folder '
        'or remove it yourself']
    assert (tmp_path / 'mine' / 'data.txt').read_text() == 'keep'
    for option in ('--threads', '--max-epochs'):  # counts are positive, as in every tool
        with pytest.raises(SystemExit) as err:
            main([option, '0'])
        assert err.value.code == 2
        assert f'argument {option}: must be at least 1, got 0' in capsys.readouterr().err


def test_the_committed_comparison_renders_from_its_json():
    """docs/qa_digits_cpu.md (quoted by docs/export.md) is what its committed json renders to."""
    import json
    from pathlib import Path
    docs = Path(__file__).resolve().parents[2] / 'docs'
    report = json.loads((docs / 'qa_digits_cpu.json').read_text())
    assert report['seeds'] == [0, 1, 2] and report['int8_measured']
    assert len(report['runs']) == 6  # 2 blocks x 3 seeds
    assert qa_compare.comparison_markdown(report) == (docs / 'qa_digits_cpu.md').read_text()
