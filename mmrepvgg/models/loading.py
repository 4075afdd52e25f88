"""Loading either form of a RepVGG state into either form of the model, geometry checked.

Every loader (mmengine's ``load_checkpoint`` under mmseg's and mmpretrain's ``init_model``,
the inferencers, ``load_from``, ``init_cfg``; plain ``load_state_dict``, strict or not)
hands a model its state dict and nothing else, so the model adapts while loading
(:meth:`RepBlockBase._load_from_state_dict`, :meth:`RepVGG._load_from_state_dict`):

* a deployed block state (``branch_reparam.{weight,bias}``) loaded into a training-time
  block switches the block to its deployed form; the model then refuses training mode
  (there are no branches left to train);
* a training-time block state (of either block type) loaded into a deployed block is
  folded on the way in, with the refusals of folding (non-finite values,
  ``running_var + eps <= 0``);
* every block writes the geometry its weights belong to (``rep_geometry``: block type,
  stride, dilation, groups; widths are in the shapes), and a state loaded under another
  geometry is refused, except a training-time state loaded into a training-time model in
  training mode or through ``init_cfg``: that is initialization for training (ImageNet
  weights into a dilated backbone, the paper's protocol). States without the key (older
  files, other implementations' weights) load as before.

This module holds what does not depend on the block classes; it uses the blocks' public
loading protocol (:meth:`~mmrepvgg.models.block.RepBlockBase.branch_state`, ``state_form``,
``fold_state``, ``take_deployed_form``, ``geometry``, ``geometry_pending``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch
from mmengine.logging import print_log
from torch import Tensor

from ..checkpoint import GEOMETRY_KEY
from ..utils.errors import CheckpointError, FoldError

#: Why a state is loaded, which says what a geometry mismatch may do. ``'train'`` (a model
#: in training mode) and ``'init'`` (``init_cfg``) accept it for a training-time state into
#: training-time blocks: initialization for training; ``'eval'`` (a model in eval mode, a
#: test) refuses it. A deployed state, or a training-time state into deployed blocks, under
#: another geometry is refused whatever the purpose.
PURPOSES = ('train', 'init', 'eval')


def deployed_training_message(who: str) -> str:
    """Why a model that received a deployed state refuses training mode (one line)."""
    return (f'{who} was loaded from a deployed (folded) checkpoint: there are no branches '
            'left to train. Train from the training-time checkpoint (iter_N.pth, not '
            'iter_N_deploy.pth); to fine-tune the plain model, build it with deploy=True')


def _runs(values: Sequence[int]) -> str:
    runs: list[list[int]] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return str(runs[0][0]) if len(runs) == 1 else '+'.join(f'{v}x{n}' for v, n in runs)


def describe_geometry(geometries: Mapping[str, Sequence[int]]) -> str:
    """A short text of per-layer geometries: per stage the stride of its first layer and
    its dilations (``'stem s2, stage_1 s2, stage_2 s2, stage_3 s1 d2, stage_4 s1 d4'``;
    ``d1x10+2x4``: ten layers with dilation 1, then four with 2), and groups if any.

    Args:
        geometries: ``{layer name: (block code, stride, dilation, groups)}`` in layer order.
    """
    stages: dict[str, list[Sequence[int]]] = {}
    for name, geometry in geometries.items():
        stages.setdefault(name.split('.')[0] or 'block', []).append(geometry)
    parts = []
    for stage, layers in stages.items():
        text = f'{stage} s{layers[0][1]}'
        dilations = _runs([g[2] for g in layers])
        if dilations != '1':
            text += f' d{dilations}'
        groups = _runs([g[3] for g in layers])
        if groups != '1':
            text += f' g{groups}'
        parts.append(text)
    return ', '.join(parts)


def _stride_dilation(geometry: Sequence[int]) -> str:
    return f'stride {geometry[1]}, dilation {geometry[2]}, groups {geometry[3]}'


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def read_geometry(value: Any, key: str) -> tuple[int, int, int, int]:
    """The ``(block code, stride, dilation, groups)`` stored under ``key``.

    Raises:
        CheckpointError: If it is not an integer tensor of at least 4 values.
    """
    if (not isinstance(value, Tensor) or value.dtype not in _INT_DTYPES or value.dim() != 1
            or value.numel() < 4):
        raise CheckpointError(f'{key} is not a RepVGG block geometry (an integer tensor of '
                              f'4 values): {value!r}'[:300])
    return tuple(int(v) for v in value[:4].tolist())  # type: ignore[return-value]


@dataclasses.dataclass
class LoadSummary:
    """What loading a state into some blocks did.

    Args:
        switched: Blocks switched to the deployed form (a deployed state into a
            training-time block).
        folded: Deployed blocks that received a training-time state, folded on the way in.
        checkpoint_geometry: ``{block: geometry}`` the state records (blocks with a key).
        model_geometry: ``{block: geometry}`` of the model, for every block.
        geometry_changed: Whether a geometry mismatch was accepted (initialization).
        loaded: How many blocks the state holds weights for (of either form).
    """

    switched: list[str] = dataclasses.field(default_factory=list)
    folded: list[str] = dataclasses.field(default_factory=list)
    checkpoint_geometry: dict[str, tuple] = dataclasses.field(default_factory=dict)
    model_geometry: dict[str, tuple] = dataclasses.field(default_factory=dict)
    geometry_changed: bool = False
    loaded: int = 0

    def geometries(self) -> str:
        """``'checkpoint: ...; model: ...'`` (:func:`describe_geometry` of both)."""
        return (f'checkpoint: {describe_geometry(self.checkpoint_geometry)}; model: '
                f'{describe_geometry(self.model_geometry)}')

    def geometry_line(self, who: str, init: bool = False) -> str:
        """The log line of an accepted geometry change (one line, both geometries)."""
        what = ('initialization for training' if init else
                'fine to fine-tune (train) them; evaluating them before training is refused')
        return (f'{who}: loaded weights trained under another geometry ({self.geometries()}): '
                f'{what}')


def _mismatches(summary: LoadSummary) -> list[str]:
    return [name for name, geometry in summary.checkpoint_geometry.items()
            if tuple(geometry[1:]) != tuple(summary.model_geometry[name][1:])]


def geometry_refusal(summary: LoadSummary, who: str, deployed_state: bool) -> str:
    """The one-line refusal of a state loaded under another geometry, naming both."""
    names = _mismatches(summary)
    first = names[0]
    why = ('a folded checkpoint computes what it was folded under: use the config it was '
           'folded with (the same arch, dilation_plan and block_cfg)' if deployed_state else
           'weights evaluated (or folded) under another geometry than they were trained '
           'under compute something else: use the config they were trained with, or '
           'fine-tune them under this one (training accepts them)')
    return (f'{who}: the checkpoint does not fit the model\'s geometry: {len(names)} '
            f'layer(s) differ, first {first or "the block"}: checkpoint '
            f'{_stride_dilation(summary.checkpoint_geometry[first])}, model '
            f'{_stride_dilation(summary.model_geometry[first])} ({summary.geometries()}); '
            f'{why}')


def prepare_blocks(blocks: Mapping[str, Any], state_dict: dict, prefix: str,
                   purpose: str = 'train', owner: str = 'RepVGG') -> LoadSummary:
    """Make ``blocks`` and ``state_dict`` fit each other before the state is copied in.

    Every check is made before anything changes: the geometries (refused as
    :data:`PURPOSES` says), then the folds of training-time states into deployed blocks
    (:class:`~mmrepvgg.models.fusion.FoldError` names the layer). Then deployed states
    switch their training-time blocks, folded kernels replace the training-time keys of
    deployed blocks, and the geometry keys are consumed (removed from ``state_dict``; the
    model's geometry is never overwritten). A block whose state is partial or mixed is left
    alone: the loader reports its keys as usual. Logs one line if blocks were switched or
    folded or a geometry change was accepted.

    Args:
        blocks: ``{name: block}`` (:class:`~mmrepvgg.models.block.RepBlockBase`), names
            relative to ``prefix`` (``''``: the block at ``prefix`` itself).
        state_dict: The state being loaded (changed in place, as loaders allow).
        prefix: The key prefix of the module owning ``blocks``.
        purpose: One of :data:`PURPOSES`.
        owner: The model's name for messages.

    Returns:
        The :class:`LoadSummary`.

    Raises:
        CheckpointError: A geometry mismatch that ``purpose`` refuses, or a deployed state
            for ``purpose='init'`` (initialization needs the branches).
        FoldError: A training-time state that cannot be folded.
    """
    if purpose not in PURPOSES:
        raise ValueError(f'purpose must be one of {PURPOSES}, got {purpose!r}')
    summary, plans = LoadSummary(), []
    for name, block in blocks.items():
        key_prefix = f'{prefix}{name}.' if name else prefix
        summary.model_geometry[name] = block.geometry
        geometry_key = key_prefix + GEOMETRY_KEY
        if geometry_key in state_dict:
            summary.checkpoint_geometry[name] = read_geometry(state_dict[geometry_key],
                                                              geometry_key)
        rel = block.branch_state(state_dict, key_prefix)
        deployed_state = any(k.startswith('branch_reparam.') for k in rel)
        summary.loaded += bool(rel)
        plans.append((name, block, key_prefix, rel, deployed_state))
    if purpose == 'init' and any(p[4] for p in plans):
        raise CheckpointError(f'{owner}: the pretrained weights are deployed (folded, '
                              'branch_reparam keys); initialization for training needs the '
                              'training-time (multi-branch) weights')
    mismatched = set(_mismatches(summary))
    if mismatched:
        deployed_mismatch = any(p[4] for p in plans if p[0] in mismatched)
        into_deployed = any(p[1].deploy for p in plans if p[0] in mismatched)
        if deployed_mismatch or into_deployed or purpose == 'eval':
            raise CheckpointError(geometry_refusal(summary, owner, deployed_mismatch))
        summary.geometry_changed = True
    folds = {}
    for name, block, key_prefix, rel, deployed_state in plans:
        if block.deploy and rel and not deployed_state:
            try:
                folds[name] = block.fold_state(rel)
            except FoldError as err:
                raise FoldError(f'{owner}: {key_prefix[:-1] or "the block"} cannot be folded '
                                f'on loading: {err}') from err
    for name, block, key_prefix, rel, deployed_state in plans:
        state_dict.pop(key_prefix + GEOMETRY_KEY, None)
        if deployed_state and not block.deploy and block.state_form(rel) == 'deployed':
            block.take_deployed_form()
            summary.switched.append(name)
        elif folds.get(name) is not None:
            for key in rel:
                del state_dict[key_prefix + key]
            kernel, bias = folds[name]
            state_dict[key_prefix + 'branch_reparam.weight'] = kernel
            state_dict[key_prefix + 'branch_reparam.bias'] = bias
            summary.folded.append(name)
    _track_pending(summary, plans, purpose, owner)
    return summary


def _track_pending(summary: LoadSummary, plans: list, purpose: str, owner: str) -> None:
    """Log what loading did; mark the blocks that received weights of another geometry in
    training mode (evaluating them is refused until trained) and clear the blocks that
    received a whole state recorded under their own geometry."""
    mismatched = set(_mismatches(summary)) if summary.geometry_changed else set()
    pending = (f'{owner}: the weights loaded were trained under another geometry '
               f'({summary.geometries()}) and the model has not been trained since: '
               'evaluating them is refused; use the config they were trained with, or '
               'fine-tune them first')
    for name, block, _, rel, _ in plans:
        if name in mismatched and purpose == 'train':
            block.geometry_pending = pending
        elif (name in summary.checkpoint_geometry and block.geometry_pending
              and block.state_form(rel)):  # a whole state of its own (recorded) geometry
            block.geometry_pending = None
    lines = []
    if summary.switched:
        lines.append(f'loaded a deployed (folded) state into a training-time model: '
                     f'{len(summary.switched)} blocks switched to the deployed form')
    if summary.folded:
        lines.append(f'loaded a training-time state into a deployed model: '
                     f'{len(summary.folded)} blocks folded on the way in')
    if summary.geometry_changed:
        lines.append(summary.geometry_line(owner, init=purpose == 'init')[len(owner) + 2:])
    if lines:
        print_log(f'{owner}: ' + '; '.join(lines), logger='current')


__all__ = ['PURPOSES', 'LoadSummary', 'prepare_blocks', 'describe_geometry',
           'deployed_training_message', 'geometry_refusal', 'read_geometry']
