"""`make demo-int8`'s orchestration (demo.demo_int8), with the heavy steps stood in:
the tool itself runs end to end in tests/tools/test_demo_int8.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from demo.demo_int8 import run_int8_demo
from demo.demos import CLS_DEMO_CONFIG, REPO, SEG_DEMO_CONFIG, load_demo_config


@pytest.fixture
def torch_threads():
    """Restore torch's thread count (the demo sets it)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _previous_demo(work: Path, data: str) -> None:
    """What `make demo-cls` / `make demo` leave: the data folder and last_checkpoint."""
    (work / data).mkdir(parents=True)
    ckpt = work / 'train' / 'epoch_1.pth'
    ckpt.parent.mkdir()
    ckpt.write_bytes(b'')
    (work / 'train' / 'last_checkpoint').write_text(str(ckpt))


def test_demo_int8_runs_from_any_folder(tmp_path, monkeypatch, pristine_loader, torch_threads):
    """Started outside the repository, the demo still finds its configs (they are named
    relative to the repository) and points their data at the previous demos' folders."""
    cls_work, seg_work = tmp_path / 'cls', tmp_path / 'seg'
    _previous_demo(cls_work, 'digits')
    _previous_demo(seg_work, 'tiny_cityscapes')
    seen = {}

    def quantize_file(cfg, checkpoint, out, options, **kwargs):
        seen['cls'] = cfg
        speed = dict(fp32_ms=1.0, int8_ms=0.5, fp32_over_int8=2.0, rounds=5, threads=1)
        return dict(int8_onnx=str(out), quantization=dict(kept_float=[]),
                    eval=dict(metric='accuracy/top1', fp32={'accuracy/top1': 90.0},
                              int8={'accuracy/top1': 89.0}, speed=speed))

    def evaluate_export(cfg, checkpoint, out, threads=None):
        seen['seg'] = cfg
        return dict(pytorch={'mIoU': 10.0}, onnx={'mIoU': 10.0}, diff=0.0, shape=[128, 256],
                    out=out)

    monkeypatch.setattr('demo.demo_int8.quantize_file', quantize_file)
    monkeypatch.setattr('demo.demo_int8.export_and_evaluate', evaluate_export)
    monkeypatch.chdir(tmp_path)  # not the repository: no configs/demo here
    result = run_int8_demo('int8', cls_work, seg_work, threads=1)
    assert result.ok and not result.trained_now
    for key, config, data in (('cls', CLS_DEMO_CONFIG, cls_work / 'digits'),
                              ('seg', SEG_DEMO_CONFIG, seg_work / 'tiny_cityscapes')):
        cfg = seen[key]
        assert cfg.filename == str(REPO / config)
        for split in ('train', 'val', 'test'):
            assert cfg[f'{split}_dataloader'].dataset.data_root == str(data)


def test_load_demo_config_prefers_a_file_of_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_demo_config(CLS_DEMO_CONFIG, 'elsewhere')
    assert cfg.filename == str(REPO / CLS_DEMO_CONFIG)
    mine = tmp_path / CLS_DEMO_CONFIG
    mine.parent.mkdir(parents=True)
    mine.write_text((REPO / CLS_DEMO_CONFIG).read_text().replace(
        '../repvgg-a0_in1k.py', str(REPO / 'configs/repvgg-a0_in1k.py')))
    cfg = load_demo_config(CLS_DEMO_CONFIG, 'elsewhere')
    assert Path(cfg.filename).resolve() == mine.resolve()
    assert cfg.test_dataloader.dataset.data_root == 'elsewhere'
