"""``micronet detect`` and ``micronet export`` from the command line (micronet.cli)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from micronet.runtime.points import read_points_csv

from micronet.cli import main


def _blur_model(path: Path) -> Path:
    """A MicroNet-signature ONNX model (uint8 N×H×W×3 → float32 N×1×H×W) whose map is
    the image's darkness, box-blurred twice: dark round blobs peak at their centres."""
    onnx = pytest.importorskip("onnx")
    from micronet.runtime.model_info import METADATA_KEY, ModelInfo
    from onnx import TensorProto, helper

    pool = {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2], "count_include_pad": 0}
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["rgb"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["rgb"], ["mean"], axes=[3], keepdims=1),
            helper.make_node("Sub", ["c255", "mean"], ["dark"]),
            helper.make_node("Mul", ["dark", "inv255"], ["dark01"]),
            helper.make_node("Transpose", ["dark01"], ["nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("AveragePool", ["nchw"], ["blur"], **pool),
            helper.make_node("AveragePool", ["blur"], ["proximity"], **pool),
        ],
        "blurred_darkness",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("proximity", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0]), helper.make_tensor("inv255", TensorProto.FLOAT, [], [1 / 255])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    # Claimed as MicroNet so the Detector's default tile margin (80 px) applies; it is
    # larger than this model's 4 px receptive radius, so tiling stays exact.
    info = ModelInfo(architecture={"name": "micronet"}, mean=[0.0] * 3, std=[1.0] * 3, mpp=0.55, threshold=0.2, min_distance=3)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    onnx.save(model, str(path))
    return path


def _blobs(path: Path, centres: list[tuple[int, int]], shape: tuple[int, int] = (120, 160)) -> Path:
    from micronet.runtime.diagnostics.synthetic import blob_image
    from PIL import Image

    Image.fromarray(blob_image(*shape, centres)).save(path)
    return path


CENTRES = [(30, 30), (80, 40), (130, 90), (40, 95)]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _blur_model(tmp_path_factory.mktemp("model") / "blur.onnx")


