"""On-the-fly augmented crops of point-annotated images (folders: runtime/evaluation/datasets.py).

Crops are sampled by one inverse map (scale × rotation × mirror + shift + elastic
displacement) applied to image and points together, so targets stay exact. Resampling
to the model's pixel size is part of the same map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from micronet.runtime.evaluation.datasets import (
    KNOWN_MPP,
    PointDataset,
    load_point_folder,
)
from scipy import ndimage as ndi

from .augment import PhotometricConfig
from .augment import photometric as augment_pixels

__all__ = ["PointDataset", "load_point_folder", "AugmentConfig", "Crop", "sample_crop", "sample_crop_with", "channel_stats", "KNOWN_MPP"]


@dataclass(frozen=True)
class AugmentConfig:
    """Random crop augmentation (applied to image and points together)."""

    crop: int = 200
    rotate: bool = True  # any angle
    mirror: bool = True
    scale_jitter: float = 0.1  # relative, around the pixel-size ratio
    elastic_px: float = 3.0  # std of the displacement at the control points (model px)
    elastic_grid: int = 5  # control points per side
    color_jitter: float = 0.08  # brightness/contrast/per-channel gain, relative


@dataclass
class Crop:
    """One augmented sample (:func:`sample_crop_with`).

    image: ``(crop, crop, 3)`` uint8.
    points: per point set given, ``(M, 2)`` float64 ``(x, y)`` in crop pixels.
    kept: per point set, the ``(M,)`` indices of those points in the set given.
    maps: per map given, ``(crop, crop)`` float32, warped like the image (bilinear).
    """

    image: np.ndarray
    points: list[np.ndarray]
    kept: list[np.ndarray]
    maps: list[np.ndarray]


def sample_crop(
    image: np.ndarray,
    points: np.ndarray,
    rng: np.random.Generator,
    aug: AugmentConfig,
    scale: float = 1.0,
    margin: float = 15.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented ``crop × crop`` sample.

    Args:
        image: ``(H, W, 3)`` uint8 source image.
        points: ``(N, 2)`` ``(x, y)`` centres in source pixels.
        scale: source pixels per model pixel (model mpp / data mpp).
        margin: keep points up to this far outside the crop (they shape the targets at
            its border).

    Returns:
        ``(crop, points)``: ``(crop, crop, 3)`` uint8 and ``(M, 2)`` float64 ``(x, y)``
        in crop pixels.
    """
    crop = sample_crop_with(image, [points], rng, aug, scale, margin)
    return crop.image, crop.points[0]


def sample_crop_with(
    image: np.ndarray,
    point_sets: list[np.ndarray],
    rng: np.random.Generator,
    aug: AugmentConfig,
    scale: float = 1.0,
    margin: float = 15.0,
    maps: tuple[np.ndarray, ...] = (),
    photometric: PhotometricConfig | None = None,
) -> Crop:
    """:func:`sample_crop` for several point sets (all centres, the labelled ones) and
    float maps (a teacher's proximity map) warped together with the image, then, with
    ``photometric``, the image's pixels perturbed (:mod:`trainer.augment`): the maps and
    points stay those of the clean image."""
    size = aug.crop
    a, centre_src = _placement(image.shape[:2], rng, aug, scale)
    centre_dst = np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    disp = _elastic_field(rng, aug)  # (2, size, size) model pixels
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    dx = cols + disp[0] - centre_dst[0]
    dy = rows + disp[1] - centre_dst[1]
    src = [centre_src[1] + a[1, 0] * dx + a[1, 1] * dy, centre_src[0] + a[0, 0] * dx + a[0, 1] * dy]  # (rows, cols)
    crop = np.empty((size, size, 3), dtype=np.float32)
    for ch in range(3):
        ndi.map_coordinates(image[..., ch], src, output=crop[..., ch], order=1, mode="reflect")
    warped_maps = [ndi.map_coordinates(m, src, order=1, mode="reflect").astype(np.float32) for m in maps]
    crop_u8 = _colour_jitter(crop, rng, aug.color_jitter)
    if photometric is not None:
        crop_u8 = augment_pixels(crop_u8, rng, photometric)
    inv = np.linalg.inv(a)
    moved, kept = [], []
    for points in point_sets:
        dst = _moved_points(points, inv, centre_src, centre_dst, disp, aug)
        keep = (dst[:, 0] > -margin) & (dst[:, 0] < size - 1 + margin) & (dst[:, 1] > -margin) & (dst[:, 1] < size - 1 + margin)
        moved.append(dst[keep])
        kept.append(np.flatnonzero(keep))
    return Crop(crop_u8, moved, kept, warped_maps)


