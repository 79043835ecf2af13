"""``micronet evaluate``: scoring CSV folders, JSON output, and argument consistency."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from micronet.commands import evaluate
from micronet.runtime.points import write_points_csv


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="micronet")
    evaluate.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["evaluate", *argv])


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir()
    pred.mkdir()
    write_points_csv(truth / "img1.csv", [[10, 10], [40, 40]])
    write_points_csv(pred / "img1.csv", [[13, 14], [90, 90]], scores=[0.9, 0.4])
    write_points_csv(truth / "img2.csv", [[5, 5]])
    write_points_csv(pred / "img2.csv", [[5, 6]])
    return pred, truth


def test_scores_csv_folders_and_writes_json(folders, tmp_path, capsys):
    pred, truth = folders
    out = tmp_path / "results" / "eval.json"
    assert evaluate.run(parse("--pred", str(pred), "--truth", str(truth), "--radius", "6", "--json", str(out))) == 0
    text = capsys.readouterr().out
    assert "img1" in text and "img2" in text and "pooled" in text
    assert "2 images, radius 6 px: P 0.6667  R 0.6667  F1 0.6667  ED 3.000 px" in text
    d = json.loads(out.read_text())
    assert (d["tp"], d["fp"], d["fn"]) == (2, 1, 1)
    assert d["precision"] == pytest.approx(2 / 3) and d["mean_distance"] == pytest.approx(3.0)
    assert d["radius"] == 6.0 and [r["name"] for r in d["per_image"]] == ["img1", "img2"]


def test_through_the_micronet_command(folders, capsys):
    from micronet.cli import main

    pred, truth = folders
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--radius", "6"]) == 0
    assert "F1 0.6667" in capsys.readouterr().out
    assert main(["evaluate", "--pred", str(pred), "--radius", "6"]) == 2
    assert "--pred and --truth go together" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "expected either --pred DIR --truth DIR .* or --model FILE --data DIR"),
        (("--pred", "p", "--truth", "t", "--model", "m.onnx"), "not both; got --pred --truth --model"),
        (("--truth", "t", "--radius", "6"), "--pred and --truth go together"),
        (("--pred", "p", "--truth", "t"), "--radius is required with --pred"),
        (("--pred", "p", "--truth", "t", "--radius", "6", "--split", "test"), "--split apply to --model evaluation only"),
        (("--pred", "p", "--truth", "t", "--radius", "6", "--threshold", "0.5"), "--threshold apply to --model"),
        (("--model", "m.onnx"), "--model and --data go together"),
        (("--data", "d"), "--model and --data go together"),
    ],
)
def test_inconsistent_arguments_are_explained(argv, message):
    with pytest.raises(ValueError, match=message):
        evaluate.run(parse(*argv))


def test_missing_prediction_files_are_listed(folders):
    pred, truth = folders
    (pred / "img2.csv").unlink()
    with pytest.raises(FileNotFoundError, match="no prediction file for 1 of 2 truth files .*: img2"):
        evaluate.run(parse("--pred", str(pred), "--truth", str(truth), "--radius", "6"))


def test_bad_radius_is_a_value_error(folders):
    pred, truth = folders
    with pytest.raises(ValueError, match="radius: expected a finite number of pixels >= 0"):
        evaluate.run(parse("--pred", str(pred), "--truth", str(truth), "--radius", "-1"))


def test_model_evaluation_is_handed_to_the_library(monkeypatch, tmp_path, capsys):
    from micronet.runtime import evaluation

    calls = []

    class Result:
        def format(self) -> str:
            return "the report"

    def fake(model, data, **options):
        calls.append((model, data, options))
        return Result()

    monkeypatch.setattr(evaluation, "evaluate_model_file", fake)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    args = parse("--model", str(model), "--data", "d", "--split", "test", "--threshold", "0.4")
    assert evaluate.run(args) == 0
    assert calls == [(model, Path("d"), {"split": "test", "radius": None, "threshold": 0.4})]
    assert args.split == "test" and args.threshold == 0.4
    assert capsys.readouterr().out == "the report\n"


def test_model_file_is_checked_before_anything_loads(tmp_path):
    with pytest.raises(FileNotFoundError, match="--model: no such file"):
        evaluate.run(parse("--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path)))
    other = tmp_path / "m.pt"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match=r"--model .*m\.pt: expected a \.safetensors checkpoint, \.onnx model or \.engine file"):
        evaluate.run(parse("--model", str(other), "--data", str(tmp_path / "no data here")))


def test_bundled_model_on_the_sample_image(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    repo = Path(__file__).resolve().parents[1]
    data = tmp_path / "sample_set"
    (data / "images").mkdir(parents=True)
    (data / "points").mkdir()
    shutil.copy(repo / "runtime" / "models" / "sample.png", data / "images")
    shutil.copy(repo / "runtime" / "models" / "sample.csv", data / "points")
    (data / "dataset.json").write_text('{"mpp": 0.55}')
    out = tmp_path / "eval.json"
    model = repo / "runtime" / "models" / "micronet_crchisto.onnx"
    assert evaluate.run(parse("--model", str(model), "--data", str(data), "--json", str(out))) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["image", "TP", "FP", "FN", "P", "R", "F1", "ED", "px"]
    assert lines[-3].startswith("1 images, radius 6 px: P ")
    assert lines[-2].startswith("threshold ξ = ") and "(the model’s); best on this set: ξ = " in lines[-2]
    assert lines[-1] == f"wrote {out} and {out.with_suffix('.pr.png')}"
    d = json.loads(out.read_text())
    assert d["model"] == str(model) and d["data"] == str(data) and d["split"] is None
    assert len(d["curve"]) == 60 and d["per_image"][0]["name"] == "sample" and d["f1"] > 0.9
    assert out.with_suffix(".pr.png").stat().st_size > 0


def test_image_without_matches_shows_no_distance(tmp_path, capsys):
    truth, pred = tmp_path / "t", tmp_path / "p"
    truth.mkdir()
    pred.mkdir()
    write_points_csv(truth / "a.csv", np.array([[1.0, 1.0]]))
    write_points_csv(pred / "a.csv", np.empty((0, 2)))
    assert evaluate.run(parse("--pred", str(pred), "--truth", str(truth), "--radius", "6")) == 0
    assert "ED - px" in capsys.readouterr().out
