"""The ONNX Runtime backend: file validation, session tuning, the Backend contract, and
(on a CUDA machine) maps that stay on the GPU (micronet.runtime.backends.onnxruntime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from micronet.runtime.backends import Backend
from micronet.runtime.backends.onnxruntime import OnnxRuntimeBackend, physical_cores
from micronet.runtime.model_info import METADATA_KEY


def _cuda_ep() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _save_with_metadata(model, path: Path, metadata: dict[str, str]) -> Path:
    import onnx

    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def _foreign_model(path: Path, metadata: dict[str, str] | None = None) -> Path:
    """An image classifier's signature: float32 (1, 3, 224, 224) → (1, 3, 224, 224)."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["pixel_values"], ["logits"])],
        "foreign",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 224, 224])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return _save_with_metadata(model, path, metadata or {"author": "someone else"})


# --- files that are not MicroNet models -----------------------------------------------


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        OnnxRuntimeBackend(tmp_path / "nope.onnx")


@pytest.mark.parametrize("content", [b"", b"hello, not a protobuf", bytes(range(256)) * 8])
def test_corrupt_file_is_not_an_onnx_model(tmp_path, content):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not an ONNX model"):
        OnnxRuntimeBackend(path, device="cpu")


def test_foreign_onnx_model_is_refused_with_what_was_found(tmp_path):
    path = _foreign_model(tmp_path / "classifier.onnx")
    with pytest.raises(ValueError, match="not a MicroNet model") as err:
        OnnxRuntimeBackend(path, device="cpu")
    message = str(err.value)
    assert "no 'micronet' metadata; expected one input uint8 N×H×W×3." in message
    assert "Found metadata keys: author; inputs: pixel_values: tensor(float) [1, 3, 224, 224]" in message
    assert "outputs: logits: tensor(float) [1, 3, 224, 224]" in message


def test_right_signature_without_metadata_is_refused(tmp_path, make_blur_model):
    path = make_blur_model(tmp_path / "anonymous.onnx", metadata=False)
    with pytest.raises(ValueError, match=r"not a MicroNet model: no 'micronet' metadata\. Found metadata keys: none; inputs: image: tensor\(uint8\)"):
        OnnxRuntimeBackend(path, device="cpu")


@pytest.mark.parametrize(
    ("value", "match"),
    [("{not json", "not valid JSON"), (json.dumps({"format": "yolo/8"}), "not a MicroNet model .*metadata format 'yolo/8'")],
)
def test_damaged_or_foreign_metadata_is_refused(tmp_path, make_blur_model, value, match):
    path = _foreign_model(tmp_path / "m.onnx", {METADATA_KEY: value})
    with pytest.raises(ValueError, match="not a MicroNet model"):  # the signature is wrong too
        OnnxRuntimeBackend(path, device="cpu")
    pytest.importorskip("onnx")
    import onnx

    good = onnx.load(str(make_blur_model(tmp_path / "blur.onnx")))
    for entry in good.metadata_props:
        if entry.key == METADATA_KEY:
            entry.value = value
    onnx.save(good, str(tmp_path / "damaged.onnx"))
    with pytest.raises(ValueError, match=match):
        OnnxRuntimeBackend(tmp_path / "damaged.onnx", device="cpu")


def test_bad_options_raise(blur_onnx):
    with pytest.raises(ValueError, match="device: expected one of auto, cpu, cuda, got 'gpu'"):
        OnnxRuntimeBackend(blur_onnx, device="gpu")
    with pytest.raises(ValueError, match="threads"):
        OnnxRuntimeBackend(blur_onnx, threads=0)


def test_cuda_without_the_cuda_provider_says_what_to_install(blur_onnx):
    if _cuda_ep():
        pytest.skip("ONNX Runtime has its CUDA execution provider here")
    with pytest.raises(ValueError, match=r"onnxruntime-gpu.*device='cpu'"):
        OnnxRuntimeBackend(blur_onnx, device="cuda")


# --- the CPU backend --------------------------------------------------------------------


