"""The one way to a model: a config's model built, a checkpoint of any layout loaded into it.

:func:`build_model` builds an mmseg or mmpretrain config's model on the CPU in eval mode
without pretrained weights; :func:`load_model` builds it and loads a training-time or
deployed checkpoint strictly (every tool that reads a checkpoint uses it).
:class:`TensorForward` is the one forward wrapper: logits from an image batch.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Mapping, Sequence

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import MODELS, DefaultScope, init_default_scope
from torch import Tensor, nn

from ..checkpoint import (check_state_dict, extract_state_dict, is_deployed_state,
                          load_checkpoint_file, load_state_dict_strict)
from ..models import RepBlockBase, RepVGG, prepare_state_dict
from ..utils.config import config_files, is_config_error, replace_sync_bn, scope_of
from ..utils.errors import CheckpointError, ConfigError, error_message
from .keymaps import SOURCES, convert_keys, detect_block_type, detect_source


def build_model_cfg(model_cfg: Mapping, scope: str) -> nn.Module:
    """Build a model config through mmengine's registry in ``scope`` (training mode)."""
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(copy.deepcopy(dict(model_cfg)))


def build_model(cfg: Config, deploy: bool = False) -> nn.Module:
    """Build ``cfg.model`` on the CPU in eval mode, without loading pretrained weights.

    SyncBN becomes BN (same parameters and buffers; no process group needed).

    Args:
        cfg: An mmseg or mmpretrain config whose model has an mmrepvgg RepVGG backbone.
        deploy: Build the plain (folded) backbone directly.

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


def find_backbone(model: nn.Module) -> RepVGG | None:
    """The first :class:`RepVGG` inside ``model`` (None if there is none)."""
    return next((m for m in model.modules() if isinstance(m, RepVGG)), None)


def count_blocks(model: nn.Module, deployed: bool | None = None) -> int:
    """How many RepVGG blocks (any type) ``model`` has (only folded or unfolded ones if given)."""
    return sum(1 for m in model.modules() if isinstance(m, RepBlockBase)
               and (deployed is None or m.deploy == deployed))


def with_data_preprocessor(cfg: Config) -> Config:
    """A copy of ``cfg`` whose ``model`` carries the top-level ``data_preprocessor``.

    mmpretrain configs keep the preprocessor (mean/std) at the top level and mmengine's
    Runner merges it into the model; a model built from ``cfg.model`` alone would not
    normalize.
    """
    cfg = copy.deepcopy(cfg)
    top = cfg.get('data_preprocessor')
    if top is not None and cfg.model.get('data_preprocessor') is None:
        cfg.model['data_preprocessor'] = copy.deepcopy(top)
    return cfg


def _pair(value: Any) -> tuple[int, int] | None:
    """``(a, a)`` for an int, ``(a, b)`` for a pair of ints, else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, Sequence) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return int(value[0]), int(value[1])
    return None


def input_shape_from_config(cfg: Config) -> tuple[int, int]:
    """The ``(height, width)`` a config's model sees at test time (224 if nothing says).

    In this order: ``crop_size``; ``model.data_preprocessor.size``; the last crop of the
    test pipeline (what the model sees, e.g. 224 after ImageNet's ``ResizeEdge(256)``); the
    last ``Resize``/``ResizeEdge`` of the test pipeline (the test dataloader's, else
    ``test_pipeline`` / ``val_pipeline``).
    """
    dataset = (cfg.get('test_dataloader') or {}).get('dataset') or {}
    pipeline = (dataset.get('pipeline') if isinstance(dataset, Mapping) else None) or \
        cfg.get('test_pipeline') or cfg.get('val_pipeline') or []
    crops, resizes = [], []
    for step in pipeline:
        kind = str(step.get('type', '')).split('.')[-1]
        if 'Crop' in kind:
            crops.append(_pair(step.get('crop_size')))
        elif kind in ('ResizeEdge', 'Resize') and 'scale' in step:
            scale = _pair(step['scale'])  # mmseg/mmcv Resize scale is (w, h)
            resizes.append(scale[::-1] if scale else None)
    candidates = [_pair(cfg.get('crop_size')),
                  _pair((cfg.model.get('data_preprocessor') or {}).get('size')),
                  *crops[::-1], *resizes[::-1]]
    return next((value for value in candidates if value), (224, 224))


def source_files(config: str | os.PathLike | Config,
                 checkpoint: str | os.PathLike) -> list[str | os.PathLike]:
    """The files a conversion or export is made from: the checkpoint, the config file and its
    ``_base_`` chain. The tools never write an output over one of them."""
    filename = config.filename if isinstance(config, Config) else config
    return [checkpoint] + (config_files(filename) if filename else [])


