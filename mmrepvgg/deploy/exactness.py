"""How exact is re-parameterization? Fold errors per arch, dilation plan and block type.

``tools/check_exactness.py`` prints these for every variant; the figures in the README come
from it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models import RepVGG, reparameterize
from ..models.arch import ArchLike, PlanLike
from .convert import compare_outputs


def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial running statistics and affine parameters, in place.

    The default init (mean 0, var 1, gamma 1, beta 0) would hide fusion bugs.

    Args:
        model: Any module.
        seed: Seed of the random values.

    Returns:
        The same module.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.25)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) * 1.5 + 0.25)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.5)
    return model


@dataclass
class FoldErrors:
    """Max |deployed - training-time| relative to each output's largest magnitude.

    Args:
        fp64: Both models in float64: the error of the algebra.
        fp32_reference: float32 on PyTorch's reference conv backend (oneDNN off).
        fp32_default: float32 on the default backend (oneDNN on a CPU).
    """

    fp64: float
    fp32_reference: float
    fp32_default: float


def _max_rel(reference, outputs) -> float:
    return max(compare_outputs([r], [o])[1] for r, o in zip(reference, outputs))


def fold_errors(arch: ArchLike, plan: PlanLike = None, shape: tuple[int, int] = (40, 48),
                seed: int = 0, block: str = 'RepVGGBlock') -> FoldErrors:
    """Fold a RepVGG backbone with randomized BNs and measure the output differences.

    Args:
        arch: Arch name or spec.
        plan: Dilation plan.
        shape: Input height and width (batch 2).
        seed: Seed of the weights, BN values and input.
        block: Block type (``'RepVGGBlock'`` or ``'QARepVGGBlock'``).

    Returns:
        The relative errors of all four stage outputs, worst stage.
    """
    torch.manual_seed(seed)
    model = RepVGG(arch, out_indices=(0, 1, 2, 3), dilation_plan=plan,
                   block_cfg=dict(type=block))
    model = randomize_bn_(model, seed + 1)
    model.eval()
    x = torch.randn(2, 3, *shape)
    with torch.no_grad():
        model64 = copy.deepcopy(model).double()
        expected64 = model64(x.double())
        fp64 = _max_rel(expected64, reparameterize(model64)(x.double()))
        with torch.backends.mkldnn.flags(enabled=False):
            expected_ref = model(x)
        expected = model(x)
        reparameterize(model)
        with torch.backends.mkldnn.flags(enabled=False):
            ref = _max_rel(expected_ref, model(x))
        default = _max_rel(expected, model(x))
    return FoldErrors(fp64, ref, default)
