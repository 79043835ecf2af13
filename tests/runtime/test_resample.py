"""One resampling convention (micronet.runtime.resample): images and points move
together, tiles equal the whole image, and training validation scores a checkpoint as
``micronet evaluate`` does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from micronet.runtime.resample import (
    BilinearAxis,
    from_resampled,
    resample,
    resampled_size,
    to_resampled,
)
from PIL import Image


def _dots(height: int, width: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    """Dark Gaussian dots on white at sub-pixel ``(x, y)`` centres, uint8 RGB."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    ink = np.zeros((height, width))
    for x, y in centres:
        ink = np.maximum(ink, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)))
    return np.repeat(np.round(255 * (1 - ink))[..., None], 3, axis=2).astype(np.uint8)


def _centroids(image: np.ndarray, near: np.ndarray, window: int) -> np.ndarray:
    """Darkness-weighted centroid of the window around each expected position."""
    dark = 255.0 - image[..., 0].astype(np.float64)
    out = []
    for x, y in near:
        x0, y0 = int(round(x)) - window, int(round(y)) - window
        patch = dark[y0 : y0 + 2 * window + 1, x0 : x0 + 2 * window + 1]
        yy, xx = np.mgrid[0 : patch.shape[0], 0 : patch.shape[1]]
        out.append([x0 + (patch * xx).sum() / patch.sum(), y0 + (patch * yy).sum() / patch.sum()])
    return np.array(out)


@pytest.mark.parametrize("ratio", [0.4545, 0.7, 1.3, 2.2])  # 0.25 → 0.55 µm/px is 0.4545
def test_resampled_image_keeps_its_dots_on_the_mapped_points(ratio):
    rng = np.random.default_rng(1)
    h, w = 301, 347
    sigma = 6.0
    # Well apart (a 70 px grid), at random sub-pixel positions.
    gx, gy = np.meshgrid(np.arange(50, w - 40, 70), np.arange(50, h - 40, 70))
    centres = np.stack([gx.ravel(), gy.ravel()], axis=1) + rng.uniform(-0.5, 0.5, (gx.size, 2))
    image = _dots(h, w, centres, sigma)
    out, mapped, scale = resample(image, centres, ratio)
    assert out.shape[:2] == resampled_size(h, w, ratio) and scale == (out.shape[1] / w, out.shape[0] / h)
    found = _centroids(out, mapped, window=int(np.ceil(3 * sigma * ratio)))
    # The dots in the resampled image sit on the mapped points (to the centroid's precision).
    np.testing.assert_allclose(found, mapped, atol=0.05)
    np.testing.assert_allclose(from_resampled(mapped, *scale), centres, atol=1e-9)  # and back


def test_the_convention_is_pixel_centres_not_corners():
    # 4 pixels → 8: the centre of input pixel 0 (x = 0) is 0.25 of the way into output
    # pixel 0 (x' = 0.5·2 − 0.5 = 0.5); corners map onto corners: −0.5 → −0.5, 3.5 → 7.5.
    np.testing.assert_allclose(to_resampled([[0.0, 0.0], [-0.5, -0.5], [3.5, 3.5]], 2.0, 2.0), [[0.5, 0.5], [-0.5, -0.5], [7.5, 7.5]])


def test_ratios_within_one_percent_change_nothing():
    image = np.zeros((50, 60, 3), np.uint8)
    pts = np.array([[1.5, 2.5]])
    out, mapped, scale = resample(image, pts, 1.009)
    assert out is image and scale is None
    np.testing.assert_array_equal(mapped, pts)


