"""Safe checkpoint loading: weights-only, strict key matching (writing: utils/fileio.py).

Checkpoints are loaded with ``torch.load(weights_only=True)``, which cannot run code from
the file; full unpickling only for a caller that trusts the file (``trust=True``, the tools'
``--trust-checkpoint``). Keys are matched strictly: every missing, unexpected or mis-shaped
key is reported and the load fails.

mmengine's checkpoints hold a few plain-data objects besides tensors (``HistoryBuffer``,
numpy arrays, scalars and dtypes): :func:`mmengine_safe_globals` allow-lists exactly those.
:func:`install_mmengine_loader` makes mmengine load local files through this module, and
removes the config source text a checkpoint may carry, which mmengine would execute
(:func:`drop_config_code`), unless checkpoints are trusted (:data:`TRUST_CHECKPOINTS`).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import CheckpointLoader
from numpy._core import multiarray
from torch import Tensor, nn

from .utils.errors import CheckpointError
from .utils.fileio import write_atomic


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
        CheckpointError: If the file is empty, truncated or corrupt (:func:`check_zip_crc`
            included), not a regular file, or needs full unpickling and ``trust`` is False.
    """
    path = check_checkpoint_path(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f'Checkpoint {path} is empty')
    kind = _file_kind(path)
    if kind is None:
        raise CheckpointError(f'{path} is not a checkpoint (neither a torch.save zip archive nor '
                              'a pickle): truncated or corrupt, or another kind of file')
    if kind == 'zip':  # torch reads the archive without checking its CRC-32s
        check_zip_crc(path)
    if kind == 'pickle':  # not torch.save's format: only full unpickling can read it
        if not trust:
            raise CheckpointError(
                f'{path} is a plain pickle, not a torch.save checkpoint: reading it means '
                'unpickling it in full, which can run arbitrary code: do so only for a file '
                'you trust, with --trust-checkpoint (trust=True).')
        _warn_full_unpickling(path)
        try:
            with open(path, 'rb') as f:
                return pickle.load(f)
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError,
                TypeError, AttributeError, ImportError) as err:
            raise CheckpointError(f'Checkpoint {path} is truncated or corrupt: {err}') from err
    try:
        with _extra_safe_globals(mmengine_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if 'weights only' not in str(err).lower():
            raise CheckpointError(f'Checkpoint {path} is truncated or corrupt: {err}') from err
        if not trust:
            reason = _weights_only_reason(err)
            with contextlib.suppress(Exception):  # only the zip format can be scanned
                unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                          if g not in _allowed_names()]
                if unsafe:
                    reason += f'; globals not allowed: {", ".join(unsafe)}'
            raise CheckpointError(
                f'Checkpoint {path} holds Python objects that weights-only loading refuses '
                f'({reason.strip()}). Loading it in full unpickles the file, which can run '
                'arbitrary code: do so only for a file you trust, with --trust-checkpoint '
                '(trust=True).') from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError,
            IndexError, TypeError) as err:
        raise CheckpointError(f'Checkpoint {path} is truncated or corrupt: {err}') from err
    _warn_full_unpickling(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(f'Checkpoint {path} is truncated or corrupt: {err}') from err


def check_checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` if it is a regular file, else the error that says what it is.

    Raises:
        FileNotFoundError: If nothing is there (or a link points nowhere).
        CheckpointError: If it is a folder, a FIFO, a socket or a device.
    """
    path = Path(os.path.expanduser(str(path)))
    if path.exists() and not path.is_file():
        what = 'a folder' if path.is_dir() else 'not a regular file (a FIFO, socket or device)'
        raise CheckpointError(f'Checkpoint {path} is {what}; give a checkpoint file')
    if not path.is_file():
        raise FileNotFoundError(f'Checkpoint not found: {path}')
    return path


def check_zip_crc(path: str | os.PathLike) -> None:
    """Check the CRC-32 of every entry of a zip checkpoint (``torch.save``'s format).

    ``torch.load`` does not check them, so a flipped bit inside a tensor would load silently
    as a wrong weight. This reads the whole archive once (docs/deploy.md: what it costs).

    Args:
        path: The zip archive.

    Raises:
        CheckpointError: Naming the first entry whose CRC-32 does not match, or if the
            archive cannot be read (truncated, a damaged directory).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError,
            zlib.error) as err:
        raise CheckpointError(f'Checkpoint {path} is truncated or corrupt: {err}') from err
    if bad is not None:
        raise CheckpointError(f'Checkpoint {path} is corrupt: entry {bad} fails its CRC-32 '
                              'check (the file changed after it was written)')


def _warn_full_unpickling(path: Path) -> None:
    print_log(f'Loading {path} with full unpickling (--trust-checkpoint / trust=True): this can '
              'run code from the file', logger='current', level=logging.WARNING)


#: torch.save's legacy (non-zip) format starts with a pickled magic number (opcode LONG1,
#: 10 bytes, little-endian).
_LEGACY_MAGIC = b'\x8a\x0a' + (0x1950a86a20f9469cfc6c).to_bytes(10, 'little')


def _file_kind(path: Path) -> str | None:
    """``'zip'`` / ``'legacy'`` (torch.save's formats), ``'pickle'`` (other pickles) or None.

    A pickle of protocol >= 2 starts with the opcode PROTO (0x80).
    """
    if zipfile.is_zipfile(path):
        return 'zip'
    with open(path, 'rb') as f:
        head = f.read(32)
    if head[:1] != b'\x80':
        return None
    return 'legacy' if _LEGACY_MAGIC in head else 'pickle'


def _weights_only_reason(err: BaseException) -> str:
    """The one line of torch's weights-only error that says what was refused."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if 'WeightsUnpickler error' in line:
            rest = line.split('WeightsUnpickler error:', 1)[-1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else line)
    return next((line for line in lines if 'GLOBAL' in line), lines[0] if lines else '')


#: The statistics methods ``HistoryBuffer.__init__`` registers (its class dict is empty
#: until a buffer is created).
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """A ``getattr`` that only fetches a ``HistoryBuffer``'s statistics methods.

    mmengine pickles ``HistoryBuffer._statistics_methods`` (the functions
    ``HistoryBuffer.min``, ...) as ``builtins.getattr(HistoryBuffer, 'min')``. Allow-listing
    the real ``getattr`` would let a checkpoint reach any attribute of any allowed object; this
    stand-in is registered under that name instead and refuses everything else.
    """
    if ((obj is HistoryBuffer or isinstance(obj, HistoryBuffer)) and isinstance(name, str)
            and (name in _HISTORY_BUFFER_STATISTICS
                 or name in HistoryBuffer._statistics_methods)):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'weights-only load refused getattr({type(obj).__name__}, {name!r}): only '
        'HistoryBuffer statistics methods are allowed')


@functools.lru_cache(maxsize=None)
def _mmengine_safe_globals() -> tuple:
    np_core = multiarray.__name__  # numpy._core.multiarray (numpy >= 2)
    np1_core = 'numpy.core.multiarray'  # the same functions, as numpy 1.x pickles name them
    # A numpy scalar or array is rebuilt with ``dtype(...)`` whose state is then set on an
    # instance of its concrete class (``numpy.dtypes.Float64DType``): allow the numeric ones.
    numeric = '?bBhHiIlLqQefdgFDG'
    dtype_classes = tuple(dict.fromkeys(type(np.dtype(c)) for c in numeric))
    return (
        HistoryBuffer,
        (multiarray._reconstruct, f'{np_core}._reconstruct'),
        (multiarray.scalar, f'{np_core}.scalar'),
        (multiarray._reconstruct, f'{np1_core}._reconstruct'),
        (multiarray.scalar, f'{np1_core}.scalar'),
        np.ndarray,
        np.dtype,
        *dtype_classes,
        (_history_buffer_getattr, 'builtins.getattr'),
    )


@contextlib.contextmanager
def _extra_safe_globals(extra: list) -> Iterator[None]:
    """Like ``torch.serialization.safe_globals``, but leaves globals registered before alone.

    torch's context manager removes every global it was given on exit, also those that
    :func:`install_mmengine_loader` had added process-wide.
    """
    added = [g for g in extra if g not in torch.serialization.get_safe_globals()]
    torch.serialization.add_safe_globals(added)
    try:
        yield
    finally:
        if added:
            torch.serialization._weights_only_unpickler._remove_safe_globals(added)


def _allowed_names() -> set[str]:
    return {g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}'
            for g in mmengine_safe_globals()}


def mmengine_safe_globals() -> list[Callable | tuple[Callable, str]]:
    """The Python objects mmengine writes into its checkpoints, for weights-only loading.

    Found empirically (tests/test_checkpoint.py trains a tiny mmengine Runner with
    ``CheckpointHook`` and ``EMAHook`` and loads its checkpoint): ``HistoryBuffer``
    (``message_hub``), numpy's array/scalar reconstructors (under numpy 2's names and numpy
    1.x's ``numpy.core.multiarray``: files written under either load), ``ndarray``,
    ``dtype`` and the numeric dtype classes (``numpy.dtypes.Float64DType``, ...), and
    ``getattr`` restricted to a ``HistoryBuffer``'s statistics methods. Everything else in
    those files (tensors, ``OrderedDict``, ``Counter``, plain values) is allowed by torch.

    Returns:
        A list for ``torch.serialization.safe_globals`` / ``add_safe_globals``.
    """
    return list(_mmengine_safe_globals())


#: Whether checkpoints that mmengine loads (``load_from``, ``--resume``, ``init_model``, the
#: inferencers; the backbone's ``init_cfg``) may be unpickled in full and keep the config
#: source text that mmengine executes. Set by :func:`install_mmengine_loader` (the tools'
#: ``--trust-checkpoint``, ``MMREPVGG_TRUST_CHECKPOINTS=1``); read it through
#: :func:`installed_trust`.
TRUST_CHECKPOINTS = False

def install_mmengine_loader(trust: bool = False) -> None:
    """Make mmengine load local checkpoints with :func:`load_checkpoint_file`.

    mmengine 0.10.7's ``load_from_local`` calls ``torch.load`` without ``weights_only``,
    which on torch >= 2.6 means weights-only with no allow-list and fails on mmengine's
    own checkpoints. This re-registers the local scheme (prefix ``''``) with a loader that
    reads weights-only with :func:`mmengine_safe_globals` allowed and, unless trusted,
    removes the config source text that mmengine would execute (:func:`drop_config_code`).
    It also adds those globals process-wide for mmengine's other ``torch.load`` calls.

    Args:
        trust: Sets :data:`TRUST_CHECKPOINTS`. Only for files you trust.
    """
    global TRUST_CHECKPOINTS
    TRUST_CHECKPOINTS = bool(trust)
    torch.serialization.add_safe_globals(mmengine_safe_globals())
    CheckpointLoader.register_scheme(prefixes='', loader=load_for_mmengine, force=True)


def installed_trust() -> bool:
    """Whether checkpoints loaded through mmengine are trusted.

    True if :data:`TRUST_CHECKPOINTS` is set, or torch's own opt-out
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is (it applies to mmengine's loading, which
    does not pass ``weights_only``, so it keeps applying with this loader installed).
    """
    torch_opt_out = os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '0').lower() in (
        '1', 'y', 'yes', 'true')  # torch's own accepted values
    return TRUST_CHECKPOINTS or torch_opt_out


def load_for_mmengine(filename: str, map_location: Any = None) -> Any:
    """mmengine's local-file loader: :func:`load_checkpoint_file`, then, unless
    :func:`installed_trust`, :func:`drop_config_code`."""
    trust = installed_trust()
    checkpoint = load_checkpoint_file(filename, trust=trust, map_location=map_location)
    if not trust:
        drop_config_code(checkpoint)
    return checkpoint


#: Where a checkpoint may carry a config as Python source that mmengine executes
#: (``Config.fromstring(..., '.py')``): ``meta['config']`` (``Runner.resume``), and
#: ``message_hub['runtime_info']['cfg']`` / ``meta['cfg']`` (an inferencer given weights
#: but no config).
CONFIG_CODE_KEYS = (('meta', 'config'), ('meta', 'cfg'), ('message_hub', 'runtime_info', 'cfg'))


def drop_config_code(checkpoint: Any) -> list[str]:
    """Remove, in place, the config source texts that mmengine would execute.

    A checkpoint that passes the weights-only check can still hold Python code as a string
    where mmengine parses a config, and parsing a ``.py`` config runs it. Without trust,
    that text is removed, so loading never runs it: resuming works as before (mmengine
    writes the running config again), an inferencer then needs its config given.

    Args:
        checkpoint: A loaded checkpoint (anything else is left alone).

    Returns:
        The places removed, e.g. ``["meta['config']"]``.
    """
    removed = []
    for *path, key in CONFIG_CODE_KEYS:
        holder = checkpoint
        for step in path:
            holder = holder.get(step) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and key in holder:
            del holder[key]
            removed.append(path[0] + ''.join(f'[{k!r}]' for k in (*path[1:], key)))
    return removed


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


#: State-dict key (under each RepVGG block's prefix) of the geometry the block's weights
#: belong to: an int64 tensor ``(block type, stride, dilation, groups)`` that every writer
#: carries and the block checks on loading (:mod:`mmrepvgg.models.block`). Files without
#: it (older ones, other implementations' weights) load as before: it is never required.
GEOMETRY_KEY = 'rep_geometry'


def is_optional_key(key: str) -> bool:
    """Whether a state-dict key may be absent from a file under strict loading (a block's
    :data:`GEOMETRY_KEY`)."""
    return key == GEOMETRY_KEY or key.endswith('.' + GEOMETRY_KEY)


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str = '',
                     skip: tuple[str, ...] = ()) -> None:
    """Raise if ``state`` does not fit ``model`` key for key and shape for shape.

    A block's :data:`GEOMETRY_KEY` may be missing (files written before it existed).

    Args:
        model: The module to load into.
        state: The state dict.
        source: Where it came from, for the message.
        skip: Key prefixes left out of the comparison (on both sides).

    Raises:
        CheckpointError: Listing every missing, unexpected and mis-shaped key.
    """
    expected = {k: v for k, v in model.state_dict().items() if not (skip and k.startswith(skip))}
    state = {k: v for k, v in state.items() if not (skip and k.startswith(skip))}
    missing = sorted(k for k in set(expected) - set(state) if not is_optional_key(k))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}'
                    for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        lines = [f'State dict{" from " + source if source else ""} does not fit '
                 f'{type(model).__name__}:']
        for title, keys in (('missing', missing), ('unexpected', unexpected),
                            ('shape mismatch', shapes)):
            if keys:
                more = f', ... ({len(keys)} in all)' if len(keys) > 8 else ''
                shown = ', '.join(keys[:8]) + more
                lines.append(f'  {title} ({len(keys)}): {shown}')
        raise CheckpointError('\n'.join(lines))


def is_deployed_state(state: Mapping[str, Any]) -> bool:
    """Whether a state dict holds folded RepVGG blocks (``*.branch_reparam.*`` keys)."""
    return any('.branch_reparam.' in key or key.startswith('branch_reparam.') for key in state)


def load_state_dict_strict(model: nn.Module, state: Mapping[str, Tensor], source: str = '') -> None:
    """Load ``state`` into ``model`` after :func:`check_state_dict`; nothing is loaded on error."""
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True)


def save_checkpoint_atomic(obj: Any, path: str | os.PathLike, force: bool = False,
                           inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """``torch.save(obj)`` through :func:`~mmrepvgg.utils.fileio.write_atomic` (whose
    ``force`` / ``inputs`` checks apply); returns ``path``. Keep ``obj`` to tensors and
    plain values so that it loads weights-only."""
    return write_atomic(path, lambda tmp: torch.save(obj, str(tmp)), force=force, inputs=inputs)
