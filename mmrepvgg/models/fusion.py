"""Structural re-parameterization math (paper Sect. 3.3, Eq. 1-4).

The one implementation of the fusion used by both block types (:class:`RepVGGBlock` and
:class:`QARepVGGBlock`, whose extra BN after the branch sum folds here too), the deploy
hook, the converter and the tests. Everything here is pure: it computes kernels and biases
and changes no module.

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
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ..utils.errors import FoldError



def nonfinite_problem(tensor: Tensor | None, what: str) -> str | None:
    """``'<what> has N non-finite values (of M)'`` if ``tensor`` holds NaN/Inf, else None."""
    if tensor is None or not tensor.is_floating_point() or tensor.is_meta:
        return None  # (a meta tensor has no values to check: shape-only folding)
    tensor = tensor.detach()
    if torch.isfinite(tensor.sum()):  # one fast pass: a NaN/Inf anywhere makes the sum one
        return None
    bad = int((~torch.isfinite(tensor)).sum())  # (or the sum overflowed: count exactly)
    return f'{what} has {bad} non-finite values (of {tensor.numel()})' if bad else None


def fold_problem(kernel: Tensor | None, norm: _BatchNorm) -> str | None:
    """Why ``norm`` (and the conv ``kernel`` before it, if given) cannot be folded, or None.

    Folding needs running statistics, finite statistics, affine parameters and kernel, and
    ``running_var + eps > 0`` (the BN divides by its square root). A diverged run or a
    damaged checkpoint breaks these; the fused kernel would then be NaN or Inf.

    Args:
        kernel: The conv kernel before the BN (None for the identity branch).
        norm: The BN.

    Returns:
        A short description of the first problem found, or None.
    """
    if norm.running_mean is None or norm.running_var is None:
        return (f'{type(norm).__name__} has no running statistics (track_running_stats=False): '
                'it cannot be folded into a conv')
    for tensor, what in ((norm.running_mean, 'running_mean'), (norm.running_var, 'running_var'),
                         (norm.weight, 'BN weight'), (norm.bias, 'BN bias'),
                         (kernel, 'conv kernel')):
        problem = nonfinite_problem(tensor, what)
        if problem:
            return problem
    if norm.running_var.is_meta:
        return None
    bad = int((norm.running_var.double() + norm.eps <= 0).sum())
    if bad:
        return (f'running_var + eps <= 0 in {bad} of {norm.num_features} channels '
                f'(min running_var {norm.running_var.min().item():.3g})')
    return None


def _check_kernel(kernel: Tensor | None, what: str) -> None:
    problem = nonfinite_problem(kernel, what)
    if problem:
        raise FoldError(problem)


def bn_scale_shift(norm: _BatchNorm) -> tuple[Tensor, Tensor]:
    """The per-channel affine map of an inference-time BN (Eq. 2), in float64.

    Args:
        norm: The BN; its running statistics are used.

    Returns:
        ``(scale, shift)`` with ``bn(x) == x * scale + shift`` per channel.

    Raises:
        FoldError: If :func:`fold_problem` finds a problem (no running statistics, NaN/Inf,
            ``running_var + eps <= 0``).
    """
    problem = fold_problem(None, norm)
    if problem:
        raise FoldError(problem)
    mean = norm.running_mean.double()
    std = (norm.running_var.double() + norm.eps).sqrt()
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(mean)
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
    scale = gamma / std
    return scale, beta - mean * scale


def fuse_conv_bn(kernel: Tensor, norm: _BatchNorm) -> tuple[Tensor, Tensor]:
    """Fold a BN into the bias-free conv kernel before it (Eq. 3).

    Args:
        kernel: Conv kernel of shape ``(C_out, C_in / groups, k, k)``.
        norm: The BN after the conv; its running statistics are used.

    Returns:
        ``(kernel', bias')`` in float64 with ``bn(x * kernel) == x * kernel' + bias'``.

    Raises:
        FoldError: If :func:`fold_problem` finds a problem.
    """
    _check_kernel(kernel, 'conv kernel')
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


def fuse_branches(conv3x3: tuple[Tensor, _BatchNorm],
                  conv1x1: tuple[Tensor, _BatchNorm | None] | None,
                  identity: _BatchNorm | bool | None,
                  groups: int,
                  post_norm: _BatchNorm | None = None) -> tuple[Tensor, Tensor]:
    """The single 3x3 kernel and bias equal to a block's branches (Eq. 1), for both blocks.

    RepVGG (Eq. 1-4): ``bn3(conv3(x)) + bn1(conv1(x)) + bn0(x)``. QARepVGG (Chu et al. 2022,
    its ``QARepVGGBlockV2``): ``post_norm(bn3(conv3(x)) + conv1(x) + x)``, a 1x1 branch and an
    identity without BN and one BN on the sum. Both are affine in ``x``, so both fold into
    one 3x3 conv with bias: the branches are summed as below, then a post BN with
    ``post(y) = y * s + t`` scales that kernel by ``s`` and maps its bias ``b`` to
    ``b * s + t`` (the same as shifting the BN's running mean by ``-b``).

    The padded 1x1 kernel (:func:`pad_to_3x3`) and the identity kernel
    (:func:`identity_kernel`) are zero except at the centre tap, so their (BN-scaled) values
    are added to the centre tap of the scaled 3x3 kernel directly: the same float64 sums as
    adding the padded kernels, without materializing them. Each output channel's fused
    kernel depends only on that channel's weights and statistics, so the work is done in
    slices of output channels whose float64 temporaries stay in cache (a B3 backbone folds
    in under a second on two CPU cores).

    Args:
        conv3x3: Kernel and BN of the 3x3 branch.
        conv1x1: Kernel of the 1x1 branch and its BN (None: a bare conv), or None for no
            1x1 branch.
        identity: The identity branch: its BN, ``True`` for the bare input (no BN), or
            None/``False`` for none.
        groups: Groups of both conv branches.
        post_norm: A BN applied to the sum of the branches, or None.

    Returns:
        ``(kernel, bias)`` in the dtype of the 3x3 kernel.

    Raises:
        FoldError: If a kernel or BN holds NaN/Inf or a BN has ``running_var + eps <= 0``.
    """
    kernel3, norm3 = conv3x3
    _check_kernel(kernel3, '3x3 kernel')
    _check_kernel(conv1x1[0] if conv1x1 is not None else None, '1x1 kernel')
    if kernel3.shape[-2:] != (3, 3):
        raise ValueError(f'expected a 3x3 kernel, got {tuple(kernel3.shape)}')
    scale, bias = bn_scale_shift(norm3)
    centre = torch.zeros(kernel3.shape[:2], dtype=torch.float64, device=kernel3.device)
    if conv1x1 is not None:
        k1, norm1 = conv1x1
        if k1.shape[-2:] != (1, 1):
            raise ValueError(f'expected a 1x1 kernel, got {tuple(k1.shape)}')
        if norm1 is None:
            centre += k1[:, :, 0, 0]
        else:
            scale1, shift1 = bn_scale_shift(norm1)
            centre += k1[:, :, 0, 0] * scale1.reshape(-1, 1)
            bias = bias + shift1
    if identity is not None and identity is not False:
        eye = identity_kernel(kernel3.shape[0], groups, kernel_size=1,
                              device=kernel3.device)[:, :, 0, 0]
        if eye.shape != centre.shape:
            raise ValueError(f'an identity branch needs a square kernel: got '
                             f'{tuple(kernel3.shape)} with groups={groups}')
        if identity is True:
            centre += eye
        else:
            scale0, shift0 = bn_scale_shift(identity)
            centre += eye * scale0.reshape(-1, 1)
            bias = bias + shift0
    post_scale = None
    if post_norm is not None:
        post_scale, post_shift = bn_scale_shift(post_norm)
        bias = bias * post_scale + post_shift
    fused = torch.empty_like(kernel3)
    step = max(1, _SLICE_ELEMENTS // kernel3[0].numel())
    for start in range(0, kernel3.shape[0], step):
        rows = slice(start, start + step)
        kernel = torch.mul(kernel3[rows], scale[rows].reshape(-1, 1, 1, 1))  # float64
        kernel[:, :, 1, 1] += centre[rows]
        if post_scale is not None:
            kernel *= post_scale[rows].reshape(-1, 1, 1, 1)
        fused[rows] = kernel  # rounded once to the kernel's dtype
    return fused, bias.to(kernel3.dtype)
