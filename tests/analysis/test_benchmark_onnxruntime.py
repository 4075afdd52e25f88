"""The benchmark's ONNX Runtime backends (fp32 and int8) run; without onnxruntime the tool
says so in one line and exits 1 (it used to print an empty table and exit 0)."""
from __future__ import annotations

import sys

import pytest

from mmrepvgg.analysis import run_benchmark
from tests.helpers import one_error_line, run_script


@pytest.mark.usefixtures('one_thread')
@pytest.mark.parametrize('backend', ['onnxruntime', 'onnxruntime-int8'])
def test_onnxruntime_backends_time_a_batch(backend, monkeypatch):
    from mmrepvgg.analysis import runners
    from mmrepvgg.deploy import onnx_export
    made = []  # the sessions the benchmark times, and whether they were quantized
    create, quant = onnx_export.create_session, runners.quantize_for_timing
    monkeypatch.setattr(onnx_export, 'create_session',
                        lambda *a, **k: made.append('session') or create(*a, **k))
    monkeypatch.setattr(runners, 'quantize_for_timing',
                        lambda *a, **k: made.append('int8') or quant(*a, **k))
    # batch 2: the exported graph must take more than its example's batch of 1
    report = run_benchmark(['A0'], batch=2, shape=(32, 32), warmup=1, iters=2, backend=backend,
                           variants=('deploy', ))
    assert report['protocol']['backend'] == backend and not report['skipped']
    assert report['results'][0]['examples_per_s'] > 0
    assert made == (['int8', 'session'] if backend.endswith('int8') else ['session'])


def test_missing_onnxruntime_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # `import onnxruntime` fails
    assert run_script(monkeypatch, 'tools/benchmark.py', 'A0', '--backend', 'onnxruntime',
                      '--batch', '1', '--shape', '32', '32', '--device', 'cpu') == 1
    captured = capsys.readouterr()  # once: a second read would see nothing
    assert 'onnxruntime is not installed' in one_error_line(captured.err)
    assert '| Model |' not in captured.out
