"""The runtime's third-party imports, each missing one reported in one line.

Only numpy, OpenCV and (lazily, :func:`onnxruntime`) ONNX Runtime: never torch, mmcv,
mmengine, mmseg or mmpretrain.
"""
from __future__ import annotations

from typing import Any

from .errors import require

_NEEDS = '(the runtime needs onnxruntime, numpy and opencv-python)'

np = require('numpy', f'numpy {_NEEDS}')
cv2 = require('cv2', f'opencv-python {_NEEDS}')


def onnxruntime() -> Any:
    """The ``onnxruntime`` module (imported on first use)."""
    return require('onnxruntime', f'onnxruntime {_NEEDS}')
