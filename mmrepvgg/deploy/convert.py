"""Checkpoint conversion: fold a trained model into the plain one, and prove they agree.

Library functions behind ``tools/deploy_convert.py`` (training-time checkpoint -> deployed
checkpoint) and ``tools/convert_weights.py`` (other implementations' ImageNet weights ->
mmrepvgg backbone weights for ``init_cfg``), also used by :class:`RepVGGDeployHook`.
Loading is weights-only, key matching strict, writing atomic.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from torch import Tensor, nn

from ..checkpoint import (CheckpointError, check_output_path, check_state_dict,
                          extract_state_dict, is_deployed_state, load_checkpoint_file,
                          load_state_dict_strict, save_checkpoint_atomic)
from ..models import ARCH_ZOO, RepBlockBase, RepVGG, prepare_state_dict, reparameterize
from ..version import __version__
from .keymaps import SOURCES, convert_keys, detect_block_type, detect_source

#: Default bound on the relative output difference (max |diff| / max |reference|) between
#: the training-time and the folded model, in fp32. Exact folding measures 1e-6 - 2e-5 on
#: deep models (tests/models/test_backbone.py); a real error (a BN in training mode, a
#: wrong key) gives 1e-2 or more.
DEFAULT_TOLERANCE = 1e-4


@dataclasses.dataclass
class FoldReport:
    """What folding a model did and how close the outputs stayed.

    Args:
        folded: Blocks folded.
        max_abs: Max absolute output difference (None if not verified).
        max_rel: ``max_abs`` relative to the largest reference output.
        input_shape: The shape of the verification input.
    """

    folded: int
    max_abs: float | None = None
    max_rel: float | None = None
    input_shape: tuple[int, ...] | None = None

    def summary(self) -> str:
        text = f'folded {self.folded} RepVGG blocks'
        if self.max_abs is not None:
            text += (f'; outputs before vs after on input {self.input_shape}: max abs diff '
                     f'{self.max_abs:.3g}, max rel diff {self.max_rel:.3g}')
        return text


# ------------------------------------------------------------------------------ models

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
    from mmengine.registry import MODELS, init_default_scope

    from ..apis.cli import error_message
    from ..apis.config import ConfigError, is_config_error, replace_sync_bn
    model_cfg = copy.deepcopy(cfg.model)
    replace_sync_bn(model_cfg)
    model_cfg.pop('pretrained', None)
    backbone = model_cfg.get('backbone')
    if isinstance(backbone, dict):
        backbone['init_cfg'] = None
        backbone.pop('pretrained', None)
        if deploy:
            backbone['deploy'] = True
    init_default_scope(cfg.get('default_scope') or 'mmengine')
    try:
        model = MODELS.build(model_cfg)
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


def flatten_outputs(out: Any) -> list[Tensor]:
    """The tensors in a model output (tensor, tuple/list or dict of them), in order."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    return []


def tensor_forward(model: nn.Module, inputs: Tensor, data_samples: Any = None) -> list[Tensor]:
    """Run ``model`` on a preprocessed batch: ``mode='tensor'`` for OpenMMLab models."""
    with torch.no_grad():
        try:
            out = model(inputs, data_samples, mode='tensor')
        except TypeError:  # a plain nn.Module (e.g. a bare backbone)
            out = model(inputs)
    outputs = flatten_outputs(out)
    if not outputs:
        raise RuntimeError(f'{type(model).__name__} returned no tensors in mode="tensor"')
    return outputs


class VerificationError(RuntimeError):
    """The folded model is not right: non-finite outputs or weights, or outputs that differ."""


def _count_nonfinite(tensors: Sequence[Tensor]) -> tuple[int, int]:
    bad = sum(int((~torch.isfinite(t)).sum()) for t in tensors if t.is_floating_point())
    return bad, sum(t.numel() for t in tensors)


#: Why a model's own outputs can be NaN or Inf (:func:`compare_outputs`' default).
BROKEN_WEIGHTS = ("the model's weights or BN statistics are broken (a diverged run or a "
                  'damaged checkpoint)')


def compare_outputs(reference: Sequence[Tensor], outputs: Sequence[Tensor],
                    labels: tuple[str, str] = ('before folding', 'after folding'),
                    causes: tuple[str, str] = (BROKEN_WEIGHTS, BROKEN_WEIGHTS)
                    ) -> tuple[float, float]:
    """Max absolute difference and that relative to the largest reference magnitude.

    Args:
        reference: The reference outputs.
        outputs: The outputs compared with them.
        labels: What the two are, as the messages name them (default: the model before
            and after folding; e.g. ``('of PyTorch', 'of ONNX Runtime (fp16)')``).
        causes: Why each could hold NaN or Inf, for the message.

    Raises:
        VerificationError: If the outputs differ in number or shape, or if any output is
            NaN or Inf (a NaN would otherwise vanish from the maximum and report a perfect
            match).
    """
    if len(reference) != len(outputs):
        raise VerificationError(f'{len(reference)} outputs {labels[0]}, {len(outputs)} '
                                f'{labels[1]}')
    for label, cause, tensors in zip(labels, causes, (reference, outputs)):
        bad, total = _count_nonfinite(tensors)
        if bad:
            raise VerificationError(f'{bad} of {total} output values {label} are NaN or Inf: '
                                    f'{cause}')
    max_abs, scale = 0.0, 0.0
    for ref, out in zip(reference, outputs):
        if ref.shape != out.shape:
            raise VerificationError(f'Output shapes differ: {tuple(ref.shape)} {labels[0]}, '
                                    f'{tuple(out.shape)} {labels[1]}')
        max_abs = max(max_abs, (out.double() - ref.double()).abs().max().item())
        scale = max(scale, ref.double().abs().max().item())
    return max_abs, max_abs / max(scale, 1e-12)


