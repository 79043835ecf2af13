"""Test-time augmentation, ``Detector(tta=True)``: the mean of 4 flip passes before the
peaks (8 with ``tta="dihedral"``, the bundled ``accurate``), in every path that runs the
network (whole images, tiles, batches, slides, ``micronet detect``, ``micronet
evaluate``), recorded with the outputs' settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gpu_support import require_cupy, require_ort_cuda
from micronet.runtime.detector import (
    TTA_FLIPS,
    Detector,
    _average_flips,
    bundled_sample,
    read_image,
)
from micronet.runtime.errors import InputError
from micronet.runtime.evaluation.matching import evaluate_points
from micronet.runtime.peaks import find_peaks
from micronet.runtime.tta import check_tta

pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[2]
BLUR_MARGIN = 8  # the blur model's receptive radius (4) + min_distance (3), rounded up
MODEL_MPP = 0.55  # the bundled models' and the test models' pixel size


def _flip(image: np.ndarray, rows: bool, columns: bool) -> np.ndarray:
    """An ``(H, W, ...)`` array flipped, as a new C-contiguous array."""
    return np.ascontiguousarray(image[:: -1 if rows else 1, :: -1 if columns else 1])


class Recording:
    """A backend that records the shape of every batch it runs."""

    def __init__(self, inner):
        self.inner, self.info, self.name, self.device = inner, inner.info, "recording", "cpu"
        self.shapes: list[tuple[int, ...]] = []

    def infer(self, batch):
        self.shapes.append(batch.shape)
        return self.inner.infer(batch)


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    """The bundled sample: ``(512, 512, 3)`` uint8 H&E at the default model's 0.55 µm/px."""
    return read_image(bundled_sample())


@pytest.fixture(scope="module")
def plain() -> Detector:
    return Detector("default", device="cpu", threads=2)


@pytest.fixture(scope="module")
def tta() -> Detector:
    return Detector("default", device="cpu", threads=2, tta=True)


# --- the maps -------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "columns"), [(False, True), (True, False), (True, True)], ids=["left-right", "up-down", "both"])
def test_averaged_map_of_a_flipped_image_is_the_flipped_averaged_map(plain, tta, sample, rows, columns):
    # Sides that are no multiples of 8: a flip moves the network's 8-pixel grid, so a
    # single pass is far from flip-equivariant, and only a right flip-back of each pass
    # makes the mean equivariant.
    image = np.ascontiguousarray(sample[:203, :301])
    flipped = _flip(image, rows, columns)
    single, single_flipped = plain._infer(image[None])[0, 0], plain._infer(flipped[None])[0, 0]
    assert np.abs(_flip(single_flipped, rows, columns) - single).max() > 0.05
    mean, mean_flipped = tta._infer(image[None])[0, 0], tta._infer(flipped[None])[0, 0]
    assert mean.shape == image.shape[:2] and mean.dtype == np.float32
    # Pairwise sums make it exact when each pass runs alone (batch_size 1, the CPU default).
    np.testing.assert_array_equal(_flip(mean_flipped, rows, columns), mean)
    # Four passes in one call: the provider may round a batch's items differently.
    batched = Detector("default", device="cpu", threads=2, tta=True, batch_size=4)
    np.testing.assert_allclose(_flip(batched._infer(flipped[None])[0, 0], rows, columns), mean, rtol=0, atol=1e-4)
    found, found_flipped = tta.detect(image), tta.detect(flipped)
    h, w = image.shape[:2]
    back = found_flipped.xy.copy()
    if columns:
        back[:, 0] = w - 1 - back[:, 0]
    if rows:
        back[:, 1] = h - 1 - back[:, 1]
    assert len(found) > 20 and evaluate_points(back, found.xy, 0.5).f1 == 1.0


def test_the_mean_of_a_flip_equivariant_model_is_its_single_pass(blur_onnx, make_nuclei):
    # The blur model's map is flip-equivariant (symmetric kernel): every flip-back
    # must land each pass on the single pass, so the mean equals it.
    image, _ = make_nuclei(70, 93, 6, spacing=16)
    single = Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN)._infer(image[None])
    mean = Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN, tta=True)._infer(image[None])
    np.testing.assert_allclose(mean, single, rtol=0, atol=1e-6)


