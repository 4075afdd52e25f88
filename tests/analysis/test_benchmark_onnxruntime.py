"""The benchmark's ONNX Runtime backends (fp32 and int8) run; without onnxruntime the tool
says so in one line and exits 1 (it used to print an empty table and exit 0)."""
from __future__ import annotations

import runpy
import sys

import pytest
import torch

from mmrepvgg.analysis import run_benchmark


@pytest.mark.parametrize('backend', ['onnxruntime', 'onnxruntime-int8'])
def test_onnxruntime_backends_time_a_batch(backend):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run_benchmark(['A0'], batch=2, shape=(32, 32), warmup=1, iters=2,
                               backend=backend, variants=('deploy', ))
    finally:
        torch.set_num_threads(threads)
    assert report['protocol']['backend'] == backend and not report['skipped']
    assert report['results'][0]['examples_per_s'] > 0


def test_missing_onnxruntime_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # `import onnxruntime` fails
    monkeypatch.setattr(sys, 'argv', ['benchmark.py', 'A0', '--backend', 'onnxruntime',
                                      '--batch', '1', '--shape', '32', '32', '--device', 'cpu'])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path('tools/benchmark.py', run_name='__main__')
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and 'onnxruntime is not installed' in lines[0]
    assert '| Model |' not in captured.out
