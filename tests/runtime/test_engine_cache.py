"""The engine cache: where it lives, what its key depends on, builds that are complete or
absent and happen once across threads and processes (against API-shaped stand-ins for
TensorRT's builder and CuPy's device queries; run everywhere), the bundled model on
TensorRT, and real builds on a GPU (skip without TensorRT, CuPy and a CUDA device)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from gpu_support import fake_cupy, require_tensorrt
from micronet.runtime import engine_cache
from micronet.runtime.backends import cuda_env
from micronet.runtime.backends.tensorrt import read_sidecar
from micronet.runtime.detector import Detector
from micronet.runtime.engine_cache import (
    ENGINE_PROFILE,
    bundled_engine_source,
    cache_dir,
    cached_engine,
    engine_key,
    file_sha256,
)
from micronet.runtime.model_info import METADATA_KEY, ModelInfo

GPU_EXTRA = "pip install 'micronet-sdk[gpu]'"


# --- where the cache lives and what the key depends on ----------------------------------


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MICRONET_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("MICRONET_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "micronet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "micronet"


def test_engine_key_changes_with_everything_the_engine_depends_on():
    base = dict(onnx_sha256="a" * 64, gpu_name="NVIDIA L4", compute_capability="8.9", tensorrt_version="10.3.0")
    key = engine_key(**base)
    assert key == engine_key(**base, profile=ENGINE_PROFILE) and len(key) == 20
    for field, other in [("onnx_sha256", "b" * 64), ("gpu_name", "NVIDIA L40S"), ("compute_capability", "9.0"), ("tensorrt_version", "10.4.0")]:
        assert engine_key(**{**base, field: other}) != key, field
    assert engine_key(**base, profile=((1, 64, 64), (2, 1024, 1024), (8, 1024, 1024))) != key


def test_file_sha256(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# --- the bundled model on TensorRT ------------------------------------------------------


def test_fast_cpu_on_tensorrt_is_refused_naming_the_model_that_works():
    with pytest.raises(ValueError, match=r"'fast-cpu' model is an int8 QDQ model made for ONNX Runtime on the CPU.*Detector\('default', backend='tensorrt'\)"):
        bundled_engine_source("fast-cpu")
    with pytest.raises(ValueError, match=r"expected one of 'default', got 'other'"):
        bundled_engine_source("other")
    from micronet.runtime.detector import bundled_model

    try:
        bundled_model("fast-cpu")
    except FileNotFoundError:
        pytest.skip("the bundled fast-cpu model is not in this checkout")
    with pytest.raises(ValueError, match="'fast-cpu' model is an int8 QDQ model"):
        Detector("fast-cpu", backend="tensorrt")


def test_missing_bundled_fp16_model_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(engine_cache.TENSORRT_SOURCES, "default", "absent.fp16.onnx")
    with pytest.raises(FileNotFoundError, match=r"micronet/runtime/models/absent\.fp16\.onnx\) is missing.*export-engine"):
        bundled_engine_source("default")


def _bundled_fp16() -> Path:
    try:
        return bundled_engine_source("default")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def test_default_model_on_tensorrt_without_tensorrt_names_the_gpu_extra(monkeypatch):
    assert _bundled_fp16().name == "micronet_crchisto.fp16.onnx"
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    for kwargs in (dict(model="default"), dict(model=None), dict(model="default", device="cuda:1")):
        with pytest.raises(ImportError, match="needs TensorRT: " + re.escape(GPU_EXTRA)):
            Detector(backend="tensorrt", **kwargs)
    with pytest.raises(ValueError, match="CUDA GPUs only"):
        Detector("default", backend="tensorrt", device="cpu")
    with pytest.raises(ValueError, match="threads applies to the ONNX Runtime CPU provider only"):
        Detector("default", backend="tensorrt", threads=2)


def test_other_onnx_files_on_tensorrt_point_to_export_engine(blur_onnx):
    with pytest.raises(ValueError, match=r"backend='tensorrt' cannot run 'blur\.onnx'.*export-engine blur\.onnx.*Detector\('default', backend='tensorrt'\)"):
        Detector(blur_onnx, backend="tensorrt")


# --- builds against stand-ins for TensorRT's builder and CuPy ----------------------------


def _fake_tensorrt(version="10.3.0"):
    """TensorRT 10's builder, enough for build_engine; `trt.builds` counts the builds,
    `trt.hold` (an Event) holds each build until set, `trt.fail` makes builds fail."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.builds = []
    trt.hold = threading.Event()
    trt.hold.set()
    trt.fail = False
    trt.started = threading.Event()

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self):
            pass

    class IProgressMonitor:
        def __init__(self):
            pass

    class Cache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+"

    class Config:
        progress_monitor = None

        def set_memory_pool_limit(self, pool, size):
            pass

        def set_flag(self, flag):
            pass

        def add_optimization_profile(self, profile):
            self.profile = profile.shapes

        def create_timing_cache(self, blob):
            return Cache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shapes = (tuple(lo), tuple(opt), tuple(hi))

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            assert flags == 1 << 1  # strongly typed
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.started.set()
            trt.hold.wait(10)
            trt.builds.append(config.profile)
            if trt.fail:
                self.logger.log(ILogger.Severity.ERROR, "out of memory")
                return None
            return b"ENGINE:" + repr(config.profile).encode()

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            return True

    trt.ILogger, trt.IProgressMonitor, trt.Builder, trt.OnnxParser = ILogger, IProgressMonitor, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.BuilderFlag = types.SimpleNamespace(VERSION_COMPATIBLE="VERSION_COMPATIBLE")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    return trt


