"""Benchmark models on this machine: speed end to end, and accuracy on a labelled set.

One row per model file, as ``yolo benchmark`` prints them: the format, whether it ran
(``ok`` or the error), its size, P / R / F1 on a labelled data set when one is given,
and the throughput of :meth:`Detector.detect_batch` on ``batch`` images of
``size × size`` pixels: everything a caller waits for (upload, inference, peak finding,
coordinates back), not the network alone.

Timing images are H&E: tiled from the data set's first image when ``data`` is given,
else from the bundled sample, else synthetic blobs (logged).

Absolute speeds hold for one machine only, so every run names it
(:func:`micronet.runtime.machine.describe_machine`) and :func:`compare` adds what does
transfer: each model's speed as a ratio to the first model's, measured in the same run,
and CPU throughput per 100 GFLOP/s of the machine's float32 matmul peak (the faster of
NumPy's BLAS and ONNX Runtime's own MatMul, :func:`machine_record`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = [
    "INT8_KEY",
    "BenchResult",
    "benchmark",
    "benchmark_model",
    "compare",
    "format_table",
    "machine_record",
    "matmul_yardsticks",
    "ort_int8_matmul_gops",
    "ort_matmul_gflops",
    "run_line",
    "timing_images",
]

log = logging.getLogger(__name__)

# matmul_yardsticks' key of ONNX Runtime's int8 (u8 × s8) matrix-product rate, in G op/s.
INT8_KEY = "onnxruntime_int8"


@dataclass
class BenchResult:
    """One model's row. Speed fields are ``None`` when the model did not run, accuracy
    fields when no data set was given.

    Attributes:
        model: the file benchmarked.
        format: ``"onnx-fp32"``, ``"onnx-int8"``, ``"tensorrt-fp16"``, ...
        backend: the backend that ran it (``"onnxruntime-cpu"``, ``"tensorrt"``, ...).
        status: ``"ok"``, or the error that stopped it.
        size_mb: file size in MB (10⁶ bytes).
        precision, recall, f1: pooled over the data set at the model's threshold ξ.
        ms_per_image: mean time of one ``detect_batch`` call divided by the batch.
        images_per_s, megapixels_per_s, nuclei_per_s: throughput.
        p50_ms, p99_ms: latency percentiles of one call (one batch).
        speed_vs_first: images/s over the first model's that ran, same run (:func:`compare`).
        megapixels_per_s_per_100_gflops: CPU backends: megapixels/s per 100 GFLOP/s of
            the machine's float32 matmul peak (:func:`compare`, :func:`machine_record`).
    """

    model: str
    format: str
    backend: str | None = None
    status: str = "ok"
    size_mb: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    ms_per_image: float | None = None
    images_per_s: float | None = None
    megapixels_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    nuclei_per_s: float | None = None
    speed_vs_first: float | None = None
    megapixels_per_s_per_100_gflops: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _format_of(path: Path, precision: str | None = None) -> str:
    kind = {".onnx": "onnx", ".engine": "tensorrt"}.get(path.suffix.lower(), path.suffix.lower().lstrip(".") or "?")
    if precision is None:  # guessed from the name export writes: model.int8.onnx
        inner = Path(path.stem).suffix.lstrip(".").lower()
        precision = inner if inner in ("fp16", "int8") else None
    return f"{kind}-{precision}" if precision else kind


def _fill(source: np.ndarray, size: int) -> np.ndarray:
    """A ``size × size`` image from ``source``: cropped, or mirrored out to size (so the
    seams stay H&E)."""
    h, w = source.shape[:2]
    padded = np.pad(source, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="symmetric")
    return np.ascontiguousarray(padded[:size, :size])


def timing_images(batch: int, size: int, source: np.ndarray | None = None) -> list[np.ndarray]:
    """``batch`` different ``(size, size, 3)`` uint8 H&E images for timing.

    Args:
        source: an H&E image to tile from; default: the bundled sample, else synthetic
            nuclei.
    """
    if source is None:
        from ..bundled import bundled_sample
        from ..images import as_rgb_image

        try:
            source = as_rgb_image(bundled_sample())
        except FileNotFoundError:
            log.warning("no bundled sample image: timing on synthetic nuclei")
            from .synthetic import nuclei_image

            source = nuclei_image(512, 512, 512 * 512 // 900, spacing=8)[0]
    base = _fill(source, size + batch)
    # Shifted crops: equal work, but no image identical to another.
    return [np.ascontiguousarray(base[k : k + size, k : k + size]) for k in range(batch)]


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:160]


def benchmark_model(
    model: str | PathLike[str],
    *,
    batch: int = 1,
    size: int = 512,
    device: str = "auto",
    repeat: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    images: Sequence[np.ndarray] | None = None,
    data: Any = None,
    radius: float = 6.0,
) -> BenchResult:
    """Benchmarks one model file; failures become the row's ``status``, not exceptions.

    Args:
        model: an ``.onnx`` model or ``.engine``.
        batch, size: each timed call detects ``batch`` images of ``size × size``.
        device, threads: as for :class:`Detector`.
        repeat, warmup: timed calls, and untimed calls before them (first-call set-up:
            memory arenas, kernel selection, TensorRT contexts).
        images: the timing images (default :func:`timing_images`).
        data: a :class:`micronet.runtime.evaluation.datasets.PointDataset` to measure P / R / F1 on.
        radius: matching radius in the data set's pixels.
    """
    from ..detector import Detector, resolve_model
    from ..evaluation.metrics import evaluate_images

    path = resolve_model(model)
    result = BenchResult(model=str(path), format=_format_of(path))
    if path.is_file():
        result.size_mb = path.stat().st_size / 1e6
    try:
        detector = Detector(path, device=device, threads=threads, batch_size=max(1, batch))
        result.format = _format_of(path, detector.info.precision)
        result.backend = detector.backend_name
        if data is not None:
            found = [detector.detect(image, mpp=data.mpp).xy for image in data.images]
            pooled = evaluate_images(found, data.points, radius).pooled
            result.precision, result.recall, result.f1 = pooled.precision, pooled.recall, pooled.f1
        timed = list(images) if images is not None else timing_images(batch, size)
        seconds, nuclei = _time_calls(detector, timed, repeat, warmup)
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError, OSError) as exc:
        result.status = _short(exc)
        log.debug("benchmark of %s failed", path, exc_info=True)
        return result
    _fill_speed(result, np.asarray(seconds), nuclei, timed)
    return result


def _time_calls(detector: Any, timed: list[np.ndarray], repeat: int, warmup: int) -> tuple[list[float], int]:
    """``warmup`` untimed then ``repeat`` timed :meth:`Detector.detect_batch` calls on
    ``timed``: the seconds of each timed call, and the nuclei they found in all."""
    for _ in range(warmup):
        detector.detect_batch(timed, mpp=detector.info.mpp)
    seconds, nuclei = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        found_batch = detector.detect_batch(timed, mpp=detector.info.mpp)
        seconds.append(time.perf_counter() - start)
        nuclei += sum(len(d) for d in found_batch)
    return seconds, nuclei


def _fill_speed(result: BenchResult, per_call: np.ndarray, nuclei: int, timed: list[np.ndarray]) -> None:
    """``result``'s speed fields from the ``(repeat,)`` seconds of each call on ``timed``."""
    n = len(timed)
    mean = float(per_call.mean())
    pixels = sum(im.shape[0] * im.shape[1] for im in timed) / n
    result.ms_per_image = 1e3 * mean / n
    result.images_per_s = n / mean
    result.megapixels_per_s = result.images_per_s * pixels / 1e6
    result.p50_ms = float(np.percentile(per_call, 50) * 1e3)
    result.p99_ms = float(np.percentile(per_call, 99) * 1e3)
    result.nuclei_per_s = nuclei / float(per_call.sum())