def _placement(shape: tuple[int, int], rng: np.random.Generator, aug: AugmentConfig, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The crop's affine map ``a`` (crop offsets from its centre → source offsets: scale
    jitter, rotation, mirror) and its centre in the source image."""
    h, w = shape
    s = scale * (1.0 + rng.uniform(-aug.scale_jitter, aug.scale_jitter))
    theta = rng.uniform(0, 2 * np.pi) if aug.rotate else 0.0
    flip = -1.0 if (aug.mirror and rng.random() < 0.5) else 1.0
    c, sn = np.cos(theta), np.sin(theta)
    a = s * np.array([[c, -sn], [sn, c]]) @ np.diag([flip, 1.0])
    # Keep the rotated crop's footprint inside the image: reflected borders would show
    # nuclei that carry no annotation.
    reach = s * (aug.crop / 2.0 * np.sqrt(2.0) + 3.0 * aug.elastic_px)
    lo_x, hi_x = (reach, w - reach) if w > 2 * reach else (w / 2.0, w / 2.0)
    lo_y, hi_y = (reach, h - reach) if h > 2 * reach else (h / 2.0, h / 2.0)
    return a, np.array([rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)])


def _elastic_field(rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """Smooth elastic displacement ``(2, crop, crop)`` in model pixels, from a coarse
    random grid (zeros without elastic deformation)."""
    size, g = aug.crop, aug.elastic_grid
    if aug.elastic_px <= 0:
        return np.zeros((2, size, size))
    coarse = rng.normal(0.0, aug.elastic_px, size=(2, g, g))
    return np.stack([ndi.zoom(coarse[k], size / g, order=3, mode="nearest")[:size, :size] for k in range(2)])


def _colour_jitter(crop: np.ndarray, rng: np.random.Generator, j: float) -> np.ndarray:
    """Per-channel gain, contrast and brightness jitter of a float crop, to uint8."""
    if j > 0:
        gain = 1.0 + rng.uniform(-j, j, size=3)
        contrast = 1.0 + rng.uniform(-j, j)
        mean = crop.mean()
        crop = (crop - mean) * contrast + mean
        crop = crop * gain + 255.0 * rng.uniform(-j, j) / 2
    return np.clip(crop + 0.5, 0, 255).astype(np.uint8)


def _moved_points(points: np.ndarray, inv: np.ndarray, centre_src: np.ndarray, centre_dst: np.ndarray, disp: np.ndarray,
                  aug: AugmentConfig) -> np.ndarray:
    """Source points in crop pixels: the affine inverted exactly, then the elastic part by
    fixed-point iteration (dst + disp(dst) = A⁻¹(p − centre_src) + centre_dst)."""
    size = aug.crop
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    base = (inv @ (pts - centre_src).T).T + centre_dst  # (N, 2)
    dst = base.copy()
    if aug.elastic_px > 0 and len(dst):
        for _ in range(4):
            coords = [np.clip(dst[:, 1], 0, size - 1), np.clip(dst[:, 0], 0, size - 1)]
            ux = ndi.map_coordinates(disp[0], coords, order=1, mode="nearest")
            uy = ndi.map_coordinates(disp[1], coords, order=1, mode="nearest")
            dst = base - np.stack([ux, uy], axis=1)
    return dst


def channel_stats(images: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0–255 units) over a list of ``(H, W, 3)`` uint8 images."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for im in images:
        px = im.reshape(-1, 3).astype(np.float64)
        total += px.sum(0)
        total_sq += (px**2).sum(0)
        count += len(px)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-6))
    return mean.tolist(), std.tolist()
