"""The synthetic slide of the whole-slide benchmark (``bench_slide.py``): a pyramidal
BigTIFF of 256×256 JPEG tiles (levels 1, 4×, 16× in SubIFDs) at 0.5 µm/px, a mosaic of
real CRCHistoPhenotypes images (flipped and rotated at random) shaped as an elliptical
section with glass around it and a few glass holes.

:class:`Mosaic` renders any window of it; :func:`write_slide` streams it to a file one
tile at a time, so a 40,000² slide never sits in memory.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

__all__ = ["CELL", "SLIDE_MPP", "Mosaic", "crchisto_images", "write_slide"]

SLIDE_MPP = 0.5  # a 20× scanner; the model's pixel size differs, so tiles are resampled
CELL = 500  # CRCHisto image size


class Mosaic:
    """Renders any window of a ``size × size`` slide made of 500×500 CRCHisto cells, at
    level-0 scale (1) or 4× reduced (4); cells outside the tissue shape are glass."""

    def __init__(self, images: list[np.ndarray], size: int, seed: int = 0) -> None:
        from PIL import Image

        rng = np.random.default_rng(seed)
        self.size = size
        n = math.ceil(size / CELL)
        self.index = rng.integers(0, len(images), size=(n, n))
        self.transform = rng.integers(0, 8, size=(n, n))
        centres = (np.arange(n) + 0.5) * CELL / size - 0.5  # cell centres in [-0.5, 0.5)
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        tissue = (cx / 0.46) ** 2 + (cy / 0.40) ** 2 <= 1.0  # an elliptical section
        for _ in range(3):  # holes (vessels, tears)
            hx, hy, r = rng.uniform(-0.25, 0.25), rng.uniform(-0.2, 0.2), rng.uniform(0.03, 0.07)
            tissue &= (cx - hx) ** 2 + (cy - hy) ** 2 > r**2
        self.tissue = tissue
        glass = (238 + rng.integers(-3, 4, size=(CELL, CELL, 3))).astype(np.uint8)
        self.cells = {1: images, 4: [np.asarray(Image.fromarray(im).reduce(4)) for im in images]}
        self.glass = {1: glass, 4: np.asarray(Image.fromarray(glass).reduce(4))}

    def _cell(self, scale: int, r: int, c: int) -> np.ndarray:
        if not self.tissue[r, c]:
            return self.glass[scale]
        im = self.cells[scale][self.index[r, c]]
        t = int(self.transform[r, c])
        return np.rot90(im[:, ::-1] if t >= 4 else im, t % 4)

    def render(self, scale: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """``(h, w, 3)`` uint8 pixels at rows ``y0:y0+h``, columns ``x0:x0+w`` of the
        level at ``scale``; outside the slide is white."""
        out = np.full((h, w, 3), 255, np.uint8)
        c = CELL // scale
        limit = math.ceil(self.size / scale)
        for r in range(y0 // c, min(limit - 1, y0 + h - 1) // c + 1):
            for k in range(x0 // c, min(limit - 1, x0 + w - 1) // c + 1):
                cell = self._cell(scale, r, k)
                ya, yb = max(y0, r * c), min(y0 + h, (r + 1) * c, limit)
                xa, xb = max(x0, k * c), min(x0 + w, (k + 1) * c, limit)
                if ya < yb and xa < xb:
                    out[ya - y0 : yb - y0, xa - x0 : xb - x0] = cell[ya - r * c : yb - r * c, xa - k * c : xb - k * c]
        return out


def write_slide(path: Path, images: list[np.ndarray], size: int, tile: int = 256) -> None:
    """Streams the mosaic into a tiled JPEG BigTIFF pyramid, one tile in memory at a time."""
    import tifffile
    from PIL import Image
    from tqdm import tqdm

    mosaic = Mosaic(images, size)
    shapes = [(size, size), (math.ceil(size / 4),) * 2, (math.ceil(size / 16),) * 2]

    def tiles(level: int):
        h, w = shapes[level]
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                if level < 2:
                    yield mosaic.render(4**level, y, x, tile, tile)
                else:  # 16×: the 4× level reduced once more
                    yield np.asarray(Image.fromarray(mosaic.render(4, 4 * y, 4 * x, 4 * tile, 4 * tile)).reduce(4))
                bar.update(1)

    total = sum(math.ceil(h / tile) * math.ceil(w / tile) for h, w in shapes)
    options = {"tile": (tile, tile), "compression": "jpeg", "compressionargs": {"level": 85}, "photometric": "rgb", "metadata": None}
    tmp = path.with_name(path.name + ".partial")
    with tqdm(total=total, desc=f"writing {path.name}", unit="tile") as bar, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for level, shape in enumerate(shapes):
            res = 1e4 / (SLIDE_MPP * 4**level)
            extra = {"subifds": len(shapes) - 1} if level == 0 else {"subfiletype": 1}
            tif.write(tiles(level), shape=(*shape, 3), dtype=np.uint8, resolution=(res, res), resolutionunit="CENTIMETER", **options, **extra)
    os.replace(tmp, path)


def crchisto_images(data: Path) -> list[np.ndarray]:
    """Every CRCHistoPhenotypes image under ``data`` (the shared data folder), RGB uint8."""
    from PIL import Image

    files = sorted((data / "crchisto" / "images").glob("*.png"))
    if not files:
        sys.exit(f"CRCHistoPhenotypes images not found under {data} (set MICRONET_DATA)")
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]
