"""Run an exported ONNX model on a config's data: evaluation, calibration inputs (from a split
or a folder of images), CPU timing.

The ONNX graph computes ``model(x, mode='tensor')`` (see :mod:`.onnx`). Everything
around it comes from the config's own model, built without weights: the data
preprocessor (normalization, padding) before it, and after it the head's post-processing
(a classifier's softmax and label; a segmentor's resize to the image, its slide or whole
inference, cropping of the padding). So an ONNX model is evaluated exactly as
``tools/test.py`` evaluates the PyTorch model, with the config's pipeline, dataset and
evaluator (top-1 for classifiers, mIoU for segmentors).
"""
from __future__ import annotations

import copy
import functools
import os
import statistics
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.evaluator import Evaluator
from mmengine.registry import DATASETS, FUNCTIONS, init_default_scope
from torch import Tensor, nn
from tqdm import tqdm

from mmrepvgg_runtime.files import collect_images

from ..utils.errors import ConfigError, DataError, ExportError
from ..utils.timing import time_interleaved
from .onnx import ExportOptions, create_session, export_onnx, run_session, session_batch
from .runtime_meta import innermost_dataset, task_of, test_pipeline

#: The metric reported first, per task.
MAIN_METRICS = ('accuracy/top1', 'mIoU')


def _loader_cfg(cfg: Config, split: str) -> dict:
    order = {'train': ('train', ), 'val': ('val', 'test'), 'test': ('test', 'val')}[split]
    for name in order:
        loader = cfg.get(f'{name}_dataloader')
        if loader:
            return copy.deepcopy(dict(loader))
    raise ConfigError(f'{cfg.filename or "The config"} has no {split}_dataloader')


def build_dataset(cfg: Config, split: str, test_pipeline: bool = True) -> Any:
    """The dataset of a split, built in the config's scope.

    Args:
        cfg: The config.
        split: ``'train'``, ``'val'`` or ``'test'`` (``val``/``test`` fall back on each other).
        test_pipeline: Give the dataset the test pipeline (the preprocessing the deployed
            model sees; for ``train`` this replaces the random augmentation).

    Returns:
        The dataset.
    """
    dataset_cfg = dict(_loader_cfg(cfg, split)['dataset'])
    if test_pipeline:
        test_ds = innermost_dataset(dict(_loader_cfg(cfg, 'test')['dataset']))
        pipeline = test_ds.get('pipeline') or cfg.get('test_pipeline')
        if pipeline is None:
            raise ConfigError(f'{cfg.filename or "The config"} has no test pipeline')
        innermost_dataset(dataset_cfg)['pipeline'] = copy.deepcopy(pipeline)
    init_default_scope(cfg.get('default_scope') or 'mmengine')
    return DATASETS.build(dataset_cfg)


def make_loader(cfg: Config, dataset: Any, split: str, indices: Sequence[int] | None = None,
                batch_size: int | None = None) -> torch.utils.data.DataLoader:
    """A single-process, unshuffled loader over ``dataset`` (or ``indices`` of it)."""
    loader = _loader_cfg(cfg, split)
    collate = pseudo_collate
    if loader.get('collate_fn'):
        collate_cfg = dict(loader['collate_fn'])
        collate = FUNCTIONS.get(collate_cfg.pop('type'))
    data = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    return torch.utils.data.DataLoader(data, batch_size=batch_size or loader.get('batch_size', 1),
                                       shuffle=False, num_workers=0, collate_fn=collate)


