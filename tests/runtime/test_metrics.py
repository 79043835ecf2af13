"""Pooling over images, the report and its text table, and summaries across data sets
(micronet.runtime.evaluation.metrics)."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
from micronet.runtime.evaluation import metrics
from micronet.runtime.evaluation.matching import PointMetrics, evaluate_points
from micronet.runtime.evaluation.metrics import (
    evaluate_images,
    pool_metrics,
    summarize_across_sets,
)

# --- pooling -------------------------------------------------------------------------


def test_pooling_sums_counts_and_averages_distance_over_pairs():
    a = PointMetrics.from_counts(tp=3, fp=1, fn=0, distance_sum=3.0)
    b = PointMetrics.from_counts(tp=1, fp=0, fn=1, distance_sum=5.0)
    empty = PointMetrics.from_counts(0, 0, 0, 0.0)
    p = pool_metrics([a, b, empty])
    assert (p.tp, p.fp, p.fn) == (4, 1, 1)
    assert p.mean_distance == pytest.approx(2.0)  # 8 / 4 pairs, not the mean of 1.0 and 5.0
    assert p.f1 == pytest.approx(0.8)


def test_pooled_report_equals_one_image_holding_all_images():
    # Images placed far apart on one canvas cannot interact, so the pooled metrics of
    # the images equal the metrics of the canvas.
    rng = np.random.default_rng(0)
    preds, trues = [], []
    for _ in range(5):
        t = rng.uniform(0, 100, (rng.integers(0, 40), 2))
        p = np.vstack([t[rng.random(len(t)) > 0.2], rng.uniform(0, 100, (3, 2))])
        preds.append(p + rng.normal(0, 1.5, p.shape))
        trues.append(t)
    report = evaluate_images(preds, trues, radius=6)
    canvas = evaluate_points(
        np.vstack([p + [1000.0 * k, 0] for k, p in enumerate(preds)]),
        np.vstack([t + [1000.0 * k, 0] for k, t in enumerate(trues)]),
        radius=6,
    )
    pooled = report.pooled
    assert (pooled.tp, pooled.fp, pooled.fn) == (canvas.tp, canvas.fp, canvas.fn)
    assert pooled.mean_distance == pytest.approx(canvas.mean_distance, rel=1e-12)
    assert report.names == ("0", "1", "2", "3", "4")


def test_report_to_dict_is_json_with_pooled_values_on_top():
    report = evaluate_images([[[10, 10]], []], [[[12, 10]], [[5, 5]]], radius=6, names=["a", "b"])
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert {"precision", "recall", "f1", "mean_distance", "radius", "per_image"} <= d.keys()
    assert d["radius"] == 6.0 and d["recall"] == 0.5 and d["mean_distance"] == 2.0
    assert [r["name"] for r in d["per_image"]] == ["a", "b"]
    assert d["per_image"][1]["mean_distance"] is None  # nothing matched: no distance


def test_evaluate_images_checks_its_arguments():
    with pytest.raises(ValueError, match="one entry per image"):
        evaluate_images([[]], [[], []], radius=6)
    with pytest.raises(ValueError, match="names: expected 1 names"):
        evaluate_images([[]], [[]], radius=6, names=["a", "b"])
    with pytest.raises(ValueError, match=r"pred_xy\[1\]: expected an \(N, 2\) array"):
        evaluate_images([[], [1, 2]], [[], []], radius=6)


# --- across data sets ----------------------------------------------------------------


def test_summary_across_sets_is_mean_and_sample_std():
    a = PointMetrics.from_counts(tp=8, fp=2, fn=2, distance_sum=16.0)  # P = R = F1 = 0.8, ED 2
    b = PointMetrics.from_counts(tp=6, fp=4, fn=4, distance_sum=18.0)  # P = R = F1 = 0.6, ED 3
    s = summarize_across_sets([a, b])
    assert s.n_sets == 2
    assert s.f1.mean == pytest.approx(0.7) and s.f1.std == pytest.approx(math.sqrt(0.02))
    assert s.mean_distance.mean == pytest.approx(2.5)
    assert summarize_across_sets([a, b], ddof=0).f1.std == pytest.approx(0.1)
    assert f"{s.precision:.2f}" == "0.70 ± 0.14"
    assert json.dumps(s.to_dict(), allow_nan=False)


def test_summary_edge_cases():
    a = PointMetrics.from_counts(tp=8, fp=2, fn=2, distance_sum=16.0)
    assert math.isnan(summarize_across_sets([a]).f1.std)  # one set: no sample spread
    assert summarize_across_sets([a], ddof=0).f1.std == 0.0
    no_match = PointMetrics.from_counts(tp=0, fp=3, fn=3, distance_sum=0.0)
    assert math.isnan(summarize_across_sets([a, no_match]).mean_distance.mean)
    with pytest.raises(ValueError, match="at least one data set"):
        summarize_across_sets([])


def test_report_formats_as_a_table_with_a_pooled_line():
    report = evaluate_images([[[13, 14], [90, 90]], [[5, 6]]], [[[10, 10], [40, 40]], [[5, 5]]], radius=6, names=["img1", "img2"])
    text = report.format()
    lines = text.splitlines()
    assert lines[0].split() == ["image", "TP", "FP", "FN", "P", "R", "F1", "ED", "px"]
    assert lines[2].split() == ["img1", "1", "1", "1", "0.5000", "0.5000", "0.5000", "5.000"]
    assert lines[5].split()[0] == "pooled" and lines[-2] == ""
    assert lines[-1] == "2 images, radius 6 px: P 0.6667  R 0.6667  F1 0.6667  ED 3.000 px"
    nothing = evaluate_images([[]], [[[1, 1]]], radius=6, names=["a"]).format()
    assert "ED - px" in nothing


def test_docstring_examples_run():
    assert doctest.testmod(metrics).failed == 0
