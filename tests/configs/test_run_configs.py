"""Every shipped config (not the demos': their demos run them) runs as written (issue 22).

Each config builds its runner, trains one iteration, validates, writes the folded model
verified by its deploy hook, and tests the trained checkpoint folded (``tools/test.py
--deploy``), on tiny data in the real layouts: Cityscapes at 1024x2048 (made and prepared by
``tools/make_tiny_cityscapes.py``) and an ImageNet folder with ``meta/{train,val}.txt``.
tests/configs/run_configs.py says what is overridden. Here the backbone is shrunk; ``make
configs-full`` (``MMREPVGG_CONFIGS_FULL=1``) runs the very same tests at full size.
"""
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
pytestmark = pytest.mark.slow


def test_every_config_is_run():
    shipped = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob('*.py')
               if '_base_' not in p.parts and p.parts[-2] != 'demo'}
    assert shipped == set(SEG) | set(CLS)


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


def _run(names: list[str], data: dict, work: Path) -> dict:
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
    return _run(SEG, data, tmp_path_factory.mktemp('seg_runs'))


@pytest.fixture(scope='session')
def cls_runs(tiny_imagenet, tmp_path_factory) -> dict:
    """The ImageNet configs, one after the other in one process."""
    data = dict(cityscapes='-', imagenet=tiny_imagenet)
    return _run(CLS, data, tmp_path_factory.mktemp('cls_runs'))


def _check(result: dict, repvgg: bool) -> None:
    assert result['ok'], result.get('error')
    assert result['val'] and result['test'], result
    if repvgg:  # folded after training (verified) and before testing
        assert result['deployed'] and Path(result['deployed']).is_file()
        assert result['fold_max_rel'] is not None and result['fold_max_rel'] < 1e-3
        assert result['blocks_at_test'] > 0
        assert result['folded_at_test'] == result['blocks_at_test']
    else:  # the ResNet baselines: nothing to fold
        assert result['deployed'] is None and result['blocks_at_test'] == 0


@pytest.mark.parametrize('name', SEG)
def test_segmentation_config_runs_as_written(seg_runs, name):
    result = seg_runs[name]
    _check(result, repvgg='_r50_' not in name and '_r101_' not in name)
    assert result['preprocessor_size'] == [713, 713]  # the crop (issue 22: was missing)
    assert result['test_mode'] == 'slide'
    assert 'RandomCrop' in result['train_pipeline']
    assert 0 <= result['val']['mIoU'] <= 100
    # the trained model validated, the folded one tested: the same predictions
    assert result['test']['mIoU'] == pytest.approx(result['val']['mIoU'], abs=0.05)


@pytest.mark.parametrize('name', CLS)
def test_imagenet_config_runs_as_written(cls_runs, name):
    result = cls_runs[name]
    _check(result, repvgg=True)
    assert result['test']['accuracy/top1'] == result['val']['accuracy/top1']
