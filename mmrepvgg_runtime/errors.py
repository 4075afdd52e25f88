"""The error base, the one-line report and the missing-package check shared by the runtime
and the ``mmrepvgg`` package (which sits above it and imports these).

Standard library only, so that a missing numpy or OpenCV can itself be reported in one line.
"""
from __future__ import annotations

import importlib
from typing import Any


class UserError(Exception):
    """Bad input rather than a bug: a tool reports it as one ``error: <message>`` line."""


class RuntimeInputError(UserError, ValueError):
    """Bad input: an image that cannot be read, a size the model cannot take, a bad option."""


class MetadataError(RuntimeInputError):
    """The ONNX file has no (or malformed) runtime metadata: it cannot be run as exported."""


class ModelLoadError(RuntimeInputError):
    """ONNX Runtime cannot load the model file, or the graph is not one the runtime runs."""


class SameFileError(RuntimeInputError):
    """An output would be written over an input (``--force`` does not change this)."""


class MissingDependencyError(UserError, ImportError):
    """A package (numpy, opencv, onnxruntime, onnx, ...) is not installed."""


#: Errors that mean bad input rather than a bug: tools print them as ``error: ...``.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, IsADirectoryError,
               NotADirectoryError, PermissionError)


def error_message(err: BaseException, first_line: bool = False) -> str:
    """The text of an error, for an ``error:`` line.

    Args:
        err: The error.
        first_line: Only its first non-empty line (for messages of other libraries, which
            may hold a traceback or a dump).

    Returns:
        The message (a ``KeyError``'s without the quotes ``str`` adds), else the type's name.
    """
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]
    else:
        text = str(err).strip()
    if first_line:
        text = next((line.strip() for line in text.splitlines() if line.strip()), '')
    return text or type(err).__name__


def require(name: str, install: str) -> Any:
    """Import ``name``, or say in one line how to install it.

    Only the package itself missing is reported so; an installed package that fails to
    import (a broken install) raises its own error, with its traceback.

    Args:
        name: The module.
        install: What follows ``pip install`` in the message.

    Raises:
        MissingDependencyError: ``name`` is not installed.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        raise MissingDependencyError(f'{name} is not installed: pip install {install}') from None
