"""The focus measure (``micronet.runtime.focus``): known answers on synthetic edges,
invariance to exposure and gamma, the threshold on real images, and the Detector's
``edge_blur_um`` and once-only warning."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from focus_support import blurred
from micronet.runtime import focus
from micronet.runtime.detections import Detections

MODEL_MPP = 0.55
BLUR_MARGIN = 8  # the blur model's receptive radius and more (tests/runtime/conftest.py)


def discs(size: int = 384, seed: int = 0) -> np.ndarray:
    """Dark discs (radius 6–12 px) with sharp edges on a light background: step edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    grey = np.full((size, size), 225.0)
    for _ in range(60):
        cy, cx, r = rng.uniform(12, size - 12), rng.uniform(12, size - 12), rng.uniform(6, 12)
        grey[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.uniform(40, 110)
    return np.repeat(grey[..., None], 3, axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def crchisto_image(shared_data: Path) -> np.ndarray:
    from micronet.runtime.images import read_image

    return read_image(shared_data / "crchisto" / "images" / "img1.png")


def test_the_blur_of_a_step_edge_is_recovered() -> None:
    """A Gaussian blur of σ adds in quadrature to a sharp edge's own (about 0.8 px, the
    pixel grid's and the Sobel operator's): the measure follows sqrt(σ² + s0²) within 6 %."""
    sharp = focus.edge_blur_px(discs())
    assert sharp is not None and 0.5 < sharp < 1.0
    for sigma in (1.0, 2.0, 3.0):
        got = focus.edge_blur_px(blurred(discs(), sigma))
        want = math.hypot(sigma, sharp)
        assert got == pytest.approx(want, rel=0.06), (sigma, got, want)


def test_exposure_and_gamma_leave_it_alone_and_blur_moves_it(crchisto_image: np.ndarray) -> None:
    clean = focus.edge_blur_um(crchisto_image, MODEL_MPP)
    darker = (crchisto_image * 0.5).astype(np.uint8)
    gamma = np.clip(np.rint(255 * (crchisto_image / 255.0) ** 1.6), 0, 255).astype(np.uint8)
    for other in (darker, gamma):
        assert focus.edge_blur_um(other, MODEL_MPP) == pytest.approx(clean, rel=0.03)
    assert clean < focus.TRAINING_BLUR_UM[1] < focus.BLUR_THRESHOLD_UM
    assert focus.edge_blur_um(blurred(crchisto_image, 1.0), MODEL_MPP) < focus.BLUR_THRESHOLD_UM  # still within
    assert focus.edge_blur_um(blurred(crchisto_image, 2.0), MODEL_MPP) > focus.BLUR_THRESHOLD_UM  # out of focus


def test_a_large_image_is_measured_on_windows_alike(crchisto_image: np.ndarray) -> None:
    """Beyond :data:`focus.WHOLE` pixels the grid of windows gives the whole image's answer
    (here a 2×3 mosaic of one image) within 5 %, at a bounded cost."""
    whole = focus.edge_blur_px(crchisto_image)
    mosaic = np.tile(crchisto_image, (2, 3, 1))
    assert mosaic.shape[0] * mosaic.shape[1] > focus.WHOLE
    windows = focus._windows(*mosaic.shape[:2])
    assert 1 < len(windows) <= focus.MAX_WINDOWS
    assert focus.edge_blur_px(mosaic) == pytest.approx(whole, rel=0.05)


@pytest.mark.parametrize("image", [np.full((300, 300, 3), 200, np.uint8), np.zeros((40, 40, 3), np.uint8)], ids=["flat", "tiny"])
def test_no_edges_no_measure(image: np.ndarray) -> None:
    assert focus.edge_blur_px(image) is None and focus.edge_blur_um(image, MODEL_MPP) is None


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, True, "0.4"])
def test_detections_refuse_a_bad_edge_blur(bad: object) -> None:
    with pytest.raises(ValueError, match="edge_blur_um: expected a finite number >= 0 or None"):
        Detections(np.zeros((0, 2)), np.zeros(0), edge_blur_um=bad)


