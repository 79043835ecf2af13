"""The detection-threshold sweep (micronet.runtime.evaluation.sweep)."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from micronet.runtime.evaluation import sweep as sweep_module
from micronet.runtime.evaluation.matching import evaluate_points
from micronet.runtime.evaluation.metrics import evaluate_images
from micronet.runtime.evaluation.sweep import sweep_thresholds, threshold_sweep


@st.composite
def scored_images(draw):
    coord = st.integers(0, 20).map(float)  # a lattice: exact ties in distance
    score = st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.8])  # exact ties in score
    images = []
    for _ in range(draw(st.integers(1, 3))):
        pts = draw(st.lists(st.tuples(coord, coord, score), max_size=25))
        truth = draw(st.lists(st.tuples(coord, coord), max_size=25))
        xy = np.array([p[:2] for p in pts], dtype=np.float64).reshape(-1, 2)
        images.append(((xy, np.array([p[2] for p in pts])), np.array(truth, dtype=np.float64).reshape(-1, 2)))
    thresholds = draw(st.lists(st.sampled_from([-np.inf, 0.0, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.0]), min_size=1, max_size=6))
    return images, thresholds, draw(st.sampled_from([1.0, 2.0, 3.5]))


@settings(max_examples=150, deadline=None)
@given(scored_images())
def test_sweep_equals_evaluating_at_each_threshold(case):
    images, thresholds, radius = case
    sweep = threshold_sweep([d for d, _ in images], [t for _, t in images], thresholds, radius)
    for k, thr in enumerate(thresholds):
        kept = [xy[scores > thr] for (xy, scores), _ in images]  # strict: score > threshold
        expected = evaluate_images(kept, [t for _, t in images], radius).pooled
        got = sweep.metrics_at(k)
        assert (got.tp, got.fp, got.fn) == (expected.tp, expected.fp, expected.fn)
        assert (got.precision, got.recall, got.f1) == pytest.approx((expected.precision, expected.recall, expected.f1))
        if expected.tp:
            assert got.mean_distance == pytest.approx(expected.mean_distance, rel=1e-9)
        else:
            assert math.isnan(got.mean_distance)


def test_sweep_on_a_realistic_image_matches_per_threshold_evaluation():
    rng = np.random.default_rng(5)
    truth = rng.uniform(0, 500, (600, 2))
    xy = np.vstack([truth + rng.normal(0, 2, truth.shape), rng.uniform(0, 500, (300, 2))])
    scores = np.concatenate([rng.uniform(0.3, 1.0, 600), rng.uniform(0.0, 0.6, 300)])
    thresholds = np.linspace(0, 1, 41)
    sweep = threshold_sweep([(xy, scores)], [truth], thresholds, radius=6)
    for k, thr in enumerate(thresholds):
        expected = evaluate_points(xy[scores > thr], truth, 6)
        assert (sweep.tp[k], sweep.fp[k], sweep.fn[k]) == (expected.tp, expected.fp, expected.fn)
        if expected.tp:
            assert sweep.mean_distance[k] == pytest.approx(expected.mean_distance, rel=1e-9)
    assert 0.3 <= sweep.best_threshold < 0.6


def test_sweep_keeps_threshold_order_and_prefers_the_higher_threshold_on_ties():
    dets = [([[10, 10], [30, 30], [50, 50]], [0.9, 0.6, 0.3])]
    truth = [[[11, 10], [30, 31]]]
    sweep = threshold_sweep(dets, truth, [0.8, 0.2, 0.55, 0.5], radius=6)
    assert sweep.tp.tolist() == [1, 2, 2, 2] and sweep.fp.tolist() == [0, 1, 0, 0]
    assert sweep.best_threshold == 0.55 and sweep.best_f1 == 1.0  # 0.5 and 0.55 tie at F1 = 1
    assert sweep.precision.tolist()[0] == 1.0 and sweep.recall.tolist()[0] == 0.5
    curve = sweep.to_dict()
    assert json.dumps(curve, allow_nan=False) and len(curve["curve"]) == 4
    nothing = threshold_sweep(dets, truth, [np.inf], radius=6)
    assert (nothing.tp[0], nothing.fp[0], nothing.precision[0], nothing.recall[0]) == (0, 0, 1.0, 0.0)


def test_sweep_checks_its_arguments():
    dets = [([[1, 1]], [0.5])]
    with pytest.raises(ValueError, match=r"scores: expected shape \(1,\)"):
        threshold_sweep([([[1, 1]], [0.5, 0.6])], [[]], [0.1], radius=6)
    with pytest.raises(ValueError, match="thresholds: expected numbers, got NaN"):
        threshold_sweep(dets, [[]], [np.nan], radius=6)
    with pytest.raises(ValueError, match="thresholds: expected a non-empty 1-D array"):
        threshold_sweep(dets, [[]], [], radius=6)
    with pytest.raises(ValueError, match="one entry per image"):
        threshold_sweep(dets, [[], []], [0.1], radius=6)
    with pytest.raises(ValueError, match="scores: expected numbers, got NaN"):
        threshold_sweep([([[1, 1]], [np.nan])], [[]], [0.1], radius=6)
    with pytest.raises(ValueError, match="radius"):
        threshold_sweep(dets, [[]], [0.1], radius=-2)


def test_sweep_thresholds_run_from_2_to_90_percent_of_the_target_scale():
    t = sweep_thresholds(5.0)  # what the trainer chooses ξ over and `micronet evaluate` sweeps
    assert t.shape == (60,) and t.dtype == np.float64
    assert t[0] == pytest.approx(0.1) and t[-1] == pytest.approx(4.5) and np.all(np.diff(t) > 0)
    np.testing.assert_array_equal(sweep_thresholds(2.0, 7), np.linspace(0.04, 1.8, 7))


def test_docstring_examples_run():
    assert doctest.testmod(sweep_module).failed == 0
