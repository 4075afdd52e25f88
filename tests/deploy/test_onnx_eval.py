"""The exported model, evaluated with the config's pipeline and evaluator, scores as PyTorch."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from demo.datasets import make_tiny_cityscapes, prepare_cityscapes
from mmrepvgg.deploy import build_model, load_model
from mmrepvgg.utils.errors import ExportError
from mmrepvgg.deploy.onnx import create_session
from mmrepvgg.deploy.onnx_eval import (
    OnnxPredictor,
    TorchPredictor,
    build_dataset,
    evaluate_export,
    make_loader,
)
from tests.helpers import randomize_bn_

ROOT = Path(__file__).resolve().parents[2]
SEG = ROOT / 'configs/demo/pspnet_repvgg-small_tiny-cityscapes.py'


@pytest.fixture(scope='module')
def tiny_psp(tmp_path_factory) -> tuple[Config, Path]:
    """``make demo``'s PSPNet (random weights, randomized BNs) on 3 tiny Cityscapes images."""
    tmp = tmp_path_factory.mktemp('psp')
    root = tmp / 'cs'
    make_tiny_cityscapes(root, 2, 3, (64, 128))
    prepare_cityscapes(root)
    cfg = Config.fromfile(SEG)
    cfg.merge_from_dict({f'{k}_dataloader.dataset.data_root': f'{root}/'
                         for k in ('train', 'val', 'test')})
    torch.manual_seed(0)
    model = randomize_bn_(build_model(cfg), seed=2)
    ckpt = tmp / 'psp.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    return cfg, ckpt


def test_tiny_cityscapes_pspnet_onnx_miou_equals_pytorch(tiny_psp, tmp_path, monkeypatch):
    cfg, ckpt = tiny_psp
    # the loaded model is evaluated, then folded and exported (the checkpoint is read once)
    result = evaluate_export(cfg, *load_model(cfg, ckpt, 'mmrepvgg'), progress=False)
    # whole-image inference: the test pipeline resizes the 64x128 images to 128x256, whose
    # 16x32 map PSPNet's 3x3 and 6x6 pools do not divide (exported exactly as gathers)
    assert result['shape'] == [128, 256] and result['metric'] == 'mIoU'
    assert abs(result['diff']) <= 0.1
    assert result['pytorch']['mIoU'] > 0
    # the same pixels, not only the same score
    model, _, _ = load_model(cfg, ckpt)
    session = create_session(result['export'].proto)
    data = next(iter(make_loader(cfg, build_dataset(cfg, 'test'), 'test', [0, 1])))
    expected = [s.pred_sem_seg.data for s in TorchPredictor(model)(data)]
    got = [s.pred_sem_seg.data for s in OnnxPredictor(model, session)(data)]
    assert got[0].shape == (1, 64, 128)  # back at the original image size
    agree = sum((g == e).sum().item() for g, e in zip(got, expected))
    assert agree / sum(e.numel() for e in expected) >= 0.999


def test_slide_inference_feeds_windows_of_the_graph_size(tiny_psp, tmp_path):
    whole_cfg, ckpt = tiny_psp
    cfg = copy.deepcopy(whole_cfg)
    cfg.model.test_cfg = dict(mode='slide', crop_size=(64, 96), stride=(48, 80))
    result = evaluate_export(cfg, *load_model(cfg, ckpt), progress=False)
    assert result['shape'] == [64, 96]
    assert abs(result['diff']) <= 0.1
    # whole-image inference feeds 128x256: a 64x96 graph is a clear error
    model, _, _ = load_model(whole_cfg, ckpt)
    data = next(iter(make_loader(whole_cfg, build_dataset(whole_cfg, 'test'), 'test', [0])))
    with pytest.raises(ExportError, match='export it with --shape 128 256'):
        OnnxPredictor(model, create_session(result['export'].proto))(data)


def test_digits_onnx_top1_equals_pytorch(trained_digits, tmp_path):
    cfg, ckpt = trained_digits
    result = evaluate_export(cfg, *load_model(cfg, ckpt), progress=False)
    assert result['shape'] == [32, 32] and result['metric'] == 'accuracy/top1'
    assert result['pytorch']['accuracy/top1'] > 60
    assert abs(result['diff']) <= 100 / 450 + 1e-6  # at most one of 450 digits flips


class _FakeSession:
    """An ONNX Runtime session stand-in that records the order of its runs."""

    def __init__(self, name: str, log: list, dtype: str = 'tensor(float)') -> None:
        self.name, self.log, self.dtype = name, log, dtype

    def get_inputs(self):
        return [type('Input', (), dict(name='input', type=self.dtype))()]

    def run(self, outputs, feed):
        assert outputs is None and list(feed) == ['input']
        self.log.append((self.name, feed['input'].dtype.name))


def test_time_sessions_interleaves_rounds_through_the_benchmark_loop():
    import numpy as np

    from mmrepvgg.deploy.onnx_eval import time_sessions
    log: list = []
    sessions = {'fp32': _FakeSession('fp32', log), 'fp16': _FakeSession('fp16', log,
                                                                        'tensor(float16)')}
    result = time_sessions(sessions, np.zeros((1, 3, 4, 4)), warmup=2, iters=3, rounds=4)
    assert set(result) == {'fp32', 'fp16'}
    for r in result.values():
        assert r['iters'] == 3 and len(r['rounds']) == 4 and r['ms'] > 0
        assert r['ms_best'] == min(r['rounds'])
    assert ('fp16', 'float16') in log and ('fp32', 'float32') in log  # each its input type
    timed = [name for name, _ in log[4:]]  # after 2 warm-up runs each
    firsts = [timed[i * 6] for i in range(4)]  # 3 runs x 2 sessions per round
    assert firsts == ['fp32', 'fp16', 'fp32', 'fp16']  # the order rotates each round
    sized = time_sessions(sessions, np.zeros((1, 3, 4, 4)), rounds=1, round_seconds=1e-9)
    assert sized['fp32']['iters'] == 3  # the minimum when every run is faster than a round
