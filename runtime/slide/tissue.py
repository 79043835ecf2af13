"""Where a slide shows tissue rather than glass, and which detection tiles to run.

A thumbnail of the region (longest side ≤ 2048 px, from the coarsest level that is fine
enough, block-averaged: :meth:`~micronet.runtime.slide.reader.Slide.read_thumbnail`) is
thresholded on HSV saturation: glass is grey or white (saturation ≈ 0.01), H&E-stained
tissue is pink or purple (0.1–0.5). The threshold is Otsu's on the saturation histogram,
clipped to [0.04, 0.10] so that a field that is all tissue (where Otsu would split
tissue from tissue) or all glass still gets a sensible cut. The mask is dilated by
50 µm so nuclei on a tissue edge are not lost; a tile runs when its core touches the
mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..tiling import Tile
from .levels import SlideBase, Thumbnail

if TYPE_CHECKING:  # pragma: no cover
    from .plan import ModelGrid

__all__ = ["tissue_mask", "tiles_on_tissue", "scan_progress", "SATURATION_BOUNDS", "TISSUE_MARGIN_UM"]

SATURATION_BOUNDS = (0.04, 0.10)  # Otsu's threshold on saturation is clipped to these
TISSUE_MARGIN_UM = 50.0  # the tissue mask grows by this before tiles are selected


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut maximising between-class variance."""
    hist = np.bincount(np.clip((values * (bins - 1)).astype(np.int64).ravel(), 0, bins - 1), minlength=bins)
    p = hist / max(1, hist.sum())
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(bins))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1.0 - omega))
    k = int(np.nanargmax(np.where(np.isfinite(between), between, -1.0)))
    return (k + 1) / (bins - 1)


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """Where a low-resolution H&E image shows tissue rather than glass.

    HSV saturation ``(max − min) / max`` of each pixel, smoothed over 3×3, above
    Otsu's threshold clipped to :data:`SATURATION_BOUNDS` (see the module docstring).

    Args:
        image: ``(h, w, 3)`` uint8 RGB, e.g. :attr:`Thumbnail.image`.

    Returns:
        ``(h, w)`` bool, ``True`` on tissue.
    """
    from scipy import ndimage

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise InputError(f"image: expected an (h, w, 3) uint8 RGB array, got shape {arr.shape} dtype {arr.dtype}")
    hi = arr.max(axis=2).astype(np.float32)
    lo = arr.min(axis=2).astype(np.float32)
    saturation = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    saturation = ndimage.uniform_filter(saturation, size=3, mode="nearest")
    threshold = float(np.clip(_otsu(saturation), *SATURATION_BOUNDS))
    return saturation > threshold


def tiles_on_tissue(tiles: list[Tile], grid: ModelGrid, thumbnail: Thumbnail, mpp: float, mask: np.ndarray | None = None) -> list[Tile]:
    """The tiles whose core touches tissue, in their order.

    Args:
        tiles: tiles of ``grid`` (model pixels), e.g. :meth:`Detector.plan_tiles`'s.
        grid: how the model pixels map onto the slide.
        thumbnail: a thumbnail of the same region, for :func:`tissue_mask`.
        mpp: the level-0 pixel size in µm/px (sizes the tissue margin).
        mask: the thumbnail's :func:`tissue_mask` when the caller has it (found here
            otherwise).
    """
    from scipy import ndimage

    mask = tissue_mask(thumbnail.image) if mask is None else mask
    grow = max(1, math.ceil(TISSUE_MARGIN_UM / (mpp * thumbnail.scale)))
    mask = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=grow)
    # Summed-area table: "any tissue in this box" in O(1) per tile.
    table = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    kept = []
    for tile in tiles:
        c0, r0, c1, r1 = thumbnail.box_from_level0(*grid.core_in_level0(tile))
        if table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0] > 0:
            kept.append(tile)
    return kept


SCAN_BAR_DELAY_S = 2.0  # the tissue scan's bar appears only when the scan takes longer


@contextmanager
def scan_progress(slide: SlideBase, region: tuple[int, int, int, int] | None, enabled: bool, name: str) -> Iterator[None]:
    """A progress bar over the tissue scan of ``region`` (default the whole slide): the
    thumbnail read that :func:`~micronet.runtime.slide.plan.plan_slide` does, which on a
    large slide without a coarse pyramid level decodes the whole image.

    Counts the level-0 pixels that ``slide.read_region`` covers while the block is open
    (its planning reads nothing else) and shows a bar once the scan has taken
    :data:`SCAN_BAR_DELAY_S`; a quick scan shows nothing.
    """
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    x, y, w, h = region if region is not None else (0, 0, slide.shape[1], slide.shape[0])
    bar = tqdm(total=round(w * h / 1e6, 1), unit="Mpx", desc=f"{name}: tissue scan", delay=SCAN_BAR_DELAY_S, dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} Mpx [{elapsed}<{remaining}]")
    read_region = slide.read_region

    def counting(level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        pixels = read_region(level, x, y, width, height)
        dx, dy = slide.levels[level].downsample_xy
        bar.update(min(width * height * dx * dy / 1e6, bar.total - bar.n))
        return pixels

    slide.read_region = counting  # type: ignore[method-assign]  # this instance, for this block only
    try:
        yield
    finally:
        del slide.read_region  # back to the class's method
        bar.close()
