"""Reading slides with OpenSlide: every vendor format tifffile cannot read (3DHISTECH
MIRAX, Leica SCN, Hamamatsu VMS/VMU, Ventana BIF, DICOM-WSI, Sakura SVSlide …).

OpenSlide comes as pip wheels (``openslide-bin`` carries the library, ``openslide-python``
the binding: ``pip install 'micronet-sdk[slides]'``), so no system library is needed. It
is imported only when a slide needs it.

OpenSlide addresses every level by level-0 coordinates and returns RGBA with
non-premultiplied alpha; :meth:`OpenSlideSlide.read_region` takes the window in the
level's own pixels, as the tifffile reader does, and composites transparent areas (the
parts of a scan with no tissue scanned) onto white, as that reader fills missing tiles.
OpenSlide is thread-safe, so one slide may be read from several threads.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MissingPackageError
from ..pixel_size import PixelSize, recorded_pixel_size
from .levels import Level, SlideBase

__all__ = ["OpenSlideSlide", "SLIDES_EXTRA", "import_openslide"]

SLIDES_EXTRA = "pip install 'micronet-sdk[slides]'"
DEFAULT_TILE = 256  # when the slide does not say


def import_openslide(purpose: str) -> Any:
    """``import openslide`` or a one-line ``MissingPackageError`` naming the extra."""
    try:
        import openslide
    except ImportError as exc:
        raise MissingPackageError(f"{purpose} needs OpenSlide: {SLIDES_EXTRA} (the openslide-bin and openslide-python wheels)") from exc
    return openslide


class OpenSlideSlide(SlideBase):
    """A slide read by OpenSlide, with the interface of the tifffile reader
    (:class:`~micronet.runtime.slide.reader.Slide`).

    Attributes:
        format: OpenSlide's vendor name (``"aperio"``, ``"mirax"``, ``"hamamatsu"`` …).
        reader: ``"openslide"``.
        levels, pixel_size, mpp_source: as for the tifffile reader; the pixel size comes
            from the ``openslide.mpp-x`` / ``openslide.mpp-y`` properties.
    """

    def __init__(self, path: Path) -> None:
        openslide = import_openslide(f"reading {path.name}")
        self.path = path
        self.reader = "openslide"
        try:
            self._slide = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError, OSError) as exc:
            raise InputError(f"{path.name}: OpenSlide cannot read it ({type(exc).__name__}: {exc})") from exc
        props = self._slide.properties
        self.format = str(props.get("openslide.vendor", "unknown"))
        h0, w0 = self._slide.dimensions[1], self._slide.dimensions[0]
        levels = []
        for i, ((w, h), down) in enumerate(zip(self._slide.level_dimensions, self._slide.level_downsamples)):
            tile_w = int(props.get(f"openslide.level[{i}].tile-width", DEFAULT_TILE))
            tile_h = int(props.get(f"openslide.level[{i}].tile-height", DEFAULT_TILE))
            levels.append(Level(i, (int(h), int(w)), float(down), (w0 / w, h0 / h), (tile_h, tile_w)))
        self.levels = tuple(levels)
        self.pixel_size, self.mpp_source = self._read_mpp(props)

    @staticmethod
    def _read_mpp(props: Any) -> tuple[PixelSize | None, str]:
        try:
            mx, my = float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"])
        except KeyError:
            return None, "OpenSlide reports no openslide.mpp-x/-y"
        except ValueError:
            return None, "OpenSlide's openslide.mpp-x/-y are unreadable"
        return recorded_pixel_size((mx, my), "OpenSlide openslide.mpp-x/-y")

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """The pixels of a window of one level: ``(height, width, 3)`` uint8 RGB, with
        ``x, y, width, height`` in that level's pixels; unscanned areas read as white."""
        lv = self.level(level)
        for name, value, lo in (("x", x, 0), ("y", y, 0), ("width", width, 1), ("height", height, 1)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
                raise InputError(f"{name}: expected an integer >= {lo}, got {value!r}")
        h, w = lv.shape
        if x + width > w or y + height > h:
            raise InputError(f"window x={x}, y={y}, width={width}, height={height} is not inside level {lv.index} of size W×H {w}×{h}")
        dx, dy = lv.downsample_xy
        # OpenSlide takes the top-left corner in level-0 pixels.
        location = (int(round(x * dx)), int(round(y * dy)))
        rgba = np.asarray(self._slide.read_region(location, lv.index, (int(width), int(height))))  # (h, w, 4) uint8
        rgb = rgba[..., :3].astype(np.uint16)
        alpha = rgba[..., 3:4].astype(np.uint16)
        # Non-premultiplied RGBA over white: rgb·a + 255·(1 − a), rounded.
        out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
        return np.ascontiguousarray(out.astype(np.uint8))

    def close(self) -> None:
        self._slide.close()
