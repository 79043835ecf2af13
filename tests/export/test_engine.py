"""export-engine and the runtime's engine builder (``micronet.runtime.backends.tensorrt_build``,
which the command re-exports): profile parsing and checks, the command line without TensorRT, and the
build flow against API-shaped stand-ins for TensorRT's builder and CuPy's device queries
(all run everywhere; the real build runs in tests/runtime/test_tensorrt_backend.py and
tests/runtime/test_engine_cache.py on a GPU)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest
from gpu_support import fake_cupy
from micronet.export import engine as engine_mod
from micronet.export.engine import (
    build_engine,
    check_profile,
    main,
    parse_shape,
    read_onnx_info,
)
from micronet.runtime.backends import cuda_env, tensorrt_build
from micronet.runtime.backends import tensorrt as trt_backend
from micronet.runtime.backends.tensorrt import read_sidecar
from micronet.runtime.model_info import METADATA_KEY, ModelInfo

GPU_EXTRA = "pip install 'micronet-sdk[gpu]'"


# --- shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, shape", [("1x256x256", (1, 256, 256)), ("4X1024x768", (4, 1024, 768)), (" 8x2048x2048 ", (8, 2048, 2048))])
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "256x256", "1x256x256x3", "0x256x256", "1x-256x256", "1x256.5x256", "ax256x256", "1*256*256"])
def test_parse_shape_rejects_bad_values(text):
    with pytest.raises(ValueError, match="expected a shape NxHxW"):
        parse_shape(text)


def test_check_profile():
    assert check_profile((1, 64, 64), [2, 128, 96], (4, 256, 256)) == ((1, 64, 64), (2, 128, 96), (4, 256, 256))
    with pytest.raises(ValueError, match=r"min <= opt <= max along H, got 64, 32, 256"):
        check_profile((1, 64, 64), (1, 32, 64), (1, 256, 256))
    with pytest.raises(ValueError, match=r"min <= opt <= max along N"):
        check_profile((2, 64, 64), (1, 64, 64), (4, 64, 64))
    with pytest.raises(ValueError, match=r"max shape: expected \(N, H, W\)"):
        check_profile((1, 64, 64), (1, 64, 64), (1, 64))
    with pytest.raises(ValueError, match=r"opt shape: expected \(N, H, W\)"):
        check_profile((1, 64, 64), (1, 64.5, 64), (1, 128, 128))
    with pytest.raises(ValueError, match=r"min shape: expected \(N, H, W\)"):
        check_profile((0, 64, 64), (1, 64, 64), (1, 128, 128))


# --- command line without TensorRT -----------------------------------------------------


def test_help_works_without_tensorrt(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--min NxHxW" in out and "--timing-cache" in out and "--version-compatible" in out and "--device N" in out


@pytest.mark.parametrize("args", [["--min", "1x256"], ["--opt", "0x1x1"], ["--max", "big"], ["--workspace-gb", "lots"]])
def test_bad_command_line_values_exit_2(args, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.engine"), *args])
    assert exit_.value.code == 2
    assert "export-engine: error:" in capsys.readouterr().err


def test_without_tensorrt_the_command_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read before TensorRT is found")
    assert main([str(model), "-o", str(tmp_path / "m.engine")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and GPU_EXTRA in err and "Traceback" not in err
    assert not (tmp_path / "m.engine").exists()


def test_without_tensorrt_the_process_exits_2_with_one_line_and_no_torch(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    code = (
        "import sys; sys.modules['tensorrt'] = None\n"
        "from micronet.export.engine import main\n"
        f"rc = main([{str(model)!r}, '-o', {str(tmp_path / 'm.engine')!r}])\n"
        "assert 'torch' not in sys.modules, 'export-engine must not import torch'\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("export-engine: error:") and GPU_EXTRA in lines[0]


def test_invalid_profile_is_reported_before_looking_for_tensorrt(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", (1, 512, 512), (1, 256, 256), (1, 1024, 1024))
    with pytest.raises(ValueError, match="workspace_gb"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", workspace_gb=0)


# --- reading the model's metadata ------------------------------------------------------


def make_onnx(path: Path, info: ModelInfo | None, *, input_type=None, output_name="proximity", reference: dict | None = None) -> Path:
    """A small graph with a MicroNet model's interface: uint8 (N, H, W, 3) → (N, 1, H, W)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", input_type or TensorProto.UINT8, ["N", "H", "W", 3])
    y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", 1, "H", "W"])
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[3], keepdims=1),
        helper.make_node("Transpose", ["m"], [output_name], perm=[0, 3, 1, 2]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if info is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, info.to_json()
    if reference is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "micronet.reference", json.dumps(reference)
    onnx.save(model, str(path))
    return path


def model_info(precision: str = "fp16") -> ModelInfo:
    return ModelInfo(architecture={"name": "micronet"}, mean=[1.0, 2.0, 3.0], std=[4.0, 5.0, 6.0], mpp=0.5, threshold=0.7, precision=precision)


def test_read_onnx_info(tmp_path):
    info = read_onnx_info(make_onnx(tmp_path / "m.onnx", model_info()))
    assert (info.threshold, info.precision, info.mpp) == (0.7, "fp16", 0.5)


def test_read_onnx_info_refuses_foreign_models(tmp_path):
    from onnx import TensorProto

    with pytest.raises(ValueError, match="not a MicroNet export"):
        read_onnx_info(make_onnx(tmp_path / "a.onnx", None))
    with pytest.raises(ValueError, match="expected one uint8 input 'image'"):
        read_onnx_info(make_onnx(tmp_path / "b.onnx", model_info(), input_type=TensorProto.FLOAT))
    with pytest.raises(ValueError, match="expected the float outputs 'proximity'"):
        read_onnx_info(make_onnx(tmp_path / "c.onnx", model_info(), output_name="logits"))
    (tmp_path / "d.onnx").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        read_onnx_info(tmp_path / "d.onnx")


# --- the build flow against a stand-in for TensorRT's builder -------------------------
# Shaped like the TensorRT 10 Python API; it cannot prove the real API behaves so (the GPU
# tests do), but runs every line of build_engine on any machine.


class _Error:
    def __init__(self, node, name, op, desc):
        self._v = (node, name, op, desc)

    def node(self):
        return self._v[0]

    def node_name(self):
        return self._v[1]

    def node_operator(self):
        return self._v[2]

    def desc(self):
        return self._v[3]


def _fake_tensorrt(*, parse_ok=True, build_ok=True, version="10.3.0", cupy=None):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    state = types.SimpleNamespace(
        network_flags=None, flags=set(), profile=None, workspace=None, cache_in=None, cache_ignore=None, monitor=None, device=None
    )
    trt.state = state

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self):
            pass

    class IProgressMonitor:
        def __init__(self):
            pass

    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", VERSION_COMPATIBLE="VERSION_COMPATIBLE")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    class Cache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return memoryview(self.blob + b"+timings")

    class Config:
        def set_memory_pool_limit(self, pool, size):
            state.workspace = (pool, size)

        def set_flag(self, flag):
            state.flags.add(flag)

        def add_optimization_profile(self, profile):
            state.profile = profile.shapes

        def create_timing_cache(self, blob):
            return Cache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            state.cache_in, state.cache_ignore = cache.blob, ignore_mismatch
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

        @property
        def progress_monitor(self):
            return state.monitor

        @progress_monitor.setter
        def progress_monitor(self, monitor):
            state.monitor = monitor

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shapes = (name, tuple(lo), tuple(opt), tuple(hi))

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            state.network_flags = flags
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            state.device = cupy.cuda.state.current if cupy is not None else None
            monitor = state.monitor
            if monitor is not None:  # what TensorRT reports while it builds
                monitor.phase_start("Building engine", None, 2)
                monitor.phase_start("Tactics", "Building engine", 5)
                assert monitor.step_complete("Building engine", 0) is True
                monitor.phase_finish("Tactics")
                monitor.phase_finish("Building engine")
            if not build_ok:
                self.logger.log(ILogger.Severity.ERROR, "out of tactics")
                return None
            return memoryview(b"SERIALIZED-ENGINE")

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 2

        def parse_from_file(self, path):
            assert Path(path).is_file()
            return parse_ok

        def get_error(self, i):
            return [_Error(7, "/model/block1/Conv", "Conv", "unsupported kernel"), _Error(-1, "", "", "graph invalid")][i]

    trt.ILogger, trt.IProgressMonitor, trt.Builder, trt.OnnxParser = ILogger, IProgressMonitor, Builder, OnnxParser
    return trt