def _make_onnx(path: Path, precision="fp16", scale=1.0) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])
    y = helper.make_tensor_value_info("proximity", TensorProto.FLOAT, ["N", 1, "H", "W"])
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[3], keepdims=1),
        helper.make_node("Mul", ["m", "s"], ["ms"]),
        helper.make_node("Transpose", ["ms"], ["proximity"], perm=[0, 3, 1, 2]),
    ]
    scale_init = helper.make_tensor("s", TensorProto.FLOAT, [], [scale])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=[scale_init]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    info = ModelInfo(architecture={"name": "micronet"}, mean=[1.0, 2.0, 3.0], std=[4.0, 5.0, 6.0], mpp=0.5, threshold=0.7, precision=precision)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    onnx.save(model, str(path))
    return path


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """Installs the stand-ins and points the cache at a fresh folder; returns trt."""

    def install(devices=(("NVIDIA L4", 8, 9),), version="10.3.0"):
        trt = _fake_tensorrt(version)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setitem(sys.modules, "cupy", fake_cupy(devices))
        monkeypatch.setattr(cuda_env, "_TRT_LOGGER", None)  # its class derives from trt.ILogger
        return trt

    monkeypatch.setenv("MICRONET_CACHE_DIR", str(tmp_path / "cache"))
    return install


def test_first_use_builds_and_logs_later_uses_load_the_cache(fake_gpu, tmp_path, caplog):
    trt = fake_gpu()
    onnx_path = _make_onnx(tmp_path / "m.fp16.onnx")
    with caplog.at_level(logging.INFO, logger="micronet"):
        engine = cached_engine(onnx_path)
    assert "building a TensorRT engine for m.fp16.onnx on GPU 0 (NVIDIA L4, sm_89, TensorRT 10.3.0), once" in caplog.text
    assert engine.parent.parent == tmp_path / "cache" / "engines" and engine.name == "model.engine"
    assert engine.parent.name.startswith("m.fp16-")
    assert len(trt.builds) == 1 and trt.builds[0] == ((1, 64, 64, 3), (4, 1024, 1024, 3), (4, 1024, 1024, 3))
    data = read_sidecar(engine)
    assert data["onnx_sha256"] == file_sha256(onnx_path) and data["gpu_name"] == "NVIDIA L4" and data["precision"] == "fp16"
    timing = list((tmp_path / "cache" / "timing").iterdir())
    assert [p.name for p in timing] == ["NVIDIA-L4-sm89-trt10.3.0.cache"]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="micronet"):
        assert cached_engine(onnx_path) == engine
    assert len(trt.builds) == 1 and "building" not in caplog.text  # loaded, not rebuilt
    # Nothing but the entry, its lock and the timing cache: no temporary leftovers.
    assert sorted(p.name for p in (tmp_path / "cache" / "engines").iterdir()) == sorted([engine.parent.name, engine.parent.name + ".lock"])


def test_another_model_gpu_tensorrt_or_profile_gets_its_own_engine(fake_gpu, tmp_path):
    trt = fake_gpu(devices=(("NVIDIA L4", 8, 9), ("NVIDIA H100 80GB HBM3", 9, 0)))
    a = _make_onnx(tmp_path / "a.onnx")
    b = _make_onnx(tmp_path / "b.onnx", scale=2.0)
    engines = {
        cached_engine(a),
        cached_engine(b),
        cached_engine(a, device_id=1),
        cached_engine(a, profile=((1, 64, 64), (1, 512, 512), (2, 512, 512))),
    }
    assert len(engines) == 4 and len(trt.builds) == 4
    assert read_sidecar(cached_engine(a, device_id=1))["gpu_name"] == "NVIDIA H100 80GB HBM3"
    trt.__version__ = "10.4.0"
    cached_engine(a)
    assert len(trt.builds) == 5


