"""Run an exported model over image files and folders and write its results.

- segmentor: ``OUT_DIR/<image stem>.png``, the label map (train ids, one channel, uint8 up
  to 256 classes, else uint16) at the image's size, and ``OUT_DIR/<image stem>_overlay.jpg``,
  the image blended with the class colours;
- classifier: ``OUT_DIR/predictions.json``, the top-k class names and softmax scores of
  every image.

All or nothing: every input and output is checked before the first image is run (a
missing, unreadable or oversized input, an existing output without ``force``, an output
that is an input, two inputs that would write the same file), and the results go to a
hidden staging folder that is moved into place only once every image has run; any error
or interrupt leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ._deps import np
from .errors import RuntimeInputError
from .files import check_output_paths, collect_images, write_atomic, write_json_atomic
from .image import check_readable, default_palette, encode_image, overlay as blend, read_image
from .model import OnnxModel
from .progress import Progress

PREDICTIONS = 'predictions.json'


def segmentation_outputs(images: Sequence[Path], out_dir: Path,
                         overlay: bool = True) -> list[tuple[Path, Path | None]]:
    """``(label map, overlay)`` paths per image: ``DIR/<stem>.png``, ``DIR/<stem>_overlay.jpg``.

    Raises:
        RuntimeInputError: Two inputs would write the same output (same file name stem).
    """
    plans, owner = [], {}
    for img in images:
        paths = (out_dir / f'{img.stem}.png',
                 out_dir / f'{img.stem}_overlay.jpg' if overlay else None)
        for path in filter(None, paths):
            if path.name in owner:
                raise RuntimeInputError(f'{owner[path.name]} and {img} would both write '
                                        f'{path}: give inputs with different file names')
            owner[path.name] = img
        plans.append(paths)
    return plans


@contextlib.contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A hidden temporary folder on ``out_dir``'s file system (inside it if it exists, else
    beside its nearest existing parent, so that a failed run creates no folder), removed at
    the end whatever happens."""
    parent = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    stage = Path(tempfile.mkdtemp(prefix='.mmrepvgg-infer-', dir=parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(staged: list[tuple[Path, Path]], force: bool, inputs: Sequence[Path]) -> None:
    """Move each finished ``(staged file, output)`` into place through the one writer."""
    for src, dst in staged:
        write_atomic(dst, lambda tmp, src=src: os.replace(src, tmp), force, inputs)


def _segment_all(net: OnnxModel, images: Sequence[Path], plans: Sequence[tuple],
                 stage: Path, alpha: float, bar: Progress) -> list[tuple[Path, Path]]:
    """Label maps (and overlays) of every image, written into ``stage``."""
    palette = np.asarray(net.spec.palette, np.uint8) if net.spec.palette else None
    staged = []
    for img_path, (label_path, overlay_path) in zip(images, plans):
        img = read_image(img_path)
        labels = _run(net.segment, img, img_path)
        results = [(label_path, labels)]
        if overlay_path is not None:
            if palette is None or len(palette) < int(labels.max()) + 1:
                palette = default_palette(max(int(labels.max()) + 1, 2))
            results.append((overlay_path, blend(img, labels, palette, alpha)))
        for path, array in results:
            (stage / path.name).write_bytes(encode_image(array, path.suffix))
            staged.append((stage / path.name, path))
        bar.update()
    return staged


def _classify_all(net: OnnxModel, images: Sequence[Path], k: int, bar: Progress) -> list:
    """The top-``k`` predictions of every image (rows of ``predictions.json``)."""
    rows = []
    for img_path in images:
        scores = _run(net.classify, read_image(img_path), img_path)
        order = np.argsort(-scores, kind='stable')[:min(k, len(scores))]
        best = int(order[0])
        rows.append(dict(image=str(img_path), pred_label=best,
                         pred_class=net.class_name(best), pred_score=float(scores[best]),
                         topk=[dict(label=int(i), **{'class': net.class_name(int(i))},
                                    score=float(scores[i])) for i in order]))
        bar.update()
    return rows


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
        FileNotFoundError, RuntimeInputError, FileExistsError, ...: Bad input, in one line
            (nothing written).
    """
    if topk is not None and (not isinstance(topk, int) or topk < 1):
        raise RuntimeInputError(f'--topk must be an int >= 1, got {topk!r}')
    if not 0 <= alpha <= 1:
        raise RuntimeInputError(f'--alpha must be in [0, 1], got {alpha}')
    images = collect_images(inputs)
    check_readable(images)
    net = model if isinstance(model, OnnxModel) else OnnxModel(model, threads)
    out = Path(os.path.expanduser(os.fspath(out_dir)))
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f'--out-dir {out} is a file, not a directory')
    sources = images + [Path(net.path)]
    bar = Progress(len(images), f'{Path(net.path).name} ({net.spec.precision})', progress)
    if net.spec.task == 'segmentation':
        plans = segmentation_outputs(images, out, overlay)
        outputs = check_output_paths([p for pair in plans for p in pair], force, sources)
        with _staging(out) as stage, contextlib.closing(bar):
            _publish(_segment_all(net, images, plans, stage, alpha, bar), force, sources)
        return dict(task='segmentation', images=len(images), outputs=list(map(str, outputs)))
    path = check_output_paths([out / PREDICTIONS], force, sources)[0]
    with contextlib.closing(bar):
        rows = _classify_all(net, images, topk or net.spec.topk, bar)
    k = len(rows[0]['topk'])
    write_json_atomic(path, dict(model=net.path, task='classification',
                                 precision=net.spec.precision, topk=k, predictions=rows),
                      force, sources, indent=2)
    return dict(task='classification', images=len(images), outputs=[str(path)],
                predictions=rows)


def _run(fn: Callable[[Any], Any], img: np.ndarray, path: Path) -> Any:
    """``fn(img)``, with the image named in a size error."""
    try:
        return fn(img)
    except RuntimeInputError as err:
        raise RuntimeInputError(f'{path}: {err}') from None
