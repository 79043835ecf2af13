"""Cohorts: many slides or images, one task each, on a Ray cluster or in this process.

>>> from micronet.runtime.runs.cohort import DetectorSpec, run_cohort      # doctest: +SKIP
>>> rows = run_cohort(paths, process, DetectorSpec("fast-cpu"), ray_address="local")  # doctest: +SKIP

``process(detector, path) -> dict`` does one input (detect, write its outputs, return
its summary row: ``input, status, nuclei, megapixels, seconds, error``); it must be
picklable (a module-level function, or a ``functools.partial`` of one) and must turn its
own failures into a ``failed`` row. The same function runs in both modes, so there is
one path to test, not two:

- **in this process** (``ray_address=None``): one Detector, the inputs in order;
- **on Ray** (``"local"`` starts a runtime on this machine, ``"auto"`` or
  ``"host:port"`` joins a cluster): a pool of actors, each loading one Detector and
  keeping it for its next inputs; each task asks for the CPUs its ONNX Runtime threads
  use, or one GPU when the model runs on a GPU. An actor that dies (a killed worker, an
  out-of-memory node) is restarted and its task retried; the input's outputs resume
  where they stopped, as a rerun does (:mod:`micronet.runtime.runs.slide_outputs`). An input
  whose worker dies more often than that gets a ``failed`` row, and the cohort goes on.

One progress bar counts inputs and megapixels. Ray is optional
(``pip install 'micronet-sdk[cluster]'``) and imported only here, only when asked for.
"""

from __future__ import annotations

import csv
import logging
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InputError, MissingPackageError
from ..files import regular_file
from .summary import SUMMARY_FIELDS, SummaryRow, write_summary  # re-exported: the cohort's rows are the summary's

__all__ = ["CLUSTER_EXTRA", "SUMMARY_FIELDS", "DetectorSpec", "read_manifest", "run_cohort", "write_summary"]

log = logging.getLogger(__name__)

CLUSTER_EXTRA = "pip install 'micronet-sdk[cluster]'"
TASK_RETRIES = 2  # a task whose actor dies is retried this often on the restarted actor


@dataclass(frozen=True)
class DetectorSpec:
    """What a worker needs to build its Detector (picklable: it travels to Ray actors).

    Attributes:
        model: a model file or bundled name (``None``: the default model).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        threshold: detection threshold ξ, or ``None`` for the model's.
        threads: ONNX Runtime CPU threads per worker (``None``: the Detector's default in
            this process; on Ray, 1 unless given, so workers do not oversubscribe cores).
        tta: test-time augmentation (``Detector(tta=...)``: ``True``/``"flips"``, 4
            passes averaged, or ``"dihedral"``, 8); ``None``: the model's own (a bundled
            name's, :data:`~micronet.runtime.bundled.BUNDLED_TTA`), else one pass.
        normalize: colour normalisation (``Detector(normalize=...)``: ``"auto"``, the
            default, ``"white"``, ``"reinhard"``, ``"macenko"`` or ``None``).
        deblur: deconvolution of out-of-focus images (``Detector(deblur=...)``:
            ``"auto"``, the default, or ``None``).
    """

    model: str | None = None
    device: str = "auto"
    threshold: float | None = None
    threads: int | None = None
    tta: bool | str | None = None
    normalize: str | None = "auto"
    deblur: str | None = "auto"

    def build(self) -> Any:
        from ..detector import Detector

        threads = None if self.device not in ("cpu", "auto") else self.threads
        return Detector(self.model, device=self.device, threshold=self.threshold, threads=threads, tta=self.tta, normalize=self.normalize, deblur=self.deblur)

    @property
    def wants_gpu(self) -> bool:
        return self.device.startswith("cuda")


