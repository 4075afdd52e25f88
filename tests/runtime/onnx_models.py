"""Tiny hand-built ONNX models with runtime metadata, for the runtime's tests (onnx only)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from mmrepvgg_runtime.metadata import RUNTIME_KEY


def _save(graph, path: Path, meta: dict | None, extra: dict | None = None) -> Path:
    import onnx
    from onnx import helper
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8
    if meta is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = RUNTIME_KEY, json.dumps(meta)
    for key, value in (extra or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def segmentor(path: Path, meta: dict | None, classes: int = 5, hw: Sequence | None = None,
              stride: int = 4, seed: int = 0, batch: int | str = 'N',
              extra: dict | None = None) -> Path:
    """``logits = Conv(k=stride, stride=stride)(x)``: (N, classes, H/stride, W/stride).

    Args:
        path: Where to save.
        meta: The runtime metadata (None: none).
        classes: Output channels.
        hw: Static ``(H, W)`` of the input, or None: dynamic.
        stride: Output stride (kernel = stride).
        seed: Seed of the weights.
        batch: Static batch or a name (dynamic).
        extra: More metadata entries (JSON values), as the exporter writes beside the
            runtime's.
    """
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((classes, 3, stride, stride)).astype(np.float32) / stride
    b = rng.standard_normal(classes).astype(np.float32)
    h, wd = (hw if hw is not None else ('H', 'W'))
    inp = helper.make_tensor_value_info('input', TensorProto.FLOAT, [batch, 3, h, wd])
    out = helper.make_tensor_value_info('logits', TensorProto.FLOAT, [batch, classes, 'h', 'w'])
    node = helper.make_node('Conv', ['input', 'w', 'b'], ['logits'], kernel_shape=[stride] * 2,
                            strides=[stride] * 2)
    graph = helper.make_graph([node], 'seg', [inp], [out],
                              [numpy_helper.from_array(w, 'w'), numpy_helper.from_array(b, 'b')])
    return _save(graph, path, meta, extra)


def classifier(path: Path, meta: dict | None, classes: int = 7, hw: Sequence = (32, 32),
               seed: int = 0) -> Path:
    """``logits = Gemm(Flatten(GlobalAveragePool(Conv3x3(x))))``: (N, classes)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    cw = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    gw = rng.standard_normal((classes, 8)).astype(np.float32)
    gb = rng.standard_normal(classes).astype(np.float32)
    inp = helper.make_tensor_value_info('input', TensorProto.FLOAT, ['N', 3, *hw])
    out = helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['N', classes])
    nodes = [helper.make_node('Conv', ['input', 'cw'], ['c'], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node('GlobalAveragePool', ['c'], ['p']),
             helper.make_node('Flatten', ['p'], ['f']),
             helper.make_node('Gemm', ['f', 'gw', 'gb'], ['logits'], transB=1)]
    graph = helper.make_graph(nodes, 'cls', [inp], [out],
                              [numpy_helper.from_array(cw, 'cw'), numpy_helper.from_array(gw, 'gw'),
                               numpy_helper.from_array(gb, 'gb')])
    return _save(graph, path, meta)


def seg_meta(**kw) -> dict:
    """Runtime metadata of a segmentor (whole mode, Cityscapes-like normalization)."""
    meta = dict(schema=1, task='segmentation',
                pipeline=[dict(type='resize', scale=[64, 32], keep_ratio=True)],
                mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                inference=dict(mode='whole'), align_corners=False,
                classes=[f'c{i}' for i in range(5)],
                palette=[[i * 40, 255 - i * 40, 100] for i in range(5)], precision='fp32')
    meta.update(kw)
    return meta


def cls_meta(**kw) -> dict:
    """Runtime metadata of a classifier (ImageNet-like pipeline at 32x32)."""
    meta = dict(schema=1, task='classification',
                pipeline=[dict(type='resize_edge', scale=36, edge='short'),
                          dict(type='center_crop', crop_size=[32, 32])],
                mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                classes=[f'class{i}' for i in range(7)], topk=3, precision='fp32')
    meta.update(kw)
    return meta


def write_images(folder: Path, sizes: Sequence[tuple[int, int]], seed: int = 0,
                 ext: str = '.png') -> list[Path]:
    """Random images of the given ``(H, W)`` sizes, ``img0.png``, ``img1.png``, ..."""
    import cv2
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = cv2.GaussianBlur(img, (5, 5), 2)  # some structure
        path = folder / f'img{i}{ext}'
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths
