"""Eq. 1 targets and Eq. 2 loss against direct per-pixel / numpy references."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from micronet.trainer.loss import two_source_loss, weighted_mse  # noqa: E402
from micronet.trainer.targets import TargetConfig, proximity_map  # noqa: E402


def brute_force_eq1(points: np.ndarray, shape: tuple[int, int], alpha: float, d: float, scale: float) -> np.ndarray:
    out = np.zeros(shape, np.float64)
    for r in range(shape[0]):
        for c in range(shape[1]):
            dist = np.min(np.hypot(points[:, 0] - c, points[:, 1] - r)) if len(points) else np.inf
            if dist < d:
                out[r, c] = (np.exp(alpha * (1 - dist / d)) - 1) / (np.exp(alpha) - 1) * scale
    return out


def test_proximity_map_equals_eq1_per_pixel():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-5, 45, (12, 2))
    cfg = TargetConfig(alpha=3.0, radius=15.0, scale=5.0)
    got = proximity_map(pts, (40, 37), cfg)
    np.testing.assert_allclose(got, brute_force_eq1(pts, (40, 37), 3.0, 15.0, 5.0), rtol=1e-5, atol=1e-6)


def test_proximity_map_peaks_at_centres_and_vanishes_beyond_d():
    got = proximity_map(np.array([[10.0, 20.0]]), (41, 41))
    assert got[20, 10] == pytest.approx(5.0)
    assert got.argmax() == 20 * 41 + 10
    assert got[20, 10 + 15] == 0 and got[20, 10 + 14] > 0
    assert proximity_map(np.zeros((0, 2)), (5, 6)).sum() == 0


def test_weighted_mse_equals_eq2():
    rng = np.random.default_rng(1)
    y = rng.uniform(0, 5, (3, 1, 8, 9)).astype(np.float32)
    y[y < 3] = 0
    p = rng.normal(0, 1, y.shape).astype(np.float32)
    lam = 5.0
    expected = np.mean([np.mean((y[i] + lam * y[i].mean()) * (p[i] - y[i]) ** 2) for i in range(3)])
    got = weighted_mse(torch.from_numpy(p), torch.from_numpy(y), lam)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_two_source_loss_weights_target_domain_by_gamma():
    rng = np.random.default_rng(2)
    y = torch.from_numpy(rng.uniform(0, 5, (4, 1, 6, 6)).astype(np.float32))
    p = torch.from_numpy(rng.normal(0, 1, (4, 1, 6, 6)).astype(np.float32))
    domain = torch.tensor([True, True, False, False])
    gamma = 3.0
    expected = gamma * weighted_mse(p[:2], y[:2]) + weighted_mse(p[2:], y[2:])
    assert float(two_source_loss(p, y, domain, gamma)) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        weighted_mse(p, y[:, :, :5])