@pytest.mark.parametrize("size, out", [((300, 457), (271, 413)), ((257, 190), (600, 401)), ((500, 501), (227, 228))])
def test_tile_resampling_is_bit_exact_with_a_whole_image_resize(size: tuple[int, int], out: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    whole = np.asarray(Image.fromarray(image).resize(out[::-1], Image.Resampling.BILINEAR))
    # Outputs 40:150 of each axis computed from the input window they need.
    rows, cols = BilinearAxis(size[0], out[0], 40, 150), BilinearAxis(size[1], out[1], 40, 150)
    window = image[rows.start : rows.stop, cols.start : cols.stop]
    part = cols.apply(np.ascontiguousarray(window.transpose(1, 0, 2))).transpose(1, 0, 2)
    part = rows.apply(np.ascontiguousarray(part))
    np.testing.assert_array_equal(part, whole[40:150, 40:150])


@pytest.mark.slow
def test_training_validation_and_evaluate_agree_on_monuseg_at_025_mpp(shared_data, tmp_path):
    """The same checkpoint, the same data at another pixel size: the F1 the trainer's
    validation computes equals what `micronet evaluate` reports."""
    pytest.importorskip("torch")
    from micronet.runtime.evaluation.datasets import load_point_folder
    from micronet.trainer.checkpoint import load_checkpoint
    from micronet.trainer.validate import (
        choose_threshold,
        predict_map,
        validation_inputs,
    )

    from micronet.cli import main

    checkpoint = Path(__file__).resolve().parents[2] / "trainer" / "pretrained" / "micronet_crchisto.safetensors"
    if not checkpoint.exists():
        pytest.skip(f"no trained checkpoint at {checkpoint}")
    # The six held-out images of our split: the agreement is per image, so six show it.
    split = f"test@{Path(__file__).resolve().parents[2] / 'benchmarks' / 'paper' / 'monuseg_split.csv'}"
    data = load_point_folder(shared_data / "monuseg", split)
    assert len(data.images) == 6 and data.mpp == pytest.approx(0.25, abs=0.01)
    model, info = load_checkpoint(checkpoint)
    images, points, scales = validation_inputs(data, info.mpp)
    maps = [predict_map(model, im, info.mean, info.std) for im in images]
    sweep = choose_threshold(maps, points, 16.0, info.min_distance, float(info.target["scale"]), scales=scales)
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(checkpoint), "--data", str(shared_data / "monuseg"), "--split", split, "--radius", "16", "--json", str(report)]) == 0
    evaluated = json.loads(report.read_text())
    # The whole PR curve, threshold by threshold, not only its best point.
    np.testing.assert_allclose([row["threshold"] for row in evaluated["curve"]], sweep.thresholds, rtol=1e-12)
    np.testing.assert_array_equal([row["f1"] for row in evaluated["curve"]], sweep.f1)
    assert evaluated["best_f1"] == sweep.best_f1 > 0.75


# --- bounded work ---------------------------------------------------------------------


def test_ratios_from_one_eighth_to_eight_pass_and_beyond_is_refused():
    from micronet.runtime.resample import MAX_RATIO, MIN_RATIO, check_ratio

    assert (MIN_RATIO, MAX_RATIO) == (1 / 8, 8.0)
    for ratio in (1 / 8, 0.4545, 1.0, 8.0):
        assert check_ratio(ratio) == ratio
    for ratio in (0.12, 8.1, float("inf"), float("nan"), 0.0, -1.0):
        with pytest.raises(ValueError, match="ratio"):
            check_ratio(ratio)


@pytest.mark.parametrize(
    ("mpp", "says"),
    [
        (20, "20 looks like a magnification: 20× is about 0.5 µm/px"),
        (100, "coarser than that, a nucleus spans one to three image pixels"),
        (1e-6, "1e-06 looks like metres: that is 1 µm/px"),
        (2.5e-4, "looks like millimetres: that is 0.25 µm/px"),
        (0.01, "finer than that, a nucleus would be hundreds of image pixels wide"),
    ],
)
def test_an_out_of_range_pixel_size_states_the_range_the_reason_and_the_likely_mistake(mpp, says):
    from micronet.runtime.resample import check_ratio

    with pytest.raises(ValueError) as info:
        check_ratio(mpp / 0.55, mpp, 0.55)
    message = str(info.value)
    assert message.startswith(f"mpp: {mpp:g} µm/px is ") and "expected 0.069 to 4.4 µm/px (1/8 to 8 times the model's)" in message
    assert says in message and "\n" not in message


