"""Cityscapes as people use it (issue 22): ``tools/test.py --submission`` writes the test
server's labelIds PNGs (mmseg's ``CityscapesMetric``, ``format_only``); cityscapesscripts' own
evaluator scores them, and so does mmseg's ``CityscapesMetric``, with the class IoU
``tools/test.py`` reports as mIoU."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SEG = 'configs/demo/pspnet_repvgg-small_tiny-cityscapes.py'
PY = sys.executable


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS='1',
                PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get('PYTHONPATH'),
                                                         str(ROOT)])))


def _run(cmd: list[str], **env: str) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(_env(), **env), capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


@pytest.fixture(scope='module')
def case(tmp_path_factory) -> dict:
    """A tiny prepared Cityscapes (2 val images) and an untrained checkpoint of the demo
    config (BN statistics randomized: its predictions vary over the classes)."""
    import torch
    from mmengine.config import Config

    from mmrepvgg.deploy import build_model
    from tests.helpers import randomize_bn_
    root = tmp_path_factory.mktemp('cs_submission')
    _run([PY, 'tools/make_tiny_cityscapes.py', str(root / 'cs'), '--num-train', '1',
          '--num-val', '2', '--size', '128', '256', '--prepare'])
    torch.manual_seed(0)
    model = randomize_bn_(build_model(Config.fromfile(str(ROOT / SEG))), seed=1)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, root / 'seg.pth')
    data = [f'{k}_dataloader.dataset.data_root={root / "cs"}/' for k in ('train', 'val', 'test')]
    return dict(root=root, data=data, checkpoint=str(root / 'seg.pth'))


def _test(case: dict, work: Path, *extra: str, options: tuple = ()) -> str:
    return _run([PY, 'tools/test.py', SEG, case['checkpoint'], '--work-dir', str(work), *extra,
                 '--cfg-options', *case['data'], *options])


@pytest.fixture(scope='module')
def miou(case, tmp_path_factory) -> float:
    """``tools/test.py``'s mIoU (the config's IoUMetric)."""
    out = _test(case, tmp_path_factory.mktemp('plain'))
    return float(re.findall(r'Iter\(test\).*mIoU: ([\d.]+)', out)[-1])


def test_submission_is_scored_by_the_official_evaluator_as_tools_test(case, miou, tmp_path):
    from cityscapesscripts.helpers.labels import trainId2label
    # the submission: one labelIds PNG per test image, no score (format_only)
    out = _test(case, tmp_path / 'sub', '--submission', 'submission')
    folder = tmp_path / 'sub' / 'submission'
    pngs = sorted(folder.glob('*.png'))
    assert [p.name for p in pngs] == ['frankfurt_000000_000019_leftImg8bit.png',
                                      'frankfurt_000001_000019_leftImg8bit.png']
    label_ids = {label.id for label in trainId2label.values() if label.trainId != 255}
    values = set(np.unique(np.concatenate([np.asarray(Image.open(p)).ravel() for p in pngs])))
    assert values <= label_ids and Image.open(pngs[0]).size == (256, 128)
    # cityscapesscripts' own evaluator on the submission folder, as its README runs it
    export = tmp_path / 'export'
    export.mkdir()
    _run([PY, '-m', 'cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling'],
         CITYSCAPES_DATASET=str(case['root'] / 'cs'), CITYSCAPES_RESULTS=str(folder),
         CITYSCAPES_EXPORT_DIR=str(export))
    official = json.loads((export / 'resultPixelLevelSemanticLabeling.json').read_text())
    assert official['averageScoreClasses'] * 100 == pytest.approx(miou, abs=0.006)
    # a second submission into the same folder needs --force
    proc = subprocess.run([PY, 'tools/test.py', SEG, case['checkpoint'], '--work-dir',
                           str(tmp_path / 'sub'), '--submission', 'submission',
                           '--cfg-options', *case['data']], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and 'pass --force' in proc.stderr.splitlines()[-1]


def test_mmseg_cityscapes_metric_scores_as_the_official_evaluator(case, tmp_path):
    """mmseg's CityscapesMetric (format_only=False) runs cityscapesscripts' evaluator (it
    crashed with numpy 2.4) and reports its category score, as the evaluator's own CLI."""
    out = _test(case, tmp_path / 'eval', '--submission', 'eval',
                options=('test_evaluator.format_only=False', ))
    score = float(re.findall(r'Iter\(test\).*averageScoreCategories: ([\d.]+)', out)[-1])
    export = tmp_path / 'export'
    export.mkdir()
    _run([PY, '-m', 'cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling'],
         CITYSCAPES_DATASET=str(case['root'] / 'cs'),
         CITYSCAPES_RESULTS=str(tmp_path / 'eval' / 'eval'), CITYSCAPES_EXPORT_DIR=str(export))
    official = json.loads((export / 'resultPixelLevelSemanticLabeling.json').read_text())
    assert 0 < official['averageScoreCategories'] <= 1
    assert score == pytest.approx(official['averageScoreCategories'], abs=1e-4)