def test_average_flips_sums_in_pairs_and_leaves_the_maps_alone():
    rng = np.random.default_rng(0)
    maps = [rng.random((2, 1, 5, 7), dtype=np.float32) for _ in TTA_FLIPS]
    copies = [m.copy() for m in maps]
    back = [m[..., :: -1 if r else 1, :: -1 if c else 1] for m, (r, c) in zip(maps, TTA_FLIPS)]
    want = ((back[0] + back[1]) + (back[2] + back[3])) * np.float32(0.25)
    np.testing.assert_array_equal(_average_flips(maps), want)
    for m, c in zip(maps, copies):
        np.testing.assert_array_equal(m, c)


# --- off by default, unchanged --------------------------------------------------------


def test_tta_is_off_by_default_and_then_one_pass_bit_for_bit(plain, sample):
    assert plain.tta is False and "tta=False" in repr(plain)
    assert Detector("default", device="cpu", threads=2, tta=False).tta is False
    image = np.ascontiguousarray(sample[:256, :320])
    found = plain.detect(image)
    # What the detector did before tta existed: one backend pass, then the peaks.
    xy, scores = find_peaks(plain.backend.infer(image[None])[0, 0], plain.threshold, plain.min_distance)
    np.testing.assert_array_equal(found.xy, xy)
    np.testing.assert_array_equal(found.scores, scores)
    backend = Recording(plain.backend)
    Detector(backend=backend).detect_batch([image, image])
    assert backend.shapes == [(1, 256, 320, 3)] * 2


def test_tta_must_name_a_mode():
    with pytest.raises(TypeError, match="tta: expected True, False or one of 'flips', 'dihedral', got 'yes'"):
        Detector("default", device="cpu", tta="yes")
    assert check_tta("flips") == check_tta(True) == "flips" and check_tta(None) is check_tta(False) is None


# --- dihedral: the flips of the image and of its transpose -------------------------------


def _dihedral_by_hand(plain: Detector, image: np.ndarray) -> np.ndarray:
    """The mean of the 8 single passes, each brought back (flip, then transpose)."""
    maps = []
    for view in (image, image.transpose(1, 0, 2)):
        for rows, columns in TTA_FLIPS:
            m = plain._infer(_flip(view, rows, columns)[None])[0, 0]
            maps.append(_flip(m, rows, columns) if view is image else _flip(m, rows, columns).T)
    return np.mean(maps, axis=0)


def test_dihedral_is_the_mean_of_eight_passes_brought_back(plain, sample):
    # A non-square image, sides off the 8-pixel grid: the transposed passes are 301 × 203.
    image = np.ascontiguousarray(sample[:203, :301])
    det = Detector("default", device="cpu", threads=2, tta="dihedral")
    assert det.tta == "dihedral" and det.tta_mode == "dihedral" and "tta='dihedral'" in repr(det)
    backend = Recording(det.backend)
    mean = Detector(backend=backend, tta="dihedral")._infer(image[None])[0, 0]
    assert backend.shapes == [(1, 203, 301, 3)] * 4 + [(1, 301, 203, 3)] * 4
    assert mean.shape == image.shape[:2] and mean.dtype == np.float32 and mean.flags.c_contiguous
    np.testing.assert_allclose(mean, _dihedral_by_hand(plain, image), rtol=0, atol=1e-5)
    # The mean of the transposed image is the transposed mean (up to float rounding:
    # the two 4-pass means swap roles), and so are its detections.
    transposed = np.ascontiguousarray(image.transpose(1, 0, 2))
    np.testing.assert_allclose(det._infer(transposed[None])[0, 0], mean.T, rtol=0, atol=1e-5)
    found, found_t = det.detect(image), det.detect(transposed)
    assert len(found) > 20 and evaluate_points(found_t.xy[:, ::-1], found.xy, 0.5).f1 > 0.97


def test_the_accurate_name_is_the_default_network_with_dihedral_tta(plain):
    from micronet.runtime.runs.cohort import DetectorSpec

    accurate = Detector("accurate", device="cpu", threads=1)
    # its own file since the default was retrained (seventh round): the same architecture
    assert accurate.model_path.name == "micronet_crchisto_accurate.onnx" and accurate.tta == "dihedral"
    assert accurate.info.architecture == plain.info.architecture and accurate.tile_margin == plain.tile_margin
    assert Detector("accurate", device="cpu", threads=1, tta=False).tta is False
    assert Detector("accurate", device="cpu", threads=1, tta=True).tta is True
    assert DetectorSpec("accurate", "cpu", threads=1).build().tta == "dihedral"


