"""Optional dependencies (``requirements/deploy.txt``), imported when first needed."""
from __future__ import annotations

import importlib
from typing import Any

from .errors import MissingDependencyError

#: Packages the ONNX path needs, with the version ``requirements/deploy.txt`` pins.
_PACKAGES = {'onnx': 'onnx==1.23.2', 'onnxruntime': 'onnxruntime==1.31.1',
             'onnxscript': 'onnxscript==0.7.2'}


def require(name: str) -> Any:
    """Import an optional deploy package, or say in one line how to install it.

    Only the package itself missing is reported so; an installed package that fails to
    import (a broken install) raises its own error, with its traceback.

    Args:
        name: ``'onnx'``, ``'onnxruntime'`` or ``'onnxscript'``.

    Returns:
        The module.

    Raises:
        MissingDependencyError: If the package is not installed.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        raise MissingDependencyError(
            f'{name} is not installed: pip install {_PACKAGES.get(name, name)} '
            '(requirements/deploy.txt; make env installs it)') from None
