"""Checkpoint conversion: fold a trained model into the plain one, and prove they agree.

Library functions behind ``tools/deploy_convert.py`` (training-time checkpoint -> deployed
checkpoint) and ``tools/convert_weights.py`` (other implementations' ImageNet weights ->
mmrepvgg backbone weights for ``init_cfg``), also used by :class:`RepVGGDeployHook`.
Loading is weights-only, key matching strict, writing atomic.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from torch import Tensor, nn

from ..checkpoint import (check_state_dict, extract_state_dict, is_deployed_state,
                          load_checkpoint_file, load_state_dict_strict, save_checkpoint_atomic)
from ..models import ARCH_ZOO, RepVGG, prepare_state_dict
from ..utils.config import config_files
from ..utils.errors import CheckpointError, ConfigError
from ..utils.fileio import check_output_path
from ..version import __version__
from .build import build_model, find_backbone, input_shape_from_config, with_data_preprocessor
from .keymaps import SOURCES, convert_keys, detect_block_type, detect_source
from .verify import DEFAULT_TOLERANCE, FoldReport, check_finite_state, fold_and_verify


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


def source_files(config: str | os.PathLike | Config,
                 checkpoint: str | os.PathLike) -> list[str | os.PathLike]:
    """The files a conversion or export is made from: the checkpoint, the config file and
    every file of its ``_base_`` chain (:func:`mmrepvgg.utils.config.config_files`). No
    output may be one of them (:func:`mmrepvgg.utils.fileio.check_output_path`'s
    ``inputs``)."""
    filename = config.filename if isinstance(config, Config) else config
    return [checkpoint] + (config_files(filename) if filename else [])


def _build_and_load(cfg: Config, state: Mapping[str, Tensor], name: str,
                    deployed: bool) -> nn.Module:
    """Build ``cfg``'s model (plain if ``deployed``) and load ``state`` into it strictly.

    Raises:
        ConfigError: If the model has no RepVGG backbone (or does not build).
        CheckpointError: If ``state`` holds the other block type's weights
            (:func:`check_block_type`), does not fit key for key, or was trained or folded
            under another geometry (stride, dilation per layer: :mod:`mmrepvgg.models.loading`).
    """
    model = build_model(cfg, deploy=deployed)
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
    return model.eval()


def load_model(cfg: Config, checkpoint: str | os.PathLike, source: str | None = None,
               trust: bool = False) -> tuple[nn.Module, bool, dict]:
    """Build ``cfg``'s model and load a training-time or deployed checkpoint strictly.

    The one way a checkpoint becomes a model here (export, ONNX evaluation, the int8 and
    QARepVGG comparisons): any :data:`~mmrepvgg.deploy.keymaps.SOURCES` layout, the block
    type checked against the config's (:func:`check_block_type`), every key matched.

    Args:
        cfg: The config (its top-level ``data_preprocessor`` is merged into the model, as
            mmengine's runner does: :func:`with_data_preprocessor`).
        checkpoint: Training-time or deployed (``branch_reparam`` keys) checkpoint.
        source: Layout; None: detect it.
        trust: Allow full unpickling.

    Returns:
        ``(model, deployed, checkpoint_meta)``; the model is in eval mode, folded iff
        ``deployed``.

    Raises:
        ConfigError: If the config's model has no RepVGG backbone.
        CheckpointError: If the checkpoint cannot be read or does not fit the model.
    """
    state, source, meta = load_mapped_state(checkpoint, source, trust)
    deployed = is_deployed_state(state)
    model = _build_and_load(with_data_preprocessor(cfg), state,
                            f'{checkpoint} ({source} layout{", deployed" if deployed else ""})',
                            deployed)
    return model, deployed, meta


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


def convert_checkpoint(config: str | Config,
                       checkpoint: str | os.PathLike,
                       out: str | os.PathLike,
                       source: str | None = None,
                       verify: bool = True,
                       force: bool = False,
                       trust: bool = False,
                       input_shape: tuple[int, int] | None = None,
                       tolerance: float | None = DEFAULT_TOLERANCE,
                       seed: int = 0) -> FoldReport:
    """Training-time checkpoint -> deployed checkpoint for ``config``'s model.

    Loads the checkpoint (any :data:`~mmrepvgg.deploy.keymaps.SOURCES` layout) strictly into
    the config's model, folds it, optionally verifies the outputs on a random input of the
    config's size, checks that the result loads strictly into the config's model built with
    ``backbone.deploy=True``, and writes ``{'state_dict', 'meta'}`` atomically.

    Args:
        config: mmseg or mmpretrain config (path or Config).
        checkpoint: Training-time checkpoint.
        out: Destination file.
        source: Checkpoint layout; None: detect it.
        verify: Compare outputs before and after folding.
        force: Overwrite ``out``.
        trust: Allow full unpickling of the checkpoint.
        input_shape: ``(H, W)`` of the verification input (default: from the config).
        tolerance: Max relative output difference (None: report only).
        seed: Seed of the verification input.

    Returns:
        The :class:`FoldReport`.

    Raises:
        FileExistsError, SameFileError, IsADirectoryError, NotADirectoryError: For an output
            path that cannot be written (checked before any work).
        CheckpointError: If the checkpoint cannot be read or does not fit the model.
        FoldError, VerificationError: If the model cannot be folded, the outputs or weights
            are NaN/Inf, or the folded outputs differ (nothing is written).
    """
    sources = source_files(config, checkpoint)
    check_output_path(out, force, sources)
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    state, source, src_meta = load_mapped_state(checkpoint, source, trust)
    if is_deployed_state(state):
        raise CheckpointError(f'{checkpoint} is already deployed (it has branch_reparam '
                              'weights); test it with model.backbone.deploy=True')
    model = _build_and_load(cfg, state, f'{checkpoint} ({source} layout)', deployed=False)
    print_log(f'Loaded {len(state)} tensors from {checkpoint} ({source} layout)',
              logger='current')
    inputs = None
    if verify:
        h, w = input_shape or input_shape_from_config(cfg)
        gen = torch.Generator().manual_seed(seed)
        inputs = torch.randn(1, 3, h, w, generator=gen)
    report = fold_and_verify(model, inputs, tolerance=tolerance)
    print_log(report.summary(), logger='current')
    folded_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    check_finite_state(folded_state)
    load_state_dict_strict(build_model(cfg, deploy=True), folded_state,
                           source='the folded model')
    meta = deploy_meta(model, cfg, source=source, source_checkpoint=str(checkpoint),
                       max_abs_diff=report.max_abs, max_rel_diff=report.max_rel)
    for key in ('dataset_meta', 'CLASSES', 'PALETTE'):
        if plain_value(src_meta.get(key)) is not None:
            meta[key] = plain_value(src_meta[key])
    save_checkpoint_atomic({'state_dict': folded_state, 'meta': meta}, out, force=force,
                           inputs=sources)
    print_log(f'Wrote deployed checkpoint {out}', logger='current')
    return report


def check_block_type(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Refuse a training-time checkpoint of the other block type than ``model``'s.

    Args:
        model: A model with a RepVGG backbone.
        state: Its checkpoint, in mmrepvgg's layout.
        source: The checkpoint's name, for the message.

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


def infer_arch(backbone_state: Mapping[str, Tensor], block: str | None = None) -> str:
    """The :data:`~mmrepvgg.models.ARCH_ZOO` name whose training-time backbone fits exactly.

    Models are built on the ``meta`` device, so this costs no memory.

    Args:
        backbone_state: Backbone keys (no ``backbone.`` prefix).
        block: Block type; None: detected from the keys (:func:`detect_block_type`).

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


def convert_backbone_weights(checkpoint: str | os.PathLike,
                             out: str | os.PathLike,
                             source: str | None = None,
                             arch: str | dict | None = None,
                             force: bool = False,
                             trust: bool = False) -> dict:
    """Other implementations' ImageNet weights -> mmrepvgg backbone weights (not folded).

    The result holds ``backbone.*`` keys (the classifier head is dropped and listed), so a
    segmentor loads it with ``init_cfg=dict(type='Pretrained', checkpoint=OUT,
    prefix='backbone.')``. The backbone keys are checked strictly against ``arch`` with the
    block type the keys show (QARepVGG weights need a ``QARepVGGBlock`` backbone).

    Args:
        checkpoint: Training-time ImageNet weights (official, mmpretrain, timm or ours).
        out: Destination file.
        source: Layout; None: detect it.
        arch: RepVGG arch (name or spec); None: infer it from the shapes.
        force: Overwrite ``out``.
        trust: Allow full unpickling of the checkpoint.

    Returns:
        The written ``meta``.
    """
    check_output_path(out, force, [checkpoint])
    state, source, _ = load_mapped_state(checkpoint, source, trust)
    if is_deployed_state(state):
        raise CheckpointError(f'{checkpoint} holds deployed (folded) weights; a backbone to '
                              'fine-tune needs the training-time (multi-branch) ones')
    backbone_state = {k[len('backbone.'):]: v for k, v in state.items()
                      if k.startswith('backbone.')}
    dropped = sorted(k for k in state if not k.startswith('backbone.'))
    if not backbone_state:
        raise CheckpointError(f'No backbone keys in {checkpoint} ({source} layout); keys look '
                              f'like {sorted(state)[:4]}')
    if dropped:
        print_log(f'Dropping {len(dropped)} non-backbone tensors: {", ".join(dropped[:8])}'
                  + (' ...' if len(dropped) > 8 else ''), logger='current')
    block = detect_block_type(backbone_state) or 'RepVGGBlock'
    if arch is None:
        arch = infer_arch(backbone_state, block)
        print_log(f'Weights fit RepVGG-{arch} ({block})', logger='current')
    with torch.device('meta'):
        backbone = RepVGG(arch, out_indices=(0, 1, 2, 3), block_cfg=dict(type=block))
    check_state_dict(backbone, backbone_state, source=f'{checkpoint} ({source} layout)')
    check_finite_state(backbone_state, 'The backbone weights')
    meta = dict(arch=backbone.arch_name, arch_spec=dataclasses.asdict(backbone.arch),
                block=block,
                deploy=False, source=source, source_checkpoint=str(checkpoint),
                dropped_keys=dropped, mmrepvgg_version=__version__)
    save_checkpoint_atomic(
        {'state_dict': {f'backbone.{k}': v.detach().clone().contiguous()
                        for k, v in backbone_state.items()},
         'meta': plain_value(meta)}, out, force=force, inputs=[checkpoint])
    print_log(f'Wrote {len(backbone_state)} backbone tensors (RepVGG-{backbone.arch_name}, '
              f'{block}) to {out}', logger='current')
    return meta
