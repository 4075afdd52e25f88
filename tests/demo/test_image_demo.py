"""``demo/image_demo.py`` as mmseg and mmpretrain ship it, on the sample images in demo/,
with training-time and deployed checkpoints (issue 22)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SEG = 'configs/demo/pspnet_repvgg-small_tiny-cityscapes.py'
CLS = 'configs/demo/repvgg-small_digits.py'
PY = sys.executable


def _demo(*argv: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    proc = subprocess.run([PY, 'demo/image_demo.py', *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_the_sample_images_exist():
    assert Image.open(ROOT / 'demo/street.png').size == (512, 256)
    assert Image.open(ROOT / 'demo/digit.png').size == (32, 32)


@pytest.fixture(scope='module')
def seg_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """An untrained checkpoint of the seg demo config (BN statistics randomized) and the
    same model folded."""
    import copy

    import torch
    from mmengine.config import Config

    from mmrepvgg.deploy import build_model
    from mmrepvgg.models import reparameterize
    from tests.helpers import randomize_bn_
    root = tmp_path_factory.mktemp('image_demo')
    torch.manual_seed(0)
    model = randomize_bn_(build_model(Config.fromfile(str(ROOT / SEG))), seed=1).eval()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, root / 'trained.pth')
    folded = reparameterize(copy.deepcopy(model))
    torch.save({'state_dict': folded.state_dict(), 'meta': {}}, root / 'deployed.pth')
    return root / 'trained.pth', root / 'deployed.pth'


def test_segmentation_overlay_from_trained_and_deployed(seg_checkpoints, tmp_path):
    lines = []
    for ckpt in seg_checkpoints:
        out = tmp_path / f'{ckpt.stem}.png'
        proc = _demo('demo/street.png', SEG, str(ckpt), '--out-file', str(out))
        assert Image.open(out).size == (512, 256)  # the image, with the classes painted
        lines.append([x for x in proc.stdout.splitlines() if x.startswith('predicted: ')])
    assert lines[0] and lines[0] == lines[1]  # folding changes no prediction
    # never over an existing file without --force
    proc = _demo('demo/street.png', SEG, str(seg_checkpoints[0]), '--out-file',
                 str(tmp_path / 'trained.png'), ok=False)
    assert proc.stderr.strip().splitlines()[-1].startswith('error: ')


def test_classification_prints_class_and_score(digits_classifier, tmp_path):
    train = digits_classifier / 'train'
    trained = (train / 'last_checkpoint').read_text().strip()
    (deployed, ) = train.glob('epoch_*_deploy.pth')
    printed = []
    for ckpt in (trained, str(deployed)):
        proc = _demo('demo/digit.png', CLS, ckpt, '--out-file', str(tmp_path / 'out.png'),
                     '--force')
        # (after mmpretrain's progress bar, which ends without a newline)
        found = re.findall(r'(\d \(label \d\), score [01]\.\d{4})$', proc.stdout, re.M)
        assert len(found) == 1, proc.stdout
        assert Image.open(tmp_path / 'out.png').size[0] >= 32
        printed.append(found[0])
    assert printed[0] == printed[1]
