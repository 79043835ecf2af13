"""Benchmark models on this machine: speed end to end, and accuracy on a labelled set.

One row per model file, as ``yolo benchmark`` prints them: the format, whether it ran
(``ok`` or the error), its size, P / R / F1 on a labelled data set when one is given,
and the throughput of :meth:`Detector.detect_batch` on ``batch`` images of
``size × size`` pixels: everything a caller waits for (upload, inference, peak finding,
coordinates back), not the network alone.

Timing images are H&E: tiled from the data set's first image when ``data`` is given,
else from the bundled sample, else synthetic blobs (logged).
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

__all__ = ["BenchResult", "benchmark", "benchmark_model", "format_table", "timing_images"]

log = logging.getLogger(__name__)


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
        from .detector import as_rgb_image, bundled_sample

        try:
            source = as_rgb_image(bundled_sample())
        except FileNotFoundError:
            log.warning("no bundled sample image: timing on synthetic nuclei")
            source = _synthetic(512)
    base = _fill(source, size + batch)
    # Shifted crops: equal work, but no image identical to another.
    return [np.ascontiguousarray(base[k : k + size, k : k + size]) for k in range(batch)]


def _synthetic(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    ink = np.zeros((size, size))
    for x, y in rng.integers(0, size, (size * size // 900, 2)):
        ink = np.maximum(ink, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 18.0))
    pink, purple = np.array([235.0, 200.0, 225.0]), np.array([80.0, 40.0, 120.0])
    return np.round(pink + ink[..., None] * (purple - pink)).astype(np.uint8)


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
        data: a :class:`micronet.runtime.datasets.PointDataset` to measure P / R / F1 on.
        radius: matching radius in the data set's pixels.
    """
    from .detector import Detector, resolve_model
    from .metrics import evaluate_images

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
        for _ in range(warmup):
            detector.detect_batch(timed)
        seconds, nuclei = [], 0
        for _ in range(repeat):
            start = time.perf_counter()
            found_batch = detector.detect_batch(timed)
            seconds.append(time.perf_counter() - start)
            nuclei += sum(len(d) for d in found_batch)
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError, OSError) as exc:
        result.status = _short(exc)
        log.debug("benchmark of %s failed", path, exc_info=True)
        return result
    per_call = np.asarray(seconds)
    n = len(timed)
    mean = float(per_call.mean())
    pixels = sum(im.shape[0] * im.shape[1] for im in timed) / n
    result.ms_per_image = 1e3 * mean / n
    result.images_per_s = n / mean
    result.megapixels_per_s = result.images_per_s * pixels / 1e6
    result.p50_ms = float(np.percentile(per_call, 50) * 1e3)
    result.p99_ms = float(np.percentile(per_call, 99) * 1e3)
    result.nuclei_per_s = nuclei / float(per_call.sum())
    return result


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
        ValueError: bad settings, or a data set that cannot be read (per-model failures
            go into the rows instead).
    """
    for name, value, low in (("batch", batch, 1), ("size", size, 1), ("repeat", repeat, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    if not models:
        raise ValueError("models: expected at least one model file")
    dataset = None
    source = None
    if data is not None:
        from .datasets import load_point_folder

        dataset = load_point_folder(data, split)
        if not len(dataset):
            raise ValueError(f"{data}: no images in split {split!r}")
        source = dataset.images[0]
    images = timing_images(batch, size, source)
    return [
        benchmark_model(
            m, batch=batch, size=size, device=device, repeat=repeat, warmup=warmup, threads=threads, images=images, data=dataset, radius=radius
        )
        for m in models
    ]


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(results: Sequence[BenchResult]) -> str:
    """The rows as a markdown table."""
    head = ["model", "format", "backend", "status", "size MB", "P", "R", "F1", "ms/img", "img/s", "MP/s", "p50 ms", "p99 ms", "nuclei/s"]
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
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
