"""Images in: reading image files and checking arrays against the Detector's contract
(``(H, W, 3)`` uint8 RGB), with errors that name the problem, and the pixel size a file
records about itself.

**Decoding is bounded.** A plain image file is decoded whole, so :func:`read_image`
refuses, from its header and before decoding, a file of more than ``max_megapixels``
pixels (:data:`DEFAULT_MAX_MEGAPIXELS`, 256 MP: a 16 384² image, 768 MB decoded). That
is this SDK's decompression-bomb limit, in place of Pillow's global
``PIL.Image.MAX_IMAGE_PIXELS`` (which warns at 89 MP and refuses at 179 MP); raise it
with ``read_image(path, max_megapixels=...)`` or ``Detector(max_megapixels=...)``, or run
large images as slides (``detect_slide``), which read a window at a time.

**Orientation.** A JPEG (or PNG, TIFF) whose EXIF ``Orientation`` says it is stored
turned or mirrored (a phone, some scanners' snapshots) is turned upright as every image
viewer shows it, and a warning says so: detections are in the upright image's pixels
(:func:`image_orientation`).

**Pixel size.** :func:`image_pixel_size` reads µm/px from what the file records: OME-XML
``PhysicalSizeX/Y`` (with units), ImageJ's TIFF calibration, the TIFF resolution tags
(``XResolution``/``YResolution`` per centimetre or inch), PNG ``pHYs`` (pixels per metre)
or the JPEG JFIF density. Only values within :data:`PLAUSIBLE_MPP` count: every
screenshot and export carries a screen or print resolution (72, 96, 300 dpi are 353, 265,
85 µm/px), which says nothing about the tissue.
"""

from __future__ import annotations

import logging
import math
import numbers
import xml.etree.ElementTree as ET
import zlib
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, InputTypeError, MicronetError
from .files import regular_file

