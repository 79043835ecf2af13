"""Stain and intensity normalisation of H&E images, and how far an image's colours lie
from a model's training data.

A model learns the brightness and stain of its training slides; an image from another
lab, scanner or camera can be much darker or differently stained, and the model then
misses nuclei that are plainly visible. Three normalisations map an image's colours onto
the training data's:

- **Reinhard** (Reinhard et al., "Color transfer between images", IEEE CG&A 2001):
  per-channel mean and standard deviation matched in the decorrelated, logarithmic
  lαβ space.
- **Macenko** (Macenko et al., "A method for normalizing histology slides for
  quantitative analysis", ISBI 2009): the two stain vectors found in optical density
  (OD) space, each pixel's stain concentrations, rescaled so their robust maxima match
  the target's, re-composed with the target's stain vectors.
- **White balance** (``"white"``): a gain per RGB channel that takes the image's white
  point (each channel's 99th percentile) onto the target's: it undoes exposure and the
  light's colour, what a camera or a lamp changes, and nothing else. ``Detector``'s
  ``normalize="auto"`` applies it (:data:`AUTO_METHOD`) to images outside the training
  colours: it recovers darkened and camera-like images better than Reinhard, whose
  match of the mean and spread also moves the colours of clean images with more or
  fewer nuclei than the training data's average (docs/results.md, twelfth round).

Statistics are measured apart from their application, so that every tile of a slide
is normalised with the slide's statistics (measured over its tissue) and an image run
whole equals the same image run as tiles::

    stats = measure(rgb, mask=tissue)                      # StainStats
    out = apply(rgb, stats, target, method="reinhard")     # same shape, uint8
    colour_distance(stats, target)                         # > OOD_THRESHOLD: outside

The target is the colour statistics of a model's training tissue
(:func:`training_colour_stats`), stored as a small dict in the model's metadata
(:attr:`~micronet.runtime.model_info.ModelInfo.colour`); models without it use
:data:`DEFAULT_TARGET`, measured on CRCHisto's training images. The colour spaces and
the two methods' arithmetic are :mod:`micronet.runtime.stain_methods`'s; this module
checks what comes in and holds the statistics. NumPy only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError, InputTypeError
from .stain_methods import WHITE_PERCENTILE, lab, macenko_stains, macenko_step, planar, reinhard_step, white_step

__all__ = [
    "StainStats",
    "measure",
    "measure_pooled",
    "apply",
    "training_colour_stats",
    "colour_distance",
    "colour_message",
    "target_stats",
    "METHODS",
    "AUTO_METHOD",
    "MIN_PIXELS",
    "DEFAULT_TARGET",
    "OOD_THRESHOLD",
]

METHODS = ("reinhard", "macenko", "white")
# What Detector(normalize="auto") applies to an image outside the training colours, chosen
# by measurement (benchmarks/bench_robust.py; docs/results.md, twelfth round): on the
# camera-like CRCHisto tiles B and C the default model keeps 97 % and 93 % of its clean F1
# with it, 92 % and 88 % with Reinhard.
AUTO_METHOD = "white"
MAX_PIXELS = 1 << 18  # measure() samples at most this many pixels (a regular stride)
BRIGHT_PERCENTILE = 95.0  # StainStats.lab_bright: this percentile of l
MIN_PIXELS = 64  # fewer tissue pixels than this give no reliable statistics


# --- statistics -------------------------------------------------------------------------


@dataclass(frozen=True)
class StainStats:
    """The colour statistics of an image, a slide's tissue, or a training set.

    Attributes:
        rgb_mean: mean ``(R, G, B)`` in 0–255, for people to read.
        lab_mean, lab_std: per-channel mean and standard deviation in Reinhard's lαβ
            space (log10 units): what :func:`apply` matches with ``"reinhard"``.
        lab_bright: the 95th percentile of l: how bright the brightest tissue (or
            glass) is, which a darker camera or scanner lowers and the stain hardly
            moves (:func:`colour_distance`).
        white: the incident light ``(R, G, B)`` in 1–255 that optical density is
            measured against (the 99th percentile of each channel).
        stains: ``((r, g, b), (r, g, b))`` unit optical-density vectors of
            hematoxylin and eosin (natural-log OD), or ``None`` when fewer than
            :data:`MIN_PIXELS` pixels are stained (an all-glass field).
        max_concentrations: the 99th percentiles of the H and E concentrations, or
            ``None`` with ``stains``.
        pixels: how many pixels the statistics were measured on.
    """

    rgb_mean: tuple[float, float, float]
    lab_mean: tuple[float, float, float]
    lab_std: tuple[float, float, float]
    lab_bright: float
    white: tuple[float, float, float] = (255.0, 255.0, 255.0)
    stains: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    max_concentrations: tuple[float, float] | None = None
    pixels: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (for :attr:`ModelInfo.colour`), rounded to 6 digits."""

        def r(values: Any) -> Any:
            return None if values is None else [r(v) for v in values] if isinstance(values, (tuple, list)) else round(float(values), 6)

        return {
            "rgb_mean": r(self.rgb_mean),
            "lab_mean": r(self.lab_mean),
            "lab_std": r(self.lab_std),
            "lab_bright": r(self.lab_bright),
            "white": r(self.white),
            "stains": r(self.stains),
            "max_concentrations": r(self.max_concentrations),
            "pixels": int(self.pixels),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "colour") -> "StainStats":
        """The inverse of :meth:`to_dict`; a malformed dict raises ``ValueError``."""
        if not isinstance(data, Mapping):
            raise InputTypeError(f"{source}: expected a dict of colour statistics, got {type(data).__name__}")
        try:
            stains = data.get("stains")
            maxima = data.get("max_concentrations")
            stats = cls(
                rgb_mean=_floats(data["rgb_mean"], 3),
                lab_mean=_floats(data["lab_mean"], 3),
                lab_std=_floats(data["lab_std"], 3),
                lab_bright=_floats([data["lab_bright"]], 1)[0],
                white=_floats(data.get("white", (255.0, 255.0, 255.0)), 3),
                stains=None if stains is None else (_floats(stains[0], 3), _floats(stains[1], 3)),
                max_concentrations=None if maxima is None else _floats(maxima, 2),
                pixels=int(data.get("pixels", 0)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(
                f"{source}: expected colour statistics with rgb_mean, lab_mean, lab_std (3 numbers each), lab_bright, "
                f"stains (2×3) and max_concentrations (2) or null; got {dict(data)!r} ({exc})"
            ) from exc
        if min(stats.lab_std) <= 0 or min(stats.white) < 1 or (stats.max_concentrations is not None and min(stats.max_concentrations) <= 0):
            raise InputError(f"{source}: lab_std, white and max_concentrations must be positive, got {dict(data)!r}")
        return stats


def _floats(values: Any, n: int) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise ValueError(f"expected {n} finite numbers, got {values!r}")
    return out


def _check_rgb(rgb: Any, name: str = "rgb") -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim < 2 or arr.shape[-1] != 3:
        raise InputError(f"{name}: expected a (..., 3) uint8 RGB array, e.g. (H, W, 3), got shape {arr.shape} dtype {arr.dtype}")
    return arr


def _pixels(rgb: Any, mask: Any, max_pixels: int) -> np.ndarray:
    """The ``(P, 3)`` uint8 pixels under ``mask`` (all without one), at most
    ``max_pixels`` of them: a regular stride, so the sample is deterministic."""
    arr = _check_rgb(rgb)
    if arr.ndim != 3:
        raise InputError(f"rgb: expected an (H, W, 3) uint8 RGB image, got shape {arr.shape}")
    if mask is None:
        pixels = arr.reshape(-1, 3)
    else:
        m = np.asarray(mask)
        if m.dtype != np.bool_ or m.shape != arr.shape[:2]:
            raise InputError(f"mask: expected an {arr.shape[:2]} bool array (True on tissue), got shape {m.shape} dtype {m.dtype}")
        pixels = arr[m]
    step = -(-len(pixels) // max_pixels)
    return pixels[::step] if step > 1 else pixels


def _stats_of(pixels: np.ndarray) -> StainStats:
    """The statistics of ``(P, 3)`` uint8 pixels."""
    if len(pixels) < MIN_PIXELS:
        raise InputError(f"colour statistics need at least {MIN_PIXELS} pixels (of tissue, with a mask), got {len(pixels)}")
    channels = planar(pixels)  # (3, P) uint8
    lab_values = lab(channels)  # (3, P) float32
    white = np.clip(np.percentile(channels, WHITE_PERCENTILE, axis=1), 1.0, 255.0)
    stains, maxima = macenko_stains(channels, white, MIN_PIXELS)
    return StainStats(
        rgb_mean=tuple(float(v) for v in channels.mean(axis=1, dtype=np.float64)),
        lab_mean=tuple(float(v) for v in lab_values.mean(axis=1, dtype=np.float64)),
        # A floor keeps a flat (one-colour) channel from dividing by zero in apply().
        lab_std=tuple(float(max(v, 1e-4)) for v in lab_values.std(axis=1, dtype=np.float64)),
        lab_bright=float(np.percentile(lab_values[0], BRIGHT_PERCENTILE)),
        white=tuple(float(v) for v in white),
        stains=stains,
        max_concentrations=maxima,
        pixels=len(pixels),
    )


def measure(rgb: Any, mask: Any = None, *, max_pixels: int = MAX_PIXELS) -> StainStats:
    """The colour statistics of an image (of its tissue, with a mask).

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` bool, ``True`` on tissue; ``None``: every pixel counts (as in
            Reinhard et al.; pass a mask when much of the image is glass). Macenko's
            stain vectors use only the stained pixels among them (OD ≥ 0.15 in every
            channel) either way.
        max_pixels: at most this many pixels are used, at a regular stride (2¹⁸ by
            default: means, spreads and percentiles hardly move with more).

    Returns:
        :class:`StainStats`.

    Raises:
        ValueError: not ``(H, W, 3)`` uint8, a mask of another shape or not bool, or
            fewer than :data:`MIN_PIXELS` pixels under the mask.
    """
    return _stats_of(_pixels(rgb, mask, int(max_pixels)))


def measure_pooled(images: Iterable[Any], masks: Iterable[Any] | None = None, *, per_image: int = MAX_PIXELS) -> StainStats:
    """The colour statistics of several images' pixels pooled, e.g. windows of one
    slide's tissue: :func:`measure` of all their pixels together.

    Args:
        images: ``(H, W, 3)`` uint8 RGB arrays, of any sizes.
        masks: one ``(H, W)`` bool tissue mask per image, or ``None`` for all pixels.
        per_image: at most this many pixels of each image, at a regular stride.
    """
    images = list(images)
    masks = [None] * len(images) if masks is None else list(masks)
    if len(masks) != len(images):
        raise InputError(f"masks: expected one mask per image ({len(images)}), got {len(masks)}")
    if not images:
        raise InputError("images: expected at least one image, got none")
    return _stats_of(np.concatenate([_pixels(im, m, int(per_image)) for im, m in zip(images, masks)]))


def training_colour_stats(images: Iterable[Any], masks: Iterable[Any] | None = None, *, per_image: int = 1 << 18) -> dict[str, Any]:
    """The colour statistics of a model's training tissue, for
    :attr:`ModelInfo.colour <micronet.runtime.model_info.ModelInfo.colour>`: the
    pooled pixels of ``images`` (at most ``per_image`` each, at a regular stride).

    Args:
        images: ``(H, W, 3)`` uint8 RGB arrays, e.g. the training images at the
            model's pixel size.
        masks: one ``(H, W)`` bool tissue mask per image, or ``None`` for all pixels
            (as :class:`~micronet.runtime.detector.Detector` measures an image).

    Returns:
        :meth:`StainStats.to_dict` of the pooled pixels.
    """
    return measure_pooled(images, masks, per_image=per_image).to_dict()


# --- normalisation ----------------------------------------------------------------------


def target_stats(target: StainStats | Mapping[str, Any] | None) -> StainStats:
    """``target`` as :class:`StainStats`: as it is, from a dict
    (:attr:`ModelInfo.colour`), or :data:`DEFAULT_TARGET` for ``None``."""
    if target is None:
        target = DEFAULT_TARGET
    if isinstance(target, StainStats):
        return target
    return StainStats.from_dict(target, "target")


def apply(
    rgb: Any,
    stats: StainStats,
    target: StainStats | Mapping[str, Any] | None = None,
    method: str = "reinhard",
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``rgb`` with its colours mapped from ``stats`` onto ``target``'s.

    A per-pixel map fixed by the two statistics: tiles of an image, normalised with the
    image's statistics, are exactly the tiles of the normalised image.

    Args:
        rgb: ``(..., 3)`` uint8 RGB: an ``(H, W, 3)`` image or an ``(N, H, W, 3)`` batch.
        stats: the statistics of the image (or of its slide): :func:`measure`'s.
        target: the statistics to map onto: :class:`StainStats`, a
            :meth:`StainStats.to_dict` dict (:attr:`ModelInfo.colour`), or ``None`` for
            :data:`DEFAULT_TARGET`.
        method: ``"reinhard"``, ``"macenko"`` or ``"white"`` (:data:`METHODS`).
        out: a uint8 array of ``rgb``'s shape to write into (``rgb`` itself works:
            the map is computed in row chunks); default a new array.

    Returns:
        The normalised ``(..., 3)`` uint8 RGB (``out`` when given).

    Raises:
        ValueError: an unknown method, ``rgb`` not ``(..., 3)`` uint8, or ``"macenko"``
            when ``stats`` or ``target`` has no stain vectors.
    """
    if method not in METHODS:
        raise InputError(f"method: expected one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if not isinstance(stats, StainStats):
        raise InputTypeError(f"stats: expected StainStats (from measure()), got {type(stats).__name__}")
    arr = _check_rgb(rgb)
    target = target_stats(target)
    out = _check_out(out, arr)
    step = _STEPS[method](stats, target)  # (3, n) uint8 RGB → (3, n) float32 RGB
    flat_in, flat_out = arr.reshape(-1, 3), out.reshape(-1, 3)
    chunk = 1 << 16  # pixels per step: the float32 temporaries stay in the cache
    for start in range(0, len(flat_in), chunk):
        x = step(planar(flat_in[start : start + chunk]))
        np.clip(x, 0.0, 255.0, out=x)
        np.rint(x, out=x)
        flat_out[start : start + chunk] = x.T
    return out


_STEPS = {"reinhard": reinhard_step, "macenko": macenko_step, "white": white_step}


def _check_out(out: np.ndarray | None, arr: np.ndarray) -> np.ndarray:
    """``out`` if it can hold the normalised ``arr``, a new array for ``None``."""
    if out is None:
        return np.empty_like(arr)
    if out.shape != arr.shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        got = f"shape {out.shape} dtype {out.dtype}{'' if out.flags.c_contiguous else ', not C-contiguous'}"
        raise InputError(f"out: expected a C-contiguous uint8 array of shape {arr.shape}, got {got}")
    return out


# --- out-of-distribution measure ---------------------------------------------------------

# The length in lαβ of halving every channel (one photographic stop): lαβ is an
# orthonormal rotation of log10 LMS, so a uniform factor f moves l by √3·log10 f alone.
STOP = math.sqrt(3) * math.log10(2)


def _offsets(stats: StainStats, target: StainStats) -> tuple[float, float]:
    """``(brightness, chroma)`` in stops: the shift of the bright end of l (negative:
    darker), and the length of the shift of the mean chroma (α, β)."""
    bright = (stats.lab_bright - target.lab_bright) / STOP
    chroma = math.hypot(stats.lab_mean[1] - target.lab_mean[1], stats.lab_mean[2] - target.lab_mean[2]) / STOP
    return bright, chroma


def colour_distance(stats: StainStats, target: StainStats | Mapping[str, Any] | None = None) -> float:
    """How far an image's colours lie from ``target``'s, in stops: above
    :data:`OOD_THRESHOLD`, the image is outside what the model was trained on.

    The length of the shift, in lαβ (Euclidean there is Euclidean in log-LMS), of the
    bright end of l (its 95th percentile) and of the mean chroma (α, β), in units of
    :data:`STOP`: an image darkened to half (every channel × 0.5) lies 1.0 from itself;
    a stain that doubles one cone response against the others about 0.8.

    Args:
        stats: the image's (or slide's tissue's) :func:`measure`.
        target: the training data's statistics (``None``: :data:`DEFAULT_TARGET`).

    Returns:
        The distance, ≥ 0.
    """
    return math.hypot(*_offsets(stats, target_stats(target)))


def colour_message(stats: StainStats, target: StainStats | Mapping[str, Any] | None = None, suggest: str | None = AUTO_METHOD) -> str:
    """One line for people: how the image differs from the training data, what it
    risks and what to try, e.g. ``"this image is much darker than the training data
    (mean RGB (105, 87, 106), training (213, 182, 220); colour distance 1.02 > 0.6);
    detections may be missed; try normalize='white'"``; without the last two parts
    for ``suggest=None``."""
    target = target_stats(target)
    bright, chroma = _offsets(stats, target)
    distance = math.hypot(bright, chroma)
    if abs(bright) >= chroma:
        how = f"this image is much {'darker' if bright < 0 else 'brighter'} than the training data"
    else:
        how = "this image's stain colours differ much from the training data's"
    rgb = ", ".join(f"{v:.0f}" for v in stats.rgb_mean)
    rgb_target = ", ".join(f"{v:.0f}" for v in target.rgb_mean)
    message = f"{how} (mean RGB ({rgb}), training ({rgb_target}); colour distance {distance:.2f} > {OOD_THRESHOLD:g})"
    return message if suggest is None else f"{message}; detections may be missed; try normalize={suggest!r}"


# The colour statistics of CRCHisto's 70 training images (500² at 0.55 µm/px, every
# pixel; training_colour_stats), the data the bundled models were trained on: the
# target of models whose metadata records none. `python benchmarks/colour_threshold.py`
# measures them again.
DEFAULT_TARGET: dict[str, Any] = {
    "rgb_mean": [212.846026, 182.101963, 220.098597],
    "lab_mean": [-0.205237, -0.045136, 0.008064],
    "lab_std": [0.192654, 0.048158, 0.007093],
    "lab_bright": -0.031139,
    "white": [255.0, 247.0, 255.0],
    "stains": [[0.59519, 0.772461, 0.221478], [0.510917, 0.629894, 0.584977]],
    "max_concentrations": [1.801118, 2.369385],
    "pixels": 17500000,
}

# colour_distance above which an image is outside the training data (in stops).
# Measured with DEFAULT_TARGET by benchmarks/colour_threshold.py on every image of
# CRCHisto (100) and MoNuSeg (13), clean and with RGB × 0.5 (floored to uint8):
#   clean:    largest 0.337 (MoNuSeg TCGA-AR-A1AK; CRCHisto's largest 0.193)
#   darkened: smallest 0.981 (CRCHisto img57; MoNuSeg's smallest 1.030)
# 0.6 lies 0.263 above every clean image (1.78×) and 0.381 below every darkened one
# (1.63×): about a third darker than the training data's brightest tissue.
OOD_THRESHOLD = 0.6
