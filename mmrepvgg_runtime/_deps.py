"""The runtime's third-party imports, each missing one reported in one line.

Only numpy, OpenCV and (lazily, :func:`onnxruntime`) ONNX Runtime: never torch, mmcv,
mmengine, mmseg or mmpretrain.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import MissingDependencyError

_PIP = {'numpy': 'numpy', 'cv2': 'opencv-python', 'onnxruntime': 'onnxruntime'}


def require(name: str) -> Any:
    """Import ``name`` or raise :class:`MissingDependencyError` saying how to install it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        raise MissingDependencyError(f'{name} is not installed: pip install {_PIP[name]} '
                                     '(the runtime needs onnxruntime, numpy and '
                                     'opencv-python)') from None


np = require('numpy')
cv2 = require('cv2')


def onnxruntime() -> Any:
    """The ``onnxruntime`` module (imported on first use)."""
    return require('onnxruntime')
