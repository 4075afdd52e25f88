"""Shared test utilities."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial running statistics and affine parameters, in place.

    The default init (mean 0, var 1, gamma 1, beta 0) would hide fusion bugs.
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


def rel_err(a: Tensor, b: Tensor) -> float:
    """Max abs difference relative to the output scale."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()

