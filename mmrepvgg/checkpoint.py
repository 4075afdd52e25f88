"""Safe checkpoint I/O: weights-only loading, strict key matching, atomic writes.

Checkpoints are loaded with ``torch.load(weights_only=True)``, which cannot run code from
the file. A file that needs full unpickling is loaded only when the caller says it trusts
it (``trust=True``, the tools' ``--trust-checkpoint``). Keys are matched strictly: every
missing, unexpected or mis-shaped key is reported and the load fails.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the model."""


def load_checkpoint_file(path: str | os.PathLike, *, trust: bool = False,
                         map_location: str | torch.device = 'cpu') -> Any:
    """Load a checkpoint file safely.

    Args:
        path: The file.
        trust: Allow full unpickling if weights-only loading refuses the file. Only for files
            you trust: unpickling can run arbitrary code.
        map_location: Where to put the tensors.

    Returns:
        Whatever the file holds (usually a dict).

    Raises:
        FileNotFoundError: If there is no such file.
        CheckpointError: If the file is empty, truncated or corrupt, or needs full
            unpickling and ``trust`` is False.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Checkpoint not found: {path}')
    if path.stat().st_size == 0:
        raise CheckpointError(f'Checkpoint {path} is empty')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if 'weights only' not in str(err).lower():
            raise CheckpointError(f'Checkpoint {path} is truncated or corrupt: {err}') from err
        if not trust:
            reason = str(err).strip().splitlines()
            reason = next((line for line in reason if 'GLOBAL' in line or 'global' in line),
                          reason[0] if reason else '')
            raise CheckpointError(
                f'Checkpoint {path} holds Python objects that weights-only loading refuses '
                f'({reason.strip()}). Loading it in full unpickles the file, which can run '
                'arbitrary code: do so only for a file you trust, with --trust-checkpoint '
                '(trust=True).') from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(f'Checkpoint {path} is truncated or corrupt: {err}') from err
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(f'Checkpoint {path} is truncated or corrupt: {err}') from err


def extract_state_dict(obj: Any, prefix: str | None = None) -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint.

    Unwraps ``state_dict`` / ``model`` / ``module`` entries, strips a DDP ``module.`` prefix
    and, if ``prefix`` is given, keeps only the keys under it (with the prefix removed).

    Args:
        obj: What :func:`load_checkpoint_file` returned.
        prefix: E.g. ``'backbone.'`` to take a backbone out of a classifier checkpoint.

    Returns:
        A flat ``{key: tensor}`` dict.
    """
    state = obj
    while isinstance(state, Mapping) and not _is_flat(state):
        for key in ('state_dict', 'model', 'module'):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
        else:
            raise CheckpointError('No state dict found in checkpoint: top-level keys are '
                                  f'{sorted(state)[:10]}')
    if not isinstance(state, Mapping):
        raise CheckpointError(f'Checkpoint holds a {type(obj).__name__}, not a state dict')
    state = {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}
    if prefix:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub:
            raise CheckpointError(f'No key starts with {prefix!r}; keys look like '
                                  f'{sorted(state)[:5]}')
        state = sub
    return state


def _is_flat(state: Mapping) -> bool:
    return len(state) > 0 and all(isinstance(v, Tensor) for v in state.values())


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str = '') -> None:
    """Raise if ``state`` does not fit ``model`` key for key and shape for shape.

    Args:
        model: The module to load into.
        state: The state dict.
        source: Where it came from, for the message.

    Raises:
        CheckpointError: Listing every missing, unexpected and mis-shaped key.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}'
                    for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        lines = [f'State dict{" from " + source if source else ""} does not fit '
                 f'{type(model).__name__}:']
        for title, keys in (('missing', missing), ('unexpected', unexpected),
                            ('shape mismatch', shapes)):
            if keys:
                shown = ', '.join(keys[:8]) + (f', ... ({len(keys)} in all)' if len(keys) > 8 else '')
                lines.append(f'  {title} ({len(keys)}): {shown}')
        raise CheckpointError('\n'.join(lines))


def load_state_dict_strict(model: nn.Module, state: Mapping[str, Tensor], source: str = '') -> None:
    """Load ``state`` into ``model`` after :func:`check_state_dict`; nothing is loaded on error."""
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True)


def save_checkpoint_atomic(obj: Any, path: str | os.PathLike, force: bool = False) -> Path:
    """Save with ``torch.save`` to a temporary file beside ``path``, then rename it.

    Args:
        obj: What to save (keep it to tensors and plain Python values so that it loads
            weights-only).
        path: The destination.
        force: Overwrite an existing file.

    Returns:
        The destination path.

    Raises:
        FileExistsError: If ``path`` exists and ``force`` is False.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f'{path} exists; pass --force (force=True) to overwrite it')
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
