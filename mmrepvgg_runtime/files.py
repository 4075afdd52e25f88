"""Inputs, outputs and atomic writes of the runtime (no torch, no mmengine).

- :func:`collect_images`: image files and folders (searched recursively, sorted) -> files;
- :func:`check_outputs`: every output checked before any work (exists without ``force``,
  a directory, an input, two outputs the same file);
- :func:`write_atomic`: a temporary file beside the destination, then linked into place
  (never replacing a file that appeared meanwhile) or, with ``force``, ``os.replace``: a
  reader never sees half a file; the temporary file is removed on any error or interrupt.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ._deps import cv2, np
from .errors import RuntimeInputError, SameFileError
from .image import IMAGE_EXTENSIONS


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
    seen, unique = set(), []
    for path in out:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def check_readable(images: Iterable[Path]) -> None:
    """Fail before any work if an input is not a format OpenCV reads (by its header).

    Raises:
        RuntimeInputError: Naming the first such file.
    """
    for path in images:
        if not cv2.haveImageReader(os.fspath(path)):
            raise RuntimeInputError(f'{path} is not an image OpenCV can read')


def segmentation_outputs(images: Sequence[Path], out_dir: Path,
                         overlay: bool = True) -> list[tuple[Path, Path | None]]:
    """``(label map, overlay)`` paths per image: ``DIR/<stem>.png``, ``DIR/<stem>_overlay.jpg``.

    Raises:
        RuntimeInputError: Two inputs would write the same output (same file name stem).
    """
    plans, owner = [], {}
    for img in images:
        paths = (out_dir / f'{img.stem}.png', out_dir / f'{img.stem}_overlay.jpg' if overlay
                 else None)
        for path in paths:
            if path is None:
                continue
            if path.name in owner:
                raise RuntimeInputError(f'{owner[path.name]} and {img} would both write '
                                        f'{path}: give inputs with different file names')
            owner[path.name] = img
        plans.append(paths)
    return plans


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


def check_outputs(paths: Sequence[Path], force: bool, inputs: Sequence[Path]) -> None:
    """Check every output before any work.

    Raises:
        SameFileError: An output is an input (whatever ``force`` says).
        IsADirectoryError: An output is a directory.
        FileExistsError: An output exists and ``force`` is False (the first few named).
    """
    exists = []
    real_inputs = {os.path.realpath(p) for p in inputs}
    for path in paths:
        if os.path.realpath(path) in real_inputs or (
                path.exists() and any(_same_file(path, i) for i in inputs)):
            raise SameFileError(f'Output {path} is an input: writing it would destroy the input '
                                '(--force does not change this); choose another --out-dir')
        if path.is_dir():
            raise IsADirectoryError(f'Output {path} is a directory')
        if path.exists():
            exists.append(path)
    if exists and not force:
        more = f' and {len(exists) - 1} more' if len(exists) > 1 else ''
        raise FileExistsError(f'{exists[0]}{more} exist; pass --force to overwrite')


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` created if missing.

    Raises:
        NotADirectoryError: It (or a parent) is a file.
    """
    path = Path(os.path.expanduser(os.fspath(out_dir)))
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f'--out-dir {path} is a file, not a directory')
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(f'--out-dir {path}: a parent is a file') from None
    return path


def write_atomic(path: Path, write: Callable[[Path], Any], force: bool = False) -> Path:
    """Write ``path`` through ``write(tmp)`` atomically.

    Args:
        path: The destination.
        write: Writes the content to the temporary file it is given.
        force: Replace an existing file; else an existing (or meanwhile created) file fails.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is False.
    """
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f'{path} exists; pass --force to overwrite') from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def write_image(path: Path, img: np.ndarray, force: bool = False) -> Path:
    """Encode ``img`` by the extension of ``path`` (PNG lossless) and write it atomically."""
    ok, buf = cv2.imencode(path.suffix, img)
    if not ok:  # pragma: no cover  (PNG / JPEG of uint8 or uint16 always encode)
        raise RuntimeInputError(f'Cannot encode {path}')
    return write_atomic(path, lambda tmp: tmp.write_bytes(buf.tobytes()), force)


def write_json(path: Path, data: Any, force: bool = False) -> Path:
    """``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2) + '\n'
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding='utf-8'), force)
