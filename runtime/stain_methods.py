"""The arithmetic of the colour normalisations of :mod:`micronet.runtime.stain`:
Reinhard's lαβ space, Macenko's stain vectors in optical density, and a white balance.

Each method has two halves: what :func:`~micronet.runtime.stain.measure` estimates from
an image's pixels (:func:`lab`; :func:`macenko_stains`; the white point), and the
per-pixel map from one image's statistics onto another's that
:func:`~micronet.runtime.stain.apply` runs over blocks of pixels (:func:`reinhard_step`,
:func:`macenko_step`, :func:`white_step`). Pixels travel planar,
``(3, P)``, one row per channel (:func:`planar`). NumPy only; the checks on meaning are
:mod:`~micronet.runtime.stain`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from .stain import StainStats

__all__ = [
    "lab",
    "macenko_map",
    "macenko_stains",
    "macenko_step",
    "optical_density",
    "planar",
    "reinhard_map",
    "reinhard_step",
    "white_map",
    "white_step",
]

# Reinhard et al. 2001: RGB → LMS cone space (their Eq. 4, a product of the RGB → XYZ
# and XYZ → LMS matrices), its inverse (Eq. 9), and log-LMS → lαβ (Eq. 6): the
# achromatic, yellow–blue and red–green axes, nearly decorrelated for natural images.
RGB_TO_LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
LMS_TO_RGB = np.array([[4.4679, -3.5873, 0.1193], [-1.2186, 2.3809, -0.1624], [0.0497, -0.2439, 1.2045]])
LOG_LMS_TO_LAB = np.diag([1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)]) @ np.array(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)

# Macenko et al. 2009: pixels with an optical density below BETA in any channel are
# (nearly) transparent and carry no stain direction; the extreme stain angles are
# robust percentiles ALPHA and 100 − ALPHA; concentrations are matched at their
# MAX_PERCENTILE-th percentile (the values of the paper and of its reference code).
MACENKO_BETA = 0.15
MACENKO_ALPHA = 1.0
MAX_PERCENTILE = 99.0
# The incident light I0 of OD = ln(I0 / I), per channel: this percentile of the image's
# pixels, not the paper's fixed value. A darker camera or lamp then changes I0, not
# every pixel's OD: with a fixed I0 = 255 an image darkened to half gains OD ln 2 in
# every channel, a grey "stain" the two-stain model cannot hold, and the fast-cpu
# model found 0 nuclei in CRCHisto img1 so darkened and Macenko-normalised, 75 with the
# estimated I0 (74 in the clean image so normalised; 77 with Reinhard).
WHITE_PERCENTILE = 99.0
# The white balance brightens by at most this factor (three stops): an image darker than
# that is not H&E under a lamp, and a larger gain would mostly amplify noise.
WHITE_MAX_GAIN = 8.0


# --- pixels and colour spaces -------------------------------------------------------------


def planar(pixels: np.ndarray) -> np.ndarray:
    """``(P, 3)`` → ``(3, P)``, C-contiguous: NumPy multiplies a 3×3 matrix into
    ``(3, P)`` rows with BLAS, ten times faster than into ``(P, 3)`` columns."""
    return np.ascontiguousarray(pixels.T)


def optical_density(channels: np.ndarray, white: Any) -> np.ndarray:
    """``(3, P)`` uint8 → float32 natural-log optical density ``ln(I0 / I)``
    (Beer–Lambert), with ``I0 = white``; ``I = 0`` is taken as 1 so that black stays
    finite. Pixels brighter than ``white`` have a (small) negative OD."""
    od = _LN_TABLE[channels]  # ln I
    np.subtract(np.log(np.asarray(white, np.float32))[:, None], od, out=od)
    return od


_LN_TABLE = np.log(np.maximum(np.arange(256), 1)).astype(np.float32)


def lab(channels: np.ndarray) -> np.ndarray:
    """``(3, P)`` uint8 RGB → ``(3, P)`` float32 lαβ (Reinhard et al. 2001, Eqs. 4–6);
    ``I = 0`` is taken as 1 so that the logarithm stays finite."""
    lms = (RGB_TO_LMS / 255.0).astype(np.float32) @ np.maximum(channels, 1).astype(np.float32)
    np.log10(lms, out=lms)
    return LOG_LMS_TO_LAB.astype(np.float32) @ lms


# --- estimates -----------------------------------------------------------------------------


def macenko_stains(channels: np.ndarray, white: np.ndarray, min_pixels: int) -> tuple[Any, Any]:
    """Macenko et al. 2009: the H and E unit OD vectors and the 99th percentiles of
    their concentrations in ``(3, P)`` uint8 pixels, or ``(None, None)`` with fewer
    than ``min_pixels`` stained pixels."""
    od = optical_density(channels, white)
    od = od[:, (od >= MACENKO_BETA).all(axis=0)]  # (3, P'): transparent pixels dropped
    if od.shape[1] < min_pixels:
        return None, None
    # The plane of the two largest principal directions of OD (the paper's SVD step:
    # eigenvectors of the covariance), each pointing into positive OD.
    _, vectors = np.linalg.eigh(np.cov(od))
    plane = vectors[:, [2, 1]]  # (3, 2)
    plane *= np.where(plane[0] < 0, -1.0, 1.0)
    projected = plane.T.astype(np.float32) @ od  # (2, P')
    angle = np.arctan2(projected[1], projected[0])
    lo, hi = np.percentile(angle, [MACENKO_ALPHA, 100 - MACENKO_ALPHA])
    v1 = plane @ np.array([math.cos(lo), math.sin(lo)])
    v2 = plane @ np.array([math.cos(hi), math.sin(hi)])
    # Hematoxylin absorbs red more than eosin does: it is the vector with the larger R.
    he = np.stack([v1, v2] if v1[0] > v2[0] else [v2, v1])  # (2, 3)
    he /= np.linalg.norm(he, axis=1, keepdims=True)
    concentrations = np.linalg.pinv(he.T).astype(np.float32) @ od  # (2, P'): least squares, OD ≈ HEᵀ · C
    maxima = np.percentile(concentrations, MAX_PERCENTILE, axis=1)
    if not np.all(maxima > 0):
        return None, None
    stains = (tuple(float(v) for v in he[0]), tuple(float(v) for v in he[1]))
    return stains, (float(maxima[0]), float(maxima[1]))


# --- maps from one image's statistics onto another's ----------------------------------------


def reinhard_map(stats: StainStats, target: StainStats) -> tuple[np.ndarray, np.ndarray]:
    """``(K, c)`` with log-LMS' = K · log-LMS + c: lαβ standardised with ``stats`` and
    rescaled to ``target`` (Reinhard et al. 2001, Eq. 7 between Eqs. 6 and 8), composed
    with the linear maps on either side, so a pixel costs three 3×3 products."""
    scale = np.asarray(target.lab_std) / np.asarray(stats.lab_std)
    shift = np.asarray(target.lab_mean) - scale * np.asarray(stats.lab_mean)
    to_lab, from_lab = LOG_LMS_TO_LAB, np.linalg.inv(LOG_LMS_TO_LAB)
    return from_lab @ np.diag(scale) @ to_lab, from_lab @ shift


def macenko_map(stats: StainStats, target: StainStats) -> np.ndarray:
    """``A`` (3×3) with OD' = A · OD: concentrations C = (HEᵀ)⁺ · OD (least squares),
    scaled by the ratio of the robust maxima, re-composed with the target's stains
    (Macenko et al. 2009, Sec. 2.2); OD against each one's own ``white``."""
    if stats.stains is None or target.stains is None:
        which = "the image" if stats.stains is None else "the target"
        raise InputError(f"macenko: {which} has too few stained pixels for stain vectors; use method='reinhard'")
    he, he_target = np.asarray(stats.stains), np.asarray(target.stains)  # (2, 3) each
    ratio = np.asarray(target.max_concentrations) / np.asarray(stats.max_concentrations)
    return he_target.T @ np.diag(ratio) @ np.linalg.pinv(he.T)


