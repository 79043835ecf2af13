"""ONNX → TensorRT engine, built on the machine that will run it (Jetson included).

The builder behind ``export-engine`` (``micronet.export.engine``, the command line) and
the engine cache (``micronet.runtime.engine_cache``, engines built on first use); it
lives in the runtime so the cache needs nothing from the export package.

Needs TensorRT 10 or later. The network is *strongly typed* (the only mode in TensorRT
11): every tensor keeps the type the ONNX graph gives it, so an fp16 export (``micronet
export --precision fp16``: fp16 weights and compute, uint8 in, float32 out) becomes an
fp16 engine without builder precision flags, and an fp32 export an fp32 engine. A model
with a class head keeps its second output, ``class_logits`` (N×K×H×W), in the engine.

Next to ``model.engine`` goes ``model.engine.json``: the model's ``ModelInfo``, the
TensorRT version, the GPU's name and compute capability, the precision, the
optimisation profile, the outputs, the ONNX file's SHA-256 and the engine's own SHA-256
(the backend checks that hash before it deserialises the engine). The runtime
(``micronet.runtime.backends.tensorrt``) checks the sidecar before it loads the engine.

Needs TensorRT, ONNX Runtime (to read the model's metadata), onnx (for exports with the
aligned fast path) and CuPy or cuda-python (to name the GPU); never torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError, MissingFileError
from ..files import file_sha256, replace_atomically
from ..model_info import CLASS_OUTPUT_NAME, INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelInfo
from .cuda_env import check_device_id, cuda_device, cuda_device_properties, import_tensorrt, trt_logger
from .engine_sidecar import sidecar_path

__all__ = [
    "DEFAULT_MAX",
    "DEFAULT_MIN",
    "DEFAULT_OPT",
    "MODEL_OUTPUTS",
    "REFERENCE_KEY",
    "build_engine",
    "check_profile",
    "general_graph",
    "onnx_outputs",
    "parse_shape",
    "read_onnx_info",
]

log = logging.getLogger(__name__)

Shape = tuple[int, int, int]  # (N, H, W); the channel axis (3) is fixed

DEFAULT_MIN: Shape = (1, 256, 256)
DEFAULT_OPT: Shape = (4, 1024, 1024)
DEFAULT_MAX: Shape = (8, 2048, 2048)
HEARTBEAT_S = 30.0  # how often a long build says it is still alive
# The outputs a MicroNet export may have: the proximity map, then optionally the class
# logits of a model with a class head (``ModelInfo.architecture["classes"]``).
MODEL_OUTPUTS = ((OUTPUT_NAME,), (OUTPUT_NAME, CLASS_OUTPUT_NAME))
# The ONNX metadata_props key of the reference results; the same string as
# ``micronet.runtime.diagnostics.check.REFERENCE_KEY`` (a test holds them equal), which
# the inference core cannot import (diagnostics sits above it).
REFERENCE_KEY = "micronet.reference"


def parse_shape(text: str) -> Shape:
    """``"4x1024x1024"`` → ``(4, 1024, 1024)``: batch × height × width, positive integers.

    >>> parse_shape("1x256x512")
    (1, 256, 512)
    """
    parts = str(text).strip().lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise InputError(f"expected a shape NxHxW of three positive integers such as 4x1024x1024, got {text!r}")
    return values  # type: ignore[return-value]


def check_profile(min_shape: Sequence[int], opt_shape: Sequence[int], max_shape: Sequence[int]) -> tuple[Shape, Shape, Shape]:
    """Validates an optimisation profile of ``(N, H, W)`` shapes: three positive integers
    each, and ``min ≤ opt ≤ max`` along every axis. Returns them as tuples."""
    shapes = []
    for label, shape in (("min", min_shape), ("opt", opt_shape), ("max", max_shape)):
        try:
            values = tuple(int(v) for v in shape)
            ok = len(values) == 3 and all(v >= 1 and v == s for v, s in zip(values, shape))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{label} shape: expected (N, H, W), three positive integers, got {shape!r}")
        shapes.append(values)
    lo, opt, hi = shapes
    for i, axis in enumerate("NHW"):
        if not lo[i] <= opt[i] <= hi[i]:
            raise InputError(f"profile: expected min <= opt <= max along {axis}, got {lo[i]}, {opt[i]}, {hi[i]}")
    return lo, opt, hi  # type: ignore[return-value]


def _session(onnx_path: Path) -> Any:
    """An ONNX Runtime CPU session of the file, without graph optimisation (quick to open
    even for large models; only metadata and signatures are read)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for unreadable files
        raise InputError(f"{onnx_path}: not a readable ONNX model ({exc})") from exc


