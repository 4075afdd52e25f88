"""Post-processing of the network's logits in numpy, as PyTorch / mmseg / mmpretrain compute it.

- :func:`resize_bilinear`: ``torch.nn.functional.interpolate(mode='bilinear')`` (no
  antialiasing), with either ``align_corners``;
- :func:`label_map`: the resize to the image size and the argmax over classes (or the
  sigmoid threshold of a one-channel segmentor) of mmseg's ``postprocess_result``;
- :func:`softmax`, :func:`top_k`: mmpretrain's ``ClsHead`` scores and labels.
"""
from __future__ import annotations

from typing import Sequence

from ._deps import np

#: Output rows computed per chunk when resizing to a large image (bounds the memory).
ROW_CHUNK = 128


def _axis_weights(size_in: int, size_out: int, align_corners: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and the weight of the high one, along one axis.

    PyTorch's ``area_pixel_compute_source_index``: with ``align_corners`` the corners map
    onto each other (scale ``(in - 1) / (out - 1)``); without, pixel centres do
    (``src = (dst + 0.5) * in / out - 0.5``, clamped at 0).
    """
    dst = np.arange(size_out, dtype=np.float64)
    if align_corners:
        scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
        src = dst * scale
    else:
        src = np.maximum((dst + 0.5) * (size_in / size_out) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    weight = (src - low).astype(np.float32)
    return low, high, weight


def resize_bilinear(x: np.ndarray, size: Sequence[int], align_corners: bool = False,
                    rows: slice | None = None) -> np.ndarray:
    """Bilinear resize of ``(C, H, W)`` maps to ``size = (h, w)`` (PyTorch's semantics).

    Args:
        x: The maps (float32).
        size: Output ``(h, w)``.
        align_corners: As ``F.interpolate``.
        rows: Compute only these output rows (for chunked post-processing).

    Returns:
        ``(C, h, w)`` float32 (``(C, len(rows), w)`` with ``rows``).
    """
    x = np.asarray(x, dtype=np.float32)
    height, width = int(size[0]), int(size[1])
    if (height, width) == x.shape[1:] and rows is None:
        return x.copy()
    y0, y1, wy = _axis_weights(x.shape[1], height, align_corners)
    x0, x1, wx = _axis_weights(x.shape[2], width, align_corners)
    if rows is not None:
        y0, y1, wy = y0[rows], y1[rows], wy[rows]
    wy = wy[None, :, None]
    vert = x[:, y0, :] * (1 - wy) + x[:, y1, :] * wy
    wx = wx[None, None, :]
    return vert[:, :, x0] * (1 - wx) + vert[:, :, x1] * wx


def label_map(logits: np.ndarray, size: Sequence[int], align_corners: bool = False,
              threshold: float | None = None) -> np.ndarray:
    """Resize ``(C, h, w)`` logits to ``size`` and take the class of every pixel.

    Args:
        logits: The segmentor's logits at the network input's size.
        size: The image's ``(H, W)``.
        align_corners: Of the bilinear resize.
        threshold: For a one-channel model, the sigmoid threshold (mmseg's
            ``decode_head.threshold``); else unused.

    Returns:
        ``(H, W)`` labels: uint8 for up to 256 classes, else uint16 (int32 beyond).
    """
    channels = logits.shape[0]
    classes = 2 if channels == 1 else channels
    dtype = np.uint8 if classes <= 256 else np.uint16 if classes <= 65536 else np.int32
    out = np.empty((int(size[0]), int(size[1])), dtype=dtype)
    for start in range(0, out.shape[0], ROW_CHUNK):
        rows = slice(start, min(start + ROW_CHUNK, out.shape[0]))
        part = resize_bilinear(logits, size, align_corners, rows)
        if channels == 1:
            prob = 1 / (1 + np.exp(-part[0]))
            out[rows] = prob > (0.3 if threshold is None else threshold)
        else:
            out[rows] = part.argmax(axis=0)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float32."""
    z = np.asarray(logits, dtype=np.float32)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` best ``(class index, score)`` of one score vector, best first (ties: the
    lower index first, as ``argmax``)."""
    order = np.argsort(-np.asarray(scores), kind='stable')[:k]
    return [(int(i), float(scores[i])) for i in order]
