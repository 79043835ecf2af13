"""The perturbations of the robustness benchmark (``bench_robust.py``, whose docstring
gives every family's levels and why): deterministic changes of stain, brightness, focus
and compression, on an image's own ``(H, W, 3)`` uint8 RGB pixels.

:data:`FAMILIES` is the table: each family's function, plot title, and levels
``(label, grade, params)`` graded ``mild`` / ``middle`` / ``strong`` / ``strongest``
(:data:`GRADES`). A :class:`Perturbation` is one level, called on an image with a seed
and the image's name, so its random draws (HED jitter) do not depend on which other
images or models run. Pure NumPy, SciPy and Pillow (scikit-image for HED).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["FAMILIES", "GRADES", "Family", "Perturbation", "perturbations"]

GRADES = ("mild", "middle", "strong", "strongest")
# Mean RGB of the issue's camera tiles over CRCHisto's, (105, 71, 103) / (210, 174, 212),
# relative to red: green is lost most.
ISSUE_TINT = (1.0, 0.82, 0.97)
WARM_TINT = (1.0, 0.93, 0.82)


def _lut(rgb: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """``rgb`` ``(H, W, 3)`` uint8 through one 256-entry uint8 table per channel ``(3, 256)``."""
    return np.stack([tables[c][rgb[..., c]] for c in range(3)], axis=-1)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def gains(rgb: np.ndarray, per_channel: Sequence[float]) -> np.ndarray:
    """Each channel's values × its gain (``(R, G, B)``), rounded and clipped to 0-255."""
    v = np.arange(256, dtype=np.float64)
    return _lut(rgb, _to_uint8(np.outer(per_channel, v)))


def gamma(rgb: np.ndarray, g: float) -> np.ndarray:
    """``255 (v / 255)^g``: g < 1 brightens, g > 1 darkens the mid-tones."""
    table = _to_uint8(255.0 * (np.arange(256) / 255.0) ** g)
    return _lut(rgb, np.stack([table] * 3))


def hue_rotate(rgb: np.ndarray, turns: float) -> np.ndarray:
    """Rotation of each RGB vector about the grey axis (1, 1, 1) by ``turns`` of a full
    turn (Rodrigues' formula): greys stay, hues turn, saturation is kept until clipping."""
    k = np.full(3, 1 / np.sqrt(3))
    theta = 2 * np.pi * turns
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = np.cos(theta) * np.eye(3) + np.sin(theta) * cross + (1 - np.cos(theta)) * np.outer(k, k)
    return _to_uint8(rgb.astype(np.float32) @ rot.T.astype(np.float32))