def test_a_recorded_pixel_size_gets_no_typing_hint():
    from micronet.runtime.resample import check_ratio

    with pytest.raises(ValueError) as info:
        check_ratio(20 / 0.55, 20, 0.55, "a.tif (pixel size from its TIFF resolution tags)", typed=False)
    assert str(info.value).startswith("a.tif (pixel size from its TIFF resolution tags): 20 µm/px") and "magnification" not in str(info.value)


def test_check_work_refuses_large_resamplings_and_memory_before_allocating():
    from micronet.runtime.resample import check_work, working_memory

    sizes = [((500, 500), (4000, 4000))]
    check_work(sizes, 1024, 1, max_megapixels=16, max_bytes=1 << 40)  # 16 MP: at the limit
    with pytest.raises(ValueError, match=r"a\.png: 500×500 px .* 4000×4000 px \(16 MP\), more than max_megapixels=15; run it as a slide"):
        check_work(sizes, 1024, 1, max_megapixels=15, max_bytes=1 << 40, names=["a.png"])
    images, tiles = working_memory(sizes, 1024, 4)
    assert images == 3 * 16_000_000 + 4 * 250_000 + 4 * 2_000_000 + 7 * 16_000_000
    assert tiles == 4 * 1024 * 1024 * (1024 + 7)
    with pytest.raises(ValueError, match=r"more than the 0\.5 GiB limit \(max_memory_gb\); pass a smaller tile_size or batch_size"):
        check_work(sizes, 1024, 4, max_megapixels=256, max_bytes=1 << 29)
    # Images that are not resampled cost only their tiles, however large.
    assert working_memory([((50_000, 50_000), (50_000, 50_000))], 1024, 1) == (0, 1024 * 1024 * (1024 + 7))


def test_the_estimate_counts_a_deconvolution_and_bounds_its_allocations():
    """Detector(deblur="auto") may deconvolve any image it is given: its copy (an image not
    resampled had none) and the strips' transient are counted, and the transient bound
    holds against what the deconvolution allocates (tracemalloc sees NumPy's buffers)."""
    import tracemalloc

    from micronet.runtime import focus
    from micronet.runtime.resample import check_work, working_memory

    sizes = [((3000, 3000), (3000, 3000))]
    images, _ = working_memory(sizes, 1024, 1, deblur=True)
    assert images == 3 * 9_000_000 + focus.sharpened_bytes(3000, 3000) and images > working_memory(sizes, 1024, 1)[0]
    check_work(sizes, 1024, 1, max_megapixels=256, max_bytes=images + 1024 * 1024 * (1024 + 7), deblur=True)
    with pytest.raises(ValueError, match=r"max_memory_gb"):
        check_work(sizes, 1024, 1, max_megapixels=256, max_bytes=images + 1024 * 1024 * (1024 + 7) - 1, deblur=True)
    rng = np.random.default_rng(0)
    focus.deblur(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), 1.0)  # SciPy imported outside the trace
    for h, w in ((500, 500), (1500, 700), (300, 6000)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        tracemalloc.start()
        try:
            focus.deblur(image, focus.MAX_DEBLUR_PX)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak <= focus.deblur_bytes(h, w) <= 2 * peak, (h, w, peak)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from Linux's /proc")
def test_the_memory_estimate_covers_a_real_resize():
    """Peak resident memory (VmHWM) of a 3000² → 6000² resize in a fresh process stays
    under the estimate's image part (Pillow allocates in C, out of tracemalloc's sight;
    ru_maxrss would carry over the parent's peak across exec)."""
    import subprocess
    import sys

    from micronet.runtime.resample import working_memory

    code = (
        "import re, numpy as np\n"
        "from micronet.runtime.resample import resize_image\n"
        "peak = lambda: int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024\n"
        "img = np.random.default_rng(0).integers(0, 256, (3000, 3000, 3), dtype=np.uint8)\n"
        "before = peak()\n"
        "out = resize_image(img, 6000, 6000)\n"
        "print(peak() - before)\n"
    )
    grown = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    images, _ = working_memory([((3000, 3000), (6000, 6000))], 1024, 1)
    assert 0.5 * images < grown <= images
