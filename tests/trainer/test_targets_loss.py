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


def test_disk_map_equals_a_per_pixel_distance_test():
    from micronet.trainer.targets import disk_map

    rng = np.random.default_rng(1)
    pts = rng.uniform(-3, 33, (9, 2))
    got = disk_map(pts, (30, 27), 6.0)
    rows, cols = np.mgrid[0:30, 0:27]
    dist = np.min(np.hypot(cols[..., None] - pts[:, 0], rows[..., None] - pts[:, 1]), axis=-1)
    np.testing.assert_array_equal(got, (dist < 6.0).astype(np.float32))


def test_density_map_integrates_to_scale_per_nucleus_and_peaks_where_the_config_says():
    from micronet.trainer.targets import density_map

    cfg = TargetConfig(kind="density", sigma=3.0, density_scale=100.0)
    pts = np.array([[20.0, 20.0], [60.0, 45.0]])
    got = density_map(pts, (80, 90), cfg.sigma, cfg.density_scale)
    assert got.sum() == pytest.approx(200.0, rel=1e-3)  # two Gaussians, far from the border
    assert got[20, 20] == pytest.approx(cfg.peak(), rel=1e-6)  # an isolated nucleus's peak
    assert np.unravel_index(np.argmax(got), got.shape) in {(20, 20), (45, 60)}


def test_make_target_dispatches_on_kind_and_metadata_gives_the_sweep_scale():
    from micronet.trainer.targets import make_target

    pts = np.array([[10.0, 12.0]])
    for kind, peak in (("proximity", 5.0), ("disk", 1.0), ("density", 100.0 / (2 * np.pi * 9.0))):
        cfg = TargetConfig(kind=kind)
        m = make_target(pts, (30, 30), cfg)
        assert m.max() == pytest.approx(peak, rel=1e-5)
        assert cfg.as_metadata()["scale"] == pytest.approx(peak) and cfg.as_metadata()["kind"] == kind


def test_loss_for_each_kind_matches_its_definition():
    from micronet.trainer.loss import loss_for

    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 1, 8, 8, generator=g)
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.7).float()
    assert torch.allclose(loss_for("proximity", 5.0)(pred, target), weighted_mse(pred, target, 5.0))
    bce = -(target * torch.log(torch.sigmoid(pred)) + (1 - target) * torch.log(1 - torch.sigmoid(pred))).mean()
    assert torch.allclose(loss_for("disk")(pred, target), bce, atol=1e-6)
    assert torch.allclose(loss_for("density")(pred, target), ((pred - target) ** 2).mean())
    with pytest.raises(ValueError, match="unknown target kind"):
        loss_for("mask")
