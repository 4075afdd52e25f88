"""mmrepvgg_runtime: run an exported mmrepvgg ONNX model without torch or OpenMMLab.

Imports only onnxruntime, numpy, OpenCV and the standard library. The preprocessing and
test-time behaviour (resize, crop, normalization, whole or sliding-window inference, the
logits resized back to the image) come from the metadata ``tools/export_onnx.py`` writes
into the file (:mod:`mmrepvgg_runtime.metadata`)::

    from mmrepvgg_runtime import OnnxModel, read_image
    model = OnnxModel('pspnet.onnx')
    labels = model.segment(read_image('frankfurt_000000_000294_leftImg8bit.png'))

``tools/infer_onnx.py MODEL.onnx INPUT... --out-dir DIR`` runs it over files and folders.
The names below are imported on first use, so that ``errors`` and ``files`` (the standard
library only; the ``mmrepvgg`` package uses them) load without numpy or OpenCV, and a missing
one is reported by the command line in one line.
"""
import importlib
from typing import Any

#: Public name -> the module that defines it.
_NAMES = dict(
    OnnxModel='model', create_session='model', read_image='image', infer='infer',
    RuntimeSpec='metadata', RUNTIME_KEY='metadata', SCHEMA='metadata',
    spec_from_metadata='metadata', MetadataError='errors', MissingDependencyError='errors',
    ModelLoadError='errors', RuntimeInputError='errors', SameFileError='errors',
    UserError='errors')

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(importlib.import_module(f'.{_NAMES[name]}', __name__), name)
