"""TensorRT backend: runs a ``model.engine`` built by ``export-engine`` on this machine.

An engine is tied to the GPU (compute capability) and the TensorRT version it was built
with. The ``model.engine.json`` sidecar written next to it records both, and this
backend compares them with the current machine *before* deserialising, so a foreign
engine fails with a message that says how to rebuild it instead of a TensorRT crash.

The proximity map stays on the GPU: :meth:`TensorRTBackend.infer` returns a CuPy array
that ``micronet.runtime.peaks.find_peaks_cuda`` consumes directly.

Work overlaps on the GPU. Each execution context ("slot") has its own CUDA stream for
inference, a second stream for uploads, a reused pinned host buffer and a reused device
buffer for the input, and two CUDA events that order them: the upload is recorded on the
copy stream, the inference stream waits for it, and the caller waits for the inference's
event. :meth:`TensorRTBackend.infer_async` submits a batch and returns at once, so a
caller keeps two batches in flight (``Detector`` finds the peaks of one while the next
runs). The slots live in a :class:`SlotPool`, which also makes ``close()`` safe while
other threads wait for a slot or run a batch.

TensorRT (>= 10) and CuPy are imported lazily; a missing one raises an ``ImportError``
naming ``pip install 'micronet-sdk[gpu]'``. What the engine builder shares with this
backend lives beside it: ``cuda_env`` (TensorRT, the GPU, the logger), ``engine_sidecar``
(the sidecar and the compatibility check), ``slot_pool`` (the contexts); the names are
re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..classes import class_names
from ..errors import InputError, InputTypeError, MissingFileError, MissingPackageError
from ..model_info import CLASS_OUTPUT_NAME, INPUT_NAME, OUTPUT_NAME, ModelInfo
from ..optional import GPU_EXTRA, import_cupy
from .cuda_env import check_device_id, cuda_device, cuda_device_properties, import_tensorrt, trt_logger
from .engine_sidecar import (
    _rebuild_hint,
    _sm,
    check_engine_compatibility,
    check_sidecar_fields,
    read_sidecar,
    sidecar_path,
)
from .slot_pool import SlotPool

__all__ = [
    "TensorRTBackend",
    "TensorRTJob",
    "SlotPool",
    "cuda_device",
    "check_engine_compatibility",
    "check_sidecar_fields",
    "read_sidecar",
    "sidecar_path",
    "cuda_device_properties",
    "GPU_EXTRA",
]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Slot:
    """One execution context with its streams, events and reused input buffers; used by
    one batch at a time (see :class:`SlotPool`)."""

    context: Any
    stream: Any  # the context's inference stream
    copy_stream: Any  # host-to-device uploads
    uploaded: Any  # event: the input is on the device
    done: Any  # event: the inference has finished
    host: Any = None  # pinned host buffer (NumPy uint8), grown as needed
    device: Any = None  # device buffer (CuPy uint8), grown as needed

    def input_buffers(self, cupy: Any, nbytes: int) -> tuple[Any, Any]:
        """``(pinned host, device)`` uint8 buffers of at least ``nbytes``, reused across
        batches (a pinned allocation is slow; an upload from pageable memory is not
        asynchronous)."""
        if self.host is None or self.host.size < nbytes:
            size = -(-nbytes // (1 << 20)) << 20  # whole MiB, so similar batches reuse it
            self.host = _pinned_empty(size)
            self.device = cupy.empty((size,), dtype=cupy.uint8)
        return self.host[:nbytes], self.device[:nbytes]


def _pinned_empty(nbytes: int) -> np.ndarray:
    try:
        import cupyx
    except ImportError as exc:  # pragma: no cover - comes with CuPy
        raise MissingPackageError(f"the TensorRT backend needs CuPy: {GPU_EXTRA} (or cupy-cuda12x)") from exc
    return cupyx.empty_pinned((nbytes,), dtype=np.uint8)


class TensorRTJob:
    """A batch submitted by :meth:`TensorRTBackend.infer_async`, running on the GPU.

    Attributes:
        stream: the CuPy stream the inference runs on.
    """

    def __init__(self, pool: SlotPool[_Slot], slot: _Slot, out: Any, keep: Any) -> None:
        self.stream = slot.stream
        self._pool = pool
        self._slot: _Slot | None = slot
        self._event = slot.done
        self._out = out
        self._keep = keep  # the input, alive until the inference has read it
        self._lock = threading.Lock()

    @property
    def done(self) -> bool:
        """Whether the inference has finished (never blocks)."""
        return self._slot is None or bool(self._event.done)

    def wait(self) -> Any:
        """Blocks until the inference has finished and returns its ``(N, 1, H, W)``
        float32 proximity maps (CuPy, on the backend's device), complete, so any stream
        may read them. Hands the execution context back to the backend; idempotent."""
        with self._lock:
            slot = self._slot
            if slot is not None:
                try:
                    self._event.synchronize()
                finally:
                    self._slot = self._keep = None
                    self._pool.release(slot)
        return self._out

    def __del__(self) -> None:
        try:
            if self._slot is not None:
                self.wait()  # never leave a context lent out
        except Exception:  # pragma: no cover - never raise from a finaliser
            pass


class TensorRTBackend:
    """Runs a TensorRT engine built by ``export-engine``; implements ``Backend``.

    Args:
        path: the ``.engine`` file; ``<path>.json`` must sit next to it.
        device_id: the CUDA device to run on (``Detector(device="cuda:N")`` passes N).
        max_contexts: how many batches may run on the engine at the same time. Each
            gets its own execution context, streams and input buffers; a context holds
            the engine's activation memory for the largest profile shape, so contexts
            are made only when batches actually overlap, up to this many (further
            callers wait). Two let one caller keep two batches in flight.
        allow_host_code: let TensorRT run the host code a version-compatible engine
            carries (its lean runtime). Off by default and never taken from the
            sidecar: only a caller who trusts the file's origin turns it on; an engine
            whose sidecar says ``version_compatible`` is refused without it.

    Raises:
        FileNotFoundError: no engine at ``path``.
        ValueError: the sidecar is missing or damaged, the engine is not the one the
            sidecar's ``engine_sha256`` describes, the engine was built for another GPU
            or TensorRT version, it is version-compatible without ``allow_host_code``,
            or its inputs and outputs are not a MicroNet model's (uint8 ``image``
            N×H×W×3 → ``proximity`` N×1×H×W, and ``class_logits`` N×K×H×W for a class
            head); a bad ``device_id`` or ``max_contexts``.
        RuntimeError: there is no CUDA device ``device_id``.
        ImportError: TensorRT (>= 10) or CuPy is missing.

    Attributes:
        name: ``"tensorrt"``.
        device: ``"cuda"``.
        device_id: the CUDA device index.
        info: the model's ``ModelInfo``.
        profile: ``(min, opt, max)`` input shapes ``(N, H, W, 3)`` the engine accepts.
        outputs: the engine's output names: ``("proximity",)``, or with a class head
            ``("proximity", "class_logits")``; :meth:`infer` then returns the map and
            the K logits as one ``(N, 1 + K, H, W)`` array, as the ONNX Runtime backend.
    """

    name = "tensorrt"
    device = "cuda"

    def __init__(self, path: str | Path, device_id: int = 0, *, max_contexts: int = 2, allow_host_code: bool = False) -> None:
        self._pool: SlotPool[_Slot] | None = None  # until fully constructed: close() is then a no-op
        self._teardown = threading.Lock()
        path = Path(path)
        device_id = check_device_id(device_id)
        if isinstance(max_contexts, bool) or not isinstance(max_contexts, int) or max_contexts < 1:
            raise InputError(f"max_contexts: expected an integer >= 1, got {max_contexts!r}")
        if not path.is_file():
            raise MissingFileError(f"TensorRT engine not found: {path}")
        sidecar = read_sidecar(path)
        check_sidecar_fields(sidecar, engine_path=path)
        self.info = ModelInfo.from_json(json.dumps(sidecar["micronet"]), source=str(sidecar_path(path)))
        trt = import_tensorrt()
        cupy = import_cupy("the TensorRT backend")
        gpu_name, cc = cuda_device_properties(device_id)
        check_engine_compatibility(sidecar, trt.__version__, gpu_name, cc, engine_path=path)

        self.path = path
        self.device_id = device_id
        self.sidecar = sidecar
        self._trt = trt
        self._cupy = cupy
        self._logger = trt_logger(trt)
        self._engine = self._deserialise(allow_host_code is True)
        self.profile, self.outputs = self._check_io()
        self._out_dtypes = {name: np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))) for name in self.outputs}

        pool: SlotPool[_Slot] = SlotPool(self._new_slot, max_contexts, owner="TensorRTBackend")
        pool.release(pool.acquire())  # the first context now: fail here, not on the first call
        self._pool = pool
        log.info(
            "TensorRT engine %s on GPU %d, %s (%s): %s, N×H×W from %s to %s",
            path.name, device_id, gpu_name, _sm(cc), sidecar.get("precision", "?"),
            "×".join(map(str, self.profile[0][:3])), "×".join(map(str, self.profile[2][:3])),
        )

    # -- set-up ---------------------------------------------------------------------

    def _deserialise(self, allow_host_code: bool) -> Any:
        """The engine, after checking the file is the one its sidecar describes and that
        it needs no host code the caller did not allow."""
        path, sidecar = self.path, self.sidecar
        data = path.read_bytes()
        recorded = sidecar.get("engine_sha256")
        if recorded is not None and hashlib.sha256(data).hexdigest() != str(recorded):
            raise InputError(
                f"{path}: the engine is not the one its sidecar describes (its SHA-256 differs from the recorded "
                f"engine_sha256: replaced or damaged); {_rebuild_hint(path)}"
            )
        if sidecar.get("version_compatible") and not allow_host_code:
            raise InputError(
                f"{path} is a version-compatible engine: it carries TensorRT's lean runtime, host code that runs when "
                "the engine loads. Load it only if you trust where it came from: "
                "TensorRTBackend(path, allow_host_code=True), and Detector(backend=that backend); "
                f"or rebuild it without --version-compatible ({_rebuild_hint(path)})"
            )
        with self._cupy.cuda.Device(self.device_id):
            self._runtime = self._trt.Runtime(self._logger)
            if allow_host_code:
                self._runtime.engine_host_code_allowed = True  # the caller trusts this file
            engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            detail = "; ".join(self._logger.errors) or "no detail from TensorRT"
            raise InputError(f"{path}: TensorRT could not deserialise the engine ({detail}); {_rebuild_hint(path)}")
        return engine

    def _check_io(self) -> tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], tuple[str, ...]]:
        """``(profile, output names)``, after checking the engine is a MicroNet model's."""
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        where = f"{self.path}: not a MicroNet engine"
        if inputs != [INPUT_NAME] or outputs not in ((OUTPUT_NAME,), (OUTPUT_NAME, CLASS_OUTPUT_NAME)):
            raise InputError(
                f"{where}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r} (and {CLASS_OUTPUT_NAME!r} for a class head), "
                f"got inputs {inputs} and outputs {list(outputs)}"
            )
        in_dtype = engine.get_tensor_dtype(INPUT_NAME)
        if in_dtype != trt.DataType.UINT8:
            raise InputError(f"{where}: expected a uint8 {INPUT_NAME!r} input, got {in_dtype}")
        for name in outputs:
            out_dtype = engine.get_tensor_dtype(name)
            if out_dtype not in (trt.DataType.FLOAT, trt.DataType.HALF):
                raise InputError(f"{where}: expected a float32 or float16 {name!r} output, got {out_dtype}")
        in_shape = tuple(engine.get_tensor_shape(INPUT_NAME))
        if len(in_shape) != 4 or in_shape[3] != 3:
            raise InputError(f"{where}: expected an N×H×W×3 {INPUT_NAME!r} input, got shape {in_shape}")
        if len(outputs) == 2:
            self._check_classes(where, tuple(int(d) for d in engine.get_tensor_shape(CLASS_OUTPUT_NAME)))
        if engine.num_optimization_profiles < 1:
            raise InputError(f"{where}: the engine has no optimisation profile; {_rebuild_hint(self.path)}")
        lo, opt, hi = (tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(INPUT_NAME, 0))
        return (lo, opt, hi), outputs

    def _check_classes(self, where: str, shape: tuple[int, ...]) -> None:
        """The class logits are ``N×K×H×W`` with K the number of classes the metadata names."""
        names = class_names(self.info)
        if len(shape) != 4 or shape[1] < 1:
            raise InputError(f"{where}: expected an N×K×H×W {CLASS_OUTPUT_NAME!r} output with a fixed K, got shape {shape}")
        if shape[1] != len(names):
            raise InputError(
                f"{where}: its {CLASS_OUTPUT_NAME!r} output has {shape[1]} classes, its metadata names {len(names)} "
                f"({', '.join(names) or 'none'}); {_rebuild_hint(self.path)}"
            )

    def _new_slot(self) -> _Slot:
        cupy = self._cupy
        with cupy.cuda.Device(self.device_id):
            # TensorRT >= 10 lets several contexts share optimisation profile 0.
            context = self._engine.create_execution_context()
            if context is None:
                detail = "; ".join(self._logger.errors) or "out of GPU memory?"
                raise RuntimeError(f"TensorRT could not create an execution context ({detail})")
            return _Slot(
                context=context,
                stream=cupy.cuda.Stream(non_blocking=True),
                copy_stream=cupy.cuda.Stream(non_blocking=True),
                uploaded=cupy.cuda.Event(block=False, disable_timing=True),
                done=cupy.cuda.Event(block=False, disable_timing=True),
            )

    # -- inference ------------------------------------------------------------------

    def check_batch_shape(self, shape: tuple[int, ...]) -> None:
        """``ValueError`` unless an ``(N, H, W, 3)`` batch fits the engine's profile."""
        lo, _, hi = self.profile
        if len(shape) != 4 or shape[3] != 3:
            raise InputError(f"batch: expected an (N, H, W, 3) uint8 RGB array, got shape {tuple(shape)}")
        bad = [
            f"{axis}={shape[i]} not in [{lo[i]}, {hi[i]}]"
            for i, axis in enumerate("NHW")
            if not lo[i] <= shape[i] <= hi[i]
        ]
        if bad:
            raise InputError(
                f"batch of shape {tuple(shape)} is outside the engine's profile ({', '.join(bad)}): "
                f"send tiles or batches within N×H×W {lo[0]}×{lo[1]}×{lo[2]} to {hi[0]}×{hi[1]}×{hi[2]}, "
                f"or rebuild with export-engine --min/--max"
            )

    def infer(self, batch: Any) -> Any:
        """``(N, H, W, 3)`` uint8 RGB → ``(N, 1, H, W)`` float32 proximity maps on the GPU:
        :meth:`infer_async` and :meth:`TensorRTJob.wait` in one call.

        Args:
            batch: a NumPy array, or a CuPy array on this backend's device (work queued
                on the caller's current CuPy stream is waited for). N, H, W must lie
                within the engine's profile (``self.profile``).

        Returns:
            A CuPy float32 array on ``device_id``, complete (usable on any stream) and
            owned by the caller; ``(N, 1 + K, H, W)`` for an engine with a class head.

        Thread-safe: concurrent callers run on separate execution contexts and streams.
        """
        job = self.infer_async(batch)
        assert job is not None  # a blocking submit always returns a job
        return job.wait()

    def infer_async(self, batch: Any, *, block: bool = True) -> TensorRTJob | None:
        """Submits a batch and returns without waiting for the GPU.

        A NumPy batch is copied into this context's pinned buffer, uploaded on the copy
        stream, and inferred on the context's stream once the upload's event fires; the
        returned job's :meth:`~TensorRTJob.wait` gives the maps. Keep at most
        ``max_contexts`` jobs unwaited per thread.

        Args:
            batch: as :meth:`infer`.
            block: wait for a free execution context; with ``False``, return ``None`` at
                once when all are in use. A caller that holds an unwaited job must not
                block: two such callers would each wait for the other's context.

        Raises:
            TypeError, ValueError: not a uint8 ``(N, H, W, 3)`` batch within the profile,
                or a CuPy batch on another device.
            RuntimeError: the backend is closed (also when it closes while waiting for a
                context), or TensorRT refused the work.
        """
        cupy = self._cupy if self._pool is not None else None
        if cupy is None:
            raise RuntimeError("TensorRTBackend is closed")
        on_gpu = isinstance(batch, cupy.ndarray)
        if not on_gpu:
            batch = np.asarray(batch)
        if batch.dtype != np.uint8:
            raise InputTypeError(f"batch: expected uint8 RGB pixels, got dtype {batch.dtype}")
        shape = tuple(int(s) for s in batch.shape)
        self.check_batch_shape(shape)
        if on_gpu and batch.device.id != self.device_id:
            raise InputError(f"batch: a CuPy array on device {batch.device.id}, but this engine runs on device {self.device_id}")

        pool = self._pool
        slot = pool.acquire(block=block)
        if slot is None:
            return None
        try:
            job = self._enqueue(slot, batch, shape, on_gpu)
        except BaseException:
            self._settle(slot)
            pool.release(slot)
            raise
        pool.detach(slot)
        return job

    def _enqueue(self, slot: _Slot, batch: Any, shape: tuple[int, ...], on_gpu: bool) -> TensorRTJob:
        cupy, context = self._cupy, slot.context
        with cupy.cuda.Device(self.device_id):
            if on_gpu:
                # Order after the caller's pending work on its own stream.
                slot.stream.wait_event(cupy.cuda.get_current_stream().record())
                with slot.stream:
                    image = cupy.ascontiguousarray(batch)
                keep: Any = (batch, image)
            else:
                host, device = slot.input_buffers(cupy, int(np.prod(shape)))
                host = host.reshape(shape)
                np.copyto(host, batch)  # pageable → pinned; the slot's last upload finished before it was lent again
                image = device.reshape(shape)  # raw pixels: 4× fewer bytes than float
                image.set(host, stream=slot.copy_stream)
                slot.copy_stream.record(slot.uploaded)
                slot.stream.wait_event(slot.uploaded)
                keep = None  # the slot's own buffers, reused once this job is waited for
            if not context.set_input_shape(INPUT_NAME, shape):
                raise InputError(f"TensorRT rejected the input shape {shape} (profile {self.profile[0]} to {self.profile[2]})")
            context.set_tensor_address(INPUT_NAME, int(image.data.ptr))
            outs = self._bind_outputs(slot, shape)
            if not context.execute_async_v3(slot.stream.ptr):
                detail = "; ".join(self._logger.errors) or "no detail from TensorRT"
                raise RuntimeError(f"TensorRT inference failed ({detail})")
            out = self._merge_outputs(slot, outs)
            slot.stream.record(slot.done)
        return TensorRTJob(self._pool, slot, out, keep)  # (N, 1 [+ K], H, W) float32, CuPy

    def _bind_outputs(self, slot: _Slot, shape: tuple[int, ...]) -> list[Any]:
        """A device buffer per output, its address given to the context."""
        cupy, context = self._cupy, slot.context
        n, h, w, _ = shape
        outs = []
        for name in self.outputs:
            out_shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if out_shape[:1] + out_shape[2:] != (n, h, w) or (name == OUTPUT_NAME and out_shape[1] != 1):
                raise InputError(f"{self.path}: the engine's {name!r} output for input {shape} has shape {out_shape}, expected {(n, 1, h, w)}")
            with slot.stream:  # CuPy's pool hands out memory in the order of this stream
                outs.append(cupy.empty(out_shape, dtype=self._out_dtypes[name]))
            context.set_tensor_address(name, int(outs[-1].data.ptr))
        return outs

    def _merge_outputs(self, slot: _Slot, outs: list[Any]) -> Any:
        """The ``(N, 1, H, W)`` map, or with a class head the map and the ``K`` logits as
        one ``(N, 1 + K, H, W)`` array (the ONNX Runtime backend's layout), float32, on
        the slot's stream."""
        cupy = self._cupy
        with slot.stream:
            if len(outs) == 1:
                return outs[0] if outs[0].dtype == cupy.float32 else outs[0].astype(cupy.float32)
            prox, logits = outs
            n, k, h, w = (int(d) for d in logits.shape)
            out = cupy.empty((n, 1 + k, h, w), dtype=cupy.float32)
            out[:, :1] = prox  # casts fp16 outputs
            out[:, 1:] = logits
            return out

    def _settle(self, slot: _Slot) -> None:
        """Waits for whatever a failed submit left queued on the slot's streams."""
        try:
            with self._cupy.cuda.Device(self.device_id):
                slot.copy_stream.synchronize()
                slot.stream.synchronize()
        except Exception:  # pragma: no cover - a broken context: nothing left to wait for
            pass

    # -- clean-up -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._pool is None or self._pool.closed

    def close(self) -> None:
        """Frees the execution contexts, the engine and the runtime (in that order, as
        TensorRT requires). Safe while other threads use the backend: callers waiting
        for a context raise ``RuntimeError("TensorRTBackend is closed")``, batches being
        submitted are submitted first, and queued GPU work finishes before its context
        is freed (jobs already submitted still return their maps). Idempotent; ``infer``
        raises afterwards."""
        pool = getattr(self, "_pool", None)
        if pool is None:
            return
        with self._teardown:
            for slot in pool.close():  # waits for batches being submitted
                self._settle(slot)  # queued GPU work finishes before its context goes
                slot.context = None
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
        state = "closed" if self.closed else f"device {getattr(self, 'device_id', '?')}"
        return f"TensorRTBackend({str(getattr(self, 'path', '?'))!r}, {state})"
