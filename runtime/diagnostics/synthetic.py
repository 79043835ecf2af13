"""Synthetic H&E-like images with known nucleus centres: dark purple Gaussian blobs on
pink stroma. For tests (known answers), timing images where no real image is at hand,
and demos. The bundled sample (``runtime/models/sample.png``) is a more realistic field
made by ``tools/make_sample.py``; real data lives in ``../shared/data``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["STROMA_RGB", "NUCLEUS_RGB", "blob_image", "nuclei_image"]

STROMA_RGB = (235.0, 200.0, 225.0)  # eosin pink
NUCLEUS_RGB = (80.0, 40.0, 120.0)  # haematoxylin purple


def blob_image(height: int, width: int, centres: Any, sigma: float = 3.0) -> np.ndarray:
    """An ``(height, width, 3)`` uint8 image with a Gaussian blob of std ``sigma`` px at each
    ``(x, y)`` of ``centres`` (darkest at the centre; overlapping blobs take the darker)."""
    yy, xx = np.mgrid[0:height, 0:width]
    ink = np.zeros((height, width))
    for x, y in np.asarray(centres, dtype=np.float64).reshape(-1, 2):
        ink = np.maximum(ink, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)))
    stroma, nucleus = np.array(STROMA_RGB), np.array(NUCLEUS_RGB)
    return np.round(stroma + ink[..., None] * (nucleus - stroma)).astype(np.uint8)


def nuclei_image(height: int, width: int, count: int, seed: int = 0, sigma: float = 3.0, spacing: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """:func:`blob_image` with ``count`` blobs at random whole-pixel centres at least
    ``spacing`` apart (Chebyshev) and from the border.

    Returns:
        ``(image, centres)``: ``(height, width, 3)`` uint8 and ``(count, 2)`` float32 ``(x, y)``.

    Raises:
        InputError: the blobs do not fit.
    """
    rng = np.random.default_rng(seed)
    centres: list[tuple[int, int]] = []
    for _ in range(100 * count):
        if width <= 2 * spacing or height <= 2 * spacing:
            break
        x, y = int(rng.integers(spacing, width - spacing)), int(rng.integers(spacing, height - spacing))
        if all(max(abs(x - a), abs(y - b)) >= spacing for a, b in centres):
            centres.append((x, y))
            if len(centres) == count:
                break
    if len(centres) < count:
        raise InputError(f"cannot place {count} blobs {spacing} px apart in {height}×{width}")
    xy = np.array(centres, dtype=np.float32).reshape(-1, 2)
    return blob_image(height, width, xy, sigma), xy
