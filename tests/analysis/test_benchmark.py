"""The benchmark runs end to end on a CPU (2 timed iterations); no timing assertions."""
import json
import runpy
import sys

import pytest
import torch

from mmrepvgg.analysis import benchmark_markdown, run_benchmark
from mmrepvgg.analysis.benchmark import backend_supported, compute_ratios


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """2 shared cores: oversubscribed threads only slow the test down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def report(one_thread):
    return run_benchmark(['A0', 'ResNet-18'], batch=1, shape=(32, 32), warmup=1, iters=2,
                         memory=True)


def test_runs_every_variant_with_memory(report):
    got = [(r['model'], r['variant']) for r in report['results']]
    assert got == [('RepVGG-A0', 'train'), ('RepVGG-A0', 'deploy'), ('ResNet-18', 'fused')]
    for r in report['results']:
        assert r['examples_per_s'] > 0 and len(r['rounds']) == 1
        assert r['peak_memory_mb'] > 0
    assert report['protocol']['batch'] == 1 and not report['protocol']['paper_protocol']
    assert report['device_info']['torch'] and report['device_info']['device'] == 'cpu'
    ratios = report['ratios']
    assert ratios['reference'] == 'RepVGG-A0/deploy'
    assert ratios['vs_reference']['RepVGG-A0/deploy'] == 1
    assert set(ratios['deploy_vs_train']) == {'RepVGG-A0'}
    # Fig. 3: the multi-branch model needs more memory than the plain one
    assert ratios['memory_train_vs_deploy']['RepVGG-A0'] > 1
    json.dumps(report)
    assert 'RepVGG-A0' in benchmark_markdown(report)


def test_ratios_from_one_run():
    results = [dict(model='a', variant='train', examples_per_s=10.0),
               dict(model='a', variant='deploy', examples_per_s=20.0),
               dict(model='b', variant='fused', examples_per_s=5.0)]
    ratios = compute_ratios(results)
    assert ratios['reference'] == 'a/deploy'
    assert ratios['vs_reference'] == {'a/train': 0.5, 'a/deploy': 1.0, 'b/fused': 0.25}
    assert ratios['deploy_vs_train'] == {'a': 2.0}


def test_plot_from_the_json(report, tmp_path):
    from mmrepvgg.analysis import plot_speed_accuracy
    points = plot_speed_accuracy(report, str(tmp_path / 'plot.png'), table=4)
    assert {p['model'] for p in points} == {'RepVGG-A0', 'ResNet-18'}
    assert {p['accuracy'] for p in points} == {72.41, 71.16}
    assert (tmp_path / 'plot.png').stat().st_size > 0


def test_cli_tools(tmp_path, monkeypatch, capsys):
    out = tmp_path / 'bench.json'
    monkeypatch.setattr(sys, 'argv', [
        'benchmark.py', 'A0', '--batch', '1', '--shape', '32', '32', '--warmup', '1',
        '--iters', '2', '--variants', 'deploy', '--device', 'cpu', '--out', str(out)])
    runpy.run_path('tools/benchmark.py', run_name='__main__')
    assert json.loads(out.read_text())['results'][0]['variant'] == 'deploy'
    monkeypatch.setattr(sys, 'argv', ['plot_speed_accuracy.py', str(out), '--out',
                                      str(tmp_path / 'p.png')])
    runpy.run_path('tools/plot_speed_accuracy.py', run_name='__main__')
    assert (tmp_path / 'p.png').exists()
    assert 'saved' in capsys.readouterr().out


def test_reduced_precision_is_probed():
    ok, reason = backend_supported('fp32', 'cpu')
    assert ok and reason == ''
    ok, reason = backend_supported('bf16', 'cpu')
    assert isinstance(ok, bool) and (ok or reason)


def test_onnxruntime_backend_when_installed():
    pytest.importorskip('onnxruntime')
    report = run_benchmark(['A0'], batch=1, shape=(32, 32), warmup=1, iters=2,
                           backend='onnxruntime', variants=('deploy', ))
    assert report['results'][0]['examples_per_s'] > 0


def test_qarepvgg_variants():
    from mmrepvgg.analysis.benchmark import prepare_variants
    qa = prepare_variants('QARepVGG-A0', ('train', 'deploy'), num_classes=10)
    plain = prepare_variants('A0', ('deploy', ), num_classes=10)
    assert [(v.model, v.variant) for v in qa] == [('QARepVGG-A0', 'train'),
                                                   ('QARepVGG-A0', 'deploy')]
    assert qa[1].params == plain[0].params and qa[0].params != qa[1].params