class TorchPredictor:
    """The PyTorch model's own ``test_step`` (the reference)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    def __call__(self, data: dict) -> list:
        with torch.no_grad():
            return self.model.test_step(data)


class OnnxPredictor:
    """The config's model with its network replaced by an ONNX Runtime session.

    Args:
        model: The config's model (weights are not used): its data preprocessor and heads'
            post-processing run around the session.
        session: The ONNX Runtime session of ``model(x, mode='tensor')``.
        record: Called with every batch the session is fed (e.g. to collect calibration
            inputs).
    """

    def __init__(self, model: nn.Module, session: Any,
                 record: Callable[[Tensor], None] | None = None) -> None:
        self.model = model.eval()
        self.session = session
        self.record = record
        self.task = task_of(model)
        if self.task == 'classification' and not hasattr(getattr(model, 'head', None),
                                                         '_get_predictions'):
            raise ConfigError(f'{type(model).__name__}: expected an mmpretrain classifier with '
                              'a ClsHead or an mmseg segmentor')
        self.shape = tuple(session.get_inputs()[0].shape[2:])

    def run(self, x: Tensor) -> Tensor:
        """The session on a preprocessed batch (float32 logits)."""
        if all(isinstance(s, int) for s in self.shape) and tuple(x.shape[2:]) != self.shape:
            raise ExportError(
                f'The model is fed {x.shape[2]}x{x.shape[3]} inputs but the ONNX graph takes '
                f'{self.shape[0]}x{self.shape[1]}: export it with --shape {x.shape[2]} '
                f'{x.shape[3]}')
        if self.record is not None:
            self.record(x)
        return run_session(self.session, x)

    def __call__(self, data: dict) -> list:
        model = self.model
        with torch.no_grad():
            data = model.data_preprocessor(data, False)
            inputs, samples = data['inputs'], data['data_samples']
            if self.task == 'classification':
                return model.head._get_predictions(self.run(inputs), samples)

            def encode_decode(x: Tensor, metas: list) -> Tensor:
                return model.decode_head.predict_by_feat(self.run(x), metas)

            # slide and whole inference both call encode_decode per window / image
            model.encode_decode = encode_decode
            try:
                return model.predict(inputs, samples)
            finally:
                del model.encode_decode


def eval_split(cfg: Config) -> str:
    """The split an evaluation runs on: ``'test'`` if the config has a test loader, else
    ``'val'``."""
    return 'test' if cfg.get('test_dataloader') else 'val'


def main_metric(metrics: Mapping[str, float]) -> str:
    """The headline metric's key: top-1 for classifiers, mIoU for segmentors."""
    return next((k for k in MAIN_METRICS if k in metrics), next(iter(metrics)))


def evaluate(cfg: Config, predictor: Callable[[dict], list], split: str = 'test',
             max_images: int | None = None, desc: str = 'eval',
             progress: bool = True) -> dict[str, float]:
    """Evaluate a predictor on a split with the config's evaluator.

    Args:
        cfg: The config.
        predictor: :class:`OnnxPredictor` or :class:`TorchPredictor`.
        split: ``'test'`` or ``'val'``.
        max_images: Only the first N images.
        desc: Progress bar title.
        progress: Show a progress bar.

    Returns:
        The evaluator's metrics.
    """
    dataset = build_dataset(cfg, split)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    loader = make_loader(cfg, dataset, split, range(n))
    init_default_scope(cfg.get('default_scope') or 'mmengine')
    evaluator_cfg = cfg.get(f'{split}_evaluator') or cfg.get('test_evaluator') \
        or cfg.get('val_evaluator')
    evaluator = Evaluator(copy.deepcopy(evaluator_cfg))
    evaluator.dataset_meta = dataset.metainfo
    for data in tqdm(loader, desc=desc, unit='batch', disable=not progress, leave=False):
        evaluator.process(data_samples=predictor(data), data_batch=data)
    return {k: float(v) for k, v in evaluator.evaluate(n).items()}


def calib_images(folder: str | os.PathLike) -> list[Path]:
    """The images of ``folder`` (``--calib-dir``; recursively, sorted by path).

    Raises:
        FileNotFoundError: No such folder.
        NotADirectoryError: It is a file.
        FileNotFoundError: It holds no images.
        DataError: A file that no OpenCV decoder reads (e.g. text named ``a.png``).
    """
    path = Path(os.path.expanduser(os.fspath(folder)))
    if not path.exists():
        raise FileNotFoundError(f'--calib-dir {path} does not exist')
    if not path.is_dir():
        raise NotADirectoryError(f'--calib-dir {path} is not a directory')
    try:
        images = collect_images([path])
    except ValueError as err:  # RuntimeInputError: no images
        raise FileNotFoundError(f'--calib-dir: {err}') from None
    for image in images:  # the header only: a file no decoder knows is refused before any work
        if not cv2.haveImageReader(str(image)):
            raise DataError(f'--calib-dir: {image} is not an image that OpenCV can read')
    return images


