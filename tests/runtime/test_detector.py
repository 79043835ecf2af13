"""Detector: ONNX parity with torch, peaks, exact tiling, resampling to the model's pixel
size, input errors and concurrent use (micronet.runtime.detector)."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from micronet.runtime.detections import Detections
from micronet.runtime.detector import BUNDLED_MODELS, Detector, bundled_model, resolve_model
from micronet.runtime.evaluation.matching import evaluate_points, match_points
from micronet.runtime.peaks import find_peaks

BLUR_MARGIN = 8  # the blur model's receptive radius (4) + min_distance (3), rounded up
MODEL_MPP = 0.55  # the test models' pixel size


def _torch_map(checkpoint: Path, image: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    from micronet.trainer.checkpoint import load_checkpoint

    model, info = load_checkpoint(checkpoint)
    x = (torch.from_numpy(np.array(image)).float() - torch.tensor(info.mean)) / torch.tensor(info.std)  # (H, W, 3)
    with torch.no_grad():
        return model(x.permute(2, 0, 1)[None])[0, 0].numpy()  # (H, W)


# --- parity with the torch model ------------------------------------------------------


def test_onnx_map_matches_torch_model(tiny_model, crchisto_images, detector):
    checkpoint, _ = tiny_model
    image = crchisto_images[1]
    expected = _torch_map(checkpoint, image)
    got = detector.backend.infer(image[None])  # (1, 1, H, W)
    assert got.shape == (1, 1, *image.shape[:2]) and got.dtype == np.float32
    assert np.abs(got[0, 0] - expected).max() <= 1e-4


def test_detections_equal_find_peaks_on_torch_map(tiny_model, crchisto_images, detector, detections_agree):
    checkpoint, _ = tiny_model
    image = crchisto_images[2]
    xy, scores = find_peaks(_torch_map(checkpoint, image), detector.threshold, detector.min_distance)
    found = detector.detect(image)
    assert len(xy) > 50
    # The same peaks, up to near-ties that another instruction set may break the other way.
    detections_agree(found.xy, xy, radius=0.0)
    # Where a peak sits on the same pixel, its score agrees to the fp32 rounding of two engines.
    pred_idx, true_idx = match_points(found.xy, xy, 0.0)
    np.testing.assert_allclose(found.scores[pred_idx], scores[true_idx], atol=1e-4)
    assert np.all(np.diff(found.scores) <= 0)  # highest first
    assert found.image_shape == image.shape[:2] and found.mpp is None


def test_defaults_come_from_the_model_info(detector):
    assert detector.threshold == pytest.approx(detector.info.threshold)
    assert detector.min_distance == detector.info.min_distance == 3
    assert detector.backend_name == "onnxruntime-cpu" and detector.device == "cpu"
    assert detector.tile_margin == 80  # ceil8(receptive radius 76 + min_distance 3)


def test_threshold_override_keeps_only_stronger_peaks(tiny_onnx, crchisto_images, detector):
    image = crchisto_images[3]
    base = detector.detect(image)
    higher = float(np.median(base.scores))
    strict = Detector(tiny_onnx, device="cpu", threads=2, threshold=higher).detect(image)
    assert 0 < len(strict) < len(base)
    assert np.all(strict.scores > higher)


# --- tiling ----------------------------------------------------------------------------


def _assert_same_detections(tiled: Detections, whole: Detections) -> None:
    # The same peaks in the same order; a score may differ in its last bit, because the
    # CPU provider's convolutions block the work differently at other input sizes.
    np.testing.assert_array_equal(tiled.xy, whole.xy)
    np.testing.assert_allclose(tiled.scores, whole.scores, rtol=1e-6, atol=0)


def _mosaic(images: list[np.ndarray], rows: int, cols: int) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate([np.concatenate(images[r * cols : (r + 1) * cols], axis=1) for r in range(rows)], axis=0))


@pytest.mark.slow
def test_tiled_detection_equals_whole_image(tiny_onnx, crchisto_images):
    image = _mosaic(crchisto_images, 4, 4)  # (2000, 2000, 3) of real H&E
    whole = Detector(tiny_onnx, device="cpu", threads=2, tile_size=2048).detect(image)
    tiled_detector = Detector(tiny_onnx, device="cpu", threads=2, tile_size=1024)  # 3 × 3 tiles, margin 80
    tiled = tiled_detector.detect(image)
    assert len(whole) > 1000
    _assert_same_detections(tiled, whole)


@pytest.mark.slow
def test_tiled_detection_equals_whole_image_at_odd_sizes(tiny_onnx, crchisto_images):
    # Sizes that are no multiple of 8 exercise the cropped up-sampling at the far edges.
    image = np.ascontiguousarray(_mosaic(crchisto_images[4:10], 2, 3)[:997, :1203])
    whole = Detector(tiny_onnx, device="cpu", threads=2, tile_size=1024 + 256).detect(image)
    tiled = Detector(tiny_onnx, device="cpu", threads=2, tile_size=512).detect(image)  # 3 × 4 tiles
    _assert_same_detections(tiled, whole)


def test_tile_size_and_margin_are_checked(tiny_onnx):
    with pytest.raises(ValueError, match="multiples of 8"):
        Detector(tiny_onnx, device="cpu", tile_size=1020)
    with pytest.raises(ValueError, match="more than 2 × margin"):
        Detector(tiny_onnx, device="cpu", tile_size=128, tile_margin=64)
    with pytest.raises(ValueError, match="batch_size"):
        Detector(tiny_onnx, device="cpu", batch_size=0)


# --- pixel size -----------------------------------------------------------------------


def test_blur_model_finds_blob_centres(blur_onnx, make_nuclei):
    image, centres = make_nuclei(200, 300, 30)
    found = Detector(blur_onnx, device="cpu", threads=2, tile_margin=BLUR_MARGIN).detect(image)
    m = evaluate_points(found.xy, centres, radius=0.5)
    assert (m.tp, m.fp, m.fn) == (30, 0, 0)


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_mpp_resampling_returns_positions_in_callers_pixels(blur_onnx, factor, make_nuclei):
    from PIL import Image

    image, centres = make_nuclei(240, 320, 25, seed=1, sigma=4.0, spacing=24)
    det = Detector(blur_onnx, device="cpu", threads=2, tile_margin=BLUR_MARGIN)
    at_model = det.detect(image)
    h, w = round(240 * factor), round(320 * factor)
    scaled = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    # The caller's pixels are `factor` times smaller than the model's.
    found = det.detect(scaled, mpp=MODEL_MPP / factor)
    assert found.image_shape == (h, w) and found.mpp == pytest.approx(MODEL_MPP / factor)
    expected = (at_model.xy + 0.5) * factor - 0.5  # pixel centres correspond
    m = evaluate_points(found.xy, expected, radius=1.5)
    assert m.fp == 0 and m.fn == 0 and len(found) == 25


def test_mpp_within_one_percent_is_not_resampled(blur_onnx, make_nuclei):
    image, _ = make_nuclei(120, 160, 8)
    det = Detector(blur_onnx, device="cpu", threads=2, tile_margin=BLUR_MARGIN)
    a = det.detect(image)
    b = det.detect(image, mpp=MODEL_MPP * 1.009)
    np.testing.assert_array_equal(a.xy, b.xy)
    assert b.mpp == pytest.approx(MODEL_MPP * 1.009)


@pytest.mark.parametrize(
    ("mpp", "says"),
    [
        (100, "100 µm/px is 182× the model's 0.55 µm/px; expected 0.069 to 4.4 µm/px"),  # was OOM-killed at 24 GB
        (20, "20 looks like a magnification: 20× is about 0.5 µm/px"),  # ran for minutes at 0%
        (1e-6, "1e-06 looks like metres"),  # returned 0 nuclei without a word
    ],
)
def test_an_out_of_range_mpp_is_refused_before_any_work(blur_onnx, monkeypatch, mpp, says):
    import micronet.runtime.detector as detector_module

    det = Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN)
    monkeypatch.setattr(detector_module, "resample", lambda *a, **k: pytest.fail("resampled before refusing"))
    with pytest.raises(ValueError, match=says) as info:
        det.detect(np.zeros((500, 500, 3), np.uint8), mpp=mpp)
    assert str(info.value).startswith("mpp: ") and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"mpp\[1\]: "):
        det.detect_batch([np.zeros((50, 50, 3), np.uint8)] * 2, mpp=[0.55, mpp])


def test_work_beyond_the_limits_is_refused_before_allocating(blur_onnx, monkeypatch, make_nuclei):
    import micronet.runtime.detector as detector_module

    image, _ = make_nuclei(500, 500, 10)
    small = Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN, max_megapixels=1)
    tight = Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN, tile_size=256, max_memory_gb=0.2)
    monkeypatch.setattr(detector_module, "resample", lambda *a, **k: pytest.fail("resampled before refusing"))
    with pytest.raises(ValueError, match=r"image: 500×500 px resampled .* 2000×2000 px \(4 MP\), more than max_megapixels=1; run it as a slide"):
        small.detect(image, mpp=MODEL_MPP * 4)
    # Alone each image fits (0.195 GiB with its tiles and a possible deconvolution, deblur="auto");
    # ten resampled copies do not.
    with pytest.raises(ValueError, match=r"10 images: needs an estimated 0\.3 GiB .* pass a smaller tile_size or batch_size, fewer images"):
        tight.detect_batch([image] * 10, mpp=MODEL_MPP * 4)
    monkeypatch.undo()
    assert len(tight.detect(image, mpp=MODEL_MPP * 4)) == 10
    for bad in ({"max_megapixels": 0}, {"max_memory_gb": -1}, {"max_megapixels": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN, **bad)


@pytest.mark.parametrize(("threshold", "error"), [(-5, ValueError), (-0.01, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("0.5", TypeError)])
def test_invalid_thresholds_are_refused(blur_onnx, threshold, error):
    # The maps of the bundled models dip to about -0.2 in the background (a linear head
    # over targets in [0, 5]): a negative threshold only admits that ripple.
    with pytest.raises(error, match="threshold: expected a"):
        Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN, threshold=threshold)
    assert Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN, threshold=0).threshold == 0.0


def test_a_misspelt_model_name_lists_the_bundled_models():
    with pytest.raises(ValueError, match=r"or one of the bundled models: default, fast-cpu, phenotypes, accurate; got 'fast_cpu'; did you mean 'fast-cpu'\?"):
        Detector("fast_cpu")


# --- inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (np.zeros((64, 64), np.uint8), ValueError, "grayscale"),
        (np.zeros((64, 64, 1), np.uint8), ValueError, "grayscale"),
        (np.zeros((64, 64, 4), np.uint8), ValueError, "drop the alpha"),
        (np.zeros((3, 64, 64), np.uint8), ValueError, "channels-first"),
        (np.zeros((64, 64, 2), np.uint8), ValueError, r"expected an \(H, W, 3\)"),
        (np.zeros((2, 64, 64, 3), np.uint8), ValueError, "detect_batch"),
        (np.zeros((64, 64, 3), np.uint16), ValueError, "16-bit: convert to 8-bit first|16-bit image"),
        (np.zeros((64, 64, 3), np.float32), ValueError, "uint8 RGB with values 0–255"),
        (np.zeros((64, 64, 3), np.int64), ValueError, "got dtype int64"),
        (np.zeros((0, 64, 3), np.uint8), ValueError, "empty"),
        ([[1, 2, 3]], TypeError, "got list"),
        (None, TypeError, "got NoneType"),
    ],
)
def test_bad_images_raise_clear_errors(blur_onnx, image, error, match):
    det = Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN)
    with pytest.raises(error, match=match):
        det.detect(image)


def test_bad_image_files_raise_clear_errors(blur_onnx, tmp_path):
    from PIL import Image

    det = Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN)
    with pytest.raises(FileNotFoundError, match="image not found"):
        det.detect(tmp_path / "missing.png")
    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(tmp_path / "rgba.png")
    with pytest.raises(ValueError, match=r"rgba\.png.*RGBA \(an alpha channel.*save the file without it"):
        det.detect(tmp_path / "rgba.png")
    Image.fromarray(np.zeros((32, 32), np.uint16)).save(tmp_path / "gray16.png")
    with pytest.raises(ValueError, match="grayscale"):
        det.detect(tmp_path / "gray16.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        det.detect(tmp_path / "junk.png")
    with pytest.raises(ValueError, match=r"\.png, \.jpg"):
        det.detect(tmp_path / "notes.txt")


@pytest.mark.parametrize("mpp", [0, -0.5, float("nan"), "0.5", True])
def test_bad_mpp_raises(blur_onnx, mpp):
    det = Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN)
    with pytest.raises(ValueError, match="mpp"):
        det.detect(np.zeros((16, 16, 3), np.uint8), mpp=mpp)


def test_image_files_give_the_same_detections_as_arrays(blur_onnx, tmp_path, make_nuclei):
    import tifffile
    from PIL import Image

    image, _ = make_nuclei(100, 140, 10, seed=3)
    det = Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN)
    expected = det.detect(image)
    Image.fromarray(image).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", image)
    for name in ("a.png", "a.tif"):
        got = det.detect(tmp_path / name)
        np.testing.assert_array_equal(got.xy, expected.xy)
    np.testing.assert_array_equal(det.detect(Image.fromarray(image)).xy, expected.xy)  # PIL images work too


def test_tiny_and_non_contiguous_images_work(blur_onnx, make_nuclei):
    det = Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN)
    assert isinstance(det.detect(np.full((1, 1, 3), 255, np.uint8)), Detections)
    image, _ = make_nuclei(100, 120, 5, seed=4)
    flipped = image[:, ::-1]
    np.testing.assert_array_equal(det.detect(flipped).xy, det.detect(np.ascontiguousarray(flipped)).xy)


def test_detect_batch_equals_detect(blur_onnx, make_nuclei):
    det = Detector(blur_onnx, device="cpu", threads=2, tile_size=64, tile_margin=BLUR_MARGIN, batch_size=3)
    images = [make_nuclei(h, w, 4, seed=s)[0] for s, (h, w) in enumerate([(100, 120), (100, 120), (96, 112), (100, 120)])]
    batch = det.detect_batch(images, mpp=[None, MODEL_MPP * 2, None, None])
    singles = [det.detect(im, mpp=m) for im, m in zip(images, [None, MODEL_MPP * 2, None, None])]
    assert len(batch) == 4
    for a, b in zip(batch, singles):
        np.testing.assert_array_equal(a.xy, b.xy)
        np.testing.assert_array_equal(a.scores, b.scores)
    stacked = det.detect_batch(np.stack([images[0], images[1]]))
    np.testing.assert_array_equal(stacked[1].xy, det.detect(images[1]).xy)  # an (N, H, W, 3) array is a batch
    with pytest.raises(ValueError, match="one pixel size per image"):
        det.detect_batch(images, mpp=[None])
    with pytest.raises(TypeError, match="sequence of images"):
        det.detect_batch(images[0][0])  # one (W, 3) row is no batch
    assert det.detect_batch([]) == []


# --- models and backends --------------------------------------------------------------


def test_model_paths_are_checked(tmp_path, blur_onnx):
    with pytest.raises(ValueError, match=r"\.onnx \(onnxruntime\), \.engine \(tensorrt\)"):
        Detector(tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        Detector(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="device"):
        Detector(blur_onnx, device="gpu")
    with pytest.raises(ValueError, match="backend='tensorrt' cannot run"):
        Detector(blur_onnx, backend="tensorrt")
    with pytest.raises(ValueError, match="receptive field of architecture 'blurred_darkness' is not known"):
        Detector(blur_onnx)  # no tile_margin for an unknown architecture
    with pytest.raises(TypeError, match="model"):
        Detector(42)


def test_engine_without_tensorrt_names_the_gpu_extra(tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed")
    from micronet.runtime.model_info import ModelInfo

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 16)
    info = ModelInfo(architecture={"name": "micronet"}, mean=[0, 0, 0], std=[1, 1, 1], mpp=0.5, threshold=1.0)
    sidecar = {"micronet": json.loads(info.to_json()), "tensorrt_version": "10.3.0", "gpu_name": "NVIDIA L4", "compute_capability": "8.9"}
    (tmp_path / "model.engine.json").write_text(json.dumps(sidecar))
    with pytest.raises(ImportError, match=r"micronet-sdk\[gpu\]"):
        Detector(engine)
    with pytest.raises(ValueError, match="CUDA GPUs only"):
        Detector(engine, device="cpu")


def test_default_model_is_the_bundled_one_or_a_clear_error():
    try:
        path = bundled_model()
    except FileNotFoundError as exc:
        assert "bundled default model" in str(exc) and "micronet_crchisto.onnx" in str(exc)
        with pytest.raises(FileNotFoundError, match="bundled default model"):
            Detector()
    else:
        det = Detector(device="cpu", threads=2)
        assert det.model_path == path and det.info.mpp > 0


def test_bundled_models_by_name_and_their_errors(tmp_path, monkeypatch):
    assert set(BUNDLED_MODELS) == {"default", "fast-cpu", "phenotypes", "accurate"}
    with pytest.raises(ValueError, match="default, fast-cpu"):
        bundled_model("fastest")
    monkeypatch.chdir(tmp_path)
    assert resolve_model(None) == bundled_model() == resolve_model("default")
    assert resolve_model("fast-cpu") == bundled_model("fast-cpu")
    assert resolve_model("my.onnx") == Path("my.onnx")
    fast = Detector("fast-cpu", device="cpu", threads=2)
    default = Detector("default", device="cpu", threads=2)
    assert fast.info.precision == "int8" and fast.info.architecture["activation"] == "relu"
    assert default.info.precision == "fp32" and default.info.architecture.get("activation", "elu") == "elu"
    assert fast.info.mpp == default.info.mpp
    # each margin is its class logits' reach: the default's head has two residual blocks at 1/4
    assert (fast.tile_margin, default.tile_margin) == (88, 104)
    (tmp_path / "default").write_bytes(b"x")  # an existing file wins over the name
    assert resolve_model("default") == Path("default")


@pytest.mark.parametrize("shape", [(500, 500), (2000, 1500), (1024, 3000), (81, 7)])
def test_plan_tiles_partitions_the_image_on_the_grid(detector, shape):
    tiles = detector.plan_tiles(*shape)
    covered = np.zeros(shape, np.int32)
    for t in tiles:
        assert t.y0 % 8 == 0 and t.x0 % 8 == 0
        assert t.y1 - t.y0 <= detector.tile_size and t.x1 - t.x0 <= detector.tile_size
        assert t.y0 <= t.core_y0 < t.core_y1 <= t.y1 and t.x0 <= t.core_x0 < t.core_x1 <= t.x1
        covered[t.core_y0 : t.core_y1, t.core_x0 : t.core_x1] += 1
    assert (covered == 1).all()


def test_default_tile_fits_the_models_activation_memory_on_the_cpu(detector, tiny_onnx):
    from micronet.runtime.tiling import memory_tile_size

    arch, precision = detector.info.architecture, detector.info.precision
    assert detector.tile_size == memory_tile_size(arch, precision) != 1024  # 1136 for the tiny fp32 model
    assert Detector(tiny_onnx, device="cpu", threads=1, batch_size=2).tile_size == memory_tile_size(arch, precision, 2)
    assert Detector(tiny_onnx, device="cpu", threads=1, tile_size=256).tile_size == 256  # the caller's wins

    class OnGpu:
        name, device = "stand-in gpu", "cuda"

        def __init__(self, info):
            self.info = info

        def infer(self, batch):  # pragma: no cover - never called
            raise AssertionError

    assert Detector(backend=OnGpu(detector.info)).tile_size == 1024  # host memory is not what bounds it there


def test_a_backend_object_can_be_given(detector):
    class Recording:
        name, device = "recording", "cpu"

        def __init__(self, inner):
            self.inner, self.info, self.shapes = inner, inner.info, []

        def infer(self, batch):
            self.shapes.append(batch.shape)
            return self.inner.infer(batch)

    backend = Recording(detector.backend)
    det = Detector(backend=backend, batch_size=2)
    images = [np.zeros((40, 48, 3), np.uint8)] * 3
    det.detect_batch(images)
    assert backend.shapes == [(2, 40, 48, 3), (1, 40, 48, 3)]
    with pytest.raises(ValueError, match="not both"):
        Detector("x.onnx", backend=backend)
    with pytest.raises(TypeError, match="backend"):
        Detector(backend=object())


def test_an_engine_profile_bounds_tiles_and_batches(blur_onnx, make_nuclei):
    from micronet.runtime.backends.onnxruntime import OnnxRuntimeBackend

    class ProfiledBackend:
        """A backend that, like a TensorRT engine, accepts only N, H, W in a profile."""

        name, device = "profiled", "cpu"
        profile = ((1, 64, 64, 3), (1, 128, 128, 3), (2, 256, 256, 3))

        def __init__(self):
            self.inner = OnnxRuntimeBackend(blur_onnx, device="cpu", threads=1)
            self.info, self.shapes = self.inner.info, []

        def infer(self, batch):
            (lo, _, hi), shape = self.profile, batch.shape
            assert all(a <= b <= c for a, b, c in zip(lo, shape, hi)), f"{shape} outside the profile"
            self.shapes.append(shape)
            return self.inner.infer(batch)

    backend = ProfiledBackend()
    assert Detector(backend=backend, tile_margin=BLUR_MARGIN).batch_size == 1  # CPU default
    det = Detector(backend=backend, tile_margin=BLUR_MARGIN, batch_size=2)
    assert (det.tile_size, det.batch_size) == (256, 2)
    plain = Detector(blur_onnx, device="cpu", threads=1, tile_margin=BLUR_MARGIN, tile_size=4096)
    small, _ = make_nuclei(48, 60, 2, spacing=16)  # below the profile's 64 × 64: mirrored out
    np.testing.assert_array_equal(det.detect(small).xy, plain.detect(small).xy)
    assert backend.shapes[-1] == (1, 64, 64, 3)
    large, _ = make_nuclei(300, 530, 40)  # last tiles would be thinner than 64 without the profile
    np.testing.assert_array_equal(det.detect(large).xy, plain.detect(large).xy)
    with pytest.raises(ValueError, match="up to 256×256"):
        Detector(backend=backend, tile_margin=BLUR_MARGIN, tile_size=512)
    with pytest.raises(ValueError, match="batches up to 2"):
        Detector(backend=backend, tile_margin=BLUR_MARGIN, batch_size=4)


# --- threads --------------------------------------------------------------------------


def test_concurrent_detection_equals_serial(detector, crchisto_images):
    images = [im[:256, :256] for im in crchisto_images[:4]]
    serial = [detector.detect(im) for im in images]
    results: list[Detections | None] = [None] * 4
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(k: int) -> None:
        try:
            barrier.wait()
            for _ in range(2):
                results[k] = detector.detect(images[k])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, serial):
        np.testing.assert_array_equal(got.xy, want.xy)
        np.testing.assert_array_equal(got.scores, want.scores)


def test_bundled_models_known_answers_on_the_test_split(shared_data):
    # Known answers on real images (docs/results.md): the default (paper width, retrained
    # with photometric augmentation, halfway weights of the eleventh round) 0.8164,
    # fast-cpu (lean, ReLU, int8; halfway weights of the tenth round) 0.8057, which trades
    # at most 0.02 F1 for its ~4x speed.
    # fast-cpu's 7-bit weights cannot saturate, so its int8 integers are the same on every
    # x86 CPU; the tolerance covers float near-ties only.
    from micronet.runtime.evaluation.datasets import load_point_folder
    from micronet.runtime.evaluation.metrics import evaluate_images

    data = load_point_folder(shared_data / "crchisto", "test")
    f1 = {}
    for name in ("default", "fast-cpu"):
        det = Detector(name, device="cpu", threads=2)
        preds = [det.detect(im, mpp=data.mpp).xy for im in data.images]
        f1[name] = evaluate_images(preds, data.points, 6.0).pooled.f1
    assert f1["default"] == pytest.approx(0.8164, abs=0.003)
    assert f1["fast-cpu"] == pytest.approx(0.8057, abs=0.003)
    assert f1["fast-cpu"] >= f1["default"] - 0.02


# --- the command line's small things --------------------------------------------------


def test_version_comes_from_the_installed_distribution(capsys):
    import importlib.metadata
    import re

    import micronet
    from micronet.cli import main

    assert micronet.__version__ == importlib.metadata.version("micronet-sdk")
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert micronet._SOURCE_VERSION == re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"micronet {micronet.__version__}"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--threshold", "-5"], "threshold: expected a finite number >= 0"),
        (["--model", "fast_cpu"], "one of the bundled models: default, fast-cpu"),
    ],
)
def test_cli_refuses_bad_thresholds_and_model_names_in_one_line(tmp_path, capsys, args, says):
    from PIL import Image

    from micronet.cli import main

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["detect", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("micronet detect: error: ") and says in err and err.count("\n") == 1
