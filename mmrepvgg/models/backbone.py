"""The RepVGG backbone (paper Table 2) for mmseg and mmpretrain."""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Mapping, Sequence

from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..checkpoint import (extract_state_dict, installed_trust, load_checkpoint_file,
                          load_state_dict_strict)
from ..registry import MODELS, register_alias
from ..utils.errors import CheckpointError
from .arch import ArchLike, PlanLike, arch_name, get_arch, layer_specs, resolve_dilation_plan
from .block import RepBlockBase, build_block, reparameterize
from .loading import LoadSummary, deployed_training_message, prepare_blocks


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@MODELS.register_module()
class RepVGG(BaseModule):
    """RepVGG backbone: a stem and four stages of :class:`RepVGGBlock` (or QARepVGG blocks).

    Paper stage 1 is ``stem``; paper stages 2-5 are ``stage_1`` .. ``stage_4`` and
    ``out_indices`` 0-3 (as mmseg's and mmpretrain's ResNet count). The first layer of each
    stage has stride 2 unless a dilation plan says otherwise.

    Args:
        arch: A name from :data:`mmrepvgg.models.arch.ARCH_ZOO` (``'A0'`` .. ``'B3g4'``,
            ``'D2se'``) or a dict of :class:`~mmrepvgg.models.arch.RepVGGArch` fields.
        in_channels: Input channels.
        out_indices: Which of paper stages 2-5 (0-3) to output, increasing (negative
            indices count from the end).
        dilation_plan: None (classification), ``'full'``, ``'fast'`` or
            ``dict(strides=..., dilations=...)``; see
            :func:`~mmrepvgg.models.arch.resolve_dilation_plan`.
        frozen_stages: Freeze the stem (0) and the first ``frozen_stages`` stages; -1: none.
        norm_cfg: BN config (``dict(type='SyncBN')`` for multi-GPU segmentation).
        act_cfg: Activation config.
        block_cfg: The block type of every layer: ``dict(type='RepVGGBlock')`` (the paper's)
            or ``dict(type='QARepVGGBlock')`` (QARepVGG, quantization-friendly; folds to the
            same plain model). Extra keys are passed to the block.
        norm_eval: Keep the BN layers in eval mode while training (frozen statistics).
        with_cp: Gradient checkpointing in every block.
        deploy: Build the plain (re-parameterized) model directly.
        pretrained: Deprecated path to pretrained weights (mmseg's ``EncoderDecoder`` passes
            it); same as ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``.
        init_cfg: mmengine init config. ``dict(type='Pretrained', checkpoint=PATH,
            prefix='backbone.')`` loads weights strictly and weights-only (see
            :meth:`init_weights`).

    Loading (every loader: ``load_state_dict``, mmengine's ``load_checkpoint``): a deployed
    state switches a training-time model to the deployed form (which then refuses training
    mode), a training-time state is folded into a deployed model on the way in, and a
    state recorded under another geometry (stride, dilation, groups per layer) is refused,
    except as initialization for training; see :mod:`mmrepvgg.models.loading`. One log
    line says what happened.

    Example:
        >>> import torch
        >>> from mmrepvgg.models import RepVGG
        >>> model = RepVGG('A0', out_indices=(0, 1, 2, 3)).eval()
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 64, 64))]
        [(1, 48, 16, 16), (1, 96, 8, 8), (1, 192, 4, 4), (1, 1280, 2, 2)]
    """

    def __init__(self,
                 arch: ArchLike = 'B2',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (3, ),
                 dilation_plan: PlanLike = None,
                 frozen_stages: int = -1,
                 norm_cfg: dict = dict(type='BN', requires_grad=True),
                 act_cfg: dict = dict(type='ReLU'),
                 block_cfg: dict | None = dict(type='RepVGGBlock'),
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 deploy: bool = False,
                 pretrained: str | None = None,
                 init_cfg: dict | list | None = None) -> None:
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('Give pretrained or init_cfg, not both')
            warnings.warn('pretrained is deprecated; use init_cfg=dict(type="Pretrained", '
                          'checkpoint=...)', DeprecationWarning)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg)
        self.arch = get_arch(arch)
        self.arch_name = arch_name(self.arch)
        self.layout = resolve_dilation_plan(dilation_plan, self.arch.num_blocks)
        if not _is_int(in_channels) or in_channels < 1:
            raise ValueError(f'in_channels must be a positive int, got {in_channels!r}')
        if _is_int(out_indices):
            out_indices = (out_indices, )
        given = out_indices
        out_indices = tuple(i % 4 if _is_int(i) and -4 <= i < 4 else i for i in out_indices)
        if not out_indices or any(not _is_int(i) or not 0 <= i < 4 for i in out_indices):
            raise ValueError(f'out_indices must be non-empty ints in [-4, 3] (paper stages '
                             f'2-5), got {given!r}')
        if list(out_indices) != sorted(set(out_indices)):
            # the maps come out in stage order, once each: out_channels must say the same
            raise ValueError(f'out_indices must be increasing and without repeats (the maps '
                             f'come out in stage order), got {given!r}; use '
                             f'{tuple(sorted(set(out_indices)))}')
        if not _is_int(frozen_stages) or not -1 <= frozen_stages <= 4:
            raise ValueError(f'frozen_stages must be an int in [-1, 4], got {frozen_stages!r}')
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        def block(spec):
            return build_block(block_cfg, in_channels=spec.in_channels,
                               out_channels=spec.out_channels, stride=spec.stride,
                               dilation=spec.dilation, groups=spec.groups,
                               use_se=self.arch.use_se, norm_cfg=norm_cfg, act_cfg=act_cfg,
                               deploy=deploy, with_cp=with_cp)

        stem, *stages = layer_specs(self.arch, dilation_plan, in_channels)
        self.stem = block(stem[0])
        self.block_type = type(self.stem).__name__
        self.stage_names = []
        for i, stage in enumerate(stages):
            name = f'stage_{i + 1}'
            self.add_module(name, nn.Sequential(*(block(spec) for spec in stage)))
            self.stage_names.append(name)
        self.out_channels = tuple(self.arch.stage_channels[i] for i in out_indices)
        self._freeze_stages()

    @property
    def deploy(self) -> bool:
        """Whether every block is folded."""
        return all(m.deploy for m in self.modules() if isinstance(m, RepBlockBase))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = self.stem(x)
        outs = []
        for i, name in enumerate(self.stage_names):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def _freeze_stages(self) -> None:
        frozen = ['stem'] + self.stage_names[:self.frozen_stages] if self.frozen_stages >= 0 else []
        for name in frozen:
            module = getattr(self, name)
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def _blocks(self) -> dict[str, RepBlockBase]:
        return {name: m for name, m in self.named_modules() if isinstance(m, RepBlockBase)}

    @property
    def deployed_by_load(self) -> bool:
        """Whether loading a deployed state switched blocks of this model to the deployed form."""
        return any(m.deployed_by_load for m in self._blocks().values())

    def _who(self, prefix: str = '') -> str:
        return f'RepVGG-{self.arch_name}' + (f' ({prefix[:-1]})' if prefix else '')

    def train(self, mode: bool = True) -> 'RepVGG':
        if mode and self.deployed_by_load:
            raise CheckpointError(deployed_training_message(self._who()))
        pending = next((m.geometry_pending for m in self._blocks().values()
                        if m.geometry_pending), None)
        if not mode and pending:  # (checked before any module changes mode)
            raise CheckpointError(pending)
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def _prepare(self, state_dict: dict, prefix: str = '',
                 purpose: str | None = None) -> LoadSummary:
        """:func:`~mmrepvgg.models.loading.prepare_blocks` for every block (``purpose``
        None: ``'train'`` in training mode, else ``'eval'``)."""
        purpose = purpose or ('train' if self.training else 'eval')
        return prepare_blocks(self._blocks(), state_dict, prefix, purpose, self._who(prefix))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict,
                              strict: bool, missing_keys: list, unexpected_keys: list,
                              error_msgs: list) -> None:
        # mmengine's and torch's loaders call this before loading the children, so the
        # blocks can be switched (and the state folded) here
        self._prepare(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def switch_to_deploy(self) -> None:
        """Fold every block, in any mode (the name mmdeploy, mmyolo and timm call; see
        :meth:`RepBlockBase.switch_to_deploy`): the eval-mode model."""
        reparameterize(self, refuse_training=False)

    def init_weights(self) -> None:
        """Initialize, or load pretrained weights for ``init_cfg=dict(type='Pretrained')``.

        Pretrained weights are loaded weights-only and strictly: a missing file, a file that
        is not a plain checkpoint, or any missing, unexpected or mis-shaped key is an error.
        ``prefix`` (e.g. ``'backbone.'``) selects the backbone in a whole-model checkpoint.
        A file that needs full unpickling is loaded only if the tools' ``--trust-checkpoint``
        installed a trusting loader (:func:`mmrepvgg.checkpoint.installed_trust`).
        """
        cfg = self.init_cfg
        if not (isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'):
            super().init_weights()
            return
        path = cfg['checkpoint']
        try:
            obj = load_checkpoint_file(path, trust=installed_trust())
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f'Pretrained RepVGG weights not found: {path}. Convert ImageNet weights with '
                'tools/convert_weights.py (README, "Pretrained weights"), or train from '
                'scratch with --cfg-options model.backbone.init_cfg=None') from err
        state = dict(extract_state_dict(obj, cfg.get('prefix')))
        self._prepare(state, purpose='init')
        load_state_dict_strict(self, state, source=str(path))
        self._is_init = True
        print_log(f'RepVGG-{self.arch_name}: loaded {len(state)} tensors from {path}',
                  logger='current')


def prepare_state_dict(model: nn.Module, state: Mapping[str, Tensor],
                       purpose: str | None = None) -> dict[str, Tensor]:
    """Adapt ``model`` to a state about to be loaded, and return the state as it will load.

    What loading does anyway (:func:`~mmrepvgg.models.loading.prepare_blocks` for every
    RepVGG in ``model``, and the blocks outside one), done first so that
    :func:`mmrepvgg.checkpoint.check_state_dict` can then check the keys strictly: blocks
    are switched to the deployed form for a deployed state, training-time states of
    deployed blocks are folded, and geometries are checked (and their keys removed).

    Args:
        model: The model (changed in place: switched blocks).
        state: Its state dict (not changed).
        purpose: ``'train'``, ``'init'`` or ``'eval'`` (see
            :data:`~mmrepvgg.models.loading.PURPOSES`); None: from the model's mode.

    Returns:
        The adapted copy of ``state`` (with its ``_metadata``, the modules' state versions).
    """
    metadata = getattr(state, '_metadata', None)
    state = OrderedDict(state)
    if metadata is not None:
        state._metadata = metadata  # type: ignore[attr-defined]
    adapted: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, RepVGG):
            module._prepare(state, f'{name}.' if name else '', purpose)
            adapted.update(id(m) for m in module.modules())
    for name, module in model.named_modules():
        if isinstance(module, RepBlockBase) and id(module) not in adapted:
            who = f'{type(module).__name__} {name}'.strip()
            prepare_blocks({'': module}, state, f'{name}.' if name else '',
                                  purpose or ('train' if module.training else 'eval'), who)
    return state


register_alias('mmseg', 'MODELS', RepVGG)