@pytest.fixture
def fake_builder(monkeypatch):
    def install(devices=(("NVIDIA L4", 8, 9),), **kwargs):
        cupy = fake_cupy(devices)
        trt = _fake_tensorrt(cupy=cupy, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setitem(sys.modules, "cupy", cupy)
        monkeypatch.setattr(cuda_env, "_TRT_LOGGER", None)  # its class derives from trt.ILogger
        return trt

    return install


def test_build_writes_engine_sidecar_and_timing_cache(fake_builder, tmp_path, caplog):
    trt = fake_builder()
    onnx_path = make_onnx(tmp_path / "m.fp16.onnx", model_info("fp16"))
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    with caplog.at_level(logging.INFO, logger="micronet.runtime.backends.tensorrt_build"):
        out = build_engine(onnx_path, tmp_path / "out" / "m.engine", (1, 64, 64), (2, 128, 128), (4, 256, 256), workspace_gb=1.5, timing_cache=cache)
    assert out.read_bytes() == b"SERIALIZED-ENGINE"
    assert cache.read_bytes() == b"old+timings" and trt.state.cache_in == b"old" and trt.state.cache_ignore is False
    assert trt.state.network_flags == 1 << 1  # STRONGLY_TYPED
    assert trt.state.flags == set()  # no precision flags in a strongly typed build
    assert trt.state.workspace == ("WORKSPACE", int(1.5 * (1 << 30)))
    assert trt.state.profile == ("image", (1, 64, 64, 3), (2, 128, 128, 3), (4, 256, 256, 3))
    data = read_sidecar(out)
    assert data["gpu_name"] == "NVIDIA L4" and data["compute_capability"] == "8.9" and data["tensorrt_version"] == "10.3.0"
    assert data["precision"] == "fp16" and data["micronet"]["precision"] == "fp16" and data["strongly_typed"] is True
    assert data["profiles"] == [{"input": "image", "min": [1, 64, 64, 3], "opt": [2, 128, 128, 3], "max": [4, 256, 256, 3]}]
    assert data["version_compatible"] is False and len(data["onnx_sha256"]) == 64
    assert data["engine_sha256"] == hashlib.sha256(b"SERIALIZED-ENGINE").hexdigest()  # checked before loading
    assert data["outputs"] == ["proximity"]
    assert ModelInfo.from_json(json.dumps(data["micronet"])).threshold == 0.7
    trt_backend.check_engine_compatibility(data, "10.3.0", "NVIDIA L4", "8.9")
    text = caplog.text
    assert "Building engine (2 steps)" in text and "Building engine done" in text and "wrote" in text
    assert not list(tmp_path.rglob("*.tmp"))


def test_fp32_model_in_a_strongly_typed_build_warns(fake_builder, tmp_path, caplog):
    fake_builder()
    onnx_path = make_onnx(tmp_path / "m.onnx", model_info("fp32"))
    with caplog.at_level(logging.WARNING, logger="micronet.runtime.backends.tensorrt_build"):
        out = build_engine(onnx_path, tmp_path / "m.engine")
    assert "micronet export --precision fp16" in caplog.text
    assert read_sidecar(out)["precision"] == "fp32"


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0", "garbage"])
def test_tensorrt_older_than_10_is_refused_with_one_line(fake_builder, tmp_path, capsys, version):
    fake_builder(version=version)
    onnx_path = make_onnx(tmp_path / "m.onnx", model_info())
    with pytest.raises(ImportError, match=rf"needs TensorRT >= 10\.0, found {version}: pip install 'micronet-sdk\[gpu\]'"):
        build_engine(onnx_path, tmp_path / "m.engine")
    assert main([str(onnx_path), "-o", str(tmp_path / "m.engine")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TensorRT >= 10.0" in err
    assert not (tmp_path / "m.engine").exists()


def test_build_runs_on_the_chosen_gpu_and_describes_it(fake_builder, tmp_path):
    trt = fake_builder(devices=(("NVIDIA L4", 8, 9), ("NVIDIA H100 80GB HBM3", 9, 0)))
    onnx_path = make_onnx(tmp_path / "m.onnx", model_info())
    out = build_engine(onnx_path, tmp_path / "m.engine", device_id=1)
    assert trt.state.device == 1  # the builder ran with GPU 1 current
    data = read_sidecar(out)
    assert (data["gpu_name"], data["compute_capability"]) == ("NVIDIA H100 80GB HBM3", "9.0")
    assert sys.modules["cupy"].cuda.state.current == 0  # restored afterwards
    assert main([str(onnx_path), "-o", str(tmp_path / "m0.engine"), "--device", "0"]) == 0
    assert read_sidecar(tmp_path / "m0.engine")["gpu_name"] == "NVIDIA L4"
    with pytest.raises(RuntimeError, match="no usable CUDA device 2"):
        build_engine(onnx_path, tmp_path / "m2.engine", device_id=2)
    with pytest.raises(ValueError, match="device_id: expected a CUDA device index"):
        build_engine(onnx_path, tmp_path / "m2.engine", device_id=-1)
    assert not (tmp_path / "m2.engine").exists()


def test_concurrent_writes_of_one_file_never_mix(tmp_path):
    from micronet.runtime.files import replace_atomically

    # Two builds writing the same timing cache: each write is whole, no temp file remains.
    target = tmp_path / "timing.cache"
    payloads = [bytes([k]) * 1_000_000 for k in (1, 2)]

    def write(data):
        for _ in range(20):
            replace_atomically(target, lambda tmp: tmp.write_bytes(data))  # what export-engine writes with

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_bytes() in payloads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timing.cache"]


def test_version_compatible_flag(fake_builder, tmp_path):
    trt = fake_builder()
    out = build_engine(make_onnx(tmp_path / "m.onnx", model_info()), tmp_path / "m.engine", version_compatible=True)
    assert trt.state.flags == {"VERSION_COMPATIBLE"}
    assert read_sidecar(out)["version_compatible"] is True


def test_parser_errors_name_the_failing_node(fake_builder, tmp_path):
    fake_builder(parse_ok=False)
    with pytest.raises(ValueError) as err:
        build_engine(make_onnx(tmp_path / "m.onnx", model_info()), tmp_path / "m.engine")
    msg = str(err.value)
    assert "node 7 '/model/block1/Conv' (Conv): unsupported kernel" in msg and "model: graph invalid" in msg


def test_failed_build_quotes_tensorrt_and_the_command_exits_1(fake_builder, tmp_path, capsys):
    fake_builder(build_ok=False)
    onnx_path = make_onnx(tmp_path / "m.onnx", model_info())
    with pytest.raises(RuntimeError, match="out of tactics"):
        build_engine(onnx_path, tmp_path / "m.engine")
    assert main([str(onnx_path), "-o", str(tmp_path / "m.engine")]) == 1
    assert "out of tactics" in capsys.readouterr().err
    assert not (tmp_path / "m.engine").exists()


def test_int8_exports_are_refused(fake_builder, tmp_path):
    fake_builder()
    with pytest.raises(ValueError, match="int8 QDQ export"):
        build_engine(make_onnx(tmp_path / "m.onnx", model_info("int8")), tmp_path / "m.engine")


def test_command_builds_next_to_the_onnx_by_default(fake_builder, tmp_path):
    fake_builder()
    onnx_path = make_onnx(tmp_path / "m.fp16.onnx", model_info())
    assert main([str(onnx_path), "--min", "1x32x32", "--opt", "1x64x64", "--max", "2x64x64"]) == 0
    data = read_sidecar(tmp_path / "m.fp16.engine")
    assert data["profiles"][0]["max"] == [2, 64, 64, 3]
    assert main([str(tmp_path / "absent.onnx")]) == 2


def test_tensorrt_parses_the_general_copy_of_a_fast_path_export(tiny_checkpoint, tmp_path):
    # fp32/int8 exports carry two copies of the network behind an If on the input size;
    # export-engine hands TensorRT the general copy alone, which computes the same map.
    np = pytest.importorskip("numpy")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from micronet.export.onnx import export_onnx

    exported = export_onnx(tiny_checkpoint, tmp_path / "m.onnx")
    plain = engine_mod.general_graph(exported, tmp_path / "plain.onnx")
    assert plain == tmp_path / "plain.onnx"
    graph = onnx.load(str(plain)).graph
    assert not any(n.op_type == "If" for n in graph.node) and any(n.op_type == "Conv" for n in graph.node)
    assert read_onnx_info(plain) == read_onnx_info(exported)
    for shape in [(1, 64, 72, 3), (1, 61, 75, 3)]:
        images = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
        a = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"]).run(None, {"image": images})[0]
        b = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]).run(None, {"image": images})[0]
        np.testing.assert_array_equal(a, b)
    # A model without the fast path (an fp16 export) is parsed as it is.
    fp16 = export_onnx(tiny_checkpoint, tmp_path / "m.fp16.onnx", precision="fp16")
    assert engine_mod.general_graph(fp16, tmp_path / "unused.onnx") == fp16


def test_the_sidecar_carries_the_models_reference_results(fake_builder, tmp_path):
    """`micronet check` tests an engine against the known answers of the ONNX it came from."""
    from micronet.runtime.diagnostics.check import REFERENCE_FORMAT, reference_of

    fake_builder()
    reference = {"format": REFERENCE_FORMAT, "threshold": 0.7, "min_distance": 3, "images": []}
    with_ref = build_engine(make_onnx(tmp_path / "a.fp16.onnx", model_info("fp16"), reference=reference), tmp_path / "a.engine")
    without = build_engine(make_onnx(tmp_path / "b.fp16.onnx", model_info("fp16")), tmp_path / "b.engine")
    assert read_sidecar(with_ref)["reference"] == reference
    assert "reference" not in read_sidecar(without)

    class _Engine:  # what reference_of reads from a TensorRT backend: its parsed sidecar
        sidecar = read_sidecar(with_ref)

    assert reference_of(_Engine()) == reference


# --- where the builder lives, and models with a class head ------------------------------


def test_the_builder_lives_in_the_runtime_and_the_command_re_exports_it():
    from micronet.runtime.diagnostics.check import REFERENCE_KEY

    for name in ("build_engine", "parse_shape", "check_profile", "read_onnx_info", "general_graph"):
        assert getattr(engine_mod, name) is getattr(tensorrt_build, name), name
    assert tensorrt_build.REFERENCE_KEY == REFERENCE_KEY  # the core keeps its own copy of the key


@pytest.fixture(scope="module")
def class_exports(tmp_path_factory):
    """fp32 (with the aligned fast path) and fp16 exports of a tiny MicroNet with a class head."""
    torch = pytest.importorskip("torch")
    from micronet.export.onnx import export_model
    from micronet.trainer.models import create_model

    torch.manual_seed(0)
    model = create_model("micronet_tiny", classes=("a", "b", "c")).eval()
    info = ModelInfo(architecture=model.config_dict(), mean=[180.0, 130.0, 170.0], std=[40.0, 45.0, 35.0], mpp=0.55, threshold=0.0)
    folder = tmp_path_factory.mktemp("cls")
    return {p: export_model(model, info, folder / f"cls.{p}.onnx", p) for p in ("fp32", "fp16")}


def test_models_with_a_class_head_are_read_and_their_general_graph_keeps_both_outputs(class_exports, tmp_path):
    np = pytest.importorskip("numpy")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    exported = class_exports["fp32"]
    assert tuple(read_onnx_info(exported).architecture["classes"]) == ("a", "b", "c")
    assert tensorrt_build.onnx_outputs(exported) == ("proximity", "class_logits")
    plain = engine_mod.general_graph(exported, tmp_path / "plain.onnx")
    assert [o.name for o in onnx.load(str(plain)).graph.output] == ["proximity", "class_logits"]
    images = np.random.default_rng(1).integers(0, 256, (1, 61, 75, 3), dtype=np.uint8)
    want = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"]).run(None, {"image": images})
    got = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]).run(None, {"image": images})
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_a_class_head_export_builds_an_engine_with_both_outputs(fake_builder, class_exports, tmp_path):
    fake_builder()
    out = build_engine(class_exports["fp16"], tmp_path / "cls.engine")
    data = read_sidecar(out)
    assert data["outputs"] == ["proximity", "class_logits"] and data["micronet"]["architecture"]["classes"] == ["a", "b", "c"]