def test_a_damaged_or_foreign_entry_is_rebuilt(fake_gpu, tmp_path):
    trt = fake_gpu()
    onnx_path = _make_onnx(tmp_path / "m.onnx")
    engine = cached_engine(onnx_path)
    sidecar = engine.with_name("model.engine.json")
    data = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**data, "onnx_sha256": "0" * 64}))
    assert cached_engine(onnx_path) == engine and len(trt.builds) == 2
    assert read_sidecar(engine)["onnx_sha256"] == file_sha256(onnx_path)
    sidecar.unlink()  # an engine without its sidecar does not count
    assert cached_engine(onnx_path) == engine and len(trt.builds) == 3
    engine.write_bytes(b"")
    assert cached_engine(onnx_path) == engine and len(trt.builds) == 4 and engine.stat().st_size > 0


def test_the_profile_is_tuned_for_the_batch_the_detector_sends():
    from micronet.runtime.detector import DEFAULT_BATCH_SIZE

    lo, opt, hi = ENGINE_PROFILE
    assert opt == (DEFAULT_BATCH_SIZE, 1024, 1024) and hi[0] >= DEFAULT_BATCH_SIZE


def test_an_engine_that_changed_since_it_was_built_is_rebuilt_not_loaded(fake_gpu, tmp_path, caplog):
    trt = fake_gpu()
    onnx_path = _make_onnx(tmp_path / "m.onnx")
    engine = cached_engine(onnx_path)
    data = read_sidecar(engine)
    assert data["engine_sha256"] == file_sha256(engine) and data["version_compatible"] is False  # no host code
    engine.write_bytes(b"ENGINE: something else")  # same size or not: the hash decides
    with caplog.at_level(logging.WARNING, logger="micronet.runtime.engine_cache"):
        assert cached_engine(onnx_path) == engine
    assert len(trt.builds) == 2 and "does not match the hash recorded when it was built" in caplog.text
    assert file_sha256(engine) == read_sidecar(engine)["engine_sha256"]
    sidecar = engine.with_name("model.engine.json")
    sidecar.write_text(json.dumps({k: v for k, v in data.items() if k != "engine_sha256"}))
    cached_engine(onnx_path)  # an entry without the engine's hash does not count either
    assert len(trt.builds) == 3


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_a_cache_folder_others_can_write_to_is_refused(fake_gpu, tmp_path):
    trt = fake_gpu()
    onnx_path = _make_onnx(tmp_path / "m.onnx")
    root = tmp_path / "cache"
    cached_engine(onnx_path)
    assert (root.stat().st_mode & 0o077) == 0 and ((root / "engines").stat().st_mode & 0o077) == 0  # made private
    for folder in (root, root / "engines"):
        folder.chmod(0o777)
        with pytest.raises(ValueError, match=rf"{re.escape(str(folder))} is writable by others.*chmod go-w"):
            cached_engine(onnx_path)
        folder.chmod(0o755)  # readable by others is fine
        cached_engine(onnx_path)
    assert len(trt.builds) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX owners")
def test_a_cache_folder_of_another_user_is_refused(fake_gpu, tmp_path, monkeypatch):
    fake_gpu()
    onnx_path = _make_onnx(tmp_path / "m.onnx")
    (tmp_path / "cache").mkdir(mode=0o700)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(tmp_path).st_uid + 1)
    with pytest.raises(ValueError, match=r"belongs to user id \d+, not to this user.*MICRONET_CACHE_DIR"):
        cached_engine(onnx_path)


def test_a_failed_build_leaves_nothing_that_looks_like_an_engine(fake_gpu, tmp_path):
    trt = fake_gpu()
    onnx_path = _make_onnx(tmp_path / "m.onnx")
    trt.fail = True
    with pytest.raises(RuntimeError, match="out of memory"):
        cached_engine(onnx_path)
    engines = tmp_path / "cache" / "engines"
    assert [p.name for p in engines.iterdir() if not p.name.endswith(".lock")] == []
    trt.fail = False
    engine = cached_engine(onnx_path)
    assert engine.is_file() and read_sidecar(engine)["gpu_name"] == "NVIDIA L4"