def load_mapped_state(checkpoint: str | os.PathLike, source: str | None = None,
                      trust: bool = False) -> tuple[dict[str, Tensor], str, dict]:
    """Load a checkpoint of any supported layout and rename its keys to mmrepvgg's.

    Args:
        checkpoint: The file.
        source: One of :data:`~mmrepvgg.deploy.keymaps.SOURCES`; None: detect it.
        trust: Allow full unpickling (``--trust-checkpoint``).

    Returns:
        ``(state, source, meta)``: whole-model keys (``backbone.*``, ``head.fc.*``, ...), the
        layout, and the checkpoint's ``meta`` dict (empty if none).
    """
    obj = load_checkpoint_file(checkpoint, trust=trust)
    state = extract_state_dict(obj)
    if source is None:
        source = detect_source(state)
        print_log(f'{checkpoint}: detected {source} layout', logger='current')
    elif source not in SOURCES:
        raise ValueError(f'Unknown source {source!r}; expected one of {SOURCES}')
    meta = obj.get('meta') if isinstance(obj, Mapping) else None
    return convert_keys(state, source), source, dict(meta) if isinstance(meta, Mapping) else {}


def check_block_type(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Refuse a training-time checkpoint of the other block type than ``model``'s.

    Raises:
        CheckpointError: If the keys say RepVGGBlock and the model has QARepVGGBlock, or
            the other way round.
    """
    backbone = find_backbone(model)
    found = detect_block_type(state)
    if backbone is None or found is None or found == backbone.block_type:
        return
    raise CheckpointError(
        f'{source} holds {found} weights but the model is built with {backbone.block_type}; '
        f"set model.backbone.block_cfg=dict(type='{found}') (e.g. --cfg-options "
        f'model.backbone.block_cfg.type={found}) or use a {found} config')


def load_model(cfg: Config, checkpoint: str | os.PathLike, source: str | None = None,
               trust: bool = False) -> tuple[nn.Module, bool, dict]:
    """Build ``cfg``'s model and load a training-time or deployed checkpoint strictly.

    The one way a checkpoint becomes a model here: any
    :data:`~mmrepvgg.deploy.keymaps.SOURCES` layout, the block type checked against the
    config's, the geometry (stride, dilation per layer) checked, every key matched.

    Args:
        cfg: The config (its top-level ``data_preprocessor`` is merged into the model, as
            mmengine's runner does).
        checkpoint: Training-time or deployed (``branch_reparam`` keys) checkpoint.
        source: Layout; None: detect it.
        trust: Allow full unpickling.

    Returns:
        ``(model, deployed, checkpoint_meta)``; the model is in eval mode, folded iff
        ``deployed``; ``checkpoint_meta`` is a copy of the checkpoint's ``meta`` with the
        layout it was read in under ``'source_layout'``.

    Raises:
        ConfigError: If the config's model has no RepVGG backbone (or does not build).
        CheckpointError: If the checkpoint cannot be read or does not fit the model.
    """
    state, source, meta = load_mapped_state(checkpoint, source, trust)
    deployed = is_deployed_state(state)
    name = f'{checkpoint} ({source} layout{", deployed" if deployed else ""})'
    model = build_model(with_data_preprocessor(cfg), deploy=deployed)
    if find_backbone(model) is None:
        raise ConfigError(f'The model of {cfg.filename or "the config"} has no RepVGG blocks '
                          '(no mmrepvgg RepVGG backbone): nothing to fold')
    check_block_type(model, state, name)
    try:
        state = prepare_state_dict(model, state)  # (eval mode: another geometry is refused)
    except CheckpointError:
        check_state_dict(model, state, source=name)  # another model altogether: its keys
        raise                                        # say more than its geometry
    load_state_dict_strict(model, state, source=name)
    print_log(f'Loaded {len(state)} tensors from {name}', logger='current')
    return model.eval(), deployed, dict(meta, source_layout=source)


class TensorForward(nn.Module):
    """Call an OpenMMLab model in ``mode='tensor'`` (a plain module as it is): logits.

    Classifiers return the head's logits; segmentors their decode head's logits (at the
    decode head's resolution, before resizing to the input).

    Args:
        model: An mmpretrain classifier or mmseg segmentor (or a plain module).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, data_samples: Any = None) -> Any:
        if hasattr(self.model, 'data_preprocessor') and hasattr(self.model, 'extract_feat'):
            return self.model(x, data_samples, mode='tensor')
        return self.model(x)


def flatten_outputs(out: Any) -> list[Tensor]:
    """The tensors in a model output (tensor, tuple/list or dict of them), in order."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    return []


def tensor_outputs(model: nn.Module, inputs: Tensor, data_samples: Any = None) -> list[Tensor]:
    """``model``'s output tensors on a preprocessed batch (:class:`TensorForward`, no grad).

    Raises:
        RuntimeError: If the model returned no tensor.
    """
    module = model if isinstance(model, TensorForward) else TensorForward(model)
    with torch.no_grad():
        outputs = flatten_outputs(module(inputs, data_samples))
    if not outputs:
        raise RuntimeError(f'{type(model).__name__} returned no tensors in mode="tensor"')
    return outputs
