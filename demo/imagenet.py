"""A tiny ImageNet in the layout mmpretrain's ``ImageNet`` dataset reads, from scikit-learn's
digits (the configs ``configs/*_in1k.py`` run on it as written: tests/configs)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from mmengine.logging import print_log
from PIL import Image

from mmrepvgg.utils.fileio import fresh_work_dir

#: The WordNet ids of ImageNet-1k's first ten classes (label 0-9), used as the class folders.
WNIDS = ('n01440764', 'n01443537', 'n01484850', 'n01491361', 'n01494475', 'n01496331',
         'n01498041', 'n01514668', 'n01514859', 'n01518878')


def make_tiny_imagenet(root: str | os.PathLike, num_train: int = 2, num_val: int = 1,
                       size: int = 64) -> dict[str, int]:
    """Write digits as a tiny ImageNet (digit ``d`` is ImageNet label ``d``).

    Layout (ImageNet's, as mmpretrain's ``ImageNet(data_root, split=...)`` reads it)::

        root/train/n01440764/n01440764_0.JPEG ...
        root/val/ILSVRC2012_val_00000001.JPEG ...
        root/meta/train.txt   "n01440764/n01440764_0.JPEG 0" per line
        root/meta/val.txt     "ILSVRC2012_val_00000001.JPEG 3" per line

    The folder must be new or empty, or one this function made before (emptied first:
    :func:`mmrepvgg.utils.fileio.fresh_work_dir`).

    Args:
        root: Output folder.
        num_train: Training images (the first digits of scikit-learn's set).
        num_val: Validation images (the next ones).
        size: Side of the upscaled RGB images (from 8x8).

    Returns:
        ``{'train': n, 'val': n}``.
    """
    from sklearn.datasets import load_digits
    fresh_work_dir(root, what='demo.datasets.make_tiny_imagenet')
    digits = load_digits()
    images = (digits.images / 16.0 * 255).clip(0, 255).astype(np.uint8)
    root = Path(root)
    (root / 'meta').mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {'train': [], 'val': []}
    for i in range(num_train + num_val):
        label = int(digits.target[i])
        img = Image.fromarray(images[i]).resize((size, size), Image.BILINEAR).convert('RGB')
        if i < num_train:
            rel = f'{WNIDS[label]}/{WNIDS[label]}_{i}.JPEG'
            split = 'train'
        else:
            rel = f'ILSVRC2012_val_{i - num_train + 1:08d}.JPEG'
            split = 'val'
        path = root / split / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format='JPEG', quality=95)
        lines[split].append(f'{rel} {label}\n')
    for split, text in lines.items():
        (root / 'meta' / f'{split}.txt').write_text(''.join(text))
    print_log(f'Wrote a tiny ImageNet ({num_train} train, {num_val} val, {size}x{size}) to '
              f'{root}', logger='current')
    return {split: len(text) for split, text in lines.items()}
