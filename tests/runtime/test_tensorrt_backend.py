"""The TensorRT backend: the engine/machine compatibility rules (pure, run everywhere),
the pool of execution contexts with real threads (close() while others wait or run),
the backend's control flow and the Detector's two-batches-in-flight path against
API-shaped stand-ins for TensorRT and CuPy, device strings (all run everywhere), and real
engines on a GPU (skip without TensorRT, CuPy and a CUDA device)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from gpu_support import require_tensorrt
from micronet.runtime.backends import Backend, cuda_env
from micronet.runtime.backends import tensorrt as trt_backend
from micronet.runtime.backends.tensorrt import (
    SlotPool,
    TensorRTBackend,
    check_engine_compatibility,
    read_sidecar,
    sidecar_path,
)
from micronet.runtime.detector import Detector
from micronet.runtime.model_info import ModelInfo
from micronet.runtime.peaks import find_peaks

INFO = ModelInfo(architecture={"name": "micronet"}, mean=[180.0, 130.0, 170.0], std=[40.0, 45.0, 35.0], mpp=0.55, threshold=1.0)


def sidecar(**overrides):
    data = {
        "micronet": json.loads(INFO.to_json()),
        "tensorrt_version": "10.3.0",
        "gpu_name": "NVIDIA L4",
        "compute_capability": "8.9",
        "precision": "fp16",
        "profiles": [{"input": "image", "min": [1, 64, 64, 3], "opt": [2, 128, 128, 3], "max": [4, 256, 256, 3]}],
        "version_compatible": False,
        "onnx_sha256": "0" * 64,
    }
    data.update(overrides)
    return data


# --- compatibility rules (pure) -------------------------------------------------------


def test_matching_machine_is_accepted():
    check_engine_compatibility(sidecar(), "10.3.0", "NVIDIA L4", "8.9")
    check_engine_compatibility(sidecar(), "10.3.1.post1", "NVIDIA L4", "8.9")  # patch releases share engines


def test_other_gpu_architecture_is_refused_with_rebuild_command():
    with pytest.raises(ValueError) as err:
        check_engine_compatibility(sidecar(), "10.3.0", "NVIDIA GeForce RTX 3090", "8.6", engine_path="models/x.engine")
    msg = str(err.value)
    assert "engine built for NVIDIA L4 (sm_89) with TensorRT 10.3" in msg
    assert "this machine has NVIDIA GeForce RTX 3090 (sm_86) with TensorRT 10.3" in msg
    assert "rebuild: export-engine model.onnx -o models/x.engine" in msg


def test_other_gpu_model_of_the_same_architecture_is_refused():
    with pytest.raises(ValueError, match="another GPU model"):
        check_engine_compatibility(sidecar(), "10.3.0", "NVIDIA GeForce RTX 4090", "8.9")


@pytest.mark.parametrize("installed", ["10.4.0", "10.2.0", "11.0.0", "8.6.1"])
def test_other_tensorrt_version_is_refused(installed):
    with pytest.raises(ValueError, match=r"another TensorRT version.*rebuild: export-engine"):
        check_engine_compatibility(sidecar(), installed, "NVIDIA L4", "8.9")


@pytest.mark.parametrize("installed", ["10.3.0", "10.8.0", "11.0.0"])
def test_version_compatible_engine_runs_on_same_or_later_tensorrt(installed):
    check_engine_compatibility(sidecar(version_compatible=True), installed, "NVIDIA L4", "8.9")


def test_version_compatible_engine_is_refused_by_older_tensorrt():
    with pytest.raises(ValueError, match=r"\(version-compatible\).*TensorRT 10\.1.*newer TensorRT"):
        check_engine_compatibility(sidecar(version_compatible=True), "10.1.0", "NVIDIA L4", "8.9")


def test_version_compatibility_does_not_excuse_another_gpu():
    with pytest.raises(ValueError, match="another GPU architecture"):
        check_engine_compatibility(sidecar(version_compatible=True), "10.3.0", "NVIDIA H100 80GB HBM3", "9.0")


@pytest.mark.parametrize("field", ["tensorrt_version", "gpu_name", "compute_capability", "micronet"])
def test_missing_sidecar_fields_are_named(field):
    data = sidecar()
    del data[field]
    with pytest.raises(ValueError, match=rf"lacks {field}.*rebuild: export-engine"):
        check_engine_compatibility(data, "10.3.0", "NVIDIA L4", "8.9")


def test_malformed_sidecar_values_raise():
    with pytest.raises(ValueError, match="expected a JSON object"):
        check_engine_compatibility(["not", "a", "dict"], "10.3.0", "NVIDIA L4", "8.9")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected a version like"):
        check_engine_compatibility(sidecar(tensorrt_version="ten"), "10.3.0", "NVIDIA L4", "8.9")
    with pytest.raises(ValueError, match="version_compatible must be true or false"):
        check_engine_compatibility(sidecar(version_compatible="yes"), "10.3.0", "NVIDIA L4", "8.9")


def test_read_sidecar_missing_or_damaged(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    assert sidecar_path(engine) == tmp_path / "model.engine.json"
    with pytest.raises(ValueError, match=r"model\.engine\.json not found.*export-engine"):
        read_sidecar(engine)
    sidecar_path(engine).write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_sidecar(engine)
    sidecar_path(engine).write_text(json.dumps(sidecar()))
    assert read_sidecar(engine)["gpu_name"] == "NVIDIA L4"


def test_backend_without_sidecar_says_rebuild(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ValueError, match="rebuild: export-engine"):
        TensorRTBackend(engine)
    with pytest.raises(FileNotFoundError):
        TensorRTBackend(tmp_path / "absent.engine")


def test_backend_without_tensorrt_names_the_pip_extra(tmp_path, monkeypatch):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    sidecar_path(engine).write_text(json.dumps(sidecar()))
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'micronet-sdk\[gpu\]'"):
        TensorRTBackend(engine)


def test_importing_the_backend_imports_no_gpu_packages_and_no_torch():
    code = (
        "import sys, micronet.runtime.backends.tensorrt as m; "
        "bad = [k for k in ('tensorrt', 'cupy', 'torch') if k in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# --- the pool of execution contexts, with real threads -----------------------------------


def _pool(limit=2, make=None):
    made = []

    def default_make():
        slot = object()
        made.append(slot)
        return slot

    return SlotPool(make or default_make, limit, owner="TestBackend"), made


def _wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_pool_makes_slots_on_demand_up_to_its_limit_and_reuses_them():
    pool, made = _pool(limit=2)
    a = pool.acquire()
    pool.release(a)
    assert pool.acquire() is a and len(made) == 1  # an idle slot is reused before a new one is made
    b = pool.acquire()
    assert b is not a and len(made) == 2 and pool.size == 2
    assert pool.acquire(block=False) is None  # all lent, none may be made
    pool.detach(b)  # in flight: still lent
    assert pool.acquire(block=False) is None
    pool.release(b)
    assert pool.acquire(block=False) is b
    with pytest.raises(ValueError, match="limit"):
        SlotPool(object, 0)


def test_pool_blocks_callers_until_a_slot_comes_back():
    pool, _ = _pool(limit=1)
    slot = pool.acquire()
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    time.sleep(0.05)
    assert waiter.is_alive() and not got
    pool.release(slot)
    waiter.join(5)
    assert got == [slot]


def _blocked_callers(call, count: int, settle: float = 0.05) -> tuple[list[threading.Thread], list[str]]:
    """``count`` threads running ``call``, started and given ``settle`` seconds to block;
    the messages of the RuntimeErrors they end with are collected in the list."""
    errors: list[str] = []

    def run():
        try:
            call()
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    time.sleep(settle)
    assert all(t.is_alive() for t in threads)
    return threads, errors


def test_close_wakes_waiting_callers_with_a_clear_error():
    pool, _ = _pool(limit=1)
    pool.detach(pool.acquire())  # the one slot is in flight
    waiters, errors = _blocked_callers(pool.acquire, 3)
    closer = threading.Thread(target=pool.close)
    closer.start()
    closer.join(5)
    assert not closer.is_alive()  # an in-flight slot does not hold up close()
    for t in waiters:
        t.join(5)
    assert errors == ["TestBackend is closed"] * 3
    with pytest.raises(RuntimeError, match="TestBackend is closed"):
        pool.acquire()


def test_close_waits_for_a_busy_slot_and_then_hands_over_every_slot():
    pool, made = _pool(limit=2)
    busy = pool.acquire()
    idle = pool.acquire()
    pool.release(idle)
    result = []
    closer = threading.Thread(target=lambda: result.append(pool.close()))
    closer.start()
    time.sleep(0.05)
    assert closer.is_alive()  # a thread still works with `busy`
    pool.detach(busy)
    closer.join(5)
    assert not closer.is_alive()
    assert sorted(map(id, result[0])) == sorted(map(id, made))
    assert pool.close() == []  # idempotent
    pool.release(busy)  # a late release after close is dropped, not reused
    with pytest.raises(RuntimeError, match="closed"):
        pool.acquire(block=False)


def test_close_while_a_slot_is_being_made_still_frees_it():
    started, finish = threading.Event(), threading.Event()

    def slow_make():
        started.set()
        finish.wait(5)
        return "slot"

    pool = SlotPool(slow_make, 1, owner="TestBackend")
    errors, closed = [], []
    maker = threading.Thread(target=lambda: errors.append(_raises(pool.acquire)))
    maker.start()
    started.wait(5)
    closer = threading.Thread(target=lambda: closed.append(pool.close()))
    closer.start()
    time.sleep(0.05)
    assert closer.is_alive()  # waits for the slot being made
    finish.set()
    maker.join(5)
    closer.join(5)
    assert errors == ["TestBackend is closed"] and closed == [["slot"]]


def test_a_failed_make_frees_its_place():
    calls = []

    def make():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of GPU memory")
        return "slot"

    pool = SlotPool(make, 1)
    with pytest.raises(RuntimeError, match="out of GPU memory"):
        pool.acquire()
    assert pool.acquire(block=False) == "slot"


def _raises(fn):
    try:
        fn()
    except RuntimeError as exc:
        return str(exc)
    return None


# --- control flow against stand-ins shaped like the TensorRT and CuPy APIs -------------
# These do not prove the real APIs behave so (the GPU tests below do); they run every
# line of the backend's Python on any machine.


class _FakeArray:
    """A NumPy-backed stand-in for cupy.ndarray; `data.ptr` resolves through REGISTRY."""

    registry: dict[int, np.ndarray] = {}
    _ids = itertools.count(1 << 20, 4096)

    def __init__(self, arr: np.ndarray, device_id: int = 0) -> None:
        self.arr = arr
        ptr = next(self._ids)
        self.registry[ptr] = arr
        self.data = types.SimpleNamespace(ptr=ptr)
        self.device = types.SimpleNamespace(id=device_id)

    shape = property(lambda self: self.arr.shape)
    dtype = property(lambda self: self.arr.dtype)
    size = property(lambda self: self.arr.size)

    def __getitem__(self, index):
        return _FakeArray(self.arr[index], self.device.id)  # a view, as in CuPy

    def reshape(self, shape):
        view = self.arr.reshape(shape)
        assert np.shares_memory(view, self.arr)
        return _FakeArray(view, self.device.id)

    def set(self, arr, stream=None):
        assert stream is not None and arr.shape == self.arr.shape and arr.dtype == self.arr.dtype
        self.arr[...] = arr

    def astype(self, dtype):
        return _FakeArray(self.arr.astype(dtype))

    def get(self):
        return self.arr.copy()

    def __setitem__(self, index, value):
        self.arr[index] = value.arr if isinstance(value, _FakeArray) else value


class _FakeEvent:
    def __init__(self, block=False, disable_timing=False):
        self.recorded = 0

    done = property(lambda self: True)

    def synchronize(self):
        pass


class _FakeStream:
    created = 0

    def __init__(self, non_blocking=False):
        type(self).created += 1
        self.ptr = 1000 + type(self).created
        self.waited: list = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def synchronize(self):
        pass

    def record(self, event=None):
        event = event if event is not None else _FakeEvent()
        event.recorded += 1
        return event

    def wait_event(self, event):
        self.waited.append(event)


class _FakeDevice:
    def __init__(self, device_id=0):
        self.id = device_id

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _fake_cupy() -> types.ModuleType:
    cupy = types.ModuleType("cupy")
    cupy.ndarray = _FakeArray
    cupy.uint8, cupy.float32 = np.dtype(np.uint8), np.dtype(np.float32)
    cupy.empty = lambda shape, dtype: _FakeArray(np.zeros(shape, dtype))
    cupy.ascontiguousarray = lambda a: a
    runtime = types.SimpleNamespace(
        CUDARuntimeError=RuntimeError,
        getDeviceProperties=lambda i: {"name": b"NVIDIA L4", "major": 8, "minor": 9},
    )
    cupy.cuda = types.SimpleNamespace(
        Device=_FakeDevice, Stream=_FakeStream, Event=_FakeEvent, get_current_stream=lambda: _FakeStream(), runtime=runtime
    )
    return cupy


def _fake_cupyx() -> types.ModuleType:
    cupyx = types.ModuleType("cupyx")
    cupyx.pinned = []

    def empty_pinned(shape, dtype=float, order="C"):
        arr = np.empty(shape, dtype, order)
        cupyx.pinned.append(arr)
        return arr

    cupyx.empty_pinned = empty_pinned
    return cupyx


class _FakeContext:
    def __init__(self, engine):
        self.engine = engine
        self.shape = None
        self.addresses = {}

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile
        ok = name == "image" and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
        self.shape = tuple(shape) if ok else None
        return ok

    def get_tensor_shape(self, name):
        n, h, w, _ = self.shape
        return (n, self.engine.io[name][2][1], h, w)  # K channels for class logits

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle):
        self.engine.gate.wait()  # tests hold a call here to close() meanwhile
        self.engine.executed.append(stream_handle)
        image = _FakeArray.registry[self.addresses["image"]]
        out = _FakeArray.registry[self.addresses["proximity"]]
        out[...] = image.astype(np.float32).mean(axis=-1)[:, None] / 255.0  # the "model"
        if "class_logits" in self.addresses:  # class k's logit: k times the map
            logits = _FakeArray.registry[self.addresses["class_logits"]]
            logits[...] = out * np.arange(logits.shape[1], dtype=np.float32)[None, :, None, None]
        return True


class _FakeEngine:
    def __init__(self, io, profile):
        self.io = io  # name -> (mode, dtype, shape)
        self.profile = profile
        self.contexts = 0
        self.gate = threading.Event()
        self.gate.set()
        self.executed: list = []

    num_io_tensors = property(lambda self: len(self.io))
    num_optimization_profiles = 1

    def get_tensor_name(self, i):
        return list(self.io)[i]

    def get_tensor_mode(self, name):
        return self.io[name][0]

    def get_tensor_dtype(self, name):
        return self.io[name][1]

    def get_tensor_shape(self, name):
        return self.io[name][2]

    def get_tensor_profile_shape(self, name, index):
        assert index == 0
        return list(self.profile)

    def create_execution_context(self):
        self.contexts += 1
        return _FakeContext(self)


def _fake_tensorrt(engine: _FakeEngine | None, version="10.3.0") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self):
            pass

    class Runtime:
        instances: list = []

        def __init__(self, logger):
            self.engine_host_code_allowed = False
            self.deserialized = 0
            Runtime.instances.append(self)

        def deserialize_cuda_engine(self, data):
            self.deserialized += 1
            return engine if data == b"ENGINE" else None

    trt.ILogger, trt.Runtime = ILogger, Runtime
    trt.DataType = types.SimpleNamespace(UINT8="uint8", FLOAT="float32", HALF="float16")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dt: np.dtype(dt).type
    return trt


PROFILE = ((1, 8, 8, 3), (2, 16, 16, 3), (4, 32, 32, 3))
MICRONET_IO = {"image": ("in", "uint8", (-1, -1, -1, 3)), "proximity": ("out", "float32", (-1, 1, -1, -1))}


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """Installs the stand-ins; returns a factory (io, sidecar overrides, version) -> engine path, trt."""
    monkeypatch.setattr(cuda_env, "_TRT_LOGGER", None)  # the logger class derives from trt.ILogger

    def make(io=MICRONET_IO, version="10.3.0", data=b"ENGINE", **overrides):
        engine = _FakeEngine(io, PROFILE)
        trt = _fake_tensorrt(engine, version)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
        monkeypatch.setitem(sys.modules, "cupyx", _fake_cupyx())
        monkeypatch.setattr(cuda_env, "_TRT_LOGGER", None)
        path = tmp_path / "model.engine"
        path.write_bytes(data)
        sidecar_path(path).write_text(json.dumps(sidecar(**overrides)))
        return path, trt, engine

    return make


def _expected(batch):
    return batch.mean(axis=-1)[:, None] / 255.0


def test_infer_runs_the_engine_and_returns_device_maps(fake_gpu):
    path, trt, engine = fake_gpu()
    backend = TensorRTBackend(path)
    assert isinstance(backend, Backend)
    assert (backend.name, backend.device, backend.device_id, backend.info.threshold) == ("tensorrt", "cuda", 0, 1.0)
    assert backend.profile == PROFILE
    batch = np.random.default_rng(0).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    out = backend.infer(batch)
    assert isinstance(out, _FakeArray) and out.shape == (3, 1, 20, 24) and out.dtype == np.float32
    np.testing.assert_allclose(out.get(), _expected(batch), rtol=1e-6)
    assert trt.Runtime.instances[0].engine_host_code_allowed is False
    backend.close()
    backend.close()  # idempotent
    assert backend.closed and "closed" in repr(backend)
    with pytest.raises(RuntimeError, match="closed"):
        backend.infer(batch)


def test_uploads_go_through_a_reused_pinned_buffer_on_the_copy_stream(fake_gpu):
    path, _, engine = fake_gpu()
    backend = TensorRTBackend(path, max_contexts=1)
    pinned = sys.modules["cupyx"].pinned
    rng = np.random.default_rng(4)
    for shape in [(2, 16, 16, 3), (1, 8, 24, 3), (2, 16, 16, 3)]:
        batch = rng.integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_allclose(backend.infer(batch).get(), _expected(batch), rtol=1e-6)
    assert len(pinned) == 1  # one pinned buffer per context, reused by every batch that fits
    (slot,) = backend._pool._slots
    assert slot.copy_stream is not slot.stream
    assert slot.stream.waited.count(slot.uploaded) == 3  # inference ordered after each upload
    assert slot.done.recorded == 3 and engine.executed == [slot.stream.ptr] * 3
    with pytest.raises(ValueError, match="device_id: expected a CUDA device index"):
        TensorRTBackend(path, device_id=-1)


def test_infer_async_keeps_two_batches_in_flight_on_two_contexts(fake_gpu):
    path, _, engine = fake_gpu()
    backend = TensorRTBackend(path)  # max_contexts=2
    rng = np.random.default_rng(5)
    a, b, c = (rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8) for _ in range(3))
    job_a = backend.infer_async(a)
    job_b = backend.infer_async(b)
    assert job_a.stream is not job_b.stream and engine.contexts == 2
    assert backend.infer_async(c, block=False) is None  # both contexts in use: no wait, no job
    np.testing.assert_allclose(job_b.wait().get(), _expected(b), rtol=1e-6)  # any order
    np.testing.assert_allclose(job_a.wait().get(), _expected(a), rtol=1e-6)
    assert job_a.wait() is job_a.wait()  # idempotent
    job_c = backend.infer_async(c, block=False)
    assert job_c is not None and job_c.done
    np.testing.assert_allclose(job_c.wait().get(), _expected(c), rtol=1e-6)


def test_infer_accepts_device_arrays(fake_gpu):
    path, _, _ = fake_gpu()
    backend = TensorRTBackend(path)
    batch = np.full((1, 8, 8, 3), 51, np.uint8)
    np.testing.assert_allclose(backend.infer(_FakeArray(batch)).get(), 0.2, rtol=1e-6)
    with pytest.raises(ValueError, match="on device 1"):
        backend.infer(_FakeArray(batch, device_id=1))


@pytest.mark.parametrize(
    "shape, match",
    [((5, 16, 16, 3), r"N=5 not in \[1, 4\]"), ((1, 64, 16, 3), r"H=64 not in \[8, 32\]"), ((1, 16, 4, 3), r"W=4 not in \[8, 32\]"),
     ((16, 16, 3), "expected an \\(N, H, W, 3\\)"), ((1, 16, 16, 4), "expected an \\(N, H, W, 3\\)")],
)
def test_batches_outside_the_profile_are_refused(fake_gpu, shape, match):
    path, _, _ = fake_gpu()
    backend = TensorRTBackend(path)
    with pytest.raises(ValueError, match=match):
        backend.infer(np.zeros(shape, np.uint8))


def test_float_batches_are_refused(fake_gpu):
    path, _, _ = fake_gpu()
    with pytest.raises(TypeError, match="expected uint8"):
        TensorRTBackend(path).infer(np.zeros((1, 16, 16, 3), np.float32))


def test_incompatible_engine_is_refused_before_deserialising(fake_gpu):
    path, trt, _ = fake_gpu(version="10.4.1")
    with pytest.raises(ValueError, match=r"TensorRT 10\.3.*TensorRT 10\.4.*rebuild: export-engine model\.onnx -o .*model\.engine"):
        TensorRTBackend(path)
    assert trt.Runtime.instances == []  # never deserialised


def test_tensorrt_8_is_refused_with_the_install_line(fake_gpu):
    path, trt, _ = fake_gpu(version="8.6.1", tensorrt_version="8.6.1")
    with pytest.raises(ImportError, match=r"needs TensorRT >= 10\.0, found 8\.6\.1: pip install 'micronet-sdk\[gpu\]'"):
        TensorRTBackend(path)
    assert trt.Runtime.instances == []


def test_version_compatible_engine_runs_host_code_only_when_the_caller_allows_it(fake_gpu):
    # The sidecar is as writable as the engine: it never grants host code by itself.
    path, trt, _ = fake_gpu(version="10.5.0", version_compatible=True)
    with pytest.raises(ValueError, match=r"version-compatible engine.*host code.*allow_host_code=True"):
        TensorRTBackend(path)
    assert trt.Runtime.instances == []  # refused before deserialising
    TensorRTBackend(path, allow_host_code=True)
    assert trt.Runtime.instances[0].engine_host_code_allowed is True


def test_an_engine_is_never_given_host_code_unasked(fake_gpu):
    path, trt, _ = fake_gpu()
    TensorRTBackend(path)
    assert trt.Runtime.instances[0].engine_host_code_allowed is False


def test_an_engine_that_differs_from_its_recorded_hash_is_refused_before_deserialising(fake_gpu):
    import hashlib

    path, trt, _ = fake_gpu(engine_sha256=hashlib.sha256(b"ENGINE").hexdigest())
    TensorRTBackend(path).close()  # the recorded engine loads
    path.write_bytes(b"ENGINE")  # same bytes: still fine
    sidecar_path(path).write_text(json.dumps(sidecar(engine_sha256="0" * 64)))
    trt.Runtime.instances.clear()
    with pytest.raises(ValueError, match=r"not the one its sidecar describes.*rebuild: export-engine"):
        TensorRTBackend(path)
    assert trt.Runtime.instances == []


def test_undeserialisable_engine_says_rebuild(fake_gpu):
    path, _, _ = fake_gpu(data=b"garbage")
    with pytest.raises(ValueError, match="could not deserialise.*rebuild: export-engine"):
        TensorRTBackend(path)


@pytest.mark.parametrize(
    "io, match",
    [
        ({"input": MICRONET_IO["image"], "proximity": MICRONET_IO["proximity"]}, "expected input 'image'"),
        ({"image": ("in", "float32", (-1, -1, -1, 3)), "proximity": MICRONET_IO["proximity"]}, "expected a uint8 'image'"),
        ({"image": ("in", "uint8", (-1, 3, -1, -1)), "proximity": MICRONET_IO["proximity"]}, "N×H×W×3"),
        ({"image": MICRONET_IO["image"], "proximity": ("out", "uint8", (-1, 1, -1, -1))}, "float32 or float16"),
    ],
)
def test_engines_that_are_not_micronet_models_are_refused(fake_gpu, io, match):
    path, _, _ = fake_gpu(io=io)
    with pytest.raises(ValueError, match=match):
        TensorRTBackend(path)


CLASS_IO = {**MICRONET_IO, "class_logits": ("out", "float16", (-1, 3, -1, -1))}
CLASS_INFO = json.loads(ModelInfo(architecture={"name": "micronet", "classes": ["a", "b", "c"]}, mean=[0.0] * 3, std=[1.0] * 3, mpp=0.5, threshold=1.0).to_json())


def test_an_engine_with_a_class_head_returns_the_map_and_the_logits_as_one_array(fake_gpu):
    # As the ONNX Runtime backend: (N, 1 + K, H, W) float32, so tiling and the class
    # gather treat both alike.
    path, _, _ = fake_gpu(io=CLASS_IO, micronet=CLASS_INFO)
    backend = TensorRTBackend(path)
    assert backend.outputs == ("proximity", "class_logits")
    batch = np.random.default_rng(0).integers(0, 256, (2, 8, 12, 3), dtype=np.uint8)
    out = backend.infer(batch).arr
    assert out.shape == (2, 4, 8, 12) and out.dtype == np.float32
    want = _expected(batch)
    np.testing.assert_allclose(out[:, :1], want, rtol=1e-6)
    np.testing.assert_allclose(out[:, 1:], want * np.arange(3, dtype=np.float32)[None, :, None, None], rtol=1e-3)  # float16 logits


@pytest.mark.parametrize(
    "io, micronet, match",
    [
        (CLASS_IO, json.loads(INFO.to_json()), r"'class_logits' output has 3 classes, its metadata names 0"),
        ({**MICRONET_IO, "class_logits": ("out", "float32", (-1, -1, -1, -1))}, CLASS_INFO, "with a fixed K"),
        ({**MICRONET_IO, "logits": ("out", "float32", (-1, 3, -1, -1))}, CLASS_INFO, r"and 'class_logits' for a class head"),
    ],
)
def test_class_outputs_must_match_the_metadata(fake_gpu, io, micronet, match):
    path, _, _ = fake_gpu(io=io, micronet=micronet)
    with pytest.raises(ValueError, match=match):
        TensorRTBackend(path)


def test_half_precision_output_is_returned_as_float32(fake_gpu):
    path, _, _ = fake_gpu(io={"image": MICRONET_IO["image"], "proximity": ("out", "float16", (-1, 1, -1, -1))})
    out = TensorRTBackend(path).infer(np.zeros((1, 8, 8, 3), np.uint8))
    assert out.dtype == np.float32


def test_concurrent_callers_share_a_bounded_pool_of_contexts(fake_gpu):
    path, _, engine = fake_gpu()
    backend = TensorRTBackend(path, max_contexts=2)
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8) for _ in range(16)]
    results: list = [None] * len(batches)
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait() if i < 8 else None
        results[i] = backend.infer(batches[i]).get()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for batch, out in zip(batches, results):
        np.testing.assert_allclose(out, _expected(batch), rtol=1e-6)
    assert 1 <= engine.contexts <= 2
    with pytest.raises(ValueError, match="max_contexts"):
        TensorRTBackend(path, max_contexts=0)


def test_close_wakes_callers_waiting_for_a_context(fake_gpu):
    # Before: a caller blocked on the idle queue waited forever once the backend closed.
    path, _, _ = fake_gpu()
    backend = TensorRTBackend(path, max_contexts=1)
    batch = np.full((1, 8, 8, 3), 102, np.uint8)
    pending = backend.infer_async(batch)  # the only context, in flight
    waiters, errors = _blocked_callers(lambda: backend.infer(batch), 2)
    backend.close()
    for t in waiters:
        t.join(5)
    assert not any(t.is_alive() for t in waiters)
    assert errors == ["TensorRTBackend is closed"] * 2
    np.testing.assert_allclose(pending.wait().get(), 0.4, rtol=1e-6)  # submitted work still completes


def test_close_lets_a_running_call_finish_before_freeing_its_context(fake_gpu):
    path, _, engine = fake_gpu()
    backend = TensorRTBackend(path, max_contexts=1)
    (slot,) = backend._pool._slots
    engine.gate.clear()  # the next execute_async_v3 blocks until the gate opens
    batch = np.full((2, 8, 8, 3), 51, np.uint8)
    results = []
    runner = threading.Thread(target=lambda: results.append(backend.infer(batch).get()))
    runner.start()
    _wait_until(lambda: backend._pool._busy)
    closer = threading.Thread(target=backend.close)
    closer.start()
    time.sleep(0.05)
    assert closer.is_alive() and slot.context is not None  # close() waits for the running call
    engine.gate.set()
    runner.join(5)
    closer.join(5)
    assert not runner.is_alive() and not closer.is_alive()
    np.testing.assert_allclose(results[0], 0.2, rtol=1e-6)
    assert slot.context is None and backend._engine is None and backend._runtime is None


def test_detector_keeps_two_batches_in_flight_and_equals_the_one_batch_at_a_time_path(fake_gpu, monkeypatch):
    # The Detector's pipelined path (submit k+1, then peaks of k) against the plain Backend
    # protocol on the same backend: identical detections. Peaks run on the host here (the
    # stand-in maps are NumPy-backed); the GPU test below runs them with CuPy.
    from micronet.runtime import detector as detector_mod

    path, _, engine = fake_gpu()
    backend = TensorRTBackend(path)
    order = []
    real_submit = backend.infer_async

    def submit(batch, block=True):
        order.append("submit")
        return real_submit(batch, block=block)

    def peaks(prob_map, threshold, min_distance):
        order.append("peaks")
        return find_peaks(prob_map.arr, threshold, min_distance)

    monkeypatch.setattr(backend, "infer_async", submit)
    monkeypatch.setattr(detector_mod, "find_peaks_cuda", peaks)
    rng = np.random.default_rng(6)
    images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(5)]  # 5 images, batches of 2
    det = Detector(backend=backend, threshold=0.5, min_distance=2, tile_margin=0, batch_size=2)
    got = det.detect_batch(images)
    assert order == ["submit", "submit", "peaks", "peaks", "submit", "peaks", "peaks", "peaks"]

    class PlainBackend:  # the Backend protocol only: one batch at a time
        name, device, info, profile = "plain", "cuda", backend.info, backend.profile

        def infer(self, batch):
            return backend.infer(batch)

    want = Detector(backend=PlainBackend(), threshold=0.5, min_distance=2, tile_margin=0, batch_size=2).detect_batch(images)
    assert len(got) == len(want) == 5
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.xy, w.xy)
        np.testing.assert_array_equal(g.scores, w.scores)
    assert sum(len(g) for g in got) > 0
    assert len(backend._pool._idle) == 2  # every context handed back


# --- device strings -------------------------------------------------------------------


@pytest.mark.parametrize("device, parsed", [("auto", ("auto", 0)), ("cpu", ("cpu", 0)), ("cuda", ("cuda", 0)), ("cuda:0", ("cuda", 0)), ("cuda:3", ("cuda", 3))])
def test_device_strings(device, parsed):
    from micronet.runtime.detector import parse_device

    assert parse_device(device) == parsed


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:1.5", "cuda:x", " cuda", "cuda:١", 0, None])
def test_bad_device_strings_list_the_valid_forms(blur_onnx, device):
    with pytest.raises(ValueError, match=r"device: expected one of 'auto', 'cpu', 'cuda', 'cuda:N' \(N a GPU index"):
        Detector(blur_onnx, device=device)


def test_gpu_index_reaches_the_tensorrt_backend(fake_gpu):
    path, _, _ = fake_gpu()
    det = Detector(path, device="cuda:0", tile_margin=0)
    assert det.backend.device_id == 0
    with pytest.raises(ValueError, match="CUDA GPUs only"):
        Detector(path, device="cpu")


# --- real engines on a GPU -------------------------------------------------------------


def he_like_images(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """(n, h, w, 3) uint8: pink stroma with dark purple nucleus-sized blobs."""
    from micronet.runtime.diagnostics.synthetic import nuclei_image

    seeds = rng.integers(0, 2**31, n)
    return np.stack([nuclei_image(h, w, max(1, h * w // 900), seed=int(s), spacing=6)[0] for s in seeds])


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    """A tiny random-weight MicroNet exported to fp32 and fp16 ONNX, and an engine built
    from the fp16 one on this GPU."""
    require_tensorrt()
    pytest.importorskip("torch", reason="torch is needed to export the test model")
    from micronet.export.engine import build_engine
    from micronet.export.onnx import export_onnx
    from micronet.trainer.checkpoint import save_checkpoint
    from micronet.trainer.models import create_model

    folder = tmp_path_factory.mktemp("trt")
    model = create_model("micronet_tiny")
    info = ModelInfo(architecture=model.config_dict(), mean=[180.0, 130.0, 170.0], std=[40.0, 45.0, 35.0], mpp=0.55, threshold=1.0)
    ckpt = save_checkpoint(folder / "tiny.safetensors", model, info)
    fp32 = export_onnx(ckpt, folder / "tiny.onnx", "fp32")
    fp16 = export_onnx(ckpt, folder / "tiny.fp16.onnx", "fp16")
    engine = build_engine(
        fp16, folder / "tiny.engine", min_shape=(1, 64, 64), opt_shape=(2, 256, 256), max_shape=(4, 512, 512),
        workspace_gb=1.0, timing_cache=folder / "timing.cache",
    )
    return types.SimpleNamespace(folder=folder, fp32=fp32, fp16=fp16, engine=engine)


def _ort_maps(onnx_path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["proximity"], {"image": batch})[0]


@pytest.mark.gpu
def test_engine_matches_onnxruntime_fp32(tiny_engine):
    cupy = require_tensorrt()
    from micronet.runtime.evaluation.matching import evaluate_points
    from micronet.runtime.peaks import find_peaks

    batch = he_like_images(np.random.default_rng(0), 3, 256, 320)
    with TensorRTBackend(tiny_engine.engine) as backend:
        assert backend.sidecar["precision"] == "fp16"
        maps = backend.infer(batch)
        assert isinstance(maps, cupy.ndarray) and maps.shape == (3, 1, 256, 320) and maps.dtype == cupy.float32
        got = cupy.asnumpy(maps)
    ref = _ort_maps(tiny_engine.fp32, batch)
    span = float(ref.max() - ref.min())
    assert span > 0
    assert np.abs(got - ref).max() <= 2e-2 * span

    tp = fp = fn = 0
    for k in range(len(batch)):
        threshold = float(np.percentile(ref[k, 0], 90))  # a random model: ξ relative to its own map
        ours, _ = find_peaks(got[k, 0], threshold, 3)
        theirs, _ = find_peaks(ref[k, 0], threshold, 3)
        m = evaluate_points(ours, theirs, radius=2.0)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    assert tp >= 10
    assert 2 * tp / (2 * tp + fp + fn) >= 0.99


@pytest.mark.gpu
def test_cuda_peaks_on_engine_output_equal_cpu_peaks(tiny_engine):
    cupy = require_tensorrt()
    from micronet.runtime.peaks import find_peaks, find_peaks_cuda

    batch = he_like_images(np.random.default_rng(1), 1, 512, 512)
    with TensorRTBackend(tiny_engine.engine) as backend:
        maps = backend.infer(batch)
        host = cupy.asnumpy(maps)
        threshold = float(np.percentile(host, 90))
        xy_gpu, s_gpu = find_peaks_cuda(maps[0], threshold, 3)
    xy_cpu, s_cpu = find_peaks(host[0], threshold, 3)
    assert len(xy_cpu) > 0
    np.testing.assert_array_equal(xy_gpu, xy_cpu)
    np.testing.assert_array_equal(s_gpu, s_cpu)


@pytest.mark.gpu
def test_engine_is_thread_safe_and_checks_the_profile(tiny_engine):
    cupy = require_tensorrt()
    batches = [he_like_images(np.random.default_rng(k), 2, 128, 128) for k in range(6)]
    with TensorRTBackend(tiny_engine.engine, max_contexts=3) as backend:
        expected = [cupy.asnumpy(backend.infer(b)) for b in batches]
        results: list = [None] * len(batches)

        def work(i):
            results[i] = cupy.asnumpy(backend.infer(batches[i]))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for a, b in zip(expected, results):  # separate contexts, same kernels
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="outside the engine's profile"):
            backend.infer(np.zeros((1, 1024, 64, 3), np.uint8))
        # A CuPy batch already on the device works too.
        np.testing.assert_allclose(cupy.asnumpy(backend.infer(cupy.asarray(batches[0]))), expected[0], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_built_sidecar_describes_this_machine(tiny_engine):
    require_tensorrt()
    import tensorrt as trt

    data = read_sidecar(tiny_engine.engine)
    gpu_name, cc = trt_backend.cuda_device_properties(0)
    assert (data["gpu_name"], data["compute_capability"], data["tensorrt_version"]) == (gpu_name, cc, trt.__version__)
    assert data["profiles"] == [{"input": "image", "min": [1, 64, 64, 3], "opt": [2, 256, 256, 3], "max": [4, 512, 512, 3]}]
    assert data["micronet"]["precision"] == "fp16" and data["version_compatible"] is False
    assert (tiny_engine.folder / "timing.cache").stat().st_size > 0
    check_engine_compatibility(data, trt.__version__, gpu_name, cc)
    with pytest.raises(ValueError, match="rebuild"):
        check_engine_compatibility(data, trt.__version__, gpu_name + " (another)", cc)


@pytest.mark.gpu
def test_two_batches_in_flight_equal_one_at_a_time(tiny_engine):
    cupy = require_tensorrt()
    batches = [he_like_images(np.random.default_rng(10 + k), 2, 256, 256) for k in range(3)]
    with TensorRTBackend(tiny_engine.engine, max_contexts=2) as backend:
        expected = [cupy.asnumpy(backend.infer(b)) for b in batches]
        first, second = backend.infer_async(batches[0]), backend.infer_async(batches[1])
        assert first.stream is not second.stream  # two contexts, two streams
        assert backend.infer_async(batches[2], block=False) is None
        np.testing.assert_allclose(cupy.asnumpy(second.wait()), expected[1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cupy.asnumpy(first.wait()), expected[0], rtol=1e-5, atol=1e-6)
        third = backend.infer_async(batches[2], block=False)
        assert third is not None
        np.testing.assert_allclose(cupy.asnumpy(third.wait()), expected[2], rtol=1e-5, atol=1e-6)
        hosts = [slot.host for slot in backend._pool._slots]
        assert all(h is not None for h in hosts) and len(hosts) == 2  # one reused pinned buffer per context


@pytest.mark.gpu
def test_close_wakes_waiting_callers_on_a_real_engine(tiny_engine):
    cupy = require_tensorrt()
    batch = he_like_images(np.random.default_rng(3), 1, 128, 128)
    backend = TensorRTBackend(tiny_engine.engine, max_contexts=1)
    expected = cupy.asnumpy(backend.infer(batch))
    pending = backend.infer_async(batch)  # the only context, in flight
    (waiter,), errors = _blocked_callers(lambda: backend.infer(batch), 1, settle=0.2)
    backend.close()
    waiter.join(10)
    assert not waiter.is_alive() and errors == ["TensorRTBackend is closed"]
    np.testing.assert_allclose(cupy.asnumpy(pending.wait()), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_detector_on_an_engine_pipelines_and_finds_the_cpu_peaks(tiny_engine):
    # The pipelined GPU path (two batches in flight, CuPy peaks, one copy per tile) against
    # the same engine's maps copied to the host and scanned by the native CPU finder.
    cupy = require_tensorrt()
    from micronet.runtime.evaluation.matching import match_points

    images = list(he_like_images(np.random.default_rng(4), 5, 300, 420))
    backend = TensorRTBackend(tiny_engine.engine)
    threshold = float(np.percentile(cupy.asnumpy(backend.infer(np.stack(images[:1]))), 90))
    det = Detector(backend=backend, threshold=threshold, batch_size=2)
    assert det.device == "cuda"
    got = det.detect_batch(images)

    class HostMaps:  # the Backend protocol, maps copied to the host: CPU peaks
        name, device, info, profile = "host-maps", "cpu", backend.info, backend.profile

        def infer(self, batch):
            return cupy.asnumpy(backend.infer(batch))

    want = Detector(backend=HostMaps(), threshold=threshold, batch_size=2, tile_size=det.tile_size, tile_margin=det.tile_margin).detect_batch(images)
    total = 0
    for g, w in zip(got, want):
        # Same engine, same shapes: the same peaks, but for a near-tie that two
        # contexts' kernels may round apart.
        pred, true = match_points(g.xy, w.xy, 0.0)
        assert len(g) - len(pred) <= 1 and len(w) - len(true) <= 1
        np.testing.assert_allclose(g.scores[pred], w.scores[true], rtol=1e-5, atol=1e-6)
        total += len(w)
    assert total > 50
    assert len(backend._pool._idle) == backend._pool.size  # every context handed back
    backend.close()


@pytest.mark.gpu
def test_gpu_index_is_checked_and_used(tiny_engine):
    cupy = require_tensorrt()
    count = cupy.cuda.runtime.getDeviceCount()
    det = Detector(tiny_engine.engine, device=f"cuda:{count - 1}")
    assert det.backend.device_id == count - 1
    assert det.detect(he_like_images(np.random.default_rng(5), 1, 128, 128)[0]) is not None
    with pytest.raises(RuntimeError, match=f"no usable CUDA device {count}"):
        Detector(tiny_engine.engine, device=f"cuda:{count}")
