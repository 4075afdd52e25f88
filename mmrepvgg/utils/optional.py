"""Optional dependencies (``requirements/deploy.txt``), imported when first needed."""
from __future__ import annotations

from typing import Any

from mmrepvgg_runtime.errors import require as _require

#: Packages the ONNX path needs, with the version ``requirements/deploy.txt`` pins.
_PACKAGES = {'onnx': 'onnx==1.23.2', 'onnxruntime': 'onnxruntime==1.31.1',
             'onnxscript': 'onnxscript==0.7.2'}


def require(name: str) -> Any:
    """Import an optional deploy package, or say in one line how to install it.

    Args:
        name: ``'onnx'``, ``'onnxruntime'`` or ``'onnxscript'``.

    Raises:
        MissingDependencyError: If the package is not installed (a broken install raises
            its own error).
    """
    return _require(name, f'{_PACKAGES.get(name, name)} (requirements/deploy.txt; make env '
                    'installs it)')
