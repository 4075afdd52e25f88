"""The benchmark's ONNX Runtime backends (fp32 and int8) run; without onnxruntime the tool
says so in one line and exits 1 (it used to print an empty table and exit 0)."""
from __future__ import annotations

import sys

import pytest

from projects.benchmark.benchmark import BenchmarkSettings, run_benchmark
from tests.helpers import one_error_line, run_script


@pytest.mark.usefixtures('one_thread')
@pytest.mark.parametrize('backend', ['onnxruntime', 'onnxruntime-int8'])
def test_onnxruntime_backends_time_a_batch(backend, monkeypatch):
    from projects.benchmark import runners
    made = []  # the sessions the benchmark times, and whether they were quantized
    create, quant = runners.create_session, runners.quantize_for_timing
    sessions = []

    def create_and_keep(*a, **k):
        made.append('session')
        sessions.append(create(*a, **k))
        return sessions[-1]
    monkeypatch.setattr(runners, 'create_session', create_and_keep)
    monkeypatch.setattr(runners, 'quantize_for_timing',
                        lambda *a, **k: made.append('int8') or quant(*a, **k))
    # batch 2: the exported graph must take more than its example's batch of 1
    report = run_benchmark(['A0'], BenchmarkSettings(
        batch=2, shape=(32, 32), warmup=1, iters=2, backend=backend, variants=('deploy', )))
    assert report['protocol']['backend'] == backend and not report['skipped']
    assert report['results'][0]['examples_per_s'] > 0
    assert made == (['int8', 'session'] if backend.endswith('int8') else ['session'])
    info = report['results'][0]['onnxruntime']
    assert info['exporter'] == 'dynamo' and info['threads_between_runs'] == 'stop spinning'
    # the timed session does what the report says (sessions timed in turns share the cores)
    opts = sessions[-1].get_session_options()
    assert opts.get_session_config_entry('session.force_spinning_stop') == '1'
    if backend.endswith('int8'):  # the optimized graph was checked: all 22 convs integer
        assert (info['integer_convs'], info['float_convs']) == (22, 0)


@pytest.mark.usefixtures('one_thread')
def test_several_backends_in_one_interleaved_run(monkeypatch):
    from projects.benchmark.report import benchmark_markdown
    from mmrepvgg.utils import timing
    calls = []
    real = timing.time_interleaved

    def spy(runs, *args, **kwargs):
        calls.append([label for label, _ in runs])
        return real(runs, *args, **kwargs)

    monkeypatch.setattr('projects.benchmark.benchmark.time_interleaved', spy)
    report = run_benchmark(['A0'], BenchmarkSettings(
        batch=1, shape=(32, 32), warmup=1, iters=2, rounds=3, backend=['onnxruntime',
        'onnxruntime-int8', 'eager'], variants=('deploy', ), flops=False))
    assert calls == [[f'RepVGG-A0 [deploy] {b}' for b in
                      ('onnxruntime', 'onnxruntime-int8', 'eager')]]  # one run, interleaved
    assert [r['backend'] for r in report['results']] == ['onnxruntime', 'onnxruntime-int8',
                                                          'eager']
    assert report['protocol']['backends'] == ['onnxruntime', 'onnxruntime-int8', 'eager']
    ratios = report['ratios']['backends']['RepVGG-A0/deploy']
    fp32, int8 = report['results'][0]['rounds'], report['results'][1]['rounds']
    paired = sorted(b / a for a, b in zip(fp32, int8))
    assert ratios['onnxruntime-int8'] == dict(vs='onnxruntime', median=paired[1],
                                              min=paired[0], max=paired[2])
    assert set(ratios) == {'onnxruntime-int8', 'eager'}
    text = benchmark_markdown(report)
    assert '| RepVGG-A0 | deploy | onnxruntime-int8 |' in text
    assert 'onnxruntime-int8 / onnxruntime (median, min-max)' in text
    assert '| 22 / 0 |' in text  # integer / float convs the int8 session runs


def test_missing_onnxruntime_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # `import onnxruntime` fails
    assert run_script(monkeypatch, 'tools/benchmark.py', 'A0', '--backend', 'onnxruntime',
                      '--batch', '1', '--shape', '32', '32', '--device', 'cpu') == 1
    captured = capsys.readouterr()  # once: a second read would see nothing
    assert 'onnxruntime is not installed' in one_error_line(captured.err)
    assert '| Model |' not in captured.out
