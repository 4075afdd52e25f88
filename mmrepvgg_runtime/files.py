"""Input files and the one atomic writer, shared by the runtime and the ``mmrepvgg`` package.

Standard library only. Every file either writes goes through :func:`write_atomic`:

- the output is checked first (:func:`check_output_path`): not a directory, not under a
  file, not an input (the same file by inode: symbolic and hard links included, whatever
  ``force`` says), not an existing file without ``force``;
- the content goes to a temporary file beside it, created with the umask's mode (0644
  under umask 022) and synced to disk, then linked into place (a file that appeared
  meanwhile is never replaced) or, with ``force``, renamed over the old one: a reader
  never sees half a file;
- any error, Ctrl-C or SIGTERM removes the temporary file (SIGTERM is then re-delivered,
  so the process still dies of it); a later write of the same file removes what a killed
  (``kill -9``) writer on this host left.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .errors import RuntimeInputError, SameFileError

#: File name extensions of the images a folder is searched for.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')



def collect_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders searched recursively.

    Args:
        inputs: Image files and folders.

    Returns:
        Files, in the order given (each folder's images sorted by path), without repeats.

    Raises:
        FileNotFoundError: An input does not exist.
        RuntimeInputError: A folder holds no images, or no input was given.
    """
    out: list[Path] = []
    for raw in inputs:
        path = Path(os.path.expanduser(os.fspath(raw)))
        if path.is_dir():
            found = sorted(p for p in path.rglob('*')
                           if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise RuntimeInputError(f'No images ({", ".join(IMAGE_EXTENSIONS)}) in {path}')
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f'No such image or folder: {path}')
    if not out:
        raise RuntimeInputError('No input images given')
    seen: set[str] = set()
    return [p for p in out if not (os.path.realpath(p) in seen or seen.add(os.path.realpath(p)))]


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (also through links; a missing file is no other)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


def check_output_path(path: str | os.PathLike, force: bool = False,
                      inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Fail early (before long work) if ``path`` cannot or must not be written.

    Args:
        path: The destination file.
        force: Whether an existing file may be replaced.
        inputs: Files the output is made from: it may never be one of them.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        IsADirectoryError: ``path`` is a directory.
        NotADirectoryError: A parent of ``path`` is a file.
        PermissionError: The nearest existing folder above it is not writable.
        SameFileError: ``path`` is one of ``inputs``.
        FileExistsError: ``path`` exists (or is a dangling link) and ``force`` is False.
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    if path.is_dir():
        raise IsADirectoryError(f'Output {path} is a directory; give a file name')
    if path.is_symlink() and not path.exists():
        raise FileExistsError(f'Output {path} is a link to {os.readlink(path)}, which does not '
                              'exist: writing would replace the link, not make its target')
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir():
        raise NotADirectoryError(f'Output {path}: {parent} is a file, not a directory')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f'Output {path}: the folder {parent} is not writable')
    if path.exists():
        source = next((s for s in inputs if _same_file(path, os.path.expanduser(s))), None)
        if source is not None:
            raise SameFileError(f'Output {path} is the input {source}: writing it would destroy '
                                'the input (--force does not change this); choose another output')
        if not force:
            raise FileExistsError(f'{path} exists; pass --force (force=True) to overwrite it')
    return path


def check_output_paths(paths: Sequence[str | os.PathLike | None], force: bool = False,
                       inputs: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """:func:`check_output_path` for every output of one run; no two may be the same file.

    Args:
        paths: The destinations (None entries are skipped).
        force: Whether existing files may be replaced.
        inputs: Files the outputs are made from; no output may be one of them.

    Returns:
        The checked destinations, None entries left out.

    Raises:
        SameFileError: An output is an input, or two outputs are the same file.
        FileExistsError, IsADirectoryError, NotADirectoryError: As :func:`check_output_path`.
    """
    checked: list[Path] = []
    for raw in paths:
        if raw is None:
            continue
        path = check_output_path(raw, force, inputs)
        other = next((o for o in checked if _same_file(path, o)), None)
        if other is not None:
            raise SameFileError(f'Outputs {other} and {path} are the same file: one would '
                                'overwrite the other; choose different output files')
        checked.append(path)
    return checked


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _remove_stale_temp_files(path: Path) -> None:
    """Remove the temporary files of ``path`` whose writer (on this host) is gone."""
    pattern = re.compile(rf'\.{re.escape(path.name)}\.([0-9a-f]{{8}})-(\d+)-[0-9a-f]{{8}}\.tmp')
    for candidate in path.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if (match is None or match[1] != _host_tag() or candidate.is_symlink()
                or not candidate.is_file()):
            continue
        try:
            os.kill(int(match[2]), 0)
            continue  # the writer is alive (this process included)
        except PermissionError:
            continue  # alive, another user's
        except ProcessLookupError:
            pass
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
            logging.getLogger(__name__).warning('removed %s, left by an interrupted write',
                                                candidate)


class _Interrupted(BaseException):
    """SIGTERM during a write (re-delivered once the temporary file is removed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise() -> Iterator[list[int]]:
    """While writing, SIGINT and SIGTERM raise (so the temporary file is removed).

    A handler installed before is called as usual (Ctrl-C raises ``KeyboardInterrupt``); a
    default SIGTERM raises :class:`_Interrupted`. The list yielded records the signals, so
    that an error a library makes of the interruption (torch reports one raised inside its
    writer as ``enforce fail``) is reported as the interruption. Main thread only.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        if callable(previous[signum]):
            previous[signum](signum, frame)
        elif previous[signum] != signal.SIG_IGN:
            raise _Interrupted(signum)

    for signum in previous:
        signal.signal(signum, handler)
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)


