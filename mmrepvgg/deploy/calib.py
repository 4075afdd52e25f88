"""Calibration inputs from any folder of images (``tools/quantize.py --calib-dir DIR``).

Deployment calibrators take a folder of representative images, not a dataset layout. Each
image goes through the config's **test pipeline** (the one the inferencers use, annotations
dropped) and the model's own test-time inference around the fp32 ONNX session (a
segmentor's whole image or sliding windows), and the tensors the session is fed are kept:
exactly what the deployed model sees, as :func:`~mmrepvgg.deploy.onnx_eval.capture_inputs`
collects them from the train split.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.registry import init_default_scope
from torch import nn
from tqdm import tqdm

from mmrepvgg_runtime.files import collect_images

from ..utils.errors import DataNotFoundError
from .metadata import task_of
from .onnx_eval import OnnxPredictor
from .ort import session_batch
from .runtime_meta import test_pipeline


def calib_images(folder: str | os.PathLike) -> list[Path]:
    """The images of ``folder`` (recursively, sorted by path).

    Raises:
        FileNotFoundError: No such folder.
        NotADirectoryError: It is a file.
        DataNotFoundError: It holds no images.
    """
    path = Path(os.path.expanduser(os.fspath(folder)))
    if not path.exists():
        raise FileNotFoundError(f'--calib-dir {path} does not exist')
    if not path.is_dir():
        raise NotADirectoryError(f'--calib-dir {path} is not a directory')
    try:
        return collect_images([path])
    except ValueError as err:  # RuntimeInputError: no images
        raise DataNotFoundError(f'--calib-dir: {err}') from None


def _pipeline(cfg: Config, task: str) -> Any:
    init_default_scope(cfg.get('default_scope') or 'mmengine')
    steps = [s for s in test_pipeline(cfg, task)
             if str(s.get('type', '')).split('.')[-1] != 'LoadAnnotations']
    return Compose(steps)


def capture_inputs_from_dir(cfg: Config, model: nn.Module, session: Any,
                            folder: str | os.PathLike, num: int, seed: int = 0,
                            progress: bool = True) -> list[np.ndarray]:
    """Up to ``num`` network inputs from the images of ``folder`` (seeded random order).

    Args:
        cfg: The config (its test pipeline).
        model: The config's model (pre- and post-processing, inference mode).
        session: The fp32 ONNX Runtime session (its static batch sets the chunk size).
        folder: The image folder.
        num: How many inputs.
        seed: Order of the images.
        progress: Show a progress bar.

    Returns:
        Arrays of the session's input shape (batch 1 if its batch is dynamic).

    Raises:
        FileNotFoundError, NotADirectoryError, DataNotFoundError: A bad folder.
        InputSizeError: An image the graph's input size does not fit (from the session).
    """
    images = calib_images(folder)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).tolist()
    pipeline = _pipeline(cfg, task_of(model))
    rows = session_batch(session) or 1
    captured: list[np.ndarray] = []

    def record(x: torch.Tensor) -> None:
        for chunk in x.split(rows):
            if len(chunk) == rows and len(captured) < num:
                captured.append(chunk.numpy().astype(np.float32))

    predictor = OnnxPredictor(model, session, record)
    bar = tqdm(total=num, desc=f'calibration inputs ({Path(folder).name})', unit='input',
               disable=not progress, leave=False)
    for index in order:
        data = pipeline(dict(img_path=str(images[index])))
        if data is None:
            raise ValueError(f'The test pipeline drops {images[index]}')
        before = len(captured)
        predictor(pseudo_collate([data]))
        bar.update(len(captured) - before)
        if len(captured) >= num:
            break
    bar.close()
    return captured
