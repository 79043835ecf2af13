"""Fields of a stream stitched into blocks (:mod:`micronet.runtime.stream`): the pieces
that arrive, the blocks of the detector's tile plan that read them, whether a block's
window is covered, and its pixels stitched and resampled to the model's pixel size."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .resample import BilinearAxis
from .tiling import Tile

__all__ = ["BACKGROUND", "Block", "Piece", "covered", "model_pixels", "overlap"]

# The value of every channel of a pixel no field covers: glass is white to a brightfield
# scanner, so a gap reads as empty glass, not as dark tissue the network would respond to.
BACKGROUND = 255


@dataclass(eq=False)
class Piece:
    """A field (``pixels``) or a declared gap (``None``) at slide pixels ``[x0, x1) ×
    [y0, y1)``, the ``seq``-th arrival; ``refs``: the pending blocks that read it."""

    x0: int
    y0: int
    x1: int
    y1: int
    pixels: np.ndarray | None
    seq: int
    refs: int = 0

    @property
    def nbytes(self) -> int:
        return 0 if self.pixels is None else self.pixels.nbytes


@dataclass(eq=False)
class Block:
    """One tile of the detector's plan: its ``window`` ``(x0, y0, x1, y1)`` of slide
    pixels, the axes that resample the window to the tile (``None``: same size) and the
    core's ``box`` in slide pixels; ``pieces`` that intersect the window until taken."""

    tile: Tile
    window: tuple[int, int, int, int]
    cols: BilinearAxis | None
    rows: BilinearAxis | None
    box: tuple[float, float, float, float]
    pieces: list[Piece] = field(default_factory=list)
    taken: bool = False


def overlap(a0: int, a1: int, b0: int, b1: int) -> tuple[int, int]:
    return max(a0, b0), min(a1, b1)  # empty when start >= stop


def covered(window: tuple[int, int, int, int], pieces: list[Piece]) -> bool:
    """Whether the union of ``pieces`` covers ``window``: painted on the grid of their
    edges (a few dozen cells), not pixel by pixel."""
    x0, y0, x1, y1 = window
    boxes = [(*overlap(p.x0, p.x1, x0, x1), *overlap(p.y0, p.y1, y0, y1)) for p in pieces]
    if sum((bx1 - bx0) * (by1 - by0) for bx0, bx1, by0, by1 in boxes) < (x1 - x0) * (y1 - y0):
        return False  # too little area, overlaps or not
    xs = np.unique([x0, x1, *(b[0] for b in boxes), *(b[1] for b in boxes)])
    ys = np.unique([y0, y1, *(b[2] for b in boxes), *(b[3] for b in boxes)])
    grid = np.zeros((len(ys) - 1, len(xs) - 1), bool)
    for bx0, bx1, by0, by1 in boxes:
        grid[np.searchsorted(ys, by0) : np.searchsorted(ys, by1), np.searchsorted(xs, bx0) : np.searchsorted(xs, bx1)] = True
    return bool(grid.all())


def model_pixels(block: Block, pieces: list[Piece]) -> np.ndarray:
    """The block's tile at the model's pixel size, ``(h, w, 3)`` uint8: its window
    stitched from ``pieces`` (the first arrival on top, :data:`BACKGROUND` where none
    lies) and resampled as ``ModelGrid.read_tile`` does, bit for bit as Pillow resamples
    the whole image."""
    x0, y0, x1, y1 = block.window
    out = np.full((y1 - y0, x1 - x0, 3), BACKGROUND, np.uint8)
    for p in sorted(pieces, key=lambda p: p.seq, reverse=True):  # the earliest painted last
        (ix0, ix1), (iy0, iy1) = overlap(p.x0, p.x1, x0, x1), overlap(p.y0, p.y1, y0, y1)
        if ix0 >= ix1 or iy0 >= iy1:
            continue
        target = out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        target[...] = BACKGROUND if p.pixels is None else p.pixels[iy0 - p.y0 : iy1 - p.y0, ix0 - p.x0 : ix1 - p.x0]
    if block.cols is not None:  # horizontal pass first, as Pillow does
        out = block.cols.apply(np.ascontiguousarray(out.transpose(1, 0, 2))).transpose(1, 0, 2)
    if block.rows is not None:
        out = block.rows.apply(np.ascontiguousarray(out))
    return np.ascontiguousarray(out)
