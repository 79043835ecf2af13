"""Photometric augmentation: stain, brightness, focus and compression changes a model must
not lean on (other labs' stains, scanners and microscope cameras).

Geometry (rotation, scale, elastic) lives in :mod:`trainer.data`, applied to image and
targets together; everything here changes the pixels only, so the targets (and a
teacher's map, computed on the clean image) stay as they were: the network learns to
give the clean answer from a perturbed input.

Each transform is drawn with probability ``p`` and a strength within its range; the
ranges are those of the robustness benchmark (``benchmarks/bench_robust.py``): darkening
to 0.4×, gamma 0.5–2, HED jitter, blur σ up to 2 px, JPEG quality down to 20.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["PhotometricConfig", "TRANSFORMS", "photometric", "rgb_to_hed", "hed_to_rgb"]

# The transforms in the order they are applied (the imaging chain); names for ``p_of``.
TRANSFORMS = ("hed", "brightness", "contrast", "gamma", "hue", "tint", "blur", "noise", "jpeg")

# Ruifrok & Johnston's stain vectors (H, E, DAB rows), exactly scikit-image's rgb2hed.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
_LOG_FLOOR = 1e-6


@dataclass(frozen=True)
class PhotometricConfig:
    """Probabilities and ranges; ``strength`` scales every range at once (0 turns all off).

    hed_scale, hed_shift: per-stain scale ``1 ± s`` and shift ``± t`` of the optical
        densities (H, E, DAB), Tellez et al. 2018's HED jitter.
    brightness: multiply by a factor in ``[1 − b, 1 + b/2]`` (darkening reaches further:
        microscope cameras are darker than scanners).
    contrast, gamma, saturation, hue: around the identity; gamma as ``exp(± g)``.
    tint: white balance, a gain ``exp(± t)`` per RGB channel, divided by their geometric
        mean so only the colour moves (a camera's warm or cool cast); 0 (the default) draws
        nothing, so configurations without it perturb exactly as before it existed.
    blur_sigma: Gaussian σ (px) up to this; ``defocus``: share of blurs that are a disk.
    noise: Gaussian noise σ (0–255 units) up to this.
    jpeg_quality: lowest JPEG quality drawn.
    p_of: per-transform probabilities that replace ``p``, as ``(name, p)`` pairs, names
        from :data:`TRANSFORMS` (e.g. more strong blur without more of everything else).
    """

    strength: float = 1.0
    p: float = 0.5
    hed_scale: float = 0.3
    hed_shift: float = 0.05
    brightness: float = 0.6
    contrast: float = 0.4
    gamma: float = 0.7
    saturation: float = 0.5
    hue: float = 0.08  # of a full turn
    tint: float = 0.0
    blur_sigma: float = 2.0
    defocus: float = 0.3
    noise: float = 8.0
    jpeg_quality: int = 20
    p_of: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for name, p in self.p_of:
            if name not in TRANSFORMS:
                raise ValueError(f"p_of names an unknown transform {name!r}; valid: {', '.join(TRANSFORMS)}")
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"p_of[{name!r}] = {p} is not a probability in [0, 1]")

    @classmethod
    def from_options(cls, strength: float, p: float, options: dict | None = None) -> "PhotometricConfig":
        """A configuration from a run's JSON: ``options`` sets any range by name, and
        ``p_of`` as a mapping ``{transform: probability}``; an unknown name is an error."""
        from dataclasses import fields

        from .options import check_names

        options = dict(options or {})
        check_names(options, [f.name for f in fields(cls) if f.name not in ("strength", "p")], "photometric")
        if isinstance(options.get("p_of"), dict):
            options["p_of"] = tuple(sorted(options["p_of"].items()))
        return cls(strength=strength, p=p, **options)

    def prob(self, name: str) -> float:
        """The probability of transform ``name``: its ``p_of`` entry, else ``p``."""
        return dict(self.p_of).get(name, self.p)


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8/float RGB (0–255) → optical densities in H, E, DAB."""
    od = -np.log(np.maximum(rgb.astype(np.float32) / 255.0, _LOG_FLOOR))
    return od @ _HED_FROM_RGB.astype(np.float32)


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hed`: float RGB in 0–255 (not clipped)."""
    return 255.0 * np.exp(-(hed @ _RGB_FROM_HED.astype(np.float32)))


def photometric(crop: np.ndarray, rng: np.random.Generator, cfg: PhotometricConfig = PhotometricConfig()) -> np.ndarray:
    """One randomly perturbed copy of ``crop`` (``(H, W, 3)`` uint8 RGB), uint8.

    The order follows the imaging chain: stain (HED), illumination (brightness, contrast,
    gamma, hue, saturation), camera white balance (tint), optics (blur), sensor (noise),
    storage (JPEG).
    """
    s = cfg.strength
    if s <= 0:
        return crop
    x = crop.astype(np.float32)
    draw = lambda name: rng.random() < cfg.prob(name)  # noqa: E731
    if draw("hed"):
        hed = rgb_to_hed(x)
        scale = 1.0 + rng.uniform(-cfg.hed_scale, cfg.hed_scale, size=3) * s
        shift = rng.uniform(-cfg.hed_shift, cfg.hed_shift, size=3) * s
        x = hed_to_rgb(hed * scale.astype(np.float32) + shift.astype(np.float32))
    if draw("brightness"):
        x = x * rng.uniform(1.0 - cfg.brightness * s, 1.0 + cfg.brightness * s / 2)
    if draw("contrast"):
        mean = x.mean()
        x = (x - mean) * (1.0 + rng.uniform(-cfg.contrast, cfg.contrast) * s) + mean
    if draw("gamma"):
        g = np.exp(rng.uniform(-cfg.gamma, cfg.gamma) * s)
        x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** g
    if draw("hue"):
        x = _hue_saturation(x, rng.uniform(-cfg.hue, cfg.hue) * s, 1.0 + rng.uniform(-cfg.saturation, cfg.saturation) * s)
    if cfg.tint > 0 and draw("tint"):  # no draw at all without tint: older runs stay bit for bit
        log_gain = rng.uniform(-cfg.tint, cfg.tint, size=3) * s
        x = x * np.exp(log_gain - log_gain.mean()).astype(np.float32)
    if draw("blur"):
        x = _blur(x, rng.uniform(0.3, max(0.3, cfg.blur_sigma * s)), disk=rng.random() < cfg.defocus)
    if draw("noise"):
        x = x + rng.normal(0.0, rng.uniform(0, cfg.noise * s), size=x.shape).astype(np.float32)
    out = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    if draw("jpeg"):
        out = _jpeg(out, int(round(100 - rng.uniform(0, 100 - cfg.jpeg_quality) * min(s, 1.0))))
    return out


def _hue_saturation(x: np.ndarray, hue_turn: float, saturation: float) -> np.ndarray:
    """Rotates hue about the grey axis by ``hue_turn`` of a turn and scales the chroma:
    one 3×3 matrix in RGB (YIQ-style), no per-pixel HSV conversion."""
    angle = 2 * np.pi * hue_turn
    grey = np.full((3, 3), 1.0 / 3.0)
    # Rotation about (1, 1, 1)/√3 (Rodrigues), applied to the chroma only.
    k = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / np.sqrt(3.0)
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    m = grey + saturation * (rot - grey)
    return x @ m.T.astype(np.float32)


def _blur(x: np.ndarray, sigma: float, disk: bool) -> np.ndarray:
    if not disk:
        return ndi.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="reflect")
    r = max(1, int(round(1.5 * sigma)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    kernel = (xx**2 + yy**2 <= r * r).astype(np.float32)
    kernel /= kernel.sum()
    return np.stack([ndi.convolve(x[..., c], kernel, mode="reflect") for c in range(3)], axis=-1)


def _jpeg(u8: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=max(5, min(95, quality)))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))
