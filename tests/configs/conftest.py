"""Shared by the every-config tests: the tiny data in the real layouts, the run of
tests/configs/run_configs.py in a subprocess, and the checks of a run's result. The
segmentation and ImageNet configs are tested in two files, so that ``make test``'s two
workers (``--dist loadfile``) run them side by side."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / 'configs'
FULL = os.environ.get('MMREPVGG_CONFIGS_FULL') == '1'
SEG = sorted(p.name for p in CONFIGS.glob('pspnet_*.py'))
CLS = sorted(p.name for p in CONFIGS.glob('*_in1k.py'))


@pytest.fixture(scope='session')
def tiny_cityscapes_1024(tmp_path_factory) -> Path:
    """Two training images and one validation image at Cityscapes' 1024x2048, prepared."""
    root = tmp_path_factory.mktemp('cityscapes_1024') / 'cityscapes'
    proc = subprocess.run(
        [sys.executable, 'tools/make_tiny_cityscapes.py', str(root), '--num-train', '2',
         '--num-val', '1', '--size', '1024', '2048', '--prepare'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.fixture(scope='session')
def tiny_imagenet(tmp_path_factory) -> Path:
    """Two training digits and one validation digit in ImageNet's layout."""
    from demo.datasets import make_tiny_imagenet
    root = tmp_path_factory.mktemp('imagenet') / 'imagenet'
    make_tiny_imagenet(root, num_train=2, num_val=1)
    return root


def run_configs(names: list[str], data: dict, work: Path) -> dict:
    out = work / 'results.json'
    cmd = [sys.executable, 'tests/configs/run_configs.py', *[str(CONFIGS / n) for n in names],
           '--cityscapes', str(data['cityscapes']), '--imagenet', str(data['imagenet']),
           '--work-dir', str(work), '--out', str(out)] + (['--full-size'] if FULL else [])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=None if FULL else 3600)  # a hang guard only
    assert proc.returncode == 0 and out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope='session')
def seg_runs(tiny_cityscapes_1024, tmp_path_factory) -> dict:
    """The segmentation configs, one after the other in one process."""
    data = dict(cityscapes=tiny_cityscapes_1024, imagenet='-')
    return run_configs(SEG, data, tmp_path_factory.mktemp('seg_runs'))


@pytest.fixture(scope='session')
def cls_runs(tiny_imagenet, tmp_path_factory) -> dict:
    """The ImageNet configs, one after the other in one process."""
    data = dict(cityscapes='-', imagenet=tiny_imagenet)
    return run_configs(CLS, data, tmp_path_factory.mktemp('cls_runs'))


def check_run(result: dict, repvgg: bool) -> None:
    assert result['ok'], result.get('error')
    assert result['val'] and result['test'], result
    if repvgg:  # folded after training (verified) and before testing
        assert result['deployed'] and Path(result['deployed']).is_file()
        assert result['fold_max_rel'] is not None and result['fold_max_rel'] < 1e-3
        assert result['blocks_at_test'] > 0
        assert result['folded_at_test'] == result['blocks_at_test']
    else:  # the ResNet baselines: nothing to fold
        assert result['deployed'] is None and result['blocks_at_test'] == 0


