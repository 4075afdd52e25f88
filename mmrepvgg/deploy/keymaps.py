"""Key maps from other RepVGG implementations to mmrepvgg's keys.

Every map turns a training-time (or deployed) state dict of one layout into the keys of an
mmrepvgg whole model: ``backbone.*`` for the RepVGG backbone and ``head.fc.*`` for a linear
classifier head (mmpretrain's ``ImageClassifier`` with ``LinearClsHead``). The maps are
small tables of regular expressions, applied in order to every key:

========== ================================ ====================================
source     backbone                         classifier head
========== ================================ ====================================
official   ``stage0`` / ``stage{1-4}.{i}``,  ``linear.*``
           ``rbr_dense`` / ``rbr_1x1`` /
           ``rbr_identity`` / ``rbr_reparam``,
           ``bn``, ``se.{down,up}``
mmpretrain ``backbone.stem`` /               ``head.fc.*``
           ``backbone.stage_N.{i}``, same
           branch names, ``se_layer.conv{1,2}.conv``
timm       ``stem`` / ``stages.{N-1}.{i}``,  ``head.fc.*``
           ``conv_kxk`` / ``conv_1x1`` /
           ``identity`` / ``reparam_conv``,
           ``bn``, ``attn.fc{1,2}``
mmrepvgg   unchanged (a DDP ``module.`` prefix is stripped on loading)
========== ================================ ====================================

QARepVGG (``QARepVGGBlock``) checkpoints: ours have ``branch_3x3.{conv,norm}``, a bare
``branch_1x1.weight`` and ``post_norm`` (no ``branch_norm``); QARepVGG's official code
(cxxgtxy/QARepVGG, ``QARepVGGBlockV2``) is the official RepVGG layout with a bare
``rbr_1x1.weight`` and a block-level ``bn`` (the post BN), which the ``official`` rules map to
``post_norm``. :func:`detect_block_type` tells the two block types apart, so a QARepVGG
checkpoint is never loaded as a RepVGG one (or the other way round).
"""
from __future__ import annotations

import re
from typing import Mapping

from torch import Tensor

from ..models.block import block_type_keys
from ..utils.errors import CheckpointError

#: The layouts :func:`convert_keys` understands.
SOURCES = ('mmrepvgg', 'official', 'mmpretrain', 'timm')

#: ``(pattern, replacement)`` rules per source, applied in order with ``re.sub``.
KEY_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    'mmrepvgg': (),
    'official': (
        (r'^stage0\.', 'backbone.stem.'),
        (r'^stage([1-4])\.', r'backbone.stage_\1.'),
        (r'\.rbr_dense\.', '.branch_3x3.'),
        (r'\.rbr_1x1\.', '.branch_1x1.'),
        (r'\.rbr_identity\.', '.branch_norm.'),
        (r'\.rbr_reparam\.', '.branch_reparam.'),
        # QARepVGG's post BN is the block's own ``bn`` (a branch's BN is ``rbr_dense.bn``)
        (r'^(backbone\.(?:stem|stage_[1-4]\.\d+))\.bn\.', r'\1.post_norm.'),
        (r'\.bn\.', '.norm.'),
        (r'^linear\.', 'head.fc.'),
    ),
    'mmpretrain': (
        (r'\.se_layer\.conv1\.conv\.', '.se.down.'),
        (r'\.se_layer\.conv2\.conv\.', '.se.up.'),
    ),
    'timm': (
        (r'^stem\.', 'backbone.stem.'),
        (r'^stages\.([0-3])\.', lambda m: f'backbone.stage_{int(m.group(1)) + 1}.'),
        (r'\.conv_kxk\.', '.branch_3x3.'),
        (r'\.conv_1x1\.', '.branch_1x1.'),
        (r'\.identity\.', '.branch_norm.'),
        (r'\.reparam_conv\.', '.branch_reparam.'),
        (r'\.bn\.', '.norm.'),
        (r'\.attn\.fc1\.', '.se.down.'),
        (r'\.attn\.fc2\.', '.se.up.'),
    ),
}

#: A key that only the given layout has (for :func:`detect_source`), checked in order.
_SIGNATURES = (
    ('mmpretrain', re.compile(r'\.se_layer\.')),
    ('official', re.compile(r'^stage0\.rbr_')),
    ('timm', re.compile(r'^stem\.(conv_kxk|reparam_conv)\.')),
    ('mmrepvgg', re.compile(r'^backbone\.stem\.branch_')),
)


def convert_key(key: str, source: str) -> str:
    """The mmrepvgg key of one key of ``source``'s layout."""
    if source not in KEY_RULES:
        raise ValueError(f'Unknown source {source!r}; expected one of {SOURCES}')
    for pattern, repl in KEY_RULES[source]:
        key = re.sub(pattern, repl, key)
    return key


def convert_keys(state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Rename every key of a state dict from ``source``'s layout to mmrepvgg's.

    Args:
        state: A flat state dict (see :func:`mmrepvgg.checkpoint.extract_state_dict`).
        source: One of :data:`SOURCES`.

    Returns:
        A new dict with the same tensors under mmrepvgg whole-model keys.

    Raises:
        CheckpointError: If two keys would map to the same name.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = convert_key(key, source)
        if new in out:
            raise CheckpointError(f'Keys collide after mapping from {source}: {new}')
        out[new] = value
    return out


def detect_source(state: Mapping[str, Tensor]) -> str:
    """Guess the layout of a state dict from its stem keys.

    mmpretrain and mmrepvgg share the branch names; they differ in the SE keys
    (``se_layer`` vs ``se``) and, for models without SE, in nothing at all: both then
    convert identically, so 'mmrepvgg' is returned.

    Args:
        state: A flat state dict.

    Returns:
        One of :data:`SOURCES`.

    Raises:
        CheckpointError: If no layout matches.
    """
    keys = list(state)
    for source, pattern in _SIGNATURES:
        if any(pattern.search(k) for k in keys):
            return source
    raise CheckpointError('Cannot tell the checkpoint layout from its keys (first: '
                          f'{sorted(keys)[:4]}); pass --source {{{",".join(SOURCES)}}}')


def detect_block_type(state: Mapping[str, Tensor]) -> str | None:
    """The block type a (mapped) training-time state dict was saved from, by the keys that
    only one block type has (:func:`~mmrepvgg.models.block.block_type_keys`).

    Args:
        state: A state dict in mmrepvgg's layout (after :func:`convert_keys`).

    Returns:
        A name of :data:`~mmrepvgg.models.block.BLOCK_TYPES`, or None when no key tells (a
        deployed checkpoint: every block type folds to the same plain conv).

    Raises:
        CheckpointError: If the keys mix block types.
    """
    found = [name for name, own in block_type_keys().items()
             if any(k in own or any(k.endswith('.' + o) for o in own) for k in state)]
    if len(found) > 1:
        raise CheckpointError(f'The checkpoint mixes the keys of {" and ".join(found)} (e.g. '
                              'branch_norm / branch_1x1.conv with post_norm / a bare '
                              'branch_1x1.weight)')
    return found[0] if found else None
