"""The RepVGG and QARepVGG blocks (paper Sect. 3.2-3.3) and model-wide re-parameterization."""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Mapping

import torch
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import Tensor, nn

from ..checkpoint import GEOMETRY_KEY
from ..registry import MODELS
from ..utils.errors import CheckpointError
from .fusion import (FoldError, all_finite, fold_problem, fuse_branches, nonfinite_problem,
                     on_one_thread)
from .loading import deployed_training_message, prepare_blocks


def _conv_norm(in_channels: int, out_channels: int, kernel_size: int, stride: int,
               padding: int, dilation: int, groups: int, norm_cfg: dict) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                     bias=False)
    return nn.Sequential(OrderedDict(conv=conv, norm=build_norm_layer(norm_cfg, out_channels)[1]))


#: Activations that take no ``inplace`` argument (as mmcv's ``ConvModule`` lists them).
_NO_INPLACE = ('Tanh', 'PReLU', 'Sigmoid', 'HSigmoid', 'Swish', 'GELU', 'Clamp', 'Clip')


def _build_act(act_cfg: dict | None) -> nn.Module:
    """The block's activation, in place unless the config says otherwise.

    In place is safe here: the activation's input is the branch sum (or the folded conv's
    output), a fresh tensor that nothing else reads. It saves one feature map's worth of
    memory traffic per block, as timm's and mmcv's ``ConvModule`` defaults do.
    """
    if not act_cfg:
        return nn.Identity()
    act_cfg = dict(act_cfg)
    if act_cfg['type'] not in _NO_INPLACE:
        act_cfg.setdefault('inplace', True)
    return build_activation_layer(act_cfg)