__all__ = [
    "DEFAULT_MAX_MEGAPIXELS",
    "IMAGE_SUFFIXES",
    "ORIENTATIONS",
    "PLAUSIBLE_MPP",
    "as_rgb_image",
    "check_mpp",
    "image_orientation",
    "image_pixel_size",
    "read_image",
    "tiff_pixel_size",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# The largest image (in megapixels) decoded whole from a plain file, and the largest the
# Detector resamples an image to (micronet.runtime.resample.check_work): 256 MP is a
# 16 384² image, 768 MB as RGB; larger images are slides (detect_slide).
DEFAULT_MAX_MEGAPIXELS = 256.0
# µm/px a file may record and be believed: a 100× oil objective images at about 0.06,
# a 1.25× overview at about 8; 72–1200 dpi (screens, printers) are 21–353.
PLAUSIBLE_MPP = (0.05, 20.0)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
# What decoders raise for damaged data (Pillow: OSError "image file is truncated",
# SyntaxError for broken chunks; zlib and the codecs their own errors).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, zlib.error)
# EXIF / TIFF Orientation (tag 274) → what turns the stored pixels upright, in words.
ORIENTATIONS = {
    2: "mirror left-right",
    3: "turn 180°",
    4: "mirror top-bottom",
    5: "transpose",
    6: "turn 90° clockwise",
    7: "transverse",
    8: "turn 90° counter-clockwise",
}
_ORIENTATION_TAG = 274


def _image_file(path: str | PathLike[str]) -> Path:
    """``path`` as an existing, non-empty file with an image suffix, or a one-line error."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: expected an image file ending in {', '.join(IMAGE_SUFFIXES)}, got {suffix or 'no suffix'!r}")
    regular_file(path, "image")  # missing, a folder, a FIFO (never opened: it would block), a link loop
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if size == 0:
        raise InputError(f"{path}: an empty file (0 bytes); expected a {suffix.lstrip('.').upper()} image")
    return path


def _check_pixels(path: Path, height: int, width: int, max_megapixels: float) -> None:
    megapixels = height * width / 1e6
    if megapixels > max_megapixels:
        raise InputError(
            f"{path}: {width}×{height} pixels ({megapixels:,.0f} MP), more than the {max_megapixels:g} MP an image file is "
            "decoded to at most (a guard against decompression bombs); if the file is trusted, raise the limit "
            "(Detector(max_megapixels=...), read_image(path, max_megapixels=...)), or run it as a slide "
            "(Detector.detect_slide, or micronet detect on a tiled pyramidal TIFF), which reads a window at a time"
        )


def _check_limit(max_megapixels: Any) -> float:
    if isinstance(max_megapixels, bool) or not isinstance(max_megapixels, numbers.Real) or not max_megapixels > 0:
        raise InputError(f"max_megapixels: expected a positive number, got {max_megapixels!r}")
    return float(max_megapixels)


def _open_pillow(path: Path) -> Any:
    """The file opened lazily by Pillow (the header only).

    PNG and JPEG are opened by their plugins directly, without ``Image.open``'s
    decompression-bomb check against the process-wide ``PIL.Image.MAX_IMAGE_PIXELS``:
    the callers apply this SDK's own limit (``max_megapixels``) to the header's size
    instead, one limit that a caller can set per call. Anything else in a ``.png`` or
    ``.jpg`` goes through ``Image.open`` and keeps Pillow's check.
    """
    from PIL import Image, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(_PNG_SIGNATURE):
            return PngImagePlugin.PngImageFile(str(path))
        if head.startswith(_JPEG_SIGNATURE):
            return JpegImagePlugin.JpegImageFile(str(path))
        return Image.open(path)
    except PermissionError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"{path}: {exc} (Pillow's limit for this format); if the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from exc
    except _DECODE_ERRORS as exc:
        raise InputError(f"{path}: not a readable image; the header is damaged ({type(exc).__name__}: {exc})") from exc


def read_image(path: str | PathLike[str], max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> np.ndarray:
    """Reads an image file as an array, unconverted beyond decoding.

    PNG and JPEG are read with Pillow (palette and YCbCr images decode to RGB), TIFF with
    tifffile (the first page: the full-resolution level of a pyramid). The whole image is
    decoded here, so a file cut short or otherwise damaged fails here, with its name.

    Args:
        path: a ``.png``, ``.jpg``/``.jpeg`` or ``.tif``/``.tiff`` file.
        max_megapixels: the largest image decoded, checked on the header before
            decoding (:data:`DEFAULT_MAX_MEGAPIXELS`; the decompression-bomb guard).

    Returns:
        The pixel array, e.g. ``(H, W, 3)`` uint8 for an RGB file, upright: an EXIF
        (or TIFF) ``Orientation`` other than 1 is applied, as viewers apply it, with a
        warning (:func:`image_orientation`); :meth:`Detector.detect` checks it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another suffix, an empty, unreadable, damaged or truncated file, a
            CMYK image, or one of more than ``max_megapixels``; the message names the
            file and the problem.
    """
    limit = _check_limit(max_megapixels)
    path = _image_file(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                _check_pixels(path, int(page.imagelength), int(page.imagewidth), limit)
                return _upright(tif.asarray(key=0), _tiff_orientation(page), path)
        except MicronetError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # tifffile and its codecs raise many types for damaged files
            raise InputError(f"{path}: not a readable TIFF image, or its data is damaged or cut short ({type(exc).__name__}: {exc})") from exc

    im = _open_pillow(path)
    try:
        with im:
            _check_pixels(path, im.height, im.width, limit)
            if im.mode == "CMYK":
                raise InputError(f"{path}: a CMYK image; expected RGB")
            # Pillow decodes lazily: converting and copying out here makes a truncated
            # file fail inside this try, not later in whoever touches the pixels.
            orientation = _pillow_orientation(im)
            if im.mode in ("P", "YCbCr"):
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            return _upright(np.asarray(im), orientation, path)
    except MicronetError:
        raise
    except _DECODE_ERRORS as exc:
        raise InputError(f"{path}: the image data is damaged or cut short ({type(exc).__name__}: {exc}); re-export or copy the file again") from exc


def image_orientation(path: str | PathLike[str]) -> int:
    """The EXIF (JPEG, PNG) or TIFF ``Orientation`` an image file records, 1 to 8; 1
    (upright) when it records none or an invalid one. :func:`read_image` turns an image
    with another upright (:data:`ORIENTATIONS` says how), as image viewers do. The
    header only is read.

    Raises:
        FileNotFoundError, ValueError: as :func:`image_pixel_size`.
    """
    path = _image_file(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                return _tiff_orientation(tif.pages[0])
        except Exception as exc:  # tifffile raises many types for damaged files
            raise InputError(f"{path}: not a readable TIFF image ({type(exc).__name__}: {exc})") from exc
    with _open_pillow(path) as im:
        return _pillow_orientation(im)


def _valid_orientation(value: Any) -> int:
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if value in ORIENTATIONS else 1


def _pillow_orientation(im: Any) -> int:
    try:
        return _valid_orientation(im.getexif().get(_ORIENTATION_TAG, 1))
    except _DECODE_ERRORS:  # a damaged EXIF block: the pixels may still be fine
        return 1


def _tiff_orientation(page: Any) -> int:
    tag = page.tags.get(_ORIENTATION_TAG)
    return _valid_orientation(tag.value if tag is not None else 1)


def _upright(array: np.ndarray, orientation: int, path: Path) -> np.ndarray:
    """``array`` (rows, columns first) turned upright from its stored ``orientation``,
    as Pillow's ``ImageOps.exif_transpose`` turns it; said in a warning."""
    if orientation == 1:
        return array
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }[orientation](array)
    log.warning(
        "%s: %s orientation %d (%s to view) applied: positions are in the upright image, as viewers show it",
        path.name, "TIFF" if path.suffix.lower() in (".tif", ".tiff") else "EXIF", orientation, ORIENTATIONS[orientation],
    )  # fmt: skip
    return np.ascontiguousarray(turned)


