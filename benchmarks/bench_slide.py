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

The synthetic slide is ``_synthetic_slide.py``'s; what a child process runs and
measures, ``_slide_child.py``'s; this script chooses the runs, takes the best of each
and writes the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, matmul_peaks, peak_text, per_peak, run_machine, write_results  # noqa: E402
from _slide_child import MODES, child  # noqa: E402
from _synthetic_slide import crchisto_images, write_slide  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MICRONET_DATA", REPO.parent / "shared" / "data"))
# Issue 18: every bundled model under 1 GB (10⁹ bytes) of peak resident memory on any slide.
MEMORY_LIMIT_MB = 1e9 / 2**20  # 953.7 MiB; the tables' "MB" are MiB (VmHWM kB / 1024)


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
    scores = Detector(onnx_path, device="cpu").detect(crchisto_images(DATA)[0]).scores
    return onnx_path, float(scores[min(299, len(scores) - 1)])


# --- one measured run: the parent's side (the child's is _slide_child.py) -----------------------


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


def parse_args() -> argparse.Namespace:
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
    return parser.parse_args()


def render_only(args: argparse.Namespace) -> None:
    """The markdown again from a run's JSON (e.g. after the layout of the page changed)."""
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


def parse_settings(args: argparse.Namespace) -> tuple[list[str], list[int | None]]:
    """``--modes`` and ``--threads`` as lists (``[None]``: the default threads); exits on a bad one."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        sys.exit(f"--modes: expected a comma-separated list of {', '.join(MODES)}, got {args.modes!r}")
    try:
        thread_counts: list[int | None] = [int(t) for t in args.threads.split(",") if t.strip()] or [None]
    except ValueError:
        sys.exit(f"--threads: expected comma-separated integers, got {args.threads!r}")
    return modes, thread_counts


def choose_models(args: argparse.Namespace, modes: list[str]) -> list[tuple[Path, float | None]]:
    """``(model file, threshold or None for its own)`` per ``--model`` (else the default
    model); drops ``prefetch-noarena`` from ``modes`` when a model is not ONNX."""
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
    return models


def choose_slides(args: argparse.Namespace, synthetic: Path) -> list[tuple[str, Path]]:
    """``(label, path)`` of the real slides found under DATA/slides, and of the synthetic
    slide (written to ``synthetic`` unless there already) when ``--size`` is not 0."""
    slides: list[tuple[str, Path]] = []
    for file, label in (("CMU-1-Small-Region.svs", "real, 20×"), ("OS-1-detail.ome.tif", "real, 40×")):
        if (DATA / "slides" / file).is_file():
            slides.append((f"{file} ({label})", DATA / "slides" / file))
    if args.size > 0:
        if args.rewrite or not synthetic.is_file():
            t0 = time.perf_counter()
            write_slide(synthetic, crchisto_images(DATA), args.size)
            print(f"wrote {synthetic} ({synthetic.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        slides.append((f"synthetic {args.size}² (JPEG tiles, 0.5 µm/px)", synthetic))
    if not slides:
        sys.exit(f"no slide to run: the real slides are not under {DATA / 'slides'} and --size is 0")
    return slides


def run_all(
    args: argparse.Namespace, slides: list[tuple[str, Path]], models: list[tuple[Path, float | None]], modes: list[str], thread_counts: list[int | None]
) -> list[dict[str, Any]]:
    """Every run, in order: slide, threads, then repeats of every mode and model in turn."""
    runs: list[dict[str, Any]] = []
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
    return runs


def best_rows(runs: list[dict[str, Any]], peak: float) -> list[dict[str, Any]]:
    """The fastest run of each setting (slide, model, mode, threads), in run order, with
    every run's seconds and, for runs on the CPU, Mpx/s per 100 GFLOP/s of ``peak``."""
    rows = []
    setting = lambda r: (r["slide"], r["model"], r["mode"], r["threads"])  # noqa: E731
    for key in dict.fromkeys(setting(r) for r in runs):  # settings in run order
        same = [r for r in runs if setting(r) == key]
        best = min(same, key=lambda r: r["seconds"])
        on_cpu = MODES[best["mode"]][3] in ("model", "noarena")  # the stand-in and reading are no arithmetic
        rows.append({**best, "runs_s": [r["seconds"] for r in same], "megapixels_per_s_per_100_gflops": per_peak(best["megapixels_per_s"], peak) if on_cpu else None})
    return rows


def pipelining_gains(
    rows: list[dict[str, Any]], slides: list[tuple[str, Path]], models: list[tuple[Path, float | None]], thread_counts: list[int | None]
) -> dict[str, float]:
    """Serial time over overlapped time, per slide, model and threads: ``{label: ratio}``."""
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
    return gains


def versus_first(rows: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Each model against the first (``reference``) on the same slide, mode and threads, same run."""
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
    return versus


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    if args.render_only:
        render_only(args)
        return
    modes, thread_counts = parse_settings(args)
    models = choose_models(args, modes)
    synthetic = Path(tempfile.gettempdir()) / f"micronet-synthetic-{args.size}.tif"
    slides = choose_slides(args, synthetic)

    peaks = [matmul_peaks()]
    try:
        runs = run_all(args, slides, models, modes, thread_counts)
    finally:
        if not args.keep and synthetic.is_file():
            synthetic.unlink()
    peaks.append(matmul_peaks())
    machine = run_machine(peaks)
    rows = best_rows(runs, machine["matmul_peak_gflops"])
    gains = pipelining_gains(rows, slides, models, thread_counts)
    versus = versus_first(rows, models[0][0].name)

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