# --- on the bundled model -------------------------------------------------------------


def test_tta_on_the_bundled_sample_finds_mostly_the_single_pass_detections(plain, tta, sample):
    single, mean = plain.detect(sample), tta.detect(sample)
    assert len(single) > 100 and len(mean) > 100
    assert "tta=True" in repr(tta)
    # The mean moves some peaks and scores a little; most detections stay within 2 px.
    m = evaluate_points(mean.xy, single.xy, 2.0)
    assert m.tp >= 0.9 * max(len(single), len(mean)), m


@pytest.mark.slow
def test_tiled_tta_equals_whole_image_tta(tta, sample, detections_agree):
    # 256² tiles leave 48² interior cores; a 312² crop (on the 8-pixel grid) is 3 × 3 tiles,
    # one wholly interior: every case a larger image has, at 37 % of the sample's pixels
    # and 64 % of the tiled pixels of 320² tiles on it (the default runs 4 flips of each).
    tiled = Detector("default", device="cpu", threads=2, tta=True, tile_size=256)
    image = np.ascontiguousarray(sample[:312, :312])
    assert len(tiled.plan_tiles(*image.shape[:2])) == 9
    # Sides on the network's 8-pixel grid: every flipped tile sees the grid the flipped
    # image does, so tiles equal the whole image as without tta.
    whole, parts = tta.detect(image), tiled.detect(image)
    np.testing.assert_array_equal(parts.xy, whole.xy)
    np.testing.assert_allclose(parts.scores, whole.scores, rtol=1e-6, atol=0)
    # Other sides: a flipped interior tile's grid starts from the tile's far edge, not
    # the image's, so maps differ slightly and a few peaks move by up to a pixel.
    odd = np.ascontiguousarray(sample[:325, :319])
    assert len(tiled.plan_tiles(*odd.shape[:2])) == 9
    whole, parts = tta.detect(odd), tiled.detect(odd)
    detections_agree(parts.xy, whole.xy, radius=1.5, max_unmatched_share=0.03)


def test_flip_passes_share_calls_of_at_most_batch_size_images(blur_onnx, make_nuclei):
    from micronet.runtime.backends.onnxruntime import OnnxRuntimeBackend

    images = [make_nuclei(64, 80, 4, seed=k, spacing=16)[0] for k in range(3)]
    want = Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN, tta=True).detect_batch(images)
    calls = {1: [(1, 64, 80, 3)] * 12, 2: [(2, 64, 80, 3)] * 6, 3: [(2, 64, 80, 3)] * 6, 4: [(4, 64, 80, 3)] * 3, 8: [(8, 64, 80, 3), (4, 64, 80, 3)]}
    for batch_size, shapes in calls.items():
        backend = Recording(OnnxRuntimeBackend(blur_onnx, device="cpu", threads=1))
        got = Detector(backend=backend, tile_margin=BLUR_MARGIN, batch_size=batch_size, tta=True).detect_batch(images)
        assert backend.shapes == shapes, batch_size
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.xy, w.xy, atol=0)
            np.testing.assert_allclose(g.scores, w.scores, rtol=1e-6)


def test_the_pipelined_gpu_path_sends_the_flips_in_one_call(blur_onnx, make_nuclei, monkeypatch):
    from micronet.runtime.backends.onnxruntime import OnnxRuntimeBackend

    class Queued:
        """A backend shaped like TensorRT's (device "cuda", ``infer_async``), computing
        on the CPU."""

        name, device = "queued", "cuda"

        def __init__(self):
            self.inner = OnnxRuntimeBackend(blur_onnx, device="cpu", threads=1)
            self.info, self.calls = self.inner.info, []

        def infer(self, batch):
            self.calls.append(("infer", batch.shape))
            return self.inner.infer(batch)

        def infer_async(self, batch, *, block=True):
            self.calls.append(("async", batch.shape))
            maps = self.inner.infer(batch)
            return type("Job", (), {"wait": staticmethod(lambda: maps)})()

    images = [make_nuclei(64, 80, 4, seed=k, spacing=16)[0] for k in range(3)]
    want = Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN, tta=True).detect_batch(images)
    for batch_size, calls in ((None, [("async", (4, 64, 80, 3))] * 3), (2, [("infer", (2, 64, 80, 3))] * 6)):
        backend = Queued()
        det = Detector(backend=backend, tile_margin=BLUR_MARGIN, batch_size=batch_size, tta=True)
        # The peaks of the host maps on the host (the real maps would be CuPy's).
        monkeypatch.setattr(det, "_peaks", lambda m, d=det: find_peaks(m, d.threshold, d.min_distance))
        got = det.detect_batch(images)
        assert backend.calls == calls, batch_size
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.xy, w.xy)
            np.testing.assert_allclose(g.scores, w.scores, rtol=1e-6)


