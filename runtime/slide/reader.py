"""Reading pyramidal TIFF slides: levels, pixel size, windows and thumbnails.

>>> from micronet.runtime.slide import open_slide                    # doctest: +SKIP
>>> with open_slide("slide.svs") as slide:                           # doctest: +SKIP
...     window = slide.read_region(0, x=1000, y=2000, width=512, height=512)

Slides are read with tifffile, not OpenSlide. tifffile is a pip wheel the runtime
already depends on (a scanner PC needs no system library), it reads every format we
promise — Aperio SVS, OME-TIFF pyramids (SubIFDs; OpenSlide does not read OME-TIFF at
all) and generic tiled pyramidal TIFF — and it exposes each level's tile offsets and
decoder, so :meth:`Slide.read_region` reads and decodes only the tiles (or strips) a
window touches, with libjpeg-turbo from imagecodecs doing the JPEG. Memory is bounded
by the window, never the level. Formats that need OpenSlide's vendor drivers (MIRAX,
SCN, VMS, BIF, DICOM-WSI …) are read by :mod:`.openslide_reader` (``open_slide``'s
``reader``).

The pixel size comes from the file's own metadata: the Aperio ImageDescription
``MPP``, OME-XML ``PhysicalSizeX/Y`` (with their units), or the TIFF resolution tags.
Positions are ``(x, y)`` = (column, row); sizes ``(H, W)``.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections import OrderedDict
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import InputError, InputTypeError, MissingFileError, MissingPackageError
from ..pixel_size import recorded_pixel_size, tiff_pixel_size
from .levels import THUMBNAIL_SIZE, Level, SlideBase, Thumbnail, level_box

__all__ = [
    "Slide",
    "SlideBase",
    "Level",
    "Thumbnail",
    "open_slide",
    "file_signature",
    "level_box",
    "slide_suffix",
    "READERS",
    "SLIDE_SUFFIXES",
    "OME_SUFFIXES",
    "TIFFFILE_SUFFIXES",
    "OPENSLIDE_SUFFIXES",
    "THUMBNAIL_SIZE",
]

OME_SUFFIXES = (".ome.tif", ".ome.tiff")
_CONVERT = "convert it to a tiled pyramidal TIFF, e.g. `vips tiffsave in out.tif --tile --pyramid --compression jpeg` or QuPath's OME-TIFF export"

# Largest decoded tile or strip read at once; beyond it the file must be re-saved tiled.
MAX_SEGMENT_BYTES = 256 << 20
# Decoded tiles kept for the overlap of neighbouring detection tiles.
SEGMENT_CACHE_BYTES = 16 << 20

_JPEG = {6, 7, 33007, 34892}  # TIFF compressions whose tiles need the JPEGTables


class UnparsableSlideError(InputError):
    """tifffile could not parse the file at all (as opposed to parsing it and finding it
    is no RGB slide): ``open_slide(reader="auto")`` then tries OpenSlide."""


class Slide(SlideBase):
    """An RGB pyramidal TIFF slide (Aperio SVS, OME-TIFF, generic tiled TIFF), read one
    window at a time. Open with :func:`open_slide`; close (or use ``with``) when done.

    Attributes:
        path: the file.
        format: ``"svs"``, ``"ome-tiff"`` or ``"tiff"``.
        levels: the pyramid, level 0 (full resolution) first.
        pixel_size: the level-0 :class:`~micronet.runtime.pixel_size.PixelSize` from
            the file's own metadata, or ``None`` when it records none (or an implausible
            one); ``mpp`` (their mean) and ``mpp_xy`` give it as numbers.
        mpp_source: where the pixel size came from, or why there is none.

    One ``Slide`` may be read from several threads.
    """

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        self.reader = "tifffile"
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises several types for damaged files
            raise UnparsableSlideError(f"{path.name}: not a readable TIFF slide ({type(exc).__name__}: {exc})") from exc
        try:
            self._init_levels()
            self.format = "svs" if self._tif.is_svs else "ome-tiff" if self._tif.is_ome else "tiff"
            # One parser for every TIFF, slide or plain image (OME-XML, Aperio MPP,
            # ImageJ, resolution tags): micronet.runtime.pixel_size.
            self.pixel_size, self.mpp_source = recorded_pixel_size(*tiff_pixel_size(self._tif))
        except BaseException:
            self._tif.close()
            raise
        self._file_lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()

    def _init_levels(self) -> None:
        try:
            series = self._tif.series
        except Exception as exc:
            raise UnparsableSlideError(f"{self.path.name}: cannot parse the TIFF structure ({type(exc).__name__}: {exc})") from exc
        if not series:
            raise InputError(f"{self.path.name}: a TIFF without images")
        main = series[0]
        levels, pages = [], []
        for i, lv in enumerate(main.levels):
            shape, axes = tuple(lv.shape), lv.axes
            if lv.dtype != np.uint8 or axes != "YXS" or shape[2] != 3:
                raise InputError(
                    f"{self.path.name}: expected an RGB slide, (H, W, 3) uint8 with axes YXS; level {i} has shape {shape}, "
                    f"axes {axes!r}, dtype {lv.dtype} (fluorescence and multi-plane images are not H&E slides)"
                )
            if len(lv.pages) != 1:
                raise InputError(f"{self.path.name}: level {i} spans {len(lv.pages)} pages; expected one plane per level")
            page = lv.keyframe
            if page.planarconfig != 1 or page.imagedepth != 1:
                raise InputError(f"{self.path.name}: level {i} stores colour planes separately; expected interleaved RGB")
            seg_h, seg_w = int(page.chunks[0]), int(page.chunks[1])
            if seg_h * seg_w * 3 > MAX_SEGMENT_BYTES:
                kind = "tile" if page.is_tiled else "strip"
                raise InputError(
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

    def close(self) -> None:
        self._tif.close()
        with self._cache_lock:
            self._cache.clear()
            self._cache_bytes = 0

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
                raise InputError(f"{name}: expected an integer >= {lo}, got {value!r}")
        x, y, width, height = int(x), int(y), int(width), int(height)
        h, w = lv.shape
        if x + width > w or y + height > h:
            raise InputError(
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
                raise InputError(
                    f"{self.path.name}: level {level} tile {index} is cut off ({len(data)} of {count} bytes): the file is truncated"
                )
            kwargs = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader} if page.compression in _JPEG else {}
            try:
                decoded = page.decode(data, index, **kwargs)[0]  # (1, h, w, 3)
            except Exception as exc:  # the codecs raise their own types
                raise InputError(
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

def slide_suffix(path: Path) -> str:
    """The lower-case suffix that names a slide's format: ``.ome.tif`` / ``.ome.tiff``
    whole, else the last one (``.svs``)."""
    name = path.name.lower()
    for double in OME_SUFFIXES:
        if name.endswith(double):
            return double
    return path.suffix.lower()


READERS = ("auto", "tifffile", "openslide")
# The one registry of slide suffixes (as :func:`slide_suffix` gives them): what tifffile
# reads (an NDPI is a TIFF variant tifffile knows), what OpenSlide reads, and their union,
# which the runs package takes as its slide inputs.
TIFFFILE_SUFFIXES = (".svs", ".tif", ".tiff") + OME_SUFFIXES + (".ndpi",)
OPENSLIDE_SUFFIXES = (".mrxs", ".scn", ".vms", ".vmu", ".bif", ".dcm", ".svslide", ".ndpi", ".svs", ".tif", ".tiff")
SLIDE_SUFFIXES = tuple(dict.fromkeys(TIFFFILE_SUFFIXES + OPENSLIDE_SUFFIXES))


def file_signature(path: Path) -> str:
    """What a file's first bytes say it is, for error messages."""
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    known = [
        (b"II*\x00", "a little-endian TIFF"), (b"MM\x00*", "a big-endian TIFF"), (b"II+\x00", "a BigTIFF"),
        (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"PK\x03\x04", "a ZIP archive"),
        (b"BM", "a BMP image"), (b"%PDF", "a PDF"),
    ]  # fmt: skip
    for magic, what in known:
        if head.startswith(magic):
            return what
    if head[128:132] == b"DICM":
        return "a DICOM file"
    if not head:
        return "an empty file"
    return f"unknown, first bytes {head[:8].hex(' ')}"


