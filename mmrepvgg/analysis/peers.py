"""Deployed RepVGG classifiers of other libraries, to time side by side with ours.

A peer spec is ``SOURCE:ARCH``:

- ``timm:A0`` or ``timm:repvgg_a0``: ``timm.create_model('repvgg_a0')`` (random weights,
  nothing downloaded), folded with ``timm.utils.reparameterize_model``. timm has no g2
  variants.
- ``mmpretrain:A0``: an mmpretrain ``ImageClassifier`` with mmpretrain's own ``RepVGG``
  backbone and the same neck and head as ours, folded with ``backbone.switch_to_deploy()``.

Each is returned deployed and in eval mode, with the arch named as in our arch table, so the
benchmark can pair it with our deployed model of the same arch.
"""
from __future__ import annotations

import os.path as osp

from ..models.arch import ARCH_ZOO, get_arch
from .models import BuiltModel, _build, _classifier_cfg

#: Libraries a peer can come from.
PEER_SOURCES = ('timm', 'mmpretrain')


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
    key = name.lower()
    if key.startswith('repvgg_'):
        key = key[len('repvgg_'):]
    try:
        arch = get_arch(key)
    except KeyError:
        raise KeyError(f'Unknown arch {name!r} in {spec!r}: give one of '
                       f'{", ".join(ARCH_ZOO)}') from None
    canonical = next(k for k, v in ARCH_ZOO.items() if v == arch)
    if source == 'timm' and canonical not in timm_archs():
        raise KeyError(f'timm has no RepVGG-{canonical} (it has '
                       f'{", ".join(timm_archs())})')
    return source, canonical


def timm_archs() -> list[str]:
    """Our arch names that timm builds (``repvgg_<lower-case name>``)."""
    return [k for k in ARCH_ZOO if 'g2' not in k.lower()]


def peer_specs(arch: str, sources: tuple[str, ...] = PEER_SOURCES) -> list[str]:
    """The peer specs of one of our archs (those a source does not have are left out)."""
    return [f'{s}:{arch}' for s in sources if s != 'timm' or arch in timm_archs()]


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
        model = _build(_classifier_cfg(dict(type='RepVGG', arch=arch), width, num_classes),
                       'mmpretrain').eval()
        model.backbone.switch_to_deploy()
    return BuiltModel(f'RepVGG-{arch} [{source}]', model.eval(), 'cls', 'peer')
