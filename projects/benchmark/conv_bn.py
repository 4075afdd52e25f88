"""Fold the conv-BN pairs of any model (the baselines, for a fair speed comparison).

The paper converts "all the conv-BN sequences of the baselines ... into a conv with bias
(Eq. 3)" before timing them. This module finds those pairs by running the model once and
folds them with :func:`mmrepvgg.models.fusion.fuse_conv_bn`, the project's one copy of the
fusion math.

Finding the pairs: forward hooks record which ``nn.Conv2d`` produced each tensor and which
tensor each BN received. A BN whose input is exactly a conv's output (the same tensor
object) is paired with that conv. The pairs are then folded and the BN replaced by
``nn.Identity``. That is exact only if nothing else reads the conv's raw output, which a
hook cannot see, so the folded model is checked against the original on the probe input;
a mismatch is an error and the model is restored.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmrepvgg.models.fusion import fuse_conv_bn


def find_conv_bn_pairs(model: nn.Module, run: Callable[[], object]) -> list[tuple[str, str]]:
    """The ``(conv_name, bn_name)`` pairs where the BN directly consumes the conv's output.

    Args:
        model: The model; its submodules are hooked during ``run``.
        run: Calls the model once (e.g. ``lambda: model(x)``).

    Returns:
        Pairs of module names, in the order the BNs ran. A conv or BN called more than
        once is left out.
    """
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, tuple[str, Tensor]] = {}
    calls: dict[str, int] = {}
    consumed: list[tuple[str, str]] = []

    def conv_hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        produced[id(output)] = (name, output)  # keep it alive so ids stay unique

    def bn_hook(module: nn.Module, args: tuple) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        hit = produced.get(id(args[0]))
        if hit is not None and hit[1] is args[0]:
            consumed.append((hit[0], name))

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, _BatchNorm):
            handles.append(m.register_forward_pre_hook(bn_hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return [(c, b) for c, b in consumed if calls[c] == 1 and calls[b] == 1]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition('.')
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def fold_conv_bn_(conv: nn.Conv2d, bn: _BatchNorm) -> None:
    """Fold ``bn`` into ``conv`` in place (``conv`` gets a bias); ``bn`` is not changed.

    Args:
        conv: The conv whose output the BN normalizes; may already have a bias.
        bn: The BN, in eval mode (its running statistics are folded).
    """
    weight = conv.weight
    kernel, bias = fuse_conv_bn(weight, bn)
    if conv.bias is not None:
        # bn(Wx + b) = scale * Wx + (beta - mean * scale) + scale * b
        ones = torch.ones(weight.shape[0], 1, 1, 1, dtype=weight.dtype, device=weight.device)
        scale = fuse_conv_bn(ones, bn)[0].flatten()
        bias = bias + scale * conv.bias.double()
    with torch.no_grad():
        conv.weight.copy_(kernel.to(weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.to(weight.dtype))
        else:
            conv.bias.copy_(bias.to(weight.dtype))


def fuse_conv_bn_pairs(model: nn.Module, example: Tensor,
                       forward: Callable[[nn.Module, Tensor], object] | None = None,
                       atol: float = 1e-4) -> list[tuple[str, str]]:
    """Fold every conv-BN pair of ``model`` in place, as the paper does for its baselines.

    Args:
        model: The model, in eval mode (BN running statistics are folded).
        example: A probe input used to find the pairs and to check the result (small is
            fine: e.g. ``(1, 3, 64, 64)``).
        forward: How to call the model (default ``model(example)``).
        atol: Allowed max abs difference between the outputs, relative to their scale.

    Returns:
        The folded ``(conv_name, bn_name)`` pairs.

    Raises:
        RuntimeError: If a BN is in training mode, or the folded model's output differs.
    """
    if any(m.training for m in model.modules() if isinstance(m, _BatchNorm)):
        raise RuntimeError('fuse_conv_bn_pairs() folds BN running statistics: call '
                           'model.eval() first')
    call = forward or (lambda m, x: m(x))
    pairs = find_conv_bn_pairs(model, lambda: call(model, example))
    if not pairs:
        return []
    backup = copy.deepcopy(model)
    with torch.no_grad():
        expected = call(model, example)
        for conv_name, bn_name in pairs:
            fold_conv_bn_(model.get_submodule(conv_name), model.get_submodule(bn_name))
            _set_submodule(model, bn_name, nn.Identity())
        got = call(model, example)
    exp_t, got_t = _first_tensor(expected), _first_tensor(got)
    err = ((got_t - exp_t).abs().max() / exp_t.abs().max().clamp_min(1e-12)).item()
    if not err <= atol:
        for name, module in backup.named_children():
            setattr(model, name, module)
        raise RuntimeError(f'conv-BN folding changed the output (relative error {err:.2e}); '
                           'a conv output is probably read by more than its BN. Model restored.')
    return pairs


def _first_tensor(out: object) -> Tensor:
    while isinstance(out, (tuple, list)):
        out = out[-1]
    if not isinstance(out, Tensor):
        raise TypeError(f'the model returned {type(out).__name__}, not tensors')
    return out.float()
