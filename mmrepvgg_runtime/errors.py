"""The errors of the torch-free runtime: each one is reported by the CLI as one line."""
from __future__ import annotations


class RuntimeInputError(ValueError):
    """Bad input: an image that cannot be read, a size the model cannot take, a bad option."""


class MetadataError(RuntimeInputError):
    """The ONNX file has no (or malformed) runtime metadata: it cannot be run as exported."""


class ModelLoadError(RuntimeInputError):
    """ONNX Runtime cannot load the model file."""


class SameFileError(RuntimeInputError):
    """An output would be written over an input (``--force`` does not change this)."""


class MissingDependencyError(ImportError):
    """onnxruntime, numpy or opencv is not installed."""


#: Errors that mean bad input rather than a bug: the CLI prints them as ``error: ...``.
USER_ERRORS = (RuntimeInputError, MissingDependencyError, FileNotFoundError, FileExistsError,
               IsADirectoryError, NotADirectoryError, PermissionError)


def error_message(err: BaseException) -> str:
    """The text of an error, on one line (the first non-empty line of its message)."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]
    text = str(err)
    return next((line.strip() for line in text.splitlines() if line.strip()),
                type(err).__name__)
