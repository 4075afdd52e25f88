"""Deployed RepVGG classifiers of other libraries, to time side by side with ours.

A peer spec is ``SOURCE:ARCH``:

- ``timm:A0`` or ``timm:repvgg_a0``: ``timm.create_model('repvgg_a0')`` (random weights,
  nothing downloaded), folded with ``timm.utils.reparameterize_model``. timm has no g2
  variants.
- ``mmpretrain:A0``: an mmpretrain ``ImageClassifier`` with mmpretrain's own ``RepVGG``
  backbone and the same neck and head as ours, folded with ``backbone.switch_to_deploy()``.
  Not D2se: mmpretrain 1.2's deployed block returns ``branch_reparam(x)`` and skips its SE
  layer, so its deployed D2se is another network (its output changes by folding).

Each is returned deployed and in eval mode, with the arch named as in our arch table, so the
benchmark can pair it with our deployed model of the same arch.

**Same weights.** A GPU's speed depends on the weight *values* (the power drawn, hence the
clock, changes with the data; docs/benchmark.md, measured with ``tools/gpu/peers_weights.py``).
So the benchmark copies our deployed weights into every peer (:func:`copy_weights`, keys matched
through :mod:`mmrepvgg.deploy.keymaps`, every shape checked) and checks on the CPU in fp32
that the peer's output equals ours (:func:`check_same_outputs`) before timing.
"""
from __future__ import annotations

import os.path as osp
from typing import Sequence

import torch
from torch import Tensor, nn

from mmrepvgg.checkpoint import is_optional_key
from mmrepvgg.deploy.build import TensorForward, build_model_cfg
from mmrepvgg.deploy.keymaps import SOURCES, convert_key
from mmrepvgg.deploy.verify import compare_outputs
from mmrepvgg.models.arch import ARCH_ZOO, arch_name, get_arch
from mmrepvgg.utils.errors import VerificationError

from .models import BuiltModel, classifier_cfg, example_input

#: Libraries a peer can come from.
PEER_SOURCES = ('timm', 'mmpretrain')

#: Max relative output difference (max |peer - ours| / max |ours|, fp32 on the CPU) between a
#: peer given our weights and our model: the same convs on the same weights differ only by
#: summation order, if at all.
PEER_TOLERANCE = 1e-5

#: ``--peer-weights`` choices: ``shared`` (ours copied into each peer, outputs checked) or
#: ``own`` (each library's own random initialization).
PEER_WEIGHTS = ('shared', 'own')


def parse_peer(spec: str) -> tuple[str, str] | None:
    """Split a peer spec.

    Args:
        spec: A model spec (``'timm:repvgg_a0'``, ``'mmpretrain:B2'``, ``'A0'``, a path).

    Returns:
        ``(source, arch)`` with ``arch`` a key of :data:`ARCH_ZOO`, or ``None`` if ``spec``
        is not a peer spec.

    Raises:
        KeyError: A peer spec with an unknown source or arch.
    """
    if ':' not in spec or spec.endswith('.py') or osp.isfile(spec):
        return None
    source, _, name = spec.partition(':')
    if source.lower() not in PEER_SOURCES:
        raise KeyError(f'Unknown peer source {source!r} in {spec!r}: use one of '
                       f'{", ".join(PEER_SOURCES)}')
    source = source.lower()
    try:
        canonical = arch_name(name)  # 'repvgg_a0', 'RepVGG-A0', 'a0' -> 'A0'
    except KeyError:
        raise KeyError(f'Unknown arch {name!r} in {spec!r}: give one of '
                       f'{", ".join(ARCH_ZOO)}') from None
    if source == 'timm' and canonical not in timm_archs():
        raise KeyError(f'timm has no RepVGG-{canonical} (it has '
                       f'{", ".join(timm_archs())})')
    if source == 'mmpretrain' and canonical not in mmpretrain_archs():
        raise KeyError(f"mmpretrain's deployed RepVGG-{canonical} is not the same network: "
                       "its deployed block skips the SE layer (mmpretrain 1.2 "
                       'RepVGGBlock.forward returns branch_reparam(x) in deploy mode)')
    return source, canonical


def timm_archs() -> list[str]:
    """Our arch names that timm builds (``repvgg_<lower-case name>``)."""
    return [k for k in ARCH_ZOO if 'g2' not in k.lower()]


def mmpretrain_archs() -> list[str]:
    """Our arch names whose deployed mmpretrain model is ours (all but SE archs, see above)."""
    return [k for k, v in ARCH_ZOO.items() if not v.use_se]


def peer_specs(arch: str, sources: tuple[str, ...] = PEER_SOURCES) -> list[str]:
    """The peer specs of one of our archs (those a source does not have are left out)."""
    have = dict(timm=timm_archs(), mmpretrain=mmpretrain_archs())
    return [f'{s}:{arch}' for s in sources if arch in have[s]]


