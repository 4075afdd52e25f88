"""Shared test utilities."""
from __future__ import annotations

from torch import Tensor

from mmrepvgg.deploy.exactness import randomize_bn_  # noqa: F401  (re-exported for tests)


def rel_err(a: Tensor, b: Tensor) -> float:
    """Max abs difference relative to the output scale."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
