"""ONNX → TensorRT engine, built on the machine that will run it (Jetson included).

    export-engine model.fp16.onnx -o model.engine [--min 1x256x256 --opt 4x1024x1024
        --max 8x2048x2048] [--workspace-gb 4] [--timing-cache FILE] [--version-compatible]
        [--device N]

Needs TensorRT 10 or later. The network is *strongly typed* (the only mode in TensorRT
11): every tensor keeps the type the ONNX graph gives it, so an fp16 export (``micronet
export --precision fp16``: fp16 weights and compute, uint8 in, float32 out) becomes an
fp16 engine without builder precision flags, and an fp32 export an fp32 engine.

Next to ``model.engine`` goes ``model.engine.json``: the model's ``ModelInfo``, the
TensorRT version, the GPU's name and compute capability, the precision, the
optimisation profile and the ONNX file's SHA-256. The runtime
(``micronet.runtime.backends.tensorrt``) checks it before it loads the engine.

Needs TensorRT, ONNX Runtime (to read the model's metadata) and CuPy or cuda-python (to
name the GPU); never torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from micronet.runtime.backends.cuda_env import (
    check_device_id,
    cuda_device,
    cuda_device_properties,
    import_tensorrt,
    trt_logger,
)
from micronet.runtime.backends.engine_sidecar import sidecar_path
from micronet.runtime.diagnostics.check import REFERENCE_KEY
from micronet.runtime.errors import InputError, MicronetError, MissingFileError
from micronet.runtime.model_info import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelInfo
from micronet.runtime.files import file_sha256, replace_atomically

__all__ = ["build_engine", "parse_shape", "check_profile", "read_onnx_info", "general_graph", "main"]

log = logging.getLogger(__name__)

Shape = tuple[int, int, int]  # (N, H, W); the channel axis (3) is fixed

DEFAULT_MIN: Shape = (1, 256, 256)
DEFAULT_OPT: Shape = (4, 1024, 1024)
DEFAULT_MAX: Shape = (8, 2048, 2048)
HEARTBEAT_S = 30.0  # how often a long build says it is still alive


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


def _onnx_reference(onnx_path: Path) -> dict[str, Any] | None:
    """The reference results (``micronet check``) an export carries, or ``None``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    text = session.get_modelmeta().custom_metadata_map.get(REFERENCE_KEY)
    return None if text is None else json.loads(text)