def read_manifest(path: str | Path, column: str | None = None) -> list[Path]:
    """The inputs listed in a manifest: a text file with one path per line (blank lines
    and ``#`` comments skipped), or a CSV with a header, taking ``column`` (default: the
    first of ``path``, ``input``, ``slide``, ``file``). Relative paths are relative to
    the manifest's folder. The entries are not checked here: one that is missing fails
    on its own turn (``micronet detect`` gives it a ``failed`` row and runs the rest).

    Raises:
        MissingFileError: no such manifest.
        InputError: not UTF-8 text, an empty manifest, or a CSV without the column (the
            message lists the columns it has).
    """
    path = regular_file(path, "manifest")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the manifest as UTF-8") from None
    lines = [ln.strip() for ln in text.splitlines()]
    if path.suffix.lower() == ".csv" or column is not None:
        rows = list(csv.DictReader(lines))
        names = list(rows[0].keys()) if rows else []
        if column is None:
            column = next((c for c in ("path", "input", "slide", "file") if c in names), None)
        if not column or column not in names:
            raise InputError(f"{path}: expected a column {column or 'path, input, slide or file'!r}; the CSV has {', '.join(names) or 'no columns'}")
        entries = [r[column].strip() for r in rows if r.get(column, "").strip()]
    else:
        entries = [ln for ln in lines if ln and not ln.startswith("#")]
    if not entries:
        raise InputError(f"{path}: the manifest lists no inputs")
    return [p if p.is_absolute() else path.parent / p for p in map(Path, entries)]


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory (Linux ``VmHWM``), MB; ``None`` elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _failed(path: Path, error: str, worker: str = "") -> dict[str, Any]:
    return dict(SummaryRow(str(path), "failed", error=error, worker=worker))


class _Worker:
    """One Ray actor: a Detector loaded once, then inputs one after another."""

    def __init__(self, spec: DetectorSpec, process: Callable[[Any, Path], dict[str, Any]]) -> None:
        self.detector = spec.build()
        self.process = process

    def run(self, path: str) -> dict[str, Any]:
        row = dict(self.process(self.detector, Path(path)))
        row["worker"] = _worker_name()
        row["worker_peak_rss_mb"] = _peak_rss_mb()
        return row

    def pid(self) -> int:
        return os.getpid()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingPackageError(f"--ray needs Ray: {CLUSTER_EXTRA}") from exc
    return ray


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="cohort", unit="input", disable=not enabled)


