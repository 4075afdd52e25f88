"""Every error mmrepvgg raises on purpose, and how a tool reports one.

Each class means *bad input*, not a bug, and derives from the runtime's
:class:`~mmrepvgg_runtime.errors.UserError`: one :data:`~mmrepvgg_runtime.errors.USER_ERRORS`
and one :func:`error_message` serve the package's tools and ``tools/infer_onnx.py``, which
print ``error: <message>`` for each. ``SameFileError`` and ``MissingDependencyError`` are the
runtime's own classes.
"""
from __future__ import annotations

from mmrepvgg_runtime.errors import (USER_ERRORS, MissingDependencyError, SameFileError,
                                     UserError, error_message)

__all__ = ['CheckpointError', 'FoldError', 'VerificationError', 'ExportError', 'ConfigError',
           'DataError', 'SameFileError', 'MissingDependencyError', 'UserError', 'user_errors',
           'error_message']


class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be read or does not fit the model."""


class FoldError(UserError, ValueError):
    """A conv and BN cannot be folded (no running statistics, non-finite values,
    var + eps <= 0): folding would write NaN or Inf into the plain kernel."""


class VerificationError(UserError, RuntimeError):
    """The folded model is not right: non-finite outputs or weights, or outputs that differ."""


class ExportError(UserError, RuntimeError):
    """The model cannot be exported or quantized as asked: the exporter fails on it,
    ``onnx.checker`` rejects the graph, the input size does not suit the model or the data
    (or the adaptive pools), the config's test behaviour has no exact runtime equivalent, or
    a quantization request the graph cannot meet."""


class ConfigError(UserError, ValueError):
    """The config (with its ``--cfg-options``) does not build a valid runner or model."""


class DataError(UserError, ValueError):
    """A dataset or calibration file is corrupt or malformed (a Cityscapes polygon file that
    is not JSON, a file named ``.png`` that no decoder reads). A missing folder or file is
    a ``FileNotFoundError``."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean bad input rather than a bug, reported as one line: every
    :class:`UserError` and the standard file errors (missing, existing, a directory, ...)."""
    return USER_ERRORS
