"""Image reading and the test-time pipeline, as mmcv / mmseg / mmpretrain do it, in numpy + OpenCV.

Every step reproduces its OpenMMLab transform with the OpenCV backend (mmcv's default), so
the tensor fed to the network is the one ``inference_model`` / the inferencer would feed:

- :func:`read_image`: ``LoadImageFromFile`` (``cv2.imdecode`` with ``IMREAD_COLOR``: BGR,
  three channels, EXIF orientation applied);
- ``resize``: ``mmcv.transforms.Resize`` (``imrescale`` with ``keep_ratio``, else
  ``imresize`` to ``scale``);
- ``resize_edge``: ``mmpretrain.datasets.ResizeEdge``;
- ``center_crop``: ``mmcv.transforms.CenterCrop``;
- :func:`normalize`: the data preprocessor (channel flip, ``(x - mean) / std`` in float32).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ._deps import cv2, np
from .errors import RuntimeInputError, error_message
from .metadata import RuntimeSpec

#: The most pixels an image may have: OpenCV's own decoding limit (``CV_IO_MAX_IMAGE_PIXELS``).
MAX_PIXELS = int(os.environ.get('CV_IO_MAX_IMAGE_PIXELS', 1 << 30))

_INTERPOLATION = {'nearest': cv2.INTER_NEAREST, 'bilinear': cv2.INTER_LINEAR,
                  'bicubic': cv2.INTER_CUBIC, 'area': cv2.INTER_AREA,
                  'lanczos': cv2.INTER_LANCZOS4}


def header_size(head: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the start of a PNG, JPEG or BMP file (None: unknown).

    Read before decoding, so that an image too large to decode is refused in one line
    instead of in an OpenCV traceback (or after allocating gigabytes).
    """
    if head[:8] == b'\x89PNG\r\n\x1a\n' and head[12:16] == b'IHDR' and len(head) >= 24:
        return struct.unpack('>II', head[16:24])
    if head[:2] == b'BM' and len(head) >= 26:
        width, height = struct.unpack('<ii', head[18:26])
        return abs(width), abs(height)
    pos = 2 if head[:2] == b'\xff\xd8' else len(head)
    while pos + 9 <= len(head) and head[pos] == 0xFF:  # JPEG: the segments up to a frame
        marker = head[pos + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack('>HH', head[pos + 5:pos + 9])
            return width, height
        pos += 2 + struct.unpack('>H', head[pos + 2:pos + 4])[0]
    return None


def _check_size(path: str | os.PathLike, head: bytes) -> None:
    size = header_size(head)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise RuntimeInputError(f'{path} is {size[0]}x{size[1]} pixels, more than the '
                                f'{MAX_PIXELS} OpenCV decodes (CV_IO_MAX_IMAGE_PIXELS)')


def check_readable(images: Iterable[Path]) -> None:
    """Fail before any work if an input is not a format OpenCV reads or is too large (by
    its header).

    Raises:
        RuntimeInputError: Naming the first such file.
    """
    for path in images:
        if not cv2.haveImageReader(os.fspath(path)):
            raise RuntimeInputError(f'{path} is not an image OpenCV can read')
        with open(path, 'rb') as f:
            _check_size(path, f.read(1 << 16))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 BGR, as mmcv's ``LoadImageFromFile`` reads it.

    Raises:
        FileNotFoundError: No such file.
        RuntimeInputError: The file is not an image OpenCV can decode, or is too large.
    """
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f'No such image: {path}') from None
    except IsADirectoryError:
        raise RuntimeInputError(f'{path} is a directory, not an image') from None
    _check_size(path, data[:1 << 20].tobytes())
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error as err:  # a format whose size the header check does not read
        raise RuntimeInputError(f'Cannot read {path}: {error_message(err, True)}') from None
    if img is None:
        raise RuntimeInputError(f'Cannot read {path} as an image (not an image file OpenCV '
                                'can decode, or corrupt)')
    return img


def encode_image(img: np.ndarray, ext: str) -> bytes:
    """``img`` encoded as ``ext`` (``'.png'``: lossless, ``'.jpg'``)."""
    ok, buf = cv2.imencode(ext, img)
    if not ok:  # pragma: no cover  (PNG / JPEG of uint8 or uint16 always encode)
        raise RuntimeInputError(f'Cannot encode a {img.shape} {img.dtype} image as {ext}')
    return buf.tobytes()


def rescale_size(width: int, height: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv's ``rescale_size``: ``(w, h)`` fitting the long and short edge of ``scale``."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(width * float(factor) + 0.5), int(height * float(factor) + 0.5)


def resize_edge_size(width: int, height: int, scale: int, edge: str) -> tuple[int, int]:
    """mmpretrain's ``ResizeEdge``: the ``(w, h)`` it resizes to (truncating, as it does)."""
    if (edge == 'short' and width < height) or (edge == 'long' and width > height) \
            or edge == 'width':
        return scale, int(scale * height / width)
    return int(scale * width / height), scale


def center_crop_box(width: int, height: int, crop: Sequence[int]) -> tuple[int, int, int, int]:
    """mmcv's ``CenterCrop`` box ``(x1, y1, x2, y2)``, end-exclusive; ``crop`` is ``(w, h)``.

    A crop larger than the image is clipped to it, as mmcv does (without ``auto_pad``).
    """
    crop_w, crop_h = min(crop[0], width), min(crop[1], height)
    y1 = max(0, int(round((height - crop_h) / 2.)))
    x1 = max(0, int(round((width - crop_w) / 2.)))
    return x1, y1, min(width, x1 + crop_w), min(height, y1 + crop_h)


def apply_step(img: np.ndarray, step: Mapping) -> np.ndarray:
    """One pipeline step (see :mod:`mmrepvgg_runtime.metadata`) on a ``(H, W, 3)`` image."""
    height, width = img.shape[:2]
    interp = _INTERPOLATION[step.get('interpolation', 'bilinear')]
    kind = step['type']
    if kind == 'resize':
        size = (rescale_size(width, height, step['scale']) if step['keep_ratio']
                else tuple(step['scale']))
    elif kind == 'resize_edge':
        size = resize_edge_size(width, height, step['scale'], step['edge'])
    elif kind == 'center_crop':
        x1, y1, x2, y2 = center_crop_box(width, height, step['crop_size'])
        return img[y1:y2, x1:x2]
    else:  # pragma: no cover  (RuntimeSpec validates the types)
        raise RuntimeInputError(f'Unknown pipeline step {kind!r}')
    if min(size) < 1 or size[0] * size[1] > MAX_PIXELS:
        raise RuntimeInputError(f'A {width}x{height} image resizes to {size[0]}x{size[1]} '
                                f'({kind}): too {"small" if min(size) < 1 else "large"}')
    return cv2.resize(img, size, interpolation=interp)


def run_pipeline(img: np.ndarray, spec: RuntimeSpec) -> np.ndarray:
    """All pipeline steps of ``spec`` on a BGR uint8 image (returns the image the network
    sees, before normalization)."""
    for step in spec.pipeline:
        img = apply_step(img, step)
    return img


def normalize(img: np.ndarray, spec: RuntimeSpec) -> np.ndarray:
    """``(H, W, 3)`` uint8 BGR -> ``(3, H, W)`` float32: channel flip and ``(x - mean) / std``,
    in the order and precision of OpenMMLab's data preprocessors."""
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    if spec.bgr_to_rgb:
        chw = chw[::-1]
    x = chw.astype(np.float32)
    if spec.mean is not None:
        mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)


def overlay(img: np.ndarray, labels: np.ndarray, palette: np.ndarray,
            alpha: float = 0.5) -> np.ndarray:
    """The image blended with the colour of each pixel's class.

    Args:
        img: ``(H, W, 3)`` uint8 BGR image.
        labels: ``(H, W)`` label map (class indices).
        palette: ``(num_classes, 3)`` uint8 **RGB** colours.
        alpha: Weight of the colour.

    Returns:
        ``(H, W, 3)`` uint8 BGR.
    """
    colours = palette[np.clip(labels, 0, len(palette) - 1)][..., ::-1].astype(np.float32)
    out = img.astype(np.float32) * (1 - alpha) + colours * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def default_palette(num_classes: int, seed: int = 42) -> np.ndarray:
    """A fixed random RGB palette for models without one (``(num_classes, 3)`` uint8)."""
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(num_classes, 3)).astype(np.uint8)
