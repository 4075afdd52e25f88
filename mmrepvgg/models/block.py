"""The RepVGG block (paper Sect. 3.2-3.3) and model-wide re-parameterization."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import Tensor, nn

from ..registry import MODELS
from .fusion import fuse_branches


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


@MODELS.register_module()
class RepVGGBlock(BaseModule):
    """RepVGG block: ``act(bn(conv3x3(x)) + bn(conv1x1(x)) + bn(x))``, or one 3x3 conv.

    The identity branch (a BN) exists only when input and output channels match and the
    stride is 1. The 1x1 branch has the same stride and groups as the 3x3 one and padding 0;
    with dilation ``d`` the 3x3 conv pads by ``d`` so the 1x1 kernel stays on its centre tap.
    :meth:`switch_to_deploy` folds the branches into ``branch_reparam``, a single 3x3 conv with
    bias (Sect. 3.3).

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
        if deploy:
            self.branch_reparam = nn.Conv2d(in_channels, out_channels, 3, stride, dilation,
                                            dilation, groups, bias=True)
        else:
            self.branch_3x3 = _conv_norm(in_channels, out_channels, 3, stride, dilation,
                                         dilation, groups, norm_cfg)
            self.branch_1x1 = _conv_norm(in_channels, out_channels, 1, stride, 0, 1, groups,
                                         norm_cfg)
            self.branch_norm = (build_norm_layer(norm_cfg, in_channels)[1]
                                if in_channels == out_channels and stride == 1 else None)
        self.se = SEModule(out_channels) if use_se else None
        self.act = _build_act(act_cfg)

    def _branches(self, x: Tensor) -> Tensor:
        if self.deploy:
            out = self.branch_reparam(x)
        else:
            out = self.branch_3x3(x) + self.branch_1x1(x)
            if self.branch_norm is not None:
                out = out + self.branch_norm(x)
        return self.se(out) if self.se is not None else out

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(self._branches, x, use_reentrant=False)
        else:
            out = self._branches(x)
        return self.act(out)

    def norms(self) -> list[nn.Module]:
        """The BN layers that folding would consume (empty once deployed)."""
        if self.deploy:
            return []
        norms = [self.branch_3x3.norm, self.branch_1x1.norm]
        return norms + ([self.branch_norm] if self.branch_norm is not None else [])

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The 3x3 kernel and bias of the equivalent plain conv; the block is not changed.

        Uses the BN running statistics (see :mod:`mmrepvgg.models.fusion`).
        """
        if self.deploy:
            return self.branch_reparam.weight.detach(), self.branch_reparam.bias.detach()
        with torch.no_grad():
            return fuse_branches((self.branch_3x3.conv.weight, self.branch_3x3.norm),
                                 (self.branch_1x1.conv.weight, self.branch_1x1.norm),
                                 self.branch_norm, self.groups)

    def switch_to_deploy(self) -> None:
        """Fold the branches into one 3x3 conv in place (idempotent).

        Raises:
            RuntimeError: If a BN of the block is in training mode; call ``model.eval()``.
        """
        if self.deploy:
            return
        if any(norm.training for norm in self.norms()):
            raise RuntimeError(
                'RepVGGBlock.switch_to_deploy() folds the BN running statistics, but a BN of '
                'this block is in training mode, where it normalizes with batch statistics: '
                'the folded block would not give the same outputs. Call model.eval() first.')
        kernel, bias = self.equivalent_kernel_bias()
        conv3 = self.branch_3x3.conv
        with torch.device('meta'):  # no random init of weights that are replaced at once
            reparam = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride,
                                conv3.padding, conv3.dilation, self.groups, bias=True)
        requires_grad = conv3.weight.requires_grad  # a frozen stage stays frozen
        reparam.weight = nn.Parameter(kernel.detach(), requires_grad=requires_grad)
        reparam.bias = nn.Parameter(bias.detach(), requires_grad=requires_grad)
        reparam.train(self.training)
        del self.branch_3x3, self.branch_1x1, self.branch_norm
        self.branch_reparam = reparam
        self.deploy = True


def reparameterize(model: nn.Module, verbose: bool = False) -> nn.Module:
    """Fold every :class:`RepVGGBlock` inside ``model`` in place and return ``model``.

    Works on any module holding blocks: a block, a backbone, a classifier, a segmentor.
    It is idempotent and keeps each block's dtype and device. It checks every block before
    folding any, so a refused call leaves the model untouched.

    Args:
        model: The module to fold.
        verbose: Log how many blocks were folded.

    Returns:
        The same ``model``, now plain.

    Raises:
        RuntimeError: If a BN of a block to fold is in training mode (call ``model.eval()``).
    """
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock) and not m.deploy]
    training = [name for name, m in model.named_modules()
                if isinstance(m, RepVGGBlock) and any(n.training for n in m.norms())]
    if training:
        raise RuntimeError(
            f'reparameterize() uses the BN running statistics, but {len(training)} block(s) '
            f'have BNs in training mode (first: {training[0] or type(model).__name__}); the '
            'folded model would not match. Call model.eval() first.')
    for block in blocks:
        block.switch_to_deploy()
    if verbose:
        print_log(f'reparameterize: folded {len(blocks)} RepVGG blocks', logger='current')
    return model