def run_cohort(
    inputs: Sequence[str | Path],
    process: Callable[[Any, Path], dict[str, Any]],
    spec: DetectorSpec,
    *,
    ray_address: str | None = None,
    workers: int | None = None,
    fail_fast: bool = False,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    on_workers: Callable[[list[Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Runs ``process`` on every input and returns one summary row per input, in input order.

    Args:
        inputs: slide or image paths.
        process: ``(detector, path) -> row`` (see the module docstring).
        spec: how each worker builds its Detector.
        ray_address: ``None`` (this process), ``"local"`` (start a Ray runtime here),
            ``"auto"`` or ``"host:port"`` (join a running cluster).
        workers: Ray actors (default: as many as the cluster's CPUs allow at
            ``spec.threads`` each, or its GPUs for a GPU model).
        fail_fast: stop at the first failed input (the rest get no row).
        progress: one progress bar for the cohort.
        on_row: called with each row as it arrives (e.g. to rewrite run_summary.csv).
        on_workers: called with the Ray actor handles once they exist (tests use it to
            kill one).
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputError("no inputs to run")
    if ray_address is None:
        return _run_here(paths, process, spec, fail_fast, progress, on_row)
    return _run_on_ray(paths, process, spec, ray_address, workers, fail_fast, progress, on_row, on_workers)


def _finish(row: dict[str, Any], bar: Any, rows: dict[int, dict[str, Any]], index: int, on_row: Callable | None) -> None:
    rows[index] = row
    bar.update(1)
    done_mpx = sum(float(r.get("megapixels") or 0.0) for r in rows.values())
    failed = sum(r.get("status") == "failed" for r in rows.values())
    bar.set_postfix(mpx=f"{done_mpx:.0f}", failed=failed)
    if on_row is not None:
        on_row(row)


def _run_here(paths: list[Path], process: Callable, spec: DetectorSpec, fail_fast: bool, progress: bool, on_row: Callable | None) -> list[dict[str, Any]]:
    detector = spec.build()
    rows: dict[int, dict[str, Any]] = {}
    with _progress(len(paths), progress) as bar:
        for i, path in enumerate(paths):
            row = dict(process(detector, path))
            row["worker"] = row.get("worker") or _worker_name()
            if row.get("worker_peak_rss_mb") is None:
                row["worker_peak_rss_mb"] = _peak_rss_mb()
            _finish(row, bar, rows, i, on_row)
            if fail_fast and row.get("status") == "failed":
                break
    return [rows[i] for i in sorted(rows)]


def _run_on_ray(
    paths: list[Path],
    process: Callable,
    spec: DetectorSpec,
    address: str,
    workers: int | None,
    fail_fast: bool,
    progress: bool,
    on_row: Callable | None,
    on_workers: Callable | None,
) -> list[dict[str, Any]]:
    ray = _import_ray()
    started = _start_ray(ray, address)
    try:
        spec, per_task, capacity = ray_plan(spec, ray.cluster_resources())
        count = max(1, min(workers or capacity, len(paths)))
        actor_class = ray.remote(max_restarts=-1, max_task_retries=TASK_RETRIES, **per_task)(_Worker)
        actors = [actor_class.remote(spec, process) for _ in range(count)]
        if on_workers is not None:
            on_workers(actors)
        return _run_on_actors(ray, actors, paths, fail_fast, progress, on_row)
    finally:
        if started:
            ray.shutdown()


def _start_ray(ray: Any, address: str) -> bool:
    """Starts or joins a Ray runtime unless this process has one; whether it did."""
    if ray.is_initialized():
        return False
    t0 = time.perf_counter()
    # "local": a runtime on this machine only; otherwise join the cluster at address.
    ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False, logging_level="warning")
    log.info("Ray runtime %s in %.1f s: %s", "started" if address == "local" else f"joined at {address}", time.perf_counter() - t0, ray.cluster_resources())
    return True


def ray_plan(spec: DetectorSpec, resources: dict[str, float]) -> tuple[DetectorSpec, dict[str, int], int]:
    """What each Ray actor gets: the spec it builds its Detector from, the resources one
    task asks for, and how many such tasks the cluster holds at once.

    A GPU model asks for one GPU per task; a CPU model for ``spec.threads`` CPUs (1 unless
    given) and runs on ``"cpu"`` (``"auto"`` resolved here, not on each worker). Every
    other setting of ``spec`` (``tta``, ``normalize``, model, threshold) travels unchanged.

    Raises:
        InputError: a GPU model and a cluster without GPUs.
    """
    if spec.wants_gpu:
        capacity = int(resources.get("GPU", 0))
        if capacity < 1:
            raise InputError(f"the model runs on a GPU ({spec.device}) but the Ray cluster has none: {resources}")
        return spec, {"num_cpus": 1, "num_gpus": 1}, capacity
    threads = spec.threads or 1
    capacity = max(1, int(resources.get("CPU", 1)) // threads)
    spec = replace(spec, device="cpu" if spec.device == "auto" else spec.device, threads=threads)
    return spec, {"num_cpus": threads, "num_gpus": 0}, capacity


def _run_on_actors(ray: Any, actors: list[Any], paths: list[Path], fail_fast: bool, progress: bool, on_row: Callable | None) -> list[dict[str, Any]]:
    """Hands the inputs to idle actors one at a time, in order, until all are done (or,
    with ``fail_fast``, one failed); the rows in input order."""
    rows: dict[int, dict[str, Any]] = {}
    pending: dict[Any, tuple[int, Any]] = {}
    queue = list(enumerate(paths))
    idle = list(actors)
    stop = False
    with _progress(len(paths), progress) as bar:
        while (queue and not stop) or pending:
            while idle and queue and not stop:
                actor = idle.pop()
                i, path = queue.pop(0)
                pending[actor.run.remote(str(path))] = (i, actor)
            done, _ = ray.wait(list(pending), num_returns=1)
            i, actor = pending.pop(done[0])
            try:
                row = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # the actor died more often than retried
                row = _failed(paths[i], f"worker lost: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            idle.append(actor)
            _finish(row, bar, rows, i, on_row)
            if fail_fast and row.get("status") == "failed":
                stop = True
    return [rows[i] for i in sorted(rows)]
