"""Photometric augmentation: the stain space equals scikit-image's, perturbations keep
the image's frame, and strength 0 is the identity."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
skimage_color = pytest.importorskip("skimage.color")

from micronet.trainer.augment import PhotometricConfig, hed_to_rgb, photometric, rgb_to_hed  # noqa: E402
from micronet.trainer.data import AugmentConfig, sample_crop_with  # noqa: E402


def test_hed_matches_scikit_image_and_inverts():
    rng = np.random.default_rng(0)
    rgb = rng.integers(1, 256, (16, 16, 3)).astype(np.uint8)
    hed = rgb_to_hed(rgb)
    # skimage divides the densities by -log(1e-6) and clips them at 0; ours stay signed
    # so that the round trip is exact.
    ref = skimage_color.rgb2hed(rgb) * -np.log(1e-6)
    np.testing.assert_allclose(np.maximum(hed, 0), ref, atol=2e-3)
    np.testing.assert_allclose(hed_to_rgb(hed), rgb.astype(np.float32), rtol=1e-4, atol=1e-2)


def test_strength_zero_is_identity_and_output_stays_uint8():
    rng = np.random.default_rng(1)
    crop = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
    assert photometric(crop, rng, PhotometricConfig(strength=0.0)) is crop
    out = photometric(crop, rng, PhotometricConfig(p=1.0))
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert not np.array_equal(out, crop)


def test_darkening_darkens_and_blur_smooths():
    rng = np.random.default_rng(2)
    crop = rng.integers(60, 200, (64, 64, 3)).astype(np.uint8)
    only_dark = PhotometricConfig(p=0.0)  # everything off ...
    assert np.array_equal(photometric(crop, rng, only_dark), crop)
    darker = [photometric(crop, np.random.default_rng(s), PhotometricConfig(p=1.0, hed_scale=0, hed_shift=0, contrast=0, gamma=0,
                                                                          saturation=0, hue=0, blur_sigma=0.0, noise=0, jpeg_quality=95))
              for s in range(20)]
    means = [d.mean() for d in darker]
    assert min(means) < 0.8 * crop.mean()  # brightness reaches 0.4x


def test_maps_and_point_sets_move_with_the_image():
    rng = np.random.default_rng(3)
    h = w = 300
    yy, xx = np.mgrid[0:h, 0:w]
    pts = rng.uniform(50, 250, (20, 2))
    image = np.zeros((h, w, 3), np.uint8)
    field = np.zeros((h, w), np.float32)
    for x, y in pts:
        disk = (xx - x) ** 2 + (yy - y) ** 2 <= 9
        image[disk] = 255
        field[disk] = 1.0
    crop = sample_crop_with(image, [pts, pts[:5]], rng, AugmentConfig(crop=96, color_jitter=0.0), maps=(field,))
    # The warped map is the warped image's first channel, rescaled.
    np.testing.assert_allclose(crop.maps[0] * 255, crop.image[..., 0], atol=1.0)
    # The second set is a subset of the first, by index.
    assert set(crop.kept[1]) <= set(crop.kept[0])
    np.testing.assert_allclose(crop.points[1], crop.points[0][np.isin(crop.kept[0], crop.kept[1])])
