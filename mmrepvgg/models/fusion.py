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


def bn_scale_shift(norm: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """The per-channel affine map of an inference-time BN (Eq. 2), in float64.

    Args:
        norm: The BN; its running statistics are used.

    Returns:
        ``(scale, shift)`` with ``bn(x) == x * scale + shift`` per channel.
    """
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError(f'{type(norm).__name__} has no running statistics '
                         '(track_running_stats=False): it cannot be folded into a conv')
    mean = norm.running_mean.double()
    std = (norm.running_var.double() + norm.eps).sqrt()
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(mean)
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
    scale = gamma / std
    return scale, beta - mean * scale


def fuse_conv_bn(kernel: Tensor, norm: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Fold a BN into the bias-free conv kernel before it (Eq. 3).

    Args:
        kernel: Conv kernel of shape ``(C_out, C_in / groups, k, k)``.
        norm: The BN after the conv; its running statistics are used.

    Returns:
        ``(kernel', bias')`` in float64 with ``bn(x * kernel) == x * kernel' + bias'``.
    """
    scale, shift = bn_scale_shift(norm)
    return kernel.double() * scale.reshape(-1, 1, 1, 1), shift


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


#: Float64 elements per slice of output channels in :func:`fuse_branches` (1 MiB): the
#: temporaries of one slice stay in cache, so a large kernel is read and written once.
_SLICE_ELEMENTS = 2**17


def fuse_branches(conv3x3: tuple[Tensor, nn.modules.batchnorm._BatchNorm],
                  conv1x1: tuple[Tensor, nn.modules.batchnorm._BatchNorm] | None,
                  identity: nn.modules.batchnorm._BatchNorm | None,
                  groups: int) -> tuple[Tensor, Tensor]:
    """The single 3x3 kernel and bias equal to the sum of a block's branches (Eq. 1).

    The padded 1x1 kernel (:func:`pad_to_3x3`) and the identity kernel
    (:func:`identity_kernel`) are zero except at the centre tap, so their BN-scaled values
    are added to the centre tap of the scaled 3x3 kernel directly: the same float64 sums as
    adding the padded kernels, without materializing them. Each output channel's fused
    kernel depends only on that channel's weights and statistics, so the work is done in
    slices of output channels whose float64 temporaries stay in cache (a B3 backbone folds
    in under a second on two CPU cores).

    Args:
        conv3x3: Kernel and BN of the 3x3 branch.
        conv1x1: Kernel and BN of the 1x1 branch, or None.
        identity: BN of the identity branch, or None.
        groups: Groups of both conv branches.

    Returns:
        ``(kernel, bias)`` in the dtype of the 3x3 kernel.
    """
    kernel3, norm3 = conv3x3
    if kernel3.shape[-2:] != (3, 3):
        raise ValueError(f'expected a 3x3 kernel, got {tuple(kernel3.shape)}')
    scale, bias = bn_scale_shift(norm3)
    centre = torch.zeros(kernel3.shape[:2], dtype=torch.float64, device=kernel3.device)
    if conv1x1 is not None:
        k1, norm1 = conv1x1
        if k1.shape[-2:] != (1, 1):
            raise ValueError(f'expected a 1x1 kernel, got {tuple(k1.shape)}')
        scale1, shift1 = bn_scale_shift(norm1)
        centre += k1[:, :, 0, 0] * scale1.reshape(-1, 1)
        bias = bias + shift1
    if identity is not None:
        scale0, shift0 = bn_scale_shift(identity)
        idx = torch.arange(kernel3.shape[0], device=kernel3.device)
        centre[idx, idx % kernel3.shape[1]] += scale0  # identity_kernel's ones, scaled
        bias = bias + shift0
    fused = torch.empty_like(kernel3)
    step = max(1, _SLICE_ELEMENTS // kernel3[0].numel())
    for start in range(0, kernel3.shape[0], step):
        rows = slice(start, start + step)
        kernel = torch.mul(kernel3[rows], scale[rows].reshape(-1, 1, 1, 1))  # float64
        kernel[:, :, 1, 1] += centre[rows]
        fused[rows] = kernel  # rounded once to the kernel's dtype
    return fused, bias.to(kernel3.dtype)
