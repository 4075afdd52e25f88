"""Run an exported model over image files and folders and write its results.

- segmentor: ``OUT_DIR/<image stem>.png``, the label map (train ids, one channel, uint8 up
  to 256 classes, else uint16) at the image's size, and ``OUT_DIR/<image stem>_overlay.jpg``,
  the image blended with the class colours;
- classifier: ``OUT_DIR/predictions.json``, the top-k class names and softmax scores of
  every image.

Every input and output is checked before the first image is run: a missing or unreadable
input, an existing output without ``force``, an output that is an input, or two inputs
that would write the same file fail at once, with nothing written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ._deps import np
from .errors import RuntimeInputError
from .files import (check_outputs, check_readable, collect_images, prepare_out_dir,
                    segmentation_outputs, write_image, write_json)
from .image import default_palette, overlay as blend, read_image
from .model import OnnxModel
from .progress import Progress

PREDICTIONS = 'predictions.json'


def infer(model: str | os.PathLike | OnnxModel, inputs: Sequence[str | os.PathLike],
          out_dir: str | os.PathLike, force: bool = False, threads: int | None = None,
          topk: int | None = None, overlay: bool = True, alpha: float = 0.5,
          progress: bool = True) -> dict:
    """Run ``model`` on every image of ``inputs`` and write the results to ``out_dir``.

    Args:
        model: The ONNX file (or a loaded :class:`OnnxModel`).
        inputs: Image files and folders (searched recursively).
        out_dir: Where to write (created if missing).
        force: Overwrite existing outputs.
        threads: ONNX Runtime intra-op threads (None: its default).
        topk: Classes per image for a classifier (default: the model's metadata, 5).
        overlay: Also write colour overlays (segmentors).
        alpha: Weight of the class colour in the overlay.
        progress: Show a progress bar on stderr.

    Returns:
        ``dict(task, images, outputs)``; for a classifier also ``predictions``.

    Raises:
        FileNotFoundError, RuntimeInputError, FileExistsError, ...: Bad input, in one line.
    """
    if topk is not None and (not isinstance(topk, int) or topk < 1):
        raise RuntimeInputError(f'--topk must be an int >= 1, got {topk!r}')
    if not 0 <= alpha <= 1:
        raise RuntimeInputError(f'--alpha must be in [0, 1], got {alpha}')
    images = collect_images(inputs)
    check_readable(images)
    net = model if isinstance(model, OnnxModel) else OnnxModel(model, threads)
    out = Path(os.path.expanduser(os.fspath(out_dir)))
    sources = images + [Path(net.path)]
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f'--out-dir {out} is a file, not a directory')
    bar_desc = f'{Path(net.path).name} ({net.spec.precision})'
    if net.spec.task == 'segmentation':
        plans = segmentation_outputs(images, out, overlay)
        check_outputs([p for pair in plans for p in pair if p is not None], force, sources)
        prepare_out_dir(out)
        palette = np.asarray(net.spec.palette, np.uint8) if net.spec.palette else None
        bar = Progress(len(images), bar_desc, progress)
        written = []
        try:
            for img_path, (label_path, overlay_path) in zip(images, plans):
                img = _read(img_path)
                labels = _run(net.segment, img, img_path)
                written.append(str(write_image(label_path, labels, force)))
                if overlay_path is not None:
                    if palette is None or len(palette) < int(labels.max()) + 1:
                        palette = default_palette(max(int(labels.max()) + 1, 2))
                    written.append(str(write_image(overlay_path, blend(img, labels, palette,
                                                                       alpha), force)))
                bar.update()
        finally:
            bar.close()
        return dict(task='segmentation', images=len(images), outputs=written)
    path = out / PREDICTIONS
    check_outputs([path], force, sources)
    prepare_out_dir(out)
    k = topk or net.spec.topk
    bar = Progress(len(images), bar_desc, progress)
    rows = []
    try:
        for img_path in images:
            scores = _run(net.classify, _read(img_path), img_path)
            order = np.argsort(-scores, kind='stable')[:min(k, len(scores))]
            best = int(order[0])
            rows.append(dict(image=str(img_path), pred_label=best,
                             pred_class=net.class_name(best), pred_score=float(scores[best]),
                             topk=[dict(label=int(i), **{'class': net.class_name(int(i))},
                                        score=float(scores[i])) for i in order]))
            bar.update()
    finally:
        bar.close()
    write_json(path, dict(model=net.path, task='classification', precision=net.spec.precision,
                          topk=min(k, len(scores)), predictions=rows), force)
    return dict(task='classification', images=len(images), outputs=[str(path)],
                predictions=rows)


def _read(path: Path) -> np.ndarray:
    return read_image(path)


def _run(fn, img: np.ndarray, path: Path):
    """``fn(img)``, with the image named in a size error."""
    try:
        return fn(img)
    except RuntimeInputError as err:
        raise RuntimeInputError(f'{path}: {err}') from None
