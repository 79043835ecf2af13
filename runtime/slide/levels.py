"""What every slide reader shares, whatever decodes the pixels: the pyramid's levels,
the pixel size, thumbnails built from windows, and the level-0 ↔ level geometry.
:class:`~micronet.runtime.slide.reader.Slide` (tifffile) and
:class:`~micronet.runtime.slide.openslide_reader.OpenSlideSlide` (OpenSlide) build on it."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..pixel_size import PLAUSIBLE_MPP, PixelSize  # a recorded pixel size outside it is not a microscope's (72 dpi, say)

__all__ = ["Level", "SlideBase", "Thumbnail", "level_box", "PLAUSIBLE_MPP", "THUMBNAIL_SIZE"]

THUMBNAIL_SIZE = 2048  # longest side of the tissue thumbnail and the overlay PNG


@dataclass(frozen=True)
class Level:
    """One level of a slide's pyramid.

    Attributes:
        index: 0 for full resolution, then coarser.
        shape: ``(H, W)`` in this level's pixels.
        downsample: level-0 pixels per pixel of this level (the mean of the two axes,
            as OpenSlide reports it); ``downsample_xy`` gives ``(x, y)`` separately.
        tile: ``(h, w)`` of the stored tiles (or strips) the level is read in.
    """

    index: int
    shape: tuple[int, int]
    downsample: float
    downsample_xy: tuple[float, float]
    tile: tuple[int, int]


class SlideBase:
    """What every slide reader shares: levels, pixel size, the level lookup, thumbnails
    built from :meth:`read_region`, and the context-manager protocol. A reader sets
    ``path``, ``format``, ``reader``, ``levels``, ``pixel_size`` (the level-0
    :class:`~micronet.runtime.pixel_size.PixelSize` its metadata records, or ``None``)
    and ``mpp_source`` (where it came from, or why there is none), and implements
    ``read_region`` and ``close``."""

    path: Path
    format: str
    reader: str
    levels: tuple[Level, ...]
    pixel_size: PixelSize | None
    mpp_source: str

    @property
    def mpp(self) -> float | None:
        """Level-0 µm/px, the mean of x and y, or ``None`` when the file records none."""
        return None if self.pixel_size is None else self.pixel_size.mean

    @property
    def mpp_xy(self) -> tuple[float, float] | None:
        """Level-0 ``(x, y)`` µm/px, or ``None``."""
        return None if self.pixel_size is None else self.pixel_size.xy

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- description ------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of level 0."""
        return self.levels[0].shape

    def level(self, index: Any) -> Level:
        """The level ``index``; a ``ValueError`` lists the levels when there is none."""
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < len(self.levels):
            have = ", ".join(f"{lv.index}: {lv.shape[1]}×{lv.shape[0]} (downsample {lv.downsample:.4g})" for lv in self.levels)
            raise InputError(f"level: {self.path.name} has no level {index!r}; its levels (W×H) are {have}")
        return self.levels[int(index)]

    def __repr__(self) -> str:
        mpp = f"{self.mpp:.4g}" if self.mpp is not None else "unknown"
        return (
            f"{type(self).__name__}({self.path.name!r}, format={self.format!r}, shape={self.shape}, levels={len(self.levels)}, "
            f"mpp={mpp})"
        )

    def __enter__(self) -> "SlideBase":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def read_thumbnail(self, max_size: int = THUMBNAIL_SIZE, region: tuple[int, int, int, int] | None = None) -> "Thumbnail":
        """A downsampled image of the slide (or of a level-0 region) whose longest side
        is at most ``max_size``, read in bounded blocks from the coarsest level that is
        fine enough and block-averaged by an integer factor.

        Args:
            max_size: the longest side in pixels.
            region: ``(x, y, width, height)`` in level-0 pixels; default the whole slide.
        """
        x, y, w, h = region if region is not None else (0, 0, self.shape[1], self.shape[0])
        wanted = max(w, h) / max_size  # level-0 pixels per thumbnail pixel
        lv = max((lv for lv in self.levels if lv.downsample <= wanted), key=lambda lv: lv.downsample, default=self.levels[0])
        factor = max(1, math.ceil(max(w / lv.downsample_xy[0], h / lv.downsample_xy[1]) / max_size - 1e-9))
        x0, y0, x1, y1 = level_box(lv, x, y, w, h)
        out_h, out_w = -(-(y1 - y0) // factor), -(-(x1 - x0) // factor)
        from PIL import Image

        canvas = np.empty((out_h, out_w, 3), np.uint8)
        block = factor * max(1, 1024 // factor)  # a multiple of the factor: no seams
        for by in range(y0, y1, block):
            for bx in range(x0, x1, block):
                pixels = self.read_region(lv.index, bx, by, min(block, x1 - bx), min(block, y1 - by))
                if factor > 1:
                    pixels = np.asarray(Image.fromarray(pixels).reduce(factor))  # box average
                oy, ox = (by - y0) // factor, (bx - x0) // factor
                canvas[oy : oy + pixels.shape[0], ox : ox + pixels.shape[1]] = pixels
        return Thumbnail(canvas, lv.index, factor, x0, y0, lv.downsample_xy)



@dataclass(frozen=True)
class Thumbnail:
    """A block-averaged image of a slide region.

    Attributes:
        image: ``(h, w, 3)`` uint8 RGB.
        level: the level it was read from; ``factor``: that level's pixels per thumbnail
            pixel (an integer); ``x0, y0``: its top-left corner in that level's pixels;
            ``downsample_xy``: that level's ``(x, y)`` downsample.
    """

    image: np.ndarray
    level: int
    factor: int
    x0: int
    y0: int
    downsample_xy: tuple[float, float]

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Level-0 pixels per thumbnail pixel, ``(x, y)``."""
        return (self.downsample_xy[0] * self.factor, self.downsample_xy[1] * self.factor)

    @property
    def scale(self) -> float:
        """Level-0 pixels per thumbnail pixel, the mean of x and y (what sizes a length
        in µm on the thumbnail)."""
        sx, sy = self.scale_xy
        return (sx + sy) / 2

    def from_level0(self, xy: np.ndarray) -> np.ndarray:
        """``(N, 2)`` level-0 pixel positions → thumbnail pixel positions (pixel centres
        onto pixel centres), float64."""
        dx, dy = self.downsample_xy
        x = ((xy[:, 0] + 0.5) / dx - self.x0) / self.factor - 0.5
        y = ((xy[:, 1] + 0.5) / dy - self.y0) / self.factor - 0.5
        return np.stack([x, y], axis=1)

    def box_from_level0(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        """The thumbnail pixels ``(col0, row0, col1, row1)`` (ends exclusive) that a
        level-0 box ``[x0, x1) × [y0, y1)`` touches."""
        dx, dy = self.downsample_xy
        h, w = self.image.shape[:2]
        c0 = min(w - 1, max(0, math.floor((x0 / dx - self.x0) / self.factor)))
        r0 = min(h - 1, max(0, math.floor((y0 / dy - self.y0) / self.factor)))
        c1 = min(w, max(c0 + 1, math.ceil((x1 / dx - self.x0) / self.factor)))
        r1 = min(h, max(r0 + 1, math.ceil((y1 / dy - self.y0) / self.factor)))
        return c0, r0, c1, r1


def level_box(level: Level, x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
    """The pixels ``(x0, y0, x1, y1)`` of ``level`` (ends exclusive, at least one pixel
    each way) that cover a level-0 box ``(x, y, w, h)``."""
    dx, dy = level.downsample_xy
    lh, lw = level.shape
    x0, y0 = min(lw - 1, math.floor(x / dx + 1e-9)), min(lh - 1, math.floor(y / dy + 1e-9))
    x1, y1 = min(lw, math.ceil((x + w) / dx - 1e-9)), min(lh, math.ceil((y + h) / dy - 1e-9))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)
