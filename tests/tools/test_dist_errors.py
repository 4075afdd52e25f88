"""tools/dist_train.sh and tools/dist_test.sh: a bad input is printed once, as the last line,
not twice under torchrun's report of the failed processes (issue 22)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEG = 'configs/demo/pspnet_repvgg-small_tiny-cityscapes.py'


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_dist_train_prints_a_bad_input_once_and_last(tmp_path):
    missing = tmp_path / 'no_data'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable, PORT='29547')
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', SEG, '2', '--work-dir', str(tmp_path / 'work'),
         '--cfg-options', *[f'{k}_dataloader.dataset.data_root={missing}/'
                            for k in ('train', 'val', 'test')]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = _lines(proc.stderr)
    assert lines[-1].startswith(f'error: Dataset folder not found: {missing}'), proc.stderr
    assert sum(line.startswith('error: ') for line in lines) == 1  # both ranks said it
    assert 'ChildFailedError' not in proc.stderr and 'Traceback' not in proc.stderr


def test_a_crash_keeps_torchruns_report(tmp_path):
    """No error line (a bug, not bad input): torchrun's report and the traceback stay."""
    stub = tmp_path / 'python'
    stub.write_text('#!/bin/sh\necho "Traceback (most recent call last):" >&2\n'
                    'echo "ZeroDivisionError: boom" >&2\n'
                    'echo "E1 torch/distributed/elastic/multiprocessing/api.py:1] failed '
                    '(exitcode: 1) local_rank: 0" >&2\n'
                    'echo "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:" >&2\n'
                    'exit 1\n')
    stub.chmod(0o755)
    proc = subprocess.run(['bash', 'tools/dist_test.sh', 'cfg.py', 'ckpt.pth', '2'], cwd=ROOT,
                          env=dict(os.environ, PYTHON=str(stub)), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert _lines(proc.stderr) == [
        'Traceback (most recent call last):', 'ZeroDivisionError: boom',
        'E1 torch/distributed/elastic/multiprocessing/api.py:1] failed (exitcode: 1) '
        'local_rank: 0', 'torch.distributed.elastic.multiprocessing.errors.ChildFailedError:']
