"""Pooling, summaries across data sets, the threshold sweep, point CSVs and scoring of
CSV folders (micronet.runtime.metrics)."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from micronet.runtime import metrics
from micronet.runtime.matching import PointMetrics, evaluate_points
from micronet.runtime.metrics import (
    evaluate_images,
    pool_metrics,
    read_points_csv,
    score_csv_dirs,
    summarize_across_sets,
    threshold_sweep,
    write_points_csv,
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


# --- threshold sweep -----------------------------------------------------------------


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


# --- point CSVs ----------------------------------------------------------------------


def test_csv_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        xy = (rng.uniform(0, 5000, (50, 2))).astype(dtype)
        write_points_csv(tmp_path / "p.csv", xy)
        assert (tmp_path / "p.csv").read_text().startswith("x,y\n")
        back = read_points_csv(tmp_path / "p.csv")
        # written with the fewest digits that read back to the same value in its dtype
        assert back.dtype == np.float64 and np.array_equal(back.astype(dtype), xy)
    scores = rng.random(50)
    write_points_csv(tmp_path / "s.csv", xy, scores)
    assert (tmp_path / "s.csv").read_text().startswith("x,y,score\n")
    assert np.array_equal(read_points_csv(tmp_path / "s.csv"), xy)


def test_csv_with_no_points(tmp_path):
    write_points_csv(tmp_path / "e.csv", np.empty((0, 2)))
    assert (tmp_path / "e.csv").read_text() == "x,y\n"
    assert read_points_csv(tmp_path / "e.csv").shape == (0, 2)
    write_points_csv(tmp_path / "e2.csv", [], scores=[])
    assert read_points_csv(tmp_path / "e2.csv").shape == (0, 2)


def test_csv_tolerates_a_bom_and_blank_lines(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"\xef\xbb\xbfx,y\r\n1.5,2\r\n\r\n3,4.25\r\n\r\n")
    assert read_points_csv(path).tolist() == [[1.5, 2.0], [3.0, 4.25]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("a,b\n1,2\n", r"expected the header 'x,y' or 'x,y,score', got 'a,b'"),
        ("1.0,2.0\n", r"expected the header"),
        ("x,y\n1,2\n3\n", r"line 3: expected 2 comma-separated values, got 1"),
        ("x,y\n1,2,3\n", r"line 2: expected 2 comma-separated values, got 3"),
        ("x,y\n1,two\n", r"line 2: expected numbers, got '1,two'"),
        ("x,y\n1,nan\n", r"line 2: expected finite numbers"),
        ("x,y,score\n1,2\n", r"line 2: expected 3 comma-separated values"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_points_csv(path)
    assert "bad.csv" in str(info.value)


def test_write_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"xy: expected an \(N, 2\) array"):
        write_points_csv(tmp_path / "x.csv", [1, 2, 3])
    with pytest.raises(ValueError, match=r"scores: expected a \(2,\) array"):
        write_points_csv(tmp_path / "x.csv", [[1, 2], [3, 4]], scores=[1.0])
    with pytest.raises(ValueError, match="scores: expected finite"):
        write_points_csv(tmp_path / "x.csv", [[1, 2]], scores=[np.inf])


# --- scoring folders -----------------------------------------------------------------


def _write_set(folder: Path, images: dict[str, list]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, xy in images.items():
        write_points_csv(folder / f"{name}.csv", np.asarray(xy, dtype=np.float64).reshape(-1, 2))
    return folder


def test_score_csv_dirs_pairs_files_by_name(tmp_path):
    truth = _write_set(tmp_path / "truth", {"img2": [[10, 10], [40, 40]], "img10": [[5, 5]], "img1": []})
    pred = _write_set(tmp_path / "pred", {"img10": [[6, 5]], "img2": [[11, 10]], "img1": [[3, 3]], "extra": [[0, 0]]})
    report = score_csv_dirs(pred, truth, radius=6)
    assert report.names == ("img1", "img2", "img10")  # natural order
    assert [(m.tp, m.fp, m.fn) for m in report.per_image] == [(0, 1, 0), (1, 0, 1), (1, 0, 0)]
    assert (report.pooled.tp, report.pooled.fp, report.pooled.fn) == (2, 1, 1)
    assert report.to_dict()["mean_distance"] == pytest.approx(1.0)


def test_score_csv_dirs_lists_truth_files_without_predictions(tmp_path):
    truth = _write_set(tmp_path / "truth", {"a": [[1, 1]], "b": [[2, 2]], "c": []})
    pred = _write_set(tmp_path / "pred", {"b": []})
    with pytest.raises(FileNotFoundError, match=r"no prediction file for 2 of 3 truth files .*: a, c"):
        score_csv_dirs(pred, truth, radius=6)
    with pytest.raises(FileNotFoundError, match="truth_dir: no such directory"):
        score_csv_dirs(pred, tmp_path / "nowhere", radius=6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"truth_dir: no \*.csv point files"):
        score_csv_dirs(pred, tmp_path / "empty", radius=6)


def test_docstring_examples_run():
    assert doctest.testmod(metrics).failed == 0


@pytest.mark.data
def test_crchisto_truth_against_itself_moved_gives_the_known_answer(tmp_path, shared_data):
    points = shared_data / "crchisto" / "points"  # the shared fixture skips when the data is absent
    truth_files = sorted(points.glob("*.csv"))
    rng = np.random.default_rng(0)
    shifted, jittered = tmp_path / "shifted", tmp_path / "jittered"
    shifted.mkdir()
    jittered.mkdir()
    n_total = n_kept = 0
    jitter_sum = 0.0
    for f in truth_files:
        xy = read_points_csv(f)
        # A common shift of length 1: every point still has its own partner at distance
        # 1, and no perfect matching can do better (the shifts of any permutation sum to
        # the N times the common shift), so ED is exactly 1.
        write_points_csv(shifted / f.name, xy + [0.6, 0.8])
        # Random jitter within 1.5 px, 10% dropped: all kept detections match.
        keep = rng.random(len(xy)) > 0.1
        angle, length = rng.uniform(0, 2 * np.pi, len(xy)), 1.5 * np.sqrt(rng.random(len(xy)))
        moved = xy + np.stack([length * np.cos(angle), length * np.sin(angle)], axis=1)
        write_points_csv(jittered / f.name, moved[keep])
        n_total += len(xy)
        n_kept += int(keep.sum())
        jitter_sum += float(length[keep].sum())
    assert n_total > 25_000  # 29,756 nuclei in CRCHistoPhenotypes

    report = score_csv_dirs(shifted, points, radius=6)
    assert len(report.names) == len(truth_files) == 100
    p = report.pooled
    assert (p.tp, p.fp, p.fn, p.f1) == (n_total, 0, 0, 1.0)
    assert p.mean_distance == pytest.approx(1.0, rel=1e-9)

    report = score_csv_dirs(jittered, points, radius=6)
    p = report.pooled
    assert (p.tp, p.fp, p.fn) == (n_kept, 0, n_total - n_kept)
    assert p.precision == 1.0 and p.recall == pytest.approx(n_kept / n_total)
    assert p.mean_distance <= jitter_sum / n_kept + 1e-9  # the identity is one candidate
