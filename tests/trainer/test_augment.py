"""Photometric augmentation: the stain space equals scikit-image's, perturbations keep
the image's frame, and strength 0 is the identity."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
skimage_color = pytest.importorskip("skimage.color")

from micronet.trainer.augment import TRANSFORMS, PhotometricConfig, hed_to_rgb, photometric, rgb_to_hed  # noqa: E402
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


def test_tint_moves_colour_only_and_p_of_targets_one_transform():
    rng = np.random.default_rng(4)
    crop = rng.integers(80, 170, (48, 48, 3)).astype(np.uint8)
    off = {name: 0.0 for name in TRANSFORMS}
    tint_only = PhotometricConfig.from_options(1.0, 0.0, {"tint": 0.2, "p_of": {**off, "tint": 1.0}})
    out = photometric(crop, np.random.default_rng(5), tint_only).astype(np.float64)
    ratio = out.mean(axis=(0, 1)) / crop.mean(axis=(0, 1))
    assert np.ptp(ratio) > 0.02  # the channels moved apart ...
    assert abs(np.log(ratio).mean()) < 0.01  # ... about a geometric mean of 1: colour, not brightness
    # Each pixel keeps its own channel ratios up to the three gains (no spatial change).
    gains = out / np.maximum(crop, 1)
    assert np.all(np.ptp(gains.reshape(-1, 3), axis=0) < 0.02)
    # Only tint ran: with tint's probability 0 as well, nothing changes.
    nothing = PhotometricConfig.from_options(1.0, 1.0, {"tint": 0.2, "p_of": off})
    assert np.array_equal(photometric(crop, rng, nothing), crop)


def test_without_tint_and_p_of_the_draws_are_those_of_before():
    # A run configured before tint and p_of existed perturbs bit for bit as it did: tint 0
    # draws nothing, and p_of entries equal to p change nothing.
    crop = np.random.default_rng(6).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    plain = photometric(crop, np.random.default_rng(7), PhotometricConfig(p=0.5))
    same = PhotometricConfig.from_options(1.0, 0.5, {"p_of": {name: 0.5 for name in TRANSFORMS}})
    assert np.array_equal(photometric(crop, np.random.default_rng(7), same), plain)


@pytest.mark.parametrize("options", [{"p_of": {"sharpen": 0.5}}, {"p_of": {"blur": 1.5}}, {"sharpness": 1.0}, {"p": 0.2}])
def test_bad_photometric_options_are_named(options):
    with pytest.raises(ValueError, match="sharpen|probability|sharpness|unknown"):
        PhotometricConfig.from_options(1.0, 0.15, options)


def test_distill_config_rejects_bad_photometric_options():
    from micronet.runtime.errors import InputError
    from micronet.trainer.distill import DistillConfig, _photometric

    with pytest.raises(InputError, match="photometric_options.*blurr"):  # when the config is read
        DistillConfig.from_dict({"teacher": "t.safetensors", "photometric_options": {"p_of": {"blurr": 0.3}}})
    good = DistillConfig.from_dict({"teacher": "t.safetensors", "photometric_options": {"hue": 0.12, "p_of": {"blur": 0.3}}})
    photo = _photometric(good)
    assert photo.hue == 0.12 and photo.prob("blur") == 0.3 and photo.prob("hue") == good.photometric_p
