"""Stain normalisation and the out-of-distribution measure (``micronet.runtime.stain``),
in the Detector and on slides."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from micronet.runtime import stain, stain_methods
from micronet.runtime.detections import Detections
from micronet.runtime.model_info import ModelInfo

MODEL_MPP = 0.55

# Unit optical-density vectors of hematoxylin and eosin (Ruifrok & Johnston 2001).
H = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
E = np.array([0.07, 0.99, 0.11]) / np.linalg.norm([0.07, 0.99, 0.11])


def stained(seed: int = 0, size: int = 256, he: np.ndarray | None = None) -> np.ndarray:
    """A synthetic ``(size, size, 3)`` H&E image: glass, pure H, pure E and mixed pixels
    with gamma-distributed concentrations, composed by Beer–Lambert with I0 = 255."""
    rng = np.random.default_rng(seed)
    present = rng.integers(0, 2, (size * size, 2))
    concentrations = rng.gamma(2.0, 0.3, (size * size, 2)) * present
    od = concentrations @ (np.stack([H, E]) if he is None else he)
    return np.clip(np.rint(255 * np.exp(-od)), 0, 255).astype(np.uint8).reshape(size, size, 3)


def angle_degrees(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


def darken(image: np.ndarray) -> np.ndarray:
    return (image * 0.5).astype(np.uint8)


# --- statistics and normalisation --------------------------------------------------------------


@pytest.mark.parametrize("method", stain.METHODS)
def test_normalised_tiles_equal_the_normalised_image(method: str) -> None:
    image = stained(seed=1, size=192)
    stats, target = stain.measure(image), stain.measure(stained(seed=2, size=128))
    whole = stain.apply(image, stats, target, method)
    for y0, x0, h, w in [(0, 0, 64, 96), (50, 70, 100, 90), (128, 100, 64, 92)]:
        tile = np.ascontiguousarray(image[y0 : y0 + h, x0 : x0 + w])
        np.testing.assert_array_equal(stain.apply(tile, stats, target, method), whole[y0 : y0 + h, x0 : x0 + w])
    batch = np.stack([image[:96, :96], image[96:, 96:]])  # (2, 96, 96, 3), normalised in place
    stain.apply(batch, stats, target, method, out=batch)
    np.testing.assert_array_equal(batch[1], whole[96:, 96:])


def test_reinhard_maps_the_images_statistics_onto_the_targets() -> None:
    image = stained(seed=3)
    stats = stain.measure(image)
    # A known answer inside the gamut: l darker by 0.1 (log10 units) and its spread × 0.9,
    # α and β shifted slightly.
    target = stain.StainStats(
        rgb_mean=stats.rgb_mean,
        lab_mean=(stats.lab_mean[0] - 0.1, stats.lab_mean[1] + 0.01, stats.lab_mean[2] - 0.005),
        lab_std=(stats.lab_std[0] * 0.9, stats.lab_std[1], stats.lab_std[2] * 1.1),
        lab_bright=stats.lab_bright,
    )
    got = stain.measure(stain.apply(image, stats, target, "reinhard"))
    np.testing.assert_allclose(got.lab_mean, target.lab_mean, atol=0.006)
    np.testing.assert_allclose(got.lab_std, target.lab_std, rtol=0.05)
    # Onto its own statistics: the image itself, up to rounding.
    same = stain.apply(image, stats, stats, "reinhard")
    assert np.abs(same.astype(int) - image).max() <= 2


def test_macenko_recovers_known_stain_vectors() -> None:
    found = stain.measure(stained(seed=4))
    assert found.stains is not None
    assert angle_degrees(np.array(found.stains[0]), H) < 3.0
    assert angle_degrees(np.array(found.stains[1]), E) < 5.0
    # Other stains (a bluer H, a redder E) are found as such, H first.
    he = np.stack([np.array([0.55, 0.75, 0.37]), np.array([0.15, 0.95, 0.27])])
    he /= np.linalg.norm(he, axis=1, keepdims=True)
    other = stain.measure(stained(seed=5, he=he))
    assert angle_degrees(np.array(other.stains[0]), he[0]) < 3.0
    assert angle_degrees(np.array(other.stains[1]), he[1]) < 5.0


def test_macenko_maps_one_stain_onto_another_and_undoes_darkening() -> None:
    he = np.stack([np.array([0.55, 0.75, 0.37]), np.array([0.15, 0.95, 0.27])])
    he /= np.linalg.norm(he, axis=1, keepdims=True)
    source, reference = stained(seed=6, he=he), stained(seed=6)  # same concentrations, other stains
    mapped = stain.apply(source, stain.measure(source), stain.measure(reference), "macenko")
    assert np.abs(mapped.astype(int) - reference).mean() < 4 < np.abs(source.astype(int) - reference).mean()
    # I0 is measured, not fixed at 255: halving the light is undone, not taken for stain.
    dark = darken(reference)
    restored = stain.apply(dark, stain.measure(dark), stain.measure(reference), "macenko")
    assert np.abs(restored.astype(int) - reference).mean() < 4


def test_white_balance_undoes_exposure_and_the_lights_colour_and_nothing_else() -> None:
    reference = stained(seed=9)  # glass in it: its white point is the lamp's
    stats = stain.measure(reference)
    # A darker, warmer camera: a gain per channel (exposure × white balance).
    camera = np.clip(np.rint(reference * np.array([0.7, 0.65, 0.57])), 0, 255).astype(np.uint8)
    gains = stain_methods.white_map(stain.measure(camera), stats)
    np.testing.assert_allclose(gains, 1 / np.array([0.7, 0.65, 0.57]), rtol=0.01)
    restored = stain.apply(camera, stain.measure(camera), stats, "white")
    assert np.abs(restored.astype(int) - reference).max() <= 2  # the rounding of the two gains
    assert np.abs(camera.astype(int) - reference).mean() > 30
    # Onto its own statistics: the image itself, exactly; the stains' contrast is kept
    # (Reinhard's match of the spread would change it).
    np.testing.assert_array_equal(stain.apply(reference, stats, stats, "white"), reference)
    # A black image is brightened by at most WHITE_MAX_GAIN, not by 255.
    black = np.full((16, 16, 3), 1, np.uint8)
    assert stain_methods.white_map(stain.measure(black), stats).max() == stain_methods.WHITE_MAX_GAIN


def test_stats_from_a_tissue_mask_differ_from_the_whole_images_when_there_is_glass() -> None:
    from micronet.runtime.slide import tissue_mask

    tissue = stained(seed=7)
    image = np.concatenate([tissue, np.full_like(tissue, 240)], axis=1)  # right half glass
    mask = tissue_mask(image)
    assert 0.4 < mask.mean() < 0.6
    whole, masked = stain.measure(image), stain.measure(image, mask)
    assert whole.lab_mean[0] > masked.lab_mean[0] + 0.05  # glass brightens the whole image
    np.testing.assert_allclose(masked.lab_mean, stain.measure(tissue).lab_mean, atol=0.01)


def test_stats_round_trip_and_bad_input_raises() -> None:
    stats = stain.measure(stained(seed=8, size=64))
    again = stain.StainStats.from_dict(stats.to_dict())
    np.testing.assert_allclose(again.lab_std, stats.lab_std, atol=1e-6)  # to_dict keeps 6 decimals
    assert stain.target_stats(None) == stain.StainStats.from_dict(stain.DEFAULT_TARGET)
    with pytest.raises(ValueError, match="lab_std"):
        stain.StainStats.from_dict({"rgb_mean": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\) uint8"):
        stain.measure(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="mask"):
        stain.measure(np.zeros((8, 8, 3), np.uint8), np.ones((8, 9), bool))
    with pytest.raises(ValueError, match="'reinhard', 'macenko'"):
        stain.apply(np.zeros((8, 8, 3), np.uint8), stats, None, "vahadane")


def test_model_info_colour_is_optional_and_backward_compatible() -> None:
    info = ModelInfo(architecture={"name": "micronet"}, mean=[0, 0, 0], std=[1, 1, 1], mpp=0.5, threshold=0.5)
    assert "colour" not in info.to_json()  # reads exactly as before the field existed
    assert ModelInfo.from_json(info.to_json()).colour is None
    coloured = ModelInfo(**{**info.__dict__, "colour": stain.DEFAULT_TARGET})
    assert ModelInfo.from_json(coloured.to_json()).colour == stain.DEFAULT_TARGET
    with pytest.raises(ValueError, match="colour"):
        ModelInfo.from_json(coloured.to_json().replace('"lab_std"', '"lab_spread"'))


def test_detections_carry_the_colour_distance() -> None:
    found = Detections(np.zeros((1, 2)), np.ones(1), (10, 10), 0.5, 0.25)
    assert found.offset(1, 1).colour_distance == 0.25
    assert Detections.concat([found, found]).colour_distance == 0.25
    assert Detections.concat([found, Detections(np.zeros((0, 2)), np.zeros(0), mpp=0.5)]).colour_distance is None
    with pytest.raises(ValueError, match="colour_distance"):
        Detections(np.zeros((0, 2)), np.zeros(0), colour_distance=-1.0)


# --- the warning on real images -----------------------------------------------------------------


@pytest.fixture(scope="module")
def real_images(shared_data: Path) -> list[np.ndarray]:
    """CRCHisto img1 (20×) and one MoNuSeg image (40×)."""
    from micronet.runtime.images import read_image

    monuseg = sorted((shared_data / "monuseg" / "images").glob("*.png"))[0]
    return [read_image(shared_data / "crchisto" / "images" / "img1.png"), read_image(monuseg)]


def test_colour_distance_is_quiet_on_clean_images_and_fires_on_darkened_ones(real_images: list[np.ndarray]) -> None:
    for image in real_images:
        clean, dark = stain.measure(image), stain.measure(darken(image))
        assert stain.colour_distance(clean) < stain.OOD_THRESHOLD < stain.colour_distance(dark)
        message = stain.colour_message(dark)
        assert message.startswith("this image is much darker than the training data (mean RGB (")
        assert message.endswith("detections may be missed; try normalize='white'")


@pytest.fixture(scope="module")
def fast_cpu():
    from micronet.runtime.detector import Detector

    return lambda **kw: Detector("fast-cpu", device="cpu", threads=2, **kw)


def test_detector_warns_once_on_a_darkened_image_and_normalising_recovers_it(real_images, fast_cpu, caplog) -> None:
    image = real_images[0]
    plain = fast_cpu(normalize=None)
    with caplog.at_level(logging.WARNING, logger="micronet.runtime.detector"):
        clean = plain.detect(image, mpp=MODEL_MPP)
        assert not caplog.records and clean.colour_distance < stain.OOD_THRESHOLD
        dark = plain.detect(darken(image), mpp=MODEL_MPP)
        plain.detect(darken(image), mpp=MODEL_MPP)
    assert dark.colour_distance > stain.OOD_THRESHOLD
    assert len(caplog.records) == 1 and "much darker than the training data" in caplog.records[0].getMessage()
    assert len(dark) < len(clean) // 4  # the model misses most nuclei
    normalised = {method: fast_cpu(normalize=method).detect(darken(image), mpp=MODEL_MPP) for method in stain.METHODS}
    for method, again in normalised.items():
        assert len(again) > len(clean) * 0.8 and again.colour_distance == dark.colour_distance, method
    # The white balance undoes a darkening exactly, up to rounding: the clean image's nuclei.
    recovered = normalised["white"]
    assert abs(len(recovered) - len(clean)) <= len(clean) * 0.03
    # "auto", the default, leaves the clean image alone and white-balances the darkened
    # one, and says so once.
    auto = fast_cpu()
    assert auto.normalize == "auto"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="micronet.runtime"):
        np.testing.assert_array_equal(auto.detect(image, mpp=MODEL_MPP).xy, clean.xy)
        assert not caplog.records
        np.testing.assert_array_equal(auto.detect(darken(image), mpp=MODEL_MPP).xy, recovered.xy)
        auto.detect(darken(image), mpp=MODEL_MPP)
    assert stain.AUTO_METHOD == "white"
    assert len(caplog.records) == 1 and "normalised with 'white'" in caplog.records[0].getMessage()


def test_detector_refuses_an_unknown_normalisation(blur_onnx: Path) -> None:
    from micronet.runtime.detector import Detector

    with pytest.raises(ValueError, match="None, 'reinhard', 'macenko', 'white', 'auto'"):
        Detector(blur_onnx, device="cpu", normalize="staintools")


def test_outputs_record_the_method_auto_applies(blur_onnx: Path) -> None:
    """``auto`` used Reinhard until the twelfth round: outputs record which method it
    stands for, so a run under the other never resumes or keeps them."""
    from micronet.runtime.detector import Detector
    from micronet.runtime.runs.records import detector_settings

    assert detector_settings(Detector(blur_onnx, device="cpu", tile_margin=24))["normalize"] == "auto:white"
    assert detector_settings(Detector(blur_onnx, device="cpu", tile_margin=24, normalize="reinhard"))["normalize"] == "reinhard"
    assert "normalize" not in detector_settings(Detector(blur_onnx, device="cpu", tile_margin=24, normalize=None))


# --- tiles and slides ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", stain.METHODS)
def test_normalised_detection_in_tiles_equals_the_whole_image(blur_onnx: Path, make_nuclei, method: str) -> None:
    from micronet.runtime.detector import Detector

    image, _ = make_nuclei(300, 260, 40, seed=3)
    whole = Detector(blur_onnx, device="cpu", threads=1, tile_size=4096, tile_margin=8, normalize=method).detect(image)
    tiled = Detector(blur_onnx, device="cpu", threads=1, tile_size=96, tile_margin=24, normalize=method).detect(image)
    assert len(whole) > 10
    np.testing.assert_array_equal(tiled.xy, whole.xy)
    np.testing.assert_array_equal(tiled.scores, whole.scores)


def test_slide_tiles_share_the_statistics_of_the_slides_tissue(blur_onnx: Path, make_nuclei, tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    from micronet.runtime.detector import Detector
    from micronet.runtime.slide import open_slide, plan_slide
    from micronet.runtime.slide.colour import slide_colour_stats

    tissue, _ = make_nuclei(384, 512, 120, seed=4)
    image = np.concatenate([tissue, np.full((384, 256, 3), 240, np.uint8)], axis=1)  # a third glass
    path = tmp_path / "slide.tif"
    resolution = {"resolution": (1e4 / MODEL_MPP, 1e4 / MODEL_MPP), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb", metadata=None, **resolution)
    # deblur=None: the synthetic blobs are smooth, out of focus by the edge measure, and a
    # slide's tiles would each be deconvolved at their own blur.
    det = Detector(blur_onnx, device="cpu", threads=1, tile_size=128, tile_margin=24, normalize="reinhard", deblur=None)
    with open_slide(path) as slide:
        stats = slide_colour_stats(slide, plan_slide(det, slide, tissue_only=False))
    whole = stain.measure(image)
    assert whole.lab_mean[0] > stats.lab_mean[0] + 0.02  # the glass is left out
    np.testing.assert_allclose(stats.lab_mean, stain.measure(tissue).lab_mean, atol=0.02)
    found = det.detect_slide(path, tissue_only=False, progress=False)
    want = det.detect(image, colour_stats=stats)  # the whole region with the slide's statistics
    np.testing.assert_array_equal(found.xy, want.xy)
    assert found.colour_distance == want.colour_distance == stain.colour_distance(stats)
