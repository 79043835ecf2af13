"""What GPU tests share: skipping, with the reason, where the machine lacks what a test
needs, and a stand-in for CuPy's device selection (for the CPU tests of code that only
asks CuPy which GPU it is on). Importable from any test module: pytest puts this folder
on ``sys.path`` for its ``conftest.py``."""

from __future__ import annotations

import types
from typing import Any

import pytest

GPU_EXTRA = "pip install 'micronet-sdk[gpu]'"


def require_cupy() -> Any:
    """CuPy on a machine with a CUDA device; skips the test otherwise, saying which."""
    cupy = pytest.importorskip("cupy", reason=f"CuPy not installed ({GPU_EXTRA})")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        count = 0
    if count < 1:
        pytest.skip("no CUDA device")
    return cupy


def require_tensorrt() -> Any:
    """:func:`require_cupy`, and TensorRT installed; returns CuPy."""
    pytest.importorskip("tensorrt", reason=f"TensorRT not installed ({GPU_EXTRA})")
    return require_cupy()


def require_ort_cuda() -> Any:
    """:func:`require_cupy`, and ONNX Runtime with its CUDA provider; returns CuPy."""
    cupy = require_cupy()
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this ONNX Runtime has no CUDA provider ({GPU_EXTRA})")
    return cupy


def fake_cupy(devices=(("NVIDIA L4", 8, 9),)) -> types.ModuleType:
    """CuPy's device selection and properties for machines without a GPU:
    ``devices`` is ``(name, major, minor)`` per GPU; ``.cuda.state.current`` is the
    current device."""
    cupy = types.ModuleType("cupy")
    state = types.SimpleNamespace(current=0)

    class Device:
        def __init__(self, device_id=None):
            self.id = state.current if device_id is None else device_id

        def __enter__(self):
            self._previous, state.current = state.current, self.id
            return self

        def __exit__(self, *exc):
            state.current = self._previous

    class CUDARuntimeError(RuntimeError):
        pass

    def properties(device_id):
        if not 0 <= device_id < len(devices):
            raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
        name, major, minor = devices[device_id]
        return {"name": name.encode(), "major": major, "minor": minor}

    runtime = types.SimpleNamespace(CUDARuntimeError=CUDARuntimeError, getDeviceProperties=properties, getDeviceCount=lambda: len(devices))
    cupy.cuda = types.SimpleNamespace(Device=Device, runtime=runtime, state=state)
    return cupy
