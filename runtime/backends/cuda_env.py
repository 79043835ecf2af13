"""TensorRT and CUDA on this machine: importing TensorRT (>= 10), naming a GPU and its
compute capability, choosing the current device, and TensorRT's process-wide logger.
Shared by the TensorRT backend and the engine builder (``tensorrt_build``), which
therefore need no torch."""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from typing import Any, Iterator

from ..errors import InputError, MissingPackageError
from ..optional import GPU_EXTRA

__all__ = ["MIN_TENSORRT", "check_device_id", "cuda_device", "cuda_device_properties", "import_tensorrt", "trt_logger"]

log = logging.getLogger(__name__)

MIN_TENSORRT = (10, 0)  # strongly typed networks, named tensors and execute_async_v3


def _major_minor(version: str, what: str) -> tuple[int, int]:
    parts = str(version).strip().split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise InputError(f"{what}: expected a version like '10.3.0', got {version!r}") from None



def import_tensorrt(purpose: str = "the TensorRT backend") -> Any:
    """``import tensorrt`` (version 10 or later) or an ``ImportError`` naming the pip extra
    (one line)."""
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingPackageError(
            f"{purpose} needs TensorRT: {GPU_EXTRA} (on a Jetson, TensorRT comes with JetPack)"
        ) from exc
    version = str(getattr(tensorrt, "__version__", "unknown"))
    try:
        too_old = _major_minor(version, "TensorRT version") < MIN_TENSORRT
    except ValueError:
        too_old = True
    if too_old:
        raise MissingPackageError(
            f"{purpose} needs TensorRT >= {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]}, found {version}: "
            f"{GPU_EXTRA} (on a Jetson, JetPack 6)"
        )
    return tensorrt


def cuda_device_properties(device_id: int = 0) -> tuple[str, str]:
    """``(gpu_name, compute_capability)`` of a CUDA device, e.g. ``("NVIDIA L4", "8.9")``.

    Asks CuPy, else the ``cuda-python`` runtime bindings; ``ImportError`` (naming the pip
    extra) when neither is installed, ``RuntimeError`` when there is no such device.
    """
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None:
        try:
            props = cupy.cuda.runtime.getDeviceProperties(device_id)
        except cupy.cuda.runtime.CUDARuntimeError as exc:
            raise RuntimeError(f"no usable CUDA device {device_id}: {exc}") from exc
        name = props["name"]
        name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        return name.strip("\x00 ").strip(), f"{props['major']}.{props['minor']}"
    cudart = _cuda_python_runtime()
    err, props = cudart.cudaGetDeviceProperties(device_id)
    if int(err) != 0:  # cudaSuccess
        raise RuntimeError(f"no usable CUDA device {device_id}: {err}")
    name = props.name
    name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return name.split("\x00", 1)[0].strip(), f"{props.major}.{props.minor}"


def _cuda_python_runtime() -> Any:
    try:  # cuda-python >= 12.6 / 13
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:  # older cuda-python 12.x
            from cuda import cudart
        except ImportError as exc:
            raise MissingPackageError(f"reading the GPU's name and compute capability needs CuPy or cuda-python: {GPU_EXTRA}") from exc
    return cudart


def check_device_id(device_id: Any) -> int:
    """``device_id`` as an ``int``; ``ValueError`` unless it is a GPU index ``>= 0``."""
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise InputError(f"device_id: expected a CUDA device index (an integer >= 0), got {device_id!r}")
    return int(device_id)


@contextlib.contextmanager
def cuda_device(device_id: int) -> Iterator[None]:
    """Makes ``device_id`` the current CUDA device inside the block (TensorRT builds
    engines and creates execution contexts on the current device), then restores the
    previous one. Uses CuPy, else the ``cuda-python`` runtime bindings."""
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None:
        with cupy.cuda.Device(device_id):
            yield
        return
    cudart = _cuda_python_runtime()
    err, previous = cudart.cudaGetDevice()
    if int(err) != 0:
        raise RuntimeError(f"no usable CUDA device: {err}")
    (err,) = cudart.cudaSetDevice(device_id)
    if int(err) != 0:
        raise RuntimeError(f"no usable CUDA device {device_id}: {err}")
    try:
        yield
    finally:
        cudart.cudaSetDevice(previous)


_TRT_LOGGER: Any = None
_TRT_LOGGER_LOCK = threading.Lock()


def trt_logger(trt: Any) -> Any:
    """One process-wide ``trt.ILogger`` that forwards TensorRT's messages to ``logging``.

    TensorRT keeps a single global logger (a second, different one only draws a warning
    and is ignored), so every Builder and Runtime here shares this one. TensorRT's INFO
    messages are chatty and go to DEBUG; VERBOSE goes below DEBUG. The last errors are
    kept in ``.errors`` so a failed build or deserialisation can quote them.
    """
    global _TRT_LOGGER
    with _TRT_LOGGER_LOCK:
        if _TRT_LOGGER is None:
            trt_log = logging.getLogger("micronet.tensorrt")
            sev = trt.ILogger.Severity
            levels = {
                sev.INTERNAL_ERROR: logging.CRITICAL,
                sev.ERROR: logging.ERROR,
                sev.WARNING: logging.WARNING,
                sev.INFO: logging.DEBUG,
                sev.VERBOSE: 5,
            }

            class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.errors: collections.deque[str] = collections.deque(maxlen=8)

                def log(self, severity: Any, msg: str) -> None:
                    level = levels.get(severity, logging.WARNING)
                    if level >= logging.ERROR:
                        self.errors.append(str(msg))
                    if trt_log.isEnabledFor(level):
                        trt_log.log(level, "%s", msg)

            _TRT_LOGGER = _Logger()
    return _TRT_LOGGER