class SEModule(nn.Module):
    """Squeeze-and-excitation as in the official RepVGG-D2se, pooled over any input size.

    Args:
        channels: Input and output channels.
        reduction: Channel reduction of the bottleneck.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.down = nn.Conv2d(channels, hidden, 1, bias=True)
        self.up = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        w = x.mean(dim=(2, 3), keepdim=True)  # global pooling: also right for non-square inputs
        w = torch.sigmoid(self.up(torch.relu(self.down(w))))
        return x * w


#: Every block type by name, filled by declaring one (see :class:`RepBlockBase`): what
#: ``RepVGG(block_cfg=...)`` accepts and what a deployed block folds on loading.
BLOCK_TYPES: dict[str, type['RepBlockBase']] = {}


class RepBlockBase(BaseModule):
    """What every re-parameterizable block shares: arguments, forward, folding, deploy form.

    A block is ``act(se(body(x)))`` during training, where ``body`` is the multi-branch
    sum that a subclass defines, and ``act(se(branch_reparam(x)))`` once folded:
    ``branch_reparam`` is one 3x3 conv with bias (keys ``branch_reparam.{weight,bias}``),
    the same for every block type, so deployed checkpoints of the same arch are
    interchangeable.

    A block type is declared by one class, ``class MyBlock(RepBlockBase, code=3)``: it
    builds its branches (:meth:`_build_branches`, named in :attr:`_branch_names`), sums them
    (:meth:`_body`), lists its BNs (:meth:`_norms`) and says how they fold (:meth:`_fuse`,
    through :func:`mmrepvgg.models.fusion.fuse_branches`). ``code`` is the block type's
    number in the geometry a state records; declaring the class registers it in
    :data:`BLOCK_TYPES` and mmrepvgg's ``MODELS``. A subclass that defines no branches of
    its own inherits its parent's code. Forward, folding, the deployed form and loading
    either form are shared.

    The 1x1 branch has the same stride and groups as the 3x3 one and padding 0; with
    dilation ``d`` the 3x3 conv pads by ``d`` so the 1x1 kernel stays on its centre tap. The
    identity branch exists only when input and output channels match and the stride is 1.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the 3x3 and 1x1 convs.
        dilation: Dilation of the 3x3 conv (its padding equals it).
        groups: Groups of the 3x3 and 1x1 convs.
        use_se: Apply squeeze-and-excitation after the sum, before the activation (D2se).
        norm_cfg: Config of the BN layers (``BN`` or ``SyncBN``).
        act_cfg: Config of the activation; None for none.
        deploy: Build the folded block directly.
        with_cp: Use gradient checkpointing for the branches (saves memory when training).
        init_cfg: mmengine init config.
    """

    #: The training-time submodules that folding replaces by ``branch_reparam``.
    _branch_names: tuple[str, ...] = ()
    #: Why the block refuses ``use_se`` (None: it takes SE and still folds exactly).
    no_se_reason: str | None = None
    #: The block type's number in a geometry (set by the class declaration).
    block_code: int | None = None

    def __init_subclass__(cls, code: int | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if code is None:
            if cls.block_code is None or '_fuse' in vars(cls):
                raise TypeError(f'{cls.__name__} is a new block type: declare its geometry '
                                f'code, class {cls.__name__}(RepBlockBase, code=N), N not in '
                                f'{sorted(c.block_code for c in BLOCK_TYPES.values())}')
            return  # a variant of its parent's block type
        other = next((c for c in BLOCK_TYPES.values() if c.block_code == code
                      and c.__name__ != cls.__name__), None)
        if not isinstance(code, int) or code < 1 or other is not None:
            raise TypeError(f'{cls.__name__}: code must be a positive int not used by another '
                            f'block type, got {code!r}' + (f' ({other.__name__})' if other else ''))
        cls.block_code = code
        MODELS.register_module(module=cls, force=cls.__name__ in BLOCK_TYPES)
        BLOCK_TYPES[cls.__name__] = cls

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 stride: int = 1,
                 dilation: int = 1,
                 groups: int = 1,
                 use_se: bool = False,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict | None = dict(type='ReLU'),
                 deploy: bool = False,
                 with_cp: bool = False,
                 init_cfg: dict | list | None = None) -> None:
        super().__init__(init_cfg)
        if use_se and self.no_se_reason:
            raise ValueError(f'{type(self).__name__} does not support use_se (arch D2se): '
                             f'{self.no_se_reason}; use RepVGGBlock for D2se')
        for name, value in (('stride', stride), ('dilation', dilation), ('groups', groups)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive int, got {value!r}')
        if in_channels % groups or out_channels % groups:
            raise ValueError(f'groups={groups} must divide in_channels={in_channels} and '
                             f'out_channels={out_channels}')
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.deploy = deploy
        self.with_cp = with_cp
        self.norm_cfg = dict(norm_cfg)  # (a training-time state loaded later folds with it)
        #: Whether loading a deployed state switched this block to the deployed form (it
        #: then refuses training mode: there are no branches left to train).
        self.deployed_by_load = False
        #: Why evaluating is refused: weights of another geometry were loaded in training
        #: mode and not trained since (cleared by training mode or by its own weights).
        self.geometry_pending: str | None = None
        if deploy:
            self.branch_reparam = nn.Conv2d(in_channels, out_channels, 3, stride, dilation,
                                            dilation, groups, bias=True)
        else:
            self._build_branches(norm_cfg)
        self.se = SEModule(out_channels) if use_se else None
        self.act = _build_act(act_cfg)
        # :attr:`geometry` under the name of its state-dict key, so that key-to-attribute
        # mappers (torch.distributed.checkpoint) find the key; a buffer, so that a model
        # whose BNs all went on loading a deployed state still has one (DDP asserts on a
        # model without buffers). Not persistent: saving and loading it is done below.
        self.register_buffer(GEOMETRY_KEY, torch.tensor(self.geometry), persistent=False)

    @property
    def geometry(self) -> tuple[int, int, int, int]:
        """``(block type code, stride, dilation, groups)``: what a state dict records under
        :data:`~mmrepvgg.checkpoint.GEOMETRY_KEY` (see :func:`~.loading.prepare_blocks`)."""
        return (self.block_code, self.stride, self.dilation, self.groups)

    @property
    def has_identity(self) -> bool:
        """Whether the training-time block has an identity branch (in == out, stride 1)."""
        return self.in_channels == self.out_channels and self.stride == 1

    # ------------------------------------------------------------ what a block type defines

    def _build_branches(self, norm_cfg: dict) -> None:
        """Create the training-time submodules named in :attr:`_branch_names`."""
        raise NotImplementedError

    def _body(self, x: Tensor) -> Tensor:
        """The training-time multi-branch output, before SE and the activation."""
        raise NotImplementedError

    def _norms(self) -> list[nn.Module]:
        """The training-time BN layers that folding consumes."""
        raise NotImplementedError

    def _fuse(self) -> tuple[Tensor, Tensor]:
        """The folded 3x3 kernel and bias (:func:`~mmrepvgg.models.fusion.fuse_branches`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------- shared

    def _branches(self, x: Tensor) -> Tensor:
        out = self.branch_reparam(x) if self.deploy else self._body(x)
        return self.se(out) if self.se is not None else out

    def forward(self, x: Tensor) -> Tensor:
        if self.deployed_by_load and self.training and torch.is_grad_enabled():
            # training what was loaded folded (DDP would fail on the replaced parameters)
            raise CheckpointError(deployed_training_message(type(self).__name__))
        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(self._branches, x, use_reentrant=False)
        else:
            out = self._branches(x)
        return self.act(out)

    def train(self, mode: bool = True) -> 'RepBlockBase':
        if mode and self.deployed_by_load:
            raise CheckpointError(deployed_training_message(type(self).__name__))
        if not mode and self.geometry_pending:
            raise CheckpointError(self.geometry_pending)
        if mode:
            self.geometry_pending = None  # trained from here: the paper's fine-tuning
        return super().train(mode)

    def norms(self) -> list[nn.Module]:
        """The BN layers that folding would consume (empty once deployed)."""
        return [] if self.deploy else self._norms()

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The 3x3 kernel and bias of the equivalent plain conv; the block is not changed.

        Uses the BN running statistics (see :mod:`mmrepvgg.models.fusion`).

        Raises:
            FoldError: If a kernel or BN of the block is broken (NaN/Inf,
                ``running_var + eps <= 0``).
        """
        if self.deploy:
            return self.branch_reparam.weight.detach(), self.branch_reparam.bias.detach()
        with torch.no_grad():
            return self._fuse()

    def switch_to_deploy(self) -> None:
        """Fold the branches into one 3x3 conv in place (idempotent), in any mode.

        The name other libraries' deploy hooks call (mmyolo's ``SwitchToDeployHook``,
        mmdeploy, timm's ``reparameterize_model``), often before ``model.eval()``: the
        folded block is what the block computes in eval mode, with the BN running
        statistics (a BN in training mode normalizes with batch statistics, which no conv
        can). To fold only a model whose outputs stay the same, use
        :func:`reparameterize`, which refuses BNs in training mode.

        Raises:
            FoldError: If a kernel or BN of the block is broken.
        """
        if not self.deploy:
            self._take_folded(*self.equivalent_kernel_bias())

    def _take_folded(self, kernel: Tensor, bias: Tensor) -> None:
        """Replace the branches by ``branch_reparam`` holding ``kernel`` and ``bias``."""
        requires_grad = self.branch_3x3.conv.weight.requires_grad  # frozen stays frozen
        with torch.device('meta'):  # no random init of weights that are replaced at once
            reparam = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride,
                                self.dilation, self.dilation, self.groups, bias=True)
        reparam.weight, reparam.bias = (
            t if isinstance(t, nn.Parameter) else
            nn.Parameter(t.detach(), requires_grad=requires_grad) for t in (kernel, bias))
        reparam.train(self.training)
        for name in self._branch_names:
            delattr(self, name)
        self.branch_reparam = reparam
        self.deploy = True

    # ---------------------------------------- loading either form (see .loading, the caller)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + GEOMETRY_KEY] = torch.tensor(self.geometry)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict,
                              strict: bool, missing_keys: list, unexpected_keys: list,
                              error_msgs: list) -> None:
        # A block inside a RepVGG backbone was prepared by it already (no geometry key and
        # the form of the block left); a block on its own is prepared here.
        prepare_blocks({'': self}, state_dict, prefix,
                       purpose='train' if self.training else 'eval',
                       owner=f'{type(self).__name__} {prefix[:-1]}'.strip())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def branch_state(self, state_dict: Mapping[str, Tensor],
                     key_prefix: str) -> dict[str, Tensor]:
        """The entries of ``state_dict`` under ``key_prefix`` that belong to the branches of
        either form of any block type, keys relative to the block (SE and the geometry key
        are not among them)."""
        names = {'branch_reparam'}.union(*(c._branch_names for c in BLOCK_TYPES.values()),
                                         self._branch_names)
        return {key[len(key_prefix):]: value for key, value in state_dict.items()
                if key.startswith(key_prefix)
                and key[len(key_prefix):].split('.', 1)[0] in names}

    def state_form(self, rel: Mapping[str, Tensor]) -> str | None:
        """``'deployed'`` or ``'training'`` if ``rel`` (:meth:`branch_state`) is a whole
        state of that form that fits this block, else None (partial, mixed, foreign)."""
        if any(k.startswith('branch_reparam.') for k in rel):
            shapes = {k: tuple(v.shape) for k, v in rel.items()}
            return 'deployed' if shapes == {
                'branch_reparam.weight': (self.out_channels, self.in_channels // self.groups,
                                          3, 3),
                'branch_reparam.bias': (self.out_channels, )} else None
        return 'training' if self._branches_of(rel) is not None else None

    def _branches_of(self, rel: Mapping[str, Tensor]) -> RepBlockBase | None:
        """A meta block of the block type whose training-time keys and shapes ``rel`` holds."""
        for cls in dict.fromkeys((type(self), *BLOCK_TYPES.values())):
            with torch.device('meta'):
                probe = cls(self.in_channels, self.out_channels, self.stride, self.dilation,
                            self.groups, norm_cfg=self.norm_cfg, act_cfg=None)
            expected = {k: v for k, v in probe.state_dict().items()
                        if k.split('.', 1)[0] in cls._branch_names}
            required = {k for k in expected if not k.endswith('num_batches_tracked')}
            if (set(rel) <= set(expected) and required <= set(rel)
                    and all(rel[k].shape == expected[k].shape for k in rel)):
                return probe
        return None

    def fold_state(self, rel: Mapping[str, Tensor]) -> tuple[Tensor, Tensor] | None:
        """The folded kernel and bias of a training-time state (of any block type), in
        this block's dtype; None if ``rel`` is not one.

        The fold is done in float64 whatever the state's dtype, then rounded once to the
        dtype of this block's weights (a bf16 state folded into a float32 model keeps float32
        accuracy).

        Raises:
            FoldError: If the state is broken (NaN/Inf, ``running_var + eps <= 0``).
        """
        branches = self._branches_of(rel)
        if branches is None:
            return None
        dtype = (self.branch_reparam.weight if self.deploy else
                 self.branch_3x3.conv.weight).dtype
        branches.load_state_dict({k: v.double() if v.is_floating_point() else v
                                  for k, v in rel.items()}, strict=False, assign=True)
        with torch.no_grad():
            kernel, bias = branches.eval()._fuse()
        return kernel.to(dtype), bias.to(dtype)

    def take_deployed_form(self) -> None:
        """Switch to the deployed form, an all-zero ``branch_reparam`` that a deployed state
        is about to fill; the block then refuses training mode."""
        # the same parameter objects, which the state then fills: a wrapper built on the
        # training-time model (DDP) keeps holding what the block uses
        weight, norm = self.branch_3x3.conv.weight, self.branch_3x3.norm
        bias = getattr(norm, 'bias', None)
        self._take_folded(weight, bias if isinstance(bias, nn.Parameter) else
                          nn.Parameter(weight.new_zeros(self.out_channels),
                                       requires_grad=weight.requires_grad))
        self.deployed_by_load = True


class RepVGGBlock(RepBlockBase, code=1):
    """RepVGG block: ``act(bn(conv3x3(x)) + bn(conv1x1(x)) + bn(x))``, or one 3x3 conv.

    Branches: ``branch_3x3`` (conv + BN), ``branch_1x1`` (conv + BN) and ``branch_norm``
    (the identity branch, a BN; None without identity). :meth:`switch_to_deploy` folds them
    into ``branch_reparam``, a single 3x3 conv with bias (Sect. 3.3). Arguments and the
    shared behaviour: :class:`RepBlockBase`.
    """

    _branch_names = ('branch_3x3', 'branch_1x1', 'branch_norm')

    def _build_branches(self, norm_cfg: dict) -> None:
        args = (self.in_channels, self.out_channels)
        self.branch_3x3 = _conv_norm(*args, 3, self.stride, self.dilation, self.dilation,
                                     self.groups, norm_cfg)
        self.branch_1x1 = _conv_norm(*args, 1, self.stride, 0, 1, self.groups, norm_cfg)
        self.branch_norm = (build_norm_layer(norm_cfg, self.in_channels)[1]
                            if self.has_identity else None)

    def _body(self, x: Tensor) -> Tensor:
        out = self.branch_3x3(x) + self.branch_1x1(x)
        if self.branch_norm is not None:
            out = out + self.branch_norm(x)
        return out

    def _norms(self) -> list[nn.Module]:
        norms = [self.branch_3x3.norm, self.branch_1x1.norm]
        return norms + ([self.branch_norm] if self.branch_norm is not None else [])

    def _fuse(self) -> tuple[Tensor, Tensor]:
        return fuse_branches((self.branch_3x3.conv.weight, self.branch_3x3.norm),
                             (self.branch_1x1.conv.weight, self.branch_1x1.norm),
                             self.branch_norm, self.groups)


class QARepVGGBlock(RepBlockBase, code=2):
    """Quantization-friendly RepVGG block: ``act(post_norm(bn(conv3x3(x)) + conv1x1(x) + x))``.

    QARepVGG (Chu et al. 2022, "Make RepVGG Greater Again: A Quantization-aware Approach";
    the default ``QARepVGGBlockV2`` of its code): the 1x1 branch is a bare conv and the
    identity branch the bare input (both without BN), and one BN (``post_norm``) follows the
    sum. Keys: ``branch_3x3.{conv,norm}``, ``branch_1x1.weight``, ``post_norm``. It folds
    exactly, as :class:`RepVGGBlock` does, into ``branch_reparam`` (one 3x3 conv with bias),
    so the deployed model is the plain RepVGG with the same parameter count. A stride-1 block
    with identity holds 2 BNs (RepVGG's: 3).

    Squeeze-and-excitation (``use_se``, arch D2se) is refused: QARepVGG puts the post BN
    after SE, and SE's per-sample channel gate does not commute with the BN's shift, so
    ``post_norm(se(.))`` cannot be folded into the conv before SE.
    """

    _branch_names = ('branch_3x3', 'branch_1x1', 'post_norm')

    no_se_reason = 'its post BN comes after SE and does not fold into the conv before SE'

    def _build_branches(self, norm_cfg: dict) -> None:
        args = (self.in_channels, self.out_channels)
        self.branch_3x3 = _conv_norm(*args, 3, self.stride, self.dilation, self.dilation,
                                     self.groups, norm_cfg)
        self.branch_1x1 = nn.Conv2d(*args, 1, self.stride, 0, 1, self.groups, bias=False)
        self.post_norm = build_norm_layer(norm_cfg, self.out_channels)[1]

    def _body(self, x: Tensor) -> Tensor:
        out = self.branch_3x3(x) + self.branch_1x1(x)
        if self.has_identity:
            out = out + x
        return self.post_norm(out)

    def _norms(self) -> list[nn.Module]:
        return [self.branch_3x3.norm, self.post_norm]

    def _fuse(self) -> tuple[Tensor, Tensor]:
        return fuse_branches((self.branch_3x3.conv.weight, self.branch_3x3.norm),
                             (self.branch_1x1.weight, None), self.has_identity, self.groups,
                             post_norm=self.post_norm)


def block_type_keys() -> dict[str, set[str]]:
    """Per block type, the training-time state keys (relative to a block) that no other
    block type has: what tells which block type a checkpoint was saved from. Derived from
    :data:`BLOCK_TYPES`, so a new block type is recognized without another table."""
    keys = {}
    for name, cls in BLOCK_TYPES.items():
        with torch.device('meta'):
            probe = cls(8, 8)  # an identity branch too: every key a block type can have
        keys[name] = {k for k in probe.state_dict() if k.split('.', 1)[0] in cls._branch_names}
    return {name: own.difference(*(v for n, v in keys.items() if n != name))
            for name, own in keys.items()}


def build_block(block_cfg: dict | None, **kwargs) -> RepBlockBase:
    """Build a block from ``block_cfg`` (its ``type`` and extra options) and ``kwargs``.

    The type is looked up in mmrepvgg's own MODELS registry whatever the default scope, so
    ``'QARepVGGBlock'`` works in mmseg and mmpretrain configs alike.

    Args:
        block_cfg: ``dict(type='RepVGGBlock' | 'QARepVGGBlock' | a block class, ...)``;
            None: ``RepVGGBlock``.
        kwargs: The layer's arguments (channels, stride, ...), which ``block_cfg`` may not set.

    Returns:
        The block.
    """
    cfg = dict(block_cfg or {})
    block_type = cfg.pop('type', 'RepVGGBlock')
    cls = block_type if isinstance(block_type, type) else MODELS.get(block_type)
    if not (isinstance(cls, type) and issubclass(cls, RepBlockBase)):
        raise ValueError(f'block_cfg type {block_type!r} is not a RepVGG block type; '
                         f'use one of {", ".join(BLOCK_TYPES)}')
    clash = sorted(set(cfg) & set(kwargs))
    if clash:
        raise ValueError(f'block_cfg may not set {clash}: the backbone sets them per layer '
                         '(give norm_cfg, act_cfg, with_cp and deploy to RepVGG itself)')
    return cls(**kwargs, **cfg)


@on_one_thread
def reparameterize(model: nn.Module, verbose: bool = False,
                   refuse_training: bool = True) -> nn.Module:
    """Fold every RepVGG block (any :class:`RepBlockBase`) in ``model`` in place; return it.

    Works on any module holding blocks: a block, a backbone, a classifier, a segmentor.
    It is idempotent and keeps each block's dtype and device. Every block is folded before
    any is changed, so a refused call leaves the model untouched.

    Args:
        model: The module to fold.
        verbose: Log how many blocks were folded.
        refuse_training: Refuse blocks whose BNs are in training mode, where the folded
            model (which uses the running statistics) would not give the same outputs.
            The duck-typed ``switch_to_deploy`` passes False: it folds the eval-mode model.

    Returns:
        The same ``model``, now plain.

    Raises:
        RuntimeError: If ``refuse_training`` and a BN of a block to fold is in training
            mode (call ``model.eval()``).
        FoldError: If a block's weights or BN statistics are non-finite or a BN's
            ``running_var + eps <= 0`` (a diverged run, a damaged checkpoint); the message
            names the layer.
    """
    blocks = {name: m for name, m in model.named_modules()
              if isinstance(m, RepBlockBase) and not m.deploy}
    training = [name for name, m in blocks.items() if any(n.training for n in m.norms())]
    if training and refuse_training:
        raise RuntimeError(
            f'reparameterize() uses the BN running statistics, but {len(training)} block(s) '
            f'have BNs in training mode (first: {training[0] or type(model).__name__}); the '
            'folded model would not match. Call model.eval() first.')
    folded, problems = {}, []
    for name, block in blocks.items():
        try:
            folded[name] = block.equivalent_kernel_bias()
        except FoldError as err:
            problems.append((name, block, str(err)))
        else:
            if block.se is not None and not all_finite(*block.se.parameters()):
                problems.append((name, block, 'SE weights are not finite'))
    if problems:
        name, block, first = problems[0]
        raise FoldError(f'Cannot fold: {_where(name, block) or first}'
                        + (f' (and {len(problems) - 1} more)' if len(problems) > 1 else '')
                        + '. The weights or BN statistics are broken (a diverged run or a '
                        'damaged checkpoint); the folded model would compute NaN/Inf.')
    for name, (kernel, bias) in folded.items():
        blocks[name]._take_folded(kernel, bias)
    if verbose:
        print_log(f'reparameterize: folded {len(blocks)} RepVGG blocks', logger='current')
    return model


def _where(name: str, block: RepBlockBase) -> str | None:
    """``'<layer>: <problem>'`` for the first broken submodule of a block that cannot fold."""
    for sub, module in block.named_modules(prefix=name):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            problem = fold_problem(None, module)
        else:
            problem = next(filter(None, (nonfinite_problem(p, 'weight')
                                         for p in module.parameters(recurse=False))), None)
        if problem:
            return f'{sub}: {problem}'
    return None
