"""TensorRT backend: runs a ``model.engine`` built by ``export-engine`` on this machine.

An engine is tied to the GPU (compute capability) and the TensorRT version it was built
with. The ``model.engine.json`` sidecar written next to it records both, and this
backend compares them with the current machine *before* deserialising, so a foreign
engine fails with a message that says how to rebuild it instead of a TensorRT crash.

The proximity map stays on the GPU: :meth:`TensorRTBackend.infer` returns a CuPy array
that ``micronet.runtime.peaks.find_peaks_cuda`` consumes directly.

TensorRT and CuPy are imported lazily; a missing one raises an ``ImportError`` naming
``pip install 'micronet-sdk[gpu]'``. The helpers shared with the engine builder
(``micronet.export.engine``) live here too, so the builder needs only this module,
TensorRT and ONNX Runtime (no torch).
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..model_info import ModelInfo

__all__ = [
    "TensorRTBackend",
    "check_engine_compatibility",
    "check_sidecar_fields",
    "read_sidecar",
    "sidecar_path",
    "cuda_device_properties",
    "GPU_EXTRA",
]

log = logging.getLogger(__name__)

GPU_EXTRA = "pip install 'micronet-sdk[gpu]'"
INPUT_NAME = "image"  # as written by micronet.export.onnx
OUTPUT_NAME = "proximity"
SIDECAR_SUFFIX = ".json"  # model.engine -> model.engine.json
REQUIRED_SIDECAR_FIELDS = ("micronet", "tensorrt_version", "gpu_name", "compute_capability")


# ---------------------------------------------------------------------------------------
# Lazy imports and machine description (shared with micronet.export.engine)


def import_tensorrt(purpose: str = "the TensorRT backend") -> Any:
    """``import tensorrt`` or an ``ImportError`` naming the pip extra (one line)."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ImportError(
            f"{purpose} needs TensorRT: {GPU_EXTRA} (on a Jetson, TensorRT comes with JetPack)"
        ) from exc
    return tensorrt


def import_cupy(purpose: str = "the TensorRT backend") -> Any:
    """``import cupy`` or an ``ImportError`` naming the pip extra (one line)."""
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(f"{purpose} needs CuPy: {GPU_EXTRA} (or cupy-cuda12x)") from exc
    return cupy


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
            raise ImportError(f"reading the GPU's name and compute capability needs CuPy or cuda-python: {GPU_EXTRA}") from exc
    return cudart


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


