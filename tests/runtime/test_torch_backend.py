"""The torch backend: an ONNX export run by torch. On the CPU (everywhere torch is
installed) it must compute ONNX Runtime's maps and detections, class logits included;
it refuses what it cannot run, naming why; importing it imports no torch. On a CUDA GPU
(skips elsewhere, with the reason) it runs fp16, hands the map to CuPy without a copy,
and agrees with the model's known answers within the fp16 tolerance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from micronet.runtime.detector import Detector, bundled_model, bundled_sample, read_image
from micronet.runtime.model_info import METADATA_KEY, ModelInfo

torch = pytest.importorskip("torch", reason="the torch backend needs torch (pip install 'micronet-sdk[torch]')")
pytest.importorskip("onnx", reason="the torch backend reads the ONNX file with onnx")

from micronet.runtime.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from micronet.runtime.backends.torch import TorchBackend  # noqa: E402

CLASSES = ("epithelial", "fibroblast", "other")


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return np.ascontiguousarray(read_image(bundled_sample())[..., :3])


@pytest.fixture(scope="module")
def default_onnx() -> Path:
    try:
        return bundled_model("default")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def class_exports(tmp_path_factory) -> dict[str, Path]:
    """fp32 and fp16 exports of a tiny MicroNet with a class head."""
    from micronet.export.onnx import export_model
    from micronet.trainer.models import create_model

    torch.manual_seed(0)
    model = create_model("micronet_tiny", classes=CLASSES).eval()
    info = ModelInfo(architecture=model.config_dict(), mean=[180.0, 130.0, 170.0], std=[40.0, 45.0, 35.0], mpp=0.55, threshold=0.0)
    folder = tmp_path_factory.mktemp("torch_cls")
    return {p: export_model(model, info, folder / f"cls.{p}.onnx", p) for p in ("fp32", "fp16")}


# --- on the CPU: the same answers as ONNX Runtime ----------------------------------------


@pytest.mark.parametrize("size", [(256, 320), (253, 250)])  # the aligned fast path, the general one
def test_torch_on_the_cpu_computes_onnxruntimes_maps(default_onnx, sample, size):
    h, w = size
    batch = np.ascontiguousarray(np.stack([sample[:h, :w], sample[-h:, -w:]]))
    want = OnnxRuntimeBackend(default_onnx, device="cpu").infer(batch)
    got = TorchBackend(default_onnx, device="cpu").infer(batch)
    # The map and the class logits of the default's head at 1/4 (a Resize to full resolution).
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == want.shape == (2, 1 + 4, h, w)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_detector_on_torch_cpu_finds_what_onnxruntime_finds(default_onnx, sample, detections_agree):
    crop = np.ascontiguousarray(sample[:384, :448])
    ort = Detector(default_onnx, device="cpu").detect(crop)
    det = Detector(default_onnx, backend="torch", device="cpu")
    assert (det.backend_name, det.device, det.info.precision) == ("torch-cpu", "cpu", "fp32")
    found = det.detect(crop)
    assert len(ort) > 30
    detections_agree(found.xy, ort.xy, max_unmatched_share=0.0)
    np.testing.assert_allclose(found.scores, ort.scores, atol=1e-4)


def test_a_class_head_gives_the_map_and_logits_and_the_same_phenotypes(class_exports, sample, detections_agree):
    path = class_exports["fp32"]
    batch = np.ascontiguousarray(np.stack([sample[:64, :72], sample[100:164, 40:112]]))
    want = OnnxRuntimeBackend(path, device="cpu").infer(batch)
    got = TorchBackend(path, device="cpu").infer(batch)
    assert got.shape == want.shape == (2, 1 + len(CLASSES), 64, 72)
    np.testing.assert_allclose(got, want, atol=1e-4)
    crop = np.ascontiguousarray(sample[:200, :240])
    a = Detector(path, device="cpu").detect(crop)
    b = Detector(path, backend="torch", device="cpu").detect(crop)
    assert b.class_names == CLASSES and len(a) > 0
    detections_agree(b.xy, a.xy, max_unmatched_share=0.0)
    # Near-equal scores may sort in another order: compare the phenotypes position by position.
    order_a, order_b = np.lexsort(a.xy.T), np.lexsort(b.xy.T)
    np.testing.assert_array_equal(b.xy[order_b], a.xy[order_a])
    np.testing.assert_allclose(b.class_probabilities[order_b], a.class_probabilities[order_a], atol=1e-4)


def test_an_fp16_export_runs_in_fp32_on_the_cpu(class_exports, sample):
    path = class_exports["fp16"]
    batch = np.ascontiguousarray(sample[None, :64, :64])
    backend = TorchBackend(path, device="cpu")
    assert backend.info.precision == "fp32"
    np.testing.assert_allclose(backend.infer(batch), OnnxRuntimeBackend(path, device="cpu").infer(batch), atol=0.05)


def test_the_known_answer_check_passes_on_torch_cpu(default_onnx):
    from micronet.runtime.diagnostics.check import check_detector

    result = check_detector(Detector(default_onnx, backend="torch", device="cpu"), repeats=1)
    assert result.backend == "torch-cpu" and result.status == "agrees", result.problems


# --- what it refuses ----------------------------------------------------------------------


def test_int8_exports_and_cuda_without_cuda_are_refused(default_onnx, tmp_path):
    try:
        int8 = bundled_model("fast-cpu")
    except FileNotFoundError:
        int8 = None
    if int8 is not None:
        with pytest.raises(ValueError, match="int8 QDQ export, made for ONNX Runtime on the CPU"):
            TorchBackend(int8, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device='cuda': this torch .* sees no CUDA GPU"):
            Detector(default_onnx, backend="torch", device="cuda")
    with pytest.raises(ValueError, match="device_id=1 selects a GPU, but device='cpu'"):
        TorchBackend(default_onnx, device="cpu", device_id=1)
    with pytest.raises(ValueError, match="backend='torch' runs .onnx exports without a threads setting"):
        Detector(default_onnx, backend="torch", device="cpu", threads=2)
    with pytest.raises(FileNotFoundError):
        TorchBackend(tmp_path / "absent.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an ONNX model"):
        TorchBackend(tmp_path / "bad.onnx", device="cpu")
    with pytest.raises(ValueError, match=r"expected an \(N, H, W, 3\) uint8 array, got float32"):
        TorchBackend(default_onnx, device="cpu").infer(np.zeros((1, 8, 8, 3), np.float32))


def _model_with(path: Path, op: str) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])
    y = helper.make_tensor_value_info("proximity", TensorProto.FLOAT, ["N", 1, "H", "W"])
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node(op, ["f"], ["g"]),
        helper.make_node("ReduceMean", ["g"], ["m"], axes=[3], keepdims=1),
        helper.make_node("Transpose", ["m"], ["proximity"], perm=[0, 3, 1, 2]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, ModelInfo(architecture={"name": "micronet"}, mean=[0.0] * 3, std=[1.0] * 3, mpp=0.5, threshold=0.5).to_json()
    onnx.save(model, str(path))
    return path


def test_an_operator_it_does_not_run_is_named_at_load(tmp_path):
    with pytest.raises(ValueError, match=r"does not run ONNX 'Erf' \(it runs Abs, Add, .*\); use the onnxruntime backend"):
        TorchBackend(_model_with(tmp_path / "erf.onnx", "Erf"), device="cpu")
    backend = TorchBackend(_model_with(tmp_path / "sigmoid.onnx", "Sigmoid"), device="cpu")  # a run-able one
    out = backend.infer(np.full((1, 4, 5, 3), 255, np.uint8))
    np.testing.assert_allclose(out, np.full((1, 1, 4, 5), 1.0, np.float32), atol=1e-6)


def test_without_torch_the_error_names_the_extra(default_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"the torch backend needs torch: pip install 'micronet-sdk\[torch\]'"):
        TorchBackend(default_onnx, device="cpu")


def test_importing_the_backend_imports_no_torch():
    code = "import sys, micronet.runtime.backends.torch, micronet.runtime.backends.onnx_torch; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


# --- on a CUDA GPU --------------------------------------------------------------------------


def require_torch_cuda():
    """torch with CUDA and CuPy on a machine with a GPU; skips otherwise, saying which."""
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} sees no CUDA GPU (CUDA build: {torch.version.cuda})")
    pytest.importorskip("cupy", reason="CuPy not installed (pip install 'micronet-sdk[gpu]')")
    return pytest.importorskip("cupy")


@pytest.mark.gpu
def test_torch_cuda_runs_fp16_and_leaves_the_map_on_the_gpu(default_onnx, sample):
    cupy = require_torch_cuda()
    backend = TorchBackend(default_onnx, device="cuda")
    assert (backend.name, backend.device, backend.info.precision) == ("torch-cuda", "cuda", "fp16")
    batch = np.ascontiguousarray(np.stack([sample[:256, :256], sample[-256:, -256:]]))
    out = backend.infer(batch)
    assert isinstance(out, cupy.ndarray) and out.dtype == cupy.float32 and out.shape == (2, 1, 256, 256)
    want = OnnxRuntimeBackend(default_onnx, device="cpu").infer(batch)
    assert float(np.abs(cupy.asnumpy(out) - want).max()) < 0.1  # the fp16 tolerance of micronet check
    on_gpu = backend.infer(cupy.asarray(batch))  # a batch already on the GPU is read in place
    np.testing.assert_array_equal(cupy.asnumpy(on_gpu), cupy.asnumpy(out))


@pytest.mark.gpu
def test_torch_cuda_pipelines_two_batches_and_finds_cpu_peaks(default_onnx, sample):
    cupy = require_torch_cuda()
    from micronet.runtime.peaks import find_peaks, find_peaks_cuda

    backend = TorchBackend(default_onnx, device="cuda")
    a, b = (np.ascontiguousarray(np.stack([sample[:256, :256]] * 4)), np.ascontiguousarray(np.stack([sample[-256:, -256:]] * 4)))
    job_a, job_b = backend.infer_async(a), backend.infer_async(b)  # two in flight
    maps_b, maps_a = job_b.wait(), job_a.wait()
    for maps in (maps_a, maps_b):
        xy, scores = find_peaks_cuda(maps[0, 0], 1.0, 3)
        want_xy, want_scores = find_peaks(cupy.asnumpy(maps[0, 0]), 1.0, 3)
        np.testing.assert_array_equal(xy, want_xy)
        np.testing.assert_array_equal(scores, want_scores)


@pytest.mark.gpu
def test_torch_cuda_agrees_with_the_known_answers_and_gathers_classes_on_the_gpu(default_onnx, class_exports, sample):
    require_torch_cuda()
    from micronet.runtime.diagnostics.check import check_detector

    result = check_detector(Detector(default_onnx, backend="torch", device="cuda:0"), repeats=1)
    assert result.backend == "torch-cuda" and result.precision == "fp16" and result.status == "agrees", result.problems
    crop = np.ascontiguousarray(sample[:256, :256])
    path = class_exports["fp32"]
    cpu_map = OnnxRuntimeBackend(path, device="cpu").infer(crop[None])[0, 0]
    xi = float(np.quantile(cpu_map, 0.995))  # a few strong peaks of the random model, clear of fp16 noise
    gpu = Detector(path, backend="torch", device="cuda", threshold=xi).detect(crop)
    cpu = Detector(path, device="cpu", threshold=xi).detect(crop)
    assert gpu.class_names == CLASSES and len(cpu) > 0
    assert gpu.class_probabilities.shape == (len(gpu), len(CLASSES))
    np.testing.assert_allclose(gpu.class_probabilities.sum(axis=1), 1.0, atol=1e-5)
    from micronet.runtime.evaluation.matching import evaluate_points

    assert evaluate_points(gpu.xy, cpu.xy, radius=1.0).f1 >= 0.9
