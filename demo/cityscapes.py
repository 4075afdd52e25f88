"""Cityscapes data: the official preparation step and a tiny synthetic stand-in.

:func:`prepare_cityscapes` makes the ``*_gtFine_labelTrainIds.png`` maps that mmseg's
``CityscapesDataset`` reads, from the polygon files of the official download, with
cityscapesscripts (as mmseg's own ``tools/dataset_converters/cityscapes.py``).

:func:`make_tiny_cityscapes` writes a few synthetic street scenes in exactly the official
layout (``leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and
``gtFine/{train,val}/<city>/..._gtFine_{polygons.json,labelIds.png,instanceIds.png,color.png}``)
so that the preparation step, training and testing run end to end without a download.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from mmengine.logging import print_log
from mmengine.utils import track_parallel_progress, track_progress
from PIL import Image

from mmrepvgg.utils.errors import DataError
from mmrepvgg.utils.fileio import fresh_work_dir

#: The 19 classes of Cityscapes' train ids, in train-id order.
TRAIN_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
                 'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car',
                 'truck', 'bus', 'train', 'motorcycle', 'bicycle')


def _json_to_train_ids(json_file: str) -> str:
    from cityscapesscripts.preparation.json2labelImg import json2labelImg
    out = json_file.replace('_polygons.json', '_labelTrainIds.png')
    try:
        json2labelImg(json_file, out, 'trainIds')
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        # json.JSONDecodeError, or a JSON without imgHeight / objects / polygon lists
        what = f'missing {err}' if isinstance(err, KeyError) else f'{type(err).__name__}: {err}'
        raise DataError(f'{json_file} is not a Cityscapes polygon file ({what}); '
                        're-extract it from gtFine_trainvaltest.zip') from None
    return out


def prepare_cityscapes(root: str | os.PathLike, gt_dir: str = 'gtFine', nproc: int = 1,
                       splits: Sequence[str] = ('train', 'val', 'test')) -> list[str]:
    """Make ``*_gtFine_labelTrainIds.png`` next to every ``*_gtFine_polygons.json``.

    Also writes ``<root>/<split>.txt`` listing the image stems of each split that exists.

    Args:
        root: The Cityscapes root holding ``leftImg8bit/`` and ``gtFine/``.
        gt_dir: The annotation folder under ``root``.
        nproc: Worker processes.
        splits: The splits to list.

    Returns:
        The label files written.

    Raises:
        FileNotFoundError: If ``root/gt_dir`` has no polygon files.
        DataError: If a polygon file is not one (not JSON, fields missing).
    """
    gt_root = Path(root) / gt_dir
    polys = sorted(str(p) for p in gt_root.rglob('*_gtFine_polygons.json')) \
        if gt_root.is_dir() else []
    if not polys:
        raise FileNotFoundError(
            f'No *_gtFine_polygons.json under {gt_root}. Download gtFine_trainvaltest.zip and '
            'leftImg8bit_trainvaltest.zip from https://www.cityscapes-dataset.com and unzip '
            'both into the same folder (or run tools/make_tiny_cityscapes.py for a synthetic one).')
    print_log(f'Converting {len(polys)} polygon files under {gt_root} to train ids',
              logger='current')
    if nproc > 1:
        outs = track_parallel_progress(_json_to_train_ids, polys, nproc)
    else:
        outs = track_progress(_json_to_train_ids, polys)
    for split in splits:
        split_dir = gt_root / split
        if not split_dir.is_dir():
            continue
        stems = sorted(str(p.relative_to(split_dir)).replace('_gtFine_polygons.json', '')
                       for p in split_dir.rglob('*_gtFine_polygons.json'))
        (Path(root) / f'{split}.txt').write_text(''.join(s + '\n' for s in stems))
    return outs


# ------------------------------------------------------------------------------ tiny dataset

def _rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _scene(rng: np.random.Generator, h: int, w: int, extra: Sequence[str]) -> list[dict]:
    """Polygons of one street scene, drawn in order (later ones on top)."""
    objs: list[tuple[str, list]] = []
    horizon = h * rng.uniform(0.35, 0.5)
    objs.append(('sky', _rect(0, 0, w, horizon + 2)))
    # buildings with a jagged roofline
    xs = np.linspace(0, w, int(rng.integers(4, 8)) + 1)
    for x0, x1 in zip(xs[:-1], xs[1:]):
        top = h * rng.uniform(0.05, 0.3)
        label = 'building' if rng.random() > 0.2 else str(rng.choice(['wall', 'vegetation']))
        objs.append((label, _rect(x0, top, x1, horizon + 2)))
    road_top = horizon
    objs.append(('sidewalk', [[0, road_top], [w, road_top], [w, h], [0, h]]))
    objs.append(('road', [[w * 0.35, road_top], [w * 0.65, road_top], [w * 0.9, h],
                          [w * 0.1, h]]))
    objs.append(('terrain', [[0, road_top], [w * 0.1, road_top], [0, road_top + h * 0.15]]))
    # a fixed part of the street furniture, then random objects (all 19 classes appear)
    sizes = {'pole': (0.02, 0.5), 'traffic light': (0.03, 0.08), 'traffic sign': (0.05, 0.06),
             'person': (0.04, 0.2), 'rider': (0.05, 0.2), 'car': (0.2, 0.15),
             'truck': (0.25, 0.25), 'bus': (0.3, 0.3), 'train': (0.4, 0.25),
             'motorcycle': (0.08, 0.1), 'bicycle': (0.08, 0.1), 'fence': (0.3, 0.1),
             'vegetation': (0.15, 0.2), 'wall': (0.2, 0.12), 'terrain': (0.2, 0.08),
             'building': (0.2, 0.2), 'sky': (0.1, 0.05), 'road': (0.2, 0.05),
             'sidewalk': (0.2, 0.05)}
    def place(label: str, x_lo: float, x_hi: float) -> None:
        bw, bh = sizes[label]
        bw = min(bw * w * rng.uniform(0.8, 1.2), x_hi - x_lo)
        bh = bh * h * rng.uniform(0.8, 1.2)
        x0 = rng.uniform(x_lo, x_hi - bw)
        if label == 'sky':
            y1 = rng.uniform(bh, horizon)
        else:
            y1 = rng.uniform(min(road_top + bh * 0.3, h * 0.9), h * 0.9)
        objs.append((label, _rect(x0, max(0.0, y1 - bh), x0 + bw, y1)))

    for label in rng.choice(list(sizes), size=3):
        place(str(label), 0, w)
    # the classes this image must show: drawn last, side by side, above the ego vehicle
    for i, label in enumerate(extra):
        place(label, w * i / len(extra), w * (i + 1) / len(extra))
    # the ego vehicle's bonnet: ignored (255) in train ids, as in the real data
    objs.append(('ego vehicle', [[0, h * 0.93], [w, h * 0.93], [w, h], [0, h]]))
    return [dict(label=label, polygon=[[round(float(x), 1), round(float(y), 1)] for x, y in poly])
            for label, poly in objs]


def _render(label_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB image whose colours depend on the class (plus texture noise)."""
    from cityscapesscripts.helpers.labels import id2label
    h, w = label_ids.shape
    img = np.zeros((h, w, 3), np.float32)
    for lid in np.unique(label_ids):
        color = np.array(id2label[int(lid)].color, np.float32)
        mask = label_ids == lid
        img[mask] = color * 0.8 + 20
    img += rng.normal(0, 12, size=img.shape).astype(np.float32)
    img *= np.linspace(0.85, 1.1, h, dtype=np.float32)[:, None, None]  # vertical shading
    return np.clip(img, 0, 255).astype(np.uint8)