def check_finite_state(state: Mapping[str, Tensor], what: str = 'The deployed state dict') -> None:
    """Refuse a state dict holding NaN or Inf (a checkpoint that must never be written).

    Raises:
        VerificationError: Naming how many tensors are affected and the first ones.
    """
    bad = [k for k, v in state.items()
           if isinstance(v, Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        shown = ', '.join(bad[:4]) + (', ...' if len(bad) > 4 else '')
        raise VerificationError(f'{what} has {len(bad)} tensors with NaN or Inf ({shown}); '
                                'nothing was written')


def fold_and_verify(model: nn.Module, inputs: Tensor | None = None, data_samples: Any = None,
                    tolerance: float | None = DEFAULT_TOLERANCE) -> FoldReport:
    """Fold ``model`` in place (eval mode) and, given inputs, compare outputs before/after.

    Args:
        model: The training-time model; it is put in eval mode and folded in place.
        inputs: A preprocessed batch (None: fold without verifying).
        data_samples: Passed to the model with the inputs.
        tolerance: Fail if the relative difference exceeds it (None: only report).

    Returns:
        A :class:`FoldReport`.

    Raises:
        VerificationError: If the outputs differ by more than ``tolerance`` or any is
            NaN/Inf.
        mmrepvgg.models.fusion.FoldError: If a block's weights or BN statistics are
            non-finite or a variance is not positive (nothing is folded then).
    """
    model.eval()
    reference = tensor_forward(model, inputs, data_samples) if inputs is not None else None
    folded = count_blocks(model, deployed=False)
    reparameterize(model)
    report = FoldReport(folded)
    if reference is not None:
        report.max_abs, report.max_rel = compare_outputs(
            reference, tensor_forward(model, inputs, data_samples))
        report.input_shape = tuple(inputs.shape)
        if tolerance is not None and not report.max_rel <= tolerance:
            raise VerificationError(
                f'The folded model does not reproduce the training-time one: max rel diff '
                f'{report.max_rel:.3g} > {tolerance:g} (max abs {report.max_abs:.3g}). Are '
                'all BN running statistics loaded?')
    return report


# ------------------------------------------------------------------------------ checkpoints

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
    """The files a conversion or export is made from (the checkpoint and the config file): no
    output of it may be one of them (:func:`mmrepvgg.checkpoint.check_output_path`'s
    ``inputs``)."""
    if isinstance(config, Config):
        return [checkpoint] + ([config.filename] if config.filename else [])
    return [checkpoint, config]


def _build_and_load(cfg: Config, state: Mapping[str, Tensor], name: str,
                    deployed: bool) -> nn.Module:
    """Build ``cfg``'s model (plain if ``deployed``) and load ``state`` into it strictly.

    Raises:
        ConfigError: If the model has no RepVGG backbone (or does not build).
        CheckpointError: If ``state`` holds the other block type's weights
            (:func:`check_block_type`) or does not fit key for key.
    """
    model = build_model(cfg, deploy=deployed)
    if find_backbone(model) is None:
        from ..apis.config import ConfigError
        raise ConfigError(f'The model of {cfg.filename or "the config"} has no RepVGG blocks '
                          '(no mmrepvgg RepVGG backbone): nothing to fold')
    check_block_type(model, state, name)
    state = prepare_state_dict(model, state)  # (eval mode: another geometry is refused)
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


def _plain(value: Any) -> Any:
    """``value`` if it is made of plain Python types (loadable weights-only), else None."""
    if value is None:
        return None
    for kind in (bool, int, float, str):  # also turns str subclasses (TorchVersion) plain
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return None if any(i is None for i, v in zip(items, value) if v is not None) else \
            type(value)(items)
    if isinstance(value, Mapping):
        items = {str(k): _plain(v) for k, v in value.items()}
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
    return _plain(meta) or {}


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
        if _plain(src_meta.get(key)) is not None:
            meta[key] = _plain(src_meta[key])
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
        raise CheckpointError(f'Cannot tell the {block} arch from the weights ({found}); '
                              'pass --arch')
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
         'meta': _plain(meta)}, out, force=force, inputs=[checkpoint])
    print_log(f'Wrote {len(backbone_state)} backbone tensors (RepVGG-{backbone.arch_name}, '
              f'{block}) to {out}', logger='current')
    return meta
