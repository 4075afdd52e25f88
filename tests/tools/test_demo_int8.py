"""`make demo-int8` (tools/demo_int8.py) on a digits classifier from `make demo-cls`."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_int8_reuses_the_classifier_and_prints_the_summary(digits_classifier, tmp_path):
    work = tmp_path / 'int8'
    proc = subprocess.run(
        [sys.executable, 'tools/demo_int8.py', '--work-dir', str(work), '--cls-work-dir',
         str(digits_classifier), '--no-seg', '--threads', '1'], cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT)), capture_output=True,
        text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert 'reused from make demo-cls' in out
    fp32 = float(re.search(r'^\s*fp32 .* top-1 ([\d.]+)', out, re.M).group(1))
    int8 = float(re.search(r'^\s*int8 .* top-1 ([\d.]+)', out, re.M).group(1))
    assert int8 >= fp32 - 2 and fp32 > 60
    path = re.search(r'^\s*int8 .* (\S+\.onnx)$', out, re.M).group(1)
    assert Path(path).is_file() and Path(path).parent == work
    assert re.search(r'fp32/int8 CPU time ratio [\d.]+x', out)
    sens = re.search(r'most sensitive layers .*: (.*)$', out, re.M).group(1)
    assert len(sens.split(', ')) == 3
    assert (work / 'digits_int8.md').is_file() and (work / 'digits_fp32.onnx').is_file()