def _move_into_place(tmp: Path, path: Path, force: bool) -> None:
    """Give ``tmp`` the name ``path``: replacing it with ``force``, else never."""
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic, and fails if path exists
    except FileExistsError:
        raise FileExistsError(f'{path} was created by someone else while this was written; it '
                              'was left as it is (pass --force to overwrite it)') from None
    except OSError:  # a file system without hard links: check, then rename
        if path.exists():
            raise FileExistsError(f'{path} exists; pass --force to overwrite it') from None
        os.rename(tmp, path)


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], Any], force: bool = False,
                 inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Write a file through ``writer``: all of it or nothing, never over an input or (without
    ``force``) an existing file (see the module docstring for how).

    Args:
        path: The destination file.
        writer: Called with the temporary file's path (it exists, empty); writes the content
            there (or replaces it with a finished file of the same folder).
        force: Replace an existing file.
        inputs: Files the content is made from; ``path`` may never be one of them.

    Returns:
        The destination path.

    Raises:
        FileExistsError, SameFileError, IsADirectoryError, NotADirectoryError: As
            :func:`check_output_path` (checked before and after ``writer``).
        KeyboardInterrupt: Ctrl-C during the write (nothing written).
    """
    path = check_output_path(path, force, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(path)
    tmp = path.parent / f'.{path.name}.{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.tmp'
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mode: the umask's
    terminated = None
    try:
        with _signals_raise() as received:
            try:
                writer(tmp)
                with open(tmp, 'rb+') as f:
                    os.fsync(f.fileno())
            except Exception as err:
                if signal.SIGINT in received:  # the library turned Ctrl-C into an error
                    raise KeyboardInterrupt from err
                if received:
                    raise _Interrupted(received[0]) from err
                raise
            check_output_path(path, True, inputs)  # again: things change during a long write
            _move_into_place(tmp, path, force)
    except _Interrupted as err:
        terminated = err.signum
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if terminated is not None:  # cleaned up: now die of the signal as the default would
        signal.signal(terminated, signal.SIG_DFL)
        os.kill(os.getpid(), terminated)
        raise SystemExit(128 + terminated)  # pragma: no cover  (the signal ended the process)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes | str, force: bool = False,
                       inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Bytes (or text, as UTF-8) through :func:`write_atomic`: ONNX models, reports.

    Args:
        path: The destination.
        data: The content.
        force: Overwrite an existing file.
        inputs: Files ``data`` was made from; ``path`` may never be one of them.
    """
    content = data.encode() if isinstance(data, str) else bytes(data)
    return write_atomic(path, lambda tmp: tmp.write_bytes(content), force, inputs)


def _finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None (JSON null)."""
    if isinstance(value, float):
        return value if abs(value) != float('inf') and value == value else None
    if isinstance(value, Mapping):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike, obj: Any, force: bool = False,
                      inputs: Sequence[str | os.PathLike] = (), indent: int = 1) -> Path:
    """``obj`` as strict JSON through :func:`write_atomic` (a non-finite float, which
    Python would write as the non-JSON ``Infinity`` or ``NaN``, becomes null).

    Args:
        path: The destination.
        obj: Plain Python values (dicts, lists, str, numbers, bools, None).
        force: Overwrite an existing file.
        inputs: Files ``obj`` was made from; ``path`` may never be one of them.
        indent: JSON indentation.
    """
    text = json.dumps(_finite_json(obj), indent=indent, allow_nan=False) + '\n'
    return write_bytes_atomic(path, text, force, inputs)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Inside, SIGTERM raises ``SystemExit(143)``: ``with`` and ``finally`` blocks unwind and
    remove their temporary files, as after Ctrl-C. Main thread only (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
