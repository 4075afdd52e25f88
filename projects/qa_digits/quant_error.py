"""The int8 weight-quantization error of folded RepVGG kernels, layer by layer.

QARepVGG (Chu et al. 2022) traces RepVGG's int8 accuracy loss to the folded model: the
BN-scaled 1x1 and identity branches add to the 3x3 kernel's centre tap, so the folded
kernels (and the activations they produce) can take a wider, outlier-heavy range. This
module measures the weight half of that: every block's folded 3x3 kernel
(:meth:`~mmrepvgg.models.RepBlockBase.equivalent_kernel_bias`, so the model is not changed
and may be folded or not) is quantized to int8 and compared with itself.

Quantizer: symmetric, linear, round to nearest, integers in ``[-127, 127]`` (ONNX Runtime's
symmetric int8 weight range), scale ``max|w| / 127`` per output channel or per tensor. The
error is the signal-to-quantization-noise ratio ``SQNR = 10 log10(sum w^2 / sum (w - q(w))^2)``
in dB (higher is better; each bit is worth about 6 dB). SQNR weighs errors by energy: an
outlier coarsens the per-tensor grid for every other weight but also dominates the signal, so
``max|w| / std(w)`` is reported beside it. Activations are not quantized here: that needs a
calibrated quantizer (ONNX Runtime static quantization).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from mmrepvgg.models import RepBlockBase
from mmrepvgg.utils.metrics import tensor_sqnr_db

#: The largest int8 magnitude of a symmetric quantizer (-127 .. 127).
INT8_QMAX = 127


def quantize_symmetric(weight: Tensor, per_channel: bool, qmax: int = INT8_QMAX) -> Tensor:
    """Quantize and dequantize a weight: symmetric, round to nearest, ``[-qmax, qmax]``.

    Args:
        weight: A kernel; its first dimension is the output channel.
        per_channel: One scale per output channel (else one for the tensor).
        qmax: The largest integer magnitude (127 for int8).

    Returns:
        ``q(w)`` in float64, the value int8 inference uses in place of ``w``.
    """
    w = weight.detach().double()
    if per_channel:
        amax = w.abs().reshape(w.shape[0], -1).amax(dim=1).reshape(-1, *([1] * (w.dim() - 1)))
    else:
        amax = w.abs().max()
    scale = amax / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero channel
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def sqnr_db(weight: Tensor, per_channel: bool, qmax: int = INT8_QMAX) -> float:
    """The SQNR in dB of :func:`quantize_symmetric` on ``weight`` (inf if it is exact).

    Args:
        weight: A kernel; its first dimension is the output channel.
        per_channel: One scale per output channel (else one for the tensor).
        qmax: The largest integer magnitude (127 for int8).

    Returns:
        ``10 log10(sum w^2 / sum (w - q(w))^2)`` (:func:`tensor_sqnr_db`).
    """
    w = weight.detach().double()
    return tensor_sqnr_db(w, quantize_symmetric(w, per_channel, qmax))


@dataclass
class LayerQuantError:
    """One folded kernel's int8 error.

    Attributes:
        name: The block's module name (``'backbone.stage_3.5'``).
        shape: Kernel shape ``(C_out, C_in / groups, 3, 3)``.
        per_channel_db: SQNR with one scale per output channel.
        per_tensor_db: SQNR with one scale for the kernel.
        max_abs: ``max|w|``.
        max_over_std: ``max|w| / std(w)``: how far the largest weight sticks out.
    """

    name: str
    shape: tuple[int, ...]
    per_channel_db: float
    per_tensor_db: float
    max_abs: float
    max_over_std: float


def folded_kernel_errors(model: nn.Module) -> list[LayerQuantError]:
    """The int8 error of every RepVGG block's folded 3x3 kernel, in module order.

    Args:
        model: Any module holding RepVGG or QARepVGG blocks (folded or not). Unfolded blocks
            are folded on the fly with their BN running statistics; nothing is changed.

    Returns:
        One entry per block.
    """
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, RepBlockBase):
            continue
        kernel = module.equivalent_kernel_bias()[0].detach().double()
        std = kernel.std().item()
        out.append(LayerQuantError(
            name, tuple(kernel.shape), sqnr_db(kernel, True), sqnr_db(kernel, False),
            kernel.abs().max().item(), kernel.abs().max().item() / std if std > 0 else math.inf))
    if not out:
        raise ValueError(f'{type(model).__name__} has no RepVGG blocks')
    return out


def summarize_errors(layers: list[LayerQuantError]) -> dict:
    """Min and median over layers of each SQNR, and the worst layer.

    Args:
        layers: :func:`folded_kernel_errors`'s result.

    Returns:
        ``dict(layers=N, per_channel=dict(min_db, median_db, worst_layer),
        per_tensor=dict(...), max_over_std=dict(max, median))``.
    """
    summary: dict = dict(layers=len(layers))
    for key in ('per_channel', 'per_tensor'):
        values = [getattr(layer, f'{key}_db') for layer in layers]
        worst = min(range(len(layers)), key=values.__getitem__)
        summary[key] = dict(min_db=values[worst], median_db=statistics.median(values),
                            worst_layer=layers[worst].name)
    ratios = [layer.max_over_std for layer in layers]
    summary['max_over_std'] = dict(max=max(ratios), median=statistics.median(ratios))
    return summary


def errors_to_dicts(layers: list[LayerQuantError]) -> list[dict]:
    """The per-layer errors as plain dicts (for json)."""
    return [dict(asdict(layer), shape=list(layer.shape)) for layer in layers]
