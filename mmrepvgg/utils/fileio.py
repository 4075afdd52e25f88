"""Writing files safely: the runtime's one atomic writer, and the demos' output folders.

:func:`write_atomic` (and :func:`write_bytes_atomic`, :func:`write_json_atomic`,
``mmrepvgg.checkpoint.save_checkpoint_atomic`` for ``torch.save``) writes all of a file or
nothing, never over an input and never over an existing file without ``force``;
:func:`check_output_path` / :func:`check_output_paths` fail before long work. They live in
:mod:`mmrepvgg_runtime.files` (the torch-free layer below the package), so that the package
and ``tools/infer_onnx.py`` write files one way.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from mmrepvgg_runtime.files import (check_output_path, check_output_paths, sigterm_unwinds,
                                    write_atomic, write_bytes_atomic, write_json_atomic)

__all__ = ['check_output_path', 'check_output_paths', 'write_atomic', 'write_bytes_atomic',
           'write_json_atomic', 'sigterm_unwinds', 'fresh_work_dir', 'DEMO_MARKER']

DEMO_MARKER = '.mmrepvgg-demo'


def fresh_work_dir(work_dir: str | Path, what: str = 'a demo') -> Path:
    """Empty an output folder, refusing to delete anything mmrepvgg did not make.

    A folder is cleared only if it holds the marker file a previous run left; an existing,
    non-empty folder without it is an error, so ``--work-dir`` (or a dataset folder) never
    wipes data. A folder given through a symbolic link is emptied where the link points.

    Args:
        work_dir: The output folder.
        what: Who may have made the folder, for the error message.

    Returns:
        The (now empty, marked) folder.

    Raises:
        FileExistsError: The folder exists, is not empty and was not made by mmrepvgg.
        NotADirectoryError: It is a file.
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