def _onnx_reference(onnx_path: Path) -> dict[str, Any] | None:
    """The reference results (``micronet check``) an export carries, or ``None``."""
    text = _session(onnx_path).get_modelmeta().custom_metadata_map.get(REFERENCE_KEY)
    return None if text is None else json.loads(text)


def onnx_outputs(onnx_path: str | Path) -> tuple[str, ...]:
    """The output names of a MicroNet export, checked: one of :data:`MODEL_OUTPUTS`."""
    return _check_signature(Path(onnx_path), _session(Path(onnx_path)))


def read_onnx_info(onnx_path: str | Path) -> ModelInfo:
    """The ``ModelInfo`` in an exported model's ``metadata_props``, after checking its
    input and outputs are a MicroNet model's (uint8 ``image`` N×H×W×3 → float
    ``proximity`` N×1×H×W, and ``class_logits`` N×K×H×W for a model with a class
    head). Reads the file with ONNX Runtime's CPU provider (a base dependency)."""
    onnx_path = Path(onnx_path)
    session = _session(onnx_path)
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise InputError(f"{onnx_path}: an ONNX model, but not a MicroNet export (no {METADATA_KEY!r} metadata); export it with `micronet export`")
    info = ModelInfo.from_json(text, source=str(onnx_path))
    _check_signature(onnx_path, session)
    return info


def _check_signature(onnx_path: Path, session: Any) -> tuple[str, ...]:
    inputs = [(i.name, i.type, list(i.shape)) for i in session.get_inputs()]
    outputs = [(o.name, o.type) for o in session.get_outputs()]
    if len(inputs) != 1 or inputs[0][0] != INPUT_NAME or inputs[0][1] != "tensor(uint8)" or len(inputs[0][2]) != 4 or inputs[0][2][3] != 3:
        raise InputError(f"{onnx_path}: expected one uint8 input {INPUT_NAME!r} of shape N×H×W×3, got {inputs}")
    names = tuple(name for name, _ in outputs)
    if names not in MODEL_OUTPUTS or any(t != "tensor(float)" for _, t in outputs):
        raise InputError(
            f"{onnx_path}: expected the float outputs {OUTPUT_NAME!r} (N×1×H×W) or {OUTPUT_NAME!r} and "
            f"{CLASS_OUTPUT_NAME!r} (N×K×H×W, a class head), got {outputs}"
        )
    return names


def general_graph(onnx_path: str | Path, output: str | Path) -> Path:
    """The model TensorRT should parse: an fp32/int8 MicroNet export holds two copies of
    the network behind an ``If`` on the input size (a CPU speed-up, see
    ``micronet.export.onnx.combine_aligned_fast_path``); TensorRT removes empty crops
    itself, so this writes the general copy alone, as a plain graph, to ``output`` and
    returns it. Any other model comes back as ``onnx_path``, untouched."""
    import onnx
    from onnx import helper

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    fast = [n for n in model.graph.node if n.op_type == "If" and n.name == "fast_path"]
    if not fast:
        return onnx_path
    branch = next(a.g for a in fast[0].attribute if a.name == "else_branch")
    outputs = list(model.graph.output)  # the map, and the class logits of a class head
    nodes = list(branch.node) + [
        helper.make_node("Identity", [inner.name], [outer.name], name=f"general_output_{k}")
        for k, (inner, outer) in enumerate(zip(branch.output, outputs))
    ]
    graph = helper.make_graph(nodes, model.graph.name, list(model.graph.input), outputs, initializer=list(branch.initializer))
    plain = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name=model.producer_name)
    plain.ir_version = model.ir_version
    plain.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(plain)
    output = Path(output)
    onnx.save(plain, str(output))
    return output


def _parser_errors(parser: Any, onnx_path: Path) -> str:
    """One line per ONNX parser error, naming the failing node where TensorRT says which."""
    lines = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        where = []
        node = error.node()
        if node >= 0:
            where.append(f"node {node}")
        for attr, fmt in (("node_name", "{!r}"), ("node_operator", "({})")):  # TensorRT >= 10
            getter = getattr(error, attr, None)
            value = getter() if getter is not None else ""
            if value:
                where.append(fmt.format(value))
        lines.append(f"{' '.join(where) or 'model'}: {error.desc()}")
    detail = "; ".join(lines) or "no detail from the parser"
    return f"{onnx_path}: TensorRT's ONNX parser failed: {detail}"


