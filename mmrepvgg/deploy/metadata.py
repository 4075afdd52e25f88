"""What an exported model says about itself: task, preprocessing and class names from the
config, written into the ONNX file's ``metadata_props`` (read back by
:func:`mmrepvgg.deploy.ort.read_metadata`)."""
from __future__ import annotations

import json
from typing import Any, Mapping

from mmengine.config import Config
from mmengine.registry import DATASETS
from torch import nn

from .build import find_backbone


def task_of(model: nn.Module) -> str:
    """``'segmentation'`` for an mmseg segmentor, else ``'classification'``."""
    return 'segmentation' if hasattr(model, 'decode_head') else 'classification'


def preprocess_meta(cfg: Config) -> dict:
    """Mean, std and channel order of the model's input, from the config's data preprocessor."""
    pre = dict(cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {})
    bgr_to_rgb = bool(pre.get('bgr_to_rgb', pre.get('to_rgb', False)))
    return dict(mean=_floats(pre.get('mean')), std=_floats(pre.get('std')),
                bgr_to_rgb=bgr_to_rgb)


def _floats(value: Any) -> list[float] | None:
    return None if value is None else [float(v) for v in value]


def class_names(cfg: Config, checkpoint_meta: Mapping | None = None) -> list[str] | None:
    """The class names: from the checkpoint's ``dataset_meta``, the config or the dataset class.

    Returns:
        The names, or None if neither says (e.g. a ``CustomDataset`` image folder).
    """
    meta = dict(checkpoint_meta or {})
    for source in (meta.get('dataset_meta') or {}, meta):
        for key in ('classes', 'CLASSES'):
            if source.get(key):
                return [str(c) for c in source[key]]
    loader = cfg.get('test_dataloader') or cfg.get('val_dataloader') or {}
    dataset = dict(loader.get('dataset') or {})
    while 'dataset' in dataset and 'metainfo' not in dataset:
        dataset = dict(dataset['dataset'])
    if (dataset.get('metainfo') or {}).get('classes'):
        return [str(c) for c in dataset['metainfo']['classes']]
    try:
        with DATASETS.switch_scope_and_registry(cfg.get('default_scope')) as registry:
            cls = registry.get(dataset.get('type'))
        classes = (getattr(cls, 'METAINFO', None) or {}).get('classes')
    except Exception:  # an unknown dataset type: no names
        classes = None
    return [str(c) for c in classes] if classes else None


def backbone_blocks(model: nn.Module) -> int:
    """Blocks of the RepVGG backbone: the stem plus every layer of every stage."""
    backbone = find_backbone(model)
    if backbone is None:
        return 0
    return 1 + sum(len(getattr(backbone, name)) for name in backbone.stage_names)


def set_metadata(proto: Any, meta: Mapping[str, Any]) -> None:
    """Write ``meta`` into the model's ``metadata_props``, every value JSON-encoded."""
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in meta.items():
        text = json.dumps(value)
        if key in existing:
            existing[key].value = text
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, text
