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

__all__ = ["TargetConfig", "proximity_map"]


@dataclass(frozen=True)
class TargetConfig:
    """Eq. 1 parameters: α (decay), d (radius in model pixels), scale (peak value)."""

    alpha: float = 3.0
    radius: float = 15.0
    scale: float = 5.0


def proximity_map(points_xy: np.ndarray, shape: tuple[int, int], config: TargetConfig = TargetConfig()) -> np.ndarray:
    """The ``(H, W)`` float32 proximity map of Eq. 1 for centres ``points_xy``.

    Args:
        points_xy: ``(N, 2)`` float ``(x, y)`` = (column, row) centres in pixels; points
            outside the map still shape it near the border.
        shape: ``(H, W)``.

    Vectorised: one KD-tree query for all pixels (no per-pixel Python loop).
    """
    h, w = int(shape[0]), int(shape[1])
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    out = np.zeros((h, w), dtype=np.float32)
    if len(pts) == 0 or h == 0 or w == 0:
        return out
    rows, cols = np.mgrid[0:h, 0:w]
    grid = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float64)  # (H*W, 2) x, y
    dist, _ = cKDTree(pts).query(grid, k=1, distance_upper_bound=config.radius)
    near = np.isfinite(dist) & (dist < config.radius)
    values = np.expm1(config.alpha * (1.0 - dist[near] / config.radius)) / np.expm1(config.alpha)
    out.reshape(-1)[near] = (config.scale * values).astype(np.float32)
    return out