def test_detections_keep_it_through_offset_and_concat() -> None:
    d = Detections(np.ones((2, 2)), np.ones(2), (10, 10), edge_blur_um=0.4)
    assert d.offset(1, 2).edge_blur_um == 0.4
    assert Detections.concat([d, d.offset(3, 3)]).edge_blur_um == 0.4
    assert Detections.concat([d, Detections(np.ones((1, 2)), np.ones(1), edge_blur_um=0.9)]).edge_blur_um is None


def test_detector_measures_focus_and_warns_once(crchisto_image: np.ndarray, blur_onnx: Path, caplog) -> None:
    from micronet.runtime.detector import Detector

    det = Detector(blur_onnx, device="cpu", threads=2, tile_margin=BLUR_MARGIN)
    soft = blurred(crchisto_image, 2.0)
    with caplog.at_level(logging.WARNING, logger="micronet.runtime.detector"):
        clean = det.detect(crchisto_image, mpp=MODEL_MPP)
        assert not caplog.records
        first, second = det.detect(soft, mpp=MODEL_MPP), det.detect(soft, mpp=MODEL_MPP)
    assert clean.edge_blur_um == pytest.approx(focus.edge_blur_um(crchisto_image, MODEL_MPP))
    assert first.edge_blur_um == second.edge_blur_um > focus.BLUR_THRESHOLD_UM
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert message.startswith("this image looks out of focus: its edges are blurred by about 1.") and "deconvolved back to 0.37 µm" in message
    # Measured on the image whole, so tiles change nothing; a slide's or a stream's tiles
    # (colour_stats given) are not measured.
    tiled = Detector(blur_onnx, device="cpu", threads=2, tile_margin=BLUR_MARGIN, tile_size=128).detect(soft, mpp=MODEL_MPP)
    assert tiled.edge_blur_um == first.edge_blur_um
    assert det.detect(soft, mpp=MODEL_MPP, colour_stats=det.colour_target).edge_blur_um is None


def test_an_image_at_another_pixel_size_is_measured_at_the_models(crchisto_image: np.ndarray, blur_onnx: Path) -> None:
    """At 40× (0.275 µm/px, twice the model's) the image is resampled first: its edge blur
    in µm is close to the 20× image's, not half of it."""
    from micronet.runtime.detector import Detector

    det = Detector(blur_onnx, device="cpu", threads=2, tile_margin=BLUR_MARGIN)
    upsampled = np.repeat(np.repeat(crchisto_image, 2, axis=0), 2, axis=1)
    at_40x = det.detect(upsampled, mpp=MODEL_MPP / 2).edge_blur_um
    assert at_40x == pytest.approx(det.detect(crchisto_image, mpp=MODEL_MPP).edge_blur_um, rel=0.25)


def test_a_slide_is_measured_on_its_tissue_and_said_once(crchisto_image: np.ndarray, blur_onnx: Path, tmp_path: Path, caplog) -> None:
    """A slide's edge blur comes from the windows of tissue its colour statistics read:
    close to the whole region's, in its summary and its Detections, with one warning for
    an out-of-focus slide."""

    tifffile = pytest.importorskip("tifffile")
    from micronet.runtime.detector import Detector

    resolution = {"resolution": (1e4 / MODEL_MPP, 1e4 / MODEL_MPP), "resolutionunit": "CENTIMETER"}
    det = Detector(blur_onnx, device="cpu", threads=2, tile_size=256, tile_margin=BLUR_MARGIN)
    got = {}
    for name, image in (("sharp", crchisto_image), ("soft", blurred(crchisto_image, 2.0))):
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, np.tile(image, (2, 2, 1)), tile=(128, 128), photometric="rgb", metadata=None, **resolution)
        with caplog.at_level(logging.WARNING, logger="micronet.runtime.detector"):
            found = det.detect_slide(path, tissue_only=False, out_dir=tmp_path / name, progress=False)
        summary = json.loads((tmp_path / name / f"{name}.summary.json").read_text())
        assert summary["edge_blur_um"] == pytest.approx(found.edge_blur_um, abs=1e-4)
        assert found.edge_blur_um == pytest.approx(focus.edge_blur_um(image, MODEL_MPP), rel=0.1)
        got[name] = found.edge_blur_um
    assert got["sharp"] < focus.BLUR_THRESHOLD_UM < got["soft"]
    said = [r.getMessage() for r in caplog.records if "out of focus" in r.getMessage()]
    assert len(said) == 2 and said[0].startswith("this slide looks out of focus") and "its out-of-focus tiles are deconvolved" in said[0]
    assert said[1].startswith("soft.tif: 24 of 25 tiles are out of focus") or said[1].startswith("soft.tif: 25 of 25 tiles")


