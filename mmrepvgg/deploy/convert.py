"""Checkpoint conversion: a trained model folded into a deployed checkpoint, other
implementations' ImageNet weights renamed into backbone weights.

The library behind ``tools/deploy_convert.py`` and ``tools/convert_weights.py`` (which own
the paths, ``--force`` and the printing) and the deploy hook. Both functions return the
checkpoint (``{'state_dict', 'meta'}``) to write; the key maps are :mod:`.keymaps`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from torch import Tensor, nn

from ..checkpoint import check_state_dict, load_state_dict_strict
from ..models import ARCH_ZOO, RepVGG
from ..utils.errors import CheckpointError
from ..version import __version__
from .build import build_model, find_backbone
from .keymaps import detect_block_type
from .verify import DEFAULT_TOLERANCE, FoldReport, check_finite_state, fold_and_verify


def plain_value(value: Any) -> Any:
    """``value`` if it is made of plain Python types (loadable weights-only), else None."""
    if value is None:
        return None
    for kind in (bool, int, float, str):  # also turns str subclasses (TorchVersion) plain
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (list, tuple)):
        items = [plain_value(v) for v in value]
        return None if any(i is None for i, v in zip(items, value) if v is not None) else \
            type(value)(items)
    if isinstance(value, Mapping):
        items = {str(k): plain_value(v) for k, v in value.items()}
        return None if any(items[str(k)] is None and v is not None
                           for k, v in value.items()) else items
    return None


def deploy_meta(model: nn.Module, cfg: Config | None, **extra: Any) -> dict:
    """The ``meta`` of a deployed checkpoint: arch, ``deploy=True``, config, versions."""
    backbone = find_backbone(model)
    meta = dict(arch=backbone.arch_name if backbone is not None else None,
                arch_spec=dataclasses.asdict(backbone.arch) if backbone is not None else None,
                block=backbone.block_type if backbone is not None else None,
                deploy=True, mmrepvgg_version=__version__, torch_version=torch.__version__)
    if cfg is not None:
        meta.update(config=cfg.pretty_text, config_file=cfg.filename)
    meta.update(extra)
    return plain_value(meta) or {}


def deployed_checkpoint(model: nn.Module, cfg: Config, inputs: Tensor | None = None,
                        tolerance: float | None = DEFAULT_TOLERANCE,
                        source_meta: Mapping | None = None,
                        **extra: Any) -> tuple[dict, FoldReport]:
    """Fold a loaded training-time model and return its deployed checkpoint.

    The model is folded in place (:func:`~mmrepvgg.deploy.verify.fold_and_verify`, outputs
    compared on ``inputs`` if given), the folded state must be finite and load strictly
    into the config's model built with ``backbone.deploy=True``.

    Args:
        model: The training-time model (:func:`~mmrepvgg.deploy.build.load_model`).
        cfg: Its config (recorded in the meta).
        inputs: A preprocessed batch to verify on (None: fold without verifying).
        tolerance: Max relative output difference (None: report only).
        source_meta: The source checkpoint's meta: its dataset meta and class names are kept.
        **extra: More meta entries (``source``, ``source_checkpoint``).

    Returns:
        ``({'state_dict', 'meta'}, FoldReport)``.

    Raises:
        FoldError, VerificationError: The model cannot be folded, the outputs or weights
            are NaN/Inf, or the folded outputs differ.
    """
    report = fold_and_verify(model, inputs, tolerance=tolerance)
    folded = {k: v.detach().clone() for k, v in model.state_dict().items()}
    check_finite_state(folded)  # the head and neck too, which no fold looks at
    load_state_dict_strict(build_model(cfg, deploy=True), folded, source='the folded model')
    meta = deploy_meta(model, cfg, **extra, max_abs_diff=report.max_abs,
                       max_rel_diff=report.max_rel)
    for key in ('dataset_meta', 'CLASSES', 'PALETTE'):
        if plain_value((source_meta or {}).get(key)) is not None:
            meta[key] = plain_value(source_meta[key])
    return {'state_dict': folded, 'meta': meta}, report


def infer_arch(backbone_state: Mapping[str, Tensor], block: str | None = None) -> str:
    """The :data:`~mmrepvgg.models.ARCH_ZOO` name whose training-time backbone fits exactly.

    Models are built on the ``meta`` device, so this costs no memory.

    Args:
        backbone_state: Backbone keys (no ``backbone.`` prefix).
        block: Block type; None: detected from the keys.

    Raises:
        CheckpointError: If no arch (or several) fits.
    """
    block = block or detect_block_type(backbone_state) or 'RepVGGBlock'
    fits = []
    for name in ARCH_ZOO:
        if block != 'RepVGGBlock' and ARCH_ZOO[name].use_se:
            continue  # only RepVGGBlock takes SE
        with torch.device('meta'):
            backbone = RepVGG(name, out_indices=(0, 1, 2, 3), block_cfg=dict(type=block))
        try:
            check_state_dict(backbone, backbone_state)
        except CheckpointError:
            continue
        fits.append(name)
    if len(fits) != 1:
        found = (f'several fit: {", ".join(fits)}' if fits else
                 f'none of {", ".join(ARCH_ZOO)} fits')
        raise CheckpointError(
            f'Cannot tell the {block} arch from the weights ({found}); pass --arch NAME, or '
            'for another layout --arch \'{"num_blocks": [n1, n2, n3, n4], "width_factors": '
            '[a, a, a, b]}\' (JSON; arch=dict(...) in Python)')
    return fits[0]


def backbone_checkpoint(state: Mapping[str, Tensor], name: str,
                        arch: str | dict | None = None) -> dict:
    """Other implementations' ImageNet weights (mapped keys) -> mmrepvgg backbone weights.

    The result holds ``backbone.*`` keys, not folded (the classifier head is dropped and
    listed in the meta), so a segmentor loads it with ``init_cfg=dict(type='Pretrained',
    checkpoint=OUT, prefix='backbone.')``. The keys are checked strictly against ``arch``
    with the block type the keys show.

    Args:
        state: Training-time weights in mmrepvgg's layout
            (:func:`~mmrepvgg.deploy.build.load_mapped_state`).
        name: The checkpoint, for messages.
        arch: RepVGG arch (name or spec); None: infer it from the shapes.

    Returns:
        ``{'state_dict', 'meta'}``.
    """
    backbone_state = {k[len('backbone.'):]: v for k, v in state.items()
                      if k.startswith('backbone.')}
    dropped = sorted(k for k in state if not k.startswith('backbone.'))
    if not backbone_state:
        raise CheckpointError(f'No backbone keys in {name}; keys look like {sorted(state)[:4]}')
    if dropped:
        print_log(f'Dropping {len(dropped)} non-backbone tensors: {", ".join(dropped[:8])}'
                  + (' ...' if len(dropped) > 8 else ''), logger='current')
    block = detect_block_type(backbone_state) or 'RepVGGBlock'
    if arch is None:
        arch = infer_arch(backbone_state, block)
        print_log(f'Weights fit RepVGG-{arch} ({block})', logger='current')
    with torch.device('meta'):
        backbone = RepVGG(arch, out_indices=(0, 1, 2, 3), block_cfg=dict(type=block))
    check_state_dict(backbone, backbone_state, source=name)
    check_finite_state(backbone_state, 'The backbone weights')
    meta = dict(arch=backbone.arch_name, arch_spec=dataclasses.asdict(backbone.arch),
                block=block, deploy=False, dropped_keys=dropped, mmrepvgg_version=__version__)
    return {'state_dict': {f'backbone.{k}': v.detach().clone().contiguous()
                           for k, v in backbone_state.items()}, 'meta': plain_value(meta)}
