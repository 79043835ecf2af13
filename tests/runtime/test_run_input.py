"""One procedure for every input (``micronet.runtime.runs.run_input``): a plain image and
a slide take the same steps, in the same order, and a rerun gives both the same verdicts
(finished already, repaired, refused for other settings, replaced with ``overwrite``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from micronet.runtime.runs import batch, run_input, slide_run
from micronet.runtime.runs.batch import RunSettings, process_input

tifffile = pytest.importorskip("tifffile")

MPP = 0.55  # the blur model's


@pytest.fixture()
def det(blur_onnx: Path):
    from micronet.runtime.detector import Detector

    return Detector(blur_onnx, device="cpu", threads=2, tile_size=256, tile_margin=8)


@pytest.fixture()
def inputs(tmp_path: Path, make_nuclei) -> dict[str, Path]:
    """The same blobs as a PNG (its pHYs at the model's pixel size) and as a tiled
    OME-TIFF slide."""
    from PIL import Image

    image, _ = make_nuclei(300, 420, 30, seed=3)
    folder = tmp_path / "in"
    folder.mkdir()
    png = folder / "field.png"
    Image.fromarray(image).save(png, dpi=(25400 / MPP, 25400 / MPP))
    slide = folder / "scan.ome.tif"
    tifffile.imwrite(slide, image, tile=(128, 128), photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": MPP, "PhysicalSizeY": MPP})
    return {"image": png, "slide": slide}


def _verdicts(det, path: Path, out: Path) -> list[tuple]:
    """Runs ``path`` into ``out`` five times: new, again, with its CSV damaged, with other
    settings, and overwriting; what each run says."""
    stem = path.name.split(".")[0]
    settings = RunSettings(formats=("csv", "geojson"))
    seen = []
    first = process_input(det, path, out, settings)
    csv = (out / f"{stem}.csv").read_bytes()
    seen.append((first.status, first.outcome, first.rewritten))
    again = process_input(det, path, out, settings)
    seen.append((again.status, again.outcome, again.rewritten, again.nuclei == first.nuclei))
    (out / f"{stem}.csv").write_text("x,y,score\n")
    repaired = process_input(det, path, out, settings)
    seen.append((repaired.status, repaired.outcome, [n.replace(stem, "STEM") for n in repaired.rewritten], (out / f"{stem}.csv").read_bytes() == csv))
    other = process_input(det, path, out, RunSettings(formats=("csv", "geojson"), mpp=0.5))
    seen.append((other.status, "with other settings (" in other.error and "mpp" in other.error))
    replaced = process_input(det, path, out, RunSettings(formats=("csv", "geojson"), mpp=0.5, overwrite=True))
    seen.append((replaced.status, replaced.outcome, replaced.mpp, replaced.mpp_source))
    return seen


def test_an_image_and_a_slide_get_the_same_verdicts_on_a_rerun(det, inputs, tmp_path):
    image = _verdicts(det, inputs["image"], tmp_path / "out")
    slide = _verdicts(det, inputs["slide"], tmp_path / "out")
    assert image[:4] == slide[:4] == [
        ("ok", "ran", []),
        ("skipped", "finished already", [], True),
        ("skipped", "finished already", ["STEM.csv"], True),
        ("failed", True),
    ]
    assert image[4] == ("ok", "ran", 0.5, "--mpp") and slide[4] == ("ok", "ran", 0.5, "mpp= / --mpp")


def test_images_and_slides_run_through_run_input_with_the_same_steps(det, inputs, tmp_path, monkeypatch):
    """Both kinds go through the one ``run_input`` and pass the same fault points in the
    same order."""
    calls, points = [], []
    real = run_input.run_input

    def spy(detector, source, out_dir, settings=RunSettings()):
        calls.append(type(source).__name__)
        return real(detector, source, out_dir, settings)

    monkeypatch.setattr(batch, "run_input", spy)
    monkeypatch.setattr(slide_run, "run_input", spy)
    monkeypatch.setattr(run_input, "fault_point", lambda name, tiles=0: points.append(name))
    for kind in ("image", "slide"):
        row = process_input(det, inputs[kind], tmp_path / "out", RunSettings(formats=("csv",)))
        assert row.status == "ok" and row.kind == kind
    assert calls == ["ImageSource", "SlideSource"]
    steps = ["locked", "planned", "started", "finished"]
    assert points == steps + steps
    found = det.detect_slide(inputs["slide"], progress=False)  # the public front door, without outputs
    assert calls[-1] == "SlideSource" and len(found) == process_input(det, inputs["slide"], tmp_path / "out", RunSettings(formats=("csv",))).nuclei


def test_a_plain_tiff_image_is_opened_once_for_its_header_and_pixels(det, inputs, tmp_path, monkeypatch):
    """A TIFF input is opened by ``is_slide`` (is it a slide?) and once more, for its
    header (pixel size, orientation) and its pixels together."""
    from PIL import Image

    path = tmp_path / "in" / "plain.tif"
    tifffile.imwrite(path, np.asarray(Image.open(inputs["image"]).convert("RGB")), photometric="rgb", resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    opened = []
    real = tifffile.TiffFile
    monkeypatch.setattr(tifffile, "TiffFile", lambda *a, **k: opened.append(a[0]) or real(*a, **k))
    row = process_input(det, path, tmp_path / "out", RunSettings(formats=("csv",)))
    assert row.status == "ok", row.error
    assert row.mpp == pytest.approx(MPP) and row.mpp_source == "TIFF resolution tags"
    assert len(opened) == 2
