"""``micronet evaluate``: scoring detection CSVs (what ``micronet detect`` writes included), JSON
output, bundled model names, and which combinations of options are valid."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from micronet.runtime.points import write_points_csv

from micronet.commands import evaluate


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
    assert d["pred"] == str(pred) and d["truth"] == str(truth) and d["missing"] == [] and d["extra"] == []


def test_through_the_micronet_command(folders, capsys):
    from micronet.cli import main

    pred, truth = folders
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--radius", "6"]) == 0
    assert "F1 0.6667" in capsys.readouterr().out
    assert main(["evaluate", "--pred", str(pred), "--radius", "6"]) == 2
    assert "--pred needs the annotations: --truth or --data (valid: " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "expected either --pred DIR|FILE with --truth or --data .* or --model FILE|NAME --data DIR"),
        (("--pred", "p", "--truth", "t", "--model", "m.onnx"), "not both; got --pred --truth --model"),
        (("--truth", "t", "--radius", "6"), "--pred and --truth go together"),
        (("--pred", "p", "--radius", "6"), "--pred needs the annotations: --truth or --data .valid: --pred DIR --truth"),
        (("--pred", "p", "--truth", "t", "--data", "d", "--radius", "6"), "--truth and --data both give the annotations"),
        (("--pred", "p", "--truth", "t"), "--radius is required with --pred"),
        (("--pred", "p", "--truth", "t", "--radius", "6", "--split", "test", "--image", "a"), "--split and --image: give one"),
        (("--model", "m.onnx"), "--model and --data go together"),
        (("--model", "m.onnx", "--data", "d", "--image", "a"), "--image applies to --pred CSVs only"),
        (("--data", "d"), "--data goes with --model FILE|NAME or --pred DIR|FILE"),
    ],
)
def test_inconsistent_arguments_are_explained(argv, message):
    with pytest.raises(ValueError, match=message):
        evaluate.run(parse(*argv))


def test_missing_prediction_files_count_as_misses_and_are_listed(folders, capsys):
    pred, truth = folders
    (pred / "img2.csv").unlink()
    write_points_csv(pred / "img9.csv", [[1, 1]])
    assert evaluate.run(parse("--pred", str(pred), "--truth", str(truth), "--radius", "6")) == 0
    out = capsys.readouterr().out
    assert "missing: 1 of 2 images have no prediction file, scored as detecting nothing (their 1 nuclei count as misses): img2" in out
    assert "extra: 1 prediction files have no annotation file, not scored: img9" in out
    assert "2 images, radius 6 px: P 0.5000  R 0.3333" in out


def test_bad_radius_is_a_value_error(folders):
    pred, truth = folders
    with pytest.raises(ValueError, match="radius: expected a finite number of pixels >= 0"):
        evaluate.run(parse("--pred", str(pred), "--truth", str(truth), "--radius", "-1"))


def test_model_evaluation_is_handed_to_the_library(monkeypatch, tmp_path, capsys):
    from micronet.runtime.evaluation import evaluate as evaluation

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
    with pytest.raises(FileNotFoundError, match="--model: no such file .*m.onnx; expected a model file or a bundled model: default, fast-cpu"):
        evaluate.run(parse("--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path)))
    other = tmp_path / "m.pt"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match=r"--model .*m\.pt: expected a \.safetensors checkpoint, \.onnx model or \.engine file, or a bundled model: default, fast-cpu"):
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
    assert evaluate.run(parse("--model", "default", "--data", str(data), "--json", str(out))) == 0  # a bundled name
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["image", "TP", "FP", "FN", "P", "R", "F1", "ED", "px"]
    assert lines[-3].startswith("1 images, radius 6 px: P ")
    assert lines[-2].startswith("threshold ξ = ") and "(the model’s); best on this set: ξ = " in lines[-2]
    assert lines[-1] == f"wrote {out} and {out.with_suffix('.pr.png')}"
    d = json.loads(out.read_text())
    assert d["model"] == "default" and Path(d["model_file"]).samefile(model) and d["data"] == str(data) and d["split"] is None
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


@pytest.mark.parametrize("name", ["default", "fast-cpu"])
def test_bundled_model_names_are_accepted_as_detect_accepts_them(monkeypatch, name):
    from micronet.runtime.bundled import resolve_model
    from micronet.runtime.evaluation import evaluate as evaluation

    calls = []

    class Result:
        def format(self) -> str:
            return "the report"

    monkeypatch.setattr(evaluation, "evaluate_model_file", lambda model, data, **options: calls.append(model) or Result())
    assert evaluate.run(parse("--model", name, "--data", "d")) == 0
    assert calls == [resolve_model(name)] and calls[0].is_file()


# --- what micronet detect writes -------------------------------------------------------

SAMPLE_TRUTH = Path(__file__).resolve().parents[1] / "runtime" / "models" / "sample.csv"


def test_detect_output_on_the_bundled_sample_scores_as_a_folder_and_as_one_file(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from micronet.cli import main
    from micronet.runtime.bundled import bundled_sample

    out = tmp_path / "demo"
    assert main(["detect", str(bundled_sample()), "--out", str(out), "--format", "csv", "--no-progress", "--mpp", "0.55"]) == 0
    # The bundled default classifies: its class and probability columns follow the score.
    assert (out / "sample.csv").read_text().startswith("x,y,score,class,p_epithelial,p_fibroblast,p_inflammatory,p_others\n")
    truth = tmp_path / "truth"
    truth.mkdir()
    shutil.copy(SAMPLE_TRUTH, truth)
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(out), "--truth", str(truth), "--radius", "6"]) == 0
    folder = capsys.readouterr().out
    assert "1 images, radius 6 px: P " in folder and "best on this set: score > " in folder
    f1 = float(folder.split("radius 6 px: ")[1].split("F1 ")[1].split()[0])
    assert f1 > 0.9  # the bundled model on its own sample
    # one file against one file, and against a folder with --image
    assert main(["evaluate", "--pred", str(out / "sample.csv"), "--truth", str(SAMPLE_TRUTH), "--radius", "6"]) == 0
    assert f"F1 {f1:.4f}" in capsys.readouterr().out
    assert main(["evaluate", "--pred", str(out / "sample.csv"), "--truth", str(truth), "--image", "sample", "--radius", "6"]) == 0
    assert f"F1 {f1:.4f}" in capsys.readouterr().out


def test_slide_csv_of_detect_scores_in_pixels(tmp_path, capsys):
    # The slide pipeline's own writer: header x,y,x_um,y_um,score
    from micronet.runtime.runs.slide_outputs import append_csv, start_csv

    truth_xy = np.array([[100.0, 200.0], [400.0, 50.0], [900.0, 900.0]])
    found = np.array([[101.0, 200.0], [400.0, 52.0], [10.0, 10.0]], dtype=np.float32)
    pred, truth = tmp_path / "out", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    with open(pred / "CMU-1-Small-Region.csv", "wb") as f:
        start_csv(f)
        append_csv(f, found, np.array([3.0, 2.5, 2.1], dtype=np.float32), (0.499, 0.499))
    write_points_csv(truth / "CMU-1-Small-Region.csv", truth_xy)
    assert evaluate.run(parse("--pred", str(pred), "--truth", str(truth), "--radius", "6", "--threshold", "2.2")) == 0
    out = capsys.readouterr().out
    assert "1 images, radius 6 px: P 1.0000  R 0.6667  F1 0.8000  ED 1.500 px" in out
    assert "threshold: score > 2.2 (given)" in out


@pytest.mark.data
@pytest.mark.slow
def test_a_real_slide_run_of_detect_scores_against_itself(tmp_path, capsys, shared_data):
    pytest.importorskip("onnxruntime")
    from micronet.runtime.points import read_points_csv

    from micronet.cli import main

    slide = shared_data / "slides" / "CMU-1-Small-Region.svs"
    if not slide.is_file():
        pytest.skip(f"{slide} not found")
    out = tmp_path / "out"
    assert main(["detect", str(slide), "--out", str(out), "--format", "csv", "--no-progress", "--model", "fast-cpu"]) == 0
    csv = out / "CMU-1-Small-Region.csv"
    assert csv.read_text().startswith("x,y,x_um,y_um,score,class,p_epithelial,p_fibroblast,p_inflammatory,p_others\n")
    truth = tmp_path / "truth"
    truth.mkdir()
    n = len(read_points_csv(csv))
    write_points_csv(truth / csv.name, read_points_csv(csv))
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(out), "--truth", str(truth), "--radius", "6"]) == 0
    out = capsys.readouterr().out
    assert "1 images, radius 6 px: P 1.0000  R 1.0000  F1 1.0000  ED 0.000 px" in out
    assert f" {n}      0      0  1.0000" in out  # every nucleus, in level-0 pixels


def _data_set(root: Path) -> Path:
    (root / "points").mkdir(parents=True)
    write_points_csv(root / "points" / "img1.csv", [[10, 10]])
    write_points_csv(root / "points" / "img2.csv", [[20, 20], [60, 60]])
    write_points_csv(root / "points" / "img3.csv", [[30, 30]])
    (root / "split.csv").write_text("name,split\nimg1,train\nimg2,test\nimg3,test\n")
    return root


def test_split_with_pred_scores_only_that_split(tmp_path, capsys):
    root = _data_set(tmp_path / "set")
    pred = tmp_path / "pred"
    pred.mkdir()
    for name, xy in {"img1": [[0, 0]], "img2": [[20, 21], [60, 60]], "img3": [[30, 30]]}.items():
        write_points_csv(pred / f"{name}.csv", xy, scores=[0.9] * len(xy))
    for source in (("--truth", str(root)), ("--truth", str(root / "points")), ("--data", str(root))):
        out = tmp_path / "r.json"
        assert evaluate.run(parse("--pred", str(pred), *source, "--split", "test", "--radius", "6", "--json", str(out))) == 0
        text = capsys.readouterr().out
        assert "2 images, radius 6 px: P 1.0000  R 1.0000  F1 1.0000" in text and "img1" not in text.split("not scored")[0]
        assert "not scored: 1 prediction files of annotated images outside split 'test'" in text
        d = json.loads(out.read_text())
        assert [r["name"] for r in d["per_image"]] == ["img2", "img3"] and d["split"] == "test" and d["selection"] == "split 'test'"
    plain = tmp_path / "plain"
    shutil.copytree(root / "points", plain)
    with pytest.raises(ValueError, match=r"split='test': needs a data set folder with split.csv"):
        evaluate.run(parse("--pred", str(pred), "--truth", str(plain), "--split", "test", "--radius", "6"))
    with pytest.raises(ValueError, match=r"--data .*plain: expected a data set folder with points/ inside"):
        evaluate.run(parse("--pred", str(pred), "--data", str(plain), "--split", "test", "--radius", "6"))


def test_one_prediction_file_and_its_mismatches_are_explained(tmp_path, capsys):
    root = _data_set(tmp_path / "set")
    one = tmp_path / "img2.csv"
    write_points_csv(one, [[20, 20]])
    assert evaluate.run(parse("--pred", str(one), "--truth", str(root / "points" / "img2.csv"), "--radius", "6")) == 0
    assert "1 images, radius 6 px: P 1.0000  R 0.5000" in capsys.readouterr().out
    assert evaluate.run(parse("--pred", str(one), "--data", str(root), "--image", "img2", "--radius", "6")) == 0
    assert "1 images, radius 6 px: P 1.0000  R 0.5000" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"--pred .*img2.csv is one image's CSV but --truth .*set is a folder: name its image with --image NAME, here --image img2"):
        evaluate.run(parse("--pred", str(one), "--truth", str(root), "--radius", "6"))
    with pytest.raises(ValueError, match=r"--split selects images for a folder of predictions, but --pred .* is one file"):
        evaluate.run(parse("--pred", str(one), "--truth", str(root), "--split", "test", "--radius", "6"))
    with pytest.raises(ValueError, match=r"--truth .*img2.csv is one image's annotations but --pred .* is a folder"):
        evaluate.run(parse("--pred", str(tmp_path), "--truth", str(root / "points" / "img2.csv"), "--radius", "6"))
    with pytest.raises(FileNotFoundError, match="--pred: no such file or folder"):
        evaluate.run(parse("--pred", str(tmp_path / "nope.csv"), "--truth", str(root), "--radius", "6"))


def test_header_only_csvs_and_a_bom_are_still_accepted(tmp_path, capsys):
    truth, pred = tmp_path / "t", tmp_path / "p"
    truth.mkdir()
    pred.mkdir()
    (truth / "a.csv").write_bytes(b"\xef\xbb\xbfx,y\r\n1,1\r\n")
    (pred / "a.csv").write_bytes(b"\xef\xbb\xbfx,y,score\r\n")
    (truth / "b.csv").write_text("x,y\n")
    (pred / "b.csv").write_bytes(b"\xef\xbb\xbfx,y\n")
    assert evaluate.run(parse("--pred", str(pred), "--truth", str(truth), "--radius", "6")) == 0
    out = capsys.readouterr().out
    assert "2 images, radius 6 px: P 1.0000  R 0.0000  F1 0.0000  ED - px" in out
    assert "threshold: every detection in the files (no detections)" in out
