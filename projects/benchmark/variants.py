"""The forms of a model the benchmark times: RepVGG trained / deployed, baselines fused or
not, other libraries' deployed RepVGG (peers) given our weights."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

from mmengine.logging import print_log
from torch import nn

from mmrepvgg.deploy.build import TensorForward
from mmrepvgg.models import reparameterize

from .conv_bn import fuse_conv_bn_pairs
from .models import build_from_spec, example_input, resolve_name, validate_specs
from .peers import (PEER_SOURCES, PEER_TOLERANCE, build_peer, check_same_outputs, copy_weights,
                    parse_peer, peer_specs)


@dataclass
class Variant:
    """One model form to time.

    Attributes:
        model: Display name of the model (``'RepVGG-A0'``, ``'RepVGG-A0 [timm]'``).
        variant: ``'train'``, ``'deploy'``, ``'fused'`` or ``'unfused'``.
        family: ``'repvgg'``, ``'baseline'`` or ``'peer'``.
        task: ``'cls'`` or ``'seg'``.
        module: The callable module (``TensorForward``-wrapped).
        params: Parameters of this form.
        arch: The RepVGG arch (``'A0'``) of an arch-named RepVGG or a peer, else ``None``.
        source: ``'mmrepvgg'`` for ours, the library of a peer.
        weights: A peer's weights: ``'ours'`` (copied from our deployed model of the same
            arch) or ``'own'``; ``None`` for our models.
        weights_max_rel_diff: A peer given our weights: max relative difference of its
            output from ours (fp32, CPU).
        input_shape: ``(H, W)`` a config's model is tested at (None: not from a config).
    """

    model: str
    variant: str
    family: str
    task: str
    module: nn.Module
    params: int
    arch: str | None = None
    source: str = 'mmrepvgg'
    weights: str | None = None
    weights_max_rel_diff: float | None = None
    input_shape: tuple[int, int] | None = None


def validate_benchmark_specs(specs: Sequence[str]) -> None:
    """Check every model spec, peers included, before anything is built or timed.

    Peer specs with :func:`~projects.benchmark.peers.parse_peer`, the others with
    :func:`projects.benchmark.models.validate_specs`.

    Raises:
        KeyError: An unknown arch, baseline or peer.
        FileNotFoundError: A config path that does not exist.
    """
    validate_specs([spec for spec in specs if parse_peer(spec) is None])


def with_peers(specs: Sequence[str], sources: Sequence[str] = PEER_SOURCES) -> list[str]:
    """``specs`` with each RepVGG arch followed by its peers (``A0`` -> ``A0 timm:A0 ...``).

    Baselines get none; a config is refused (its model is not one the peers libraries have).

    Raises:
        ValueError: If a spec is a config.
    """
    configs = [s for s in specs if parse_peer(s) is None and resolve_name(s)[0] == 'config']
    if configs:
        raise ValueError(f'--peers times timm / mmpretrain RepVGG next to an arch name (A0, B2, '
                         f'...), not next to a config: {", ".join(configs)}; give the arch '
                         'name, or leave out --peers')
    out = []
    for spec in specs:
        out.append(spec)
        if parse_peer(spec) is None:
            kind, name = resolve_name(spec)
            if kind == 'repvgg':
                out += [p for p in peer_specs(name, tuple(sources)) if p not in specs]
    return out


def prepare_variants(spec: str, variants: Sequence[str] = ('train', 'deploy', 'fused'),
                     num_classes: int = 1000, probe_shape: tuple[int, int] = (224, 224),
                     cfg_options: dict | None = None) -> list[Variant]:
    """Build the requested forms of one model.

    Args:
        spec: Arch name, baseline name, peer spec (``timm:A0``) or config path.
        variants: Forms to build, among ``train``/``deploy`` (RepVGG models) and
            ``fused``/``unfused`` (baselines); those that do not apply are skipped. A peer
            is always built deployed.
        num_classes: Classes of a classifier built from a name.
        probe_shape: Input size for finding and checking the conv-BN pairs of a baseline.
        cfg_options: Overrides for a config.

    Returns:
        The forms, each in eval mode on the CPU in fp32.
    """
    peer = parse_peer(spec)
    if peer is not None:
        built = build_peer(spec, num_classes)
        module = TensorForward(built.model).eval()
        return [Variant(built.name, 'deploy', 'peer', 'cls', module,
                        sum(p.numel() for p in module.parameters()), arch=peer[1],
                        source=peer[0], weights='own')]
    kind, name = resolve_name(spec)
    built = build_from_spec(spec, num_classes=num_classes, cfg_options=cfg_options)
    base = TensorForward(built.model).eval()
    arch = name if kind == 'repvgg' else None
    out = []

    def add(vname: str, module: nn.Module) -> None:
        out.append(Variant(built.name, vname, built.family, built.task, module,
                           sum(p.numel() for p in module.parameters()), arch=arch,
                           input_shape=built.input_shape))

    if built.family == 'repvgg':
        if 'train' in variants:
            add('train', copy.deepcopy(base) if 'deploy' in variants else base)
        if 'deploy' in variants:
            add('deploy', reparameterize(base))
    else:
        if 'unfused' in variants:
            add('unfused', copy.deepcopy(base) if 'fused' in variants else base)
        if 'fused' in variants:
            fuse_conv_bn_pairs(base, example_input(probe_shape))
            add('fused', base)
    return out


def share_peer_weights(all_variants: Sequence[Variant], num_classes: int = 1000,
                       shape: tuple[int, int] = (224, 224),
                       tolerance: float = PEER_TOLERANCE) -> None:
    """Give every peer our deployed weights of its arch and check that its output is ours.

    Our deployed model of the arch is taken from ``all_variants`` (or built and folded if the
    run has none). Its parameters and buffers are copied into the peer
    (:func:`~projects.benchmark.peers.copy_weights`, keys matched through the key maps, shapes
    checked), then both run one random batch of 2 at ``shape`` on the CPU in fp32
    (:func:`~projects.benchmark.peers.check_same_outputs`). The peer's ``weights`` becomes
    ``'ours'`` and ``weights_max_rel_diff`` the measured difference.

    Args:
        all_variants: The run's variants (CPU, fp32, not yet timed); peers are changed.
        num_classes: Classes of an arch built here.
        shape: ``(H, W)`` of the check batch.
        tolerance: Max relative output difference.

    Raises:
        ValueError: A peer's weights do not map onto ours, or its output differs.
    """
    ours = {v.arch: v for v in all_variants if v.family == 'repvgg' and v.arch
            and v.variant == 'deploy' and v.source == 'mmrepvgg'}
    for v in all_variants:
        if v.family != 'peer':
            continue
        if v.arch not in ours:
            print_log(f'benchmark: building our deployed {v.arch} for its weights',
                      logger='current')
            ours[v.arch] = prepare_variants(v.arch, ('deploy', ), num_classes)[0]
        mine = ours[v.arch]
        copy_weights(mine.module, v.module, 'mmrepvgg', v.source)
        v.weights = 'ours'
        v.weights_max_rel_diff = check_same_outputs(mine.module, v.module, shape, tolerance,
                                                    what=v.model)
        print_log(f'benchmark: {v.model} has our weights; output vs ours: max rel diff '
                  f'{v.weights_max_rel_diff:.3g}', logger='current')