# ---------------------------------------------------------------------------------------
# The sidecar and the compatibility check


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` → ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def _rebuild_hint(engine_path: str | Path) -> str:
    return f"rebuild: export-engine model.onnx -o {engine_path}"


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    """The parsed ``<engine>.json`` written by ``export-engine``; ``ValueError`` when it is
    missing or not a JSON object."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ValueError(
            f"{path} not found: a MicroNet engine needs the metadata sidecar export-engine writes "
            f"next to it; {_rebuild_hint(engine_path)}"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); {_rebuild_hint(engine_path)}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}; {_rebuild_hint(engine_path)}")
    return data


def _major_minor(version: str, what: str) -> tuple[int, int]:
    parts = str(version).strip().split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise ValueError(f"{what}: expected a version like '10.3.0', got {version!r}") from None


def _sm(compute_capability: str) -> str:
    return "sm_" + str(compute_capability).replace(".", "")


def check_sidecar_fields(sidecar: Any, *, engine_path: str | Path = "model.engine") -> None:
    """``ValueError`` unless the sidecar is a JSON object with every field the runtime
    needs (``micronet``, ``tensorrt_version``, ``gpu_name``, ``compute_capability``)."""
    hint = _rebuild_hint(engine_path)
    if not isinstance(sidecar, dict):
        raise ValueError(f"engine sidecar: expected a JSON object, got {type(sidecar).__name__}; {hint}")
    missing = [k for k in REQUIRED_SIDECAR_FIELDS if sidecar.get(k) in (None, "")]
    if missing:
        raise ValueError(f"engine sidecar lacks {', '.join(missing)} (not written by export-engine, or damaged); {hint}")


def check_engine_compatibility(
    sidecar: dict[str, Any],
    trt_version: str,
    gpu_name: str,
    compute_capability: str,
    *,
    engine_path: str | Path = "model.engine",
) -> None:
    """Refuses an engine that this machine cannot (or should not) run.

    A TensorRT engine holds kernels chosen for one GPU model and one TensorRT release.
    The rules, applied to the engine's sidecar:

    - the compute capability must equal this GPU's (``"8.9"`` ≠ ``"8.6"``);
    - the GPU name must equal this GPU's: same-architecture GPUs with other memory or
      clocks run an engine tuned for another card, which TensorRT warns may be slow or
      fail;
    - TensorRT ``major.minor`` must equal the installed one, unless the engine was built
      with ``--version-compatible``; then the installed TensorRT may also be newer
      (never older), as TensorRT's version compatibility allows.

    Args:
        sidecar: the parsed ``model.engine.json``.
        trt_version: the installed ``tensorrt.__version__``, e.g. ``"10.3.0"``.
        gpu_name, compute_capability: this GPU, e.g. ``"NVIDIA L4"``, ``"8.9"``.
        engine_path: only for the rebuild command in the message.

    Raises:
        ValueError: naming what the engine was built for, what this machine has, and
            the ``export-engine`` command that rebuilds it.
    """
    hint = _rebuild_hint(engine_path)
    check_sidecar_fields(sidecar, engine_path=engine_path)
    built_trt = str(sidecar["tensorrt_version"])
    built_gpu = str(sidecar["gpu_name"]).strip()
    built_cc = str(sidecar["compute_capability"]).strip()
    version_compatible = sidecar.get("version_compatible", False)
    if not isinstance(version_compatible, bool):
        raise ValueError(f"engine sidecar: version_compatible must be true or false, got {version_compatible!r}; {hint}")

    built_v = _major_minor(built_trt, "engine sidecar tensorrt_version")
    here_v = _major_minor(trt_version, "installed TensorRT version")
    problems = []
    if built_cc != str(compute_capability).strip():
        problems.append("another GPU architecture")
    elif built_gpu != str(gpu_name).strip():
        problems.append("another GPU model")
    if version_compatible:
        if here_v < built_v:
            problems.append("a newer TensorRT than the installed one (version-compatible engines run only on the same or later TensorRT)")
    elif here_v != built_v:
        problems.append("another TensorRT version (build with --version-compatible to allow later TensorRT releases)")
    if problems:
        raise ValueError(
            f"engine built for {built_gpu} ({_sm(built_cc)}) with TensorRT {built_v[0]}.{built_v[1]}"
            f"{' (version-compatible)' if version_compatible else ''}; "
            f"this machine has {str(gpu_name).strip()} ({_sm(compute_capability)}) with TensorRT {here_v[0]}.{here_v[1]} "
            f"({'; '.join(problems)}); {hint}"
        )


# ---------------------------------------------------------------------------------------
# The backend


@dataclass
class _Slot:
    """One execution context and the stream it runs on; used by one thread at a time."""

    context: Any
    stream: Any


class TensorRTBackend:
    """Runs a TensorRT engine built by ``export-engine``; implements ``Backend``.

    Args:
        path: the ``.engine`` file; ``<path>.json`` must sit next to it.
        device_id: the CUDA device to run on.
        max_contexts: how many callers may run the engine at the same time. Each
            concurrent caller gets its own execution context and CUDA stream; a context
            holds the engine's activation memory for the largest profile shape, so
            contexts are created only when callers actually overlap, up to this many
            (further callers wait).

    Raises:
        FileNotFoundError: no engine at ``path``.
        ValueError: the sidecar is missing or damaged, the engine was built for another
            GPU or TensorRT version, or its inputs and outputs are not a MicroNet
            model's (uint8 ``image`` N×H×W×3 → ``proximity`` N×1×H×W).
        ImportError: TensorRT or CuPy is missing.

    Attributes:
        name: ``"tensorrt"``.
        device: ``"cuda"``.
        info: the model's ``ModelInfo``.
        profile: ``(min, opt, max)`` input shapes ``(N, H, W, 3)`` the engine accepts.
    """

    name = "tensorrt"
    device = "cuda"

    def __init__(self, path: str | Path, device_id: int = 0, *, max_contexts: int = 2) -> None:
        self._closed = True  # until fully constructed, so __del__ on a failed init is a no-op
        path = Path(path)
        if isinstance(max_contexts, bool) or not isinstance(max_contexts, int) or max_contexts < 1:
            raise ValueError(f"max_contexts: expected an integer >= 1, got {max_contexts!r}")
        if not path.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {path}")
        sidecar = read_sidecar(path)
        check_sidecar_fields(sidecar, engine_path=path)
        self.info = ModelInfo.from_json(json.dumps(sidecar["micronet"]), source=str(sidecar_path(path)))
        trt = import_tensorrt()
        cupy = import_cupy()
        gpu_name, cc = cuda_device_properties(device_id)
        check_engine_compatibility(sidecar, trt.__version__, gpu_name, cc, engine_path=path)

        self.path = path
        self.device_id = int(device_id)
        self.sidecar = sidecar
        self._trt = trt
        self._cupy = cupy
        self._logger = trt_logger(trt)
        with cupy.cuda.Device(self.device_id):
            self._runtime = trt.Runtime(self._logger)
            if sidecar.get("version_compatible"):
                # A version-compatible plan carries its own lean runtime (host code);
                # TensorRT runs it only when allowed. We trust engines export-engine wrote.
                self._runtime.engine_host_code_allowed = True
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            detail = "; ".join(self._logger.errors) or "no detail from TensorRT"
            raise ValueError(f"{path}: TensorRT could not deserialise the engine ({detail}); {_rebuild_hint(path)}")
        self.profile = self._check_io()
        self._out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(OUTPUT_NAME)))

        self._max_contexts = max_contexts
        self._idle: queue.LifoQueue[_Slot] = queue.LifoQueue()
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._closed = False
        self._idle.put(self._new_slot())  # fail now, not on the first call
        log.info(
            "TensorRT engine %s on %s (%s): %s, N×H×W from %s to %s",
            path.name, gpu_name, _sm(cc), sidecar.get("precision", "?"),
            "×".join(map(str, self.profile[0][:3])), "×".join(map(str, self.profile[2][:3])),
        )

    # -- set-up ---------------------------------------------------------------------

    def _check_io(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        where = f"{self.path}: not a MicroNet engine"
        if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
            raise ValueError(
                f"{where}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, got inputs {inputs} and outputs {outputs}"
            )
        in_dtype = engine.get_tensor_dtype(INPUT_NAME)
        if in_dtype != trt.DataType.UINT8:
            raise ValueError(f"{where}: expected a uint8 {INPUT_NAME!r} input, got {in_dtype}")
        out_dtype = engine.get_tensor_dtype(OUTPUT_NAME)
        if out_dtype not in (trt.DataType.FLOAT, trt.DataType.HALF):
            raise ValueError(f"{where}: expected a float32 or float16 {OUTPUT_NAME!r} output, got {out_dtype}")
        in_shape = tuple(engine.get_tensor_shape(INPUT_NAME))
        if len(in_shape) != 4 or in_shape[3] != 3:
            raise ValueError(f"{where}: expected an N×H×W×3 {INPUT_NAME!r} input, got shape {in_shape}")
        if engine.num_optimization_profiles < 1:
            raise ValueError(f"{where}: the engine has no optimisation profile; {_rebuild_hint(self.path)}")
        lo, opt, hi = (tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(INPUT_NAME, 0))
        return lo, opt, hi

    def _new_slot(self) -> _Slot:
        cupy = self._cupy
        with cupy.cuda.Device(self.device_id):
            context = self._engine.create_execution_context()
            if context is None:
                detail = "; ".join(self._logger.errors) or "out of GPU memory?"
                raise RuntimeError(f"TensorRT could not create an execution context ({detail})")
            slot = _Slot(context=context, stream=cupy.cuda.Stream(non_blocking=True))
        self._slots.append(slot)
        return slot

    def _acquire(self) -> _Slot:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._closed:
                raise RuntimeError("TensorRTBackend is closed")
            if len(self._slots) < self._max_contexts:
                return self._new_slot()
        return self._idle.get()  # all contexts busy: wait for one

    # -- inference ------------------------------------------------------------------

    def check_batch_shape(self, shape: tuple[int, ...]) -> None:
        """``ValueError`` unless an ``(N, H, W, 3)`` batch fits the engine's profile."""
        lo, _, hi = self.profile
        if len(shape) != 4 or shape[3] != 3:
            raise ValueError(f"batch: expected an (N, H, W, 3) uint8 RGB array, got shape {tuple(shape)}")
        bad = [
            f"{axis}={shape[i]} not in [{lo[i]}, {hi[i]}]"
            for i, axis in enumerate("NHW")
            if not lo[i] <= shape[i] <= hi[i]
        ]
        if bad:
            raise ValueError(
                f"batch of shape {tuple(shape)} is outside the engine's profile ({', '.join(bad)}): "
                f"send tiles or batches within N×H×W {lo[0]}×{lo[1]}×{lo[2]} to {hi[0]}×{hi[1]}×{hi[2]}, "
                f"or rebuild with export-engine --min/--max"
            )

    def infer(self, batch: Any) -> Any:
        """``(N, H, W, 3)`` uint8 RGB → ``(N, 1, H, W)`` float32 proximity maps on the GPU.

        Args:
            batch: a NumPy array, or a CuPy array on this backend's device (work queued
                on the caller's current CuPy stream is waited for). N, H, W must lie
                within the engine's profile (``self.profile``).

        Returns:
            A CuPy float32 array on ``device_id``. The engine's stream has been
            synchronised, so the array is complete and may be used on any stream.

        Thread-safe: concurrent callers run on separate execution contexts and streams.
        """
        if self._closed:
            raise RuntimeError("TensorRTBackend is closed")
        cupy = self._cupy
        on_gpu = isinstance(batch, cupy.ndarray)
        if not on_gpu:
            batch = np.asarray(batch)
        if batch.dtype != np.uint8:
            raise TypeError(f"batch: expected uint8 RGB pixels, got dtype {batch.dtype}")
        shape = tuple(int(s) for s in batch.shape)
        self.check_batch_shape(shape)
        n, h, w, _ = shape
        caller_stream = cupy.cuda.get_current_stream() if on_gpu else None
        if on_gpu and batch.device.id != self.device_id:
            raise ValueError(f"batch: a CuPy array on device {batch.device.id}, but this engine runs on device {self.device_id}")

        slot = self._acquire()
        try:
            context = slot.context
            with cupy.cuda.Device(self.device_id), slot.stream:
                if on_gpu:
                    # Order after the caller's pending work on its own stream.
                    slot.stream.wait_event(caller_stream.record())
                    image = cupy.ascontiguousarray(batch)
                else:
                    image = cupy.empty(shape, dtype=cupy.uint8)  # raw pixels: 4× fewer bytes than float
                    image.set(np.ascontiguousarray(batch), stream=slot.stream)
                if not context.set_input_shape(INPUT_NAME, shape):
                    raise ValueError(f"TensorRT rejected the input shape {shape} (profile {self.profile[0]} to {self.profile[2]})")
                out_shape = tuple(int(d) for d in context.get_tensor_shape(OUTPUT_NAME))
                if out_shape != (n, 1, h, w):
                    raise ValueError(f"{self.path}: the engine's output for input {shape} has shape {out_shape}, expected {(n, 1, h, w)}")
                out = cupy.empty(out_shape, dtype=self._out_dtype)
                context.set_tensor_address(INPUT_NAME, image.data.ptr)
                context.set_tensor_address(OUTPUT_NAME, out.data.ptr)
                if not context.execute_async_v3(slot.stream.ptr):
                    detail = "; ".join(self._logger.errors) or "no detail from TensorRT"
                    raise RuntimeError(f"TensorRT inference failed ({detail})")
                if out.dtype != cupy.float32:
                    out = out.astype(cupy.float32)
                # The buffers must outlive the work, and callers may read `out` on any
                # stream: finish here rather than hand back stream-ordered results.
                slot.stream.synchronize()
        finally:
            self._idle.put(slot)
        return out  # (N, 1, H, W) float32, CuPy

    # -- clean-up -------------------------------------------------------------------

    def close(self) -> None:
        """Frees the execution contexts, the engine and the runtime (in that order, as
        TensorRT requires). Idempotent; ``infer`` raises afterwards."""
        if getattr(self, "_closed", True):
            return
        with self._lock:
            self._closed = True
            for slot in self._slots:
                try:
                    slot.stream.synchronize()
                except Exception:  # pragma: no cover - a dead context at interpreter exit
                    pass
                slot.context = None
            self._slots.clear()
            while not self._idle.empty():
                self._idle.get_nowait()
            self._engine = None
            self._runtime = None

    def __enter__(self) -> "TensorRTBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - never raise from a finaliser
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"device {self.device_id}"
        return f"TensorRTBackend({str(getattr(self, 'path', '?'))!r}, {state})"
