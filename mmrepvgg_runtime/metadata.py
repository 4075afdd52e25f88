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

This module is the one place that validates it: :meth:`RuntimeSpec.from_dict` as a schema
(types, ranges, finite numbers: a string for a boolean or a NaN mean is refused, not
guessed at) and :func:`check_graph` against the graph it describes (input type and layout,
the task's logits shape, the slide window), each failure one :class:`MetadataError` line.
"""
from __future__ import annotations

import dataclasses
import json
import math
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


#: The largest size (pixels along one side) of a resize, crop or sliding window.
MAX_SIDE = 1 << 14


def _fail(where: str, what: str) -> MetadataError:
    return MetadataError(f'{where}: bad runtime metadata ({RUNTIME_KEY}): {what}; re-export '
                         'the model with tools/export_onnx.py')


class _Reader:
    """Typed, range-checked reads of one metadata object; every failure one line."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, what: str) -> MetadataError:
        return _fail(self.where, what)

    def integer(self, value: Any, name: str, low: int = 1, high: int = MAX_SIDE) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        raise self.fail(f'{name} must be an int in {low}-{high}, got {value!r}')

    def number(self, value: Any, name: str, bounds: tuple | None = None,
               positive: bool = False) -> float:
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and (value > 0 or not positive)
                and (bounds is None or bounds[0] <= value <= bounds[1])):
            return float(value)
        what = f'{"positive " if positive else ""}finite number'
        where = f' in [{bounds[0]}, {bounds[1]}]' if bounds else ''
        raise self.fail(f'{name} must be a {what}{where}, got {value!r}')

    def flag(self, value: Any, name: str) -> bool:
        if isinstance(value, bool):
            return value
        raise self.fail(f'{name} must be true or false, got {value!r}')

    def choice(self, value: Any, name: str, choices: Sequence[str]) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise self.fail(f'{name} {value!r} is not one of {", ".join(choices)}')

    def array(self, value: Any, name: str, length: int | None = None) -> list:
        if isinstance(value, (list, tuple)) and length in (None, len(value)):
            return list(value)
        raise self.fail(f'{name} must be a list{f" of {length}" if length else ""}, got '
                        f'{value!r}')

    def pair(self, value: Any, name: str) -> tuple[int, int]:
        if (isinstance(value, (list, tuple)) and len(value) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE
                for v in value)):
            return int(value[0]), int(value[1])
        raise self.fail(f'{name} must be two positive ints (at most {MAX_SIDE}), got {value!r}')

    def mapping(self, value: Any, name: str) -> dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise self.fail(f'{name} must be an object, got {value!r}')

    def step(self, raw: Any) -> dict:
        """One pipeline step, with its defaults filled in."""
        step = self.mapping(raw, 'a pipeline step')
        kind = step.get('type')
        if kind not in STEP_TYPES:
            raise self.fail(f'pipeline step {raw!r}: type must be one of {", ".join(STEP_TYPES)}')
        step['interpolation'] = self.choice(step.get('interpolation', 'bilinear'),
                                            f'{kind}: interpolation', INTERPOLATIONS)
        if kind == 'resize':
            step['scale'] = self.pair(step.get('scale'), 'resize scale')
            step['keep_ratio'] = self.flag(step.get('keep_ratio', False), 'resize keep_ratio')
        elif kind == 'resize_edge':
            step['scale'] = self.integer(step.get('scale'), 'resize_edge scale')
            step['edge'] = self.choice(step.get('edge', 'short'), 'resize_edge edge', EDGES)
        else:
            step['crop_size'] = self.pair(step.get('crop_size'), 'center_crop crop_size')
        return step

    def floats3(self, value: Any, name: str, positive: bool = False) -> tuple | None:
        if value is None:
            return None
        return tuple(self.number(v, f'each {name} value', positive=positive)
                     for v in self.array(value, name, 3))


def _inference(read: _Reader, raw: Mapping, task: str) -> tuple:
    """``(mode, crop_size, stride)`` of the ``inference`` entry."""
    inference = read.mapping(raw.get('inference') or {'mode': 'whole'}, 'inference')
    mode = read.choice(inference.get('mode'), 'inference mode', ('whole', 'slide'))
    if task == 'classification' and mode != 'whole':
        raise read.fail('a classifier runs in whole mode only')
    if mode == 'whole':
        return mode, None, None
    return (mode, read.pair(inference.get('crop_size'), 'slide crop_size'),
            read.pair(inference.get('stride'), 'slide stride'))


