"""An exported mmrepvgg ONNX model (fp32, fp16 or int8) with its test-time behaviour.

:class:`OnnxModel` loads the file in ONNX Runtime, reads its runtime metadata
(:mod:`mmrepvgg_runtime.metadata`) and runs images end to end:

- a **segmentor** (:meth:`OnnxModel.segment`): the pipeline, normalization, the network on
  the whole image or on sliding windows (mmseg's ``slide_inference``: windows of the
  graph's size, logits resized to each window, summed and averaged where they overlap),
  the logits resized to the network input and then to the image (bilinear, the head's
  ``align_corners``), argmax: a label map at the image's size, in train ids;
- a **classifier** (:meth:`OnnxModel.classify`): the pipeline, normalization, the network,
  softmax: the scores of every class.
"""
from __future__ import annotations

import os
from typing import Any

from ._deps import np, onnxruntime
from .errors import ModelLoadError, RuntimeInputError, error_message
from .image import normalize, run_pipeline
from .logits import label_map, resize_bilinear, softmax
from .metadata import RuntimeSpec, check_graph, spec_from_metadata


def create_session(model: str | os.PathLike | bytes | Any, threads: int | None = None,
                   optimized_model: str | os.PathLike | None = None,
                   stop_spinning: bool = False) -> Any:
    """An ONNX Runtime CPU session: the one session factory of the runtime and the package.

    Args:
        model: The ONNX file, its serialized bytes, or an ``onnx.ModelProto``.
        threads: Intra-op threads (None: ONNX Runtime's default); one inter-op thread.
        optimized_model: Also write the graph ONNX Runtime optimized for this CPU there.
        stop_spinning: Let the worker threads stop spinning when a run ends
            (``session.force_spinning_stop``). ONNX Runtime's default (False) keeps them
            spinning for the next run, right for one session alone; sessions of one process
            run in turns (an fp32 and an int8 model timed against each other) would take
            each other's cores (measured in docs/int8.md).

    Raises:
        FileNotFoundError: No such file.
        ModelLoadError: ONNX Runtime cannot load it.
    """
    ort = onnxruntime()
    if hasattr(model, 'SerializeToString'):
        model = model.SerializeToString()
    name = 'the model (in memory)' if isinstance(model, bytes) else os.fspath(model)
    if not isinstance(model, bytes) and not os.path.isfile(model):
        raise FileNotFoundError(f'No such model file: {model}')
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if stop_spinning:
        opts.add_session_config_entry('session.force_spinning_stop', '1')
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if optimized_model:
        opts.optimized_model_filepath = os.fspath(optimized_model)
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else name, opts,
                                    providers=['CPUExecutionProvider'])
    except Exception as err:  # InvalidProtobuf, Fail, ...: one line
        raise ModelLoadError(f'ONNX Runtime cannot load {name}: {error_message(err)}') from None