def test_detect_batch_with_tta_equals_detect(tta, sample):
    images = [np.ascontiguousarray(sample[:200, :240]), np.ascontiguousarray(sample[300:, 100:400])]
    for got, image in zip(tta.detect_batch(images), images):
        want = tta.detect(image)
        np.testing.assert_array_equal(got.xy, want.xy)
        np.testing.assert_array_equal(got.scores, want.scores)


# --- slides and output folders ----------------------------------------------------------


def test_slides_run_four_passes_per_tile_and_record_tta(blur_onnx, make_nuclei, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from micronet.runtime.backends.onnxruntime import OnnxRuntimeBackend

    pixels, _ = make_nuclei(400, 600, 60, spacing=16)
    path = tmp_path / "slide.tif"  # a tiled TIFF with its pixel size: read as a slide
    resolution = {"resolution": (1e4 / MODEL_MPP,) * 2, "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, pixels, tile=(128, 128), photometric="rgb", metadata=None, **resolution)
    backend = Recording(OnnxRuntimeBackend(blur_onnx, device="cpu", threads=1))
    # The synthetic blobs are smooth (out of focus by the edge measure): deblur=None, so the
    # tiles are not deconvolved and the whole-image pass equals the slide's.
    det = Detector(backend=backend, tile_margin=BLUR_MARGIN, tile_size=256, tta=True, deblur=None)
    out = tmp_path / "out"
    found = det.detect_slide(path, tissue_only=False, progress=False, out_dir=out, formats=("csv",))
    state = json.loads((out / ".micronet" / "slide.progress.json").read_text())
    assert state["settings"]["tta"] is True and state["complete"]
    assert len(backend.shapes) == 4 * state["tiles_total"]
    whole = Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN, tile_size=1024, tta=True, deblur=None).detect(pixels)
    np.testing.assert_array_equal(found.xy, whole.xy)
    np.testing.assert_allclose(found.scores, whole.scores, rtol=1e-6)
    single = Detector(backend=backend.inner, tile_margin=BLUR_MARGIN, tile_size=256, deblur=None)
    with pytest.raises(InputError, match="tta True → False"):
        single.detect_slide(path, tissue_only=False, progress=False, out_dir=out, formats=("csv",))


def test_detect_records_tta_and_refuses_outputs_made_without_it(tmp_path, capsys):
    from micronet.cli import main

    out = tmp_path / "demo"
    common = ["detect", "--demo", "--out", str(out), "--format", "csv", "--no-progress"]
    assert main([*common, "--tta"]) == 0
    assert "flip TTA" in capsys.readouterr().out
    record = out / ".micronet" / "demo_cmu1.progress.json"
    assert json.loads(record.read_text())["settings"]["tta"] is True
    with_tta = (out / "demo_cmu1.csv").read_text()
    assert main(common) == 2
    assert "made with other settings (tta True → False); pass --overwrite" in capsys.readouterr().err
    assert (out / "demo_cmu1.csv").read_text() == with_tta  # left as it was
    assert main([*common, "--overwrite"]) == 0
    assert json.loads(record.read_text())["settings"]["tta"] is False
    assert (out / "demo_cmu1.csv").read_text() != with_tta


def test_detect_with_the_accurate_name_runs_and_records_dihedral_tta(sample, tmp_path, capsys):
    from micronet.cli import main
    from PIL import Image

    image = tmp_path / "crop.png"
    Image.fromarray(sample[:160, :200]).save(image)
    out = tmp_path / "out"
    common = ["detect", str(image), "--out", str(out), "--format", "csv", "--no-progress", "--mpp", "0.55"]
    assert main([*common, "--model", "accurate"]) == 0
    assert "dihedral TTA" in capsys.readouterr().out
    assert json.loads((out / ".micronet" / "crop.progress.json").read_text())["settings"]["tta"] == "dihedral"
    # The same file with flips is another setting: refused unless --overwrite.
    assert main([*common, "--model", "accurate", "--tta-mode", "flips"]) == 2
    assert "(tta dihedral → True)" in capsys.readouterr().err


def test_records_from_before_tta_count_as_made_without_it(tmp_path, capsys):
    from micronet.cli import main

    out = tmp_path / "demo"
    common = ["detect", "--demo", "--out", str(out), "--format", "csv", "--no-progress"]
    assert main(common) == 0
    record = out / ".micronet" / "demo_cmu1.progress.json"
    state = json.loads(record.read_text())
    del state["settings"]["tta"]  # as a run before tta existed wrote it
    record.write_text(json.dumps(state))
    capsys.readouterr()
    assert main(common) == 0
    assert "1 finished already" in capsys.readouterr().out
    assert main([*common, "--tta"]) == 2
    assert "made with other settings (tta False → True)" in capsys.readouterr().err


def test_detector_spec_carries_tta_to_workers():
    from micronet.runtime.runs.cohort import DetectorSpec

    assert DetectorSpec("default", "cpu", threads=1, tta=True).build().tta is True
    assert DetectorSpec("default", "cpu", threads=1).build().tta is False


# --- evaluation -----------------------------------------------------------------------


def test_evaluate_a_model_with_tta(sample_set, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from micronet.runtime.evaluation.evaluate import evaluate_model_file

    from micronet.cli import main

    result = evaluate_model_file("default", sample_set, tta=True, progress=False)
    assert result.tta and result.to_dict()["tta"] is True and result.report.pooled.f1 > 0.9
    assert result.format().endswith("\ntest-time augmentation: mean of 4 flip passes")
    assert evaluate_model_file("default", sample_set, progress=False).tta is False
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", "default", "--data", str(sample_set), "--tta", "--json", str(out)]) == 0
    assert "test-time augmentation: mean of 4 flip passes" in capsys.readouterr().out
    assert json.loads(out.read_text())["tta"] is True


def test_evaluate_refuses_tta_where_it_cannot_apply(sample_set, tmp_path, capsys):
    from micronet.runtime.evaluation.evaluate import (
        evaluate_model_file,
        model_candidates,
    )

    from micronet.cli import main

    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")  # refused before it is read
    assert main(["evaluate", "--model", str(checkpoint), "--data", str(sample_set), "--tta"]) == 2
    assert "--tta runs the flips in the Detector" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"model\.safetensors: test-time augmentation runs in the Detector"):
        evaluate_model_file(checkpoint, tmp_path / "no data here", tta=True)
    with pytest.raises(InputError, match="test-time augmentation runs in the Detector"):
        model_candidates(checkpoint, 0.1, tta=True)
    assert main(["evaluate", "--pred", str(sample_set / "points"), "--data", str(sample_set), "--radius", "6", "--tta"]) == 2
    assert "--tta applies to --model" in capsys.readouterr().err


# --- GPU ------------------------------------------------------------------------------


@pytest.mark.gpu
def test_flips_and_mean_stay_on_the_gpu():
    cupy = require_cupy()
    rng = np.random.default_rng(1)
    maps = [rng.random((2, 1, 33, 41), dtype=np.float32) for _ in TTA_FLIPS]
    on_gpu = _average_flips([cupy.asarray(m) for m in maps])
    assert isinstance(on_gpu, cupy.ndarray) and on_gpu.shape == (2, 1, 33, 41) and on_gpu.dtype == cupy.float32
    np.testing.assert_array_equal(cupy.asnumpy(on_gpu), _average_flips(maps))


@pytest.mark.gpu
def test_tta_on_the_gpu_matches_the_cpu(sample, tta, detections_agree):
    require_ort_cuda()
    gpu = Detector("default", device="cuda", tta=True)
    assert gpu.device == "cuda"
    detections_agree(gpu.detect(sample).xy, tta.detect(sample).xy, radius=1.0, max_unmatched_share=0.01)
