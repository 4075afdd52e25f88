"""tools/quantize.py on a digits classifier: QDQ int8 graph, accuracy bound, sensitivity,
partial quantization, report, refusals."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from projects.qa_digits.quant_error import quantize_symmetric
from projects.qa_digits.quant_error import sqnr_db as weight_sqnr_db
from mmrepvgg.deploy.onnx_eval import build_dataset, capture_inputs
from mmrepvgg.deploy.onnx import create_session, read_metadata
from mmrepvgg.deploy.quantize import QuantSettings, qdq_summary, report_markdown, weighted_layers
from mmrepvgg.utils.metrics import tensor_sqnr_db
from tests.deploy.helpers import export_onnx, quantize_checkpoint
from tests.helpers import load_tool, never_called, one_error_line

quantize_tool = load_tool('quantize')
LAYERS = 10  # 9 RepVGG blocks (1 + 1-2-4-1) and the linear head


def weight_scale_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shape of the weight scale of every quantized Conv/Gemm."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == 'DequantizeLinear'}
    return {n.name: tuple(inits[dq[n.input[1]].input[1]].dims) for n in model.graph.node
            if n.op_type in ('Conv', 'Gemm') and n.input[1] in dq}


def test_int8_digits_stays_within_2_points_with_int8_weights(trained_digits, tmp_path):
    cfg, ckpt = trained_digits
    out = tmp_path / 'int8.onnx'
    result = quantize_checkpoint(cfg, ckpt, out, QuantSettings('minmax'), calib_images=64,
                                 sensitivity_images=8, run_eval=True, shape=(32, 32),
                                 threads=1, speed_iters=2, speed_rounds=1, progress=False)
    ev = result['eval']
    assert ev['metric'] == 'accuracy/top1' and ev['fp32']['accuracy/top1'] > 60
    assert ev['int8']['accuracy/top1'] >= ev['fp32']['accuracy/top1'] - 2
    assert ev['speed']['fp32_ms'] > 0 and ev['speed']['int8_ms'] > 0
    # the graph: QDQ pairs, every weighted layer's weight an int8 initializer, per channel
    summary = qdq_summary(out)
    assert summary['QuantizeLinear'] > 0 and summary['DequantizeLinear'] > 0
    assert len(summary['quantized_layers']) == LAYERS and summary['float_layers'] == []
    assert summary['int8_initializers'] >= LAYERS
    scales = weight_scale_shapes(out)
    conv = next(n for n in scales if 'stem' in n)
    assert scales[conv] == (48, )  # one scale per output channel of the stem
    # sensitivity: every layer, ranked by output SQNR, most sensitive first
    layers = result['sensitivity']['layers']
    assert len(layers) == LAYERS and [r['rank'] for r in layers] == list(range(1, LAYERS + 1))
    assert [r['sqnr_db'] for r in layers] == sorted(r['sqnr_db'] for r in layers)
    assert {r['module'] for r in layers} >= {'backbone.stem.branch_reparam', 'head.fc'}
    assert all(0 < r['sqnr_db'] < math.inf for r in layers)
    # report: json + markdown, naming calibrator, weights, kept layers
    saved = json.loads(out.with_suffix('.json').read_text())
    assert saved['quantization']['calibration'] == dict(
        method='minmax', inputs=64, split='train',
        pipeline='test pipeline, model inference (as deployed)', seed=0)
    assert saved['quantization']['weights'] == 'int8 per-channel'
    assert saved['quantization']['kept_float'] == []
    md = out.with_suffix('.md').read_text()
    assert 'minmax calibration on 64 train inputs' in md and '| int8 ONNX |' in md
    meta = read_metadata(out)
    assert meta['quantization']['weights'] == 'int8 per-channel' and meta['mean'] == [0] * 3


def test_partial_per_tensor_quantization_keeps_the_most_sensitive_layers(
        trained_digits, tmp_path, monkeypatch):
    cfg, ckpt = trained_digits
    out = tmp_path / 'partial.onnx'
    import mmrepvgg.deploy.quantize as quantize
    sessions = []

    def create_session(model, threads=None, **kwargs):
        sessions.append(Path(model).name if isinstance(model, (str, Path)) else 'proto')
        return real_create_session(model, threads, **kwargs)

    real_create_session = quantize.create_session
    monkeypatch.setattr(quantize, 'create_session', create_session)
    result = quantize_checkpoint(cfg, ckpt, out, QuantSettings('percentile', per_channel=False),
                                 calib_images=16, sensitivity_images=4, keep_float=2,
                                 keep_float_layers=['head.fc'], shape=(32, 32), threads=1,
                                 report=tmp_path / 'r' / 'report.json', progress=False)
    top2 = [r['node'] for r in result['sensitivity']['layers'][:2]]
    kept = result['quantization']['kept_float']
    assert [k['node'] for k in kept[:2]] == top2
    assert {k['module'] for k in kept} >= {'head.fc'}
    summary = qdq_summary(out)
    assert set(summary['float_layers']) == {k['node'] for k in kept}
    assert len(summary['quantized_layers']) == LAYERS - len(kept)
    assert set(weight_scale_shapes(out).values()) == {()}  # per-tensor: scalar scales
    assert (tmp_path / 'r' / 'report.md').is_file()
    assert 'percentile calibration' in report_markdown(result)
    # one fp32 session serves calibration inputs, sensitivity reference and output SQNR (the
    # calibrator reads the input name from the graph); then one per single-layer model
    assert sessions.count('fp32_prepared.onnx') == 1
    assert sessions.count('one_layer.onnx') == LAYERS


def test_cli_refusals(trained_digits, tmp_path, capsys, monkeypatch):
    cfg, ckpt = trained_digits
    cfg_file = tmp_path / 'digits.py'
    cfg.dump(str(cfg_file))
    args = ['--shape', '32', '32', '--no-sensitivity', '--calib-images', '4']

    def refused(out, *extra, early: bool = True) -> str:
        assert quantize_tool.main([str(cfg_file), ckpt, str(out), *args,
                                   *map(str, extra)]) == 1
        err = capsys.readouterr().err
        if early:  # refused before any work: nothing logged
            return one_error_line(err)
        lines = [line for line in err.splitlines() if line.strip()]  # the log lines first
        assert lines[-1].startswith('error: '), lines
        return lines[-1]

    # every output path is checked before the export: the exporter is never reached
    monkeypatch.setattr('mmrepvgg.deploy.quantize.export_onnx', never_called)
    out = tmp_path / 'int8.onnx'
    out.write_bytes(b'keep')
    assert 'exists; pass --force' in refused(out)
    assert out.read_bytes() == b'keep'
    report = tmp_path / 'new.json'
    report.write_text('keep')  # the default report of new.onnx
    assert 'new.json exists' in refused(tmp_path / 'new.onnx')
    # an output that is the checkpoint or the config: refused even with --force
    before = Path(ckpt).read_bytes()
    assert 'is the input' in refused(ckpt, '--force')
    assert 'is the input' in refused(tmp_path / 'x.onnx', '--fp32-out', ckpt, '--force')
    assert 'is the input' in refused(tmp_path / 'x.onnx', '--report', cfg_file, '--force')
    link = tmp_path / 'link.onnx'
    link.symlink_to(ckpt)
    assert 'is the input' in refused(link, '--force')
    assert Path(ckpt).read_bytes() == before and cfg_file.read_text() == cfg.pretty_text
    # two outputs that are one file: the report would overwrite the model
    assert 'are the same file' in refused(tmp_path / 'y.onnx', '--report', tmp_path / 'y.onnx')
    assert 'are the same file' in refused(tmp_path / 'z.json')  # its default report is z.json
    assert 'are the same file' in refused(tmp_path / 'w.onnx', '--fp32-out',
                                          tmp_path / 'w.onnx')
    assert not any((tmp_path / n).exists() for n in ('x.onnx', 'y.onnx', 'z.json', 'w.onnx'))
    # the K most sensitive layers need the ranking --no-sensitivity skips
    assert refused(tmp_path / 'q.onnx', '--keep-float', '1') == (
        'error: --keep-float K keeps the K most sensitive layers: it needs the sensitivity '
        'ranking')
    # counts: K = -1 would keep every layer but one in float
    for bad in (dict(keep_float=-1), dict(calib_images=0), dict(speed_rounds=0)):
        with pytest.raises(ValueError, match=f'{next(iter(bad))} must be an int'):
            quantize_checkpoint(cfg, ckpt, tmp_path / 'k.onnx', **bad)
    for bad, message in ((['--keep-float', '-1'], 'must be at least 0, got -1'),
                         (['--calib-images', '0'], 'must be at least 1, got 0'),
                         (['--threads', '0'], 'must be at least 1, got 0')):
        with pytest.raises(SystemExit) as err:
            quantize_tool.parse_args([str(cfg_file), ckpt, 'c.onnx', *bad])
        assert err.value.code == 2  # argparse's usage error
        assert capsys.readouterr().err.splitlines()[-1].endswith(
            f'error: argument {bad[0]}: {message}')
    monkeypatch.undo()
    # a layer name that does not exist fails after the export, before the calibration
    monkeypatch.setattr('mmrepvgg.deploy.quantize.calibrate', never_called)
    assert 'No weighted layer' in refused(tmp_path / 'b.onnx', '--keep-float-layers',
                                          'backbone.nope', early=False)
    assert not (tmp_path / 'b.onnx').exists()
    monkeypatch.undo()
    with pytest.raises(SystemExit) as err:  # either K most sensitive or named layers
        quantize_tool.parse_args([str(cfg_file), ckpt, 'c.onnx', '--keep-float', '1',
                                  '--keep-float-layers', 'head.fc'])
    assert err.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        'error: argument --keep-float-layers: not allowed with argument --keep-float')


def test_calibration_inputs_are_train_images_as_deployed(trained_digits, tmp_path):
    cfg, ckpt = trained_digits
    report = export_onnx(cfg, ckpt, tmp_path / 'fp32.onnx', shape=(32, 32))
    model = report.model
    got = capture_inputs(cfg, model, create_session(tmp_path / 'fp32.onnx'), 12, progress=False)
    assert len(got) == 12 and all(x.shape == (1, 3, 32, 32) for x in got)

    def preprocessed(split: str) -> set[bytes]:
        dataset = build_dataset(cfg, split)
        with torch.no_grad():
            return {model.data_preprocessor(dict(inputs=[dataset[i]['inputs']],
                                                 data_samples=[dataset[i]['data_samples']]),
                                            False)['inputs'].numpy().astype(np.float32).tobytes()
                    for i in range(len(dataset))}

    train = preprocessed('train')
    assert all(x.tobytes() in train for x in got)  # normalized train images (/255)
    assert len({x.tobytes() for x in got}) == 12  # a random subset, not one image 12 times
    assert float(np.max(got)) <= 1.0


def test_weighted_layers_and_sqnr():
    ref = [torch.ones(2, 3)]
    assert tensor_sqnr_db(ref, [torch.full((2, 3), 1.1)]) == pytest.approx(20.0)
    assert tensor_sqnr_db(ref * 2, [torch.full((2, 3), 1.1)] * 2) == pytest.approx(20.0)
    # one edge-case rule for every SQNR of the package: exact is inf, a zero signal -inf
    assert tensor_sqnr_db(ref, ref) == math.inf == weight_sqnr_db(torch.ones(2, 3), False)
    assert tensor_sqnr_db(torch.zeros(3), torch.ones(3)) == -math.inf
    w = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    assert weight_sqnr_db(w, True) == tensor_sqnr_db(w, quantize_symmetric(w, True))
    with pytest.raises(ValueError, match='2 reference tensors but 1 outputs'):
        tensor_sqnr_db(ref * 2, ref)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node('Conv', ['x', 'w'], ['y'], name='conv'),
         onnx.helper.make_node('Relu', ['y'], ['z'], name='relu'),
         onnx.helper.make_node('MatMul', ['z', 'z'], ['o'], name='act_matmul')],
        'g', [onnx.helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1, 1, 3, 3])],
        [onnx.helper.make_tensor_value_info('o', onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), 'w')])
    assert weighted_layers(onnx.helper.make_model(graph)) == [('conv', 'Conv')]


def test_qarepvgg_model_quantizes(qa_digits_checkpoint, tmp_path):
    """tools/quantize.py on a QARepVGG checkpoint (the digits QA demo config):
    every folded block and the head int8 (per channel), no BN, evaluated on the test split."""
    config, ckpt = qa_digits_checkpoint
    out = tmp_path / 'qa_int8.onnx'
    assert quantize_tool.main([str(config), str(ckpt), str(out), '--shape', '32', '32',
                               '--calib-images', '16', '--sensitivity-images', '2', '--eval',
                               '--max-eval-images', '64', '--threads', '1', '--speed-iters',
                               '1', '--speed-rounds', '1']) == 0
    summary = qdq_summary(out)
    assert len(summary['quantized_layers']) == LAYERS and summary['float_layers'] == []
    assert 'BatchNormalization' not in {n.op_type for n in onnx.load(str(out)).graph.node}
    conv = next(n for n in weight_scale_shapes(out) if 'stem' in n)
    assert weight_scale_shapes(out)[conv] == (48, )
    report = json.loads(out.with_suffix('.json').read_text())
    assert report['quantization']['calibration']['split'] == 'train'
    assert len(report['sensitivity']['layers']) == LAYERS
    ev = report['eval']
    assert ev['images'] == 64 and 0 <= ev['int8']['accuracy/top1'] <= 100
    assert read_metadata(out)['block'] == 'QARepVGGBlock'