def _load_image(pipeline: Any, image: Path) -> dict:
    """One image through the test pipeline; an unreadable file is one line naming it."""
    try:
        data = pipeline(dict(img_path=str(image)))
    except Exception as err:  # mmcv asserts on a file it cannot decode: name the file
        raise DataError(f'--calib-dir: cannot read {image} as an image') from err
    if data is None:
        raise DataError(f'--calib-dir: the test pipeline drops {image}')
    return data


def _image_batches(cfg: Config, task: str, images: Sequence[Path],
                   order: Sequence[int]) -> Iterator[dict]:
    """Batches of one image each, through the test pipeline (annotations dropped)."""
    init_default_scope(cfg.get('default_scope') or 'mmengine')
    pipeline = Compose([s for s in test_pipeline(cfg, task)
                        if str(s.get('type', '')).split('.')[-1] != 'LoadAnnotations'])
    for index in order:
        yield pseudo_collate([_load_image(pipeline, images[index])])


def capture_inputs(cfg: Config, model: nn.Module, session: Any, num: int, split: str = 'train',
                   seed: int = 0, progress: bool = True,
                   images: Sequence[Path] | None = None) -> list[np.ndarray]:
    """The first ``num`` tensors the exported model is fed on a random subset of a split (or
    of ``images``, a folder's files).

    The images go through the config's test pipeline and the model's own inference (a
    segmentor's slide windows included), so these are exactly the inputs the ONNX model
    sees when deployed, taken from images it is never evaluated on (``train``).

    Args:
        cfg: The config.
        model: The config's model (for preprocessing and inference logic).
        session: The fp32 session (its static batch sets the chunk size).
        num: How many inputs.
        split: Where the images come from (without ``images``).
        seed: Order of the images.
        progress: Show a progress bar.
        images: Image files to use instead of the split.

    Returns:
        Up to ``num`` arrays of the session's input shape (batch 1 if its batch is dynamic).

    Raises:
        DataError: An image of ``images`` the pipeline cannot read.
        ExportError: An image the graph's input size does not fit (from the session).
    """
    dataset = build_dataset(cfg, split) if images is None else None
    count = len(dataset) if images is None else len(images)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    batches = (make_loader(cfg, dataset, split, order, batch_size=1) if images is None else
               _image_batches(cfg, task_of(model), images, order))
    rows = session_batch(session) or 1
    captured: list[np.ndarray] = []

    def record(x: Tensor) -> None:
        for chunk in x.split(rows):
            if len(chunk) == rows and len(captured) < num:
                captured.append(chunk.numpy().astype(np.float32))

    predictor = OnnxPredictor(model, session, record)
    # images read, out of those that can be needed (one input or more per image: a
    # segmentor's slide windows), never more than there are
    bar = tqdm(total=min(num, count), desc=f'calibration images ({split})', unit='image',
               disable=not progress, leave=False)
    for data in batches:
        predictor(data)
        bar.update(1)
        if len(captured) >= num:
            break
    bar.close()
    if not captured:
        raise FileNotFoundError(f'No {split} images to calibrate on')
    return captured


