"""The plan of a slide run: which level, which model-pixel grid, which tiles.

Detection runs on a pyramid level at (or near) the model's pixel size: by default the
coarsest level whose pixels are at least as fine as the model's, then resampled
bilinearly to the model's pixel size exactly as :meth:`Detector.detect` would resample
the whole region (:mod:`micronet.runtime.resample`). The region on that level at the
model's pixel size is a :class:`ModelGrid`, cut by the detector's own
:meth:`~micronet.runtime.detector.Detector.plan_tiles` (origins on multiples of 8);
each tile keeps the peaks in its core, so the result equals
``detector.detect(region, mpp=...)`` on the whole region, in slide coordinates.
Positions come back in **level-0 pixels**, ``(x, y)`` = (column, row).

:func:`plan_slide` makes the grid and keeps the tiles on tissue
(:mod:`~micronet.runtime.slide.tissue`) without running the detector; it is what
:func:`~micronet.runtime.runs.slide_run.detect_slide` runs, and what a benchmark reads.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..resample import (
    MPP_TOLERANCE,
    BilinearAxis,
    from_resampled,
    needs_resampling,
    resampled_size,
)
from ..tiling import Tile
from .reader import THUMBNAIL_SIZE, Level, Slide, Thumbnail, level_box
from .tissue import tiles_on_tissue, tissue_mask

__all__ = ["plan_slide", "SlidePlan", "ModelGrid"]

log = logging.getLogger(__name__)


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
        dx, dy = self.level.downsample_xy
        return (
            (self.x0 + tile.core_x0 / self.sx) * dx,
            (self.y0 + tile.core_y0 / self.sy) * dy,
            (self.x0 + tile.core_x1 / self.sx) * dx,
            (self.y0 + tile.core_y1 / self.sy) * dy,
        )

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
        mpp_xy: the level-0 ``(x, y)`` pixel size in µm/px used (the file's, or the
            caller's ``mpp``).
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
    mpp_xy: tuple[float, float]
    level: Level
    grid: ModelGrid
    tiles: list[Tile]
    tiles_planned: int
    thumbnail: Thumbnail | None
    tissue: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def mpp(self) -> float:
        """The level-0 pixel size in µm/px (mean of x and y)."""
        return (self.mpp_xy[0] + self.mpp_xy[1]) / 2


def plan_slide(
    detector: Any,
    slide: Slide,
    region: tuple[int, int, int, int] | None = None,
    level: int | None = None,
    mpp: float | None = None,
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
        region, level, mpp, tissue_only: as for :func:`~micronet.runtime.runs.slide_run.detect_slide`.

    Raises:
        ValueError: a level that does not exist, a region outside the slide, or no
            pixel size (pass ``mpp``).
    """
    mpp_xy = _resolve_mpp(slide, mpp)
    mpp0 = (mpp_xy[0] + mpp_xy[1]) / 2
    region0 = _check_region(region, slide.shape)
    lv = _choose_level(slide, level, mpp0, detector.info.mpp)
    grid = ModelGrid.for_region(lv, region0, mpp0, detector.info.mpp)
    # The detector's own plan for the whole grid (what detector.detect would run on the
    # region), so that the tiles' core peaks add up to its result.
    tiles = detector.plan_tiles(grid.model_height, grid.model_width)
    planned = len(tiles)
    thumbnail = mask = None
    if tissue_only:
        thumbnail = slide.read_thumbnail(THUMBNAIL_SIZE, region0)
        mask = tissue_mask(thumbnail.image)
        tiles = tiles_on_tissue(tiles, grid, thumbnail, mpp0, mask)
    return SlidePlan(region0, mpp_xy, lv, grid, tiles, planned, thumbnail, mask)


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


def _resolve_mpp(slide: Slide, mpp: Any) -> tuple[float, float]:
    if mpp is not None:
        if isinstance(mpp, bool) or not isinstance(mpp, numbers.Real) or not math.isfinite(mpp) or mpp <= 0:
            raise InputError(f"mpp: expected the level-0 pixel size in µm/px (a positive number) or None, got {mpp!r}")
        if slide.mpp is not None and abs(mpp / slide.mpp - 1) > MPP_TOLERANCE:
            log.warning("%s: using mpp=%.4g µm/px, not the %.4g µm/px its %s record", slide.path.name, mpp, slide.mpp, slide.mpp_source)
        return (float(mpp), float(mpp))
    if slide.mpp_xy is None:
        raise InputError(
            f"{slide.path.name}: the file records no pixel size ({slide.mpp_source}); pass mpp= with the level-0 pixel "
            "size in µm/px (about 0.25 at 40×, 0.5 at 20×), --mpp on the command line"
        )
    return slide.mpp_xy