def build_peer(spec: str, num_classes: int = 1000) -> BuiltModel:
    """Build a peer's deployed classifier.

    Args:
        spec: ``SOURCE:ARCH`` (see :func:`parse_peer`).
        num_classes: Classes of the head.

    Returns:
        The deployed model in eval mode, named ``'RepVGG-A0 [timm]'``, family ``'peer'``.
    """
    parsed = parse_peer(spec)
    if parsed is None:
        raise KeyError(f'{spec!r} is not a peer spec (SOURCE:ARCH)')
    source, arch = parsed
    if source == 'timm':
        import timm
        from timm.utils import reparameterize_model
        model = timm.create_model(f'repvgg_{arch.lower()}', pretrained=False,
                                  num_classes=num_classes).eval()
        model = reparameterize_model(model)
    else:
        width = get_arch(arch).stage_channels[-1]
        model = build_model_cfg(classifier_cfg(dict(type='RepVGG', arch=arch), width,
                                               num_classes), 'mmpretrain').eval()
        model.backbone.switch_to_deploy()
    return BuiltModel(f'RepVGG-{arch} [{source}]', model.eval(), 'cls', 'peer')


def _unwrap_forward(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, TensorForward) else model


def _mapped_state(model: nn.Module, layout: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in _unwrap_forward(model).state_dict(keep_vars=True).items():
        if is_optional_key(key):  # our blocks' geometry record: not a weight
            continue
        new = convert_key(key, layout)
        if new in out:
            raise ValueError(f'{layout} keys collide after mapping: {new}')
        out[new] = value
    return out


def copy_weights(src: nn.Module, dst: nn.Module, src_layout: str = 'mmrepvgg',
                 dst_layout: str = 'timm') -> int:
    """Copy every parameter and buffer of one deployed classifier into another, in place.

    Keys are matched in mmrepvgg's layout (each side mapped with
    :func:`mmrepvgg.deploy.keymaps.convert_key`); the two key sets must be equal and every
    pair of tensors must have the same shape, or nothing is copied.

    Args:
        src: The model whose weights are copied (a ``TensorForward`` is unwrapped).
        dst: The model that receives them.
        src_layout: ``src``'s key layout, one of :data:`mmrepvgg.deploy.keymaps.SOURCES`
            (``'mmrepvgg'``, ``'timm'``, ``'mmpretrain'``, ``'official'``).
        dst_layout: The same for ``dst``.

    Returns:
        The number of tensors copied.

    Raises:
        ValueError: An unknown layout, or the keys or a shape do not match.
    """
    for layout in (src_layout, dst_layout):
        if layout not in SOURCES:
            raise ValueError(f'unknown weight layout {layout!r}: use one of '
                             f'{", ".join(SOURCES)}')
    src_state = _mapped_state(src, src_layout)
    dst_state = _mapped_state(dst, dst_layout)
    only_src = [k for k in src_state if k not in dst_state]
    only_dst = [k for k in dst_state if k not in src_state]
    if only_src or only_dst:
        raise ValueError(f'cannot copy {src_layout} weights into {dst_layout}: '
                         f'{len(only_src)} key(s) only in {src_layout} (first: '
                         f'{only_src[:2]}), {len(only_dst)} only in {dst_layout} (first: '
                         f'{only_dst[:2]})')
    for key, value in dst_state.items():
        if value.shape != src_state[key].shape:
            raise ValueError(f'cannot copy {src_layout} weights into {dst_layout}: {key} is '
                             f'{tuple(src_state[key].shape)} in {src_layout}, '
                             f'{tuple(value.shape)} in {dst_layout}')
    with torch.no_grad():
        for key, value in dst_state.items():
            value.copy_(src_state[key])
    return len(dst_state)


def check_same_outputs(reference: nn.Module, other: nn.Module, shape: Sequence[int] = (64, 64),
                       tolerance: float = PEER_TOLERANCE, what: str = 'peer') -> float:
    """Check that two classifiers give the same logits (fp32, on the CPU, eval mode).

    Args:
        reference: Our model (a ``TensorForward`` or a plain module returning logits).
        other: The model that should equal it (e.g. a peer given our weights).
        shape: ``(H, W)`` of the random check batch (2 images).
        tolerance: Max relative difference: max |other - reference| / max |reference|.
        what: The other model's name, for the error message.

    Returns:
        The max relative difference (:func:`mmrepvgg.deploy.convert.compare_outputs`).

    Raises:
        ValueError: The outputs differ in shape, are not finite, or differ by more than
            ``tolerance``.
    """
    x = example_input(tuple(shape), batch=2)
    outs = []
    for model in (reference, other):
        param = next(model.parameters(), None)
        if param is not None and (param.device.type != 'cpu' or param.dtype != torch.float32):
            raise ValueError(f'check_same_outputs runs fp32 models on the CPU; got '
                             f'{param.dtype} on {param.device}')
        was_training = model.training
        model.eval()
        with torch.no_grad():
            outs.append(model(x))
        model.train(was_training)
    ref, out = (o[-1] if isinstance(o, (tuple, list)) else o for o in outs)
    try:  # the one comparison of outputs: shapes, NaN/Inf, max relative difference
        _, rel = compare_outputs([ref], [out], labels=('of ours', f'of {what}'),
                                 causes=('its weights are broken', 'its weights are broken'))
    except VerificationError as err:
        raise ValueError(f'{what} vs ours: {err}') from None
    if not rel <= tolerance:
        raise ValueError(f'{what}: with our weights its output differs from ours by {rel:.3g} '
                         f'(max rel diff, fp32, CPU; allowed {tolerance:g}): the weights were '
                         'not copied onto the same layers')
    return rel