def test_a_slide_is_measured_tile_by_tile_and_only_its_soft_tiles_deconvolved(crchisto_image: np.ndarray, blur_onnx: Path, tmp_path: Path) -> None:
    """A slide sharp on the left and out of focus on the right: each tile is measured as it
    is read; the summary lists exactly the soft tiles (by their cores' boxes), only they are
    deconvolved (the left half's detections are those of deblur=None), the record keeps
    every tile's value, and a rerun with the other setting is refused."""

    tifffile = pytest.importorskip("tifffile")
    from micronet.runtime.detector import Detector
    from micronet.runtime.errors import InputError

    half = crchisto_image.shape[1]
    image = np.concatenate([np.tile(crchisto_image, (2, 1, 1)), np.tile(blurred(crchisto_image, 2.0), (2, 1, 1))], axis=1)
    path = tmp_path / "half.tif"
    resolution = {"resolution": (1e4 / MODEL_MPP, 1e4 / MODEL_MPP), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb", metadata=None, **resolution)
    runs = {}
    for setting in ("auto", None):
        det = Detector(blur_onnx, device="cpu", threads=2, tile_size=256, tile_margin=BLUR_MARGIN, deblur=setting)
        out = tmp_path / str(setting)
        runs[setting] = det.detect_slide(path, tissue_only=False, out_dir=out, progress=False)
        summary = json.loads((out / "half.summary.json").read_text())["focus"]
        tiles = det.plan_tiles(*image.shape[:2])  # the slide is at the model's pixel size: level 0 is the grid
        big = [t for t in tiles if (t.y1 - t.y0) * (t.x1 - t.x0) >= 128 * 128]  # a sliver at the corner has too few edges
        soft = {(t.core_x0, t.core_y0, t.core_x1, t.core_y1) for t in big if t.x0 >= half}
        sharp = {(t.core_x0, t.core_y0, t.core_x1, t.core_y1) for t in tiles if t.x1 <= half}
        listed = {tuple(entry["box"]) for entry in summary["out_of_focus"]}
        assert summary["tiles"] == len(tiles) and len(big) <= summary["tiles_measured"] <= len(tiles)
        assert summary["deconvolved"] == (setting == "auto") and len(soft) >= 4
        assert soft <= listed and not sharp & listed and summary["tiles_out_of_focus"] == len(listed)
        assert all(entry["edge_blur_um"] > focus.BLUR_THRESHOLD_UM for entry in summary["out_of_focus"])
        record = json.loads((out / ".micronet" / "half.progress.json").read_text())
        assert len(record["tile_blur_um"]) == len(tiles) and record["settings"]["deblur"] == ("auto:cells" if setting == "auto" else setting)
    # The overlay outlines the soft tiles (orange) and only them: none on the left half.
    from PIL import Image

    from micronet.runtime.runs.slide_outputs import OVERLAY_SOFT_COLOR

    overlay = tmp_path / "None" / "half.overlay.png"
    drawn = np.all(np.asarray(Image.open(overlay).convert("RGB")) == OVERLAY_SOFT_COLOR, axis=-1)
    assert drawn.any() and not drawn[:, : drawn.shape[1] * (half - 256) // image.shape[1]].any()
    # A rerun finds it finished and writes the same summary, the tiles' values read back from
    # the record; a lost overlay is redrawn byte for byte, outlines included.
    before, png = (tmp_path / "None" / "half.summary.json").read_text(), overlay.read_bytes()
    overlay.unlink()
    again = det.detect_slide(path, tissue_only=False, out_dir=tmp_path / "None", progress=False)
    assert (tmp_path / "None" / "half.summary.json").read_text() == before and len(again) == len(runs[None])
    assert overlay.read_bytes() == png
    # A folder or cohort run's row says how many tiles were soft, for sorting slides to rescan.
    from micronet.runtime.runs.batch import process_input
    from micronet.runtime.runs.run_input import RunSettings

    import shutil

    as_slide = shutil.copy(path, tmp_path / "half.ome.tif")  # a slide's suffix: run as a slide, not one image
    row = process_input(det, as_slide, tmp_path / "row", RunSettings(formats=("csv",), progress=False))
    soft_count = json.loads(before)["focus"]["tiles_out_of_focus"]
    assert row.status == "ok" and row.tiles_out_of_focus == f"{soft_count}/{len(tiles)}" and soft_count >= 4
    left = {k: runs[k].xy[:, 0] < half - 2 * BLUR_MARGIN - 256 for k in runs}
    np.testing.assert_array_equal(runs["auto"].xy[left["auto"]], runs[None].xy[left[None]])
    right = {k: runs[k].xy[:, 0] >= half for k in runs}
    assert not np.array_equal(runs["auto"].xy[right["auto"]], runs[None].xy[right[None]])
    det = Detector(blur_onnx, device="cpu", threads=2, tile_size=256, tile_margin=BLUR_MARGIN, deblur=None)
    with pytest.raises(InputError, match=r"other settings \(deblur auto:cells → None\)"):
        det.detect_slide(path, tissue_only=False, out_dir=tmp_path / "auto", progress=False)


def test_run_summary_lists_each_inputs_focus_and_colour_and_a_rerun_keeps_them(crchisto_image: np.ndarray, tmp_path: Path, caplog) -> None:
    """``micronet detect`` on a folder: run_summary.csv gives each image's edge blur and
    colour distance, the soft one above the threshold; a rerun (each image finished
    already, not run again) reads them back from the records."""
    import csv

    from PIL import Image

    from micronet.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(crchisto_image).save(folder / "sharp.png")
    Image.fromarray(blurred(crchisto_image, 2.0)).save(folder / "soft.png")
    argv = ["detect", str(folder), "--model", "fast-cpu", "--out", str(tmp_path / "out"), "--format", "csv", "--mpp", str(MODEL_MPP), "--no-progress"]
    rows = {}
    for run in range(2):
        with caplog.at_level(logging.WARNING, logger="micronet.runtime.detector"):
            assert main(argv) == 0
        with open(tmp_path / "out" / "run_summary.csv", newline="") as f:
            rows[run] = {Path(r["input"]).name: r for r in csv.DictReader(f)}
    first, again = rows[0], rows[1]
    assert float(first["sharp.png"]["edge_blur_um"]) < focus.BLUR_THRESHOLD_UM < float(first["soft.png"]["edge_blur_um"])
    assert float(first["sharp.png"]["colour_distance"]) < 0.6
    assert first["soft.png"]["tiles_out_of_focus"] == ""  # images have no tiles to count: a slide's column
    assert {r["status"] for r in again.values()} == {"skipped"}
    for name in ("sharp.png", "soft.png"):
        assert again[name]["edge_blur_um"] == first[name]["edge_blur_um"] and again[name]["colour_distance"] == first[name]["colour_distance"]
    said = [r.getMessage() for r in caplog.records if "out of focus" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("this image looks out of focus")


# --- deblur ----------------------------------------------------------------------------------


def wiener_reference(image: np.ndarray, sigma: float, k: float) -> np.ndarray:
    """The Wiener deconvolution of a Gaussian done whole in the Fourier domain (mirrored
    by a wide border), untruncated, scaled to keep flat areas (gain 1 at frequency 0):
    what :func:`focus.deblur` approximates."""
    pad = 64
    out = np.empty(image.shape, np.float64)
    for c in range(3):
        ch = np.pad(image[..., c].astype(np.float64), pad, mode="reflect")
        fy, fx = np.fft.fftfreq(ch.shape[0])[:, None], np.fft.fftfreq(ch.shape[1])[None, :]
        h = np.exp(-2 * np.pi**2 * sigma**2 * (fx**2 + fy**2))
        out[..., c] = np.real(np.fft.ifft2(np.fft.fft2(ch) * h / (h * h + k) * (1 + k)))[pad:-pad, pad:-pad]
    return np.clip(np.rint(out), 0, 255)


def test_deblur_matches_the_fourier_wiener_filter_and_restores_edges(crchisto_image: np.ndarray) -> None:
    soft = blurred(crchisto_image, 2.0)
    sigma = focus.deblur_sigma_px(focus.edge_blur_px(soft), focus.DEBLUR_TARGET_UM / MODEL_MPP)
    assert 1.5 < sigma < 2.1  # σ 2 px added to the image's own 0.68 px, in quadrature
    sharp = focus.deblur(soft, sigma)
    assert sharp.dtype == np.uint8 and sharp.shape == soft.shape
    diff = np.abs(sharp.astype(int) - wiener_reference(soft, sigma, focus.WIENER_K))
    assert np.mean(diff) < 0.4 and np.percentile(diff, 99) <= 2  # the kernel is cut at 6σ + 4
    assert focus.edge_blur_px(sharp) < 0.7 * focus.edge_blur_px(soft)
    error = {name: np.mean((im.astype(float) - crchisto_image) ** 2) for name, im in (("soft", soft), ("deblurred", sharp))}
    assert error["deblurred"] < 0.6 * error["soft"], error
    assert np.allclose(focus.wiener_kernel(sigma).sum(), 1.0)


def test_deblur_in_strips_equals_the_whole_image(crchisto_image: np.ndarray, monkeypatch) -> None:
    soft = blurred(crchisto_image, 1.5)
    whole = focus.deblur(soft, 1.2)
    monkeypatch.setattr(focus, "STRIP_PIXELS", 37 * soft.shape[1])  # strips of 37 rows
    np.testing.assert_array_equal(focus.deblur(soft, 1.2), whole)
    assert focus.deblur(soft[:5, :7], 1.2).shape == (5, 7, 3)  # smaller than the kernel


def test_detector_deblurs_only_an_out_of_focus_image_and_finds_more(shared_data: Path, caplog) -> None:
    """fast-cpu on a dense CRCHisto training image (786 nuclei): the clean image runs as
    with deblur=None; blurred by σ 2 px it is deconvolved, and more of the annotated
    nuclei are found (on a sparse image the deconvolution can also add false ones)."""
    from micronet.runtime.detector import Detector
    from micronet.runtime.evaluation.metrics import evaluate_images
    from micronet.runtime.images import read_image
    from micronet.runtime.points import read_points_csv

    image = read_image(shared_data / "crchisto" / "images" / "img77.png")
    truth = read_points_csv(shared_data / "crchisto" / "points" / "img77.csv")
    auto, never = (Detector("fast-cpu", device="cpu", threads=2, deblur=d) for d in ("auto", None))
    np.testing.assert_array_equal(auto.detect(image, mpp=MODEL_MPP).xy, never.detect(image, mpp=MODEL_MPP).xy)
    soft = blurred(image, 2.0)
    with caplog.at_level(logging.WARNING, logger="micronet.runtime.detector"):
        f1 = {name: evaluate_images([det.detect(soft, mpp=MODEL_MPP).xy], [truth], 6).pooled.f1 for name, det in (("auto", auto), ("none", never))}
    assert f1["auto"] > f1["none"] + 0.1, f1
    said = sorted(r.getMessage() for r in caplog.records)
    assert len(said) == 2 and "deconvolved back to 0.37 µm (deblur='auto')" in said[0] and "or pass deblur='auto'" in said[1]
    with pytest.raises(ValueError, match=r"deblur: expected one of None, 'auto', got 'yes'"):
        Detector("fast-cpu", device="cpu", deblur="yes")


def test_an_image_run_with_other_deblur_is_refused_on_a_rerun(crchisto_image: np.ndarray, tmp_path: Path, capsys) -> None:
    """Deblurring changes an out-of-focus image's detections, so outputs made with one
    setting are never kept for the other (images record it; records before it had none)."""
    from PIL import Image

    from micronet.cli import main

    Image.fromarray(crchisto_image).save(tmp_path / "a.png")
    common = ["detect", str(tmp_path / "a.png"), "--model", "fast-cpu", "--out", str(tmp_path / "out"), "--format", "csv", "--mpp", str(MODEL_MPP), "--no-progress"]
    assert main([*common, "--deblur", "none"]) == 0
    assert main(common) == 2
    assert "made with other settings (deblur None → auto:cells); pass --overwrite" in capsys.readouterr().err
    assert main([*common, "--deblur", "none"]) == 0  # the same setting: finished already
    # Outputs of "auto" before the focus map (one σ per image, recorded as plain "auto") are
    # not kept for today's "auto", which judges a large image cell by cell.
    assert main([*common, "--overwrite"]) == 0 and main(common) == 0
    record = tmp_path / "out" / ".micronet" / "a.progress.json"
    state = json.loads(record.read_text())
    assert state["settings"]["deblur"] == "auto:cells"
    state["settings"]["deblur"] = "auto"
    record.write_text(json.dumps(state))
    capsys.readouterr()
    assert main(common) == 2
    assert "(deblur auto → auto:cells)" in capsys.readouterr().err


def test_a_stream_measures_each_block_and_deconvolves_the_soft_ones(crchisto_image: np.ndarray, blur_onnx: Path) -> None:
    """Fields of a scan sharp on the left, soft on the right: each final region carries its
    block's edge blur (sharp blocks in the training span, soft ones beyond the threshold),
    the sharp half's detections are those of deblur=None, and only the soft half's change."""
    from micronet.runtime.detector import Detector

    half = crchisto_image.shape[1]
    image = np.concatenate([crchisto_image, blurred(crchisto_image, 2.0)], axis=1)  # 500 × 1000
    regions, tiles = {}, {}
    for setting in ("auto", None):
        det = Detector(blur_onnx, device="cpu", threads=2, tile_size=256, tile_margin=BLUR_MARGIN, deblur=setting)
        tiles = {(t.core_x0, t.core_y0, t.core_x1, t.core_y1): t for t in det.plan_tiles(*image.shape[:2])}
        with det.stream(image.shape[1], image.shape[0], mpp=MODEL_MPP) as session:
            got = []
            for x in range(0, image.shape[1], 250):
                session.add(np.ascontiguousarray(image[:, x : x + 250]), x, 0)
                got.extend(session.ready())
            waiting = session.ready(wait=True)  # every field is in: each block comes final
            while len(got) < len(tiles):
                got.append(next(waiting))
            rest = session.finish()  # nothing left to hand out; a merged whole has no one edge blur
        assert len(rest) == 0 and rest.edge_blur_um is None
        regions[setting] = {tuple(int(v) for v in r.box): r for r in got}
    assert set(regions["auto"]) == set(tiles)
    for box, region in regions["auto"].items():
        tile, other = tiles[box], regions[None][box]
        assert region.edge_blur_um == region.detections.edge_blur_um == other.edge_blur_um
        big = (tile.x1 - tile.x0) * (tile.y1 - tile.y0) >= 128 * 128  # a sliver at the edge has too few edges
        if tile.x1 <= half:
            assert not big or region.edge_blur_um < focus.BLUR_THRESHOLD_UM
            np.testing.assert_array_equal(region.detections.xy, other.detections.xy)
        elif tile.x0 >= half and big:
            assert region.edge_blur_um > focus.BLUR_THRESHOLD_UM
    soft = [b for b, t in tiles.items() if t.x0 >= half]
    assert any(not np.array_equal(regions["auto"][b].detections.xy, regions[None][b].detections.xy) for b in soft)