def _progress_monitor(trt: Any) -> Any:
    """A ``trt.IProgressMonitor`` that logs the builder's phases."""
    base = trt.IProgressMonitor

    class _LogProgress(base):  # type: ignore[misc, valid-type]
        # TensorRT calls these from its own threads.
        def __init__(self) -> None:
            base.__init__(self)
            self._lock = threading.Lock()
            self._top: dict[str, int] = {}  # top-level phase -> number of steps
            self._last = 0.0

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                if parent_phase is None:
                    self._top[phase_name] = num_steps
                    log.info("TensorRT: %s (%d steps)", phase_name, num_steps)
                else:
                    log.debug("TensorRT:   %s (%d steps, in %s)", phase_name, num_steps, parent_phase)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                total = self._top.get(phase_name)
                now = time.monotonic()
                if total is not None and now - self._last > 10.0:
                    self._last = now
                    log.info("TensorRT: %s %d/%d", phase_name, step + 1, total)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                if self._top.pop(phase_name, None) is not None:
                    log.info("TensorRT: %s done", phase_name)

    return _LogProgress()


class _Heartbeat:
    """Logs the elapsed time every ``HEARTBEAT_S`` while the (GIL-releasing) build runs."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="export-engine-heartbeat", daemon=True)
        self.start = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            log.info("%s: still building, %.0f s so far", self._what, time.monotonic() - self.start)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def build_engine(
    onnx_path: str | Path,
    output: str | Path,
    min_shape: Sequence[int] = DEFAULT_MIN,
    opt_shape: Sequence[int] = DEFAULT_OPT,
    max_shape: Sequence[int] = DEFAULT_MAX,
    workspace_gb: float = 4.0,
    timing_cache: str | Path | None = None,
    version_compatible: bool = False,
    device_id: int = 0,
) -> Path:
    """Builds a TensorRT engine for one of this machine's GPUs from an exported model.

    Args:
        onnx_path: a MicroNet ONNX export; fp16 (``micronet export --precision fp16``)
            gives an fp16 engine. int8 QDQ exports are for the CPU and are refused.
        output: the ``.engine`` file to write; ``<output>.json`` is written next to it.
        min_shape, opt_shape, max_shape: the optimisation profile as ``(N, H, W)``
            (batch, height, width; the 3 RGB channels are implied). The engine accepts
            any input within min..max and is tuned for opt.
        workspace_gb: the builder's scratch-memory limit (GiB).
        timing_cache: a file to reuse kernel timings from and to save them to; repeated
            builds on the same GPU and TensorRT version take a fraction of the time.
        version_compatible: build an engine that later TensorRT releases can also run
            (TensorRT's version compatibility; may be slower).
        device_id: the CUDA device to build for (and on): engines are specific to a GPU
            model.

    Returns:
        ``output``, written.

    Raises:
        ValueError: a bad profile, a file that is not a MicroNet export, or an ONNX
            graph TensorRT cannot parse (naming the failing node).
        FileNotFoundError: no file at ``onnx_path``.
        ImportError: TensorRT (>= 10), or CuPy / cuda-python to name the GPU, is missing.
        RuntimeError: TensorRT failed to build (its last errors quoted), or there is no
            CUDA device ``device_id``.
    """
    lo, opt, hi = check_profile(min_shape, opt_shape, max_shape)
    if isinstance(workspace_gb, bool) or not isinstance(workspace_gb, (int, float)) or not workspace_gb > 0:
        raise InputError(f"workspace_gb: expected a positive number of GiB, got {workspace_gb!r}")
    device_id = check_device_id(device_id)
    trt = import_tensorrt("export-engine")
    onnx_path, output = Path(onnx_path), Path(output)
    info = _buildable_info(onnx_path)
    gpu_name, compute_capability = cuda_device_properties(device_id)
    with cuda_device(device_id):  # the builder times kernels on the current device
        serialized, timings, precision, seconds = _build(
            trt, onnx_path, info, output, lo, opt, hi, workspace_gb, timing_cache, version_compatible, gpu_name, compute_capability
        )

    info.precision = precision
    sidecar = _sidecar(trt, onnx_path, info, (lo, opt, hi), version_compatible, gpu_name, compute_capability, serialized)
    _write(output, serialized, sidecar, timing_cache, timings)
    log.info("wrote %s (%.1f MB) and %s in %.0f s", output, output.stat().st_size / 1e6, sidecar_path(output).name, seconds)
    return output


def _buildable_info(onnx_path: Path) -> ModelInfo:
    """The export's ``ModelInfo``, after checking TensorRT can build it (not int8)."""
    if not onnx_path.is_file():
        raise MissingFileError(f"ONNX model not found: {onnx_path}")
    info = read_onnx_info(onnx_path)
    if info.precision == "int8":
        raise InputError(
            f"{onnx_path} is an int8 QDQ export, made for the CPU (uint8 activations TensorRT does not take); "
            "build the engine from `micronet export --precision fp16`"
        )
    return info


def _sidecar(
    trt: Any,
    onnx_path: Path,
    info: ModelInfo,
    profile: tuple[Shape, Shape, Shape],
    version_compatible: bool,
    gpu_name: str,
    compute_capability: str,
    serialized: bytes,
) -> dict[str, Any]:
    """What ``model.engine.json`` says about the engine (see the module's docstring)."""
    lo, opt, hi = profile
    sidecar = {
        "micronet": json.loads(info.to_json()),
        "tensorrt_version": trt.__version__,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "precision": info.precision,
        "strongly_typed": True,
        "profiles": [{"input": INPUT_NAME, "min": [*lo, 3], "opt": [*opt, 3], "max": [*hi, 3]}],
        "outputs": list(onnx_outputs(onnx_path)),
        "version_compatible": bool(version_compatible),
        "onnx": onnx_path.name,
        "onnx_sha256": file_sha256(onnx_path),
        # Checked before deserialising: a replaced or damaged engine is refused.
        "engine_sha256": hashlib.sha256(serialized).hexdigest(),
    }
    reference = _onnx_reference(onnx_path)
    if reference is not None:
        # The known answers travel with the engine, so `micronet check` can test it.
        sidecar["reference"] = reference
    return sidecar


def _write(output: Path, serialized: bytes, sidecar: dict[str, Any], timing_cache: str | Path | None, timings: bytes | None) -> None:
    """The engine, the kernel timings and the sidecar, each replaced atomically (the
    sidecar last, so an engine is never described before it is there)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(output, lambda tmp: tmp.write_bytes(serialized))
    if timing_cache is not None and timings is not None:
        cache_path = Path(timing_cache)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(cache_path, lambda tmp: tmp.write_bytes(timings))
    replace_atomically(sidecar_path(output), lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n"))


def _build(
    trt: Any,
    onnx_path: Path,
    info: ModelInfo,
    output: Path,
    lo: Shape,
    opt: Shape,
    hi: Shape,
    workspace_gb: float,
    timing_cache: str | Path | None,
    version_compatible: bool,
    gpu_name: str,
    compute_capability: str,
) -> tuple[bytes, bytes | None, str, float]:
    """Parses and builds on the current CUDA device: ``(serialized engine, serialized
    timing cache or None, precision, seconds)``."""
    logger = trt_logger(trt)
    logger.errors.clear()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    log.info("parsing %s", onnx_path)
    with tempfile.TemporaryDirectory() as tmp:
        parsed = general_graph(onnx_path, Path(tmp) / "general.onnx")
        if not parser.parse_from_file(str(parsed)):
            raise InputError(_parser_errors(parser, onnx_path))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    precision = info.precision  # a strongly typed build keeps the export's types
    if precision == "fp32":
        log.warning(
            "%s is an fp32 export: a strongly typed build keeps its types, so the engine will compute in fp32 "
            "(about half the speed of fp16); for an fp16 engine export with `micronet export --precision fp16`",
            onnx_path,
        )
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)

    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (*lo, 3), (*opt, 3), (*hi, 3))
    config.add_optimization_profile(profile)

    cache_path = _use_timing_cache(config, timing_cache)
    monitor = _progress_monitor(trt)
    config.progress_monitor = monitor  # must outlive the build: `monitor` is held here
    log.info(
        "building a %s engine for %s (sm_%s) with TensorRT %s, N×H×W from %s to %s (opt %s); this takes minutes",
        precision, gpu_name, compute_capability.replace(".", ""), trt.__version__,
        "x".join(map(str, lo)), "x".join(map(str, hi)), "x".join(map(str, opt)),
    )
    with _Heartbeat(output.name) as beat:
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = "; ".join(logger.errors) or "no detail from TensorRT (run with -v)"
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path}: {detail}")
    seconds = time.monotonic() - beat.start
    timings = bytes(config.get_timing_cache().serialize()) if cache_path is not None else None
    return bytes(serialized), timings, precision, seconds


def _use_timing_cache(config: Any, timing_cache: str | Path | None) -> Path | None:
    """Gives the builder the kernel timings saved in ``timing_cache`` (a new cache when
    the file is not there yet); the path, or ``None`` without one."""
    if timing_cache is None:
        return None
    cache_path = Path(timing_cache)
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    log.info("timing cache %s (%s)", cache_path, f"{len(blob)} bytes" if blob else "new")
    # A cache from another GPU or TensorRT version is not used (TensorRT warns).
    config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
    return cache_path
