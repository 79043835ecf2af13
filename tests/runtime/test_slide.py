"""Whole-slide reading and detection (``micronet.runtime.slide``).

Real slides come from ``shared/data/slides`` (skipped when absent); synthetic pyramidal
TIFFs are mosaics of real CRCHistoPhenotypes images written with tifffile. The model is
the tiny random MicroNet of ``conftest.py``, with its threshold raised so that it finds
about as many peaks as a 500×500 CRCHisto image has nuclei (keeps the outputs small).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")
from PIL import Image  # noqa: E402

from micronet.runtime.detections import Detections  # noqa: E402
from micronet.runtime.slide import open_slide, plan_slide, tissue_mask  # noqa: E402

CMU = "CMU-1-Small-Region.svs"
OS1 = "OS-1-detail.ome.tif"
SYNTH_MPP = 0.55  # the tiny model's pixel size: no resampling


# --- fixtures -------------------------------------------------------------------------------


def real_slide(shared_data: Path, name: str) -> Path:
    path = shared_data / "slides" / name
    if not path.is_file():
        pytest.skip(f"real slide {name} not found in {path.parent} (set MICRONET_DATA to the shared/data folder)")
    return path


def mosaic(images: list[np.ndarray], rows: int, cols: int, glass_from_col: int | None = None) -> np.ndarray:
    """``rows × cols`` CRCHisto images side by side; columns from ``glass_from_col`` on
    are replaced by glass (near-white, slightly noisy)."""
    grid = [np.concatenate([images[(r * cols + c) % len(images)] for c in range(cols)], axis=1) for r in range(rows)]
    out = np.concatenate(grid, axis=0)
    if glass_from_col is not None:
        rng = np.random.default_rng(0)
        x0 = glass_from_col * images[0].shape[1]
        glass = 238 + rng.integers(-3, 4, size=out[:, x0:].shape)
        out[:, x0:] = glass.astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory, crchisto_images: list[np.ndarray], write_pyramid) -> tuple[Path, np.ndarray]:
    """A 2500×1500 (W×H) pyramidal TIFF at 0.55 µm/px whose right fifth is glass, and its
    level-0 pixels as decoded."""
    image = mosaic(crchisto_images, rows=3, cols=5, glass_from_col=4)
    path = write_pyramid(tmp_path_factory.mktemp("slides") / "synthetic.tif", image, SYNTH_MPP)
    return path, tifffile.imread(path)


@pytest.fixture(scope="module")
def slide_detector(tiny_onnx: Path, crchisto_images: list[np.ndarray]):
    """The tiny model with ~300 peaks per CRCHisto image; 512 px tiles in batches of 2, so
    small slides still make several batches."""
    from micronet.runtime.detector import Detector

    base = Detector(tiny_onnx, device="cpu", threads=2)
    scores = base.detect(crchisto_images[0]).scores
    threshold = float(scores[min(299, len(scores) - 1)])
    return Detector(tiny_onnx, device="cpu", threads=2, threshold=threshold, tile_size=512, batch_size=2)


def same_detections(a: Detections, b: Detections, atol: float = 0.0) -> None:
    assert len(a) == len(b), (len(a), len(b))
    ia, ib = np.lexsort((a.xy[:, 0], a.xy[:, 1])), np.lexsort((b.xy[:, 0], b.xy[:, 1]))
    np.testing.assert_allclose(a.xy[ia], b.xy[ib], atol=atol, rtol=0)
    np.testing.assert_array_equal(a.scores[ia], b.scores[ib])


def check_outputs(out: Path, stem: str, found: Detections, mpp_xy: tuple[float, float]) -> None:
    """The CSV, GeoJSON and overlay PNG in ``out`` hold ``found``."""
    with open(out / f"{stem}.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["x", "y", "x_um", "y_um", "score"]
    table = np.array(rows[1:], dtype=np.float64).reshape(-1, 5)
    assert len(table) == len(found)
    # Rows are in tile order; the result is sorted by score. Same set, exact float32.
    xy = table[:, :2].astype(np.float32)
    order = np.lexsort((xy[:, 0], xy[:, 1]))
    ref = np.lexsort((found.xy[:, 0], found.xy[:, 1]))
    np.testing.assert_array_equal(xy[order], found.xy[ref])
    np.testing.assert_allclose(table[:, 2:4], (table[:, :2] + 0.5) * np.array(mpp_xy), atol=1e-3)

    collection = json.loads((out / f"{stem}.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == len(found)
    assert all(f["geometry"]["type"] == "Point" and f["properties"]["objectType"] == "detection" for f in features)
    if len(found):  # the feature format is exactly Detections.to_geojson's
        first = np.array(features[0]["geometry"]["coordinates"]) - 0.5
        k = int(np.argmin(np.abs(found.xy - first.astype(np.float32)).sum(1)))
        expected = Detections(found.xy[k : k + 1], found.scores[k : k + 1]).to_geojson()["features"][0]
        assert features[0] == expected

    with Image.open(out / f"{stem}.overlay.png") as im:
        assert im.mode == "RGB" and max(im.size) <= 2048
        drawn = (np.asarray(im) == (0, 255, 0)).all(axis=2)
        assert drawn.any() == bool(len(found))  # the circles
    state = json.loads((out / ".micronet" / f"{stem}.progress.json").read_text())
    assert state["complete"] and state["detections"] == len(found)


# --- reading ---------------------------------------------------------------------------------


def test_pixel_sizes_read_from_real_slide_metadata(shared_data: Path) -> None:
    with open_slide(real_slide(shared_data, CMU)) as slide:
        assert slide.format == "svs"
        assert slide.mpp == pytest.approx(0.499)
        assert "Aperio" in slide.mpp_source
        assert slide.shape == (2967, 2220)
    with open_slide(real_slide(shared_data, OS1)) as slide:
        assert slide.format == "ome-tiff"
        assert slide.mpp == pytest.approx(0.2271, abs=1e-4)
        assert slide.mpp_xy[0] == pytest.approx(0.22709724303947)
        assert slide.shape == (1101, 1101)


@pytest.mark.parametrize("name", [CMU, OS1])
def test_read_region_decodes_the_same_pixels_as_a_full_read(shared_data: Path, name: str) -> None:
    path = real_slide(shared_data, name)
    full = tifffile.imread(path, key=0)
    with open_slide(path) as slide:
        h, w = slide.shape
        # a window across tile boundaries, one touching the bottom-right corner, and all
        for x, y, ww, hh in [(201, 233, 517, 301), (w - 37, h - 11, 37, 11), (0, 0, w, h)]:
            np.testing.assert_array_equal(slide.read_region(0, x, y, ww, hh), full[y : y + hh, x : x + ww])


def test_pyramid_levels_and_thumbnail(synthetic: tuple[Path, np.ndarray]) -> None:
    path, pixels = synthetic
    with open_slide(path) as slide:
        assert slide.format == "tiff" and slide.mpp == pytest.approx(SYNTH_MPP)
        assert [lv.shape for lv in slide.levels] == [(1500, 2500), (375, 625)]
        assert slide.levels[1].downsample == pytest.approx(4.0)
        thumb = slide.read_thumbnail(max_size=300)
        assert max(thumb.image.shape[:2]) <= 300
        assert thumb.level == 1 and thumb.factor == 3  # 625 / 3 ≤ 300 from the 4× level
        window = slide.read_region(1, 10, 20, 100, 50)
        assert window.shape == (50, 100, 3) and window.dtype == np.uint8


def test_tissue_mask_separates_tissue_from_glass(shared_data: Path, crchisto_images: list[np.ndarray]) -> None:
    image = mosaic(crchisto_images, rows=1, cols=4, glass_from_col=2)
    mask = tissue_mask(image[::4, ::4])
    assert mask[:, :240].mean() > 0.4  # tissue (the first images are partly fat: white)
    assert mask[:, 260:].mean() == 0.0  # glass
    # A field that is all tissue stays all tissue: Otsu's cut is clipped, so it does
    # not split stained tissue from stained tissue.
    dense = tifffile.imread(real_slide(shared_data, OS1), key=0)[::3, ::3]
    assert tissue_mask(dense).mean() > 0.95


# --- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize("mpp", [None, 0.5], ids=["model-pixels", "resampled"])
def test_slide_detection_equals_detect_on_the_whole_region(slide_detector, synthetic: tuple[Path, np.ndarray], mpp) -> None:
    path, pixels = synthetic
    x, y, w, h = 300, 200, 1000, 800
    found = slide_detector.detect_slide(path, region=(x, y, w, h), mpp=mpp, tissue_only=False, progress=False)
    whole = slide_detector.detect(pixels[y : y + h, x : x + w], mpp=SYNTH_MPP if mpp is None else mpp)
    assert len(found) > 100
    assert found.image_shape == (1500, 2500)
    same_detections(found, whole.offset(x, y), atol=1e-3)  # exact up to float32 rounding of the offset


@pytest.mark.parametrize("name", [CMU, OS1])
def test_real_slides_run_end_to_end(slide_detector, shared_data: Path, tmp_path: Path, name: str) -> None:
    from micronet.runtime.detector import Detector

    path = real_slide(shared_data, name)
    # The default tile (from the model's activation memory: 800 px for the tiny model in batches of 2): less overlap
    # to pay for on the larger slide than the fixture's 512 px.
    det = Detector(slide_detector.model_path, device="cpu", threads=2, threshold=slide_detector.threshold, batch_size=2)
    found = det.detect_slide(path, out_dir=tmp_path, progress=False)
    with open_slide(path) as slide:
        mpp, mpp_xy, shape = slide.mpp, slide.mpp_xy, slide.shape
    assert len(found) > 50 and found.mpp == pytest.approx(mpp)
    assert (found.xy >= -0.5).all() and (found.xy[:, 0] < shape[1]).all() and (found.xy[:, 1] < shape[0]).all()
    check_outputs(tmp_path, name.split(".")[0], found, mpp_xy)


def test_glass_is_skipped(slide_detector, synthetic: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = synthetic
    region = (1200, 0, 1300, 700)  # glass from x = 2000 on
    found = slide_detector.detect_slide(path, region=region, out_dir=tmp_path, formats=("csv",), progress=False)
    state = json.loads((tmp_path / ".micronet" / "synthetic.progress.json").read_text())
    assert state["tiles_total"] < state["tiles_planned"]  # tiles on glass alone are not run
    # Nothing lies beyond the tissue margin (50 µm ≈ 92 px) and the core (352 px) of a
    # tile that touches it.
    assert len(found) and (found.xy[:, 0] < 2000 + 92 + 352 + 8).all()


def test_plan_slide_is_what_detect_slide_runs(slide_detector, synthetic: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, pixels = synthetic
    region = (1200, 0, 1300, 700)
    with open_slide(path) as slide:
        plan = plan_slide(slide_detector, slide, region=region)
        everything = plan_slide(slide_detector, slide, region=region, tissue_only=False)
        tile = plan.tiles[0]
        read = plan.grid.read_tile(slide, tile)
    slide_detector.detect_slide(path, region=region, out_dir=tmp_path, formats=("csv",), progress=False)
    state = json.loads((tmp_path / ".micronet" / "synthetic.progress.json").read_text())
    assert (len(plan.tiles), plan.tiles_planned) == (state["tiles_total"], state["tiles_planned"])
    assert everything.tiles_planned == len(everything.tiles) == plan.tiles_planned and everything.thumbnail is None
    assert set(plan.tiles) < set(everything.tiles) and plan.thumbnail is not None
    assert plan.level.index == 0 and plan.region == region and plan.mpp == pytest.approx(SYNTH_MPP)
    assert not plan.grid.resampled  # the tiny model's pixel size: the level's pixels as they are
    y0, x0 = region[1] + tile.y0, region[0] + tile.x0
    np.testing.assert_array_equal(read, pixels[y0 : y0 + tile.shape[0], x0 : x0 + tile.shape[1]])


def test_resume_after_interruption_gives_identical_files(slide_detector, synthetic: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = synthetic
    region = (0, 0, 1300, 1100)
    whole = slide_detector.detect_slide(path, region=region, out_dir=tmp_path / "whole", progress=False)

    class Interrupted(Exception):
        pass

    def stop_after_two_batches(done: int, total: int) -> None:
        if done >= 2 * slide_detector.batch_size:
            raise Interrupted

    part = tmp_path / "part"
    with pytest.raises(Interrupted):  # serial reading here, prefetching above: same files
        slide_detector.detect_slide(path, region=region, out_dir=part, progress=False, queue_size=0, on_batch=stop_after_two_batches)
    # The interrupted run left valid files, under partial names in the hidden folder only
    # (issue 11: no file with a final name looks complete before it is) ...
    state = json.loads((part / ".micronet" / "synthetic.progress.json").read_text())
    assert state["tiles_done"] == 4 and not state["complete"] and state["tiles_total"] > 4
    assert not any((part / name).exists() for name in ("synthetic.csv", "synthetic.geojson", "synthetic.overlay.png"))
    json.loads((part / ".micronet" / "synthetic.geojson.partial").read_text())
    with open(part / ".micronet" / "synthetic.csv.partial") as f:
        assert len(f.readlines()) == state["detections"] + 1
    Image.open(part / ".micronet" / "synthetic.overlay.png.partial").verify()
    # ... and a batch torn by a kill (bytes past the recorded lengths) is dropped.
    with open(part / ".micronet" / "synthetic.csv.partial", "a") as f:
        f.write("12.5,3")
    with open(part / ".micronet" / "synthetic.geojson.partial", "ab") as f:
        f.write(b',{"type":"Feat')

    calls = []
    resumed = slide_detector.detect_slide(path, region=region, out_dir=part, progress=False, on_batch=lambda d, t: calls.append(d))
    assert calls[0] == 4 + slide_detector.batch_size  # carried on after the 4 tiles done
    same_detections(resumed, whole)
    for name in ("synthetic.csv", "synthetic.geojson", "synthetic.overlay.png"):
        assert (part / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert not list(part.rglob("*.partial")) and not list(part.rglob("*.tmp")) and not list(part.rglob("*.lock"))
    check_outputs(part, "synthetic", resumed, (SYNTH_MPP, SYNTH_MPP))

    # A finished run is not redone.
    calls.clear()
    again = slide_detector.detect_slide(path, region=region, out_dir=part, progress=False, on_batch=lambda d, t: calls.append(d))
    assert calls == []
    same_detections(again, whole)


# --- errors ----------------------------------------------------------------------------------


def test_bad_slides_raise_clear_errors(slide_detector, synthetic: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, pixels = synthetic
    with pytest.raises(FileNotFoundError, match="slide not found"):
        slide_detector.detect_slide(tmp_path / "missing.svs")

    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"this is not a tiff file" * 100)
    with pytest.raises(ValueError, match="not a readable TIFF"):
        slide_detector.detect_slide(junk)

    ndpi = tmp_path / "scan.ndpi"
    ndpi.write_bytes(b"II*\x00")
    # An NDPI goes to tifffile, then OpenSlide (issue 12): a damaged one gets one line naming both.
    with pytest.raises(ValueError, match=r"scan.ndpi: (neither tifffile .* nor OpenSlide .* reads it|not a readable TIFF)"):
        slide_detector.detect_slide(ndpi)
    png = tmp_path / "image.png"
    Image.fromarray(pixels[:64, :64]).save(png)
    with pytest.raises(ValueError, match=r"expected a slide file \(.*\.svs.*\), got '.png' \(a PNG image\)"):
        slide_detector.detect_slide(png)

    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, pixels[:256, :256, 0], tile=(128, 128))
    with pytest.raises(ValueError, match=r"expected an RGB slide.*\(256, 256\)"):
        slide_detector.detect_slide(gray, mpp=0.5)

    with pytest.raises(ValueError, match="has no level 2; its levels.*0: 2500×1500.*1: 625×375"):
        slide_detector.detect_slide(path, level=2)
    with pytest.raises(ValueError, match="region: expected .* inside the level-0 image"):
        slide_detector.detect_slide(path, region=(2000, 0, 1000, 100))
    with pytest.raises(ValueError, match="formats: expected one or more of csv, geojson, png"):
        slide_detector.detect_slide(path, out_dir=tmp_path, formats=("csv", "json"))


def test_slide_without_pixel_size_asks_for_mpp(slide_detector, synthetic: tuple[Path, np.ndarray], tmp_path: Path, write_pyramid) -> None:
    _, pixels = synthetic
    bare = write_pyramid(tmp_path / "bare.tif", pixels[:600, :700], mpp=None, downsamples=())
    with open_slide(bare) as slide:
        assert slide.mpp is None
    with pytest.raises(ValueError, match=r"records no pixel size .*pass mpp=.*--mpp"):
        slide_detector.detect_slide(bare, progress=False)
    found = slide_detector.detect_slide(bare, mpp=SYNTH_MPP, tissue_only=False, progress=False)
    assert found.mpp == SYNTH_MPP and len(found) > 0


def test_truncated_slide_fails_cleanly_and_leaves_valid_files(slide_detector, synthetic: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = synthetic
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * 0.6)])  # the IFD is first: it opens, the lower tiles are gone
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"cut.tif: level 0 tile \d+ is cut off .* the file is truncated"):
        slide_detector.detect_slide(cut, out_dir=out, formats="csv,geojson", tissue_only=False, progress=False)
    # The reader thread failed mid-run; the batches before it are in valid partial files,
    # and nothing has a final name.
    state = json.loads((out / ".micronet" / "cut.progress.json").read_text())
    assert 0 < state["tiles_done"] < state["tiles_total"] and not state["complete"]
    assert len(json.loads((out / ".micronet" / "cut.geojson.partial").read_text())["features"]) == state["detections"]
    assert not (out / "cut.csv").exists() and not (out / "cut.geojson").exists()


def test_slide_module_imports_no_torch() -> None:
    code = "import sys, micronet.runtime.slide; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- progress --------------------------------------------------------------------------------


def test_progress_bars_end_at_the_final_count_and_show_the_tissue_scan(slide_detector, synthetic, capsys, monkeypatch) -> None:
    import re
    import time

    from tqdm.auto import tqdm

    from micronet.runtime.slide import tissue

    monkeypatch.setattr(tissue, "SCAN_BAR_DELAY_S", 0.0)  # a slow scan's bar, on a small slide
    path, _ = synthetic
    capsys.readouterr()
    # Nested under another bar, as micronet detect runs it: the inner bar is cleared at
    # the end, so its last drawing is what the user saw last.
    with tqdm(total=1, desc="files") as outer:
        # (Batches slower than tqdm's 0.1 s between drawings, so every step is drawn.)
        found = slide_detector.detect_slide(path, region=(0, 0, 1300, 1100), progress=True, on_batch=lambda d, t: time.sleep(0.12))
        outer.update(1)
    err = capsys.readouterr().err
    # Every drawing of the finished bar shows the final count (it used to show the count
    # before the last batch: the count was set after the step that drew the bar).
    finished = [line for line in re.split(r"[\r\n]", err) if "tile/s" in line and "100%|" in line]
    assert finished and all(f"nuclei={len(found)}]" in line for line in finished), finished
    assert not re.search(r"nuclei=[\d.]+e\+", err)  # a plain integer, not tqdm's "2e+5"
    assert "synthetic.tif: tissue scan" in err and re.search(r"tissue scan: 100%.*\b1/1 Mpx", err)
    with open_slide(path) as slide:
        with tissue.scan_progress(slide, None, True, "x"):
            assert "read_region" in vars(slide)
        assert "read_region" not in vars(slide)  # the slide's own method again


def test_no_progress_bars_without_a_terminal(slide_detector, synthetic, capsys) -> None:
    path, _ = synthetic
    capsys.readouterr()
    slide_detector.detect_slide(path, region=(0, 0, 600, 600), tissue_only=False)  # progress=None: stderr is captured here
    err = capsys.readouterr().err
    assert "\r" not in err and "tile/s" not in err


# --- classes (a model with a class head, issue 20) --------------------------------------------

CLASS_REGION = (0, 0, 1300, 1100)


@pytest.fixture(scope="module")
def phenotypes():
    from micronet.runtime.detector import Detector

    return Detector("phenotypes", device="cpu", threads=2, tile_size=512, batch_size=2)


def _sorted_rows(found):
    order = np.lexsort((found.xy[:, 0], found.xy[:, 1]))
    return found.xy[order], found.class_probabilities[order]


def test_a_slide_carries_the_classes_of_a_whole_region_pass(phenotypes, synthetic, tmp_path: Path) -> None:
    path, level0 = synthetic
    x, y, w, h = CLASS_REGION
    whole = phenotypes.detect(level0[y : y + h, x : x + w], mpp=SYNTH_MPP)
    found = phenotypes.detect_slide(path, region=CLASS_REGION, out_dir=tmp_path / "out", progress=False)
    assert found.class_names == whole.class_names == ("epithelial", "fibroblast", "inflammatory", "others")
    assert len(found) == len(whole) > 50
    xy_a, p_a = _sorted_rows(found)
    xy_b, p_b = _sorted_rows(whole)
    np.testing.assert_array_equal(xy_a, xy_b)
    np.testing.assert_allclose(p_a, p_b, atol=1e-6)

    out = tmp_path / "out"
    with open(out / "synthetic.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["x", "y", "x_um", "y_um", "score", "class", "p_epithelial", "p_fibroblast", "p_inflammatory", "p_others"]
    assert len(rows) == len(found) + 1 and {r[5] for r in rows[1:]} <= set(found.class_names)
    features = json.loads((out / "synthetic.geojson").read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in features} == {r[5] for r in rows[1:]}

    summary = json.loads((out / "synthetic.summary.json").read_text())
    region_mm2 = w * h * SYNTH_MPP**2 / 1e6
    assert summary["nuclei"] == len(found) and 0 < summary["tissue_mm2"] <= region_mm2 * 1.01
    assert {n: v["count"] for n, v in summary["classes"].items()} == found.class_counts()
    assert summary["density_per_mm2"] == pytest.approx(len(found) / summary["tissue_mm2"], rel=1e-3)


def test_a_resumed_slide_writes_the_same_class_columns(phenotypes, synthetic, tmp_path: Path) -> None:
    path, _ = synthetic
    phenotypes.detect_slide(path, region=CLASS_REGION, out_dir=tmp_path / "whole", progress=False)

    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        if done >= 2:
            raise Stop

    with pytest.raises(Stop):
        phenotypes.detect_slide(path, region=CLASS_REGION, out_dir=tmp_path / "part", progress=False, queue_size=0, on_batch=stop)
    resumed = phenotypes.detect_slide(path, region=CLASS_REGION, out_dir=tmp_path / "part", progress=False)
    for name in ("synthetic.csv", "synthetic.geojson", "synthetic.overlay.png", "synthetic.summary.json"):
        assert (tmp_path / "part" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    # A damaged CSV is rewritten from the records, classes included.
    (tmp_path / "part" / "synthetic.csv").write_text("x,y\n")
    again = phenotypes.detect_slide(path, region=CLASS_REGION, out_dir=tmp_path / "part", progress=False)
    assert (tmp_path / "part" / "synthetic.csv").read_bytes() == (tmp_path / "whole" / "synthetic.csv").read_bytes()
    np.testing.assert_allclose(_sorted_rows(again)[1], _sorted_rows(resumed)[1], atol=0)
