"""Proximity-map targets (Eq. 1 of Xing et al. 2019).

    M(i, j) = (exp(α · (1 − D(i, j) / d)) − 1) / (exp(α) − 1) · scale   if D(i, j) < d
            = 0                                                        otherwise

with D the Euclidean distance from pixel (i, j) to the nearest annotated centre. The
paper's exponential is normalised to 1 at a centre and then scaled by ``scale`` (5), so
targets lie in [0, scale] and the network's head is linear (see docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["TARGET_KINDS", "TargetConfig", "density_map", "disk_map", "make_target", "proximity_map"]

TARGET_KINDS = ("proximity", "disk", "density")


@dataclass(frozen=True)
class TargetConfig:
    """What a network regresses, in model pixels.

    kind: ``"proximity"`` (Eq. 1: MicroNet, FRCN), ``"disk"`` (a nucleus disk of radius
        ``disk_radius`` against background: the pixel classifiers FCN and U-Net, as the
        seed paper trains them) or ``"density"`` (a sum of Gaussians of σ ``sigma`` times
        ``density_scale``: FCRN-A/B, Xie, Noble and Zisserman 2016, who scale the density
        by 100 so that the regression is not dominated by the zero background).
    alpha, radius, scale: Eq. 1's α, d and peak value.
    """

    alpha: float = 3.0
    radius: float = 15.0
    scale: float = 5.0
    kind: str = "proximity"
    disk_radius: float = 6.0
    sigma: float = 3.0
    density_scale: float = 100.0

    def peak(self) -> float:
        """The height of an isolated nucleus's peak: what thresholds are swept against."""
        if self.kind == "disk":
            return 1.0
        if self.kind == "density":
            return self.density_scale / (2.0 * np.pi * self.sigma**2)
        return self.scale

    def as_metadata(self) -> dict[str, float | str]:
        """The ``ModelInfo.target`` dict: ``scale`` is always the peak height (evaluation
        sweeps ξ against it); the rest says how the map was made."""
        if self.kind == "disk":
            return {"kind": "disk", "radius": self.disk_radius, "scale": self.peak()}
        if self.kind == "density":
            return {"kind": "density", "sigma": self.sigma, "density_scale": self.density_scale, "scale": self.peak()}
        return {"kind": "proximity", "alpha": self.alpha, "radius": self.radius, "scale": self.scale}


def make_target(points_xy: np.ndarray, shape: tuple[int, int], config: TargetConfig = TargetConfig()) -> np.ndarray:
    """The ``(H, W)`` float32 training target of ``config.kind`` for centres ``points_xy``."""
    if config.kind == "disk":
        return disk_map(points_xy, shape, config.disk_radius)
    if config.kind == "density":
        return density_map(points_xy, shape, config.sigma, config.density_scale)
    return proximity_map(points_xy, shape, config)


def disk_map(points_xy: np.ndarray, shape: tuple[int, int], radius: float) -> np.ndarray:
    """``(H, W)`` float32: 1 within ``radius`` of a centre, 0 elsewhere (the pixel
    classifiers' label)."""
    return (_nearest_centre_distance(points_xy, shape, radius) < radius).astype(np.float32)


def density_map(points_xy: np.ndarray, shape: tuple[int, int], sigma: float, scale: float = 100.0) -> np.ndarray:
    """``(H, W)`` float32: ``scale`` times a sum of normalised 2-D Gaussians of σ
    ``sigma`` at the centres (each integrates to ``scale`` away from the border), cut at
    4σ."""
    h, w = int(shape[0]), int(shape[1])
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    out = np.zeros((h, w), dtype=np.float64)
    if len(pts) == 0 or h == 0 or w == 0:
        return out.astype(np.float32)
    reach = int(np.ceil(4 * sigma))
    norm = scale / (2.0 * np.pi * sigma**2)
    for x, y in pts:
        c0, c1 = max(0, int(np.floor(x)) - reach), min(w, int(np.floor(x)) + reach + 2)
        r0, r1 = max(0, int(np.floor(y)) - reach), min(h, int(np.floor(y)) + reach + 2)
        if c0 >= c1 or r0 >= r1:
            continue
        gx = np.exp(-((np.arange(c0, c1) - x) ** 2) / (2 * sigma**2))
        gy = np.exp(-((np.arange(r0, r1) - y) ** 2) / (2 * sigma**2))
        out[r0:r1, c0:c1] += norm * gy[:, None] * gx[None, :]
    return out.astype(np.float32)


def proximity_map(points_xy: np.ndarray, shape: tuple[int, int], config: TargetConfig = TargetConfig()) -> np.ndarray:
    """The ``(H, W)`` float32 proximity map of Eq. 1 for centres ``points_xy``.

    Args:
        points_xy: ``(N, 2)`` float ``(x, y)`` = (column, row) centres in pixels; points
            outside the map still shape it near the border.
        shape: ``(H, W)``.

    Vectorised: one KD-tree query for all pixels (no per-pixel Python loop).
    """
    dist = _nearest_centre_distance(points_xy, shape, config.radius)
    out = np.zeros(dist.shape, dtype=np.float32)
    near = dist < config.radius
    values = np.expm1(config.alpha * (1.0 - dist[near] / config.radius)) / np.expm1(config.alpha)
    out[near] = (config.scale * values).astype(np.float32)
    return out


def _nearest_centre_distance(points_xy: np.ndarray, shape: tuple[int, int], upper: float) -> np.ndarray:
    """``(H, W)`` float64: each pixel's distance to the nearest centre, ``inf`` beyond
    ``upper`` (and everywhere without centres). One KD-tree query for all pixels."""
    h, w = int(shape[0]), int(shape[1])
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0 or h == 0 or w == 0:
        return np.full((h, w), np.inf)
    rows, cols = np.mgrid[0:h, 0:w]
    grid = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float64)  # (H*W, 2) x, y
    dist, _ = cKDTree(pts).query(grid, k=1, distance_upper_bound=upper)
    return dist.reshape(h, w)
