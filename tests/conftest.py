"""Fixtures shared by several test folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def digits_classifier(tmp_path_factory) -> Path:
    """``make demo-cls`` at 2 epochs (~10 s; ~93% test top-1): its work dir, holding
    ``digits/`` and ``train/last_checkpoint``. Run in a subprocess (mmengine's runner keeps
    global state)."""
    work = tmp_path_factory.mktemp('demo_cls') / 'work'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, 'tools/demo_cls.py', '--work-dir', str(work),
                           '--max-epochs', '2', '--threads', '1', '--min-accuracy', '60'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work