def benchmark(
    models: Sequence[str | PathLike[str]],
    *,
    batch: int = 1,
    size: int = 512,
    device: str = "auto",
    repeat: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    data: str | PathLike[str] | None = None,
    split: str | None = "test",
    radius: float = 6.0,
) -> list[BenchResult]:
    """Benchmarks each model on the same images; one :class:`BenchResult` per model.

    Args:
        models: ``.onnx`` / ``.engine`` files.
        data: a point-annotated data set folder (``images/``, ``points/``); its first
            image also supplies the timing images.
        split: the subset of ``data`` to score (``None``: all images).
        Others: as :func:`benchmark_model`.

    Raises:
        InputError (a ValueError): bad settings, or a data set that cannot be read (per-model failures
            go into the rows instead).
    """
    for name, value, low in (("batch", batch, 1), ("size", size, 1), ("repeat", repeat, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{name}: expected an integer >= {low}, got {value!r}")
    if not models:
        raise InputError("models: expected at least one model file")
    dataset = None
    source = None
    if data is not None:
        from ..evaluation.datasets import load_point_folder

        dataset = load_point_folder(data, split)
        if not len(dataset):
            raise InputError(f"{data}: no images in split {split!r}")
        source = dataset.images[0]
    images = timing_images(batch, size, source)
    return [
        benchmark_model(
            m, batch=batch, size=size, device=device, repeat=repeat, warmup=warmup, threads=threads, images=images, data=dataset, radius=radius
        )
        for m in models
    ]


def _pb_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _pb(field: int, value: int | bytes | str) -> bytes:
    """One protobuf field: an integer (varint) or a length-delimited string/message."""
    if isinstance(value, int):
        return _pb_varint(field << 3) + _pb_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _pb_varint(field << 3 | 2) + _pb_varint(len(data)) + data


# ONNX TensorProto element types: the float32 product, and u8 x s8 -> int32 for the integer one.
_FLOAT, _UINT8, _INT8, _INT32 = 1, 2, 3, 6


def _matmul_onnx(size: int, integer: bool = False) -> bytes:
    """A one-node ONNX model, ``c = a @ b`` on ``size × size`` matrices, encoded directly
    (the runtime does not depend on the ``onnx`` package): float32 ``MatMul``, or with
    ``integer`` ``MatMulInteger`` of uint8 ``a`` by int8 ``b`` into int32 ``c``, the
    product ONNX Runtime's int8 convolutions are made of (u8 activations, s8 weights)."""
    dims = b"".join(_pb(1, _pb(1, size)) for _ in range(2))  # TensorShapeProto.dim[].dim_value
    types = (_UINT8, _INT8, _INT32) if integer else (_FLOAT, _FLOAT, _FLOAT)

    def value_info(name: str, elem_type: int) -> bytes:  # ValueInfoProto{name, type{tensor_type{elem_type, shape}}}
        return _pb(1, name) + _pb(2, _pb(1, _pb(1, elem_type) + _pb(2, dims)))

    node = _pb(1, "a") + _pb(1, "b") + _pb(2, "c") + _pb(4, "MatMulInteger" if integer else "MatMul")
    inputs = _pb(11, value_info("a", types[0])) + _pb(11, value_info("b", types[1]))
    graph = _pb(1, node) + _pb(2, "matmul") + inputs + _pb(12, value_info("c", types[2]))
    return _pb(1, 8) + _pb(7, graph) + _pb(8, _pb(1, "") + _pb(2, 17))  # ir_version 8, opset 17


def _ort_matmul_rate(size: int, repeat: int, threads: int | None, integer: bool) -> float | None:
    """Best rate (2·size³ operations per second, in billions) of the one-node model."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from ..machine import physical_cores

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    session = ort.InferenceSession(_matmul_onnx(size, integer), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if integer:  # activations over the whole u8 range, weights in the 7-bit range int8 exports use
        feed = {"a": rng.integers(0, 256, (size, size), dtype=np.uint8), "b": rng.integers(-64, 65, (size, size), dtype=np.int8)}
    else:
        feed = {name: rng.standard_normal((size, size), dtype=np.float32) for name in ("a", "b")}
    session.run(None, feed)  # warm-up: thread pool, arena, packing
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def ort_matmul_gflops(size: int = 2048, repeat: int = 10, threads: int | None = None) -> float | None:
    """Best float32 GFLOP/s of ONNX Runtime's own ``MatMul`` (its MLAS kernels, CPU
    provider) on ``size × size`` matrices; ``None`` without onnxruntime.

    NumPy's BLAS can leave part of a CPU's vector width unused (measured: an AVX-512 Zen 5
    CPU where OpenBLAS reached about half of ONNX Runtime's rate), and our models run in
    ONNX Runtime, so this is the second yardstick of :func:`matmul_yardsticks`.
    """
    return _ort_matmul_rate(size, repeat, threads, integer=False)


def ort_int8_matmul_gops(size: int = 2048, repeat: int = 10, threads: int | None = None) -> float | None:
    """Best G op/s (2 per multiply-add) of ONNX Runtime's ``MatMulInteger``, uint8 by
    int8, on ``size × size`` matrices; ``None`` without onnxruntime.

    What an int8 model can gain over float32 depends on the CPU far more than anything
    else: with VNNI (AVX-512 or AVX-VNNI) one instruction does four u8×s8 multiply-adds
    per lane and this rate can be several times the float32 one; on AVX2 alone
    (``vpmaddubsw`` then ``vpmaddwd``) it was 1.14× float32 on one AMD EPYC
    (docs/results.md, fifteenth round) and 2.2× on the one issue 18 was filed on. So
    benchmarks record it beside the float32 peak, and an int8 row's speed is read
    against both.
    """
    return _ort_matmul_rate(size, repeat, threads, integer=True)


def matmul_yardsticks(size: int = 2048, repeat: int = 10) -> dict[str, float]:
    """One measurement of this machine's float32 matrix-product rate (GFLOP/s), by NumPy's
    BLAS and by ONNX Runtime (when installed): ``{"numpy": ..., "onnxruntime": ...}``; with
    ONNX Runtime also its int8 rate (G op/s, :func:`ort_int8_matmul_gops`) under
    :data:`INT8_KEY`, which is no float32 peak and never counts as one.
    About a second on a 2-core CPU; below 2048² ONNX Runtime's rate is far from its best."""
    from ..machine import matmul_peak_gflops

    out = {"numpy": matmul_peak_gflops(size, repeat)}
    ort_rate = ort_matmul_gflops(size, repeat)
    if ort_rate is not None:
        out["onnxruntime"] = ort_rate
        out[INT8_KEY] = ort_int8_matmul_gops(size, max(3, repeat // 3))  # a reading beside the peak: best of fewer
    return out


def machine_record(measurements: Sequence[dict[str, float]] = ()) -> dict[str, Any]:
    """This machine for a results file (:func:`~micronet.runtime.machine.describe_machine`)
    with its float32 matmul peak.

    Args:
        measurements: :func:`matmul_yardsticks` results taken around the timed runs (on
            a shared machine the highest is the closest to what the CPU can do); one is
            taken now when none is given.

    Returns:
        describe_machine's record, with ``numpy_matmul_gflops`` and
        ``ort_matmul_gflops`` (the highest of each) and ``matmul_peak_gflops``: the
        highest of both, the yardstick that throughput is divided by.
        ``matmul_measurements_gflops`` lists the float32 readings; the int8 rate is
        ``ort_int8_matmul_gops`` alone (the highest reading).
    """
    from ..machine import describe_machine

    measurements = list(measurements) or [matmul_yardsticks()]
    machine = describe_machine(measure_peak=False)
    machine["numpy_matmul_gflops"] = round(max(m["numpy"] for m in measurements), 1)
    ort_rates = [m["onnxruntime"] for m in measurements if "onnxruntime" in m]
    if ort_rates:
        machine["ort_matmul_gflops"] = round(max(ort_rates), 1)
    int8_rates = [m[INT8_KEY] for m in measurements if m.get(INT8_KEY) is not None]
    if int8_rates:
        machine["ort_int8_matmul_gops"] = round(max(int8_rates), 1)
    machine["matmul_peak_gflops"] = max(machine["numpy_matmul_gflops"], machine.get("ort_matmul_gflops", 0.0))
    machine["matmul_measurements_gflops"] = [{k: round(v, 1) for k, v in m.items() if k != INT8_KEY} for m in measurements]
    return machine


def run_line(machine: dict[str, Any]) -> str:
    """:func:`~micronet.runtime.machine.machine_line` plus ONNX Runtime's matmul rate."""
    from ..machine import machine_line

    line = machine_line(machine)
    if machine.get("ort_matmul_gflops") is not None:
        line = line.replace(" GFLOP/s", f" GFLOP/s (NumPy), {machine['ort_matmul_gflops']:g} GFLOP/s (ONNX Runtime)", 1)
    if machine.get("ort_int8_matmul_gops") is not None:
        line += f", int8 matmul {machine['ort_int8_matmul_gops']:g} G op/s (ONNX Runtime, u8×s8)"
    return line


def compare(results: Sequence[BenchResult], peak_gflops: float | None = None) -> list[BenchResult]:
    """Fills the ratio fields of ``results`` (in place; returned for convenience).

    ``speed_vs_first``: images/s over that of the first result that ran (so list the
    reference model first). ``megapixels_per_s_per_100_gflops``: for CPU backends, when
    ``peak_gflops`` (the float32 matmul peak of this machine) is given.
    """
    ran = [r for r in results if r.images_per_s]
    for r in ran:
        r.speed_vs_first = r.images_per_s / ran[0].images_per_s
        if peak_gflops and r.backend and r.backend.endswith("-cpu") and r.megapixels_per_s is not None:
            r.megapixels_per_s_per_100_gflops = 100.0 * r.megapixels_per_s / peak_gflops
    return list(results)


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(results: Sequence[BenchResult]) -> str:
    """The rows as a markdown table; the ratio columns (see :func:`compare`) come last,
    and only when some row has them."""
    head = ["model", "format", "backend", "status", "size MB", "P", "R", "F1", "ms/img", "img/s", "MP/s", "p50 ms", "p99 ms", "nuclei/s"]
    ratios = [
        (key, title)
        for key, title in (("speed_vs_first", "× first"), ("megapixels_per_s_per_100_gflops", "MP/s per 100 GFLOP/s"))
        if any(getattr(r, key) is not None for r in results)
    ]
    head += [title for _, title in ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    for r in results:
        cells = [
            Path(r.model).name,
            r.format,
            r.backend or "-",
            r.status.replace("|", "/"),
            _cell(r.size_mb, ".2f"),
            _cell(r.precision, ".3f"),
            _cell(r.recall, ".3f"),
            _cell(r.f1, ".3f"),
            _cell(r.ms_per_image, ".1f"),
            _cell(r.images_per_s, ".1f"),
            _cell(r.megapixels_per_s, ".2f"),
            _cell(r.p50_ms, ".1f"),
            _cell(r.p99_ms, ".1f"),
            _cell(r.nuclei_per_s, ".0f"),
        ] + [_cell(getattr(r, key), ".2f") for key, _ in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
