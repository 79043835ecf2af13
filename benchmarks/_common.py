"""Shared helpers for the benchmark scripts: timing, the matmul yardstick, writing results.

Every result names its machine (``micronet.runtime.machine.describe_machine``: CPU model,
ISA flags, physical cores, GPUs, a measured float32 matmul peak), because absolute
speeds only compare within one machine; what the docs quote are ratios measured in the
same run, and throughput per unit of that matmul peak.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from micronet.runtime.diagnostics.bench import (
    machine_record,
    matmul_yardsticks,
    run_line,
)

__all__ = ["RESULTS", "best_time", "interleaved_best", "matmul_peaks", "peak_text", "per_peak", "run_line", "run_machine", "write_results"]

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"  # ../shared/data (its README)

def interleaved_best(fns: dict[str, Callable[[], Any]], repeat: int, warmup: int = 1) -> dict[str, float]:
    """Best wall time (s) of each function over ``repeat`` rounds of one call each: the
    functions take turns, so a change in a shared machine's load hits them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def best_time(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
    """Best wall time in seconds over `repeat` runs (after `warmup` runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_peaks() -> dict[str, float]:
    """One measurement of the float32 matmul rate (GFLOP/s) of NumPy's BLAS and of ONNX
    Runtime's MatMul, 2048³, best of 10 each. Take one before and one after the timed runs
    and pass them all to :func:`run_machine`: on a shared machine the highest is the
    closest to what the CPU can do, so a momentary dip never inflates a model's share."""
    return matmul_yardsticks(2048, 10)


def run_machine(measurements: list[dict[str, float]] | None = None) -> dict[str, Any]:
    """The machine record for a results JSON (``micronet.runtime.diagnostics.bench.machine_record``):
    ``matmul_peak_gflops`` is the highest float32 matmul rate among ``measurements``
    (taken during the run by :func:`matmul_peaks`; one is taken now without)."""
    machine = machine_record(measurements or [matmul_peaks()])
    machine["matmul_peak"] = "float32 2048³ matrix product, best of 10, by NumPy's BLAS and by ONNX Runtime's MatMul; the highest of the run"
    return machine


def peak_text(machine: dict[str, Any]) -> str:
    """How the run's peak was measured, for a table's caption."""
    rates = "; ".join(", ".join(f"{k} {v:.0f}" for k, v in m.items()) for m in machine["matmul_measurements_gflops"])
    text = f"{machine['matmul_peak_gflops']:.0f} GFLOP/s, the highest float32 2048³ matmul rate of the run (GFLOP/s: {rates})"
    int8, fp32 = machine.get("ort_int8_matmul_gops"), machine.get("ort_matmul_gflops")
    if int8 and fp32:  # what an int8 row can gain over float32 on this CPU
        text += f"; ONNX Runtime's int8 (u8×s8) matmul: {int8:.0f} G op/s, {int8 / fp32:.2f}× its float32 one"
    return text


def per_peak(megapixels_per_s: float, peak_gflops: float) -> float:
    """Throughput normalised by the machine: MP/s per 100 GFLOP/s of float32 matmul peak."""
    return 100.0 * megapixels_per_s / peak_gflops


def write_results(name: str, payload: dict[str, Any], table: str, folder: Path = RESULTS) -> None:
    """Writes <folder>/<name>.json and <folder>/<name>.md (folder: benchmarks/results)
    and prints the table.

    The JSON's ``machine`` is ``payload["machine"]`` when the script measured it (see
    :func:`run_machine`), else described and measured now. The markdown gets the machine
    line first, so a table never travels without the machine it describes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    machine = payload.pop("machine", None) or run_machine()
    payload = {"machine": machine, **payload}
    text = f"Machine: {run_line(machine)}.\n\n{table}"
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (folder / f"{name}.md").write_text(text + "\n")
    print(text)


def tissue_batch(size: int, batch: int) -> np.ndarray:
    """``batch`` images of ``size²`` tiled from real CRCHisto test images."""
    from micronet.runtime.evaluation.datasets import load_point_folder

    data = load_point_folder(DATA / "crchisto", "test")
    out = []
    for k in range(batch):
        reps = -(-size // 500)
        tiles = [data.images[(k * reps * reps + i) % len(data)] for i in range(reps * reps)]
        rows = [np.concatenate(tiles[r * reps : (r + 1) * reps], axis=1) for r in range(reps)]
        out.append(np.concatenate(rows, axis=0)[:size, :size])
    return np.ascontiguousarray(np.stack(out))
