"""mmrepvgg_runtime's numpy / OpenCV steps equal the OpenMMLab transforms and torch ops they
replace (the reference implementations are imported here, in the test process only)."""
from __future__ import annotations

import numpy as np
import pytest

from mmrepvgg_runtime import RuntimeSpec, read_image
from mmrepvgg_runtime.image import apply_step, normalize
from mmrepvgg_runtime.logits import label_map, resize_bilinear, softmax

SIZES = [(37, 53), (64, 128), (300, 200), (1, 5), (224, 224), (255, 257)]


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('src, dst', [((9, 17), (72, 136)), ((64, 64), (33, 47)),
                                      ((5, 3), (5, 3)), ((1, 7), (4, 13)), ((8, 8), (1, 1))])
def test_resize_bilinear_is_torch_interpolate(src, dst, align_corners):
    import torch
    import torch.nn.functional as F
    x = np.random.default_rng(0).standard_normal((4, *src)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x)[None], size=dst, mode='bilinear',
                        align_corners=align_corners)[0].numpy()
    np.testing.assert_allclose(resize_bilinear(x, dst, align_corners), ref, rtol=1e-5,
                               atol=1e-5)
    rows = slice(0, max(1, dst[0] // 2))
    np.testing.assert_allclose(resize_bilinear(x, dst, align_corners, rows), ref[:, rows],
                               rtol=1e-5, atol=1e-5)


def test_label_map_is_resize_then_argmax(monkeypatch):
    import torch
    import torch.nn.functional as F
    import mmrepvgg_runtime.logits as logits
    monkeypatch.setattr(logits, 'ROW_CHUNK', 7)  # several chunks
    x = np.random.default_rng(1).standard_normal((19, 13, 26)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x)[None], size=(50, 99), mode='bilinear',
                        align_corners=False)[0].argmax(0).numpy()
    got = label_map(x, (50, 99))
    assert got.dtype == np.uint8 and (got == ref).mean() > 0.999


def test_softmax_is_torch_softmax():
    import torch
    x = np.random.default_rng(2).standard_normal((3, 1000)).astype(np.float32) * 10
    np.testing.assert_allclose(softmax(x), torch.softmax(torch.from_numpy(x), 1).numpy(),
                               rtol=1e-5, atol=1e-7)


def _mm_transform(cfg: dict, img: np.ndarray) -> np.ndarray:
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import TRANSFORMS
    init_default_scope('mmpretrain')
    return TRANSFORMS.build(cfg)(dict(img=img.copy(), img_shape=img.shape[:2],
                                      ori_shape=img.shape[:2]))['img']


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('mm, step', [
    (dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
     dict(type='resize', scale=[2048, 1024], keep_ratio=True)),
    (dict(type='Resize', scale=(64, 48), keep_ratio=True),
     dict(type='resize', scale=[64, 48], keep_ratio=True)),
    (dict(type='Resize', scale=(96, 40), keep_ratio=False, interpolation='nearest'),
     dict(type='resize', scale=[96, 40], keep_ratio=False, interpolation='nearest')),
    (dict(type='ResizeEdge', scale=256, edge='short'),
     dict(type='resize_edge', scale=256, edge='short')),
    (dict(type='ResizeEdge', scale=100, edge='long', interpolation='bicubic'),
     dict(type='resize_edge', scale=100, edge='long', interpolation='bicubic')),
    (dict(type='CenterCrop', crop_size=224), dict(type='center_crop', crop_size=[224, 224])),
    (dict(type='CenterCrop', crop_size=(31, 20)), dict(type='center_crop', crop_size=[31, 20])),
])
def test_pipeline_steps_are_the_openmmlab_transforms(size, mm, step):
    img = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    if step['type'] == 'resize_edge' and min(size) == 1 and step['edge'] == 'short':
        pytest.skip('ResizeEdge of a 1-pixel edge gives a huge image')
    spec_step = RuntimeSpec.from_dict(dict(schema=1, task='segmentation',
                                           pipeline=[step])).pipeline[0]
    np.testing.assert_array_equal(apply_step(img, spec_step), _mm_transform(mm, img))


@pytest.mark.parametrize('ext', ['.png', '.jpg'])
def test_read_image_is_load_image_from_file(tmp_path, ext):
    import cv2
    from mmcv.transforms import LoadImageFromFile
    img = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / f'a{ext}'), img)
    cv2.imwrite(str(tmp_path / f'g{ext}'), img[..., 0])  # grayscale file: 3 channels
    for name in ('a', 'g'):
        ref = LoadImageFromFile()(dict(img_path=str(tmp_path / f'{name}{ext}')))['img']
        np.testing.assert_array_equal(read_image(tmp_path / f'{name}{ext}'), ref)


@pytest.mark.parametrize('bgr_to_rgb', [True, False])
def test_normalize_is_the_data_preprocessors(bgr_to_rgb):
    import torch
    from mmpretrain.models.utils import ClsDataPreprocessor
    from mmseg.models.data_preprocessor import SegDataPreProcessor
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    img = np.random.default_rng(4).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    spec = RuntimeSpec(task='segmentation', mean=tuple(mean), std=tuple(std),
                       bgr_to_rgb=bgr_to_rgb)
    chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    seg = SegDataPreProcessor(mean=mean, std=std, bgr_to_rgb=bgr_to_rgb)
    cls = ClsDataPreprocessor(mean=mean, std=std, to_rgb=bgr_to_rgb)
    got = normalize(img, spec)
    for pre in (seg, cls):
        ref = pre(dict(inputs=[chw], data_samples=None), False)['inputs'][0].numpy()
        np.testing.assert_array_equal(got, ref)


def test_slide_inference_is_mmsegs(tmp_path):
    """The runtime's sliding windows equal mmseg's ``EncoderDecoder.slide_inference`` run
    with the same ONNX network (logits resized to each window as ``predict_by_feat`` does)."""
    import types

    import torch
    from mmseg.models.segmentors import EncoderDecoder
    from mmseg.models.utils import resize

    from mmrepvgg_runtime import OnnxModel
    from tests.runtime import onnx_models as om
    meta = om.seg_meta(pipeline=[], inference=dict(mode='slide', crop_size=[24, 32],
                                                   stride=[16, 20]))
    model = OnnxModel(om.segmentor(tmp_path / 's.onnx', meta, hw=(24, 32), classes=6))
    x = np.random.default_rng(5).standard_normal((3, 61, 90)).astype(np.float32)

    def encode_decode(inputs, metas):
        out = torch.from_numpy(model.run(inputs.numpy()))
        return resize(out, size=metas[0]['img_shape'], mode='bilinear', align_corners=False)

    from mmengine.config import ConfigDict
    fake = types.SimpleNamespace(test_cfg=ConfigDict(crop_size=(24, 32), stride=(16, 20)),
                                 out_channels=6, encode_decode=encode_decode)
    ref = EncoderDecoder.slide_inference(fake, torch.from_numpy(x)[None],
                                         [dict(img_shape=(61, 90))])[0].numpy()
    np.testing.assert_allclose(model.segment_logits(x), ref, rtol=1e-5, atol=1e-5)
