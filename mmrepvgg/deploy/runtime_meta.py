"""What a config says about its deployed model: the runtime metadata of an exported file.

``export_onnx`` (:mod:`.onnx`) writes it into every ONNX file (key :data:`RUNTIME_KEY`) so
that ``mmrepvgg_runtime`` (``tools/infer_onnx.py``) runs the file as the config tests the
model, without torch or OpenMMLab: the test pipeline's resize and crop, the data
preprocessor's mean, std and channel order, the segmentor's whole or sliding-window
inference and ``align_corners``, the class names and palette. Only what the runtime
reproduces exactly is accepted; anything else is refused in one line
(:class:`ExportError`) naming the step.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from mmengine.config import Config
from mmengine.registry import DATASETS
from torch import nn

from mmrepvgg_runtime.metadata import RUNTIME_KEY, RuntimeSpec

from ..utils.errors import ExportError

__all__ = ['RUNTIME_KEY', 'runtime_spec', 'check_runtime_shape', 'runtime_input_shape',
           'test_pipeline', 'dataset_info', 'task_of', 'preprocessing', 'innermost_dataset']


#: Test-pipeline steps that load or pack data: nothing for the runtime to do.
_PASS = ('LoadImageFromFile', 'LoadAnnotations', 'PackSegInputs', 'PackInputs',
         'PackClsInputs', 'LoadImageFromNDArray')
#: The transforms the runtime reproduces.
SUPPORTED = ('Resize', 'ResizeEdge', 'CenterCrop')


def task_of(model: nn.Module) -> str:
    """``'segmentation'`` for an mmseg segmentor, else ``'classification'``."""
    return 'segmentation' if hasattr(model, 'decode_head') else 'classification'


def innermost_dataset(dataset: Mapping) -> Mapping:
    """The dataset config a wrapper (RepeatDataset, ...) holds, down to the one with data."""
    while 'pipeline' not in dataset and isinstance(dataset.get('dataset'), Mapping):
        dataset = dataset['dataset']
    return dataset


def _test_dataset(cfg: Config) -> Mapping:
    loader = cfg.get('test_dataloader') or cfg.get('val_dataloader') or {}
    return innermost_dataset(dict(loader.get('dataset') or {}))


def dataset_info(cfg: Config, key: str, checkpoint_meta: Mapping | None = None) -> list | None:
    """``'classes'`` or ``'palette'``: from the checkpoint's ``dataset_meta`` (or its meta),
    the config's ``metainfo`` or the dataset class's ``METAINFO`` (None if none says)."""
    meta = dict(checkpoint_meta or {})
    for source in (meta.get('dataset_meta') or {}, meta):
        for name in (key, key.upper()):
            if source.get(name):
                return list(source[name])
    dataset = _test_dataset(cfg)
    if (dataset.get('metainfo') or {}).get(key):
        return list(dataset['metainfo'][key])
    try:
        with DATASETS.switch_scope_and_registry(cfg.get('default_scope')) as registry:
            found = (getattr(registry.get(dataset.get('type')), 'METAINFO', None) or {}).get(key)
    except Exception:  # an unknown dataset type: nothing known
        found = None
    return list(found) if found else None


def preprocessing(cfg: Config) -> dict:
    """Mean, std and channel flip of the data preprocessor (``model.data_preprocessor``, else
    the top-level one that mmpretrain merges into the model)."""
    pre = dict(cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {})
    mean, std = pre.get('mean'), pre.get('std')
    return dict(mean=None if mean is None else [float(v) for v in mean],
                std=None if std is None else [float(v) for v in std],
                bgr_to_rgb=any(bool(pre.get(k)) for k in ('bgr_to_rgb', 'rgb_to_bgr', 'to_rgb')))


def test_pipeline(cfg: Config, task: str) -> list[dict]:
    """The test pipeline the task's inferencer reads: ``cfg.test_pipeline`` for mmseg's
    ``inference_model`` (else the test dataloader's), the test dataloader's for mmpretrain's
    inferencer (else ``cfg.test_pipeline``).

    Raises:
        ExportError: The config has none.
    """
    from_loader = _test_dataset(cfg).get('pipeline')
    top = cfg.get('test_pipeline')
    pipeline = (top or from_loader) if task == 'segmentation' else (from_loader or top)
    if not pipeline:
        raise ExportError(f'{cfg.filename or "the config"} has no test pipeline: the '
                               'runtime cannot know how to preprocess images')
    return [dict(step) for step in pipeline]


def _int_pair(value: Any) -> list[int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if isinstance(value, Sequence) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [int(value[0]), int(value[1])]
    return None


def convert_step(step: Mapping, where: str) -> dict | None:
    """One test-pipeline transform as a runtime step (None: nothing to do).

    Raises:
        ExportError: A transform (or option) the runtime does not reproduce.
    """
    kind = str(step.get('type', '')).split('.')[-1]

    def refuse(why: str) -> ExportError:
        return ExportError(f'{where}: the test pipeline step {dict(step)} {why}; '
                                'mmrepvgg_runtime (tools/infer_onnx.py) cannot run this model '
                                'as the config tests it')

    if kind in ('LoadImageFromFile', 'LoadImageFromNDArray'):
        if step.get('color_type', 'color') != 'color' or step.get(
                'imdecode_backend', 'cv2') != 'cv2' or step.get('to_float32', False):
            raise refuse("is not supported (the runtime reads colour images with OpenCV's "
                         'imdecode, uint8)')
        return None
    if kind in _PASS:
        return None
    if step.get('backend', 'cv2') != 'cv2':
        raise refuse('uses a non-OpenCV backend')
    interp = step.get('interpolation', 'bilinear')
    if kind == 'Resize':
        scale = _int_pair(step.get('scale'))
        if scale is None or step.get('scale_factor') is not None:
            raise refuse('is not supported (Resize with an int or (w, h) scale only)')
        return dict(type='resize', scale=scale, keep_ratio=bool(step.get('keep_ratio', False)),
                    interpolation=interp)
    if kind == 'ResizeEdge':
        scale = step.get('scale')
        if not isinstance(scale, int) or isinstance(scale, bool):
            raise refuse('is not supported (ResizeEdge with an int scale only)')
        return dict(type='resize_edge', scale=scale, edge=step.get('edge', 'short'),
                    interpolation=interp)
    if kind == 'CenterCrop':
        crop = _int_pair(step.get('crop_size'))
        if crop is None or step.get('auto_pad', False):
            raise refuse('is not supported (CenterCrop without auto_pad, int or (w, h) size)')
        return dict(type='center_crop', crop_size=crop)
    raise refuse(f'has no runtime equivalent (supported: {", ".join(SUPPORTED)}, and the '
                 'loading and packing steps)')


def _check_no_padding(cfg: Config, where: str) -> None:
    pre = dict(cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {})
    test_cfg = dict(pre.get('test_cfg') or {})
    if test_cfg.get('size') or test_cfg.get('size_divisor'):
        raise ExportError(f'{where}: the data preprocessor pads test images '
                               f'(test_cfg={test_cfg}); mmrepvgg_runtime does not')
    if int(pre.get('pad_size_divisor', 1) or 1) > 1:
        raise ExportError(f'{where}: the data preprocessor pads images to a multiple of '
                               f'{pre["pad_size_divisor"]}; mmrepvgg_runtime does not')


def _segmentation_spec(model: nn.Module, where: str) -> dict:
    head = model.decode_head
    test_cfg = dict(getattr(model, 'test_cfg', None) or {})
    mode = test_cfg.get('mode', 'whole')
    if mode not in ('slide', 'whole'):
        raise ExportError(f'{where}: test_cfg mode {mode!r} is not whole or slide')
    raw: dict[str, Any] = dict(inference=dict(mode='whole'),
                               align_corners=bool(getattr(head, 'align_corners', False)))
    if mode == 'slide':
        raw['inference'] = dict(mode='slide', crop_size=_int_pair(test_cfg.get('crop_size')),
                                stride=_int_pair(test_cfg.get('stride')))
    if getattr(head, 'out_channels', None) == 1:
        raw['threshold'] = float(getattr(head, 'threshold', None) or 0.3)
    return raw


def runtime_spec(cfg: Config, model: nn.Module, classes: Sequence[str] | None = None,
                 palette: Sequence[Sequence[int]] | None = None,
                 precision: str = 'fp32') -> RuntimeSpec:
    """The runtime metadata of ``model`` built from ``cfg``.

    Args:
        cfg: The config (test pipeline, data preprocessor).
        model: The built model (its ``test_cfg``, decode head or classifier head).
        classes: Class names (None: unknown).
        palette: RGB colour per class (segmentors; None: the runtime picks colours).
        precision: ``'fp32'``, ``'fp16'`` or ``'int8'``.

    Raises:
        ExportError: The test behaviour has no exact runtime equivalent.
    """
    where = cfg.filename or 'the config'
    task = task_of(model)
    steps = [s for s in (convert_step(step, where) for step in test_pipeline(cfg, task)) if s]
    _check_no_padding(cfg, where)
    raw: dict[str, Any] = dict(schema=1, task=task, pipeline=steps, precision=precision,
                               classes=list(classes) if classes else None,
                               **preprocessing(cfg))
    if task == 'segmentation':
        raw.update(_segmentation_spec(model, where))
        if palette:
            raw['palette'] = [[int(c) for c in colour] for colour in palette]
    else:
        topk = (getattr(getattr(model, 'head', None), 'topk', None) or (5, ))
        raw['topk'] = max(5, *(int(k) for k in (topk if isinstance(topk, Sequence)
                                                 else (topk, ))))
    try:
        return RuntimeSpec.from_dict(raw, where)
    except ValueError as err:
        raise ExportError(str(err)) from None


def runtime_input_shape(spec: RuntimeSpec) -> tuple[int, int] | None:
    """The ``(H, W)`` the network sees under the test behaviour, if the config fixes it:
    the slide window; else the last center crop or resize (for a ``keep_ratio`` resize, an
    image with the scale's aspect ratio). None if the images keep their own size."""
    if spec.mode == 'slide':
        return tuple(spec.crop_size)
    for step in reversed(spec.pipeline):
        if step['type'] == 'center_crop':
            return step['crop_size'][1], step['crop_size'][0]
        if step['type'] == 'resize':
            return step['scale'][1], step['scale'][0]
        if step['type'] == 'resize_edge':
            return None  # the other edge follows the image's aspect ratio
    return None
def check_runtime_shape(spec: RuntimeSpec, shape: Sequence[int] | None,
                        where: str) -> tuple[int, int]:
    """The graph's input size for the runtime: ``shape``, or the test behaviour's default.

    Args:
        spec: The runtime metadata.
        shape: The requested ``(H, W)`` (None: the default, :func:`runtime_input_shape`).
        where: The config, for messages.

    Returns:
        ``(H, W)``.

    Raises:
        ExportError: No default (the test pipeline keeps each image's own size), or a
            ``shape`` the test behaviour never feeds (not the slide window, not the size a
            center crop or a fixed resize gives).
    """
    fixed = runtime_input_shape(spec)
    if shape is None:
        if fixed is None:
            raise ExportError(
                f'{where}: the test pipeline ({spec.describe()}) does not fix the input size, '
                'the network sees each image at its own size: pass --shape H W, the size of '
                'your images after the test pipeline')
        return fixed
    shape = (int(shape[0]), int(shape[1]))
    strict = spec.mode == 'slide' or (spec.pipeline and (
        spec.pipeline[-1]['type'] == 'center_crop' or (spec.pipeline[-1]['type'] == 'resize'
                                                       and not spec.pipeline[-1]['keep_ratio'])))
    if strict and fixed is not None and shape != fixed:
        what = ('slide inference feeds' if spec.mode == 'slide' else 'the test pipeline gives')
        raise ExportError(
            f'{where}: {what} {fixed[0]}x{fixed[1]} inputs, so a {shape[0]}x{shape[1]} graph '
            'cannot run as the config tests the model: omit --shape (or pass '
            '--no-runtime-meta for a graph that tools/infer_onnx.py will not run)')
    last = spec.pipeline[-1] if spec.mode != 'slide' and spec.pipeline else None
    if last and last['type'] == 'resize' and last['keep_ratio']:
        _check_keep_ratio_shape(last['scale'], shape, where)
    return shape


def _check_keep_ratio_shape(scale: Sequence[int], shape: tuple[int, int], where: str) -> None:
    """Refuse a ``(H, W)`` that no image gives under a keep-ratio resize to ``scale``.

    mmcv's ``imrescale`` scales an image until its long edge reaches the scale's long edge
    or its short edge the scale's short edge, so one of the two edges of every result
    equals its limit and the other stays within its own.
    """
    top, low = max(scale), min(scale)
    long, short = max(shape), min(shape)
    if (long == top and short <= low) or (short == low and long <= top):
        return
    raise ExportError(
        f'{where}: the test pipeline resizes every image keeping its aspect ratio until it '
        f'fits {scale[0]}x{scale[1]} (one edge {top} or {low}), so no image gives a '
        f'{shape[0]}x{shape[1]} input: pass --shape with one edge at that limit (e.g. '
        f'{low} {top}), omit --shape, or pass --no-runtime-meta for a graph that '
        'tools/infer_onnx.py will not run')
