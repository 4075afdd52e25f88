"""scikit-learn's handwritten digits as an ImageNet-style image folder."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from mmengine.logging import print_log
from PIL import Image


def make_digits_folder(root: str | os.PathLike, size: int = 32, test_fraction: float = 0.25,
                       seed: int = 0) -> dict[str, int]:
    """Write the 1797 8x8 digits of :func:`sklearn.datasets.load_digits`, upscaled.

    Layout (mmpretrain's ``CustomDataset`` reads it, one folder per class)::

        root/train/0/00000.png ... root/train/9/...
        root/test/0/...

    Args:
        root: Output folder.
        size: Side of the upscaled RGB images (bilinear, from 8x8).
        test_fraction: Fraction held out as ``test`` (stratified).
        seed: Split seed.

    Returns:
        ``{'train': n, 'test': n}``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0 * 255).clip(0, 255).astype(np.uint8)
    idx = np.arange(len(images))
    train_idx, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed,
                                           stratify=digits.target)
    counts = {}
    for split, ids in (('train', train_idx), ('test', test_idx)):
        for i in ids:
            folder = Path(root) / split / str(int(digits.target[i]))
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(images[i]).resize((size, size), Image.BILINEAR).convert('RGB')
            img.save(folder / f'{int(i):05d}.png')
        counts[split] = len(ids)
    print_log(f'Wrote digits to {root}: {counts["train"]} train, {counts["test"]} test '
              f'({size}x{size})', logger='current')
    return counts
