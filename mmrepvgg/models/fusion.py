"""Structural re-parameterization math (paper Sect. 3.3, Eq. 1-4).

The one implementation of the fusion used by both block types (:class:`RepVGGBlock` and
:class:`QARepVGGBlock`, whose extra BN after the branch sum folds here too), the deploy
hook, the converter and the tests. Everything here is pure: it computes kernels and biases
and changes no module.

BN statistics: folding uses each BN's *running* mean and variance, i.e. the inference-time
BN of Eq. 2, so a fused kernel reproduces the block in eval mode.

Arithmetic is done in float64 and the results are rounded once to the kernel's dtype. Broken inputs (NaN/Inf, ``running_var + eps <= 0``)
always make the fused kernel or bias non-finite, so one check of the result finds them;
only then are the inputs examined to say which one is broken.
"""
from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ..utils.errors import FoldError


def nonfinite_problem(tensor: Tensor | None, what: str) -> str | None:
    """``'<what> has N non-finite values (of M)'`` if ``tensor`` holds NaN/Inf, else None."""
    if tensor is None or not tensor.is_floating_point() or tensor.is_meta:
        return None  # (a meta tensor has no values to check: shape-only folding)
    bad = int((~torch.isfinite(tensor.detach())).sum())
    return f'{what} has {bad} non-finite values (of {tensor.numel()})' if bad else None


def all_finite(*tensors: Tensor | None) -> bool:
    """Whether every value of the (floating-point, non-meta) ``tensors`` is finite."""
    for tensor in tensors:
        if tensor is None or not tensor.is_floating_point() or tensor.is_meta:
            continue
        tensor = tensor.detach()
        # one pass: NaN/Inf anywhere makes the sum non-finite (or a large sum overflowed)
        if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
            return False
    return True


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


def bn_scale_shift(norm: _BatchNorm) -> tuple[Tensor, Tensor]:
    """The per-channel affine map of an inference-time BN (Eq. 2), in float64, unchecked.

    Args:
        norm: The BN; its running statistics are used.

    Returns:
        ``(scale, shift)`` with ``bn(x) == x * scale + shift`` per channel.

    Raises:
        FoldError: If the BN has no running statistics.
    """
    if norm.running_mean is None or norm.running_var is None:
        raise FoldError(fold_problem(None, norm))
    mean = norm.running_mean.double()
    std = (norm.running_var.double() + norm.eps).sqrt()
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(mean)
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
    scale = gamma / std
    return scale, beta - mean * scale


def _checked(kernel: Tensor, bias: Tensor, inputs: list, sums: Tensor | None = None
             ) -> tuple[Tensor, Tensor]:
    """``(kernel, bias)`` if finite (``sums``: the kernel's per-channel sums, to check in
    its place); else a FoldError naming the first broken input (``(tensor, BN, name)``)."""
    if all_finite(kernel if sums is None else sums, bias):
        return kernel, bias
    for tensor, norm, what in inputs:
        problem = (fold_problem(None, norm) if norm is not None else None) or \
            nonfinite_problem(tensor, what)
        if problem:
            raise FoldError(problem)
    raise FoldError(f'the fused kernel or bias overflows {kernel.dtype}')


@torch.no_grad()
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
    scale, shift = bn_scale_shift(norm)
    fused = torch.mul(kernel.detach(), scale.reshape(-1, 1, 1, 1))
    return _checked(fused, shift, [(None, norm, ''), (kernel, None, 'conv kernel')])


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


#: Float64 elements per slice of output channels in :func:`fuse_branches`: a slice's
#: temporaries stay in cache (whole-kernel float64 temporaries would go through memory).
_SLICE_ELEMENTS = 2**18


