"""The one config -> model builder, and what a config says about its model's input.

:func:`build_model` builds an mmseg or mmpretrain config's model on the CPU in eval mode
without pretrained weights; :func:`build_model_cfg` builds a bare model config in a scope
(the analysis tools' named models use it too).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope, init_default_scope
from torch import nn

from ..models import RepBlockBase, RepVGG
from ..utils.config import is_config_error, replace_sync_bn, scope_of
from ..utils.errors import ConfigError, error_message


def build_model_cfg(model_cfg: Mapping, scope: str) -> nn.Module:
    """Build a model config through mmengine's registry in ``scope``.

    Args:
        model_cfg: A model config (``dict(type='EncoderDecoder', ...)``); it is copied.
        scope: ``'mmseg'``, ``'mmpretrain'``, ...: where unscoped type names are looked up.

    Returns:
        The model (in training mode, as built).
    """
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(copy.deepcopy(dict(model_cfg)))


def find_backbone(model: nn.Module) -> RepVGG | None:
    """The first :class:`RepVGG` inside ``model`` (None if there is none)."""
    return next((m for m in model.modules() if isinstance(m, RepVGG)), None)


def count_blocks(model: nn.Module, deployed: bool | None = None) -> int:
    """How many RepVGG blocks (any type) ``model`` has (only folded or unfolded ones if given)."""
    return sum(1 for m in model.modules() if isinstance(m, RepBlockBase)
               and (deployed is None or m.deploy == deployed))


def build_model(cfg: Config, deploy: bool = False) -> nn.Module:
    """Build ``cfg.model`` on the CPU in eval mode, without loading pretrained weights.

    SyncBN becomes BN (same parameters and buffers; no process group needed).

    Args:
        cfg: An mmseg or mmpretrain config whose model has an mmrepvgg RepVGG backbone.
        deploy: Build the plain (folded) backbone directly.

    Returns:
        The model.

    Raises:
        ConfigError: If the model config does not build (an unknown arch or plan, ...).
    """
    model_cfg = copy.deepcopy(cfg.model)
    replace_sync_bn(model_cfg)
    model_cfg.pop('pretrained', None)
    backbone = model_cfg.get('backbone')
    if isinstance(backbone, dict):
        backbone['init_cfg'] = None
        backbone.pop('pretrained', None)
        if deploy:
            backbone['deploy'] = True
    init_default_scope(scope_of(cfg))  # later dataset / pipeline builds look up this scope
    try:
        model = build_model_cfg(model_cfg, scope_of(cfg))
    except (KeyError, ValueError, TypeError) as err:
        if not is_config_error(err):
            raise
        raise ConfigError(f'{cfg.filename or "the config"}: the model does not build: '
                          f'{error_message(err)}') from err
    return model.eval()


def with_data_preprocessor(cfg: Config) -> Config:
    """A copy of ``cfg`` whose ``model`` carries the top-level ``data_preprocessor``.

    mmpretrain configs keep the preprocessor (mean/std) at the top level and mmengine's
    Runner merges it into the model (``model.setdefault('data_preprocessor', ...)``); a model
    built from ``cfg.model`` alone would not normalize.
    """
    cfg = copy.deepcopy(cfg)
    top = cfg.get('data_preprocessor')
    if top is not None and cfg.model.get('data_preprocessor') is None:
        cfg.model['data_preprocessor'] = copy.deepcopy(top)
    return cfg


def input_shape_from_config(cfg: Config) -> tuple[int, int]:
    """The ``(height, width)`` a config's model sees at test time (224 if nothing says).

    In this order: ``crop_size``; ``model.data_preprocessor.size``; the last crop of the
    test pipeline (``CenterCrop``, ...: what the model sees, e.g. 224 after ImageNet's
    ``ResizeEdge(256)``); the last ``Resize``/``ResizeEdge`` of the test pipeline. The
    pipeline is the test dataloader's (``test_pipeline`` / ``val_pipeline`` without one).
    """
    def pair(value: Any) -> tuple[int, int] | None:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, value
        if isinstance(value, Sequence) and len(value) == 2 and all(
                isinstance(v, int) for v in value):
            return int(value[0]), int(value[1])
        return None

    dataset = (cfg.get('test_dataloader') or {}).get('dataset') or {}
    pipeline = (dataset.get('pipeline') if isinstance(dataset, Mapping) else None) or \
        cfg.get('test_pipeline') or cfg.get('val_pipeline') or []
    crops, resizes = [], []
    for step in pipeline:
        kind = str(step.get('type', '')).split('.')[-1]
        if 'Crop' in kind:
            crops.append(pair(step.get('crop_size')))
        elif kind in ('ResizeEdge', 'Resize') and 'scale' in step:
            scale = pair(step['scale'])  # mmseg/mmcv Resize scale is (w, h)
            resizes.append(scale[::-1] if scale else None)
    candidates = [pair(cfg.get('crop_size')),
                  pair((cfg.model.get('data_preprocessor') or {}).get('size')),
                  *crops[::-1], *resizes[::-1]]
    return next((value for value in candidates if value), (224, 224))
