"""Every shipped config (not the demos': their demos run them) runs as written (issue 22).

Each config builds its runner, trains one iteration, validates, writes the folded model
verified by its deploy hook, and tests the trained checkpoint folded (``tools/test.py
--deploy``), on tiny data in the real layouts: Cityscapes at 1024x2048 (made and prepared by
``tools/make_tiny_cityscapes.py``) and an ImageNet folder with ``meta/{train,val}.txt``.
tests/configs/run_configs.py says what is overridden. Here the backbone is shrunk; ``make
configs-full`` (``MMREPVGG_CONFIGS_FULL=1``) runs the very same tests at full size.
"""
from __future__ import annotations

import pytest

from tests.configs.conftest import CLS, CONFIGS, SEG, check_run

pytestmark = pytest.mark.slow


def test_every_config_is_run():
    shipped = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob('*.py')
               if '_base_' not in p.parts and p.parts[-2] != 'demo'}
    assert shipped == set(SEG) | set(CLS)


@pytest.mark.parametrize('name', SEG)
def test_segmentation_config_runs_as_written(seg_runs, name):
    result = seg_runs[name]
    check_run(result, repvgg='_r50_' not in name and '_r101_' not in name)
    assert result['preprocessor_size'] == [713, 713]  # the crop (issue 22: was missing)
    assert result['test_mode'] == 'slide'
    assert 'RandomCrop' in result['train_pipeline']
    assert 0 <= result['val']['mIoU'] <= 100
    # the trained model validated, the folded one tested: the same predictions
    assert result['test']['mIoU'] == pytest.approx(result['val']['mIoU'], abs=0.05)
