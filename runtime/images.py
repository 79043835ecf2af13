"""Images in: reading image files and checking arrays against the Detector's contract
(``(H, W, 3)`` uint8 RGB), with errors that name the problem."""

from __future__ import annotations

import math
import numbers
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, InputTypeError, MissingFileError

__all__ = ["IMAGE_SUFFIXES", "as_rgb_image", "check_mpp", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def read_image(path: str | PathLike[str]) -> np.ndarray:
    """Reads an image file as an array, unconverted beyond decoding.

    PNG and JPEG are read with Pillow (palette and YCbCr images decode to RGB), TIFF with
    tifffile (the full-resolution level of the first series).

    Returns:
        The pixel array, e.g. ``(H, W, 3)`` uint8 for an RGB file; :meth:`Detector.detect`
        checks it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: expected an image file ending in {', '.join(IMAGE_SUFFIXES)}, got {suffix or 'no suffix'!r}")
    if not path.is_file():
        raise MissingFileError(f"image not found: {path}")
    if suffix in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path, key=0)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("P", "YCbCr"):
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "CMYK":
                raise InputError(f"{path}: a CMYK image; expected RGB")
            return np.asarray(im)
    except UnidentifiedImageError as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from exc


def as_rgb_image(image: Any, name: str = "image") -> np.ndarray:
    """Checks an image as :meth:`Detector.detect` does and returns it as a C-contiguous
    ``(H, W, 3)`` uint8 RGB array (a path is read with :func:`read_image`).

    Raises:
        TypeError: neither an array nor a path.
        ValueError: grayscale, RGBA, channels-first, 16-bit, float or empty images, with
            a message naming the problem; ``name`` (and the file name) prefix it.
        FileNotFoundError: no such file.
    """
    if isinstance(image, (str, PathLike)):
        arr = read_image(image)
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
    if arr.ndim == 2 or (arr.ndim == 3 and shape[2] == 1):
        raise InputError(f"{name}: expected an (H, W, 3) RGB image, got grayscale shape {shape}")
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