def _labels(read: _Reader, raw: Mapping) -> tuple:
    """``(classes, palette)``: names and RGB colours, each None where not given."""
    classes = raw.get('classes')
    if classes is not None:
        classes = tuple(read.array(classes, 'classes'))
        if not all(isinstance(c, str) for c in classes):
            raise read.fail('classes must be a list of names')
    palette = raw.get('palette')
    if palette is not None:
        palette = tuple(tuple(read.integer(v, 'a palette value', 0, 255)
                              for v in read.array(colour, 'a palette colour', 3))
                        for colour in read.array(palette, 'palette'))
    return classes, palette


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
        """Validate a decoded metadata object as the schema: keys, types, ranges, finite
        numbers (what the exporter writes; anything else is refused, not guessed at).

        Args:
            raw: The decoded JSON object.
            where: The model, for messages.

        Returns:
            The spec.

        Raises:
            MetadataError: For anything this runtime cannot run, in one line.
        """
        read = _Reader(where)
        raw = read.mapping(raw, 'the metadata')
        schema = raw.get('schema')
        if type(schema) is not int or schema != SCHEMA:
            raise read.fail(f'schema {schema!r}, this runtime reads schema {SCHEMA}')
        task = read.choice(raw.get('task'), 'task', TASKS)
        steps = tuple(read.step(s) for s in read.array(raw.get('pipeline') or [], 'pipeline'))
        mean = read.floats3(raw.get('mean'), 'mean')
        std = read.floats3(raw.get('std'), 'std', positive=True)
        if (mean is None) != (std is None):
            raise read.fail('mean and std must be given together')
        mode, crop, stride = _inference(read, raw, task)
        classes, palette = _labels(read, raw)
        threshold = raw.get('threshold')
        return cls(task=task, pipeline=steps, mean=mean, std=std,
                   bgr_to_rgb=read.flag(raw.get('bgr_to_rgb', False), 'bgr_to_rgb'),
                   mode=mode, crop_size=crop, stride=stride,
                   align_corners=read.flag(raw.get('align_corners', False), 'align_corners'),
                   threshold=None if threshold is None else read.number(threshold,
                                                                        'threshold', (0, 1)),
                   classes=classes, palette=palette,
                   topk=read.integer(raw.get('topk', 5), 'topk', 1, 1 << 31),
                   precision=read.choice(raw.get('precision', 'fp32'), 'precision',
                                         PRECISIONS))

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
    if text is None and 'mmrepvgg_version' in meta:  # ours, exported without it
        raise MetadataError(f'{where} has no runtime metadata ({RUNTIME_KEY}): it was exported '
                            'with tools/export_onnx.py --no-runtime-meta; export it again '
                            'without that option')
    if text is None:
        raise MetadataError(f'{where} has no runtime metadata ({RUNTIME_KEY}): export it with '
                            'this version of tools/export_onnx.py (or tools/quantize.py)')
    try:
        raw = json.loads(text)
    except ValueError:
        raise _fail(where, 'not valid JSON') from None
    return RuntimeSpec.from_dict(raw, where)


#: The tensor types the runtime feeds and reads.
FLOAT_TYPES = ('tensor(float)', 'tensor(float16)')


def check_graph(spec: RuntimeSpec, inputs: Sequence[Any], outputs: Sequence[Any],
                where: str = 'model') -> None:
    """Refuse a graph that does not fit its metadata, before any image is run.

    Args:
        spec: The model's runtime metadata.
        inputs: The graph's inputs (ONNX Runtime ``NodeArg``: ``name``, ``type``, ``shape``).
        outputs: Its outputs.
        where: The model, for messages.

    Raises:
        MetadataError: Not one float NCHW image input with 3 channels; a first output that
            is not float logits of the task's shape ((N, C) for a classifier, (N, C, h, w)
            for a segmentor); a static input size other than the slide window.
    """
    inp = inputs[0] if len(inputs) == 1 else None
    if (inp is None or len(inp.shape) != 4 or inp.type not in FLOAT_TYPES
            or isinstance(inp.shape[1], int) and inp.shape[1] != 3):
        raise MetadataError(f'{where}: the runtime feeds one float NCHW image (3 channels); the '
                            f'graph takes {[(i.name, i.type, i.shape) for i in inputs]}')
    rank = 4 if spec.task == 'segmentation' else 2
    out = outputs[0] if outputs else None
    if out is None or out.type not in FLOAT_TYPES or (out.shape is not None
                                                       and len(out.shape) != rank):
        got = f'{out.type} {out.shape}' if out is not None else 'no output'
        raise MetadataError(f'{where}: its metadata says {spec.task}, whose logits are '
                            f'{rank}-d floats, but the graph gives {got}')
    hw = tuple(inp.shape[2:])
    if spec.mode == 'slide' and all(isinstance(s, int) for s in hw) and hw != spec.crop_size:
        raise MetadataError(f'{where}: the graph takes {hw[0]}x{hw[1]} inputs but slide '
                            f'inference feeds {spec.crop_size[0]}x{spec.crop_size[1]} windows')