def hed_jitter(rgb: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Each stain's optical density (H, E, DAB; natural log) × ``scale[i]`` + ``shift[i]``.

    Unmixing and mixing use scikit-image's ``hed_from_rgb`` / ``rgb_from_hed`` with
    ``rgb2hed``'s floor (1e-6) under black; unclipped, so scale 1 and shift 0 return ``rgb``.
    """
    from skimage.color import hed_from_rgb, rgb_from_hed

    od_table = -np.log(np.maximum(np.arange(256) / 255.0, 1e-6))
    od = od_table[rgb]  # (H, W, 3) per-channel optical density
    stains = od @ hed_from_rgb * scale + shift  # (H, W, 3) H, E, DAB
    return _to_uint8(255.0 * np.exp(-(stains @ rgb_from_hed)))


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel, ``sigma`` in pixels (edges reflected)."""
    return _to_uint8(ndimage.gaussian_filter(rgb.astype(np.float32), (sigma, sigma, 0)))


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """A round trip through Pillow's JPEG encoder at ``quality`` (its default chroma 4:2:0)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as im:
        return np.asarray(im.convert("RGB"))


def camera(rgb: np.ndarray, sigma: float, exposure: float, tint: Sequence[float], g: float, quality: int) -> np.ndarray:
    """A camera-captured tile, in the order light takes: optics (blur), exposure and white
    balance, tone curve, compression."""
    out = blur(rgb, sigma)
    out = gains(out, [exposure * t for t in tint])
    return jpeg(gamma(out, g), quality)


def _hed(rgb: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    a, b = rng.uniform(-1.0, 1.0, size=(2, 3))  # the same draws at every σ: one direction per image
    return hed_jitter(rgb, 1.0 + sigma * a, sigma * b)


@dataclass(frozen=True)
class Family:
    """A kind of perturbation: ``apply(rgb, rng, **params) -> rgb``, the plot panel's title,
    where the clean image sits among the levels, and the levels ``(label, grade, params)``
    from one end of the axis to the other."""

    apply: Callable[..., np.ndarray]
    title: str
    clean_at: int
    levels: list[tuple[str, str, dict[str, Any]]]


def _graded(label: str, param: str, values: Sequence[tuple[Any, str]]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(label.format(v), grade, {param: v}) for v, grade in values]


FAMILIES: dict[str, Family] = {
    "darken": Family(lambda rgb, rng, factor: gains(rgb, (factor,) * 3), "darken", 0,
                     _graded("darken ×{:g}", "factor", [(0.9, "mild"), (0.7, "middle"), (0.55, "strong"), (0.4, "strongest")])),
    "gamma": Family(lambda rgb, rng, g: gamma(rgb, g), "gamma", 2,
                    _graded("γ {:g}", "g", [(0.5, "strongest"), (0.7, "middle"), (1.4, "middle"), (2.0, "strongest")])),
    "hue": Family(lambda rgb, rng, turns: hue_rotate(rgb, turns), "hue rotation", 3, _graded(
        "hue {:+g}", "turns", [(-0.1, "strongest"), (-0.06, "middle"), (-0.03, "mild"), (0.03, "mild"), (0.06, "middle"), (0.1, "strongest")])),
    "hed": Family(_hed, "HED jitter", 0, _graded("HED σ {:g}", "sigma", [(0.05, "mild"), (0.1, "middle"), (0.2, "strongest")])),
    "blur": Family(lambda rgb, rng, sigma: blur(rgb, sigma), "Gaussian blur", 0,
                   _graded("blur σ {:g}", "sigma", [(0.5, "mild"), (1.0, "middle"), (1.5, "strong"), (2.0, "strongest")])),
    "jpeg": Family(lambda rgb, rng, quality: jpeg(rgb, quality), "JPEG", 0,
                   _graded("JPEG q{}", "quality", [(90, "mild"), (50, "middle"), (30, "strong"), (20, "strongest")])),
    "camera": Family(lambda rgb, rng, **p: camera(rgb, **p), "camera-like", 0, [
        ("camera A", "mild", {"sigma": 0.5, "exposure": 0.8, "tint": (1.0, 1.0, 1.0), "g": 1.1, "quality": 85}),
        ("camera B", "middle", {"sigma": 0.75, "exposure": 0.7, "tint": WARM_TINT, "g": 1.15, "quality": 80}),
        ("camera C", "strongest", {"sigma": 1.0, "exposure": 0.6, "tint": ISSUE_TINT, "g": 1.3, "quality": 70}),
    ]),
}


@dataclass(frozen=True)
class Perturbation:
    """One level of one family; ``label`` names it in the results (``"darken ×0.7"``)."""

    family: str
    label: str
    grade: str
    params: dict[str, Any] = field(hash=False)

    def __call__(self, rgb: np.ndarray, seed: int, image_key: str) -> np.ndarray:
        """``rgb`` ``(H, W, 3)`` uint8 perturbed; random draws from ``seed`` and the
        image's name only, so a run on fewer images or rows perturbs each image alike."""
        rng = np.random.default_rng([seed, zlib.crc32(image_key.encode())])
        return FAMILIES[self.family].apply(rgb, rng, **self.params)


def perturbations(families: Sequence[str], grades: Sequence[str]) -> list[Perturbation]:
    """The levels of ``families`` whose grade is in ``grades``, in :data:`FAMILIES` order."""
    return [Perturbation(f, label, g, params) for f in families for label, g, params in FAMILIES[f].levels if g in grades]
