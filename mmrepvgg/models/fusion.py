"""Structural re-parameterization math (paper Sect. 3.3, Eq. 1-4).

The one implementation of the fusion used by the block, the deploy hook, the converter and
the tests. Everything here is pure: it computes kernels and biases and changes no module.

BN statistics: folding uses each BN's *running* mean and variance, i.e. the inference-time
BN of Eq. 2. A BN in training mode normalizes with batch statistics instead, so a fused
kernel only reproduces a block whose BNs are in eval mode (see
:func:`mmrepvgg.models.block.reparameterize`, which refuses otherwise).

Arithmetic is done in float64 and the results are cast back to the kernel's dtype, so the
fused kernel is as exact as that dtype allows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fuse_conv_bn(kernel: Tensor, norm: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Fold a BN into the bias-free conv kernel before it (Eq. 3).

    Args:
        kernel: Conv kernel of shape ``(C_out, C_in / groups, k, k)``.
        norm: The BN after the conv; its running statistics are used.

    Returns:
        ``(kernel', bias')`` in float64 with ``bn(x * kernel) == x * kernel' + bias'``.
    """
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError(f'{type(norm).__name__} has no running statistics '
                         '(track_running_stats=False): it cannot be folded into a conv')
    mean = norm.running_mean.double()
    std = (norm.running_var.double() + norm.eps).sqrt()
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(mean)
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
    scale = gamma / std
    return kernel.double() * scale.reshape(-1, 1, 1, 1), beta - mean * scale


def identity_kernel(channels: int, groups: int, kernel_size: int = 3, *,
                    device: torch.device | None = None) -> Tensor:
    """The kernel of a (grouped) conv that maps its input to itself.

    Output channel ``i`` reads input channel ``i``, which is input ``i % (channels / groups)``
    of its group, at the kernel's centre.

    Args:
        channels: Input and output channels.
        groups: Conv groups; the kernel has ``channels // groups`` input channels.
        kernel_size: Odd spatial size.
        device: Where to create it.

    Returns:
        A float64 kernel of shape ``(channels, channels // groups, k, k)``.
    """
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kernel_size, kernel_size, dtype=torch.float64,
                         device=device)
    idx = torch.arange(channels, device=device)
    kernel[idx, idx % per_group, kernel_size // 2, kernel_size // 2] = 1
    return kernel


def pad_to_3x3(kernel: Tensor) -> Tensor:
    """Zero-pad a 1x1 kernel to 3x3, so it lands on the 3x3 kernel's centre tap (Fig. 4).

    With dilation ``d`` the 3x3 branch pads by ``d`` and the 1x1 branch by 0; the centre tap of
    the dilated kernel then reads the same pixel as the 1x1 kernel, so this holds for any
    dilation.
    """
    if kernel.shape[-2:] == (3, 3):
        return kernel
    if kernel.shape[-2:] != (1, 1):
        raise ValueError(f'expected a 1x1 or 3x3 kernel, got {tuple(kernel.shape)}')
    return F.pad(kernel, [1, 1, 1, 1])


def fuse_branches(conv3x3: tuple[Tensor, nn.modules.batchnorm._BatchNorm],
                  conv1x1: tuple[Tensor, nn.modules.batchnorm._BatchNorm] | None,
                  identity: nn.modules.batchnorm._BatchNorm | None,
                  groups: int) -> tuple[Tensor, Tensor]:
    """The single 3x3 kernel and bias equal to the sum of a block's branches (Eq. 1).

    Args:
        conv3x3: Kernel and BN of the 3x3 branch.
        conv1x1: Kernel and BN of the 1x1 branch, or None.
        identity: BN of the identity branch, or None.
        groups: Groups of both conv branches.

    Returns:
        ``(kernel, bias)`` in the dtype of the 3x3 kernel.
    """
    kernel3, norm3 = conv3x3
    kernel, bias = fuse_conv_bn(kernel3, norm3)
    if conv1x1 is not None:
        k1, b1 = fuse_conv_bn(*conv1x1)
        kernel, bias = kernel + pad_to_3x3(k1), bias + b1
    if identity is not None:
        eye = identity_kernel(kernel.shape[0], groups, device=kernel.device)
        k0, b0 = fuse_conv_bn(eye, identity)
        kernel, bias = kernel + k0, bias + b0
    return kernel.to(kernel3.dtype), bias.to(kernel3.dtype)
