"""One measured run of the whole-slide benchmark (``bench_slide.py``), in the child
process the benchmark starts for it (``bench_slide.py --child``), so that each run's
peak resident memory (``VmHWM``) is its own.

:data:`MODES` names what a run does: read the tiles alone, detect with or without the
reader thread, with ONNX Runtime's CPU arena off, or with a stand-in accelerator
(:class:`StandIn`: a sleep, no CPU). :func:`child` runs one and prints one ``RESULT``
line of JSON for the parent.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MODES", "ArenaFreeOnnx", "StandIn", "child", "read_only", "status_kib"]


def status_kib(field: str) -> int:
    """A ``kB`` field of this process's ``/proc/self/status`` (``VmHWM``, ``VmRSS``), 0 where absent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# name → (what it runs, detect_slide's queue_size, readers, inference)
MODES: dict[str, tuple[str, int | None, int | None, str]] = {
    "read": ("reading alone (no inference)", None, None, "none"),
    "prefetch": ("reader thread", None, None, "model"),
    "serial": ("serial (queue_size=0)", 0, None, "model"),
    "prefetch-noarena": ("reader thread, ORT CPU arena off", None, None, "noarena"),
    "accel-serial": ("stand-in accelerator, serial", 0, None, "standin"),
    "accel-prefetch": ("stand-in accelerator, 1 reader", None, 1, "standin"),
    "accel-prefetch-2": ("stand-in accelerator, 2 readers", None, 2, "standin"),
}


class StandIn:
    """An accelerator stand-in: answers each batch after a fixed latency per megapixel,
    using no CPU meanwhile (as a GPU leaves the CPU free), with empty proximity maps.
    Shows what overlapping reading with inference gains when inference is not on the
    same cores; this task's machine has no GPU to show it for real."""

    name = "stand-in accelerator"
    device = "cpu"

    def __init__(self, info: Any, ms_per_megapixel: float) -> None:
        self.info = info
        self.seconds_per_pixel = ms_per_megapixel / 1e9

    def infer(self, batch: np.ndarray) -> np.ndarray:
        n, h, w = batch.shape[:3]
        time.sleep(n * h * w * self.seconds_per_pixel)
        return np.zeros((n, 1, h, w), np.float32)


class ArenaFreeOnnx:
    """The model in ONNX Runtime's CPU provider with the memory arena off: memory then
    goes back when a batch is done, instead of the arena keeping its high-water mark
    for every tile shape it has seen."""

    name = "onnxruntime-cpu (arena off)"
    device = "cpu"

    def __init__(self, model: Path, info: Any, threads: int | None) -> None:
        import onnxruntime as ort

        from micronet.runtime.backends.onnxruntime import physical_cores

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or physical_cores()
        options.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.info = info

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: batch})[0]


def child(args: argparse.Namespace) -> None:
    from micronet.runtime.detector import Detector
    from micronet.runtime.slide import open_slide

    _, queue_size, readers, inference = MODES[args.mode]
    args.model = args.model[0]  # the parent passes one
    det = Detector(args.model, device=args.device, threshold=args.threshold, threads=args.child_threads)
    if inference == "standin":
        det = Detector(backend=StandIn(det.info, args.accelerator_ms), threshold=det.threshold)
    elif inference == "noarena":
        det = Detector(backend=ArenaFreeOnnx(args.model, det.info, args.child_threads), threshold=det.threshold)
    with open_slide(args.slide) as slide:
        h, w = slide.shape
    result: dict[str, Any] = {"megapixels": h * w / 1e6, "tile_size": det.tile_size, "batch_size": det.batch_size, "backend": det.backend_name}
    if inference == "none":  # reading alone: what the reader thread has to hide
        t0 = time.perf_counter()
        result["tiles_run"] = read_only(det, Path(args.slide))
        result.update(seconds=time.perf_counter() - t0, peak_rss_mb=status_kib("VmHWM") / 1024)
        print("RESULT " + json.dumps(result))
        return
    # Warm up on full batches of every size the run sends: ONNX Runtime's arena then
    # holds what the detector needs, and the rest of the peak is the slide's doing.
    for n in [det.batch_size] * 2 + list(range(det.batch_size - 1, 0, -1)):
        det.detect_batch(np.full((n, det.tile_size, det.tile_size, 3), 200, np.uint8))
    baseline = status_kib("VmHWM")
    with tempfile.TemporaryDirectory(prefix="micronet-bench-") as out:
        t0 = time.perf_counter()
        found = det.detect_slide(args.slide, out_dir=out, queue_size=queue_size, readers=readers, progress=False, resume=False)
        seconds = time.perf_counter() - t0
        # The run's record (settings, tile counts) lies in the out folder's .micronet/.
        state = json.loads(next(Path(out).rglob("*.progress.json")).read_text())
    result.update(
        seconds=seconds,
        nuclei=len(found),
        tiles_run=state["tiles_total"],
        tiles_planned=state["tiles_planned"],
        peak_rss_mb=status_kib("VmHWM") / 1024,
        detector_rss_mb=baseline / 1024,
    )
    print("RESULT " + json.dumps(result))


def read_only(det: Any, path: Path) -> int:
    """Reads, decodes and resamples every tile detect_slide would run, and nothing else."""
    from micronet.runtime.slide import open_slide, plan_slide

    with open_slide(path) as slide:
        plan = plan_slide(det, slide)  # what detect_slide itself runs: level, grid, tiles on tissue
        for tile in plan.tiles:
            plan.grid.read_tile(slide, tile)
    return len(plan.tiles)
