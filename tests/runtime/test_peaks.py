"""The peak finder against scikit-image's peak_local_max (the reference)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage as ndi

from gpu_support import require_cupy
from micronet.runtime.peaks import find_peaks, refine_subpixel

peak_local_max = pytest.importorskip("skimage.feature").peak_local_max


def reference(prob_map: np.ndarray, threshold: float, min_distance: int) -> np.ndarray:
    rc = peak_local_max(prob_map, min_distance=min_distance, threshold_abs=threshold, exclude_border=False)
    return rc[:, ::-1].astype(np.float32).reshape(-1, 2)  # (row, col) -> (x, y)


def realistic_map(rng: np.random.Generator, h: int, w: int, density: float = 1 / 400, sigma: float = 3.0) -> np.ndarray:
    """Gaussian blobs at random centres with random heights, like a proximity map."""
    m = np.zeros((h, w), np.float64)
    n = max(1, int(h * w * density))
    m[rng.integers(0, h, n), rng.integers(0, w, n)] = rng.uniform(0.3, 1.0, n)
    return (ndi.gaussian_filter(m, sigma) * 2 * np.pi * sigma**2 * 5).astype(np.float32)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prob_map=arrays(np.float32, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0])),
    threshold=st.sampled_from([-1.0, 0.0, 0.3, 0.75]),
    min_distance=st.integers(1, 5),
)
def test_matches_peak_local_max_on_plateaus_and_ties(prob_map, threshold, min_distance):
    # Few distinct values: plateaus and exact ties everywhere, the hard cases.
    xy, scores = find_peaks(prob_map, threshold, min_distance)
    np.testing.assert_array_equal(xy, reference(prob_map, threshold, min_distance))
    np.testing.assert_array_equal(scores, prob_map[xy[:, 1].astype(int), xy[:, 0].astype(int)])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), h=st.integers(8, 96), w=st.integers(8, 96), min_distance=st.integers(1, 6), threshold=st.floats(0.0, 3.0))
def test_matches_peak_local_max_on_realistic_maps(seed, h, w, min_distance, threshold):
    rng = np.random.default_rng(seed)
    m = realistic_map(rng, h, w, density=1 / 150)
    m = np.round(m, 2)  # rounding creates plateaus at the tops of blobs
    xy, _ = find_peaks(m, threshold, min_distance)
    np.testing.assert_array_equal(xy, reference(m, threshold, min_distance))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.uint8, np.int32])
def test_dtypes_agree_with_reference(dtype):
    rng = np.random.default_rng(1)
    m = (realistic_map(rng, 64, 80) * 40).astype(dtype)
    xy, scores = find_peaks(m, 10, 3)
    ref_map = m.astype(np.float32) if dtype == np.float16 else m  # scipy has no float16 filters
    np.testing.assert_array_equal(xy, reference(ref_map, 10, 3))
    assert len(xy) > 5


def test_large_map_equals_reference():
    rng = np.random.default_rng(2)
    m = realistic_map(rng, 1024, 1024)
    xy, scores = find_peaks(m, 0.5, 3)
    np.testing.assert_array_equal(xy, reference(m, 0.5, 3))
    assert np.all(np.diff(scores) <= 0), "highest first"


def test_known_answer_border_and_plateau():
    m = np.zeros((8, 9), np.float32)
    m[0, 0] = 3.0  # a corner peak counts
    m[3, 3:5] = 2.0  # a plateau gives one peak (the first in row-major order) ...
    m[7, 8] = 1.0
    xy, scores = find_peaks(m, 0.5, 2)
    assert xy.tolist() == [[0.0, 0.0], [3.0, 3.0], [8.0, 7.0]]
    assert scores.tolist() == [3.0, 2.0, 1.0]
    # ... unless min_distance allows neighbours (distance 1 is not < 1), as in skimage.
    assert find_peaks(m, 0.5, 1)[0].tolist() == [[0.0, 0.0], [3.0, 3.0], [4.0, 3.0], [8.0, 7.0]]


def test_threshold_is_strict_and_constant_map_has_no_peaks():
    m = np.zeros((5, 5), np.float32)
    m[2, 2] = 1.0
    assert len(find_peaks(m, 1.0, 1)[0]) == 0
    assert len(find_peaks(m, 0.999, 1)[0]) == 1
    assert len(find_peaks(np.full((5, 5), 2.0, np.float32), 0.0, 2)[0]) == 0


def test_empty_map_and_channel_axis():
    xy, scores = find_peaks(np.zeros((0, 5), np.float32), 0.0, 2)
    assert xy.shape == (0, 2) and scores.shape == (0,)
    m = np.zeros((1, 9, 9), np.float32)
    m[0, 4, 5] = 1
    assert find_peaks(m, 0.5, 2)[0].tolist() == [[5.0, 4.0]]


@pytest.mark.parametrize(
    "kwargs, exc, text",
    [
        (dict(prob_map=np.zeros((3, 3, 3))), ValueError, "expected an (H, W) map"),
        (dict(prob_map=np.array([[np.nan, 0.0]])), ValueError, "NaN"),
        (dict(prob_map=np.array([[np.inf, 0.0]], np.float32)), ValueError, "NaN or infinite"),
        (dict(prob_map=np.zeros((3, 3)), min_distance=0), ValueError, "min_distance"),
        (dict(prob_map=np.zeros((3, 3)), min_distance=2.5), TypeError, "min_distance"),
        (dict(prob_map=np.zeros((3, 3)), threshold=float("nan")), ValueError, "threshold"),
        (dict(prob_map=np.zeros((3, 3), complex)), TypeError, "dtype"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, exc, text):
    args = dict(threshold=0.0, min_distance=1) | kwargs
    with pytest.raises(exc, match=__import__("re").escape(text)):
        find_peaks(**args)


def test_subpixel_recovers_offset_of_a_sampled_gaussian():
    yy, xx = np.mgrid[0:21, 0:21]
    cx, cy = 10.3, 9.8
    m = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 2.5**2)).astype(np.float32)
    whole, _ = find_peaks(m, 0.1, 3)
    fine, _ = find_peaks(m, 0.1, 3, subpixel=True)
    assert whole.tolist() == [[10.0, 10.0]]
    assert abs(fine[0, 0] - cx) < 0.1 and abs(fine[0, 1] - cy) < 0.1
    np.testing.assert_array_equal(refine_subpixel(m, np.zeros((0, 2))), np.zeros((0, 2), np.float32))


# --- on the GPU (skip without CuPy and a CUDA device) -----------------------------------


def _assert_cuda_equals_cpu(cupy, m, threshold, min_distance, **kwargs):
    from micronet.runtime.peaks import find_peaks_cuda

    xy_c, s_c = find_peaks_cuda(cupy.asarray(m), threshold, min_distance, **kwargs)
    xy, s = find_peaks(m, threshold, min_distance, **kwargs)
    np.testing.assert_array_equal(xy_c, xy)
    np.testing.assert_array_equal(s_c, s)
    assert s_c.dtype == s.dtype
    return xy


@pytest.mark.gpu
def test_cuda_peaks_equal_cpu_peaks():
    cupy = require_cupy()
    from micronet.runtime.peaks import find_peaks_cuda

    rng = np.random.default_rng(3)
    for m in (realistic_map(rng, 700, 900), np.round(realistic_map(rng, 300, 200), 2).astype(np.float64)):
        for md in (1, 3, 5):
            _assert_cuda_equals_cpu(cupy, m, 0.4, md)
        xy_c, _ = find_peaks_cuda(cupy.asarray(m), 0.4, 3, subpixel=True)
        np.testing.assert_allclose(xy_c, find_peaks(m, 0.4, 3, subpixel=True)[0], atol=1e-5)


@pytest.mark.gpu
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prob_map=arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0])),
    threshold=st.sampled_from([-1.0, 0.0, 0.3, 0.75]),
    min_distance=st.integers(1, 5),
)
def test_cuda_peaks_equal_cpu_peaks_on_plateaus_ties_and_constant_maps(prob_map, threshold, min_distance):
    # Few distinct values: plateaus, ties, constant maps and 1-pixel maps, where the
    # constant-map rule and the tie order matter.
    _assert_cuda_equals_cpu(require_cupy(), prob_map, threshold, min_distance)


@pytest.mark.gpu
def test_cuda_constant_map_rule():
    cupy = require_cupy()
    from micronet.runtime.peaks import find_peaks_cuda

    for shape in [(5, 5), (1, 7), (300, 257)]:  # one block and several
        assert len(find_peaks_cuda(cupy.full(shape, 2.0, cupy.float32), 0.0, 2)[0]) == 0
    assert find_peaks_cuda(cupy.full((1, 1), 2.0, cupy.float32), 0.0, 2)[0].tolist() == [[0.0, 0.0]]  # one pixel: a peak
    m = cupy.full((300, 257), 2.0, cupy.float32)
    m[299, 256] = 1.0  # one differing pixel, in the last block: no longer constant
    _assert_cuda_equals_cpu(cupy, cupy.asnumpy(m), 0.0, 2)
    assert len(find_peaks_cuda(m, 0.0, 2)[0]) > 0


@pytest.mark.gpu
def test_cuda_peaks_with_more_candidates_than_the_first_buffer_holds():
    # A plateau above the threshold: every plateau pixel is a candidate (65k > the 1024
    # the first pass holds), so the exact second pass runs; select_peaks thins them.
    cupy = require_cupy()
    m = np.zeros((256, 256), np.float32)
    m[:, 1:] = 1.0
    xy = _assert_cuda_equals_cpu(cupy, m, 0.5, 3)
    assert len(xy) > 1000


@pytest.mark.gpu
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_cuda_non_finite_maps_raise_like_the_cpu(bad):
    cupy = require_cupy()
    from micronet.runtime.peaks import find_peaks_cuda

    for dtype in (np.float32, np.float64):
        m = np.zeros((70, 300), dtype)
        m[69, 299] = bad  # in the last block
        with pytest.raises(ValueError, match="NaN or infinite"):
            find_peaks(m, 0.0, 1)
        with pytest.raises(ValueError, match="NaN or infinite"):
            find_peaks_cuda(cupy.asarray(m), 0.0, 1)


@pytest.mark.gpu
def test_cuda_peaks_inputs_dtypes_streams_and_shapes():
    cupy = require_cupy()
    from micronet.runtime.peaks import find_peaks_cuda

    rng = np.random.default_rng(8)
    m = realistic_map(rng, 128, 96)
    # float16 maps are widened exactly, as on the CPU; (1, H, W) is accepted.
    _assert_cuda_equals_cpu(cupy, m.astype(np.float16), 0.4, 3)
    xy, _ = find_peaks_cuda(cupy.asarray(m)[None], 0.4, 3)
    np.testing.assert_array_equal(xy, find_peaks(m, 0.4, 3)[0])
    stream = cupy.cuda.Stream(non_blocking=True)
    xy_s, _ = find_peaks_cuda(cupy.asarray(m), 0.4, 3, stream=stream)
    np.testing.assert_array_equal(xy_s, xy)
    xy_e, s_e = find_peaks_cuda(cupy.zeros((0, 5), cupy.float32), 0.0, 2)
    assert xy_e.shape == (0, 2) and s_e.shape == (0,)
    with pytest.raises(TypeError, match="float"):
        find_peaks_cuda(cupy.zeros((4, 4), cupy.int32), 0.0, 1)
    with pytest.raises(ValueError, match=r"expected an \(H, W\) map"):
        find_peaks_cuda(cupy.zeros((2, 4, 4), cupy.float32), 0.0, 1)
