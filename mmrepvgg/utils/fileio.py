"""Writing files safely: atomic, never over an input, never over a file without ``force``.

The one writer behind every file mmrepvgg writes (checkpoints, ONNX models, reports):
:func:`write_atomic` and its wrappers :func:`write_bytes_atomic` and
:func:`write_json_atomic` (``mmrepvgg.checkpoint.save_checkpoint_atomic`` for
``torch.save``); :func:`check_output_path` / :func:`check_output_paths` to fail before long
work; :func:`fresh_work_dir` for output folders.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from mmengine.logging import print_log

from .errors import SameFileError

#: Temporary files are ``.<name>.<host>-<pid>-<random>.tmp`` beside the destination: the
#: writer's host tag and pid tell a later run whether the writer is gone (see
#: :func:`remove_stale_temp_files`).
_TMP_RE = r'\.{name}\.(?P<host>[0-9a-f]{{8}})-(?P<pid>\d+)-[0-9a-f]{{8}}\.tmp'


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _temp_name(name: str) -> str:
    return f'.{name}.{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.tmp'


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files that an interrupted write of ``path`` left behind.

    Only files of this module's exact naming for this destination
    (``.<name>.<host>-<pid>-<random>.tmp``) whose writer ran on this host and is no longer
    alive are removed (a ``kill -9`` leaves them; any other end of a write removes its own).

    Args:
        path: The destination whose temporary files to look for.

    Returns:
        The files removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(_TMP_RE.format(name=re.escape(path.name)))
    host, removed = _host_tag(), []
    for candidate in path.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if (match is None or match['host'] != host or int(match['pid']) == os.getpid()
                or _pid_alive(int(match['pid'])) or not candidate.is_file()
                or candidate.is_symlink()):
            continue
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
            removed.append(candidate)
    if removed:
        print_log(f'Removed {len(removed)} temporary file(s) of an interrupted write of {path}: '
                  + ', '.join(p.name for p in removed), logger='current', level=logging.WARNING)
    return removed


def check_output_path(path: str | os.PathLike, force: bool = False,
                      inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Fail early if ``path`` cannot or must not be written.

    Call it before long work (a conversion) so a bad output path fails at once;
    :func:`write_atomic` checks again when it writes.

    Args:
        path: The destination file.
        force: Whether an existing file may be replaced.
        inputs: Files the output is made from: the output may never be one of them (also
            through symbolic or hard links), whatever ``force`` says.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        IsADirectoryError: If ``path`` is a directory.
        NotADirectoryError: If a parent of ``path`` is a file.
        PermissionError: If the folder it goes into (the nearest one that exists) is not
            writable.
        SameFileError: If ``path`` is one of ``inputs``.
        FileExistsError: If ``path`` exists and ``force`` is False, or is a link to a file
            that does not exist (a dangling link).
    """
    path = Path(os.path.expanduser(str(path)))
    if path.is_dir():
        raise IsADirectoryError(f'Output {path} is a directory; give a file name')
    if path.is_symlink() and not path.exists():
        raise FileExistsError(f'Output {path} is a link to {os.readlink(path)}, which does not '
                              'exist: writing would replace the link, not make its target; '
                              'remove the link or choose another output file')
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f'Output {path}: {parent} is a file, not a directory')
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(f'Output {path}: the folder {parent} is not writable')
            break
    if path.exists():
        for source in inputs:
            with contextlib.suppress(OSError):
                if os.path.samefile(path, os.path.expanduser(str(source))):
                    raise SameFileError(f'Output {path} is the input {source}: writing it would '
                                        'destroy the input (--force does not change this); '
                                        'choose another output file')
        if not force:
            raise FileExistsError(f'{path} exists; pass --force (force=True) to overwrite it')
    return path