def test_concurrent_first_uses_build_once(fake_gpu, tmp_path):
    trt = fake_gpu()
    onnx_path = _make_onnx(tmp_path / "m.onnx")
    trt.hold.clear()
    results, errors = [], []

    def use():
        try:
            results.append(cached_engine(onnx_path))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    assert trt.started.wait(10)
    time.sleep(0.1)  # the others are now waiting for the lock
    trt.hold.set()
    for t in threads:
        t.join(20)
    assert not errors and len(results) == 4 and len(set(results)) == 1
    assert len(trt.builds) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="the holder below uses fcntl")
def test_a_build_waits_for_the_lock_another_process_holds(fake_gpu, tmp_path, caplog):
    # Another process (here: one that only holds the entry's lock, as a building process
    # would) makes this one wait, say so, and build after it.
    fake_gpu()
    onnx_path = _make_onnx(tmp_path / "m.onnx")
    from micronet.runtime.backends.tensorrt import cuda_device_properties

    gpu, cc = cuda_device_properties(0)
    key = engine_key(file_sha256(onnx_path), gpu, cc, "10.3.0")
    lock = tmp_path / "cache" / "engines" / f"m-{key}.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, sys, time
            fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)
            print("locked", flush=True)
            time.sleep(1.5)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with caplog.at_level(logging.INFO, logger="micronet.runtime"):
            engine = cached_engine(onnx_path)
        assert time.monotonic() - t0 > 0.5
        assert "waiting for another process that holds the TensorRT engine for m.onnx" in caplog.text
        assert engine.is_file()
    finally:
        holder.wait(10)


def test_int8_and_missing_models_are_refused_before_building(fake_gpu, tmp_path):
    trt = fake_gpu()
    with pytest.raises(ValueError, match="int8 QDQ export"):
        cached_engine(_make_onnx(tmp_path / "q.onnx", precision="int8"))
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        cached_engine(tmp_path / "absent.onnx")
    with pytest.raises(RuntimeError, match="no usable CUDA device 3"):
        cached_engine(_make_onnx(tmp_path / "m.onnx"), device_id=3)
    assert trt.builds == []


def test_old_tensorrt_is_refused(fake_gpu, tmp_path):
    fake_gpu(version="8.6.1")
    with pytest.raises(ImportError, match=r"TensorRT >= 10\.0, found 8\.6\.1"):
        cached_engine(_make_onnx(tmp_path / "m.onnx"))


def test_the_engine_cache_imports_no_torch_and_no_gpu_packages():
    code = (
        "import sys, micronet.runtime.engine_cache, micronet.export.engine; "
        "bad = [k for k in ('tensorrt', 'cupy', 'torch') if k in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# --- real builds on a GPU ---------------------------------------------------------------


@pytest.mark.gpu
def test_bundled_model_on_tensorrt_builds_once_and_matches_onnxruntime(tmp_path_factory, monkeypatch, caplog):
    # The real first use: the bundled fp16 export → an fp16 engine in the cache, then
    # loaded from there; detections agree with the fp32 model on ONNX Runtime's CPU
    # provider up to fp16 rounding. The cache is $MICRONET_CACHE_DIR when set (so a GPU
    # session's benchmark reuses the engine built here), else a fresh folder.
    require_tensorrt()
    _bundled_fp16()
    from micronet.runtime.detector import bundled_sample, read_image
    from micronet.runtime.evaluation.matching import evaluate_points

    root = os.environ.get("MICRONET_CACHE_DIR") or str(tmp_path_factory.mktemp("engine-cache"))
    monkeypatch.setenv("MICRONET_CACHE_DIR", root)
    with caplog.at_level(logging.INFO, logger="micronet"):
        det = Detector("default", backend="tensorrt")
    built = "building a TensorRT engine for micronet_crchisto.fp16.onnx" in caplog.text
    assert det.backend_name == "tensorrt" and det.device == "cuda"
    assert Path(root) in det.backend.path.parents
    sidecar = read_sidecar(det.backend.path)
    assert sidecar["precision"] == "fp16" and sidecar["onnx_sha256"] == file_sha256(bundled_engine_source())
    assert sidecar["profiles"][0]["max"] == [4, 1024, 1024, 3]
    image = read_image(bundled_sample())[..., :3]
    found = det.detect(image)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="micronet"):
        again = Detector(backend="tensorrt")
    assert "building" not in caplog.text and again.backend.path == det.backend.path  # from the cache
    np.testing.assert_array_equal(again.detect(image).xy, found.xy)
    reference = Detector("default", device="cpu").detect(image)
    m = evaluate_points(found.xy, reference.xy, radius=3.0)
    assert len(reference) > 50 and m.f1 >= 0.98, (m, "built now" if built else "from the cache")
    det.backend.close()
    again.backend.close()