def time_sessions(sessions: Mapping[str, Any], x: np.ndarray, warmup: int = 5,
                  iters: int | None = None, rounds: int = 5,
                  round_seconds: float = 0.25) -> dict[str, dict]:
    """Milliseconds per ``session.run`` on ``x``, rounds interleaved over the sessions.

    The benchmark's timing loop (:func:`mmrepvgg.utils.timing.time_interleaved`):
    round 1 of every session, then round 2, ..., the order rotated each round, so a busy
    machine slows them alike. The speed is the median round.

    Args:
        sessions: ``{name: session}``.
        x: The input batch.
        warmup: Untimed runs per session.
        iters: Runs per round (None: enough for ``round_seconds`` on the slowest session).
        rounds: Timed rounds.
        round_seconds: Target length of a round when ``iters`` is None.

    Returns:
        ``{name: dict(ms=median, ms_best=best, rounds=[...], iters=n)}``.
    """
    runs = {}
    for name, s in sessions.items():
        inp = s.get_inputs()[0]
        feed = {inp.name: x.astype(np.float16 if inp.type == 'tensor(float16)' else np.float32)}
        runs[name] = functools.partial(s.run, None, feed)
    if iters is None:  # one timed run each (after the warm-up) sizes the rounds
        calls_per_s = time_interleaved(runs, iters=1, warmup=warmup, log=None)
        slowest = 1 / min(rate for (rate, ) in calls_per_s)
        iters = int(min(1000, max(3, round_seconds / max(slowest, 1e-6))))
        warmup = 0
    rates = time_interleaved(runs, iters=iters, rounds=rounds, warmup=warmup, log=None)
    result = {}
    for name, per_round in zip(runs, rates):
        ms = [1000 / rate for rate in per_round]
        result[name] = dict(ms=statistics.median(ms), ms_best=min(ms), rounds=ms, iters=iters)
    return result


def deployed_input_shape(cfg: Config, model: nn.Module) -> tuple[int, int]:
    """The ``(H, W)`` the network sees at test time on this config's data.

    A slide-inference segmentor sees its window (``test_cfg.crop_size``); otherwise the
    first test image after the test pipeline and the data preprocessor.
    """
    test_cfg = getattr(model, 'test_cfg', None) or {}
    if test_cfg.get('mode') == 'slide':
        return tuple(test_cfg['crop_size'])
    dataset = build_dataset(cfg, 'test')
    data = next(iter(make_loader(cfg, dataset, 'test', [0], batch_size=1)))
    with torch.no_grad():
        inputs = model.data_preprocessor(data, False)['inputs']
    return tuple(int(s) for s in inputs.shape[-2:])


def evaluate_export(cfg: Config, model: nn.Module, deployed: bool = False,
                    checkpoint_meta: Mapping | None = None, shape: tuple[int, int] | None = None,
                    split: str = 'test', max_images: int | None = None,
                    threads: int | None = None, progress: bool = True) -> dict:
    """Export a loaded model to ONNX and evaluate the ONNX model and the PyTorch one alike.

    The PyTorch reference is the model as loaded (training-time or deployed), run with its
    own ``test_step``; then it is folded and exported, and the ONNX model runs inside the
    same pre- and post-processing (:class:`OnnxPredictor`).

    Args:
        cfg: The config (data roots set).
        model: The model (:func:`~mmrepvgg.deploy.build.load_model`); folded in place.
        deployed: The model is already folded.
        checkpoint_meta: The checkpoint's meta (class names in the ONNX metadata).
        shape: Graph input size (default: :func:`deployed_input_shape`).
        split: ``'test'`` or ``'val'``.
        max_images: Only the first N images.
        threads: ONNX Runtime threads.
        progress: Show progress bars.

    Returns:
        ``dict(metric, pytorch, onnx, diff, shape, export)`` with both metric dicts and the
        :class:`~mmrepvgg.deploy.onnx.ExportReport` (``export.proto``: the model to write).
    """
    shape = tuple(shape or deployed_input_shape(cfg, model))
    torch_metrics = evaluate(cfg, TorchPredictor(model), split, max_images, 'eval PyTorch',
                             progress)
    report = export_onnx(model, cfg, ExportOptions(shape=shape), deployed, checkpoint_meta)
    onnx_metrics = evaluate(cfg, OnnxPredictor(model, create_session(report.proto, threads)),
                            split, max_images, 'eval ONNX', progress)
    key = main_metric(torch_metrics)
    return dict(metric=key, pytorch=torch_metrics, onnx=onnx_metrics, shape=list(shape),
                diff=onnx_metrics[key] - torch_metrics[key], export=report)