class OnnxModel:
    """An exported model and its runtime metadata.

    Args:
        path: The ONNX file (``tools/export_onnx.py`` or ``tools/quantize.py`` output).
        threads: ONNX Runtime intra-op threads (None: its default).

    Raises:
        FileNotFoundError, ModelLoadError: The file cannot be loaded.
        MetadataError: It has no runtime metadata, one this runtime cannot run, or one the
            graph does not fit (:func:`~mmrepvgg_runtime.metadata.check_graph`).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = os.fspath(path)
        self.session = create_session(path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.spec: RuntimeSpec = spec_from_metadata(meta, self.path)
        inputs = self.session.get_inputs()
        check_graph(self.spec, inputs, self.session.get_outputs(), self.path)
        inp = inputs[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == 'tensor(float16)' else np.float32
        self.batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        hw = inp.shape[2:]
        self.input_hw = tuple(hw) if all(isinstance(s, int) for s in hw) else None

    # ------------------------------------------------------------------ network
    def run(self, x: np.ndarray) -> np.ndarray:
        """The network on a normalized ``(N, 3, H, W)`` batch; float32 logits.

        A static batch axis is filled with zeros (and the extra rows dropped); a batch
        larger than it runs in chunks.

        Raises:
            RuntimeInputError: ``(H, W)`` is not what a static graph takes.
        """
        if self.input_hw is not None and tuple(x.shape[2:]) != self.input_hw:
            raise RuntimeInputError(
                f'the network gets a {x.shape[2]}x{x.shape[3]} input but {self.path} takes '
                f'{self.input_hw[0]}x{self.input_hw[1]}')
        x = x.astype(self.input_dtype, copy=False)
        if self.batch is None or self.batch == len(x):
            return np.asarray(self.session.run(None, {self.input_name: x})[0], np.float32)
        outs = []
        for start in range(0, len(x), self.batch):
            chunk = x[start:start + self.batch]
            n = len(chunk)
            if n < self.batch:
                pad = np.zeros((self.batch - n, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            outs.append(np.asarray(self.session.run(None, {self.input_name: chunk})[0],
                                   np.float32)[:n])
        return np.concatenate(outs)

    def preprocess(self, img: np.ndarray) -> np.ndarray:
        """A BGR uint8 image -> the normalized ``(3, H, W)`` network input."""
        return normalize(run_pipeline(img, self.spec), self.spec)

    # ------------------------------------------------------------------ segmentation
    def segment_logits(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(C, H, W)`` at the network input's size for one normalized image
        ``(3, H, W)``: whole or sliding-window inference, as the metadata says."""
        spec = self.spec
        height, width = x.shape[1:]
        if spec.mode == 'whole':
            return resize_bilinear(self.run(x[None])[0], (height, width), spec.align_corners)
        (crop_h, crop_w), (stride_h, stride_w) = spec.crop_size, spec.stride
        if height < crop_h or width < crop_w:
            raise RuntimeInputError(
                f'the image is {width}x{height} after the test pipeline, smaller than the '
                f'{crop_w}x{crop_h} sliding window the model takes')
        rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
        cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
        preds = None
        count = np.zeros((height, width), dtype=np.float32)
        for r in range(rows):
            for c in range(cols):
                y2 = min(r * stride_h + crop_h, height)
                x2 = min(c * stride_w + crop_w, width)
                y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
                out = self.run(np.ascontiguousarray(x[None, :, y1:y2, x1:x2]))[0]
                out = resize_bilinear(out, (y2 - y1, x2 - x1), spec.align_corners)
                if preds is None:
                    preds = np.zeros((out.shape[0], height, width), dtype=np.float32)
                preds[:, y1:y2, x1:x2] += out
                count[y1:y2, x1:x2] += 1
        return preds / count[None]

    def segment(self, img: np.ndarray) -> np.ndarray:
        """The label map (train ids) of a BGR uint8 image, at the image's size."""
        if self.spec.task != 'segmentation':
            raise RuntimeInputError(f'{self.path} is a {self.spec.task} model, not a segmentor')
        logits = self.segment_logits(self.preprocess(img))
        return label_map(logits, img.shape[:2], self.spec.align_corners, self.spec.threshold)

    # ------------------------------------------------------------------ classification
    def classify(self, img: np.ndarray) -> np.ndarray:
        """Softmax scores ``(num_classes,)`` of a BGR uint8 image."""
        if self.spec.task != 'classification':
            raise RuntimeInputError(f'{self.path} is a {self.spec.task} model, not a classifier')
        logits = self.run(self.preprocess(img)[None])[0]
        if logits.ndim != 1:
            raise RuntimeInputError(f'{self.path}: a classifier should output (N, classes) '
                                    f'logits, got {logits.shape} per image')
        return softmax(logits)

    def class_name(self, index: int) -> str:
        """The name of class ``index`` (its number if the model has no names)."""
        classes = self.spec.classes
        return classes[index] if classes and index < len(classes) else str(index)