def test_cpu_backend_implements_the_contract(blur_onnx):
    backend = OnnxRuntimeBackend(blur_onnx, device="cpu")
    assert isinstance(backend, Backend)
    assert (backend.name, backend.device) == ("onnxruntime-cpu", "cpu")
    assert backend.info.mpp == pytest.approx(0.55) and backend.info.min_distance == 3
    batch = np.zeros((2, 24, 40, 3), np.uint8)
    batch[1] = 255
    maps = backend.infer(batch)
    assert isinstance(maps, np.ndarray) and maps.shape == (2, 1, 24, 40) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[0], 1.0, atol=1e-6)  # black is maximally dark
    np.testing.assert_allclose(maps[1], 0.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\) uint8"):
        backend.infer(np.zeros((24, 40, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\) uint8"):
        backend.infer(np.zeros((1, 24, 40, 3), np.float32))


def test_cpu_session_is_tuned_for_throughput(blur_onnx):
    import onnxruntime

    options = OnnxRuntimeBackend(blur_onnx, device="cpu")._session.get_session_options()
    assert options.intra_op_num_threads == physical_cores() >= 1
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    assert options.enable_cpu_mem_arena and not options.enable_mem_pattern  # memory bounded by one tile
    assert OnnxRuntimeBackend(blur_onnx, device="cpu", threads=1)._session.get_session_options().intra_op_num_threads == 1


# Runs tiles of two shapes, each three times, and prints the growth of the peak resident
# memory over the loaded session's, in bytes.
_ARENA_CHILD = """
import re, sys
import numpy as np
from micronet.runtime.backends.onnxruntime import OnnxRuntimeBackend
peak = lambda: int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
backend = OnnxRuntimeBackend(sys.argv[1], device="cpu", threads=2)
loaded = peak()
side = int(sys.argv[2])
for shape in [(side, side), (side - 120, side)] * 3:
    backend.infer(np.full((1, *shape, 3), 128, np.uint8))
print(peak() - loaded)
"""


def test_cpu_memory_stays_at_one_tile_of_activations(tiny_onnx):
    """The arena holds what one tile needs, whatever the number of tiles and shapes, and
    no more than the estimate the default tile size is chosen from (the memory pattern,
    ONNX Runtime's default, would add as much again from the second run on)."""
    import subprocess
    import sys

    from micronet.runtime.tiling import tile_bytes_per_pixel

    info = OnnxRuntimeBackend(tiny_onnx, device="cpu", threads=1).info
    side = 512
    out = subprocess.run([sys.executable, "-c", _ARENA_CHILD, str(tiny_onnx), str(side)], capture_output=True, text=True, check=True)
    grown = int(out.stdout.strip().splitlines()[-1])
    estimate = tile_bytes_per_pixel(info.architecture, info.precision) * side**2
    assert 0.4 * estimate < grown <= 1.1 * estimate  # the arena grows by powers of two: some tiles use less


def test_auto_device_runs_where_it_can(blur_onnx):
    backend = OnnxRuntimeBackend(blur_onnx)
    assert backend.name == ("onnxruntime-cuda" if _cuda_ep() else "onnxruntime-cpu")


# --- the CUDA backend (GPU machines only) ----------------------------------------------


@pytest.fixture
def cuda_backend(blur_onnx):
    if not _cuda_ep():
        pytest.skip("needs ONNX Runtime's CUDA execution provider (pip install onnxruntime-gpu)")
    pytest.importorskip("cupy", reason="needs CuPy (pip install 'micronet-sdk[gpu]')")
    backend = OnnxRuntimeBackend(blur_onnx, device="cuda")
    if backend.name != "onnxruntime-cuda":
        pytest.skip("the CUDA execution provider did not load (no GPU?)")
    return backend


@pytest.mark.gpu
def test_cuda_backend_returns_maps_on_the_gpu(cuda_backend, blur_onnx, make_nuclei):
    import cupy

    image, _ = make_nuclei(96, 128, 6)
    batch = np.stack([image, image[::-1].copy()])
    maps = cuda_backend.infer(batch)
    assert isinstance(maps, cupy.ndarray) and maps.shape == (2, 1, 96, 128) and maps.dtype == cupy.float32
    assert cuda_backend.device == "cuda"
    expected = OnnxRuntimeBackend(blur_onnx, device="cpu").infer(batch)
    np.testing.assert_allclose(cupy.asnumpy(maps), expected, atol=1e-5)
    view = maps[1, 0]
    del maps  # a view keeps ONNX Runtime's buffer alive
    np.testing.assert_allclose(cupy.asnumpy(view), expected[1, 0], atol=1e-5)


@pytest.mark.gpu
def test_cuda_detector_finds_the_cpu_detections(cuda_backend, blur_onnx, make_nuclei):
    from micronet.runtime.detector import Detector

    image, _ = make_nuclei(300, 400, 30)
    on_gpu = Detector(blur_onnx, device="cuda", tile_size=128, tile_margin=8).detect(image)
    on_cpu = Detector(blur_onnx, device="cpu", tile_size=128, tile_margin=8).detect(image)
    np.testing.assert_array_equal(on_gpu.xy, on_cpu.xy)
    np.testing.assert_allclose(on_gpu.scores, on_cpu.scores, atol=1e-5)
