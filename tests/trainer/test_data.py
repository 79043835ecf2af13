"""Augmented crops move image and points together."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from micronet.trainer.data import AugmentConfig, load_point_folder, sample_crop  # noqa: E402


def dot_image(points: np.ndarray, h: int, w: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for x, y in points:
        img[(xx - x) ** 2 + (yy - y) ** 2 <= 9] = 255
    return img


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_points_follow_the_image_under_rotation_mirror_elastic_and_scale(scale):
    rng = np.random.default_rng(0)
    pts = rng.uniform(60, 540, (60, 2))
    img = dot_image(pts, 600, 600)
    aug = AugmentConfig(crop=128, elastic_px=3.0, color_jitter=0.0)
    for _ in range(10):
        crop, moved = sample_crop(img, pts, rng, aug, scale=scale, margin=0)
        for x, y in moved:
            xi, yi = int(round(x)), int(round(y))
            if 3 <= xi < 125 and 3 <= yi < 125:
                # The dot's centre lands where the point went (within a pixel or so).
                patch = crop[yi - 1 : yi + 2, xi - 1 : xi + 2, 0]
                assert patch.max() > 100, (x, y)


def test_load_real_folder_and_split(shared_data):
    train = load_point_folder(shared_data / "crchisto", "train")
    val = load_point_folder(shared_data / "crchisto", "val")
    assert (len(train), len(val)) == (70, 10)
    assert train.mpp == pytest.approx(0.55)
    assert train.images[0].shape == (500, 500, 3) and train.images[0].dtype == np.uint8
    with pytest.raises(ValueError, match="valid: test, train, val"):
        load_point_folder(shared_data / "crchisto", "holdout")
    mon = load_point_folder(shared_data / "monuseg")
    assert mon.mpp == pytest.approx(0.25) and "organ" in next(iter(mon.meta.values()))
