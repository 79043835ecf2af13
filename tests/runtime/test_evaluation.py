"""Scoring folders of point CSVs, and models over data sets (micronet.runtime.evaluation.evaluate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from micronet.runtime.evaluation.datasets import load_point_folder
from micronet.runtime.evaluation.evaluate import (
    ModelEvaluation,
    evaluate_candidates,
    evaluate_model_file,
    find_annotations,
    model_candidates,
    score_predictions,
)
from micronet.runtime.evaluation.metrics import evaluate_images
from micronet.runtime.points import read_points_csv, write_points_csv
from micronet.runtime.evaluation.sweep import sweep_thresholds, threshold_sweep


def _write_set(folder: Path, images: dict[str, list]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, xy in images.items():
        write_points_csv(folder / f"{name}.csv", np.asarray(xy, dtype=np.float64).reshape(-1, 2))
    return folder


def test_score_predictions_pairs_files_by_name(tmp_path):
    truth = _write_set(tmp_path / "truth", {"img2": [[10, 10], [40, 40]], "img10": [[5, 5]], "img1": []})
    pred = _write_set(tmp_path / "pred", {"img10": [[6, 5]], "img2": [[11, 10]], "img1": [[3, 3]], "extra": [[0, 0]]})
    result = score_predictions(pred, truth, radius=6)
    report = result.report
    assert report.names == ("img1", "img2", "img10")  # natural order
    assert [(m.tp, m.fp, m.fn) for m in report.per_image] == [(0, 1, 0), (1, 0, 1), (1, 0, 0)]
    assert (report.pooled.tp, report.pooled.fp, report.pooled.fn) == (2, 1, 1)
    assert report.to_dict()["mean_distance"] == pytest.approx(1.0)
    assert result.extra == ("extra",) and result.missing == () and result.sweep is None  # no score column
    assert "extra: 1 prediction files have no annotation file, not scored: extra" in result.format()


def test_an_image_without_a_prediction_file_counts_its_nuclei_as_misses(tmp_path):
    truth = _write_set(tmp_path / "truth", {"a": [[1, 1], [9, 9]], "b": [[2, 2]], "c": []})
    pred = _write_set(tmp_path / "pred", {"b": [[2, 3]]})
    result = score_predictions(pred, truth, radius=6)
    assert result.missing == ("a", "c") and result.missing_nuclei == 2
    assert [(m.tp, m.fp, m.fn) for m in result.report.per_image] == [(0, 0, 2), (1, 0, 0), (0, 0, 0)]
    assert "missing: 2 of 3 images have no prediction file, scored as detecting nothing (their 2 nuclei count as misses): a, c" in (
        result.format()
    )
    d = result.to_dict()
    assert d["missing"] == ["a", "c"] and d["fn"] == 2


def test_predictions_pair_by_image_name_whatever_detect_or_another_tool_appends(tmp_path):
    truth = _write_set(tmp_path / "truth", {"img1": [[1, 1]], "img2": [[5, 5]]})
    pred = tmp_path / "pred"
    pred.mkdir()
    write_points_csv(pred / "img1.png.csv", [[1, 2]])
    write_points_csv(pred / "img2.csv", [[5, 5]])
    (pred / ".img2.csv.tmp").write_text("half a file")  # a temporary: not a result
    (pred / ".img3.csv").write_text("x,y\n")  # hidden: not a result
    result = score_predictions(pred, truth, radius=6)
    assert result.report.pooled.tp == 2 and result.missing == () and result.extra == ()
    write_points_csv(pred / "img1.csv", [[1, 2]])
    with pytest.raises(ValueError, match=r"img1.csv and img1.png.csv in .* are both predictions for image img1"):
        score_predictions(pred, truth, radius=6)


def test_score_predictions_refuses_what_does_not_pair_up(tmp_path):
    truth = _write_set(tmp_path / "truth", {"a": [[1, 1]], "b": [[2, 2]], "c": []})
    other = _write_set(tmp_path / "other", {"x": [], "y": []})
    with pytest.raises(FileNotFoundError, match=r"none of the 2 CSV files in .*other is named after an image of all images .*e\.g\. a\.csv; found x, y"):
        score_predictions(other, truth, radius=6)
    with pytest.raises(FileNotFoundError, match="truth: no such file or folder"):
        score_predictions(other, tmp_path / "nowhere", radius=6)
    with pytest.raises(FileNotFoundError, match="pred: no such file or folder"):
        score_predictions(tmp_path / "nowhere", truth, radius=6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"truth: no \*.csv annotation files"):
        score_predictions(other, tmp_path / "empty", radius=6)
    with pytest.raises(FileNotFoundError, match=r"pred: no \*.csv prediction files"):
        score_predictions(tmp_path / "empty", truth, radius=6)
    with pytest.raises(ValueError, match=r"pred .*x.csv is one CSV file, but truth .* holds 3 images \(all images\)"):
        score_predictions(other / "x.csv", truth, radius=6)


def test_one_prediction_file_against_one_annotation_file_or_one_named_image(tmp_path):
    truth = _write_set(tmp_path / "truth", {"a": [[1, 1]], "b": [[20, 20], [40, 40]]})
    pred = tmp_path / "detections of b.csv"
    write_points_csv(pred, [[21, 20]], scores=[0.7])
    result = score_predictions(pred, truth / "b.csv", radius=6)  # the two pair whatever their names
    assert result.report.names == ("b",) and (result.report.pooled.tp, result.report.pooled.fn) == (1, 1)
    assert score_predictions(pred, truth, radius=6, image="b").report == result.report
    with pytest.raises(ValueError, match=r"image='bb': no annotation file bb.csv in .*; closest: b"):
        score_predictions(pred, truth, radius=6, image="bb")
    with pytest.raises(ValueError, match="image='b': selects from a folder of annotations, but truth .* is one annotation file"):
        score_predictions(pred, truth / "b.csv", radius=6, image="b")


def _write_data_set(root: Path) -> Path:
    _write_set(root / "points", {"img1": [[1, 1]], "img2": [[5, 5], [30, 30]], "img3": [[9, 9]]})
    (root / "split.csv").write_bytes(b"name,split\r\nimg1,train\r\nimg2,test\r\nimg3,test\r\n")
    return root


def test_split_restricts_the_scored_images_of_a_data_set(tmp_path):
    root = _write_data_set(tmp_path / "set")
    pred = _write_set(tmp_path / "pred", {"img1": [[1, 1]], "img2": [[5, 6]]})
    for truth in (root, root / "points"):  # the data set folder, or its points/ beside split.csv
        result = score_predictions(pred, truth, radius=6, split="test")
        assert result.report.names == ("img2", "img3") and result.selection == "split 'test'"
        assert (result.report.pooled.tp, result.report.pooled.fn) == (1, 2)
        assert result.missing == ("img3",) and result.unselected == 1 and result.extra == ()
        assert "not scored: 1 prediction files of annotated images outside split 'test'" in result.format()
    with pytest.raises(ValueError, match=r"split 'val' not in .*split.csv; valid: test, train"):
        score_predictions(pred, root, radius=6, split="val")
    with pytest.raises(ValueError, match="split and image: give one of them"):
        find_annotations(root, split="test", image="img2")
    plain = _write_set(tmp_path / "plain", {"img1": [[1, 1]]})
    with pytest.raises(ValueError, match=r"split='test': needs a data set folder with split.csv .* has none"):
        score_predictions(pred, plain, radius=6, split="test")
    (root / "split.csv").write_text("name,split\nimg1,train\nimg4,test\n")
    with pytest.raises(FileNotFoundError, match=r"1 images of split 'test' have no annotation file in .*: img4"):
        score_predictions(pred, root, radius=6, split="test")


def test_scores_give_a_threshold_and_a_sweep_that_agree(tmp_path):
    truth = _write_set(tmp_path / "truth", {"a": [[10, 10], [40, 40], [70, 70]]})
    pred = tmp_path / "pred"
    pred.mkdir()
    write_points_csv(pred / "a.csv", [[10, 11], [40, 40], [90, 90], [70, 72]], scores=[0.9, 0.8, 0.5, 0.2])
    every = score_predictions(pred, truth, radius=6)
    assert every.threshold is None and (every.report.pooled.tp, every.report.pooled.fp) == (3, 1)
    # the lowest level keeps every detection, and is the best here: F1 6/7
    assert every.sweep.best_index == 0 and every.sweep.best_threshold < 0.2 and every.sweep.best_f1 == pytest.approx(6 / 7)
    assert every.sweep.f1[0] == every.report.pooled.f1
    assert every.sweep.f1[every.sweep.thresholds >= 0.5].max() == pytest.approx(0.8)
    given = score_predictions(pred, truth, radius=6, threshold=0.5)
    assert (given.report.pooled.tp, given.report.pooled.fp, given.report.pooled.fn) == (2, 0, 1)
    assert "threshold: score > 0.5 (given); best on this set: score > 0.2, F1 0.8571" in given.format()
    write_points_csv(pred / "a.csv", [[10, 11]])
    with pytest.raises(ValueError, match=r"threshold: needs a 'score' column in every prediction CSV; .*a.csv has none"):
        score_predictions(pred, truth, radius=6, threshold=0.5)


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

    report = score_predictions(shifted, points, radius=6).report
    assert len(report.names) == len(truth_files) == 100
    p = report.pooled
    assert (p.tp, p.fp, p.fn, p.f1) == (n_total, 0, 0, 1.0)
    assert p.mean_distance == pytest.approx(1.0, rel=1e-9)

    report = score_predictions(jittered, points, radius=6).report
    p = report.pooled
    assert (p.tp, p.fp, p.fn) == (n_kept, 0, n_total - n_kept)
    assert p.precision == 1.0 and p.recall == pytest.approx(n_kept / n_total)
    assert p.mean_distance <= jitter_sum / n_kept + 1e-9  # the identity is one candidate


# --- a model over a data set -----------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "runtime" / "models" / "micronet_crchisto.onnx"


def test_model_file_on_a_data_set_equals_its_candidates_swept(sample_set):
    pytest.importorskip("onnxruntime")
    result = evaluate_model_file(BUNDLED, sample_set, radius=6, progress=False)
    thresholds = sweep_thresholds(5.0)
    runner, info = model_candidates(BUNDLED, float(thresholds[0]))
    data = load_point_folder(sample_set)
    direct = evaluate_candidates(runner, data, 6.0, info.threshold, thresholds, progress=False)
    assert result.threshold == info.threshold and result.threshold_source == "model"
    assert result.report == direct.report and result.report.names == ("sample",)
    np.testing.assert_array_equal(result.sweep.f1, direct.sweep.f1)
    np.testing.assert_array_equal(result.sweep.thresholds, thresholds)
    assert result.report.pooled.f1 > 0.9
    text = result.format().splitlines()
    assert text[-2].startswith("1 images, radius 6 px: P ")
    assert text[-1].startswith(f"threshold ξ = {info.threshold:.4g} (the model’s); best on this set: ξ = ")
    given = evaluate_model_file(BUNDLED, data, threshold=1.0, progress=False)  # a loaded data set, radius 6 by default
    assert given.threshold_source == "given" and "(given)" in given.format()
    assert given.report.radius == 6.0 and given.report.pooled.tp >= result.report.pooled.tp


def test_model_file_errors_name_what_was_expected(sample_set, tmp_path):
    with pytest.raises(FileNotFoundError, match="model: no such file"):
        evaluate_model_file(tmp_path / "missing.onnx", sample_set)
    other = tmp_path / "model.pt"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match=r"expected a \.safetensors checkpoint, \.onnx model or \.engine file"):
        evaluate_model_file(other, sample_set)
    with pytest.raises(ValueError, match="split: applies to a data set folder"):
        evaluate_model_file(BUNDLED, load_point_folder(sample_set), split="test")
    pytest.importorskip("onnxruntime")
    with pytest.raises(ValueError, match=r"threshold 0.01 is below the sweep floor 0.100"):
        evaluate_model_file(BUNDLED, sample_set, threshold=0.01, progress=False)


def test_model_evaluation_checks_where_its_threshold_came_from():
    report = evaluate_images([[]], [[]], radius=6)
    sweep = threshold_sweep([([], [])], [[]], [0.5], radius=6)
    with pytest.raises(ValueError, match="threshold_source: expected one of 'given', 'model', got 'guess'"):
        ModelEvaluation(threshold=0.5, report=report, sweep=sweep, threshold_source="guess")
