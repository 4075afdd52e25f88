"""The runtime metadata an exported ONNX file carries, and its validation.

``mmrepvgg.deploy`` writes it at export time from the config (its test pipeline, data
preprocessor, the segmentor's ``test_cfg`` and the dataset's class names and palette) into
the model's ``metadata_props`` under :data:`RUNTIME_KEY`, as one JSON object:

.. code-block:: json

    {"schema": 1, "task": "segmentation",
     "pipeline": [{"type": "resize", "scale": [2048, 1024], "keep_ratio": true,
                   "interpolation": "bilinear"}],
     "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "bgr_to_rgb": true,
     "inference": {"mode": "slide", "crop_size": [713, 713], "stride": [476, 476]},
     "align_corners": false, "classes": ["road", "..."], "palette": [[128, 64, 128], "..."],
     "precision": "fp32"}

Pipeline steps (applied in order to the image as read by OpenCV, BGR, uint8), with
mmcv / mmpretrain semantics:

- ``resize``: ``scale`` ``[w, h]``; ``keep_ratio`` true: the largest size that fits in
  the long and short edge of ``scale`` (mmcv ``imrescale``), false: exactly ``w x h``;
- ``resize_edge``: ``scale`` (int), ``edge`` ``short``/``long``/``width``/``height``
  (mmpretrain ``ResizeEdge``);
- ``center_crop``: ``crop_size`` ``[w, h]`` (mmcv ``CenterCrop``).

Each takes ``interpolation`` (``nearest``, ``bilinear``, ``bicubic``, ``area``,
``lanczos``; default ``bilinear``). Then ``(image - mean) / std`` in float32, channels in
RGB order if ``bgr_to_rgb``, NCHW.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

from .errors import MetadataError

#: The ``metadata_props`` key of the runtime metadata.
RUNTIME_KEY = 'mmrepvgg_runtime'
#: The schema version this runtime reads.
SCHEMA = 1
TASKS = ('classification', 'segmentation')
INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'area', 'lanczos')
EDGES = ('short', 'long', 'width', 'height')
STEP_TYPES = ('resize', 'resize_edge', 'center_crop')
PRECISIONS = ('fp32', 'fp16', 'int8')


def _fail(where: str, what: str) -> MetadataError:
    return MetadataError(f'{where}: bad runtime metadata ({RUNTIME_KEY}): {what}; re-export '
                         'the model with tools/export_onnx.py')


def _pos_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _pair(value: Any, where: str, name: str) -> tuple[int, int]:
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(
            _pos_int(v) for v in value):
        return int(value[0]), int(value[1])
    raise _fail(where, f'{name} must be two positive ints, got {value!r}')


def _floats3(value: Any, where: str, name: str, positive: bool = False) -> tuple | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise _fail(where, f'{name} must be 3 numbers, got {value!r}') from None
    if len(out) != 3 or (positive and not all(v > 0 for v in out)):
        raise _fail(where, f'{name} must be 3 {"positive " if positive else ""}numbers, got '
                    f'{value!r}')
    return out


def _step(raw: Any, where: str) -> dict:
    if not isinstance(raw, Mapping) or raw.get('type') not in STEP_TYPES:
        raise _fail(where, f'pipeline step {raw!r}: type must be one of {", ".join(STEP_TYPES)}')
    step = dict(raw)
    kind = step['type']
    interp = step.setdefault('interpolation', 'bilinear')
    if interp not in INTERPOLATIONS:
        raise _fail(where, f'{kind}: interpolation {interp!r} is not one of '
                    f'{", ".join(INTERPOLATIONS)}')
    if kind == 'resize':
        step['scale'] = _pair(step.get('scale'), where, 'resize scale')
        step['keep_ratio'] = bool(step.get('keep_ratio', False))
    elif kind == 'resize_edge':
        if not _pos_int(step.get('scale')) or step.setdefault('edge', 'short') not in EDGES:
            raise _fail(where, f'resize_edge needs an int scale > 0 and an edge in '
                        f'{", ".join(EDGES)}, got {raw!r}')
    else:
        step['crop_size'] = _pair(step.get('crop_size'), where, 'center_crop crop_size')
    return step


@dataclasses.dataclass(frozen=True)
class RuntimeSpec:
    """What the runtime does around the network, read from the ONNX metadata.

    Args:
        task: ``'classification'`` or ``'segmentation'``.
        pipeline: Image steps before normalization (see the module docstring).
        mean: Per-channel mean (in the network's channel order), or None: no normalization.
        std: Per-channel std, or None.
        bgr_to_rgb: Reverse the channels of the BGR image before normalizing.
        mode: ``'whole'`` or ``'slide'`` (segmentation).
        crop_size: Slide window ``(h, w)`` (slide mode).
        stride: Slide stride ``(h, w)`` (slide mode).
        align_corners: ``align_corners`` of the bilinear resizes of the logits.
        threshold: Foreground threshold of a one-channel segmentor (sigmoid), else None.
        classes: Class names, or None.
        palette: RGB colour per class (segmentation), or None.
        topk: How many classes a classifier reports per image.
        precision: ``'fp32'``, ``'fp16'`` or ``'int8'`` (informative).
    """

    task: str
    pipeline: tuple[dict, ...] = ()
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    bgr_to_rgb: bool = False
    mode: str = 'whole'
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    align_corners: bool = False
    threshold: float | None = None
    classes: tuple[str, ...] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None
    topk: int = 5
    precision: str = 'fp32'

    @classmethod
    def from_dict(cls, raw: Any, where: str = 'model') -> 'RuntimeSpec':
        """Validate a decoded metadata object.

        Args:
            raw: The decoded JSON object.
            where: The model, for messages.

        Returns:
            The spec.

        Raises:
            MetadataError: For anything this runtime cannot run, in one line.
        """
        if not isinstance(raw, Mapping):
            raise _fail(where, 'not a JSON object')
        if raw.get('schema') != SCHEMA:
            raise _fail(where, f'schema {raw.get("schema")!r}, this runtime reads schema '
                        f'{SCHEMA}')
        task = raw.get('task')
        if task not in TASKS:
            raise _fail(where, f'task {task!r} is not one of {", ".join(TASKS)}')
        pipeline = raw.get('pipeline') or []
        if not isinstance(pipeline, Sequence) or isinstance(pipeline, str):
            raise _fail(where, 'pipeline must be a list')
        steps = tuple(_step(s, where) for s in pipeline)
        mean = _floats3(raw.get('mean'), where, 'mean')
        std = _floats3(raw.get('std'), where, 'std', positive=True)
        if (mean is None) != (std is None):
            raise _fail(where, 'mean and std must be given together')
        inference = dict(raw.get('inference') or {'mode': 'whole'})
        mode = inference.get('mode')
        crop = stride = None
        if mode == 'slide':
            crop = _pair(inference.get('crop_size'), where, 'slide crop_size')
            stride = _pair(inference.get('stride'), where, 'slide stride')
        elif mode != 'whole':
            raise _fail(where, f'inference mode {mode!r} is not whole or slide')
        if task == 'classification' and mode != 'whole':
            raise _fail(where, 'a classifier runs in whole mode only')
        classes = raw.get('classes')
        if classes is not None:
            if not isinstance(classes, Sequence) or isinstance(classes, str):
                raise _fail(where, 'classes must be a list of names')
            classes = tuple(str(c) for c in classes)
        palette = raw.get('palette')
        if palette is not None:
            try:
                palette = tuple(tuple(int(c) for c in colour) for colour in palette)
            except (TypeError, ValueError):
                raise _fail(where, 'palette must be a list of [r, g, b]') from None
            if not all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in palette):
                raise _fail(where, 'palette must be a list of [r, g, b] in 0-255')
        topk = raw.get('topk', 5)
        if not _pos_int(topk):
            raise _fail(where, f'topk must be an int > 0, got {topk!r}')
        threshold = raw.get('threshold')
        if threshold is not None and not isinstance(threshold, (int, float)):
            raise _fail(where, f'threshold must be a number, got {threshold!r}')
        precision = raw.get('precision', 'fp32')
        if precision not in PRECISIONS:
            raise _fail(where, f'precision {precision!r} is not one of {", ".join(PRECISIONS)}')
        return cls(task=task, pipeline=steps, mean=mean, std=std,
                   bgr_to_rgb=bool(raw.get('bgr_to_rgb', False)), mode=mode, crop_size=crop,
                   stride=stride, align_corners=bool(raw.get('align_corners', False)),
                   threshold=None if threshold is None else float(threshold), classes=classes,
                   palette=palette, topk=int(topk), precision=precision)

    def to_dict(self) -> dict:
        """The JSON object :meth:`from_dict` reads (what the exporter writes)."""
        out = dict(schema=SCHEMA, task=self.task, pipeline=[dict(s) for s in self.pipeline],
                   mean=None if self.mean is None else list(self.mean),
                   std=None if self.std is None else list(self.std),
                   bgr_to_rgb=self.bgr_to_rgb, inference=dict(mode=self.mode),
                   align_corners=self.align_corners, topk=self.topk, precision=self.precision,
                   classes=None if self.classes is None else list(self.classes),
                   palette=None if self.palette is None else [list(c) for c in self.palette])
        for step in out['pipeline']:
            for key in ('scale', 'crop_size'):
                if isinstance(step.get(key), tuple):
                    step[key] = list(step[key])
        if self.mode == 'slide':
            out['inference'].update(crop_size=list(self.crop_size), stride=list(self.stride))
        if self.threshold is not None:
            out['threshold'] = self.threshold
        return out

    def describe(self) -> str:
        """One line: task, pipeline and test behaviour (for logs)."""
        steps = ', '.join(_describe_step(s) for s in self.pipeline) or 'none'
        how = ('whole image' if self.mode == 'whole' else
               f'sliding {self.crop_size[0]}x{self.crop_size[1]} windows, stride '
               f'{self.stride[0]}x{self.stride[1]}')
        tail = f', {how}' if self.task == 'segmentation' else f', top-{self.topk}'
        return f'{self.task} ({self.precision}): pipeline {steps}{tail}'


def _describe_step(step: Mapping) -> str:
    if step['type'] == 'resize':
        w, h = step['scale']
        return f'resize to {w}x{h}{" keeping the ratio" if step["keep_ratio"] else ""}'
    if step['type'] == 'resize_edge':
        return f'resize {step["edge"]} edge to {step["scale"]}'
    w, h = step['crop_size']
    return f'center crop {w}x{h}'


def spec_from_metadata(meta: Mapping[str, str], where: str = 'model') -> RuntimeSpec:
    """The spec from an ONNX model's ``metadata_props`` (``{key: JSON text}``).

    Args:
        meta: The metadata map (e.g. ``session.get_modelmeta().custom_metadata_map``).
        where: The model, for messages.

    Raises:
        MetadataError: No runtime metadata, or one this runtime cannot run.
    """
    text = meta.get(RUNTIME_KEY)
    if text is None:
        raise MetadataError(f'{where} has no runtime metadata ({RUNTIME_KEY}): export it with '
                            'this version of tools/export_onnx.py (or tools/quantize.py)')
    try:
        raw = json.loads(text)
    except ValueError:
        raise _fail(where, 'not valid JSON') from None
    return RuntimeSpec.from_dict(raw, where)