def image_pixel_size(path: str | PathLike[str]) -> tuple[float, str] | None:
    """The pixel size an image file records about itself, in µm/px, and where it came from.

    Read, in this order, from OME-XML ``PhysicalSizeX/Y`` (with their units), an Aperio
    ``MPP``, ImageJ's calibration (``unit=micron``), the TIFF ``XResolution``/
    ``YResolution`` tags per centimetre or inch (inch when ``ResolutionUnit`` is absent,
    as the TIFF standard says), PNG ``pHYs`` (pixels per metre), or the JPEG JFIF
    density (per inch or centimetre). The header only is read.

    Returns:
        ``(mpp, source)``, e.g. ``(0.25, "PNG pHYs")``; ``mpp`` is the mean of x and y
        (the source says when they differ by more than 1%). ``None`` when the file
        records no physical resolution, or one outside :data:`PLAUSIBLE_MPP` (the
        72/96/300 dpi of screenshots and exports).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an image file, or an unreadable one.

    >>> image_pixel_size("tile_40x.png")      # doctest: +SKIP
    (0.25, 'PNG pHYs')
    """
    path = _image_file(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                mpp_xy, source = tiff_pixel_size(tif)
        except MicronetError:
            raise
        except Exception as exc:  # tifffile raises many types for damaged files
            raise InputError(f"{path}: not a readable TIFF image ({type(exc).__name__}: {exc})") from exc
    else:
        with _open_pillow(path) as im:
            mpp_xy, source = _pillow_pixel_size(im)
    if mpp_xy is None:
        return None
    return _plausible(mpp_xy, source)


def _plausible(mpp_xy: tuple[float, float], source: str) -> tuple[float, str] | None:
    lo, hi = PLAUSIBLE_MPP
    if not all(math.isfinite(v) and lo <= v <= hi for v in mpp_xy):
        return None  # 72 dpi and the like: a screen's resolution, not the tissue's
    mx, my = (float(f"{v:.9g}") for v in mpp_xy)  # 25400 / 101600.00000000001 dpi is 0.25
    mean = float(f"{(mx + my) / 2:.9g}")
    if abs(mx - my) > 0.01 * mean:
        source = f"{source} (x {mx:g}, y {my:g} µm/px: their mean)"
    return mean, source


def _pillow_pixel_size(im: Any) -> tuple[tuple[float, float] | None, str]:
    """``((x, y) µm/px, source)`` from a Pillow image's header, or ``(None, why)``."""
    if im.format == "PNG":
        dpi = im.info.get("dpi")  # Pillow's reading of pHYs in pixels per metre
        if not dpi:
            return None, "no PNG pHYs chunk in metres"
        return _per_unit(25400.0, dpi), "PNG pHYs"
    if im.format == "JPEG":
        unit, density = im.info.get("jfif_unit"), im.info.get("jfif_density")
        if unit not in (1, 2) or not density:
            return None, "no JFIF density in inches or centimetres"
        return _per_unit(25400.0 if unit == 1 else 10000.0, density), "JPEG JFIF density"
    return None, f"{im.format} files carry no pixel size this SDK reads"


def _per_unit(um_per_unit: float, per_unit: Any) -> tuple[float, float] | None:
    """µm/px from pixels per unit ``(x, y)``; ``None`` for zero or unreadable values."""
    try:
        rx, ry = (float(v[0]) / float(v[1]) if isinstance(v, tuple) else float(v) for v in per_unit)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not (rx > 0 and ry > 0):
        return None
    return um_per_unit / rx, um_per_unit / ry


# OME-XML length units, in µm.
_OME_UNITS = {"µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6}


def tiff_pixel_size(tif: Any) -> tuple[tuple[float, float] | None, str]:
    """``((x, y) µm/px, source)`` recorded in an open ``tifffile.TiffFile`` (its first
    page), or ``(None, why not)``; not yet checked for plausibility.

    Sources in order: OME-XML ``PhysicalSizeX/Y``, an Aperio ImageDescription ``MPP``,
    ImageJ's calibration in microns, the resolution tags per centimetre or inch.
    """
    page = tif.pages[0]
    if tif.is_ome:
        mpp_xy, why = _ome_pixel_size(tif.ome_metadata or "")
        if mpp_xy is not None:
            return mpp_xy, "OME-XML PhysicalSizeX/Y"
    if tif.is_svs:
        for field in (page.description or "").split("|"):
            key, _, value = field.partition("=")
            if key.strip() == "MPP":
                try:
                    mpp = float(value)
                except ValueError:
                    break
                return (mpp, mpp), "Aperio ImageDescription MPP"
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    if xres is None or yres is None:
        return None, "no TIFF resolution tags"
    unit = page.tags.get("ResolutionUnit")
    unit_value = int(unit.value) if unit is not None else 2  # the TIFF standard's default: inch
    per = (xres.value, yres.value)
    if unit_value == 1 and tif.is_imagej:
        # ImageJ stores pixels per calibration unit with no TIFF unit.
        calibration = str((tif.imagej_metadata or {}).get("unit", "")).replace("\\u00B5", "µ")
        if calibration in ("micron", "µm", "μm", "um"):
            return _per_unit(1.0, per), "ImageJ calibration (micron)"
        return None, f"ImageJ calibration in {calibration or 'pixels'!r}, not microns"
    if unit_value not in (2, 3):
        return None, "TIFF resolution tags without a physical unit"
    return _per_unit(25400.0 if unit_value == 2 else 10000.0, per), "TIFF resolution tags"


def _ome_pixel_size(xml: str) -> tuple[tuple[float, float] | None, str]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        return None, f"OME-XML not well-formed ({exc})"
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None, "OME-XML without PhysicalSizeX"
    sizes = []
    for axis in ("X", "Y"):
        value = pixels.get(f"PhysicalSize{axis}", pixels.get("PhysicalSizeX"))
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")  # the OME schema's default
        if unit not in _OME_UNITS:
            return None, f"OME-XML PhysicalSize{axis} in an unknown unit {unit!r}"
        try:
            sizes.append(float(value) * _OME_UNITS[unit])
        except (TypeError, ValueError):
            return None, f"OME-XML PhysicalSize{axis} unreadable: {value!r}"
    return (sizes[0], sizes[1]), "OME-XML PhysicalSizeX/Y"


def as_rgb_image(image: Any, name: str = "image", max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> np.ndarray:
    """Checks an image as :meth:`Detector.detect` does and returns it as a C-contiguous
    ``(H, W, 3)`` uint8 RGB array (a path is read with :func:`read_image`).

    Raises:
        TypeError: neither an array nor a path.
        ValueError: grayscale, RGBA, channels-first, 16-bit, float or empty images, with
            a message naming the problem; ``name`` (and the file name) prefix it.
        FileNotFoundError: no such file.
    """
    from_file = isinstance(image, (str, PathLike))
    if from_file:
        arr = read_image(image, max_megapixels)
        name = f"{name} ({Path(image).name})"
    elif isinstance(image, np.ndarray):
        arr = image
    elif hasattr(image, "__cuda_array_interface__"):
        raise InputTypeError(f"{name}: expected an image in host memory, got a GPU array ({type(image).__name__}); use cupy.asnumpy(image)")
    elif hasattr(image, "__array_interface__") or hasattr(image, "__array__"):  # PIL images and the like
        arr = np.asarray(image)
    else:
        raise InputTypeError(f"{name}: expected an (H, W, 3) uint8 RGB array or an image path, got {type(image).__name__}")
    shape = tuple(arr.shape)
    if arr.ndim == 2 or (arr.ndim == 3 and shape[2] in (1, 2)):
        fix = "; save the file as RGB (ImageMagick: magick IN -type TrueColor OUT)" if from_file else ""
        raise InputError(f"{name}: expected an (H, W, 3) RGB image, got grayscale shape {shape}{fix}")
    if arr.ndim == 3 and shape[2] == 4 and from_file:
        raise InputError(
            f"{name}: expected an RGB image, got RGBA (an alpha channel, shape {shape}): save the file without it "
            "(ImageMagick: magick IN -alpha off OUT; Pillow: Image.open(IN).convert('RGB').save(OUT))"
        )
    if arr.ndim == 3 and shape[2] == 4:
        raise InputError(f"{name}: expected an (H, W, 3) RGB image, got shape {shape} (RGBA?): drop the alpha channel first, image[..., :3]")
    if arr.ndim == 3 and shape[0] == 3 and shape[2] != 3:
        raise InputError(f"{name}: expected an (H, W, 3) RGB image, got channels-first shape {shape}: use image.transpose(1, 2, 0)")
    if arr.ndim == 4:
        raise InputError(f"{name}: expected one (H, W, 3) image, got a batch of shape {shape}: use detect_batch")
    if arr.ndim != 3 or shape[2] != 3:
        raise InputError(f"{name}: expected an (H, W, 3) RGB image, got shape {shape}")
    if arr.dtype != np.uint8:
        if arr.dtype in (np.uint16, np.int16):
            raise InputError(f"{name}: a 16-bit image (dtype {arr.dtype}): convert to 8-bit first; expected uint8 RGB 0–255")
        if np.issubdtype(arr.dtype, np.floating):
            raise InputError(
                f"{name}: expected uint8 RGB with values 0–255, got dtype {arr.dtype}; "
                "for values in 0–1 use (image * 255).round().astype(np.uint8)"
            )
        raise InputError(f"{name}: expected uint8 RGB with values 0–255, got dtype {arr.dtype}")
    if shape[0] == 0 or shape[1] == 0:
        raise InputError(f"{name}: empty image of shape {shape}; expected at least 1×1 pixels")
    return np.ascontiguousarray(arr)


def check_mpp(mpp: Any, name: str = "mpp") -> float | None:
    if mpp is None:
        return None
    if isinstance(mpp, bool) or not isinstance(mpp, numbers.Real) or not math.isfinite(mpp) or mpp <= 0:
        raise InputError(f"{name}: expected a positive pixel size in µm/px or None, got {mpp!r}")
    return float(mpp)