def read_onnx_info(onnx_path: str | Path) -> ModelInfo:
    """The ``ModelInfo`` in an exported model's ``metadata_props``, after checking its
    input and output are a MicroNet model's (uint8 ``image`` N×H×W×3 → float
    ``proximity`` N×1×H×W). Reads the file with ONNX Runtime's CPU provider (a base
    dependency), without graph optimisation, so it is quick even for large models."""
    import onnxruntime as ort

    onnx_path = Path(onnx_path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for unreadable files
        raise InputError(f"{onnx_path}: not a readable ONNX model ({exc})") from exc
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise InputError(f"{onnx_path}: an ONNX model, but not a MicroNet export (no {METADATA_KEY!r} metadata); export it with `micronet export`")
    info = ModelInfo.from_json(text, source=str(onnx_path))
    inputs = [(i.name, i.type, list(i.shape)) for i in session.get_inputs()]
    outputs = [(o.name, o.type) for o in session.get_outputs()]
    if len(inputs) != 1 or inputs[0][0] != INPUT_NAME or inputs[0][1] != "tensor(uint8)" or len(inputs[0][2]) != 4 or inputs[0][2][3] != 3:
        raise InputError(f"{onnx_path}: expected one uint8 input {INPUT_NAME!r} of shape N×H×W×3, got {inputs}")
    if len(outputs) != 1 or outputs[0][0] != OUTPUT_NAME:
        raise InputError(f"{onnx_path}: expected one output {OUTPUT_NAME!r}, got {outputs}")
    return info


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
    (out,) = model.graph.output
    nodes = list(branch.node) + [helper.make_node("Identity", [branch.output[0].name], [out.name], name="general_output")]
    graph = helper.make_graph(nodes, model.graph.name, list(model.graph.input), [out], initializer=list(branch.initializer))
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
    if not onnx_path.is_file():
        raise MissingFileError(f"ONNX model not found: {onnx_path}")
    info = read_onnx_info(onnx_path)
    if info.precision == "int8":
        raise InputError(
            f"{onnx_path} is an int8 QDQ export, made for the CPU (uint8 activations TensorRT does not take); "
            "build the engine from `micronet export --precision fp16`"
        )
    gpu_name, compute_capability = cuda_device_properties(device_id)
    with cuda_device(device_id):  # the builder times kernels on the current device
        serialized, timings, precision, seconds = _build(
            trt, onnx_path, info, output, lo, opt, hi, workspace_gb, timing_cache, version_compatible, gpu_name, compute_capability
        )

    output.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(output, lambda tmp: tmp.write_bytes(serialized))
    if timing_cache is not None and timings is not None:
        cache_path = Path(timing_cache)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(cache_path, lambda tmp: tmp.write_bytes(timings))
    info.precision = precision
    sidecar = {
        "micronet": json.loads(info.to_json()),
        "tensorrt_version": trt.__version__,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "precision": precision,
        "strongly_typed": True,
        "profiles": [{"input": INPUT_NAME, "min": [*lo, 3], "opt": [*opt, 3], "max": [*hi, 3]}],
        "version_compatible": bool(version_compatible),
        "onnx": onnx_path.name,
        "onnx_sha256": file_sha256(onnx_path),
    }
    reference = _onnx_reference(onnx_path)
    if reference is not None:
        # The known answers travel with the engine, so `micronet check` can test it.
        sidecar["reference"] = reference
    replace_atomically(sidecar_path(output), lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n"))
    log.info("wrote %s (%.1f MB) and %s in %.0f s", output, output.stat().st_size / 1e6, sidecar_path(output).name, seconds)
    return output


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

    cache_path = Path(timing_cache) if timing_cache is not None else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        log.info("timing cache %s (%s)", cache_path, f"{len(blob)} bytes" if blob else "new")
        cache = config.create_timing_cache(blob)
        # A cache from another GPU or TensorRT version is not used (TensorRT warns).
        config.set_timing_cache(cache, ignore_mismatch=False)

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


def _shape_arg(text: str) -> Shape:
    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fmt(shape: Shape) -> str:
    return "x".join(map(str, shape))


def main(argv: Sequence[str] | None = None) -> int:
    """The ``export-engine`` command; returns the exit status (2 for user errors)."""
    parser = argparse.ArgumentParser(
        prog="export-engine",
        description="Build a TensorRT engine from a MicroNet ONNX export, on the machine that will run it. "
        "Writes MODEL.engine and MODEL.engine.json (metadata the runtime checks).",
    )
    parser.add_argument("onnx", type=Path, help="a MicroNet ONNX export (fp16 for an fp16 engine: micronet export --precision fp16)")
    parser.add_argument("-o", "--output", type=Path, help="the engine to write (default: the ONNX path with .engine)")
    parser.add_argument("--min", type=_shape_arg, default=DEFAULT_MIN, metavar="NxHxW", help=f"smallest batch x height x width (default {_fmt(DEFAULT_MIN)})")
    parser.add_argument("--opt", type=_shape_arg, default=DEFAULT_OPT, metavar="NxHxW", help=f"the shape to tune for (default {_fmt(DEFAULT_OPT)})")
    parser.add_argument("--max", type=_shape_arg, default=DEFAULT_MAX, metavar="NxHxW", help=f"largest batch x height x width (default {_fmt(DEFAULT_MAX)})")
    parser.add_argument("--workspace-gb", type=float, default=4.0, help="builder scratch memory in GiB (default 4)")
    parser.add_argument("--timing-cache", type=Path, help="reuse and update kernel timings in this file (faster rebuilds)")
    parser.add_argument("--version-compatible", action="store_true", help="let later TensorRT releases run the engine (may be slower)")
    parser.add_argument("--device", type=int, default=0, metavar="N", help="the CUDA device to build for (default 0)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages, TensorRT's included")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output = args.output if args.output is not None else args.onnx.with_suffix(".engine")
    try:
        build_engine(
            args.onnx,
            output,
            min_shape=args.min,
            opt_shape=args.opt,
            max_shape=args.max,
            workspace_gb=args.workspace_gb,
            timing_cache=args.timing_cache,
            version_compatible=args.version_compatible,
            device_id=args.device,
        )
    except MicronetError as exc:
        # User errors: one clear line, no traceback.
        print(f"export-engine: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # the build failed; the message quotes TensorRT
        print(f"export-engine: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