def on_one_thread(fn):
    """Run ``fn`` with torch on one thread, then as before: the fold is many small
    operations that gain nothing from intra-op threads, and on a busy machine each one would
    wait for the other threads at a barrier."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        threads = torch.get_num_threads()
        if threads == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return wrapper


def _split(tensor: Tensor | None, step: int) -> list[Tensor | None] | itertools.repeat:
    return itertools.repeat(None) if tensor is None else tensor.split(step)


@on_one_thread
@torch.no_grad()
def fuse_branches(conv3x3: tuple[Tensor, _BatchNorm],
                  conv1x1: tuple[Tensor, _BatchNorm | None] | None,
                  identity: _BatchNorm | bool | None,
                  groups: int,
                  post_norm: _BatchNorm | None = None) -> tuple[Tensor, Tensor]:
    """The single 3x3 kernel and bias equal to a block's branches (Eq. 1), for both blocks.

    RepVGG (Eq. 1-4): ``bn3(conv3(x)) + bn1(conv1(x)) + bn0(x)``. QARepVGG (Chu et al. 2022,
    its ``QARepVGGBlockV2``): ``post_norm(bn3(conv3(x)) + conv1(x) + x)``. Both are affine in
    ``x``, so both fold into one 3x3 conv with bias: the branches are summed, then a post BN
    ``post(y) = y * s + t`` scales that kernel by ``s`` and maps its bias ``b`` to ``b * s + t``.

    The padded 1x1 kernel (:func:`pad_to_3x3`) and the identity kernel
    (:func:`identity_kernel`) are zero except at the centre tap, so their (BN-scaled) values
    are added to the centre tap directly: the same float64 sums as adding the padded kernels,
    done per slice of output channels (:data:`_SLICE_ELEMENTS`).

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
    kernel3, norm3 = conv3x3[0].detach(), conv3x3[1]
    channels, per_group = kernel3.shape[:2]
    if kernel3.shape[-2:] != (3, 3):
        raise ValueError(f'expected a 3x3 kernel, got {tuple(kernel3.shape)}')
    inputs = [(None, norm3, ''), (kernel3, None, '3x3 kernel')]
    scale, bias = bn_scale_shift(norm3)
    k1 = scale1 = eye = post_scale = None
    if conv1x1 is not None:
        k1, norm1 = conv1x1[0].detach(), conv1x1[1]
        if k1.shape[-2:] != (1, 1):
            raise ValueError(f'expected a 1x1 kernel, got {tuple(k1.shape)}')
        inputs.append((k1, norm1, '1x1 kernel'))
        if norm1 is not None:
            scale1, shift1 = bn_scale_shift(norm1)
            bias = bias + shift1
        k1 = k1[:, :, 0, 0]
    if identity is not None and identity is not False:
        if channels != per_group * groups:
            raise ValueError(f'an identity branch needs a square kernel: got '
                             f'{tuple(kernel3.shape)} with groups={groups}')
        eye = torch.ones_like(scale)  # the bare input: 1 at its centre tap
        if identity is not True:
            inputs.append((None, identity, ''))
            eye, shift0 = bn_scale_shift(identity)
            bias = bias + shift0
    if post_norm is not None:
        inputs.append((None, post_norm, ''))
        post_scale, post_shift = bn_scale_shift(post_norm)
        bias = bias * post_scale + post_shift
    fused, sums = torch.empty_like(kernel3), []  # (a slice's sum is NaN/Inf if any value is)
    step = max(1, _SLICE_ELEMENTS // max(1, kernel3[0].numel()))
    cols = torch.arange(channels, device=kernel3.device) % per_group  # identity taps
    rows = torch.arange(step, device=kernel3.device)
    for k3, out, s3, k1_, s1, eye_, cols_, post in zip(*(
            _split(t, step) for t in (kernel3, fused, scale.reshape(-1, 1, 1, 1), k1,
                                      scale1, eye, cols, post_scale))):
        wide = torch.mul(k3, s3)  # float64
        centre = wide[:, :, 1, 1]  # (a view)
        if k1_ is not None:
            centre += k1_ if s1 is None else k1_ * s1.reshape(-1, 1)
        if eye_ is not None:
            centre.index_put_((rows[:len(centre)], cols_), eye_, accumulate=True)
        if post is not None:
            wide *= post.reshape(-1, 1, 1, 1)
        out.copy_(wide)  # rounded once to the kernel's dtype
        sums.append(wide.sum())
    return _checked(fused, bias.to(kernel3.dtype), inputs, torch.stack(sums))
