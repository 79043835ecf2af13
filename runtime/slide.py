"""Whole slides: pyramidal TIFF reading, tissue detection, and tiled, streamed detection.

>>> from micronet import Detector                                    # doctest: +SKIP
>>> found = Detector().detect_slide("slide.svs", out_dir="results")  # doctest: +SKIP

**Reader.** Slides are read with tifffile, not OpenSlide. tifffile is a pip wheel the
runtime already depends on (a scanner PC needs no system library), it reads every
format we promise — Aperio SVS, OME-TIFF pyramids (SubIFDs; OpenSlide does not read
OME-TIFF at all) and generic tiled pyramidal TIFF — and it exposes each level's tile
offsets and decoder, so :meth:`Slide.read_region` reads and decodes only the tiles
(or strips) a window touches, with libjpeg-turbo from imagecodecs doing the JPEG.
Memory is bounded by the window, never the level. Formats that need OpenSlide's
vendor drivers (MIRAX, NDPI, VMS, …) raise a ``ValueError`` saying how to convert
them.

**Geometry.** Detection runs on a pyramid level at (or near) the model's pixel size:
by default the coarsest level whose pixels are at least as fine as the model's, then
resampled bilinearly to the model's pixel size exactly as :meth:`Detector.detect`
would resample the whole region. The model-pixel grid is cut by
:func:`micronet.runtime.tiling.plan_tiles` (origins on multiples of 8); each tile keeps
the peaks in its core, so the result equals ``detector.detect(region, mpp=...)`` on the
whole region, in slide coordinates. Positions come back in **level-0 pixels**,
``(x, y)`` = (column, row).

**Tissue.** A thumbnail of the region (longest side ≤ 2048 px, from the coarsest level
that is fine enough, block-averaged) is thresholded on HSV saturation: glass is grey or
white (saturation ≈ 0.01), H&E-stained tissue is pink or purple (0.1–0.5). The
threshold is Otsu's on the saturation histogram, clipped to [0.04, 0.10] so that a
field that is all tissue (where Otsu would split tissue from tissue) or all glass still
gets a sensible cut. The mask is dilated by 50 µm so nuclei on a tissue edge are not
lost; a tile runs when its core touches the mask.

**Pipelining.** Reader threads read, decode and resample the next tiles while the
backend runs the current batch, at most ``queue_size`` tiles ahead (two batches by
default), so memory stays bounded; ``queue_size=0`` reads in the caller's thread
between batches instead, for comparison. On the CPU one reader suffices (reading a
1024² tile takes ~0.1 s, inference far longer, and the cores belong to inference); on
a GPU several readers keep it fed. File reads are serialised; JPEG decoding
(libjpeg-turbo), the resampling and ONNX Runtime release the GIL.

**Outputs** (``out_dir``), written as batches complete, so an interrupted run leaves
valid files and a rerun resumes:

- ``<stem>.csv``: header ``x,y,x_um,y_um,score``; level-0 pixels (shortest float32
  repr, as :meth:`Detections.to_csv`), µm from the slide's top-left corner to the pixel
  centre, ``(x + 0.5) · mpp``. Rows are appended and flushed per batch, in tile order.
- ``<stem>.geojson``: a QuPath FeatureCollection of ``Point`` detections, features
  exactly as :meth:`Detections.to_geojson` makes them. After each batch the new
  features are written over the closing ``]}`` and the trailer is written again, so
  the file is valid JSON between batches — without rewriting what is already there,
  which a whole-slide file (hundreds of MB) could not afford after every batch.
- ``<stem>.overlay.png``: the thumbnail with the detections drawn, rewritten
  atomically (temporary file + rename) every 30 s and at the end.
- ``<stem>.progress.json`` and ``<stem>.progress.bin``: the resume record. The JSON
  (replaced atomically after each batch) holds the settings, the number of tiles done
  and the byte length of every output at that point; the ``.bin`` holds the
  detections so far as float32 ``(x, y, score)`` records. A rerun with the same
  settings truncates each file to its recorded length (dropping a batch torn by a
  kill) and carries on from the next tile; with other settings it starts over. A
  finished record makes a rerun return the saved detections at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .detections import Detections
from .resample import MPP_TOLERANCE, BilinearAxis, from_resampled, needs_resampling, resampled_size
from .tiling import Tile, keep_in_core, sort_peaks

__all__ = ["Slide", "Level", "Thumbnail", "open_slide", "tissue_mask", "detect_slide", "SLIDE_SUFFIXES", "FORMATS"]

log = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff")  # .ome.tif / .ome.tiff included
FORMATS = ("csv", "geojson", "png")
# Formats that need OpenSlide's (or a vendor's) drivers: suffix → what it is.
_FOREIGN = {
    ".ndpi": "Hamamatsu NDPI",
    ".vms": "Hamamatsu VMS",
    ".vmu": "Hamamatsu VMU",
    ".mrxs": "3DHISTECH MIRAX",
    ".scn": "Leica SCN",
    ".bif": "Ventana BIF",
    ".czi": "Zeiss CZI",
    ".isyntax": "Philips iSyntax",
    ".dcm": "DICOM",
    ".svslide": "Sakura SVSlide",
}
_CONVERT = "convert it to a tiled pyramidal TIFF, e.g. `vips tiffsave in out.tif --tile --pyramid --compression jpeg` or QuPath's OME-TIFF export"

# A recorded pixel size outside this range (µm/px) is not a microscope's: 72 dpi, say.
PLAUSIBLE_MPP = (0.01, 100.0)
# Largest decoded tile or strip read at once; beyond it the file must be re-saved tiled.
MAX_SEGMENT_BYTES = 256 << 20
# Decoded tiles kept for the overlap of neighbouring detection tiles.
SEGMENT_CACHE_BYTES = 16 << 20

THUMBNAIL_SIZE = 2048  # longest side of the tissue thumbnail and the overlay PNG
SATURATION_BOUNDS = (0.04, 0.10)  # Otsu's threshold on saturation is clipped to these
TISSUE_MARGIN_UM = 50.0  # the tissue mask grows by this before tiles are selected
OVERLAY_NUCLEUS_UM = 4.0  # circle radius drawn on the overlay
OVERLAY_COLOR = (0, 255, 0)
OVERLAY_INTERVAL_S = 30.0
PROGRESS_FORMAT = "micronet-slide-progress/1"
CSV_HEADER = "x,y,x_um,y_um,score\n"
GEOJSON_HEAD = b'{"type":"FeatureCollection","features":['
GEOJSON_TAIL = b"]}"
_JPEG = {6, 7, 33007, 34892}  # TIFF compressions whose tiles need the JPEGTables


# --- reading -------------------------------------------------------------------------


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


class Slide:
    """An RGB pyramidal TIFF slide (Aperio SVS, OME-TIFF, generic tiled TIFF), read one
    window at a time. Open with :func:`open_slide`; close (or use ``with``) when done.

    Attributes:
        path: the file.
        format: ``"svs"``, ``"ome-tiff"`` or ``"tiff"``.
        levels: the pyramid, level 0 (full resolution) first.
        mpp: level-0 pixel size in µm/px (mean of x and y) from the file's own metadata,
            or ``None`` when it records none.
        mpp_xy: ``(x, y)`` pixel sizes, or ``None``.
        mpp_source: where ``mpp`` came from, or why there is none.

    One ``Slide`` may be read from several threads.
    """

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises several types for damaged files
            raise ValueError(f"{path.name}: not a readable TIFF slide ({type(exc).__name__}: {exc})") from exc
        try:
            self._init_levels()
            self.format = "svs" if self._tif.is_svs else "ome-tiff" if self._tif.is_ome else "tiff"
            self.mpp_xy, self.mpp_source = self._read_mpp()
        except BaseException:
            self._tif.close()
            raise
        self.mpp = None if self.mpp_xy is None else (self.mpp_xy[0] + self.mpp_xy[1]) / 2
        self._file_lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()

    def _init_levels(self) -> None:
        try:
            series = self._tif.series
        except Exception as exc:
            raise ValueError(f"{self.path.name}: cannot parse the TIFF structure ({type(exc).__name__}: {exc})") from exc
        if not series:
            raise ValueError(f"{self.path.name}: a TIFF without images")
        main = series[0]
        levels, pages = [], []
        for i, lv in enumerate(main.levels):
            shape, axes = tuple(lv.shape), lv.axes
            if lv.dtype != np.uint8 or axes != "YXS" or shape[2] != 3:
                raise ValueError(
                    f"{self.path.name}: expected an RGB slide, (H, W, 3) uint8 with axes YXS; level {i} has shape {shape}, "
                    f"axes {axes!r}, dtype {lv.dtype} (fluorescence and multi-plane images are not H&E slides)"
                )
            if len(lv.pages) != 1:
                raise ValueError(f"{self.path.name}: level {i} spans {len(lv.pages)} pages; expected one plane per level")
            page = lv.keyframe
            if page.planarconfig != 1 or page.imagedepth != 1:
                raise ValueError(f"{self.path.name}: level {i} stores colour planes separately; expected interleaved RGB")
            seg_h, seg_w = int(page.chunks[0]), int(page.chunks[1])
            if seg_h * seg_w * 3 > MAX_SEGMENT_BYTES:
                kind = "tile" if page.is_tiled else "strip"
                raise ValueError(
                    f"{self.path.name}: level {i} is stored as {seg_w}×{seg_h} {kind}s ({seg_h * seg_w * 3 >> 20} MB each "
                    f"decoded), too large to read in bounded memory; {_CONVERT}"
                )
            levels.append((shape[0], shape[1], seg_h, seg_w))
            pages.append(page)
        h0, w0 = levels[0][:2]
        self.levels: tuple[Level, ...] = tuple(
            Level(i, (h, w), (w0 / w + h0 / h) / 2, (w0 / w, h0 / h), (sh, sw)) for i, (h, w, sh, sw) in enumerate(levels)
        )
        self._pages = pages
        self._grids = [(math.ceil(h / sh), math.ceil(w / sw)) for h, w, sh, sw in levels]

    def _read_mpp(self) -> tuple[tuple[float, float] | None, str]:
        tif, page = self._tif, self._pages[0]
        if tif.is_svs:
            for field in page.description.split("|"):
                key, _, value = field.partition("=")
                if key.strip() == "MPP":
                    try:
                        mpp = float(value)
                    except ValueError:
                        return None, f"the Aperio ImageDescription has an unreadable MPP {value.strip()!r}"
                    return self._plausible((mpp, mpp), "Aperio ImageDescription MPP")
            return None, "the Aperio ImageDescription has no MPP field"
        if tif.is_ome:
            return self._ome_mpp(tif.ome_metadata or "")
        unit = page.tags.get("ResolutionUnit")
        xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
        unit_value = int(unit.value) if unit is not None else 2  # TIFF's default unit is the inch
        if xres is None or yres is None or unit_value not in (2, 3):
            return None, "the TIFF has no resolution tags with a physical unit"
        per_unit = 25400.0 if unit_value == 2 else 10000.0  # µm per inch or per cm
        try:
            rx, ry = (v[0] / v[1] if isinstance(v, tuple) else float(v) for v in (xres.value, yres.value))
        except (TypeError, ZeroDivisionError):
            return None, "the TIFF's resolution tags are unreadable"
        if rx <= 0 or ry <= 0:
            return None, "the TIFF's resolution tags are not positive"
        return self._plausible((per_unit / rx, per_unit / ry), "TIFF resolution tags")

    def _ome_mpp(self, xml: str) -> tuple[tuple[float, float] | None, str]:
        units = {"µm": 1.0, "um": 1.0, "μm": 1.0, "micron": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6}
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            return None, f"its OME-XML is not well-formed ({exc})"
        pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
        if pixels is None or "PhysicalSizeX" not in pixels.attrib:
            return None, "its OME-XML has no PhysicalSizeX"
        sizes = []
        for axis in ("X", "Y"):
            value = pixels.get(f"PhysicalSize{axis}", pixels.get("PhysicalSizeX"))
            unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
            if unit not in units:
                return None, f"its OME-XML gives PhysicalSize{axis} in an unknown unit {unit!r}"
            try:
                sizes.append(float(value) * units[unit])
            except ValueError:
                return None, f"its OME-XML has an unreadable PhysicalSize{axis} {value!r}"
        return self._plausible((sizes[0], sizes[1]), "OME-XML PhysicalSizeX/Y")

    @staticmethod
    def _plausible(mpp_xy: tuple[float, float], source: str) -> tuple[tuple[float, float] | None, str]:
        lo, hi = PLAUSIBLE_MPP
        if not all(math.isfinite(v) and lo <= v <= hi for v in mpp_xy):
            return None, f"its {source} give {mpp_xy[0]:.4g} µm/px, not a microscope's pixel size"
        return mpp_xy, source

    # --- description ------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of level 0."""
        return self.levels[0].shape

    def level(self, index: Any) -> Level:
        """The level ``index``; a ``ValueError`` lists the levels when there is none."""
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < len(self.levels):
            have = ", ".join(f"{lv.index}: {lv.shape[1]}×{lv.shape[0]} (downsample {lv.downsample:.4g})" for lv in self.levels)
            raise ValueError(f"level: {self.path.name} has no level {index!r}; its levels (W×H) are {have}")
        return self.levels[int(index)]

    def __repr__(self) -> str:
        mpp = f"{self.mpp:.4g}" if self.mpp is not None else "unknown"
        return f"Slide({self.path.name!r}, format={self.format!r}, shape={self.shape}, levels={len(self.levels)}, mpp={mpp})"

    def close(self) -> None:
        self._tif.close()
        with self._cache_lock:
            self._cache.clear()
            self._cache_bytes = 0

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- pixels -----------------------------------------------------------------------

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """The pixels of a window of one level, decoding only the tiles it touches.

        Args:
            level: pyramid level (0 = full resolution).
            x, y: top-left corner in **that level's** pixels (column, row).
            width, height: window size in that level's pixels (≥ 1).

        Returns:
            ``(height, width, 3)`` uint8 RGB. Tiles the file leaves out (sparse slides)
            read as white.

        Raises:
            ValueError: no such level, a window not inside the level, or a tile that
                cannot be decoded (a damaged or truncated file).
        """
        lv = self.level(level)
        for name, value, lo in (("x", x, 0), ("y", y, 0), ("width", width, 1), ("height", height, 1)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
                raise ValueError(f"{name}: expected an integer >= {lo}, got {value!r}")
        x, y, width, height = int(x), int(y), int(width), int(height)
        h, w = lv.shape
        if x + width > w or y + height > h:
            raise ValueError(
                f"window x={x}, y={y}, width={width}, height={height} is not inside level {lv.index} of size W×H {w}×{h}"
            )
        out = np.full((height, width, 3), 255, np.uint8)
        seg_h, seg_w = lv.tile
        cols = self._grids[lv.index][1]
        for r in range(y // seg_h, (y + height - 1) // seg_h + 1):
            for c in range(x // seg_w, (x + width - 1) // seg_w + 1):
                seg = self._segment(lv.index, r * cols + c)
                if seg is None:
                    continue
                top, left = r * seg_h, c * seg_w
                ya, yb = max(y, top), min(y + height, top + seg.shape[0])
                xa, xb = max(x, left), min(x + width, left + seg.shape[1])
                if ya < yb and xa < xb:
                    out[ya - y : yb - y, xa - x : xb - x] = seg[ya - top : yb - top, xa - left : xb - left]
        return out

    def _segment(self, level: int, index: int) -> np.ndarray | None:
        """Decoded tile (or strip) ``index`` of a level: ``(h, w, 3)`` uint8, or ``None``
        for one the file leaves out."""
        key = (level, index)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        page = self._pages[level]
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        seg: np.ndarray | None = None
        if offset > 0 and count > 0:
            with self._file_lock:  # one file handle: seek and read together
                fh = self._tif.filehandle
                fh.seek(offset)
                data = fh.read(count)
            if len(data) != count:
                raise ValueError(
                    f"{self.path.name}: level {level} tile {index} is cut off ({len(data)} of {count} bytes): the file is truncated"
                )
            kwargs = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader} if page.compression in _JPEG else {}
            try:
                decoded = page.decode(data, index, **kwargs)[0]  # (1, h, w, 3)
            except Exception as exc:  # the codecs raise their own types
                raise ValueError(
                    f"{self.path.name}: level {level} tile {index} cannot be decoded ({type(exc).__name__}: {exc}); "
                    "the file is damaged"
                ) from exc
            if decoded is not None:
                seg = decoded.reshape(decoded.shape[-3:])
        with self._cache_lock:
            self._cache[key] = seg
            self._cache_bytes += 0 if seg is None else seg.nbytes
            while self._cache_bytes > SEGMENT_CACHE_BYTES and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= 0 if old is None else old.nbytes
        return seg

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
        x0, y0, x1, y1 = _level_box(lv, x, y, w, h)
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


def _level_box(lv: Level, x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
    """A level-0 box ``(x, y, w, h)`` in a level's pixels ``(x0, y0, x1, y1)``, covering it."""
    dx, dy = lv.downsample_xy
    lh, lw = lv.shape
    x0, y0 = min(lw - 1, math.floor(x / dx + 1e-9)), min(lh - 1, math.floor(y / dy + 1e-9))
    x1, y1 = min(lw, math.ceil((x + w) / dx - 1e-9)), min(lh, math.ceil((y + h) / dy - 1e-9))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for double in (".ome.tif", ".ome.tiff"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def open_slide(path: str | PathLike[str]) -> Slide:
    """Opens a pyramidal TIFF slide: Aperio ``.svs``, OME-TIFF (``.ome.tif``) or a tiled
    (or stripped) ``.tif``/``.tiff``, BigTIFF included.

    Reads the level structure and the pixel size from the file's own metadata: the
    Aperio ImageDescription ``MPP``, OME-XML ``PhysicalSizeX/Y`` (with their units), or
    the TIFF resolution tags (inch or centimetre units).

    Raises:
        FileNotFoundError: no such file.
        ValueError: another slide format (the message says how to convert it), a file
            that is not a readable TIFF, or not an RGB 8-bit image.
    """
    if not isinstance(path, (str, PathLike)):
        raise TypeError(f"path: expected a slide file path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"slide not found: {path}")
    suffix = _suffix(path)
    if suffix in _FOREIGN:
        raise ValueError(f"{path.name}: {_FOREIGN[suffix]} slides are not supported; expected Aperio .svs, OME-TIFF or tiled .tif; {_CONVERT}")
    if suffix not in SLIDE_SUFFIXES and suffix not in (".ome.tif", ".ome.tiff"):
        raise ValueError(
            f"{path.name}: expected a slide file ending in .svs, .ome.tif, .tif or .tiff, got {suffix or 'no suffix'!r}"
        )
    return Slide(path)


# --- tissue ----------------------------------------------------------------------------


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
    Otsu's threshold clipped to [0.04, 0.10] (see the module docstring).

    Args:
        image: ``(h, w, 3)`` uint8 RGB, e.g. :attr:`Thumbnail.image`.

    Returns:
        ``(h, w)`` bool, ``True`` on tissue.
    """
    from scipy import ndimage

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image: expected an (h, w, 3) uint8 RGB array, got shape {arr.shape} dtype {arr.dtype}")
    hi = arr.max(axis=2).astype(np.float32)
    lo = arr.min(axis=2).astype(np.float32)
    saturation = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    saturation = ndimage.uniform_filter(saturation, size=3, mode="nearest")
    threshold = float(np.clip(_otsu(saturation), *SATURATION_BOUNDS))
    return saturation > threshold


# --- geometry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """How a region of one level maps onto the model-pixel grid that is tiled."""

    level: Level
    x0: int  # region in the level's pixels
    y0: int
    width: int
    height: int
    sx: float  # model pixels per level pixel (1.0: no resampling)
    sy: float
    model_width: int
    model_height: int

    @property
    def resampled(self) -> bool:
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


def _check_region(region: Any, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    h, w = shape
    if region is None:
        return (0, 0, w, h)
    try:
        values = tuple(region)
    except TypeError:
        values = ()
    if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values):
        raise ValueError(f"region: expected (x, y, width, height) integers in level-0 pixels, got {region!r}")
    x, y, rw, rh = (int(v) for v in values)
    if x < 0 or y < 0 or rw < 1 or rh < 1 or x + rw > w or y + rh > h:
        raise ValueError(f"region: expected (x, y, width, height) inside the level-0 image of W×H {w}×{h}, got {values}")
    return (x, y, rw, rh)


def _make_grid(slide: Slide, level: Level, region: tuple[int, int, int, int], mpp: float, model_mpp: float) -> _Grid:
    x0, y0, x1, y1 = _level_box(level, *region)
    width, height = x1 - x0, y1 - y0
    ratio = mpp * level.downsample / model_mpp  # model pixels per level pixel
    mh, mw = resampled_size(height, width, ratio) if needs_resampling(ratio) else (height, width)
    return _Grid(level, x0, y0, width, height, mw / width, mh / height, mw, mh)


def _choose_level(slide: Slide, level: Any, mpp: float, model_mpp: float) -> Level:
    if level is not None:
        return slide.level(level)
    # The coarsest level still at least as fine as the model's pixels (within the
    # tolerance); level 0 when even that is coarser (then it is upsampled).
    fine_enough = [lv for lv in slide.levels if mpp * lv.downsample <= model_mpp * (1 + MPP_TOLERANCE)]
    return max(fine_enough, key=lambda lv: lv.downsample) if fine_enough else slide.levels[0]


# --- prefetching ---------------------------------------------------------------------------


class _Prefetcher:
    """Reads items ahead in ``readers`` threads, at most ``depth`` items ahead (ready or
    being read), and yields ``(item, read(item))`` in the items' order.

    The bound on look-ahead is what keeps memory independent of the slide: at most
    ``depth`` decoded tiles exist besides the batch being run.
    """

    def __init__(self, read: Callable[[Any], Any], items: Iterable[Any], depth: int, readers: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._read = read
        self._items = iter(items)
        self._pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="micronet-slide-reader")
        self._pending: deque[tuple[Any, Any]] = deque()
        for _ in range(depth):
            if not self._submit():
                break

    def _submit(self) -> bool:
        for item in self._items:
            self._pending.append((item, self._pool.submit(self._read, item)))
            return True
        return False

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        while self._pending:
            item, future = self._pending.popleft()
            result = future.result()  # re-raises a reader's exception here
            self._submit()
            yield item, result

    def close(self) -> None:
        for _, future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- outputs -------------------------------------------------------------------------------


def _stem(path: Path) -> str:
    suffix = _suffix(path)
    return path.name[: -len(suffix)] if suffix and path.name.lower().endswith(suffix) else path.stem


def _fingerprint(path: Path) -> dict[str, Any]:
    """Identifies the slide file by size and the hash of its first MiB (not the mtime,
    so a copied slide still resumes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
    return {"name": path.name, "bytes": path.stat().st_size, "sha256_1mib": digest.hexdigest()}


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


class _Outputs:
    """The streamed CSV / GeoJSON / overlay files of one slide run, and the resume record.

    Each :meth:`commit` appends one batch to every file and then records the new byte
    lengths in ``.progress.json``; a resumed run truncates the files back to those
    lengths, so a batch half-written by a kill is dropped and redone.
    """

    def __init__(self, out_dir: Path, stem: str, formats: tuple[str, ...], mpp_xy: tuple[float, float], thumbnail: Thumbnail | None) -> None:
        self.dir = out_dir
        self.formats = formats
        self.mpp_xy = mpp_xy
        self.paths = {
            "csv": out_dir / f"{stem}.csv",
            "geojson": out_dir / f"{stem}.geojson",
            "png": out_dir / f"{stem}.overlay.png",
        }
        self.state_path = out_dir / f"{stem}.progress.json"
        self.bin_path = out_dir / f"{stem}.progress.bin"
        self.thumbnail = thumbnail
        self.state: dict[str, Any] = {}
        self._files: dict[str, Any] = {}
        self._canvas: Any = None
        self._draw: Any = None
        self._overlay_dirty = False
        self._overlay_time = 0.0

    # -- opening --

    def open(self, settings: dict[str, Any], tiles: int, resume: bool) -> tuple[int, np.ndarray, np.ndarray]:
        """Opens the files, resuming a matching unfinished run when ``resume``.

        Returns:
            ``(tiles_done, xy, scores)``: tiles already done and their detections.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        previous = self._load_state() if resume else None
        if previous is not None and previous.get("settings") != settings:
            changed = sorted(k for k in set(settings) | set(previous.get("settings", {})) if settings.get(k) != previous["settings"].get(k))
            log.warning("%s: the saved run used other settings (%s); starting over", self.state_path.name, ", ".join(changed))
            previous = None
        if previous is not None and previous["tiles_total"] != tiles:
            log.warning("%s: the saved run planned %d tiles, this one %d; starting over", self.state_path.name, previous["tiles_total"], tiles)
            previous = None
        if previous is not None and (not self.bin_path.is_file() or any(not self.paths[f].is_file() for f in self.formats if f != "png")):
            log.warning("%s: output files of the saved run are missing; starting over", self.state_path.name)
            previous = None
        if previous is None:
            self.state = {
                "format": PROGRESS_FORMAT,
                "settings": settings,
                "tiles_total": tiles,
                "tiles_done": 0,
                "detections": 0,
                "bytes": {},
                "complete": False,
                "seconds": 0.0,
            }
            self._start_files()
            self._save_state()
            return 0, np.zeros((0, 2), np.float32), np.zeros((0,), np.float32)
        self.state = previous
        records = self._resume_files()
        if self.state["tiles_done"]:
            log.info("%s: resuming after tile %d of %d (%d detections so far)", self.state_path.name, self.state["tiles_done"], tiles, len(records))
        xy, scores = records[:, :2].copy(), records[:, 2].copy()
        if self.thumbnail is not None and "png" in self.formats:
            self._draw_points(xy)
        return int(self.state["tiles_done"]), xy, scores

    def finished(self, settings: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """``(xy, scores)`` of a finished run with these settings whose files are all
        there, else ``None``."""
        state = self._load_state()
        if state is None or not state.get("complete") or state.get("settings") != settings:
            return None
        if not self.bin_path.is_file() or not all(self.paths[f].is_file() for f in self.formats):
            return None
        records = np.fromfile(self.bin_path, dtype="<f4").reshape(-1, 3)
        if len(records) != state["detections"]:
            return None
        log.info("%s: finished already; returning its %d detections", self.state_path.name, len(records))
        return records[:, :2].copy(), records[:, 2].copy()

    def _load_state(self) -> dict[str, Any] | None:
        if not self.state_path.is_file():
            return None
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s); starting over", self.state_path, exc)
            return None
        if not isinstance(state, dict) or state.get("format") != PROGRESS_FORMAT:
            log.warning("%s is not a MicroNet progress record; starting over", self.state_path)
            return None
        return state

    def _start_files(self) -> None:
        self._files["bin"] = open(self.bin_path, "wb")
        if "csv" in self.formats:
            self._files["csv"] = open(self.paths["csv"], "wb")  # binary: tell() is a byte length
            self._files["csv"].write(CSV_HEADER.encode())
        if "geojson" in self.formats:
            f = self._files["geojson"] = open(self.paths["geojson"], "wb")
            f.write(GEOJSON_HEAD + GEOJSON_TAIL)
            self.state["bytes"]["geojson"] = len(GEOJSON_HEAD)  # where the next feature goes
        for name, f in self._files.items():
            f.flush()
            if name != "geojson":
                self.state["bytes"][name] = f.tell()
        self._new_canvas()

    def _resume_files(self) -> np.ndarray:
        sizes = self.state["bytes"]
        with open(self.bin_path, "r+b") as f:
            f.truncate(sizes["bin"])
        records = np.fromfile(self.bin_path, dtype="<f4").reshape(-1, 3)
        if len(records) != self.state["detections"]:
            raise ValueError(f"{self.bin_path}: holds {len(records)} detections, its record says {self.state['detections']}; delete it to start over")
        self._files["bin"] = open(self.bin_path, "ab")
        if "csv" in self.formats:
            with open(self.paths["csv"], "r+b") as f:
                f.truncate(sizes["csv"])
            self._files["csv"] = open(self.paths["csv"], "ab")
        if "geojson" in self.formats:
            f = self._files["geojson"] = open(self.paths["geojson"], "r+b")
            f.seek(sizes["geojson"])
            f.write(GEOJSON_TAIL)
            f.truncate()
            f.flush()
        self._new_canvas()
        return records

    def _new_canvas(self) -> None:
        if self.thumbnail is None or "png" not in self.formats:
            return
        from PIL import Image, ImageDraw

        self._canvas = Image.fromarray(self.thumbnail.image.copy())
        self._draw = ImageDraw.Draw(self._canvas)
        sx, sy = self.thumbnail.scale_xy
        self._radius = max(1, round(OVERLAY_NUCLEUS_UM / (self.mpp_xy[0] * (sx + sy) / 2)))
        self._overlay_dirty = True

    # -- writing --

    def _draw_points(self, xy: np.ndarray) -> None:
        if self._draw is None or not len(xy):
            return
        r, width = self._radius, max(1, self._radius // 3)
        for x, y in self.thumbnail.from_level0(xy).tolist():
            self._draw.ellipse((x - r, y - r, x + r, y + r), outline=OVERLAY_COLOR, width=width)
        self._overlay_dirty = True

    def commit(self, xy: np.ndarray, scores: np.ndarray, tiles_done: int, seconds: float) -> None:
        """Appends one batch's detections (level-0 ``xy`` float32, ``scores``) everywhere,
        then records the new file lengths."""
        records = np.concatenate([xy, scores[:, None]], axis=1).astype("<f4")
        f = self._files["bin"]
        f.write(records.tobytes())
        f.flush()
        self.state["bytes"]["bin"] = f.tell()
        if len(xy) and "csv" in self._files:
            x_um = np.round((xy[:, 0].astype(np.float64) + 0.5) * self.mpp_xy[0], 3)
            y_um = np.round((xy[:, 1].astype(np.float64) + 0.5) * self.mpp_xy[1], 3)
            columns = [xy.astype(str), x_um.astype(str)[:, None], y_um.astype(str)[:, None], scores.astype(str)[:, None]]
            table = np.concatenate(columns, axis=1)  # (N, 5) shortest round-trip reprs
            f = self._files["csv"]
            f.write("".join(",".join(row) + "\n" for row in table.tolist()).encode())
            f.flush()
        if "csv" in self._files:
            self.state["bytes"]["csv"] = self._files["csv"].tell()
        if len(xy) and "geojson" in self._files:
            features = Detections(xy, scores).to_geojson()["features"]
            text = json.dumps(features, separators=(",", ":"), allow_nan=False)[1:-1].encode("utf-8")  # the list's items
            start = self.state["bytes"]["geojson"]
            f = self._files["geojson"]
            f.seek(start)
            f.write((b"," if start > len(GEOJSON_HEAD) else b"") + text + GEOJSON_TAIL)
            f.flush()
            self.state["bytes"]["geojson"] = f.tell() - len(GEOJSON_TAIL)
        self._draw_points(xy)
        self.state["tiles_done"] = tiles_done
        self.state["detections"] += len(xy)
        self.state["seconds"] = seconds
        self._save_state()
        if time.monotonic() - self._overlay_time > OVERLAY_INTERVAL_S:
            self.write_overlay()

    def _save_state(self) -> None:
        text = json.dumps(self.state, indent=1)
        _replace_atomically(self.state_path, lambda p: p.write_text(text, encoding="utf-8"))

    def write_overlay(self) -> None:
        if self._canvas is None or not self._overlay_dirty:
            return
        _replace_atomically(self.paths["png"], lambda p: self._canvas.save(p, format="PNG"))
        self._overlay_dirty = False
        self._overlay_time = time.monotonic()

    def finish(self, summary: dict[str, Any]) -> None:
        self.state.update(summary, complete=True)
        self._save_state()

    def close(self) -> None:
        """Closes the files; writes the overlay as it stands (also after an error, so an
        interrupted run leaves a current one)."""
        for f in self._files.values():
            f.close()
        self._files = {}
        self.write_overlay()


# --- detection ----------------------------------------------------------------------------


def _check_formats(formats: Any) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    try:
        names = tuple(formats)
    except TypeError:
        raise TypeError(f"formats: expected a sequence of format names ({', '.join(FORMATS)}), got {type(formats).__name__}") from None
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise ValueError(f"formats: expected one or more of {', '.join(FORMATS)}, got {list(names)!r}")
    return tuple(f for f in FORMATS if f in names)


def _resolve_mpp(slide: Slide, mpp: Any) -> tuple[float, float]:
    if mpp is not None:
        if isinstance(mpp, bool) or not isinstance(mpp, numbers.Real) or not math.isfinite(mpp) or mpp <= 0:
            raise ValueError(f"mpp: expected the level-0 pixel size in µm/px (a positive number) or None, got {mpp!r}")
        if slide.mpp is not None and abs(mpp / slide.mpp - 1) > MPP_TOLERANCE:
            log.warning("%s: using mpp=%.4g µm/px, not the %.4g µm/px its %s record", slide.path.name, mpp, slide.mpp, slide.mpp_source)
        return (float(mpp), float(mpp))
    if slide.mpp_xy is None:
        raise ValueError(
            f"{slide.path.name}: the file records no pixel size ({slide.mpp_source}); pass mpp= with the level-0 pixel "
            "size in µm/px (about 0.25 at 40×, 0.5 at 20×), --mpp on the command line"
        )
    return slide.mpp_xy


def detect_slide(
    detector: Any,
    path: str | PathLike[str],
    level: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    mpp: float | None = None,
    tissue_only: bool = True,
    progress: bool = True,
    out_dir: str | PathLike[str] | None = None,
    formats: Sequence[str] = FORMATS,
    resume: bool = True,
    queue_size: int | None = None,
    readers: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Detections:
    """Nucleus centres in a whole slide (or a region of it), in bounded memory.

    Called as ``detector.detect_slide(path, ...)``. Reads the slide tile by tile at the
    model's pixel size, skips glass, runs tiles in batches of ``detector.batch_size``
    while reader threads prefetch the next ones, keeps each tile's core peaks, and
    streams the detections to ``out_dir`` (see the module docstring for the files).

    Args:
        detector: the :class:`~micronet.runtime.detector.Detector` to run.
        path: an Aperio ``.svs``, OME-TIFF or tiled pyramidal ``.tif``/``.tiff``.
        level: pyramid level to read; ``None`` (default) picks the coarsest level whose
            pixels are at least as fine as the model's (level 0 for usual slides).
            Pixels are resampled to the model's pixel size either way.
        region: ``(x, y, width, height)`` in level-0 pixels; default the whole slide.
        mpp: level-0 pixel size in µm/px; default the file's own (required when the
            file records none). Overrides the file's value when given.
        tissue_only: skip tiles whose core holds no tissue (see :func:`tissue_mask`).
        progress: show a tqdm progress bar (tiles).
        out_dir: when given, ``<stem>.csv``, ``<stem>.geojson`` and
            ``<stem>.overlay.png`` (``formats`` chooses) are written there as batches
            complete, with a resume record ``<stem>.progress.json``/``.bin``.
        formats: any of ``"csv"``, ``"geojson"``, ``"png"`` (a sequence, or one
            comma-separated string).
        resume: continue an interrupted run with the same settings found in
            ``out_dir`` (and return a finished one's detections at once); ``False``
            starts over.
        queue_size: tiles read ahead of the batch being run (bounds the memory they
            take); ``None``: two batches; ``0``: no reader threads, tiles are read
            between batches (to measure what prefetching gains).
        readers: threads reading and decoding tiles ahead; ``None``: one when the
            detector runs on the CPU (inference wants the cores), up to four when it
            runs on a GPU (then reading is the bottleneck).
        on_batch: called as ``on_batch(tiles_done, tiles_total)`` after each batch is
            written; an exception it raises stops the run, leaving valid, resumable
            files.

    Returns:
        :class:`Detections` with ``xy`` ``(N, 2)`` float32 ``(x, y)`` in level-0 pixels
        of the slide (also for a region), ``scores`` ``(N,)``, highest first,
        ``image_shape`` the level-0 ``(H, W)``, ``mpp`` the level-0 pixel size.

    Raises:
        FileNotFoundError: no such slide.
        ValueError: an unsupported, damaged or non-RGB file, a level that does not
            exist, a region outside the slide, no pixel size (pass ``mpp``), or a bad
            option.
    """
    started = time.perf_counter()
    if isinstance(queue_size, bool) or (queue_size is not None and (not isinstance(queue_size, numbers.Integral) or queue_size < 0)):
        raise ValueError(f"queue_size: expected an integer >= 0 or None, got {queue_size!r}")
    queue_size = 2 * detector.batch_size if queue_size is None else int(queue_size)
    if isinstance(readers, bool) or (readers is not None and (not isinstance(readers, numbers.Integral) or readers < 1)):
        raise ValueError(f"readers: expected an integer >= 1 or None, got {readers!r}")
    if readers is None:
        readers = 1 if detector.device == "cpu" else max(1, min(4, (os.cpu_count() or 2) - 1))
    formats = _check_formats(formats)
    info = detector.info
    with open_slide(path) as slide:
        mpp_xy = _resolve_mpp(slide, mpp)
        mpp0 = (mpp_xy[0] + mpp_xy[1]) / 2
        region0 = _check_region(region, slide.shape)
        lv = _choose_level(slide, level, mpp0, info.mpp)
        grid = _make_grid(slide, lv, region0, mpp0, info.mpp)
        tiles = _plan(detector, grid)
        writing = out_dir is not None
        thumbnail = slide.read_thumbnail(THUMBNAIL_SIZE, region0) if tissue_only or (writing and "png" in formats) else None
        planned = len(tiles)
        if tissue_only:
            tiles = _tiles_on_tissue(tiles, grid, thumbnail, mpp0)
        log.info(
            "%s: level %d (%d×%d px at %.4g µm/px) as a %d×%d grid at the model's %.4g µm/px; %d of %d tiles %s",
            slide.path.name, lv.index, grid.width, grid.height, mpp0 * lv.downsample, grid.model_width,
            grid.model_height, info.mpp, len(tiles), planned, "on tissue" if tissue_only else "(tissue_only=False)",
        )  # fmt: skip

        outputs = None
        done, prev_xy, prev_scores = 0, np.zeros((0, 2), np.float32), np.zeros((0,), np.float32)
        if writing:
            settings = {
                "slide": _fingerprint(slide.path),
                "level": lv.index,
                "region": list(region0),
                "mpp": list(mpp_xy),
                "model": hashlib.sha256(info.to_json().encode()).hexdigest(),
                "threshold": detector.threshold,
                "min_distance": detector.min_distance,
                "tile_size": detector.tile_size,
                "tile_margin": detector.tile_margin,
                "tissue_only": bool(tissue_only),
                "formats": list(formats),
            }
            outputs = _Outputs(Path(out_dir), _stem(slide.path), formats, mpp_xy, thumbnail)
            finished = outputs.finished(settings) if resume else None
            if finished is not None:
                return Detections(*sort_peaks(*finished), slide.shape, mpp0)
            done, prev_xy, prev_scores = outputs.open(settings, len(tiles), resume)

        found_xy, found_scores = [prev_xy], [prev_scores]
        count = len(prev_scores)
        todo = tiles[done:]
        read = partial(grid.read_tile, slide)
        prefetcher = _Prefetcher(read, todo, queue_size, int(readers)) if queue_size > 0 and todo else None
        reads = prefetcher if prefetcher is not None else ((tile, read(tile)) for tile in todo)
        bar = _progress_bar(len(tiles), done, slide.path.name, progress)
        elapsed_before = float(outputs.state.get("seconds", 0.0)) if outputs is not None else 0.0
        try:
            for batch in _batches(reads, detector.batch_size):
                results = detector.detect_batch([pixels for _, pixels in batch])  # each tile ≤ tile_size: one pass
                kept = [keep_in_core(tile, d.xy, d.scores) for (tile, _), d in zip(batch, results)]
                xy = grid.to_level0(np.concatenate([k[0] for k in kept]))
                scores = np.concatenate([k[1] for k in kept]).astype(np.float32)
                found_xy.append(xy)
                found_scores.append(scores)
                done += len(batch)
                count += len(scores)
                if outputs is not None:
                    outputs.commit(xy, scores, done, elapsed_before + time.perf_counter() - started)
                bar.update(len(batch))
                bar.set_postfix(nuclei=count, refresh=False)
                if on_batch is not None:
                    on_batch(done, len(tiles))
            xy, scores = sort_peaks(np.concatenate(found_xy), np.concatenate(found_scores))
            seconds = time.perf_counter() - started
            if outputs is not None:
                outputs.finish(
                    {
                        "tiles_planned": planned,
                        "megapixels": region0[2] * region0[3] / 1e6,
                        "seconds": elapsed_before + seconds,
                        "detections": len(scores),
                    }
                )
        finally:
            bar.close()
            if prefetcher is not None:
                prefetcher.close()
            if outputs is not None:
                outputs.close()
        log.info("%s: %d nuclei in %.1f s (%.2f megapixels/s)", slide.path.name, len(scores), seconds, region0[2] * region0[3] / 1e6 / seconds)
        return Detections(xy, scores, slide.shape, mpp0)


def _plan(detector: Any, grid: _Grid) -> list[Tile]:
    """The detector's own tile plan for the model-pixel grid (what ``detector.detect``
    would run on the whole region), so that the tiles' core peaks add up to its result."""
    return detector.plan_tiles(grid.model_height, grid.model_width)


def _tiles_on_tissue(tiles: list[Tile], grid: _Grid, thumbnail: Thumbnail, mpp0: float) -> list[Tile]:
    from scipy import ndimage

    mask = tissue_mask(thumbnail.image)
    sx, sy = thumbnail.scale_xy
    grow = max(1, math.ceil(TISSUE_MARGIN_UM / (mpp0 * (sx + sy) / 2)))
    mask = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=grow)
    # Summed-area table: "any tissue in this box" in O(1) per tile.
    table = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    kept = []
    for tile in tiles:
        c0, r0, c1, r1 = thumbnail.box_from_level0(*grid.core_in_level0(tile))
        if table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0] > 0:
            kept.append(tile)
    return kept


def _progress_bar(total: int, initial: int, name: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="tile", desc=name, disable=not enabled, dynamic_ncols=True)