def make_tiny_cityscapes(root: str | os.PathLike,
                         num_train: int = 8,
                         num_val: int = 4,
                         size: tuple[int, int] = (128, 256),
                         seed: int = 0) -> dict[str, list[str]]:
    """Write a tiny synthetic Cityscapes in the official layout.

    Every scene is a set of polygons (sky, buildings, road, sidewalk and random objects; all
    19 train classes appear in each split when it has at least 2 images), written as
    ``*_gtFine_polygons.json``; the label, instance and colour maps are rasterized from them
    by cityscapesscripts and the image is rendered from the label map with class colours
    and noise. Train ids are *not* written: :func:`prepare_cityscapes` makes them, as for
    the real data.

    The folder must be new or empty, or one this function (or a demo) made before, which is
    then emptied first: the marker-file rule of :func:`mmrepvgg.utils.fileio.fresh_work_dir`.
    A folder holding anything else (real Cityscapes files, say) is refused, so nothing is
    ever overwritten.

    Args:
        root: Output folder (created).
        num_train: Images in ``train`` (cities ``aachen`` and ``bochum``).
        num_val: Images in ``val`` (city ``frankfurt``).
        size: Image ``(height, width)``; Cityscapes is 1024x2048.
        seed: Random seed (the output is deterministic).

    Returns:
        ``{split: [image paths]}``.

    Raises:
        FileExistsError: If ``root`` holds files that it did not write.
    """
    fresh_work_dir(root, what='tools/make_tiny_cityscapes.py or a demo')
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    h, w = size
    rng = np.random.default_rng(seed)
    cities = {'train': ('aachen', 'bochum'), 'val': ('frankfurt', )}
    written: dict[str, list[str]] = {}
    for split, n in (('train', num_train), ('val', num_val)):
        written[split] = []
        # spread the 19 classes over the split's images so that each appears
        order = list(TRAIN_CLASSES)
        per_image = [order[i::max(n, 1)] for i in range(max(n, 1))]
        for i in range(n):
            city = cities[split][i % len(cities[split])]
            stem = f'{city}_{i:06d}_000019'
            img_dir = Path(root) / 'leftImg8bit' / split / city
            gt_dir = Path(root) / 'gtFine' / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            poly_file = gt_dir / f'{stem}_gtFine_polygons.json'
            poly_file.write_text(json.dumps(dict(
                imgHeight=h, imgWidth=w, objects=_scene(rng, h, w, per_image[i % len(per_image)])),
                indent=1))
            ann = Annotation()
            ann.fromJsonFile(str(poly_file))
            ids = createLabelImage(ann, 'ids')
            ids.save(gt_dir / f'{stem}_gtFine_labelIds.png')
            createLabelImage(ann, 'color').save(gt_dir / f'{stem}_gtFine_color.png')
            # 16-bit like the official files (Pillow cannot write its 32-bit mode 'I' as PNG)
            inst = np.asarray(createInstanceImage(ann, 'ids')).astype(np.uint16)
            Image.fromarray(inst).save(gt_dir / f'{stem}_gtFine_instanceIds.png')
            img_path = img_dir / f'{stem}_leftImg8bit.png'
            Image.fromarray(_render(np.asarray(ids), rng)).save(img_path)
            written[split].append(str(img_path))
    print_log(f'Wrote a tiny Cityscapes ({num_train} train, {num_val} val, {h}x{w}) to {root}',
              logger='current')
    return written


def cityscapes_root_ok(root: str | os.PathLike, split: str = 'train') -> bool:
    """Whether ``root`` has images and train-id labels for ``split``."""
    gt = Path(root) / 'gtFine' / split
    return (Path(root) / 'leftImg8bit' / split).is_dir() and gt.is_dir() and any(
        gt.rglob('*_gtFine_labelTrainIds.png'))


__all__ = ['TRAIN_CLASSES', 'prepare_cityscapes', 'make_tiny_cityscapes', 'cityscapes_root_ok']