def check_output_paths(paths: Sequence[str | os.PathLike | None], force: bool = False,
                       inputs: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """:func:`check_output_path` for every output of one run; no two may be the same file.

    A tool that writes several files (a model and its json and markdown reports) calls it
    before its long work, so that an output that may not be written, or two outputs that
    would overwrite each other (``--report a.onnx`` beside the model ``a.onnx``), fail at
    once.

    Args:
        paths: The destinations (None entries are skipped).
        force: Whether existing files may be replaced.
        inputs: Files the outputs are made from; no output may be one of them.

    Returns:
        The checked destinations, None entries left out.

    Raises:
        SameFileError: If an output is an input, or two outputs are the same file.
        FileExistsError, IsADirectoryError, NotADirectoryError: As :func:`check_output_path`.
    """
    checked: list[Path] = []
    for raw in paths:
        if raw is None:
            continue
        path = check_output_path(raw, force, inputs)
        for other in checked:
            if _same_destination(path, other):
                raise SameFileError(f'Outputs {other} and {path} are the same file: one would '
                                    'overwrite the other; choose different output files')
        checked.append(path)
    return checked


def _same_destination(a: Path, b: Path) -> bool:
    """Whether two output paths name one file (also through links, existing or not)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


class _Interrupted(BaseException):
    """Raised by the signal handler of :func:`write_atomic` (SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise() -> Iterator[list[int]]:
    """While writing, turn SIGINT/SIGTERM into exceptions so the temp file is removed.

    SIGINT raises ``KeyboardInterrupt`` as usual; SIGTERM (whose default action kills the
    process without cleanup) raises :class:`_Interrupted`, re-delivered after cleanup. The
    list yielded records the signals received, so that an error a library makes of the
    interruption (torch reports one inside its writer as ``enforce fail at
    inline_container.cc``) can be reported as the interruption it is. Only in the main
    thread (Python delivers signals there); elsewhere nothing changes.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        old = previous.get(signum)
        if callable(old) and old is not handler:
            old(signum, frame)
            return
        if old == signal.SIG_IGN:
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise _Interrupted(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def write_atomic(path: str | os.PathLike,
                 writer: Callable[[Path], Any],
                 force: bool = False,
                 inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Write a file atomically through ``writer``: all of it or nothing, never clobbering.

    The one implementation behind every file the tools write (checkpoints, exports):

    1. :func:`check_output_path` (directory, parent a file, output = an input, exists
       without ``force``), and removal of temporary files that a killed earlier write of
       ``path`` left (:func:`remove_stale_temp_files`).
    2. ``writer(tmp)`` writes a temporary file beside ``path``, created with the mode
       ``0o666 & ~umask`` like any file a program opens (so ``0644`` under umask 022).
       SIGINT and SIGTERM during the write remove it (SIGTERM is then re-delivered); any
       error removes it too.
    3. The checks are repeated, then the file is moved into place: without ``force`` with
       ``os.link``, which fails if ``path`` appeared meanwhile (another writer), so an
       existing file is never replaced; with ``force`` with ``os.replace``.

    Args:
        path: The destination file.
        writer: Called with the temporary file's path (the file exists and is empty); it
            writes the content there.
        force: Replace an existing file.
        inputs: Files the content is made from; ``path`` may never be one of them.

    Returns:
        The destination path.

    Raises:
        FileExistsError: If ``path`` exists (or appears during the write) and ``force`` is
            False.
        SameFileError: If ``path`` is one of ``inputs``.
        IsADirectoryError, NotADirectoryError: If ``path`` cannot be a file.
        KeyboardInterrupt: On SIGINT during the write (nothing written).
    """
    path = check_output_path(path, force, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    mode = 0o666 & ~_umask()
    while True:
        tmp = path.parent / _temp_name(path.name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:  # pragma: no cover  (a 32-bit random name collided)
            continue
        os.close(fd)
        break
    terminated = None
    try:
        with _signals_raise() as received:
            try:
                writer(tmp)
                with open(tmp, 'rb+') as f:
                    os.fsync(f.fileno())
            except (KeyboardInterrupt, _Interrupted):
                raise
            except Exception as err:
                if received:  # the library turned the interruption into an error
                    if signal.SIGINT in received:
                        raise KeyboardInterrupt from err
                    raise _Interrupted(received[0]) from err
                raise
            # again (things change during a long write); an existing file is refused by
            # the link below, atomically
            check_output_path(path, True, inputs)
            if force:
                os.replace(tmp, path)
            else:
                _link_no_clobber(tmp, path)
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


def _link_no_clobber(tmp: Path, path: Path) -> None:
    """Give ``tmp``'s content the name ``path`` unless ``path`` exists, atomically."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f'{path} was created by someone else while this was written; it '
                              'was left as it is (pass --force to overwrite it)') from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                             errno.ENOSYS, errno.EACCES):
            raise
        # a file system without hard links: check and rename (a narrow race remains)
        if path.exists():
            raise FileExistsError(f'{path} was created by someone else while this was '
                                  'written; it was left as it is (pass --force to overwrite '
                                  'it)') from None
        os.rename(tmp, path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes | str, force: bool = False,
                       inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Write bytes (or text, as UTF-8) through :func:`write_atomic` (see there for the
    guarantees): ONNX models, reports.

    Args:
        path: The destination.
        data: The content.
        force: Overwrite an existing file.
        inputs: Files ``data`` was made from; ``path`` may never be one of them.

    Returns:
        The destination path.

    Raises:
        FileExistsError: If ``path`` exists and ``force`` is False.
        SameFileError: If ``path`` is one of ``inputs``.
    """
    content = data.encode() if isinstance(data, str) else bytes(data)
    return write_atomic(path, lambda tmp: tmp.write_bytes(content), force=force, inputs=inputs)


def _finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None (JSON null)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float('inf') else None
    if isinstance(value, Mapping):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike, obj: Any, force: bool = False,
                      inputs: Sequence[str | os.PathLike] = (), indent: int = 1) -> Path:
    """Write ``obj`` as strict JSON through :func:`write_atomic`: the reports of the tools.

    Python's ``json`` writes ``Infinity`` and ``NaN``, which are not JSON (other readers
    refuse the file); a non-finite float (an exact SQNR of inf dB, say) is written as null.

    Args:
        path: The destination.
        obj: Plain Python values (dicts, lists, str, numbers, bools, None).
        force: Overwrite an existing file.
        inputs: Files ``obj`` was made from; ``path`` may never be one of them.
        indent: JSON indentation.

    Returns:
        The destination path.
    """
    text = json.dumps(_finite_json(obj), indent=indent, allow_nan=False) + '\n'
    return write_bytes_atomic(path, text, force=force, inputs=inputs)


DEMO_MARKER = '.mmrepvgg-demo'


def fresh_work_dir(work_dir: str | Path, what: str = 'a demo') -> Path:
    """Empty an output folder, refusing to delete anything mmrepvgg did not make.

    A folder is cleared only if it holds the marker file a previous run left; an existing,
    non-empty folder without it is an error, so ``--work-dir`` (or a dataset folder) never
    wipes or overwrites data. The demos and ``tools/make_tiny_cityscapes.py`` use this rule.
    A folder given through a symbolic link is emptied where the link points (the link stays).

    Args:
        work_dir: The output folder.
        what: Who may have made the folder, for the error message.

    Returns:
        The (now empty, marked) folder.

    Raises:
        FileExistsError: If the folder exists, is not empty and was not made by mmrepvgg.
        NotADirectoryError: If it is a file.
    """
    work_dir = Path(work_dir)
    if work_dir.exists() and not work_dir.is_dir():
        raise NotADirectoryError(f'{work_dir} is a file, not a folder')
    if work_dir.exists() and any(work_dir.iterdir()):
        if not (work_dir / DEMO_MARKER).is_file():
            raise FileExistsError(f'{work_dir} exists and was not made by {what}; choose '
                                  'another folder or remove it yourself')
        for child in work_dir.iterdir():  # the contents: work_dir may be a link to a folder
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / DEMO_MARKER).touch()
    return work_dir


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Inside, SIGTERM raises ``SystemExit(143)``: ``with`` blocks unwind and remove their
    temporary files, as after Ctrl-C. Only in the main thread (elsewhere: no change)."""
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