def open_slide(path: str | PathLike[str], reader: str = "auto") -> SlideBase:
    """Opens a whole-slide image for reading one window at a time.

    Args:
        path: the slide file.
        reader: ``"tifffile"`` (Aperio ``.svs``, OME-TIFF, NDPI, tiled or stripped
            ``.tif``/``.tiff``, BigTIFF included), ``"openslide"`` (every format
            OpenSlide reads: MIRAX, SCN, VMS/VMU, BIF, DICOM-WSI, SVSlide, and the TIFF
            family too; ``pip install 'micronet-sdk[slides]'``), or ``"auto"``: tifffile
            for what it reads (falling back to OpenSlide when tifffile cannot parse the
            file and OpenSlide is installed), OpenSlide for the rest.

    The pixel size comes from the file's own metadata (tifffile: the Aperio
    ImageDescription ``MPP``, OME-XML ``PhysicalSizeX/Y``, the TIFF resolution tags;
    OpenSlide: ``openslide.mpp-x/-y``).

    Raises:
        MissingFileError: no such file.
        MissingPackageError: a format only OpenSlide reads, and OpenSlide is missing.
        InputError: an unknown reader, or a file neither reader can read (the message
            names both and what the file's first bytes say it is).
    """
    if not isinstance(path, (str, PathLike)):
        raise InputTypeError(f"path: expected a slide file path, got {type(path).__name__}")
    if reader not in READERS:
        raise InputError(f"reader: expected one of {', '.join(READERS)}, got {reader!r}")
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"slide not found: {path}")
    suffix = slide_suffix(path)
    if reader == "auto" and suffix not in SLIDE_SUFFIXES:
        raise InputError(
            f"{path.name}: expected a slide file ({', '.join(sorted(SLIDE_SUFFIXES))}), got {suffix or 'no suffix'!r} "
            f"({file_signature(path)})"
        )
    if reader == "tifffile" or (reader == "auto" and suffix in TIFFFILE_SUFFIXES):
        try:
            return Slide(path)
        except UnparsableSlideError as tiff_error:
            # Only a file tifffile cannot parse goes on to OpenSlide; one it parsed and
            # refused (greyscale, planar, huge strips) keeps tifffile's reason.
            if reader == "tifffile" or suffix not in OPENSLIDE_SUFFIXES:
                raise
            try:
                return _openslide(path)
            except MissingPackageError:
                raise tiff_error from None
            except InputError as os_error:
                raise InputError(
                    f"{path.name}: neither tifffile ({tiff_error}) nor OpenSlide ({os_error}) reads it; the file is "
                    f"{file_signature(path)}"
                ) from None
    try:
        return _openslide(path)
    except InputError as os_error:
        if reader == "openslide":
            raise
        raise InputError(f"{path.name}: OpenSlide cannot read it and tifffile does not read {suffix} files ({os_error}); the file is {file_signature(path)}") from None


def _openslide(path: Path) -> SlideBase:
    from .openslide_reader import OpenSlideSlide

    return OpenSlideSlide(path)
