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

**Bounded work.** :func:`check_ratio` accepts ratios from :data:`MIN_RATIO` to
:data:`MAX_RATIO` (1/8 to 8) only; :func:`check_work` refuses, before anything is
allocated, images whose resampled size or estimated working memory exceeds the caller's
limits. The detector and the slide pipeline both call them.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InputError

__all__ = [
    "MPP_TOLERANCE",
    "MIN_RATIO",
    "MAX_RATIO",
    "TILE_BYTES_PER_PIXEL",
    "check_ratio",
    "check_work",
    "default_memory_limit",
    "working_memory",
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

# Model pixels per image pixel (image_mpp / model_mpp) worth resampling. H&E nuclei are
# 5–15 µm across: 10–25 px at the model's 0.55 µm/px. At a ratio above 8 (images coarser
# than 4.4 µm/px for that model) a nucleus spans 1–3 image pixels, so upsampling can only
# invent it, and the work grows with ratio² (64× the pixels at 8). Below 1/8 (finer than
# 0.07 µm/px, past a 100× oil objective) a nucleus would be 150–350 image pixels wide:
# the pixel size is wrong (metres or millimetres typed as µm) rather than the scope.
MIN_RATIO = 1 / 8
MAX_RATIO = 8.0
# Host memory per model pixel of a tile in flight: the uint8 crop (3 B), the float32 map
# (4 B) and the network's activations. Measured peaks on ONNX Runtime's CPU provider:
# 780 B for the bundled fp32 model, 250 B for the int8 one; 1 KiB covers both with room.
TILE_BYTES_PER_PIXEL = 1024 + 3 + 4
# Common objective magnifications: an ``mpp`` equal to one of them was probably typed
# in place of µm/px (20× is about 0.5 µm/px).
_MAGNIFICATIONS = (4, 5, 10, 20, 40, 60, 63, 100)


def check_ratio(
    ratio: float, image_mpp: float | None = None, model_mpp: float | None = None, name: str = "mpp", typed: bool = True
) -> float:
    """Checks a resampling ratio (model pixels per image pixel, ``image_mpp /
    model_mpp``) against :data:`MIN_RATIO` … :data:`MAX_RATIO` and returns it.

    Args:
        ratio: the ratio to check.
        image_mpp, model_mpp: the two pixel sizes (µm/px) it came from, when known: the
            message then states the range in µm/px and recognises a magnification or
            a pixel size in metres typed as µm/px.
        name: what to call the image's pixel size in the message (``"mpp"``, or a file
            and where its pixel size came from).
        typed: whether a person gave ``image_mpp`` (then a magnification or a size in
            metres typed as µm/px is named as the likely mistake), or a file recorded it.

    Raises:
        ValueError: outside the range; one line with the range, the reason and, where
            it applies, the likely mistake.
    """
    if isinstance(ratio, bool) or not (isinstance(ratio, numbers.Real) and math.isfinite(ratio) and ratio > 0):
        raise InputError(f"{name}: expected a positive finite pixel-size ratio, got {ratio!r}")
    if MIN_RATIO <= ratio <= MAX_RATIO:
        return float(ratio)
    big = ratio > MAX_RATIO
    reason = (
        "coarser than that, a nucleus spans one to three image pixels and resampling multiplies the work by ratio²"
        if big
        else "finer than that, a nucleus would be hundreds of image pixels wide"
    )
    if image_mpp is None or model_mpp is None:
        raise InputError(
            f"{name}: a pixel-size ratio (image µm/px ÷ model µm/px) of {ratio:.4g}; expected {MIN_RATIO:g} to {MAX_RATIO:g} "
            f"(1/8 to 8): {reason}"
        )
    lo, hi = model_mpp * MIN_RATIO, model_mpp * MAX_RATIO
    hint = ""
    if not typed:
        pass
    elif big and any(math.isclose(image_mpp, m) for m in _MAGNIFICATIONS):
        hint = f"; {image_mpp:g} looks like a magnification: {image_mpp:g}× is about {10 / image_mpp:.2g} µm/px"
    elif not big and lo <= image_mpp * 1e6 <= hi:
        hint = f"; {image_mpp:g} looks like metres: that is {image_mpp * 1e6:.4g} µm/px"
    elif not big and lo <= image_mpp * 1e3 <= hi:
        hint = f"; {image_mpp:g} looks like millimetres: that is {image_mpp * 1e3:.4g} µm/px"
    raise InputError(
        f"{name}: {image_mpp:g} µm/px is {ratio:.3g}× the model's {model_mpp:g} µm/px; expected {lo:.2g} to {hi:.2g} µm/px "
        f"(1/8 to 8 times the model's): {reason}{hint}"
    )


def default_memory_limit() -> int:
    """Bytes of working memory the detector plans for unless told: ¾ of this machine's
    physical memory (16 GiB where the platform does not say)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX (Windows)
        return 16 << 30
    return int(total * 3 // 4) if total > 0 else 16 << 30


def working_memory(
    sizes: Sequence[tuple[tuple[int, int], tuple[int, int]]], tile_size: int, tiles_in_flight: int, deblur: bool = False
) -> tuple[int, int]:
    """Conservative estimate of the host memory a detector call allocates, in bytes.

    Args:
        sizes: per image, ``((H, W), (H', W'))``: its size and its size at the model's
            pixel size (equal when it is not resampled).
        tile_size: the largest tile side in model pixels.
        tiles_in_flight: tiles in the backend at once (batch size × batches in flight).
        deblur: whether an image may be deconvolved (``Detector(deblur="auto")``):
            its deconvolved copy is held (an image not resampled has none otherwise)
            and the deconvolution's transient (:func:`micronet.runtime.focus.deblur_bytes`)
            counted, whether or not the image turns out to be out of focus.

    Returns:
        ``(images, tiles)``: the bytes of the resampled images, held together, plus the
        transient of the largest resize (Pillow's 4-byte RGBX copies of the input, the
        intermediate pass and the output, then the NumPy copy: 4·in + 4·pass + 7·out);
        and the bytes of the tiles in flight (:data:`TILE_BYTES_PER_PIXEL` per pixel).
    """
    from .focus import sharpened_bytes  # NumPy only; here, as resample is imported first

    held = transient = 0
    largest_tile = 0
    for (h, w), (mh, mw) in sizes:
        if (mh, mw) != (h, w):
            held += 3 * mh * mw
            transient = max(transient, 4 * h * w + 4 * max(h * mw, mh * w) + 7 * mh * mw)
        if deblur:
            held += 3 * mh * mw if (mh, mw) == (h, w) else 0
            transient = max(transient, sharpened_bytes(mh, mw))
        largest_tile = max(largest_tile, min(mh, tile_size) * min(mw, tile_size))
    return held + transient, largest_tile * tiles_in_flight * TILE_BYTES_PER_PIXEL


def check_work(
    sizes: Sequence[tuple[tuple[int, int], tuple[int, int]]],
    tile_size: int,
    tiles_in_flight: int,
    max_megapixels: float,
    max_bytes: int,
    names: Sequence[str] | None = None,
    deblur: bool = False,
) -> None:
    """Refuses, before anything is allocated, work beyond the caller's limits: an image
    resampled to more than ``max_megapixels``, or an estimated working memory
    (:func:`working_memory`, with ``deblur``'s copies) above ``max_bytes``.

    Raises:
        ValueError: one line naming the image, the sizes and what to pass instead.
    """
    for k, ((h, w), (mh, mw)) in enumerate(sizes):
        if (mh, mw) != (h, w) and mh * mw / 1e6 > max_megapixels:
            name = names[k] if names is not None else "image"
            raise InputError(
                f"{name}: {w}×{h} px resampled to the model's pixel size would be {mw}×{mh} px ({mh * mw / 1e6:,.0f} MP), "
                f"more than max_megapixels={max_megapixels:g}; run it as a slide (Detector.detect_slide, micronet detect "
                "on a tiled TIFF), check mpp, or raise max_megapixels"
            )
    images, tiles = working_memory(sizes, tile_size, tiles_in_flight, deblur)
    if images + tiles > max_bytes:
        what = names[0] if names is not None and len(names) == 1 else f"{len(sizes)} images" if len(sizes) > 1 else "image"
        raise InputError(
            f"{what}: needs an estimated {(images + tiles) / 2**30:.1f} GiB ({images / 2**30:.1f} GiB of resampled images, "
            f"{tiles / 2**30:.1f} GiB for {tiles_in_flight} tile(s) of up to {tile_size}² px in flight), more than the "
            f"{max_bytes / 2**30:.1f} GiB limit (max_memory_gb); pass a smaller tile_size or batch_size, fewer images per "
            "detect_batch call, run large images with detect_slide, or raise max_memory_gb"
        )


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
