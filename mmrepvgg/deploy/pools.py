"""Adaptive pools and export input sizes: a shape-only probe of the model on the meta device.

PSPNet's pyramid pooling uses adaptive average pools; exporters write them as plain
``AveragePool`` only where the input size is a multiple of the output size.
:func:`check_adaptive_pools` says so before an export, with the sizes that work.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Sequence

import torch
from torch import nn

from ..utils.errors import PoolShapeError
from .build import find_backbone
from .forward import TensorForward


@dataclasses.dataclass
class PoolUse:
    """One call of an adaptive pool: its module name, output size and input size."""

    name: str
    output_size: tuple[int, int]
    input_size: tuple[int, int]

    def divides(self, dim: int) -> bool:
        return self.input_size[dim] % self.output_size[dim] == 0


@dataclasses.dataclass
class Probe:
    """What a shape-only forward pass saw: adaptive pools and conv calls."""

    pools: list[PoolUse]
    convs: int
    backbone_convs: int


def _pair(size: Any, fallback: tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return tuple(fb if s is None else int(s) for s, fb in zip(size, fallback))


def _on_meta(model: nn.Module) -> nn.Module:
    """``model`` if it is on the meta device, else a copy there that copies no data."""
    param = next(model.parameters(), None)
    if param is not None and param.device.type == 'meta':
        return model
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device='meta'), p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device='meta')
    return copy.deepcopy(model, memo)


def probe(model: nn.Module, shape: tuple[int, int]) -> Probe:
    """Run ``model`` on a ``(1, 3, H, W)`` input on the meta device (no compute, no memory).

    Records every adaptive average/max pool's input and output size and counts the conv
    calls (all, and inside the RepVGG backbone). A model not on the meta device is copied
    there first.
    """
    meta = _on_meta(model)
    backbone = find_backbone(meta)
    in_backbone = {id(m) for m in backbone.modules()} if backbone is not None else set()
    names = {m: n for n, m in meta.named_modules()}
    pools: list[PoolUse] = []
    convs = [0, 0]

    def pool_hook(module: nn.Module, args: tuple) -> None:
        size = tuple(int(s) for s in args[0].shape[-2:])
        pools.append(PoolUse(names[module], _pair(module.output_size, size), size))

    def conv_hook(module: nn.Module, args: tuple) -> None:
        convs[0] += 1
        convs[1] += id(module) in in_backbone

    handles = []
    for m in meta.modules():
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            handles.append(m.register_forward_pre_hook(pool_hook))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_pre_hook(conv_hook))
    try:
        with torch.no_grad():
            TensorForward(meta)(torch.empty(1, 3, *shape, device='meta'))
    finally:
        for h in handles:
            h.remove()
    return Probe(pools, convs[0], convs[1])


def _ranges(values: Sequence[int]) -> str:
    out, run = [], [values[0]] if values else []
    for v in values[1:]:
        if v == run[-1] + 1:
            run.append(v)
        else:
            out.append(run)
            run = [v]
    if run:
        out.append(run)
    return ', '.join(f'{r[0]}-{r[-1]}' if len(r) > 1 else str(r[0]) for r in out)


def pool_friendly_sizes(model: nn.Module, shape: tuple[int, int], span: int = 64) -> dict:
    """Input heights and widths near ``shape`` at which every adaptive pool divides its input.

    Height and width are independent (each depends only on the convs' strides along it),
    so each is searched with the other one fixed, by :func:`probe`.

    Args:
        model: The model.
        shape: The requested ``(H, W)``.
        span: How far to search on each side.

    Returns:
        ``{'height': [...], 'width': [...]}``: the nearest run of working sizes below and
        above the requested one (each may be empty).
    """
    model = _on_meta(model)
    out = {}
    for dim, key in ((0, 'height'), (1, 'width')):
        def ok(n: int) -> bool:
            size = list(shape)
            size[dim] = n
            return all(p.divides(dim) for p in probe(model, tuple(size)).pools)

        found = []
        for step in (-1, 1):
            n = shape[dim] + step
            while 8 <= n and abs(n - shape[dim]) <= span and not ok(n):
                n += step
            if n < 8 or abs(n - shape[dim]) > span:
                continue
            run = [n]
            while len(run) < 16 and ok(run[-1] + step):
                run.append(run[-1] + step)
            found += run
        out[key] = sorted(set(found))
    return out


def check_adaptive_pools(model: nn.Module, shape: tuple[int, int], exporter: str,
                         seen: Probe | None = None) -> str | None:
    """Check that the adaptive pools can be exported at ``shape`` by ``exporter``.

    Args:
        model: The model.
        shape: Input ``(H, W)``.
        exporter: ``'torchscript'`` (refuses) or ``'dynamo'`` (exports them exactly as gathers).
        seen: A :func:`probe` at ``shape`` (made here if None).

    Returns:
        None if every pool divides its input; else (dynamo) a one-line note.

    Raises:
        PoolShapeError: For the TorchScript exporter, with the sizes that work.
    """
    seen = seen or probe(model, shape)
    bad = [p for p in seen.pools if not (p.divides(0) and p.divides(1))]
    if not bad:
        return None
    owners = sorted({p.name.rsplit('.', 2)[0] for p in bad})
    outs = sorted({p.output_size for p in seen.pools})
    sizes = pool_friendly_sizes(model, shape)
    where = (f'input heights {_ranges(sizes["height"]) or "none nearby"} and widths '
             f'{_ranges(sizes["width"]) or "none nearby"}')
    what = (f'the adaptive pools of {", ".join(owners)} (output sizes '
            f'{", ".join("x".join(map(str, o)) for o in outs)}) get a '
            f'{bad[0].input_size[0]}x{bad[0].input_size[1]} map at {shape[0]}x{shape[1]}, '
            'not a multiple of their output sizes')
    if exporter == 'torchscript':
        raise PoolShapeError(f'Cannot export at {shape[0]}x{shape[1]} with the TorchScript '
                             f'exporter: {what}. Sizes that work: {where} (--shape H W), or '
                             'use --exporter dynamo, which exports them exactly as gathers')
    return (f'{what}: exported exactly as gathers and means (slower than AveragePool); '
            f'sizes where they are plain AveragePool: {where}')