def test_detect_writes_csv_geojson_and_overlay(model, tmp_path, capsys):
    image = _blobs(tmp_path / "slide_crop.png", CENTRES)
    out = tmp_path / "out"
    assert main(["detect", str(image), "--model", str(model), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert "4 nuclei in 1 image" in capsys.readouterr().out

    csv = out / "slide_crop.csv"
    assert csv.read_text().splitlines()[0] == "x,y,score"
    np.testing.assert_array_equal(sorted(map(tuple, read_points_csv(csv))), sorted(CENTRES))
    collection = json.loads((out / "slide_crop.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 4
    assert collection["features"][0]["properties"]["objectType"] == "detection"
    from PIL import Image

    with Image.open(out / "slide_crop.overlay.png") as overlay:
        assert overlay.format == "PNG" and overlay.size == (160, 120)


def test_detect_folder_with_chosen_formats_and_mpp(model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    _blobs(folder / "a.png", CENTRES)
    # Twice the model's pixel size: half as many pixels per nucleus.
    _blobs(folder / "b.png", [(20, 20), (60, 40)], shape=(80, 100))
    out = tmp_path / "out"
    argv = ["detect", str(folder), "--model", str(model), "--out", str(out), "--format", "csv", "--mpp", "0.55", "--no-progress"]
    assert main(argv) == 0
    # The outputs asked for and the run's summary, what a user reads; each input's record
    # (settings, checksums, detections) in the hidden folder; no lock or partial file is left.
    assert sorted(p.name for p in out.iterdir()) == [".micronet", "a.csv", "b.csv", "run_summary.csv"]
    records = ["a.progress.bin", "a.progress.json", "b.progress.bin", "b.progress.json"]
    assert sorted(p.name for p in (out / ".micronet").iterdir()) == records


def test_batch_without_a_terminal_prints_a_line_per_input_and_no_bars(model, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    _blobs(folder / "a.png", CENTRES)
    _blobs(folder / "b.png", CENTRES[:2])
    # --deblur none: the synthetic blobs are smooth, out of focus by the edge measure, and a
    # deconvolution would ring around them (the counts below are the blobs').
    assert main(["detect", str(folder), "--model", str(model), "--out", str(tmp_path / "out"), "--mpp", "0.55", "--deblur", "none"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "[1/2] a.png: 4 nuclei in " in err and "[2/2] b.png: 2 nuclei in " in err


def test_the_assumed_pixel_size_is_said_once_per_run(model, tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        _blobs(folder / name, CENTRES)
    with caplog.at_level("WARNING"):
        assert main(["detect", str(folder), "--model", str(model), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    said = [r.getMessage() for r in caplog.records if "pixel size" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith("3 of 3 images record no pixel size: assumed the model's 0.55 µm/px; pass --mpp UM")
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main(["detect", str(folder), "--model", str(model), "--out", str(tmp_path / "o2"), "--no-progress", "--mpp", "0.55"]) == 0
    assert not [r for r in caplog.records if "pixel size" in r.getMessage()]


def test_an_image_is_run_at_the_pixel_size_its_file_records(model, tmp_path):
    from micronet.runtime import images

    if not hasattr(images, "image_pixel_size"):
        pytest.skip("micronet.runtime.images.image_pixel_size not there yet")
    from micronet.runtime.diagnostics.synthetic import blob_image
    from PIL import Image

    # Blobs drawn at 0.275 µm/px (twice the model's resolution), pHYs saying so.
    Image.fromarray(blob_image(240, 320, [(2 * x, 2 * y) for x, y in CENTRES])).save(tmp_path / "fine.png", dpi=(0.0254e6 / 0.275,) * 2)
    out = tmp_path / "out"
    assert main(["detect", str(tmp_path / "fine.png"), "--model", str(model), "--out", str(out), "--no-progress"]) == 0
    settings = json.loads((out / ".micronet" / "fine.progress.json").read_text())["settings"]
    assert settings["mpp"] == pytest.approx(0.275, rel=1e-3)


def test_the_cli_reads_formats_with_the_runs_package_table():
    """One table of output formats and one parser of ``--format``: the runs package's."""
    from micronet.runtime.runs import outputs

    from micronet.commands import detect

    assert detect.FORMATS is outputs.FORMATS and detect.parse_formats is outputs.parse_formats
    assert outputs.parse_formats("PNG, csv,png") == ("png", "csv")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "csv,pdf"], "--format: expected a comma-separated list of csv, geojson, png"),
        (["--mpp", "-1"], "mpp"),
        (["--threshold", "nan"], "threshold"),
    ],
)
def test_detect_option_errors_are_one_line(model, tmp_path, capsys, argv, message):
    image = _blobs(tmp_path / "x.png", CENTRES)
    assert main(["detect", str(image), "--model", str(model), "--out", str(tmp_path / "o"), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("micronet detect: error:") and message in err and "Traceback" not in err


def test_detect_input_errors(model, tmp_path, capsys):
    out = ["--model", str(model), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(["detect", str(tmp_path / "missing.png"), *out]) == 2
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert main(["detect", str(tmp_path / "notes.txt"), *out]) == 2
    assert "expected an image or slide file" in capsys.readouterr().err
    for sub in ("p", "q"):
        (tmp_path / sub).mkdir()
        _blobs(tmp_path / sub / "same.png", CENTRES)
    assert main(["detect", str(tmp_path / "p" / "same.png"), str(tmp_path / "q" / "same.png"), *out]) == 2
    assert "same name" in capsys.readouterr().err
    assert main(["detect", str(tmp_path / "p" / "same.png"), "--model", str(model), "--no-progress"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    assert main(["detect", "--out", str(tmp_path / "o")]) == 2
    assert "expected INPUT" in capsys.readouterr().err


def test_slides_go_to_the_slide_reader(model, tmp_path, capsys):
    (tmp_path / "scan.svs").write_bytes(b"\0")
    assert main(["detect", str(tmp_path / "scan.svs"), "--model", str(model), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "scan.svs" in err and "not a readable TIFF" in err and "Traceback" not in err  # the slide reader refuses the damaged file


def test_every_suffix_a_slide_reader_opens_is_a_slide_input(model, tmp_path, capsys):
    """One registry of slide suffixes: a DICOM-WSI file (OpenSlide reads it, ``--reader``
    says so) reaches the slide reader, whose error names the file, rather than being
    refused as not an image or slide."""
    from micronet.runtime.runs import batch, inputs
    from micronet.runtime.slide import reader

    assert batch.SLIDE_SUFFIXES is reader.SLIDE_SUFFIXES
    assert set(reader.TIFFFILE_SUFFIXES + reader.OPENSLIDE_SUFFIXES) <= set(inputs.INPUT_SUFFIXES) | set(reader.OME_SUFFIXES)
    (tmp_path / "scan.dcm").write_bytes(b"\0" * 300)
    assert batch.is_slide(tmp_path / "scan.dcm")
    assert main(["detect", str(tmp_path / "scan.dcm"), "--model", str(model), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "scan.dcm" in err and "expected an image or slide file" not in err and "Traceback" not in err
    assert "OpenSlide" in err  # the reader's own message (cannot read it, or how to install it)


def test_a_real_slide_is_detected_tile_by_tile(model, tmp_path, capsys, shared_data):
    slide = shared_data / "slides" / "OS-1-detail.ome.tif"
    if not slide.is_file():
        pytest.skip(f"{slide} not found")
    out = tmp_path / "o"
    assert main(["detect", str(slide), "--model", str(model), "--out", str(out), "--format", "csv", "--no-progress"]) == 0
    assert "1 slide" in capsys.readouterr().out
    assert (out / "OS-1-detail.csv").is_file()


def test_demo_runs_the_bundled_model_on_real_h_and_e(tmp_path):
    """The demo image is a 512² region of the CMU-1 slide at 0.499 µm/px (its pHYs),
    resampled to the model's 0.55; the default model finds the nuclei of that region."""
    from micronet.runtime.bundled import bundled_demo
    from micronet.runtime.images import image_pixel_size
    from micronet.runtime.points import read_points_csv

    assert bundled_demo().stat().st_size < 600_000
    assert image_pixel_size(bundled_demo()) == (pytest.approx(0.499), "PNG pHYs")
    code = main(["detect", "--demo", "--out", str(tmp_path / "demo"), "--device", "cpu", "--no-progress"])
    assert code == 0
    outputs = ["demo_cmu1.csv", "demo_cmu1.geojson", "demo_cmu1.overlay.png"]
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == sorted([".micronet", *outputs, "run_summary.csv"])
    found = read_points_csv(tmp_path / "demo" / "demo_cmu1.csv")
    assert 250 <= len(found) <= 500  # dense epidermis: 355 with the default model
    settings = json.loads((tmp_path / "demo" / ".micronet" / "demo_cmu1.progress.json").read_text())["settings"]
    assert settings["mpp"] == pytest.approx(0.499)
    assert main(["detect", "--demo", "x.png"]) == 2


def test_the_bundled_sample_still_finds_its_true_nuclei():
    """The synthetic sample (a reference image of micronet check) with its true centres."""
    from micronet.runtime.detector import Detector, bundled_sample
    from micronet.runtime.evaluation.matching import evaluate_points
    from micronet.runtime.points import read_points_csv

    truth = read_points_csv(Path(__file__).resolve().parents[1] / "runtime" / "models" / "sample.csv")
    found = Detector(device="cpu").detect(bundled_sample(), mpp=0.55)
    assert evaluate_points(found.xy, truth, radius=6).f1 >= 0.95


# --- export ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from micronet.runtime.model_info import ModelInfo
    from micronet.trainer.checkpoint import save_checkpoint
    from micronet.trainer.models import create_model

    model = create_model("micronet_tiny").eval()
    info = ModelInfo(architecture=model.config_dict(), mean=[180.0, 130.0, 170.0], std=[40.0, 45.0, 35.0], mpp=0.55, threshold=0.1)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", model, info)


def test_export_writes_a_valid_onnx_model_that_detect_runs(checkpoint, tmp_path, capsys):
    import onnx

    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint), "-o", str(out), "--precision", "fp32"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["micronet"]["precision"] == "fp32" and meta["micronet"]["mpp"] == 0.55
    image = _blobs(tmp_path / "x.png", CENTRES)
    assert main(["detect", str(image), "--model", str(out), "--out", str(tmp_path / "o"), "--format", "csv", "--no-progress"]) == 0
    assert (tmp_path / "o" / "x.csv").is_file()


def test_export_names_the_output_after_the_checkpoint(checkpoint, tmp_path):
    local = tmp_path / checkpoint.name
    local.write_bytes(checkpoint.read_bytes())
    assert main(["export", str(local)]) == 0
    assert (tmp_path / "tiny.onnx").is_file()


def test_export_errors_are_one_line(checkpoint, tmp_path, capsys):
    assert main(["export", str(checkpoint), "--precision", "int8"]) == 2
    assert "needs --calibration-data" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--calibration-data", str(tmp_path)]) == 2
    assert "int8 only" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.safetensors")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "model.engine")]) == 2
    assert "ending in .onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(checkpoint), "--precision", "fp8"])
    assert exit_info.value.code == 2 and "choose from 'fp32', 'fp16', 'int8'" in capsys.readouterr().err


# --- bench ----------------------------------------------------------------------------


def test_bench_prints_a_row_per_model_and_writes_json(model, tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    report = tmp_path / "bench.json"
    argv = ["bench", "--model", str(model), str(broken), "--size", "96", "--batch", "2", "--repeat", "3", "--warmup", "1", "--json", str(report)]
    assert main(argv) == 1  # one model failed
    table = capsys.readouterr().out
    assert table.startswith("machine: ") and " cores, " in table.splitlines()[0] and "GFLOP/s" in table.splitlines()[0]
    assert "| model | format | backend | status | size MB |" in table and "| × first | MP/s per 100 GFLOP/s |" in table
    assert "| blur.onnx | onnx-fp32 | onnxruntime-" in table and "| ok |" in table
    assert "| broken.onnx | onnx | - | InputError:" in table and "not an ONNX model" in table
    payload = json.loads(report.read_text())
    rows = payload["results"]
    ok = rows[0]
    assert ok["status"] == "ok" and ok["f1"] is None and ok["images_per_s"] > 0
    assert ok["megapixels_per_s"] == pytest.approx(ok["images_per_s"] * 96 * 96 / 1e6)
    assert ok["p50_ms"] <= ok["p99_ms"] and ok["nuclei_per_s"] >= 0
    assert rows[1]["images_per_s"] is None and rows[1]["speed_vs_first"] is None
    # The machine the numbers belong to, and the ratios that transfer to another one.
    machine = payload["machine"]
    assert {"cpu", "isa", "physical_cores", "numpy_matmul_gflops", "ort_matmul_gflops", "gpus"} <= set(machine)
    assert machine["matmul_peak_gflops"] == max(machine["numpy_matmul_gflops"], machine["ort_matmul_gflops"]) > 0
    assert ok["speed_vs_first"] == 1.0
    assert ok["megapixels_per_s_per_100_gflops"] == pytest.approx(100 * ok["megapixels_per_s"] / machine["matmul_peak_gflops"])


def test_the_onnx_runtime_matmul_yardstick_multiplies_matrices():
    # The runtime encodes the one-node MatMul model itself (no onnx package needed).
    ort = pytest.importorskip("onnxruntime")
    from micronet.runtime.diagnostics.bench import _matmul_onnx, ort_matmul_gflops

    session = ort.InferenceSession(_matmul_onnx(3), providers=["CPUExecutionProvider"])
    a = np.arange(9, dtype=np.float32).reshape(3, 3)
    b = np.eye(3, dtype=np.float32)[::-1].copy()
    np.testing.assert_array_equal(session.run(None, {"a": a, "b": b})[0], a @ b)
    assert ort_matmul_gflops(size=64, repeat=2) > 0


def test_the_int8_matmul_yardstick_multiplies_u8_by_s8_exactly():
    # The product int8 convolutions are made of: uint8 activations by int8 weights into
    # int32, exact on every CPU (7-bit weights, as the int8 exports use, cannot saturate).
    ort = pytest.importorskip("onnxruntime")
    from micronet.runtime.diagnostics.bench import (
        INT8_KEY,
        _matmul_onnx,
        machine_record,
        ort_int8_matmul_gops,
        run_line,
    )

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (5, 5), dtype=np.uint8)
    b = rng.integers(-64, 65, (5, 5), dtype=np.int8)
    out = ort.InferenceSession(_matmul_onnx(5, integer=True), providers=["CPUExecutionProvider"]).run(None, {"a": a, "b": b})[0]
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, a.astype(np.int32) @ b.astype(np.int32))
    assert ort_int8_matmul_gops(size=64, repeat=2) > 0
    # Recorded beside the float32 peak, never as one.
    machine = machine_record([{"numpy": 50.0, "onnxruntime": 60.0, INT8_KEY: 240.0}, {"numpy": 55.0, "onnxruntime": 58.0, INT8_KEY: 200.0}])
    assert machine["matmul_peak_gflops"] == 60.0 and machine["ort_int8_matmul_gops"] == 240.0
    assert all(INT8_KEY not in m for m in machine["matmul_measurements_gflops"])
    assert "int8 matmul 240 G op/s" in run_line(machine)


def test_bench_speed_ratios_are_against_the_first_model_that_ran():
    from micronet.runtime.diagnostics.bench import BenchResult, compare

    rows = [
        BenchResult("broken.onnx", "onnx", status="ValueError: not a model"),
        BenchResult("a.onnx", "onnx-fp32", backend="onnxruntime-cpu", images_per_s=2.0, megapixels_per_s=0.5),
        BenchResult("b.int8.onnx", "onnx-int8", backend="onnxruntime-cpu", images_per_s=5.0, megapixels_per_s=1.25),
        BenchResult("c.engine", "tensorrt-fp16", backend="tensorrt", images_per_s=40.0, megapixels_per_s=10.0),
    ]
    compare(rows, peak_gflops=50.0)
    assert [r.speed_vs_first for r in rows] == [None, 1.0, 2.5, 20.0]
    # Per unit of the CPU's matmul peak for CPU backends only: a GPU's speed owes nothing to it.
    assert [r.megapixels_per_s_per_100_gflops for r in rows] == [None, 1.0, 2.5, None]


def test_bench_scores_the_labelled_split(model, capsys, shared_data):
    argv = ["bench", "--model", str(model), "--data", str(shared_data / "crchisto"), "--split", "val", "--size", "64", "--repeat", "1", "--warmup", "0"]
    assert main(argv) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| blur.onnx")][0]
    f1 = float(row.split("|")[8])
    assert 0.0 <= f1 <= 1.0


def test_bench_option_errors(model, capsys):
    assert main(["bench", "--model", str(model), "--repeat", "0"]) == 2
    assert "repeat: expected an integer >= 1" in capsys.readouterr().err
    assert main(["bench", "--model", str(model), "--split", "val"]) == 2
    assert "--split applies with --data only" in capsys.readouterr().err


def test_normalize_auto_the_default_recovers_a_darkened_image_and_leaves_a_clean_one(tmp_path, shared_data):
    from PIL import Image

    name = sorted((shared_data / "crchisto" / "images").glob("*.png"))[0]
    clean = np.asarray(Image.open(name).convert("RGB"))
    Image.fromarray(clean).save(tmp_path / "clean.png")
    Image.fromarray((clean * 0.45).astype(np.uint8)).save(tmp_path / "dark.png")
    counts = {}
    for normalize in (["--normalize", "none"], []):  # the default is auto
        out = tmp_path / f"out{len(normalize)}"
        args = ["detect", str(tmp_path / "clean.png"), str(tmp_path / "dark.png"), "--out", str(out), "--model", "fast-cpu"]
        assert main(args + ["--mpp", "0.55", "--format", "csv", *normalize]) == 0
        counts[not normalize] = {p: len(read_points_csv(out / f"{p}.csv")) for p in ("clean", "dark")}
    assert counts[True]["clean"] == counts[False]["clean"] > 20  # inside the training colours: untouched
    assert counts[False]["dark"] < 0.2 * counts[False]["clean"]  # darkened: the model misses most nuclei ...
    assert counts[True]["dark"] > 0.7 * counts[False]["clean"]  # ... until it is normalised
