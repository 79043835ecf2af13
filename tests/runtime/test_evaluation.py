"""Scoring folders of point CSVs, and models over data sets (micronet.runtime.evaluation)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from micronet.runtime.datasets import load_point_folder
from micronet.runtime.evaluation import (
    ModelEvaluation,
    evaluate_candidates,
    evaluate_model_file,
    model_candidates,
    score_csv_dirs,
)
from micronet.runtime.metrics import evaluate_images
from micronet.runtime.points import read_points_csv, write_points_csv
from micronet.runtime.sweep import sweep_thresholds, threshold_sweep


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


# --- a model over a data set -----------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "runtime" / "models" / "micronet_crchisto.onnx"


@pytest.fixture()
def sample_set(tmp_path: Path) -> Path:
    """The bundled sample image (CRCHisto, 0.55 µm/px) as a one-image data set folder."""
    root = tmp_path / "sample_set"
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    shutil.copy(REPO / "runtime" / "models" / "sample.png", root / "images" / "sample.png")
    shutil.copy(REPO / "runtime" / "models" / "sample.csv", root / "points" / "sample.csv")
    (root / "dataset.json").write_text('{"mpp": 0.55}')
    return root


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
