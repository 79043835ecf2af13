"""What the GPU paths ask of CUDA, checked without a GPU against stand-ins: ONNX Runtime's
CUDA provider computes fp32 in fp32 (TF32 off) on the GPU the caller named, and the
known-answer check names that GPU; the CuPy peak finder on a caller's stream waits for
the stream that wrote the map. (The GPU tests prove the same on real hardware.)"""

from __future__ import annotations

import types

import pytest
from gpu_support import fake_cupy
from micronet.runtime import peaks
from micronet.runtime.backends import onnxruntime as ort_backend


class _Captured(Exception):
    pass


def test_onnxruntime_cuda_runs_fp32_without_tf32_on_the_named_gpu(blur_onnx, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort_backend, "_check_cuda_device", lambda device_id: None)
    seen = {}

    def load(self, ort_module, options, providers):
        seen["providers"] = providers
        raise _Captured

    monkeypatch.setattr(ort_backend.OnnxRuntimeBackend, "_load", load)
    with pytest.raises(_Captured):
        ort_backend.OnnxRuntimeBackend(blur_onnx, device="cuda", device_id=1)
    (name, options), cpu = seen["providers"]
    assert name == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"
    assert options == {"device_id": "1", "use_tf32": "0"}


def test_onnxruntime_backend_says_which_gpu_it_runs_on(blur_onnx):
    backend = ort_backend.OnnxRuntimeBackend(blur_onnx, device="cpu")
    assert backend.device_id == 0  # the CPU provider; a CUDA backend keeps the caller's N


def test_the_check_names_the_gpu_the_backend_runs_on(monkeypatch):
    import sys

    from micronet.runtime.diagnostics import check

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy((("NVIDIA L4", 8, 9), ("NVIDIA H100 80GB HBM3", 9, 0))))
    for device_id, want in ((0, "NVIDIA L4 (sm_89)"), (1, "NVIDIA H100 80GB HBM3 (sm_90)")):
        detector = types.SimpleNamespace(device="cuda", backend_name="onnxruntime-cuda", backend=types.SimpleNamespace(device_id=device_id))
        assert check._device_description(detector) == want


class _Stream:
    def __init__(self, ptr):
        self.ptr, self.waited, self.recorded = ptr, [], []

    def record(self):
        event = ("event on", self.ptr)
        self.recorded.append(event)
        return event

    def wait_event(self, event):
        self.waited.append(event)


def test_peaks_on_a_callers_stream_wait_for_the_stream_that_wrote_the_map():
    current, mine = _Stream(0), _Stream(7)
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(get_current_stream=lambda: current))
    assert peaks._ordered_stream(cupy, mine, None) is mine
    assert mine.waited == [("event on", 0)]  # after the producer's queued work
    assert peaks._ordered_stream(cupy, None, None) is current and current.waited == []  # same stream: in order already
    ready = ("a backend's event", 3)
    assert peaks._ordered_stream(cupy, None, ready) is current and current.waited == [ready]


@pytest.mark.gpu
def test_peaks_on_another_stream_find_the_map_its_producer_is_still_writing():
    from gpu_support import require_cupy

    cupy = require_cupy()
    import numpy as np

    want = np.zeros((1024, 1024), np.float32)
    want[100, 200], want[700, 50], want[512, 900] = 3.0, 2.0, 1.5
    producer, mine = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)
    with producer:
        slow = cupy.ones((2048, 2048), cupy.float32)
        for _ in range(30):  # keep the producer busy, so the map is written late
            slow = (slow @ slow) * (1.0 / 2048)
        prob_map = slow[:1024, :1024] * 0.0 + cupy.asarray(want)
        xy, scores = peaks.find_peaks_cuda(prob_map, 1.0, 3, stream=mine)
    want_xy, want_scores = peaks.find_peaks(want, 1.0, 3)
    np.testing.assert_array_equal(xy, want_xy)
    np.testing.assert_array_equal(scores, want_scores)
