"""GPU throughput that can carry a claim. Writes results/gpu.json and results/gpu.md.

    python benchmarks/bench_gpu.py [--slide-size 40000] [--passes 2] [--device 0] [--peak-tflops T]
        [--onnx M.onnx] [--out DIR] [--dry-run]

Engines: the torch backend (fp16, CuPy peaks on the map), TensorRT fp16 (the engine
cache's engine of the bundled fp16 export) and ONNX Runtime's CUDA provider (fp32, TF32
off), each where this machine has it; the others are listed as not measured, and why.

What each number means:

1. **Network only**: a batch of 1 and of 4 (the Detector's batch) 1024² uint8 tiles
   already on the GPU, the network alone, timed with CUDA events on the stream it runs on
   over many back-to-back runs (ONNX Runtime's ``run`` is synchronous: wall clock around
   device-bound input and output, said so in the table).
2. **End to end, steady state**: a synthetic pyramidal slide of ``--slide-size``² pixels
   (JPEG tiles of real H&E, ``_synthetic_slide.py``; kept in the temporary folder for
   reruns) through ``Detector.detect_slide`` to a CSV, ``--passes`` times (several
   gigapixels in all: 2 × 40,000² = 3.2 by default), after a warm-up region: reading, decoding and
   resampling tiles, crops, uploads, inference, peaks, the CSV. Reported as image
   megapixels (level 0) per second, and per second of tissue.
3. **Breakdown** of one batch of four 1024² tiles: host crop and stack, copy into pinned
   memory, upload (CUDA events), inference (as 1.), peaks and their download
   (``find_peaks_cuda``, wall clock: it ends with the one copy of the peak list).
4. **GPU utilisation** during the slide run (``nvidia-smi`` sampled every 100 ms).
5. **The roof**: the model's FLOPs per pixel (counted by torch's FlopCounterMode on the
   same ONNX graph) × pixels per second, against the GPU's dense fp16 tensor-core peak.

Without a CUDA GPU the script says why and exits 1; ``--dry-run`` prints the plan and
exits 0 without one.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402
from _synthetic_slide import CELL, SLIDE_MPP, Mosaic, write_slide  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TILE = 1024
BATCHES = (1, 4)
NET_RUNS = 30  # back-to-back network runs per timing
# Dense FP16 tensor-core peaks (TFLOPS, NVIDIA data sheets; FP32 accumulate where it
# differs), by a fragment of the GPU's name, most specific first.
FP16_PEAK_TFLOPS = (
    ("H200", 989.4), ("H100 NVL", 835.5), ("H100 PCIe", 756.5), ("H100", 989.4), ("GH200", 989.4),
    ("A100", 312.0), ("L40S", 181.0), ("L4", 121.0), ("A10", 125.0), ("T4", 65.0),
)
TORCH, TRT, ORT = "torch CUDA fp16", "TensorRT fp16", "ONNX Runtime CUDA fp32"

log = logging.getLogger("bench_gpu")


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the benchmark, or None when it can."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install 'micronet-sdk[gpu]'): every engine's peaks run on it"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        return f"no CUDA device ({exc})"
    return None if count > 0 else "no CUDA device"


def peak_tflops(gpu_name: str, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "--peak-tflops"
    for fragment, value in FP16_PEAK_TFLOPS:
        if fragment in gpu_name:
            return value, f"data sheet ({fragment}, dense fp16)"
    return None, f"unknown for {gpu_name!r} (pass --peak-tflops)"


# --- engines --------------------------------------------------------------------------------


def make_detectors(onnx: Path, device_id: int, missing: dict[str, str]) -> dict[str, Any]:
    """name → ``Detector``; engines this machine cannot run go to ``missing`` with why."""
    from micronet.runtime.detector import Detector

    device, found = f"cuda:{device_id}", {}
    for name, make in (
        (TORCH, lambda: Detector(onnx, backend="torch", device=device)),
        (TRT, lambda: Detector("default", backend="tensorrt", device=device)),
        (ORT, lambda: Detector(onnx, backend="onnxruntime", device=device)),
    ):
        try:
            det = make()
        except (ImportError, ValueError) as exc:
            missing[name] = f"not measured here: {str(exc).splitlines()[0]}"
            continue
        if det.device != "cuda":
            missing[name] = f"not measured here: ran as {det.backend_name} with maps on the host"
            continue
        found[name] = det
    return found


def network_ms(name: str, det: Any, batch: Any) -> tuple[float, str]:
    """Milliseconds per run of the network on a batch already on the GPU, and how timed."""
    import cupy

    if name == TORCH:
        torch, backend = det.backend._torch, det.backend
        x = torch.from_dlpack(batch)
        with torch.inference_mode(), torch.cuda.stream(backend._stream):
            timed_event = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
            return _events_ms(lambda: backend._forward(x), timed_event, backend._stream), "CUDA events"
    if name == TRT:
        backend = det.backend
        context, stream = backend._engine.create_execution_context(), cupy.cuda.Stream(non_blocking=True)
        context.set_input_shape("image", tuple(batch.shape))
        context.set_tensor_address("image", int(batch.data.ptr))
        keep = []
        for out in backend.outputs:
            keep.append(cupy.empty(tuple(context.get_tensor_shape(out)), dtype=backend._out_dtypes[out]))
            context.set_tensor_address(out, int(keep[-1].data.ptr))
        return _events_ms(lambda: context.execute_async_v3(stream.ptr), cupy.cuda.Event, stream), "CUDA events"
    return _ort_ms(det.backend, batch), "wall clock (ORT's run is synchronous), device-bound input and output"


def _events_ms(run: Any, event_type: Any, stream: Any) -> float:
    for _ in range(3):  # warm-up (cuDNN's autotuning, TensorRT's first launch)
        run()
    start, end = event_type(), event_type()
    start.record(stream)
    for _ in range(NET_RUNS):
        run()
    end.record(stream)
    end.synchronize()
    elapsed = start.elapsed_time(end) if hasattr(start, "elapsed_time") else None
    if elapsed is None:  # CuPy: cupy.cuda.get_elapsed_time(start, end)
        import cupy

        elapsed = cupy.cuda.get_elapsed_time(start, end)
    return float(elapsed) / NET_RUNS


def _ort_ms(backend: Any, batch: Any) -> float:
    session = backend._session
    binding = session.io_binding()
    binding.bind_input("image", "cuda", backend.device_id, np.uint8, tuple(batch.shape), int(batch.data.ptr))
    for out in backend._outputs:
        binding.bind_output(out, "cuda", backend.device_id)
    for _ in range(3):
        session.run_with_iobinding(binding)
    t0 = time.perf_counter()
    for _ in range(NET_RUNS):
        session.run_with_iobinding(binding)
    return (time.perf_counter() - t0) * 1e3 / NET_RUNS


def flops_per_pixel(onnx: Path) -> float:
    """FLOPs (2 × multiply-adds) per input pixel, counted on the ONNX graph by torch."""
    import torch
    from micronet.runtime.backends.torch import TorchBackend
    from torch.utils.flop_counter import FlopCounterMode

    backend = TorchBackend(onnx, device="cpu")
    x = np.zeros((1, 256, 256, 3), np.uint8)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        backend.infer(x)
    return counter.get_total_flops() / (256 * 256)


# --- the slide, the breakdown, utilisation ----------------------------------------------------


def cell_images() -> tuple[list[np.ndarray], str]:
    from PIL import Image

    files = sorted((DATA / "crchisto" / "images").glob("*.png"))
    if files:
        return [np.asarray(Image.open(f).convert("RGB")) for f in files[:40]], f"CRCHisto images ({DATA / 'crchisto'})"
    from micronet.runtime.detector import bundled_sample, read_image

    s = np.ascontiguousarray(read_image(bundled_sample())[:CELL, :CELL, :3])
    return [s, s[::-1], s[:, ::-1], s.transpose(1, 0, 2)], "the bundled sample image, flipped"


class UtilisationSampler:
    """``nvidia-smi`` utilisation of one GPU, sampled every 100 ms while running."""

    def __init__(self, device_id: int) -> None:
        self._cmd = ["nvidia-smi", f"--id={device_id}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
        self.samples: list[float] = []

    def __enter__(self) -> UtilisationSampler:
        try:
            self._proc: Any = subprocess.Popen(self._cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self._proc = None
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(5)

    def summary(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        return {"mean_percent": statistics.fmean(self.samples), "median_percent": statistics.median(self.samples), "samples": len(self.samples)}


def slide_run(det: Any, slide: Path, size: int, tissue_share: float, device_id: int, work: Path, passes: int) -> dict[str, Any]:
    """The steady-state slide → CSV run (``passes`` whole passes after a warm-up region),
    with GPU utilisation."""
    det.detect_slide(slide, region=(size // 2 - 2048, size // 2 - 2048, 4096, 4096), progress=False)  # warm-up
    out_dir = work / det.backend_name
    with UtilisationSampler(device_id) as sampler:
        t0 = time.perf_counter()
        for _ in range(passes):
            found = det.detect_slide(slide, out_dir=out_dir, formats="csv", progress=False, resume=False)
        seconds = time.perf_counter() - t0
    pixels = size * size * passes
    return {
        "seconds": seconds,
        "passes": passes,
        "detections_per_pass": len(found),
        "slide_megapixels": pixels / 1e6,
        "megapixels_per_s": pixels / 1e6 / seconds,
        "tissue_megapixels_per_s": pixels * tissue_share / 1e6 / seconds,
        "gpu_utilisation": sampler.summary(),
        "csv_bytes": sum(p.stat().st_size for p in out_dir.glob("*.csv")),
    }


def breakdown(name: str, det: Any, image: np.ndarray, net_ms_4: float) -> dict[str, float]:
    """Milliseconds of each stage of one batch of four 1024² tiles (see the docstring)."""
    import cupy
    import cupyx
    from micronet.runtime.peaks import find_peaks_cuda

    spots = [(0, 0), (0, 1024), (1024, 0), (1024, 1024)]
    t0 = time.perf_counter()
    for _ in range(10):
        batch = np.stack([image[y : y + TILE, x : x + TILE] for y, x in spots])  # as Detector._batch
    crop = (time.perf_counter() - t0) * 100
    pinned = cupyx.empty_pinned(batch.shape, np.uint8)
    t0 = time.perf_counter()
    for _ in range(10):
        np.copyto(pinned, batch)
    pin = (time.perf_counter() - t0) * 100
    device, stream = cupy.empty(batch.shape, np.uint8), cupy.cuda.Stream(non_blocking=True)
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record(stream)
    for _ in range(10):
        device.set(pinned, stream=stream)
    end.record(stream)
    end.synchronize()
    upload = cupy.cuda.get_elapsed_time(start, end) / 10
    maps = det.backend.infer(batch)
    t0 = time.perf_counter()
    for _ in range(3):
        for k in range(len(batch)):
            find_peaks_cuda(maps[k, 0], det.threshold, det.min_distance)
    peaks = (time.perf_counter() - t0) * 1e3 / 3
    return {"host_crop_and_stack_ms": crop, "pin_copy_ms": pin, "upload_ms": upload, "inference_ms": net_ms_4, "peaks_and_download_ms": peaks}


# --- the run ---------------------------------------------------------------------------------


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import cupy
    from micronet.runtime.machine import describe_machine

    machine = describe_machine()
    gpu = next((g for g in machine.get("gpus", []) if str(g.get("index")) == str(args.device)), {})
    peak, peak_source = peak_tflops(str(gpu.get("name", "")), args.peak_tflops)
    missing: dict[str, str] = {}
    detectors = make_detectors(args.onnx, args.device, missing)
    if not detectors:
        raise SystemExit(f"bench_gpu: no GPU engine runs here: {json.dumps(missing, indent=1)}")
    flops = flops_per_pixel(args.onnx)
    images, source = cell_images()
    slide = Path(tempfile.gettempdir()) / f"micronet-bench-gpu-slide-{args.slide_size}.tif"  # kept for reruns
    if not slide.is_file():
        t0 = time.perf_counter()
        write_slide(slide, images, args.slide_size)
        log.info("wrote %s (%.1f GB) in %.0f s", slide, slide.stat().st_size / 1e9, time.perf_counter() - t0)
    mosaic = Mosaic(images, args.slide_size)
    tissue_share = float(mosaic.tissue.mean())
    image = mosaic.render(1, args.slide_size // 2 - TILE, args.slide_size // 2 - TILE, 2 * TILE, 2 * TILE)
    rng = np.random.default_rng(0)
    rows: dict[str, Any] = {}
    for name, det in detectors.items():
        with cupy.cuda.Device(args.device):
            net = {}
            for n in BATCHES:
                batch = cupy.asarray(rng.integers(0, 256, (n, TILE, TILE, 3), dtype=np.uint8))
                ms, how = network_ms(name, det, batch)
                net[str(n)] = {"ms": ms, "megapixels_per_s": n * TILE * TILE / 1e3 / ms, "timed_with": how}
            row = {"backend": det.backend_name, "precision": det.info.precision, "network": net}
            row["breakdown_ms"] = breakdown(name, det, image, net["4"]["ms"])
            row["slide"] = slide_run(det, slide, args.slide_size, tissue_share, args.device, work, args.passes)
        best = net["4"]["megapixels_per_s"] * 1e6  # network pixels per second at the Detector's batch
        row["roof"] = {
            "gflop_per_megapixel": flops / 1e3,
            "network_tflops": flops * best / 1e12,
            "network_share_of_peak": flops * best / 1e12 / peak if peak else None,
            "end_to_end_tflops": flops * row["slide"]["tissue_megapixels_per_s"] * 1e6 * (SLIDE_MPP / det.info.mpp) ** 2 / 1e12,
        }
        rows[name] = row
        log.info("%s: %s", name, json.dumps(row["slide"]))
    return {
        "machine": machine, "device": args.device, "gpu": gpu, "peak_fp16_tflops": peak, "peak_source": peak_source,
        "model": str(args.onnx), "flops_per_pixel": flops, "slide": {"size": args.slide_size, "passes": args.passes, "mpp": SLIDE_MPP, "tissue_share": tissue_share, "cells": source},
        "rows": rows, "not_measured": missing,
    }


def table(p: dict[str, Any]) -> str:
    size, peak = p["slide"]["size"], p["peak_fp16_tflops"]
    lines = [
        "## GPU throughput",
        "",
        f"GPU {p['device']}: {p['gpu'].get('name', '?')}; dense fp16 peak {peak or '?'} TFLOPS ({p['peak_source']}). "
        f"Model {Path(p['model']).name}: {p['flops_per_pixel'] / 1e3:.1f} kFLOP per pixel (torch's FlopCounterMode on the ONNX graph).",
        f"Slide: synthetic {size:,}² at {p['slide']['mpp']} µm/px ({size * size / 1e9:.1f} gigapixels, {p['slide']['tissue_share']:.0%} tissue; "
        f"JPEG tiles of {p['slide']['cells']}), `detect_slide` → CSV, {p['slide']['passes']} timed pass(es) after a warm-up region.",
        "",
        "| engine | network 1×1024² (ms) | network 4×1024² (ms) | network MP/s | slide → CSV: s | image MP/s | tissue MP/s | GPU util. (mean) | network % of fp16 peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in p["rows"].items():
        net, sl, roof = r["network"], r["slide"], r["roof"]
        util = "–" if not sl["gpu_utilisation"] else "{:.0f} %".format(sl["gpu_utilisation"]["mean_percent"])
        share = "–" if roof["network_share_of_peak"] is None else "{:.1%}".format(roof["network_share_of_peak"])
        lines.append(
            f"| {name} | {net['1']['ms']:.2f} | {net['4']['ms']:.2f} | {net['4']['megapixels_per_s']:.0f} | {sl['seconds']:.1f} | "
            f"{sl['megapixels_per_s']:.0f} | {sl['tissue_megapixels_per_s']:.0f} | {util} | {share} |"
        )
    lines += ["", "Breakdown of one batch of four 1024² tiles (ms):", "", "| engine | host crop + stack | pin copy | upload | inference | peaks + download |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in p["rows"].items():
        b = r["breakdown_ms"]
        lines.append(f"| {name} | {b['host_crop_and_stack_ms']:.2f} | {b['pin_copy_ms']:.2f} | {b['upload_ms']:.2f} | {b['inference_ms']:.2f} | {b['peaks_and_download_ms']:.2f} |")
    lines += ["", "Network timings: " + "; ".join(f"{n}: {r['network']['4']['timed_with']}" for n, r in p["rows"].items()) + "."]
    lines += [f"\n{name}: {why}" for name, why in p["not_measured"].items()]
    return "\n".join(lines)


def plan(args: argparse.Namespace) -> str:
    return "\n".join([
        "bench_gpu --dry-run: the plan",
        f"  engines: {TORCH} (Detector(backend='torch')), {TRT} (engine cache), {ORT} (TF32 off), each where installed",
        f"  network only: batches {', '.join(f'{n}×{TILE}²' for n in BATCHES)} uint8 on cuda:{args.device}, {NET_RUNS} back-to-back runs, CUDA events",
        f"  end to end: {args.passes} pass(es) over a synthetic slide of {args.slide_size:,}² "
        f"({args.passes * args.slide_size ** 2 / 1e9:.1f} gigapixels) → detect_slide → CSV, after a warm-up region",
        "  breakdown: host crop + stack, pin copy, upload, inference, peaks + download (one batch of four 1024² tiles)",
        "  GPU utilisation: nvidia-smi every 100 ms during the slide run; roof: FLOPs/pixel × MP/s against the fp16 peak",
        f"  model: {args.onnx}; results: benchmarks/results/gpu.json and gpu.md" + (f" and {args.out}" if args.out else ""),
    ])


def main(argv: list[str] | None = None) -> int:
    from micronet.runtime.detector import bundled_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide-size", type=int, default=40000, help="side of the synthetic slide in pixels (default 40000: 1.6 gigapixels)")
    parser.add_argument("--passes", type=int, default=2, help="timed passes over the whole slide (default 2: 3.2 gigapixels)")
    parser.add_argument("--device", type=int, default=0, help="the CUDA device (default 0)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense fp16 peak, when its name is not in the table")
    parser.add_argument("--onnx", type=Path, help="the ONNX export torch and ONNX Runtime run (default: the bundled default model)")
    parser.add_argument("--out", type=Path, help="also write gpu.json and gpu.md here")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit (no GPU needed)")
    args = parser.parse_args(argv)
    if args.slide_size < 8192 or args.passes < 1:
        parser.error("--slide-size: at least 8192 (the warm-up region alone is 4096²); --passes: at least 1")
    args.onnx = args.onnx or bundled_model("default")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.dry_run:
        print(plan(args))
        return 0
    reason = no_gpu_reason()
    if reason is not None:
        print(f"bench_gpu: cannot run: {reason}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="micronet-bench-gpu-") as tmp:
        payload = measure(args, Path(tmp))
    payload = json.loads(json.dumps(payload, default=str))
    text = table(payload)
    write_results("gpu", payload, text)
    if args.out is not None:
        write_results("gpu", payload, text, folder=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
