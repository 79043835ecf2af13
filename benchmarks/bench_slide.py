"""Whole-slide detection: throughput, peak memory, and what the reader thread gains.

Writes a synthetic pyramidal slide to /tmp (never the repository): a BigTIFF of
256×256 JPEG tiles (levels 1, 4×, 16× in SubIFDs) at 0.5 µm/px, a mosaic of real
CRCHistoPhenotypes images (flipped and rotated at random) shaped as an elliptical
section with glass around it and a few glass holes. Then runs
``Detector.detect_slide`` on it — and on the real ``CMU-1-Small-Region.svs`` — in a
child process per run, writing all outputs (CSV, GeoJSON, overlay PNG), with the
reader thread (``queue_size`` default) and without it (``queue_size=0``). Each child
reports wall time and its peak resident memory (``VmHWM``), also after a warm-up batch
so that what the slide machinery adds on top of the detector is visible. The real
``OS-1-detail.ome.tif`` (40×, resampled) runs too.

The first table is the memory claim: each model's peak resident memory on each slide
with the default settings (reader thread, the default tile, which on the CPU is chosen
from the model's activation memory: ``micronet.runtime.tiling.memory_tile_size``),
against ``--memory-limit-mb`` (1 GB).

    python benchmarks/bench_slide.py --size 0 --model all --modes prefetch --results-name slide_memory
                                                           # the real slides, every bundled model: minutes
    python benchmarks/bench_slide.py --size 12000          # ~10 min on 2 cores, the bundled model
    python benchmarks/bench_slide.py                       # 40,000², the bundled model: hours on a CPU
    python benchmarks/bench_slide.py --size 12000 --model default --model fast-cpu --modes prefetch
                                                           # two models in one run, and their ratio

With several ``--model``s the models take turns within each repeat, and the table adds
each one's speed and memory as a ratio to the first model's, measured in the same run.
Megapixels/s is also given per 100 GFLOP/s of the machine's float32 matmul peak
(measured before and after the runs; the highest counts).

Megapixels/s counts the level-0 pixels of the whole slide (glass included: skipping it
is part of the speed); tissue megapixels/s counts the tiles' cores that were run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, matmul_peaks, peak_text, per_peak, run_machine, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MICRONET_DATA", REPO.parent / "shared" / "data"))
SLIDE_MPP = 0.5  # a 20× scanner; the model's pixel size differs, so tiles are resampled
CELL = 500  # CRCHisto image size
# Issue 18: every bundled model under 1 GB (10⁹ bytes) of peak resident memory on any slide.
MEMORY_LIMIT_MB = 1e9 / 2**20  # 953.7 MiB; the tables' "MB" are MiB (VmHWM kB / 1024)


# --- the synthetic slide ---------------------------------------------------------------------


class Mosaic:
    """Renders any window of a ``size × size`` slide made of 500×500 CRCHisto cells, at
    level-0 scale (1) or 4× reduced (4); cells outside the tissue shape are glass."""

    def __init__(self, images: list[np.ndarray], size: int, seed: int = 0) -> None:
        from PIL import Image

        rng = np.random.default_rng(seed)
        self.size = size
        n = math.ceil(size / CELL)
        self.index = rng.integers(0, len(images), size=(n, n))
        self.transform = rng.integers(0, 8, size=(n, n))
        centres = (np.arange(n) + 0.5) * CELL / size - 0.5  # cell centres in [-0.5, 0.5)
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        tissue = (cx / 0.46) ** 2 + (cy / 0.40) ** 2 <= 1.0  # an elliptical section
        for _ in range(3):  # holes (vessels, tears)
            hx, hy, r = rng.uniform(-0.25, 0.25), rng.uniform(-0.2, 0.2), rng.uniform(0.03, 0.07)
            tissue &= (cx - hx) ** 2 + (cy - hy) ** 2 > r**2
        self.tissue = tissue
        glass = (238 + rng.integers(-3, 4, size=(CELL, CELL, 3))).astype(np.uint8)
        self.cells = {1: images, 4: [np.asarray(Image.fromarray(im).reduce(4)) for im in images]}
        self.glass = {1: glass, 4: np.asarray(Image.fromarray(glass).reduce(4))}

    def _cell(self, scale: int, r: int, c: int) -> np.ndarray:
        if not self.tissue[r, c]:
            return self.glass[scale]
        im = self.cells[scale][self.index[r, c]]
        t = int(self.transform[r, c])
        return np.rot90(im[:, ::-1] if t >= 4 else im, t % 4)

    def render(self, scale: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """``(h, w, 3)`` uint8 pixels at rows ``y0:y0+h``, columns ``x0:x0+w`` of the
        level at ``scale``; outside the slide is white."""
        out = np.full((h, w, 3), 255, np.uint8)
        c = CELL // scale
        limit = math.ceil(self.size / scale)
        for r in range(y0 // c, min(limit - 1, y0 + h - 1) // c + 1):
            for k in range(x0 // c, min(limit - 1, x0 + w - 1) // c + 1):
                cell = self._cell(scale, r, k)
                ya, yb = max(y0, r * c), min(y0 + h, (r + 1) * c, limit)
                xa, xb = max(x0, k * c), min(x0 + w, (k + 1) * c, limit)
                if ya < yb and xa < xb:
                    out[ya - y0 : yb - y0, xa - x0 : xb - x0] = cell[ya - r * c : yb - r * c, xa - k * c : xb - k * c]
        return out


def write_slide(path: Path, images: list[np.ndarray], size: int, tile: int = 256) -> None:
    """Streams the mosaic into a tiled JPEG BigTIFF pyramid, one tile in memory at a time."""
    import tifffile
    from PIL import Image
    from tqdm import tqdm

    mosaic = Mosaic(images, size)
    shapes = [(size, size), (math.ceil(size / 4),) * 2, (math.ceil(size / 16),) * 2]

    def tiles(level: int):
        h, w = shapes[level]
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                if level < 2:
                    yield mosaic.render(4**level, y, x, tile, tile)
                else:  # 16×: the 4× level reduced once more
                    yield np.asarray(Image.fromarray(mosaic.render(4, 4 * y, 4 * x, 4 * tile, 4 * tile)).reduce(4))
                bar.update(1)

    total = sum(math.ceil(h / tile) * math.ceil(w / tile) for h, w in shapes)
    options = {"tile": (tile, tile), "compression": "jpeg", "compressionargs": {"level": 85}, "photometric": "rgb", "metadata": None}
    tmp = path.with_name(path.name + ".partial")
    with tqdm(total=total, desc=f"writing {path.name}", unit="tile") as bar, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for level, shape in enumerate(shapes):
            res = 1e4 / (SLIDE_MPP * 4**level)
            extra = {"subifds": len(shapes) - 1} if level == 0 else {"subfiletype": 1}
            tif.write(tiles(level), shape=(*shape, 3), dtype=np.uint8, resolution=(res, res), resolutionunit="CENTIMETER", **options, **extra)
    os.replace(tmp, path)


def crchisto_images() -> list[np.ndarray]:
    from PIL import Image

    files = sorted((DATA / "crchisto" / "images").glob("*.png"))
    if not files:
        sys.exit(f"CRCHistoPhenotypes images not found under {DATA} (set MICRONET_DATA)")
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


# --- the model ---------------------------------------------------------------------------------


def default_model(folder: Path) -> tuple[Path, float | None]:
    """The bundled model (its own threshold), else a tiny random MicroNet exported to
    ONNX with a threshold that finds ~300 peaks per CRCHisto image."""
    from micronet.runtime.detector import Detector, bundled_model

    try:
        return bundled_model(), None
    except FileNotFoundError:
        pass
    import torch

    from micronet.export.onnx import export_onnx
    from micronet.runtime.model_info import ModelInfo
    from micronet.trainer.checkpoint import save_checkpoint
    from micronet.trainer.models import create_model

    print("no bundled model: benchmarking a tiny random MicroNet (micronet_tiny)", file=sys.stderr)
    torch.manual_seed(0)
    model = create_model("micronet_tiny").eval()
    info = ModelInfo(
        architecture=model.config_dict(), mean=[180.0, 130.0, 170.0], std=[40.0, 45.0, 35.0], mpp=0.55, threshold=0.0,
        provenance={"note": "random weights, for benchmarks"},
    )  # fmt: skip
    onnx_path = export_onnx(save_checkpoint(folder / "tiny.safetensors", model, info), folder / "tiny.onnx")
    scores = Detector(onnx_path, device="cpu").detect(crchisto_images()[0]).scores
    return onnx_path, float(scores[min(299, len(scores) - 1)])


# --- one measured run (child process) -----------------------------------------------------------


def _status_kib(field: str) -> int:
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
        result.update(seconds=time.perf_counter() - t0, peak_rss_mb=_status_kib("VmHWM") / 1024)
        print("RESULT " + json.dumps(result))
        return
    # Warm up on full batches of every size the run sends: ONNX Runtime's arena then
    # holds what the detector needs, and the rest of the peak is the slide's doing.
    for n in [det.batch_size] * 2 + list(range(det.batch_size - 1, 0, -1)):
        det.detect_batch(np.full((n, det.tile_size, det.tile_size, 3), 200, np.uint8))
    baseline = _status_kib("VmHWM")
    with tempfile.TemporaryDirectory(prefix="micronet-bench-") as out:
        t0 = time.perf_counter()
        found = det.detect_slide(args.slide, out_dir=out, queue_size=queue_size, readers=readers, progress=False, resume=False)
        seconds = time.perf_counter() - t0
        state = json.loads(next(Path(out).glob("*.progress.json")).read_text())
    result.update(
        seconds=seconds,
        nuclei=len(found),
        tiles_run=state["tiles_total"],
        tiles_planned=state["tiles_planned"],
        peak_rss_mb=_status_kib("VmHWM") / 1024,
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


def measure(args: argparse.Namespace, slide: Path, model: Path, threshold: float | None, mode: str, threads: int | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--slide", str(slide), "--model", str(model), "--device", args.device, "--mode", mode]
    cmd += ["--accelerator-ms", repr(args.accelerator_ms)]
    if threshold is not None:
        cmd += ["--threshold", repr(threshold)]
    if threads is not None:
        cmd += ["--child-threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


# --- main ---------------------------------------------------------------------------------------


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _rows_table(rows: list[dict[str, Any]], several: bool) -> list[str]:
    out = [
        "| slide | run |" + (" model |" if several else "") + " ORT threads | Mpx | tiles run / planned | s | Mpx/s | Mpx/s per 100 GFLOP/s "
        "| nuclei | nuclei/s | peak RSS MB (detector warmed up alone) |",
        "|---|---|" + ("---|" if several else "") + "---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        planned = f"{r['tiles_run']} / {r['tiles_planned']}" if "tiles_planned" in r else f"{r['tiles_run']}"
        detected = (f"{r['nuclei']} | {r['nuclei_per_s']:.0f}") if "nuclei" in r else "– | –"
        rss = f"{r['peak_rss_mb']:.0f}" + (f" ({r['detector_rss_mb']:.0f})" if "detector_rss_mb" in r else "")
        model_cell = (f" `{r['model']}` |" if MODES[r["mode"]][3] not in ("none", "standin") else " – |") if several else ""
        out.append(
            f"| {r['slide']} | {MODES[r['mode']][0]} |{model_cell} {r['threads'] or 'default'} | {r['megapixels']:.0f} | {planned} | "
            f"{r['seconds']:.1f} | {r['megapixels_per_s']:.2f} | {_cell(r.get('megapixels_per_s_per_100_gflops'))} | {detected} | {rss} |"
        )
    return out


def _memory_table(rows: list[dict[str, Any]], limit_mb: float) -> list[str]:
    """Peak resident memory per model (rows) and slide (columns) of the runs at default
    settings (the reader thread): what issue 18 asks to stay under ``limit_mb``."""
    runs = [r for r in rows if r["mode"] == "prefetch"]
    if not runs:
        return []
    slides = list(dict.fromkeys(r["slide"] for r in runs))
    out = [
        f"Peak resident memory (VmHWM of the child process, MB) at default settings (reader thread, default tile) against "
        f"the limit of {limit_mb:.0f} MB; over it: **bold**.",
        "",
        "| model | tile | " + " | ".join(slides) + " |",
        "|---|---:|" + "---:|" * len(slides),
    ]
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = {r["slide"]: r for r in runs if r["model"] == model}
        cells = [
            "–" if s not in mine else (f"**{mine[s]['peak_rss_mb']:.0f}**" if mine[s]["peak_rss_mb"] > limit_mb else f"{mine[s]['peak_rss_mb']:.0f}")
            for s in slides
        ]
        tiles = ", ".join(dict.fromkeys(f"{r['tile_size']}²" for r in mine.values()))
        out.append(f"| `{model}` | {tiles} | " + " | ".join(cells) + " |")
    return out + [""]


def render(
    machine: dict[str, Any],
    model_names: list[str],
    rows: list[dict[str, Any]],
    versus: list[dict[str, Any]],
    gains: dict[str, float],
    accelerator_ms: float,
    repeat: int,
    limit_mb: float = MEMORY_LIMIT_MB,
) -> str:
    """The markdown of one run: real runs first; the stand-in accelerator's rows (a sleep,
    not a device) in their own section, so they are never read as throughput."""
    real = [r for r in rows if MODES[r["mode"]][3] != "standin"]
    standin = [r for r in rows if MODES[r["mode"]][3] == "standin"]
    first = next((r for r in rows if r["mode"] != "read"), rows[0])
    several = len(model_names) > 1
    names = ", ".join(f"`{m}`" for m in model_names)
    table = _memory_table(rows, limit_mb) + [
        f"Model{'s' if several else ''}: {names} ({first['backend']}), tiles {first['tile_size']}² in batches of {first['batch_size']}; "
        "outputs (CSV, GeoJSON, overlay PNG) written during the run. Mpx = level-0 slide pixels, glass included. "
        f"Best of {repeat} run(s). "
        + (f"Per 100 GFLOP/s: Mpx/s divided by this run's float32 matmul peak: {peak_text(machine)}." if "matmul_measurements_gflops" in machine
           else "(A record from before the matmul peak was measured: no per-peak column.)"),
        "",
    ]
    if versus:
        reference = versus[0]["reference"]
        table += [
            f"Against `{reference}` in the same run (speed = its time / this model's time; memory = peak RSS ratio):",
            "",
            "| slide | run | model | × speed | × peak memory | nuclei (vs first) |",
            "|---|---|---|---:|---:|---|",
        ]
        table += [
            f"| {v['slide']} | {MODES[v['mode']][0]} | `{v['model']}` | **{v['speed_ratio']:.2f}×** | {v['peak_rss_ratio']:.2f}× | "
            f"{v['nuclei']:,} ({v['reference_nuclei']:,}) |"
            for v in versus
        ]
        table += [""]
    real_gains = {k: v for k, v in gains.items() if "stand-in" not in k}
    if real_gains:
        table += ["Pipelining gain (serial time / overlapped time, same run):", ""] + [f"- {k}: {v:.2f}×" for k, v in real_gains.items()] + [""]
    table += _rows_table(real, several)
    if standin:
        table += [
            "",
            f"**Stand-in accelerator, not a device.** The model's work replaced by a sleep of {accelerator_ms:g} ms per megapixel "
            "of tiles and no CPU: how far reading, decoding and resampling overlap an accelerator that fast. These rows say "
            "nothing about any real GPU; its numbers are in the GPU section.",
            "",
        ]
        standin_gains = {k: v for k, v in gains.items() if "stand-in" in k}
        if standin_gains:
            table += ["Overlap gain (serial time / overlapped time, same run):", ""] + [f"- {k}: {v:.2f}×" for k, v in standin_gains.items()] + [""]
        table += _rows_table(standin, several)
    return "\n".join(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--size", type=int, default=40000, help="side of the synthetic slide in level-0 pixels (default 40000; 0: the real slides only)"
    )
    parser.add_argument(
        "--model",
        action="append",
        help="an .onnx or .engine model, a bundled name (default, fast-cpu) or 'all' (every bundled model); repeatable: the "
        "models take turns and are compared to the first (default: the bundled default model, else a tiny random one)",
    )
    parser.add_argument(
        "--memory-limit-mb", type=float, default=MEMORY_LIMIT_MB, help="the peak memory the first table holds runs to (default 1 GB = 954 MiB)"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, any of: {', '.join(MODES)} (default: all)")
    parser.add_argument("--threads", default="", help="ONNX Runtime CPU threads, a comma-separated list to compare (default: physical cores)")
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite results/NAME.md (NAME: --results-name) from its JSON without measuring"
    )
    parser.add_argument("--accelerator-ms", type=float, default=50.0, help="stand-in accelerator latency, ms per megapixel of tiles (default 50)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting, interleaved; the table shows the fastest (default 1)")
    parser.add_argument("--rewrite", action="store_true", help="write the synthetic slide again even if /tmp has it")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic slide in /tmp afterwards")
    parser.add_argument(
        "--results-name", default="slide", help="results/<name>.json and .md (default slide; e.g. slide_40000 for the large run)"
    )
    # child-process options
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--slide", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--threshold", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.render_only:
        # The markdown again from a run's JSON (e.g. after the layout of the page changed).
        payload = json.loads((RESULTS / f"{args.results_name}.json").read_text())
        rows = payload["rows"]
        repeat = payload.get("repeat") or max(len(r.get("runs_s", [1])) for r in rows)
        if "models" in payload:
            names = [Path(m["model"]).name for m in payload["models"]]
        else:  # a record from before several models per run: one model, named once
            names = [Path(payload["model"]).name]
            rows = [{"model": names[0], **r} for r in rows]
        table = render(payload["machine"], names, rows, payload.get("versus_first_model", []), payload.get("pipelining_speedup", {}),
                       payload["accelerator_ms_per_mpx"], repeat, args.memory_limit_mb)  # fmt: skip
        write_results(args.results_name, {**payload, "repeat": repeat}, table)
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        sys.exit(f"--modes: expected a comma-separated list of {', '.join(MODES)}, got {args.modes!r}")
    try:
        thread_counts: list[int | None] = [int(t) for t in args.threads.split(",") if t.strip()] or [None]
    except ValueError:
        sys.exit(f"--threads: expected comma-separated integers, got {args.threads!r}")

    from micronet.runtime.detector import BUNDLED_MODELS, resolve_model

    work = Path(tempfile.mkdtemp(prefix="micronet-bench-slide-"))
    if args.model:
        names = [name for m in args.model for name in (BUNDLED_MODELS if m == "all" else [m])]
        models: list[tuple[Path, float | None]] = [(resolve_model(m), None) for m in dict.fromkeys(names)]
        if missing := [str(m) for m, _ in models if not m.is_file()]:
            sys.exit(f"--model: no such file {', '.join(missing)}")
    else:
        models = [default_model(work)]
    if "prefetch-noarena" in modes and any(m.suffix != ".onnx" for m, _ in models):
        modes.remove("prefetch-noarena")  # an ONNX Runtime setting

    slides: list[tuple[str, Path]] = []
    for file, label in (("CMU-1-Small-Region.svs", "real, 20×"), ("OS-1-detail.ome.tif", "real, 40×")):
        if (DATA / "slides" / file).is_file():
            slides.append((f"{file} ({label})", DATA / "slides" / file))
    synthetic = Path(tempfile.gettempdir()) / f"micronet-synthetic-{args.size}.tif"
    if args.size > 0:
        if args.rewrite or not synthetic.is_file():
            t0 = time.perf_counter()
            write_slide(synthetic, crchisto_images(), args.size)
            print(f"wrote {synthetic} ({synthetic.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        slides.append((f"synthetic {args.size}² (JPEG tiles, 0.5 µm/px)", synthetic))
    if not slides:
        sys.exit(f"no slide to run: the real slides are not under {DATA / 'slides'} and --size is 0")

    runs: list[dict[str, Any]] = []
    peaks = [matmul_peaks()]
    try:
        for name, path in slides:
            for threads in thread_counts:
                # Settings (and models) alternate within each repeat, so a drift in machine
                # load (other jobs) hits them alike; the best run of each is kept.
                for rep in range(args.repeat):
                    for mode in modes:
                        for k, (model, threshold) in enumerate(models):
                            if MODES[mode][3] in ("none", "standin") and (threads != thread_counts[0] or k):
                                continue  # these depend on neither the inference threads nor the model
                            print(f"{name}: {model.name}, {mode}, threads={threads or 'default'}, run {rep + 1} ...", file=sys.stderr, flush=True)
                            r = measure(args, path, model, threshold, mode, threads)
                            r.update(slide=name, model=model.name, mode=mode, threads=threads, megapixels_per_s=r["megapixels"] / r["seconds"])
                            if "nuclei" in r:
                                r["nuclei_per_s"] = r["nuclei"] / r["seconds"]
                            print(f"  {r['seconds']:.1f} s, {r['megapixels_per_s']:.2f} Mpx/s, peak {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
                            runs.append(r)
    finally:
        if not args.keep and synthetic.is_file():
            synthetic.unlink()
    peaks.append(matmul_peaks())
    machine = run_machine(peaks)
    peak = machine["matmul_peak_gflops"]
    rows = []
    setting = lambda r: (r["slide"], r["model"], r["mode"], r["threads"])  # noqa: E731
    for key in dict.fromkeys(setting(r) for r in runs):  # settings in run order
        same = [r for r in runs if setting(r) == key]
        best = min(same, key=lambda r: r["seconds"])
        on_cpu = MODES[best["mode"]][3] in ("model", "noarena")  # the stand-in and reading are no arithmetic
        rows.append({**best, "runs_s": [r["seconds"] for r in same], "megapixels_per_s_per_100_gflops": per_peak(best["megapixels_per_s"], peak) if on_cpu else None})

    gains = {}
    for name, _ in slides:
        for model, _ in models:
            for threads in thread_counts:
                t = {
                    r["mode"]: r["seconds"]
                    for r in rows
                    if r["slide"] == name and r["threads"] in (threads, thread_counts[0]) and (r["model"] == model.name or MODES[r["mode"]][3] in ("none", "standin"))
                }
                for serial, overlapped in (("serial", "prefetch"), ("accel-serial", "accel-prefetch"), ("accel-serial", "accel-prefetch-2")):
                    if serial in t and overlapped in t and (MODES[overlapped][3] != "standin" or model == models[0][0]):
                        label = f"{name}, {MODES[overlapped][0]}, threads={threads or 'default'}" + (f", {model.name}" if MODES[overlapped][3] != "standin" and len(models) > 1 else "")
                        gains[label] = t[serial] / t[overlapped]

    # Each model against the first on the same slide, mode and threads, same run.
    reference = models[0][0].name
    versus = []
    for r in rows:
        if r["model"] == reference or MODES[r["mode"]][3] in ("none", "standin"):
            continue
        ref = next(x for x in rows if x["model"] == reference and (x["slide"], x["mode"], x["threads"]) == (r["slide"], r["mode"], r["threads"]))
        versus.append(
            {
                "slide": r["slide"], "mode": r["mode"], "threads": r["threads"], "model": r["model"], "reference": reference,
                "speed_ratio": ref["seconds"] / r["seconds"], "peak_rss_ratio": r["peak_rss_mb"] / ref["peak_rss_mb"],
                "nuclei": r["nuclei"], "reference_nuclei": ref["nuclei"],
            }
        )  # fmt: skip

    table = render(machine, [m.name for m, _ in models], rows, versus, gains, args.accelerator_ms, args.repeat, args.memory_limit_mb)
    write_results(
        args.results_name,
        {
            "machine": machine,
            "models": [{"model": str(m), "threshold": t} for m, t in models],
            "size": args.size,
            "memory_limit_mb": args.memory_limit_mb,
            "accelerator_ms_per_mpx": args.accelerator_ms,
            "repeat": args.repeat,
            "rows": rows,
            "versus_first_model": versus,
            "pipelining_speedup": gains,
        },
        table,
    )


if __name__ == "__main__":
    main()
