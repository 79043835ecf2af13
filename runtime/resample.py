"""One resampling convention for images and points, everywhere.

The detector, the slide pipeline, training crops, validation and evaluation all bring
images to the model's pixel size through this module, so a checkpoint, its ONNX export
and a whole slide see the same pixels and report positions in the same frame.

**Convention: pixel centres correspond.** A pixel is a unit square; its centre sits at
integer coordinates ``(x, y)`` (x = column, y = row). Resampling an ``in_w``-pixel axis to
``out_w`` pixels scales the *edges* of the image onto each other, so a position ``x`` in
the input is ``x' = (x + 0.5) · s − 0.5`` in the output, with ``s = out_w / in_w`` (and
``x = (x' + 0.5) / s − 0.5`` back). This is Pillow's mapping, OpenCV's ``INTER_LINEAR``
and skimage's ``resize``: the first and last pixel centres do not map onto each other
(that would be the corner-aligned ``x' = x · (out_w − 1) / (in_w − 1)``).

**Images** are resized with Pillow's bilinear filter, which widens its support when
shrinking (an anti-aliased downsample) and rounds to 8 bits after each of its two
separable passes. :class:`BilinearAxis` reproduces one axis of it for a window of the
output, bit for bit, so a slide read tile by tile equals the whole region resampled at
once.

**Sizes** follow ``round(side · ratio)`` (at least 1), with ``ratio`` = model pixels per
image pixel = ``image_mpp / model_mpp``. Ratios within :data:`MPP_TOLERANCE` of 1 change
nothing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "MPP_TOLERANCE",
    "BilinearAxis",
    "needs_resampling",
    "resampled_size",
    "resize_image",
    "to_resampled",
    "from_resampled",
    "resample",
]

# Pixel sizes within this relative difference count as equal (no resampling).
MPP_TOLERANCE = 0.01


def needs_resampling(ratio: float) -> bool:
    """Whether an image at ``ratio`` model pixels per image pixel is resampled at all."""
    return abs(ratio - 1.0) > MPP_TOLERANCE


def resampled_size(height: int, width: int, ratio: float) -> tuple[int, int]:
    """``(height, width)`` after resampling by ``ratio`` (output pixels per input pixel)."""
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an ``(H, W, 3)`` uint8 image to ``(height, width, 3)`` uint8,
    pixel centres corresponding; anti-aliased when shrinking (Pillow's filter)."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    resized = Image.fromarray(image).resize((width, height), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized)


def to_resampled(xy: Any, sx: float, sy: float) -> np.ndarray:
    """``(N, 2)`` positions ``(x, y)`` in the input → in the output of a resampling with
    ``sx``, ``sy`` output pixels per input pixel (pixel centres correspond); float64."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return (xy + 0.5) * np.array([sx, sy]) - 0.5


def from_resampled(xy: Any, sx: float, sy: float) -> np.ndarray:
    """The inverse of :func:`to_resampled`: output positions → input positions; float64."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return (xy + 0.5) / np.array([sx, sy]) - 0.5


def resample(image: np.ndarray, points: Any, ratio: float) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float] | None]:
    """An image and its points brought to ``ratio`` output pixels per input pixel.

    Args:
        image: ``(H, W, 3)`` uint8.
        points: ``(N, 2)`` ``(x, y)`` in the image's pixels, or ``None``.
        ratio: output pixels per input pixel (``image_mpp / model_mpp``).

    Returns:
        ``(image, points, scale)``: the resampled image, the points mapped into it
        (float64, or ``None``), and ``(sx, sy)``, the exact output pixels per input pixel
        per axis (the sizes are rounded), for :func:`from_resampled`. Within
        :data:`MPP_TOLERANCE` of 1 the inputs come back unchanged with ``scale = None``.
    """
    if not needs_resampling(ratio):
        return image, None if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 2), None
    h, w = image.shape[:2]
    new_h, new_w = resampled_size(h, w, ratio)
    sx, sy = new_w / w, new_h / h
    out = resize_image(image, new_h, new_w)
    return out, None if points is None else to_resampled(points, sx, sy), (sx, sy)


class BilinearAxis:
    """One axis of Pillow's bilinear ``Image.resize`` (``libImaging/Resample.c``),
    restricted to the outputs ``out0:out1``.

    Pillow resamples in two separable passes with 22-bit fixed-point weights and rounds
    to 8 bits after each; computing the same weights for a range of outputs and applying
    them to a window of the input reproduces the whole-image result bit for bit. (Pillow's
    own ``box=`` argument cannot do this: it takes the box in single precision, which
    shifts the sampling positions by a rounding error and changes some pixels by 1.)

    Attributes:
        start, stop: the input range (``[start, stop)``) the outputs read.
    """

    PRECISION_BITS = 32 - 8 - 2

    def __init__(self, in_size: int, out_size: int, out0: int, out1: int) -> None:
        # precompute_coeffs() with the bilinear filter, in double precision as there.
        scale = in_size / out_size
        filterscale = max(scale, 1.0)
        support = 1.0 * filterscale
        ksize = int(math.ceil(support)) * 2 + 1
        centers = (np.arange(out0, out1, dtype=np.float64) + 0.5) * scale
        xmin = np.maximum(np.trunc(centers - support + 0.5).astype(np.int64), 0)  # C casts truncate
        xmax = np.minimum(np.trunc(centers + support + 0.5).astype(np.int64), in_size) - xmin
        j = np.arange(ksize)
        arg = np.abs((j[None, :] + xmin[:, None] - centers[:, None] + 0.5) / filterscale)
        w = np.where(arg < 1.0, 1.0 - arg, 0.0)
        w[j[None, :] >= xmax[:, None]] = 0.0
        total = np.zeros(len(centers))
        for k in range(ksize):  # summed left to right, as in C
            total = total + w[:, k]
        w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
        # normalize_coeffs_8bpc(): round half away from zero to fixed point.
        one = float(1 << self.PRECISION_BITS)
        self.weights = np.where(w < 0, np.trunc(-0.5 + w * one), np.trunc(0.5 + w * one)).astype(np.int32)  # (n, ksize)
        self.first = xmin
        self.start = int(xmin.min())
        self.stop = int((xmin + xmax).max())

    def apply(self, src: np.ndarray) -> np.ndarray:
        """Resamples axis 0 of a C-contiguous ``(stop − start, m, 3)`` uint8 array whose
        row 0 is input ``start``; returns ``(out1 − out0, m, 3)`` uint8."""
        acc = np.full((len(self.first),) + src.shape[1:], 1 << (self.PRECISION_BITS - 1), np.int32)
        term = np.empty_like(acc)
        for k in range(self.weights.shape[1]):
            idx = np.minimum(self.first + k - self.start, src.shape[0] - 1)  # weight 0 past the end
            np.multiply(src[idx], self.weights[:, k, None, None], out=term)
            acc += term
        np.right_shift(acc, self.PRECISION_BITS, out=acc)
        return np.clip(acc, 0, 255).astype(np.uint8)
