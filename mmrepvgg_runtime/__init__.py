"""mmrepvgg_runtime: run an exported mmrepvgg ONNX model without torch or OpenMMLab.

Imports only onnxruntime, numpy, OpenCV and the standard library. The preprocessing and
test-time behaviour (resize, crop, normalization, whole or sliding-window inference, the
logits resized back to the image) come from the metadata ``tools/export_onnx.py`` writes
into the file (:mod:`mmrepvgg_runtime.metadata`)::

    from mmrepvgg_runtime import OnnxModel, read_image
    model = OnnxModel('pspnet.onnx')
    labels = model.segment(read_image('frankfurt_000000_000294_leftImg8bit.png'))

``tools/infer_onnx.py MODEL.onnx INPUT... --out-dir DIR`` runs it over files and folders.
"""
from .errors import (MetadataError, MissingDependencyError, ModelLoadError, RuntimeInputError,
                     SameFileError)
from .image import read_image
from .infer import infer
from .metadata import RUNTIME_KEY, SCHEMA, RuntimeSpec, spec_from_metadata
from .model import OnnxModel, create_session

__all__ = ['OnnxModel', 'RuntimeSpec', 'RUNTIME_KEY', 'SCHEMA', 'create_session', 'infer',
           'read_image', 'spec_from_metadata', 'MetadataError', 'MissingDependencyError',
           'ModelLoadError', 'RuntimeInputError', 'SameFileError']