def reinhard_step(stats: StainStats, target: StainStats) -> Callable[[np.ndarray], np.ndarray]:
    """Reinhard's map as one function of a ``(3, n)`` uint8 RGB block → ``(3, n)``
    float32 RGB in about 0–255 (unclipped): RGB → LMS → log10 → (K, c) → 10^ → RGB,
    three 3×3 products per pixel, with the 0–255 scaling folded in."""
    k, c = reinhard_map(stats, target)
    to_lms = (RGB_TO_LMS / 255.0).astype(np.float32)
    k, c = (k * math.log(10)).astype(np.float32), (c * math.log(10)).astype(np.float32)[:, None]  # 10^y = e^(y ln 10)
    to_rgb = (LMS_TO_RGB * 255.0).astype(np.float32)

    def step(block: np.ndarray) -> np.ndarray:
        x = to_lms @ np.maximum(block, 1).astype(np.float32)  # LMS
        np.log10(x, out=x)
        x = k @ x  # ln 10 · log-LMS'
        x += c
        np.exp(x, out=x)
        return to_rgb @ x  # RGB in 0–255

    return step


def macenko_step(stats: StainStats, target: StainStats) -> Callable[[np.ndarray], np.ndarray]:
    """Macenko's map as one function of a ``(3, n)`` uint8 RGB block → ``(3, n)``
    float32 RGB in about 0–255 (unclipped): OD against ``stats.white``, mapped by
    :func:`macenko_map`, back to light under ``target.white``."""
    a = macenko_map(stats, target).astype(np.float32)
    white_target = np.asarray(target.white, np.float32)[:, None]

    def step(block: np.ndarray) -> np.ndarray:
        x = a @ optical_density(block, stats.white)  # OD'
        np.negative(x, out=x)
        np.exp(x, out=x)
        x *= white_target  # I0' · exp(−OD')
        return x

    return step


def white_map(stats: StainStats, target: StainStats) -> np.ndarray:
    """The per-channel gains ``target.white / stats.white`` (at most
    :data:`WHITE_MAX_GAIN`): a white balance that takes the image's white point (each
    channel's :data:`WHITE_PERCENTILE`-th percentile) onto the target's. It undoes what
    the light does to every pixel alike, exposure and the lamp's or camera's colour
    (a gain per channel), and leaves the stains' contrast and the tissue's make-up alone,
    which Reinhard's mean-and-spread match does not: on clean CRCHisto test images the
    default model keeps its F1 under it (0.8161 against 0.8164) and loses 0.035 under
    Reinhard (docs/results.md, twelfth round)."""
    return np.minimum(np.asarray(target.white, np.float64) / np.asarray(stats.white, np.float64), WHITE_MAX_GAIN)


def white_step(stats: StainStats, target: StainStats) -> Callable[[np.ndarray], np.ndarray]:
    """The white balance as one function of a ``(3, n)`` uint8 RGB block → ``(3, n)``
    float32 RGB in about 0–255 (unclipped): each channel × its gain (:func:`white_map`)."""
    gains = white_map(stats, target).astype(np.float32)[:, None]

    def step(block: np.ndarray) -> np.ndarray:
        return block * gains  # uint8 × float32 → float32

    return step
