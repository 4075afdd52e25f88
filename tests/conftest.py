"""Fixtures shared by several test folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def one_thread():
    """torch on one thread for a module's tests, then as before (2 shared cores:
    oversubscribed threads only slow the tests down). Use it with
    ``pytestmark = pytest.mark.usefixtures('one_thread')``."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _loggers_write_to_open_streams():
    """mmengine's loggers keep the stream they were created with; one created in a test that
    used ``capsys`` writes to that test's closed buffer afterwards ("--- Logging error ---"
    in the next test's stderr, and a "one-line error" check fails depending on the order the
    tests run in). Point such handlers at the current ``sys.stdout`` before each test."""
    import logging

    from mmengine.logging import MMLogger
    for logger in list(MMLogger._instance_dict.values()):
        for handler in logger.handlers:
            if (type(handler) is logging.StreamHandler
                    and getattr(handler.stream, 'closed', False)):
                with handler.lock:  # not setStream: it flushes the closed stream first
                    handler.stream = sys.stdout
    yield


@pytest.fixture
def pristine_loader():
    """Undo :func:`mmrepvgg.checkpoint.install_mmengine_loader` (mmengine's local loader) and
    the process-wide safe globals after a test."""
    import torch
    from mmengine.runner.checkpoint import CheckpointLoader

    import mmrepvgg.checkpoint as checkpoint
    schemes = dict(CheckpointLoader._schemes)
    safe, trust = torch.serialization.get_safe_globals(), checkpoint.TRUST_CHECKPOINTS
    yield
    checkpoint.TRUST_CHECKPOINTS = trust
    CheckpointLoader._schemes = type(CheckpointLoader._schemes)(schemes)
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(safe)


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


@pytest.fixture
def trained_digits(digits_classifier) -> tuple:
    """The digits demo config (``configs/demo/repvgg-small_digits.py``) reading
    :func:`digits_classifier`'s data, and the path of its trained checkpoint (the one
    ``train/last_checkpoint`` names): ``(Config, str)``. A fresh config for every test."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(ROOT / 'configs/demo/repvgg-small_digits.py'))
    cfg.merge_from_dict({f'{k}_dataloader.dataset.data_root': str(digits_classifier / 'digits')
                         for k in ('train', 'val', 'test')})
    ckpt = (digits_classifier / 'train' / 'last_checkpoint').read_text().strip()
    return cfg, ckpt


@pytest.fixture(scope='session')
def qa_digits_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """The digits QARepVGG demo config (``configs/demo/qarepvgg-small_digits.py``, data in a
    fresh digits folder) as a config file, and a freshly built training-time checkpoint of it
    with randomized BN statistics (untrained: for the tools, not for accuracy)."""
    import torch

    from demo.demos import load_demo_config
    from demo.datasets import make_digits_folder
    from mmrepvgg.deploy import build_model
    from projects.qa_digits.qa_compare import QA_DEMO_CONFIG
    from tests.helpers import randomize_bn_
    root = tmp_path_factory.mktemp('qa_digits')
    make_digits_folder(root / 'digits')
    cfg = load_demo_config(QA_DEMO_CONFIG, root / 'digits')
    config = root / 'qarepvgg-small_digits.py'
    cfg.dump(str(config))
    torch.manual_seed(0)
    model = randomize_bn_(build_model(cfg), seed=1).eval()
    assert model.backbone.block_type == 'QARepVGGBlock'
    checkpoint = root / 'qa_train.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
    return config, checkpoint
