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

**Pixel size.** :func:`image_pixel_size` reads µm/px from what the file records (OME-XML,
ImageJ's TIFF calibration, the TIFF resolution tags, PNG ``pHYs``, the JPEG JFIF
density: :mod:`micronet.runtime.pixel_size` parses them and keeps only plausible values).

**One open per file.** :class:`ImageFile` opens a file once and gives its header (size,
orientation, pixel size) and then its pixels from the same open file; the functions
here are each one use of it.
"""

from __future__ import annotations

import logging
import numbers
import zlib
from functools import cached_property
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, InputTypeError, MicronetError
from .files import regular_file
from .pixel_size import PLAUSIBLE_MPP, PixelSize, check_mpp, pillow_pixel_size, recorded_pixel_size, tiff_pixel_size  # re-exported

__all__ = [
    "DEFAULT_MAX_MEGAPIXELS",
    "IMAGE_SUFFIXES",
    "ORIENTATIONS",
    "PLAUSIBLE_MPP",
    "ImageFile",
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


class ImageFile:
    """An image file opened once: its header now, its pixels when asked, from the same
    open file (tifffile for TIFF, Pillow for PNG and JPEG).

    >>> with ImageFile("tile.tif") as f:                   # doctest: +SKIP
    ...     f.shape, f.orientation, f.pixel_size, f.read().shape
    ((512, 768), 1, PixelSize(x=0.25, y=0.25, source='TIFF resolution tags'), (512, 768, 3))

    Attributes:
        path: the file.
        shape: ``(H, W)`` as stored (before :attr:`orientation` turns it).

    Raises:
        FileNotFoundError: no such file.
        ValueError: another suffix, an empty file, or one whose header cannot be read.
    """

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = _image_file(path)
        self._tif: Any = None
        self._im: Any = None
        if self.is_tiff:
            import tifffile

            try:
                self._tif = tifffile.TiffFile(self.path)
                page = self._tif.pages[0]
                self.shape = (int(page.imagelength), int(page.imagewidth))
            except Exception as exc:  # tifffile raises many types for damaged files
                self.close()
                raise self._unreadable(exc) from exc
        else:
            self._im = _open_pillow(self.path)
            self.shape = (self._im.height, self._im.width)

    @property
    def is_tiff(self) -> bool:
        return self.path.suffix.lower() in (".tif", ".tiff")

    def _unreadable(self, exc: BaseException) -> InputError:
        return InputError(f"{self.path}: not a readable TIFF image ({type(exc).__name__}: {exc})")

    @cached_property
    def orientation(self) -> int:
        """The EXIF or TIFF ``Orientation`` (:func:`image_orientation`)."""
        if self._tif is not None:
            return _tiff_orientation(self._tif.pages[0])
        return _pillow_orientation(self._im)

    @cached_property
    def pixel_size(self) -> PixelSize | None:
        """The plausible pixel size the file records, as the square pixels an image runs
        at (:meth:`PixelSize.as_square`: x and y to 9 significant digits, then their
        mean), or ``None`` (:func:`image_pixel_size`)."""
        if self._tif is not None:
            try:
                xy, source = tiff_pixel_size(self._tif)
            except MicronetError:
                raise
            except Exception as exc:  # tifffile raises many types for damaged files
                raise self._unreadable(exc) from exc
        else:
            xy, source = pillow_pixel_size(self._im)
        found, _ = recorded_pixel_size(xy, source)
        return None if found is None else found.rounded().as_square()

    def read(self, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> np.ndarray:
        """The pixels, upright (:func:`read_image`)."""
        limit = _check_limit(max_megapixels)
        _check_pixels(self.path, *self.shape, limit)
        if self._tif is not None:
            try:
                return _upright(self._tif.asarray(key=0), self.orientation, self.path)
            except MicronetError:
                raise
            except MemoryError:
                raise
            except Exception as exc:  # tifffile and its codecs raise many types for damaged files
                raise InputError(f"{self.path}: not a readable TIFF image, or its data is damaged or cut short ({type(exc).__name__}: {exc})") from exc
        im = self._im
        try:
            if im.mode == "CMYK":
                raise InputError(f"{self.path}: a CMYK image; expected RGB")
            # Pillow decodes lazily: converting and copying out here makes a truncated
            # file fail inside this try, not later in whoever touches the pixels.
            orientation = self.orientation
            if im.mode in ("P", "YCbCr"):
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            return _upright(np.asarray(im), orientation, self.path)
        except MicronetError:
            raise
        except _DECODE_ERRORS as exc:
            raise InputError(f"{self.path}: the image data is damaged or cut short ({type(exc).__name__}: {exc}); re-export or copy the file again") from exc

    def close(self) -> None:
        for f in (self._tif, self._im):
            if f is not None:
                f.close()

    def __enter__(self) -> ImageFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


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
    with ImageFile(path) as f:
        return f.read(limit)


def image_orientation(path: str | PathLike[str]) -> int:
    """The EXIF (JPEG, PNG) or TIFF ``Orientation`` an image file records, 1 to 8; 1
    (upright) when it records none or an invalid one. :func:`read_image` turns an image
    with another upright (:data:`ORIENTATIONS` says how), as image viewers do. The
    header only is read.

    Raises:
        FileNotFoundError, ValueError: as :func:`image_pixel_size`.
    """
    with ImageFile(path) as f:
        return f.orientation


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
        72/96/300 dpi of screenshots and exports). :attr:`ImageFile.pixel_size` gives
        it as a :class:`~micronet.runtime.pixel_size.PixelSize`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an image file, or an unreadable one.

    >>> image_pixel_size("tile_40x.png")      # doctest: +SKIP
    (0.25, 'PNG pHYs')
    """
    with ImageFile(path) as f:
        found = f.pixel_size
    return None if found is None else (found.mean, found.source)


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


def as_rgb_image(image: Any, name: str = "image", max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> np.ndarray:
    """Checks an image as :meth:`Detector.detect` does and returns it as a C-contiguous
    ``(H, W, 3)`` uint8 RGB array (a path is read with :func:`read_image`, an open
    :class:`ImageFile` with its :meth:`~ImageFile.read`).

    Raises:
        TypeError: neither an array nor a path.
        ValueError: grayscale, RGBA, channels-first, 16-bit, float or empty images, with
            a message naming the problem; ``name`` (and the file name) prefix it.
        FileNotFoundError: no such file.
    """
    from_file = isinstance(image, (str, PathLike, ImageFile))
    if isinstance(image, ImageFile):
        arr = image.read(max_megapixels)
        name = f"{name} ({image.path.name})"
    elif from_file:
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
