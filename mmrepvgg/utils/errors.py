"""Every error mmrepvgg raises on purpose, and how a tool reports one.

The classes here mean *bad input*, not a bug: a file that is missing, unsafe, corrupt or
does not fit the model, an output that must not be written, weights that cannot be folded
or verified, a model that cannot be exported or quantized as asked, a missing optional
package, a config that builds nothing. :func:`user_errors` lists them for
:func:`mmrepvgg.cli.run_tool`, which prints one ``error: <message>`` line for each.
"""
from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the model."""


class SameFileError(ValueError):
    """The output file is one of the input files (the write would destroy the input)."""


class FoldError(ValueError):
    """A conv and BN cannot be folded: no running statistics, non-finite values, var + eps <= 0.

    Folding such a layer would write NaN or Inf into the plain kernel.
    """


class VerificationError(RuntimeError):
    """The folded model is not right: non-finite outputs or weights, or outputs that differ."""


class MissingDependencyError(ImportError):
    """An optional package (``requirements/deploy.txt``: onnx, onnxruntime, ...) is not
    installed."""


class ExportError(RuntimeError):
    """The model cannot be exported as asked: the exporter fails on it, ``onnx.checker``
    rejects the graph, or the input size does not suit the model or the data."""


class InputSizeError(ExportError, ValueError):
    """An input size the exported graph cannot take (or the data does not give it)."""


class RuntimeMetaError(ExportError):
    """The config's test behaviour (or the requested input size) has no exact equivalent in
    ``mmrepvgg_runtime``: the exported file could not be run as the config tests the model."""


class PoolShapeError(InputSizeError):
    """The adaptive pools cannot be exported at the requested input size."""


class QuantizationError(ValueError):
    """A quantization request the graph cannot meet: a layer to keep in float that it does
    not have, or ``keep_float`` without the sensitivity ranking that picks the layers."""


class ConfigError(ValueError):
    """The config (with its ``--cfg-options``) does not build a valid runner or model."""


class PretrainedNotFoundError(FileNotFoundError):
    """A pretrained file named by the model's ``init_cfg`` does not exist."""


class DataNotFoundError(FileNotFoundError):
    """A dataset folder named by the config does not exist."""


class DataError(ValueError):
    """A dataset file is corrupt or malformed (e.g. a Cityscapes polygon file that is not
    JSON)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean bad input rather than a bug: reported as one line.

    Files (missing, unsafe, corrupt, not fitting the model, an output that exists, is a
    directory or is the input), weights that cannot be folded or verified, a model that
    cannot be exported or quantized as asked, a missing optional package (onnx,
    onnxruntime), :class:`ConfigError` (a config or ``--cfg-options`` that builds no
    valid model, dataset or runner) and :class:`DataError` (a malformed dataset file).
    """
    return (CheckpointError, FileNotFoundError, FileExistsError, IsADirectoryError,
            NotADirectoryError, PermissionError, SameFileError, FoldError, ConfigError,
            VerificationError, ExportError, MissingDependencyError, QuantizationError,
            DataError)


def error_message(err: BaseException) -> str:
    """The text of an error (a ``KeyError``'s message without the quotes ``str`` adds)."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]
    return str(err) or type(err).__name__
