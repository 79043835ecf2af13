"""The plan of a slide run: which level, which model-pixel grid, which tiles.

Detection runs on a pyramid level at (or near) the model's pixel size: by default the
coarsest level whose pixels are at least as fine as the model's, then resampled
bilinearly to the model's pixel size exactly as :meth:`Detector.detect` would resample
the whole region (:mod:`micronet.runtime.resample`). The region on that level at the
model's pixel size is a :class:`ModelGrid`, cut by the detector's own
:meth:`~micronet.runtime.detector.Detector.plan_tiles` (origins on multiples of 8);
each tile keeps the peaks in its core, so the result equals
``detector.detect(region, mpp=...)`` on the whole region, in slide coordinates (for a
region out of focus, the tiles beyond the threshold are each measured and deconvolved on
their own, :mod:`micronet.runtime.runs.slide_run`; with ``deblur=None``, or in focus, it
is equal).
Positions come back in **level-0 pixels**, ``(x, y)`` = (column, row).

:func:`plan_slide` makes the grid and keeps the tiles on tissue
(:mod:`~micronet.runtime.slide.tissue`) without running the detector; it is what
:func:`~micronet.runtime.runs.slide_run.detect_slide` runs, and what a benchmark reads.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..pixel_size import PixelSize, resolve_pixel_size
from ..resample import (
    MPP_TOLERANCE,
    BilinearAxis,
    from_resampled,
    needs_resampling,
    resampled_size,
)
from ..tiling import Tile
from .reader import THUMBNAIL_SIZE, Level, Slide, SlideBase, Thumbnail, level_box
from .tissue import tiles_on_tissue, tissue_mask

__all__ = ["plan_slide", "slide_pixel_size", "SlidePlan", "ModelGrid", "MPP_GIVEN"]


# --- geometry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelGrid:
    """How a region of one pyramid level maps onto the model-pixel grid that is tiled.

    Attributes:
        level: the level read.
        x0, y0, width, height: the region in that level's pixels.
        sx, sy: model pixels per level pixel along x and y (1.0: no resampling).
        model_width, model_height: the grid's size in model pixels.
    """

    level: Level
    x0: int
    y0: int
    width: int
    height: int
    sx: float
    sy: float
    model_width: int
    model_height: int

    @classmethod
    def for_region(cls, level: Level, region: tuple[int, int, int, int], mpp: float, model_mpp: float) -> ModelGrid:
        """The grid of a level-0 ``region`` ``(x, y, width, height)`` read on ``level``,
        for a slide of level-0 pixel size ``mpp`` and a model of ``model_mpp`` (µm/px);
        sizes round as :func:`~micronet.runtime.resample.resampled_size`."""
        x0, y0, x1, y1 = level_box(level, *region)
        width, height = x1 - x0, y1 - y0
        ratio = mpp * level.downsample / model_mpp  # model pixels per level pixel
        mh, mw = resampled_size(height, width, ratio) if needs_resampling(ratio) else (height, width)
        return cls(level, x0, y0, width, height, mw / width, mh / height, mw, mh)

    @property
    def resampled(self) -> bool:
        """Whether the level's pixels are resampled to the model's."""
        return self.model_width != self.width or self.model_height != self.height

    def to_level0(self, xy: np.ndarray) -> np.ndarray:
        """``(N, 2)`` model-grid positions → level-0 pixel positions, float32. Pixel centres
        correspond at each step, as in :meth:`Detector.detect`."""
        dx, dy = self.level.downsample_xy
        in_level = from_resampled(xy, self.sx, self.sy) + np.array([self.x0, self.y0])  # the level's pixels
        return from_resampled(in_level, 1.0 / dx, 1.0 / dy).astype(np.float32)  # level 0 (a downsample)

    def core_in_level0(self, tile: Tile) -> tuple[float, float, float, float]:
        """The level-0 box ``(x0, y0, x1, y1)`` of a tile's core."""
        return self.box_in_level0(tile.core_x0, tile.core_y0, tile.core_x1, tile.core_y1)

    def box_in_level0(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        """The level-0 box ``(x0, y0, x1, y1)`` of a box on the model-pixel grid."""
        dx, dy = self.level.downsample_xy
        return ((self.x0 + x0 / self.sx) * dx, (self.y0 + y0 / self.sy) * dy, (self.x0 + x1 / self.sx) * dx, (self.y0 + y1 / self.sy) * dy)

    def read_tile(self, slide: Slide, tile: Tile) -> np.ndarray:
        """The tile's ``(h, w, 3)`` uint8 pixels at the model's pixel size: bit for bit
        the same crop of the whole region resampled at once by the Detector."""
        th, tw = tile.shape
        if not self.resampled:
            return slide.read_region(self.level.index, self.x0 + tile.x0, self.y0 + tile.y0, tw, th)
        cols = BilinearAxis(self.width, self.model_width, tile.x0, tile.x1) if self.model_width != self.width else None
        rows = BilinearAxis(self.height, self.model_height, tile.y0, tile.y1) if self.model_height != self.height else None
        wx0, wx1 = (cols.start, cols.stop) if cols else (tile.x0, tile.x1)
        wy0, wy1 = (rows.start, rows.stop) if rows else (tile.y0, tile.y1)
        pixels = slide.read_region(self.level.index, self.x0 + wx0, self.y0 + wy0, wx1 - wx0, wy1 - wy0)
        if cols is not None:  # horizontal pass first, as Pillow does
            pixels = cols.apply(np.ascontiguousarray(pixels.transpose(1, 0, 2))).transpose(1, 0, 2)
        if rows is not None:
            pixels = rows.apply(np.ascontiguousarray(pixels))
        return np.ascontiguousarray(pixels)


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlidePlan:
    """What :func:`~micronet.runtime.runs.slide_run.detect_slide` runs on a slide, decided
    before any tile is read.

    Attributes:
        region: ``(x, y, width, height)`` in level-0 pixels.
        pixel_size: the level-0 :class:`~micronet.runtime.pixel_size.PixelSize` used
            (the caller's ``mpp``, or the file's); ``mpp_xy`` and ``mpp`` (their mean)
            give it as numbers.
        level: the pyramid level read.
        grid: the region on that level at the model's pixel size.
        tiles: the tiles to run, in order (those whose core touches tissue when
            planned with ``tissue_only``); read each with ``grid.read_tile(slide, tile)``.
        tiles_planned: the number of tiles of the whole grid.
        thumbnail: the region's thumbnail the tissue was found in, or ``None``
            (``tissue_only=False``).
        tissue: ``(h, w)`` bool :func:`~micronet.runtime.slide.tissue.tissue_mask` of
            ``thumbnail`` (found once, reused by the colour statistics and the
            summary's tissue area), or ``None`` without a thumbnail.
    """

    region: tuple[int, int, int, int]
    pixel_size: PixelSize
    level: Level
    grid: ModelGrid
    tiles: list[Tile]
    tiles_planned: int
    thumbnail: Thumbnail | None
    tissue: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def mpp(self) -> float:
        """The level-0 pixel size in µm/px (mean of x and y)."""
        return self.pixel_size.mean

    @property
    def mpp_xy(self) -> tuple[float, float]:
        """The level-0 ``(x, y)`` pixel size in µm/px."""
        return self.pixel_size.xy


def plan_slide(
    detector: Any,
    slide: Slide,
    region: tuple[int, int, int, int] | None = None,
    level: int | None = None,
    mpp: float | PixelSize | None = None,
    tissue_only: bool = True,
) -> SlidePlan:
    """The level, model-pixel grid and tiles
    :func:`~micronet.runtime.runs.slide_run.detect_slide` runs with these arguments (see
    there), without running the detector.

    >>> with open_slide("slide.svs") as slide:                       # doctest: +SKIP
    ...     plan = plan_slide(detector, slide)
    ...     pixels = [plan.grid.read_tile(slide, tile) for tile in plan.tiles]

    Args:
        detector: the :class:`~micronet.runtime.detector.Detector` whose pixel size
            (``info.mpp``) and tile plan (``plan_tiles``) to use.
        slide: an open :class:`Slide`.
        region, level, tissue_only: as for :func:`~micronet.runtime.runs.slide_run.detect_slide`.
        mpp: the caller's level-0 µm/px, or ``None`` for the file's own (as for
            ``detect_slide``), or a :class:`PixelSize` the caller resolved
            (:func:`slide_pixel_size`), used as it is.

    Raises:
        ValueError: a level that does not exist, a region outside the slide, or no
            pixel size (pass ``mpp``).
    """
    size = slide_pixel_size(slide, mpp)
    region0 = _check_region(region, slide.shape)
    lv = _choose_level(slide, level, size.mean, detector.info.mpp)
    grid = ModelGrid.for_region(lv, region0, size.mean, detector.info.mpp)
    # The detector's own plan for the whole grid (what detector.detect would run on the
    # region), so that the tiles' core peaks add up to its result.
    tiles = detector.plan_tiles(grid.model_height, grid.model_width)
    planned = len(tiles)
    thumbnail = mask = None
    if tissue_only:
        thumbnail = slide.read_thumbnail(THUMBNAIL_SIZE, region0)
        mask = tissue_mask(thumbnail.image)
        tiles = tiles_on_tissue(tiles, grid, thumbnail, size.mean, mask)
    return SlidePlan(region0, size, lv, grid, tiles, planned, thumbnail, mask)


def _choose_level(slide: Slide, level: Any, mpp: float, model_mpp: float) -> Level:
    if level is not None:
        return slide.level(level)
    # The coarsest level still at least as fine as the model's pixels (within the
    # tolerance); level 0 when even that is coarser (then it is upsampled).
    fine_enough = [lv for lv in slide.levels if mpp * lv.downsample <= model_mpp * (1 + MPP_TOLERANCE)]
    return max(fine_enough, key=lambda lv: lv.downsample) if fine_enough else slide.levels[0]


def _check_region(region: Any, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    h, w = shape
    if region is None:
        return (0, 0, w, h)
    try:
        values = tuple(region)
    except TypeError:
        values = ()
    if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values):
        raise InputError(f"region: expected (x, y, width, height) integers in level-0 pixels, got {region!r}")
    x, y, rw, rh = (int(v) for v in values)
    if x < 0 or y < 0 or rw < 1 or rh < 1 or x + rw > w or y + rh > h:
        raise InputError(f"region: expected (x, y, width, height) inside the level-0 image of W×H {w}×{h}, got {values}")
    return (x, y, rw, rh)


MPP_GIVEN = "mpp= / --mpp"  # the source of a slide's pixel size that its caller gave


def slide_pixel_size(slide: SlideBase, mpp: float | PixelSize | None) -> PixelSize:
    """The level-0 pixel size a slide runs at, resolved once: the caller's ``mpp``
    (:data:`MPP_GIVEN`; a warning when the file records another), else the file's own.

    Raises:
        ValueError: ``mpp`` is not a positive number, or it is ``None`` and the file
            records no pixel size (the message says to pass ``mpp=`` / ``--mpp``).
    """
    return resolve_pixel_size(mpp, slide.pixel_size, name=slide.path.name, given_source=MPP_GIVEN, missing=slide.mpp_source)
