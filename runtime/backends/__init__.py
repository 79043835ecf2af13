"""Inference backends behind one small interface.

A backend turns a batch of raw pixels into proximity maps. The ``Detector`` picks the
best available one (TensorRT for ``.engine`` files; ONNX Runtime with the CUDA execution
provider when present, else the CPU provider, for ``.onnx`` files) unless the caller
names one (``backend="tensorrt"`` for the bundled model's cached engine, ``"torch"`` for
an ``.onnx`` export run by torch: :mod:`.torch`).

Modules: ``onnxruntime`` and ``torch`` (the backends of ``.onnx`` exports; ``onnx_torch``
runs an ONNX graph with torch), ``tensorrt`` (engines), ``tensorrt_build`` (the engine
builder that ``export-engine`` and the engine cache share), ``cuda_env``,
``engine_sidecar`` and ``slot_pool`` (what the TensorRT ones share); ``select`` (which
backend runs a model file on a device, and the tile and batch sizes it accepts).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..model_info import ModelInfo

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """What ``Detector`` needs from an inference engine.

    Attributes:
        name: ``"tensorrt"``, ``"onnxruntime-cuda"``, ``"onnxruntime-cpu"``,
            ``"torch-cuda"`` or ``"torch-cpu"``.
        device: ``"cuda"`` or ``"cpu"``: where ``infer``'s output lives.
        info: the model's metadata (normalisation is inside the model; threshold ξ,
            minimum distance and pixel size are used by the detector).
    """

    name: str
    device: str
    info: ModelInfo

    def infer(self, batch: np.ndarray) -> Any:
        """``(N, H, W, 3)`` uint8 RGB (C-contiguous) → ``(N, 1, H, W)`` float32 proximity
        maps: a NumPy array for CPU backends, a CuPy array (still on the GPU) for CUDA
        backends. Thread-safe: one backend serves concurrent callers."""
        ...


# Optional, for GPU backends: ``infer_async(batch, block=True)`` queues the upload and the
# inference and returns a job whose ``wait()`` gives what ``infer`` would (``None`` when
# ``block=False`` and no execution context is free). The Detector uses it to queue batch
# k + 1 before it finds the peaks of batch k (the TensorRT and torch backends have it).


BACKEND_DEVICES = ("auto", "cpu", "cuda")  # what a backend takes; the Detector parses "cuda:N" into device and device_id


def check_device(device: Any, device_id: Any) -> None:
    """A backend's ``device`` and ``device_id`` as every backend checks them: one line
    saying what was expected and what arrived."""
    from ..errors import InputError

    if device not in BACKEND_DEVICES:
        raise InputError(f"device: expected one of {', '.join(BACKEND_DEVICES)}, got {device!r}")
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise InputError(f"device_id: expected a CUDA device index (an integer >= 0), got {device_id!r}")
    if device == "cpu" and device_id != 0:
        raise InputError(f"device_id={device_id} selects a GPU, but device='cpu'")
