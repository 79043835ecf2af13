"""The colour statistics of a slide's tissue, measured once and shared by all its tiles.

Stain normalisation and the out-of-distribution measure
(:mod:`micronet.runtime.stain`) need an image's colour statistics; a slide's tiles must
all use the same ones, or neighbouring tiles would be normalised differently. They
come from the tissue (:func:`~micronet.runtime.slide.tissue.tissue_mask` on the
region's thumbnail), but not from the thumbnail's pixels: a thumbnail is block-averaged,
which blurs nuclei into stroma and shrinks the spread the normalisation matches (on a
MoNuSeg image averaged 20×, as a slide's thumbnail is: l's standard deviation by 38 %,
the 99th-percentile stain concentrations by 39 %). So :data:`WINDOWS` windows of
:data:`WINDOW` model pixels are read at the detection's own pixel size
(:meth:`ModelGrid.read_tile`, as the tiles are), centred on tissue pixels spread evenly
over the thumbnail, and their tissue pixels pooled. The same windows give the slide's
focus (:func:`micronet.runtime.focus.pooled_blur_px`): :func:`slide_measures`.
"""

from __future__ import annotations

import logging

import numpy as np

from ..focus import pooled_blur_px
from ..stain import MAX_PIXELS, MIN_PIXELS, StainStats, measure_pooled
from ..tiling import Tile
from .levels import SlideBase, Thumbnail
from .plan import ModelGrid, SlidePlan
from .reader import THUMBNAIL_SIZE
from .tissue import tissue_mask

__all__ = ["slide_colour_stats", "slide_measures", "WINDOWS", "WINDOW"]

WINDOWS = 16  # windows read for the statistics
WINDOW = 256  # their side in model pixels: 16 × 256² ≈ 1 Mpx read


log = logging.getLogger(__name__)

def _thumbnail_to_model(grid: ModelGrid, thumbnail: Thumbnail, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnail pixel centres → model-grid pixel positions (through level 0)."""
    tdx, tdy = thumbnail.downsample_xy
    x0 = ((cols + 0.5) * thumbnail.factor + thumbnail.x0) * tdx  # level 0, continuous
    y0 = ((rows + 0.5) * thumbnail.factor + thumbnail.y0) * tdy
    gdx, gdy = grid.level.downsample_xy
    return (x0 / gdx - grid.x0) * grid.sx - 0.5, (y0 / gdy - grid.y0) * grid.sy - 0.5


def _model_to_thumbnail(grid: ModelGrid, thumbnail: Thumbnail, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model-grid pixel centres → the thumbnail pixels they fall in (clipped)."""
    gdx, gdy = grid.level.downsample_xy
    tdx, tdy = thumbnail.downsample_xy
    x0 = ((xs + 0.5) / grid.sx + grid.x0) * gdx  # level 0, continuous
    y0 = ((ys + 0.5) / grid.sy + grid.y0) * gdy
    h, w = thumbnail.image.shape[:2]
    cols = np.clip(np.floor((x0 / tdx - thumbnail.x0) / thumbnail.factor), 0, w - 1).astype(np.intp)
    rows = np.clip(np.floor((y0 / tdy - thumbnail.y0) / thumbnail.factor), 0, h - 1).astype(np.intp)
    return cols, rows


def slide_colour_stats(slide: SlideBase, plan: SlidePlan, windows: int = WINDOWS, size: int = WINDOW) -> StainStats | None:
    """The colour statistics of the tissue of a planned slide region (the first of
    :func:`slide_measures`)."""
    return slide_measures(slide, plan, None, windows, size)[0]


def slide_measures(
    slide: SlideBase, plan: SlidePlan, model_mpp: float | None, windows: int = WINDOWS, size: int = WINDOW
) -> tuple[StainStats | None, float | None]:
    """The colour statistics and the edge blur of the tissue of a planned slide region.

    Args:
        slide: the open slide.
        plan: its :func:`~micronet.runtime.slide.plan.plan_slide` (its thumbnail is
            reused; one is read when it has none).
        model_mpp: the model's pixel size (µm/px), that of the windows; ``None``: no
            edge blur measured.
        windows: how many windows to read, on tissue pixels evenly spread in raster
            order over the thumbnail (the whole region where it shows no tissue).
        size: their side in model pixels (clipped to the region).

    Returns:
        ``(stats, blur_um)``: :class:`~micronet.runtime.stain.StainStats` of the
        windows' tissue pixels (all their pixels where they hold fewer than
        :data:`~micronet.runtime.stain.MIN_PIXELS` of tissue), or ``None`` for a region
        too small to measure; the edge blur in µm of the windows pooled
        (:func:`~micronet.runtime.focus.pooled_blur_px` × ``model_mpp``), or ``None``
        where they hold too few edges.
    """
    images, masks = _tissue_windows(slide, plan, windows, size)
    if not images:
        return None, None
    blur_px = None if model_mpp is None else pooled_blur_px(images)
    blur = None if blur_px is None else blur_px * float(model_mpp)
    if sum(int(m.sum()) for m in masks) < MIN_PIXELS:
        masks = [np.ones_like(m) for m in masks]  # no tissue under the windows: all their pixels
    if sum(int(m.sum()) for m in masks) < MIN_PIXELS:
        return None, blur
    return measure_pooled(images, masks, per_image=max(1, MAX_PIXELS // len(images))), blur


def _tissue_windows(slide: SlideBase, plan: SlidePlan, windows: int, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Up to ``windows`` windows of ``size`` model pixels centred on tissue, and each
    one's tissue mask (none where the slide has no readable thumbnail)."""
    grid = plan.grid
    try:
        thumbnail = plan.thumbnail if plan.thumbnail is not None else slide.read_thumbnail(THUMBNAIL_SIZE, plan.region)
    except ValueError as exc:
        # An unreadable slide (a truncated file) is reported by the detection pass, at the
        # tile it breaks, after the tiles before it are saved.
        log.debug("colour statistics: no thumbnail (%s)", exc)
        return [], []
    mask = plan.tissue if thumbnail is plan.thumbnail and plan.tissue is not None else tissue_mask(thumbnail.image)
    rows, cols = np.nonzero(mask if mask.any() else np.ones_like(mask))
    pick = np.unique(np.linspace(0, len(rows) - 1, min(windows, len(rows))).round().astype(np.intp))
    cx, cy = _thumbnail_to_model(grid, thumbnail, cols[pick].astype(np.float64), rows[pick].astype(np.float64))
    images, masks = [], []
    for x, y in zip(cx, cy):
        w, h = min(size, grid.model_width), min(size, grid.model_height)
        x0 = int(np.clip(round(x - w / 2), 0, grid.model_width - w))
        y0 = int(np.clip(round(y - h / 2), 0, grid.model_height - h))
        try:
            pixels = grid.read_tile(slide, Tile(y0, y0 + h, x0, x0 + w, y0, y0 + h, x0, x0 + w))  # (h, w, 3) uint8
        except ValueError as exc:
            # An unreadable part (a truncated file) is reported by the detection pass, at
            # the tile it breaks, after the tiles before it are saved; the statistics use
            # the windows that read.
            log.debug("colour statistics: skipped a window at (%d, %d): %s", x0, y0, exc)
            continue
        xs, ys = np.meshgrid(np.arange(x0, x0 + w, dtype=np.float64), np.arange(y0, y0 + h, dtype=np.float64))
        tc, tr = _model_to_thumbnail(grid, thumbnail, xs, ys)
        images.append(pixels)
        masks.append(mask[tr, tc])
    return images, masks
