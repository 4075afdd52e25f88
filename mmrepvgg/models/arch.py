"""The RepVGG architecture table (paper Tables 2-3) and the dilation plans (Sect. 4.3, Table 8).

This is the one place that says how wide and how deep each RepVGG is, which layers are
grouped and which are strided or dilated. The backbone, the tools and the tests all read it.

Counting: the paper has five stages. Stage 1 is a single layer (the *stem*); paper stages
2-5 are the backbone's ``stage_1`` .. ``stage_4`` and ``out_indices`` 0-3, as in mmseg's and
mmpretrain's ResNet. Layers are also counted over the whole network (the stem is layer 0),
which is how the paper places its groupwise layers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

#: Stage depths of the two families (paper stages 2-5; stage 1 always has one layer).
DEPTH_A = (2, 4, 14, 1)
DEPTH_B = (4, 6, 16, 1)


@dataclass(frozen=True)
class RepVGGArch:
    """A RepVGG variant.

    Args:
        num_blocks: Layers in paper stages 2-5.
        width_factors: Width multipliers of paper stages 2-5: ``(a, a, a, b)``.
        groups: Groups of the groupwise layers (1 means none).
        use_se: Add a squeeze-and-excitation module to every block (RepVGG-D2se).
    """

    num_blocks: tuple[int, int, int, int]
    width_factors: tuple[float, float, float, float]
    groups: int = 1
    use_se: bool = False

    def __post_init__(self) -> None:
        if len(self.num_blocks) != 4 or any(
                not isinstance(n, int) or n < 1 for n in self.num_blocks):
            raise ValueError('num_blocks must be 4 positive ints (paper stages 2-5), '
                             f'got {self.num_blocks!r}')
        if len(self.width_factors) != 4 or any(
                not isinstance(w, (int, float)) or isinstance(w, bool) or not w > 0
                for w in self.width_factors):
            raise ValueError('width_factors must be 4 positive numbers (a, a, a, b), '
                             f'got {self.width_factors!r}')
        if not isinstance(self.groups, int) or isinstance(self.groups, bool) or self.groups < 1:
            raise ValueError(f'groups must be a positive int, got {self.groups!r}')
        object.__setattr__(self, 'num_blocks', tuple(self.num_blocks))
        object.__setattr__(self, 'width_factors', tuple(self.width_factors))
        widths = (self.stem_channels, *self.stage_channels)
        if min(widths) < 1:
            raise ValueError(f'width_factors {self.width_factors!r} give layers without channels '
                             f'(stem and stage widths {widths}); each must be >= 1')

    @property
    def stem_channels(self) -> int:
        """Width of paper stage 1: ``min(64, 64a)`` (scaled down, never up)."""
        return min(64, int(64 * self.width_factors[0]))

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        """Widths of paper stages 2-5: ``64a, 128a, 256a, 512b``."""
        return tuple(int(base * w) for base, w in zip((64, 128, 256, 512), self.width_factors))

    def layer_groups(self, layer_index: int) -> int:
        """Groups of a layer counted over the whole network, the stem being layer 0.

        Paper Sect. 3.4: the 3rd, 5th, 7th, ... layers are groupwise (0-based: 2, 4, 6, ...);
        the same rule gives layers 3-21 for RepVGG-A and 3-27 for RepVGG-B, as in the
        official code. The last layer of both families has an odd 0-based index.
        """
        return self.groups if layer_index >= 2 and layer_index % 2 == 0 else 1


def _arch(depth: Sequence[int], a: float, b: float, groups: int = 1,
          use_se: bool = False) -> RepVGGArch:
    return RepVGGArch(tuple(depth), (a, a, a, b), groups, use_se)


#: Every paper variant (Table 3), the g2/g4 variants of B1-B3, and the official D2se.
ARCH_ZOO: dict[str, RepVGGArch] = {
    'A0': _arch(DEPTH_A, 0.75, 2.5),
    'A1': _arch(DEPTH_A, 1, 2.5),
    'A2': _arch(DEPTH_A, 1.5, 2.75),
    'B0': _arch(DEPTH_B, 1, 2.5),
    'B1': _arch(DEPTH_B, 2, 4),
    'B1g2': _arch(DEPTH_B, 2, 4, groups=2),
    'B1g4': _arch(DEPTH_B, 2, 4, groups=4),
    'B2': _arch(DEPTH_B, 2.5, 5),
    'B2g2': _arch(DEPTH_B, 2.5, 5, groups=2),
    'B2g4': _arch(DEPTH_B, 2.5, 5, groups=4),
    'B3': _arch(DEPTH_B, 3, 5),
    'B3g2': _arch(DEPTH_B, 3, 5, groups=2),
    'B3g4': _arch(DEPTH_B, 3, 5, groups=4),
    # Not in the paper: the official repository's RepVGG-D2se (trained at 320x320).
    'D2se': _arch((8, 14, 24, 1), 2.5, 5, use_se=True),
}

ArchLike = Union[str, RepVGGArch, Mapping]


def get_arch(arch: ArchLike) -> RepVGGArch:
    """Resolve an arch given by name (``'B2'``, ``'b1g2'``, ``'RepVGG-A0'``) or explicit spec.

    Args:
        arch: A name from :data:`ARCH_ZOO`, a :class:`RepVGGArch`, or a dict of its fields,
            e.g. ``dict(num_blocks=(2, 4, 14, 1), width_factors=(1, 1, 1, 2.5))``.

    Returns:
        The resolved architecture.
    """
    if isinstance(arch, RepVGGArch):
        return arch
    if isinstance(arch, str):
        key = re.sub(r'^repvgg[-_]?', '', arch.strip(), flags=re.IGNORECASE).lower()
        for name, spec in ARCH_ZOO.items():
            if name.lower() == key:
                return spec
        raise KeyError(f'Unknown RepVGG arch {arch!r}; known: {", ".join(ARCH_ZOO)} '
                       '(or give a dict with num_blocks and width_factors)')
    if isinstance(arch, Mapping):
        unknown = set(arch) - {'num_blocks', 'width_factors', 'groups', 'use_se'}
        missing = {'num_blocks', 'width_factors'} - set(arch)
        if unknown or missing:
            raise ValueError(f'Bad arch spec {dict(arch)!r}: '
                             + (f'unknown keys {sorted(unknown)} ' if unknown else '')
                             + (f'missing keys {sorted(missing)}' if missing else ''))
        return RepVGGArch(**arch)
    raise TypeError(f'arch must be a name, a dict or a RepVGGArch, got {type(arch).__name__}')


def arch_name(arch: ArchLike) -> str:
    """The zoo name of an arch (``'custom'`` if it is not in the zoo)."""
    spec = get_arch(arch)
    return next((name for name, s in ARCH_ZOO.items() if s == spec), 'custom')


# ----------------------------------------------------------------------------- dilation plans

PlanLike = Union[None, str, Mapping]


@dataclass(frozen=True)
class StageLayout:
    """Strides and per-layer dilations of paper stages 2-5.

    Args:
        strides: Stride of the first layer of each stage (the other layers have stride 1).
        dilations: One tuple per stage, one dilation per layer.
    """

    strides: tuple[int, int, int, int]
    dilations: tuple[tuple[int, ...], ...] = field(default_factory=tuple)

    @property
    def output_strides(self) -> tuple[int, int, int, int]:
        """Output stride of each of paper stages 2-5 (the stem has stride 2)."""
        out, total = [], 2
        for s in self.strides:
            total *= s
            out.append(total)
        return tuple(out)


def _stage_dilations(num_blocks: Sequence[int], per_stage: Sequence) -> tuple[tuple[int, ...], ...]:
    if isinstance(per_stage, (str, bytes)) or not isinstance(per_stage, Sequence):
        raise ValueError(f'dilations must have 4 entries (paper stages 2-5), got {per_stage!r}')
    if len(per_stage) != 4:
        raise ValueError(f'dilations must have 4 entries (paper stages 2-5), got {len(per_stage)}')
    result = []
    for stage, (n, d) in enumerate(zip(num_blocks, per_stage)):
        if isinstance(d, int):
            layers = (d, ) * n
        elif isinstance(d, Sequence) and not isinstance(d, str):
            layers = tuple(d)
        else:
            raise ValueError(f'dilations for stage_{stage + 1} must be a positive int or a list '
                             f'of one per layer, got {d!r}')
        if len(layers) != n:
            raise ValueError(f'dilations for stage_{stage + 1} list {len(layers)} layers, '
                             f'but that stage has {n}')
        if any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in layers):
            raise ValueError(f'dilations for stage_{stage + 1} must be positive ints, got {d!r}')
        result.append(layers)
    return tuple(result)


def resolve_dilation_plan(plan: PlanLike, num_blocks: Sequence[int]) -> StageLayout:
    """Turn a dilation plan into strides and per-layer dilations.

    Args:
        plan: One of

            - ``None``: classification layout, strides 2, 2, 2, 2, no dilation (output stride 32).
            - ``'full'``: paper Sect. 4.3, as PSPNet's dilated ResNet: the last two stages have
              stride 1 and every layer dilation 2 (paper stage 4) and 4 (paper stage 5);
              output stride 8.
            - ``'fast'``: paper Table 8's *fast* models: only the last 5 layers are dilated
              (the last 4 layers of paper stage 4 with dilation 2, the single layer of stage 5
              with dilation 4); the other layers of stage 4 keep dilation 1. The strides are as
              for ``'full'``, so the output stride is still 8.
            - a dict ``dict(strides=(2, 2, 1, 1), dilations=(1, 1, 2, 4))``: ``dilations`` has
              one entry per stage, an int for the whole stage or a sequence with one int per
              layer. ``strides`` defaults to ``(2, 2, 2, 2)``; ``dilations`` to all ones.
        num_blocks: Layers in paper stages 2-5.

    Returns:
        The resolved layout.
    """
    if plan is None:
        return StageLayout((2, 2, 2, 2), _stage_dilations(num_blocks, (1, 1, 1, 1)))
    if isinstance(plan, str):
        if plan == 'full':
            return StageLayout((2, 2, 1, 1), _stage_dilations(num_blocks, (1, 1, 2, 4)))
        if plan == 'fast':
            n3 = num_blocks[2]
            stage3 = tuple(1 if i < n3 - 4 else 2 for i in range(n3))
            return StageLayout((2, 2, 1, 1), _stage_dilations(num_blocks, (1, 1, stage3, 4)))
        raise ValueError(f"Unknown dilation plan {plan!r}: use None, 'full', 'fast' or "
                         'dict(strides=..., dilations=...)')
    if isinstance(plan, Mapping):
        unknown = set(plan) - {'strides', 'dilations'}
        if unknown:
            raise ValueError(f'Unknown keys {sorted(unknown)} in dilation plan; '
                             'allowed: strides, dilations')
        strides = plan.get('strides', (2, 2, 2, 2))
        strides = tuple(strides) if isinstance(strides, Sequence) else (strides, )
        if len(strides) != 4 or any(not isinstance(s, int) or isinstance(s, bool)
                                    or s not in (1, 2) for s in strides):
            raise ValueError(f'strides must be 4 values of 1 or 2 (paper stages 2-5), got {strides!r}')
        dilations = _stage_dilations(num_blocks, plan.get('dilations', (1, 1, 1, 1)))
        return StageLayout(strides, dilations)
    raise TypeError(f'dilation_plan must be None, a name or a dict, got {type(plan).__name__}')


@dataclass(frozen=True)
class LayerSpec:
    """One RepVGG block: what :class:`RepVGGBlock` is built with."""

    in_channels: int
    out_channels: int
    stride: int
    dilation: int
    groups: int


def layer_specs(arch: ArchLike, plan: PlanLike = None,
                in_channels: int = 3) -> list[list[LayerSpec]]:
    """Every block of the network: ``[[stem], stage_1, stage_2, stage_3, stage_4]``."""
    spec = get_arch(arch)
    layout = resolve_dilation_plan(plan, spec.num_blocks)
    stages = [[LayerSpec(in_channels, spec.stem_channels, 2, 1, 1)]]
    in_ch, index = spec.stem_channels, 1
    for n, out_ch, stride, dils in zip(spec.num_blocks, spec.stage_channels, layout.strides,
                                       layout.dilations):
        stage = []
        for i in range(n):
            groups = spec.layer_groups(index)
            for ch in (in_ch, out_ch):
                if ch % groups:
                    raise ValueError(f'layer {index} has {ch} channels, not divisible by '
                                     f'groups={groups}')
            stage.append(LayerSpec(in_ch, out_ch, stride if i == 0 else 1, dils[i], groups))
            in_ch, index = out_ch, index + 1
        stages.append(stage)
    return stages
