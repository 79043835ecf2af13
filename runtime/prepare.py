"""What ``Detector`` does to the caller's images before the network: checks and
converts them, measures the work they make, measures their colours, and cuts the
backend's input batches from them, each tile normalised with its image's statistics.

Images are ``(H, W, 3)`` uint8 RGB arrays; sizes ``(H, W)``; pixel sizes in µm/px.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from . import stain
from .errors import InputError, InputTypeError
from .images import ImageFile, as_rgb_image, check_mpp
from .resample import check_ratio, needs_resampling, resampled_size
from .tiling import Tile

__all__ = [
    "batch_inputs",
    "check_colour_stats",
    "check_positive",
    "crop_tile",
    "measure_colour",
    "prepare_image",
    "tile_batch",
    "tile_input_shape",
    "work_sizes",
]

log = logging.getLogger("micronet.runtime.detector")  # its messages are the Detector's

# (colour distance or None, normalisation method or None, statistics or None) of an image
Colour = tuple[float | None, str | None, stain.StainStats | None]


def check_positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value < float("inf")):
        raise InputError(f"{name}: expected a positive number, got {value!r}")
    return float(value)


def check_colour_stats(stats: Any) -> stain.StainStats | None:
    if stats is not None and not isinstance(stats, stain.StainStats):
        raise InputTypeError(f"colour_stats: expected StainStats (micronet.runtime.stain.measure) or None, got {type(stats).__name__}")
    return stats


def prepare_image(image: Any, mpp: Any, name: str, mpp_name: str, max_megapixels: float) -> tuple[np.ndarray, float | None, str, tuple[str, bool]]:
    """``(array, mpp, label, (mpp_name, typed))`` for one image, checked and converted.
    Its pixel size is the caller's (``typed``), else for a path the one the file records,
    else ``None``; ``mpp_name`` names it in errors."""
    mpp = check_mpp(mpp, mpp_name)
    if not isinstance(image, (str, PathLike)):
        return as_rgb_image(image, name, max_megapixels), mpp, name, (mpp_name, True)
    label, typed = Path(image).name, True
    with ImageFile(image) as f:  # one open: the header's pixel size, then the pixels
        recorded = f.pixel_size if mpp is None else None
        if recorded is not None:
            mpp = recorded.mean
            mpp_name, typed = f"{label} (pixel size from its {recorded.source}; pass mpp= to override)", False
            log.debug("%s: %.4g µm/px from its %s", label, mpp, recorded.source)
        return as_rgb_image(f, name, max_megapixels), mpp, label, (mpp_name, typed)


def batch_inputs(images: Any, mpp: Any) -> tuple[list[Any], list[tuple[Any, str]]]:
    """``detect_batch``'s arguments as a list of images and one ``(mpp, name)`` each."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif isinstance(images, (str, PathLike, np.ndarray)) or not isinstance(images, Sequence):
        raise InputTypeError(f"images: expected a sequence of images or an (N, H, W, 3) array, got {type(images).__name__}")
    if mpp is None or isinstance(mpp, numbers.Real):
        return list(images), [(check_mpp(mpp), "mpp")] * len(images)
    if isinstance(mpp, Sequence) and not isinstance(mpp, str):
        if len(mpp) != len(images):
            raise InputError(f"mpp: expected one pixel size per image ({len(images)}), got {len(mpp)}")
        return list(images), [(m, f"mpp[{i}]") for i, m in enumerate(mpp)]
    raise InputTypeError(f"mpp: expected a number, a sequence of numbers or None, got {type(mpp).__name__}")


def work_sizes(
    images: list[np.ndarray],
    mpps: list[float | None],
    model_mpp: float,
    max_megapixels: float,
    labels: list[str] | None,
    mpp_names: list[tuple[str, bool]] | None,
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``((H, W) given, (H, W) at the model's pixel size)`` per image, refusing an image
    beyond ``max_megapixels`` or a pixel size out of range before anything is allocated."""
    sizes = []
    for k, (image, mpp) in enumerate(zip(images, mpps)):
        h, w = image.shape[:2]
        if h * w / 1e6 > max_megapixels:  # arrays as image files (read_image): larger ones are slides
            raise InputError(
                f"{labels[k] if labels else 'image'}: {w}×{h} pixels ({h * w / 1e6:,.0f} MP), more than max_megapixels="
                f"{max_megapixels:g}; run it as a slide (Detector.detect_slide on a tiled TIFF), which reads a window "
                "at a time, or raise max_megapixels"
            )
        out = (h, w)
        if mpp is not None:
            name, typed = mpp_names[k] if mpp_names else ("mpp", True)
            ratio = check_ratio(mpp / model_mpp, mpp, model_mpp, name, typed=typed)
            if needs_resampling(ratio):
                out = resampled_size(h, w, ratio)
        sizes.append(((h, w), out))
    return sizes


def measure_colour(image: np.ndarray, given: stain.StainStats | None, target: stain.StainStats, normalize: str | None) -> tuple[Colour, bool]:
    """``((colour distance, normalisation method or None, statistics), outside)`` of one
    image at the model's pixel size: its own statistics unless ``given``; ``outside``:
    beyond :data:`~micronet.runtime.stain.OOD_THRESHOLD` from ``target``."""
    stats = given
    if stats is None:
        if image.shape[0] * image.shape[1] < stain.MIN_PIXELS:
            return (None, None, None), False  # too few pixels to measure or normalise
        stats = stain.measure(image)
    distance = stain.colour_distance(stats, target)
    outside = distance > stain.OOD_THRESHOLD
    method = (stain.AUTO_METHOD if outside else None) if normalize == "auto" else normalize
    if method == "macenko" and stats.stains is None:
        log.debug("no stained pixels to find stain vectors in: the image is not normalised")
        method = None
    return (distance, method, stats), outside


def tile_input_shape(tile: Tile, min_hw: tuple[int, int]) -> tuple[int, int]:
    """The tile's ``(h, w)``, grown to the backend's minimum input size ``min_hw``."""
    h, w = tile.shape
    return (max(h, min_hw[0]), max(w, min_hw[1]))


def crop_tile(image: np.ndarray, tile: Tile, min_hw: tuple[int, int]) -> np.ndarray:
    """The tile's pixels; an image smaller than the backend's minimum input (a TensorRT
    profile's) is mirrored out to it at the bottom and right. Its peaks there lie outside
    the core and are dropped; the map near those two edges is then that of the mirrored
    image, not exactly of the image alone."""
    crop = tile.crop(image)
    h, w = tile_input_shape(tile, min_hw)
    if (h, w) == crop.shape[:2]:
        return crop
    return np.pad(crop, ((0, h - crop.shape[0]), (0, w - crop.shape[1]), (0, 0)), mode="symmetric")


def tile_batch(
    chunk: list[tuple[int, Tile]], images: list[np.ndarray], colours: list[Colour], target: stain.StainStats, min_hw: tuple[int, int]
) -> np.ndarray:
    """The ``(B, h, w, 3)`` uint8 backend input of a chunk of ``(image index, tile)``:
    the tiles' pixels, each normalised in place with its image's statistics."""
    batch = np.stack([crop_tile(images[i], tile, min_hw) for i, tile in chunk])  # a new array: normalised in place
    for k, (i, _) in enumerate(chunk):
        _, method, stats = colours[i]
        if method is not None:
            stain.apply(batch[k], stats, target, method, out=batch[k])
    return batch
