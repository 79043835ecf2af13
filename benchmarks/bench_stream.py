"""Detection while a slide is scanned (``Detector.stream``): memory and latency on CMU-1.

A simulated scanner reads ``CMU-1-Small-Region.svs`` field by field (512² fields of view
overlapping by 10 %, step 461 px, in serpentine order: the stage's path) straight from
the file, as a scanner hands over each captured field, and adds each to a stream session
at the slide's 0.499 µm/px (resampled to the model's 0.55). A reader thread takes the
final regions as they come (``ready(wait=True)``), stamping when each arrives. Each run is
a child process, so its peak resident memory (``VmHWM``) is its own; the detector is
warmed up on full tiles first, so the rest of the peak is the stream's doing.

Runs:

- ``as fast as possible``: every field is added as soon as the last ``add`` returns
  (``add`` waits while the backlog is full): the stream's throughput, compared with
  ``detect_slide`` on the same slide in the same run (``tissue_only=False``: every tile,
  as the stream runs every block).
- ``paced``: a field every ``--interval`` seconds (a scanner capturing at that rate);
  latency then shows the wait for context and the network, not a queue.
- ``3 slides tall``: CMU-1 three times one above the other (2220×8901 px), as fast as
  possible: the memory of a longer scan, which should not grow.
- ``tiles 640²``: ``Detector("fast-cpu", tile_size=640)``: blocks are the detector's
  tiles, so smaller tiles mean shorter strips and earlier results, for more overlap work
  (results then equal ``detect`` with the default tile to the matcher's tolerance).

Each run is repeated ``--repeat`` times, the runs taking turns; the table shows the
fastest of each (a shared machine's load changes between runs).

Latency of a field: from its arrival (``add`` called) to the moment every detection in
it is final (all final regions whose box meets the field have reached the reader), in
seconds and in fields added meanwhile (the context still to come: scan geometry, not
speed). Block latency: ``FinalRegion.latency_s``, from the arrival that completed a
block's context to its detections being final (queue and network).

    python benchmarks/bench_stream.py                 # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import matmul_peaks, run_machine, write_results  # noqa: E402
from _slide_child import status_kib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MICRONET_DATA", REPO.parent / "shared" / "data"))
SLIDE = DATA / "slides" / "CMU-1-Small-Region.svs"
FIELD, STEP = 512, 461  # 512² fields of view, 10 % overlap
SMALL_TILE = 640  # a Detector(tile_size=...) for smaller blocks: less memory and latency, more overlap
RUNS = {  # name → (label, copies stacked vertically, paced, tile_size: None for the detector's default)
    "fast": ("as fast as possible", 1, False, None),
    "fast-640": (f"as fast as possible, tiles {SMALL_TILE}²", 1, False, SMALL_TILE),
    "paced": ("paced", 1, True, None),
    "tall": ("3 slides tall, as fast as possible", 3, False, None),
}


def serpentine_fields(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """``(x, y, w, h)`` of the fields, row by row, every other row right to left."""
    rows = []
    for k, y in enumerate(range(0, height, STEP)):
        row = [(x, y, min(FIELD, width - x), min(FIELD, height - y)) for x in range(0, width, STEP)]
        rows += row if k % 2 == 0 else row[::-1]
        if y + FIELD >= height:
            break
    return rows


def read_field(slide: Any, x: int, y: int, w: int, h: int) -> np.ndarray:
    """A field of the virtual slide of CMU-1 copies stacked vertically, read from the file."""
    sh = slide.shape[0]
    parts, row = [], y
    while row < y + h:
        take = min(y + h - row, sh - row % sh)
        parts.append(slide.read_region(0, x, row % sh, w, take))
        row += take
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _warm(det: Any) -> None:
    """Full tiles through the detector, so ONNX Runtime's arena holds what it needs."""
    for _ in range(2):
        det.detect_batch(np.full((det.batch_size, det.tile_size, det.tile_size, 3), 200, np.uint8))


# --- one measured run (child process) ------------------------------------------------------------


def child_stream(args: argparse.Namespace) -> dict[str, Any]:
    from micronet.runtime.detector import Detector
    from micronet.runtime.slide import open_slide

    _, copies, paced, tile = RUNS[args.child]
    det = Detector(args.model, device="cpu", tile_size=tile)
    _warm(det)
    baseline = status_kib("VmHWM")
    with open_slide(SLIDE) as slide:
        h, w = slide.shape[0] * copies, slide.shape[1]
        fields = serpentine_fields(w, h)
        session = det.stream(w, h, mpp=slide.mpp)
        total = session.counts().blocks_total
        received: list[tuple[float, Any]] = []
        all_in = threading.Event()

        def reader() -> None:
            for region in session.ready(wait=True):
                received.append((time.monotonic(), region))
                if len(received) == total:
                    all_in.set()

        thread = threading.Thread(target=reader)
        thread.start()
        added, t0 = [], time.monotonic()
        for k, (x, y, fw, fh) in enumerate(fields):
            rgb = read_field(slide, x, y, fw, fh)  # the scanner's capture
            if paced:
                time.sleep(max(0.0, t0 + k * args.interval - time.monotonic()))
            added.append(time.monotonic())
            session.add(rgb, x, y)
        if not all_in.wait(timeout=1800):  # every block is final before finish(): the fields cover the slide
            sys.exit(f"only {len(received)} of {total} blocks came back")
        rest = session.finish()
        seconds = time.monotonic() - t0
        thread.join()
    nuclei = sum(len(r.detections) for _, r in received) + len(rest)
    result = {"width": w, "height": h, "fields": len(fields), "blocks": total, "seconds": seconds, "nuclei": nuclei}
    result.update(_latencies(fields, added, received))
    result.update(
        tile_size=det.tile_size, mpp=slide.mpp, peak_rss_mb=status_kib("VmHWM") / 1024, detector_rss_mb=baseline / 1024,
        peak_held_mb=session.peak_held_bytes / 2**20, slide_mb=w * h * 3 / 2**20, field_row_mb=w * FIELD * 3 / 2**20,
    )  # fmt: skip
    return result


def _latencies(fields: list, added: list[float], received: list[tuple[float, Any]]) -> dict[str, Any]:
    """Per field: seconds and fields from its arrival until all its detections are final."""
    seconds, later = [], []
    arrivals = np.array(added)
    for (x, y, w, h), t_add in zip(fields, added):
        meets = [t for t, r in received if r.box[0] < x + w and r.box[2] > x and r.box[1] < y + h and r.box[3] > y]
        t_final = max(meets)
        seconds.append(t_final - t_add)
        later.append(int(np.sum(arrivals <= t_final)) - int(np.sum(arrivals <= t_add)))
    block = [r.latency_s for _, r in received]
    pct = lambda v: {f"p{q}": float(np.percentile(v, q)) for q in (50, 90, 100)}  # noqa: E731
    return {"field_latency_s": pct(seconds), "field_latency_fields": pct(later), "block_latency_s": pct(block)}


def child_detect_slide(args: argparse.Namespace) -> dict[str, Any]:
    from micronet.runtime.detector import Detector

    det = Detector(args.model, device="cpu")
    _warm(det)
    baseline = status_kib("VmHWM")
    t0 = time.monotonic()
    found = det.detect_slide(SLIDE, tissue_only=False, progress=False)
    seconds = time.monotonic() - t0
    return {"seconds": seconds, "nuclei": len(found), "peak_rss_mb": status_kib("VmHWM") / 1024, "detector_rss_mb": baseline / 1024}


def measure(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, "--model", args.model, "--interval", repr(args.interval)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"child {mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


# --- the report ------------------------------------------------------------------------------------


def render(payload: dict[str, Any]) -> str:
    runs, ds = payload["runs"], payload["detect_slide"]
    fast = runs["fast"]
    lines = [
        f"Model `{payload['model']}` (onnxruntime-cpu), its default tile {fast['tile_size']}² in model pixels; "
        f"{SLIDE.name} ({fast['width']}×{fast['height']} px at {fast['mpp']:.3f} µm/px, resampled to the model's pixels) fed as "
        f"{FIELD}² fields overlapping by 10 % (step {STEP}) in serpentine order, read from the file one by one. Paced: a field "
        f"every {payload['interval_s']:g} s. Peak RSS: VmHWM of the child process, MB (after warming the detector alone). "
        f"Fastest of {payload['repeat']} run(s) each, taking turns.",
        "",
        f"Against `detect_slide` on the same slide in the same run (`tissue_only=False`): {ds['seconds']:.1f} s, "
        f"{ds['nuclei']:,} nuclei, peak RSS {ds['peak_rss_mb']:.0f} MB ({ds['detector_rss_mb']:.0f}); the stream as fast as "
        f"possible took **{fast['seconds'] / ds['seconds']:.2f}×** its time, "
        f"{'the same' if fast['nuclei'] == ds['nuclei'] else 'NOT the same'} {fast['nuclei']:,} nuclei.",
        "",
        "| run | slide px | fields | blocks | s | nuclei | peak RSS MB (detector alone) | pixels held, peak MB | slide MB | one field row MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in runs.items():
        lines.append(
            f"| {RUNS[mode][0]} | {r['width']}×{r['height']} | {r['fields']} | {r['blocks']} | {r['seconds']:.1f} | {r['nuclei']:,} | "
            f"{r['peak_rss_mb']:.0f} ({r['detector_rss_mb']:.0f}) | {r['peak_held_mb']:.1f} | {r['slide_mb']:.1f} | {r['field_row_mb']:.1f} |"
        )
    lines += ["", "Latency, median / 90th percentile / worst:", ""]
    lines += ["| run | field: arrival → all its detections final, s | the same, in fields added meanwhile | block: context complete → final, s |"]
    lines += ["|---|---|---|---|"]
    for mode, r in runs.items():
        cells = [
            " / ".join(f"{r[key][p]:{fmt}}" for p in ("p50", "p90", "p100"))
            for key, fmt in (("field_latency_s", ".2f"), ("field_latency_fields", ".0f"), ("block_latency_s", ".2f"))
        ]
        lines.append(f"| {RUNS[mode][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast-cpu", help="a bundled name or an .onnx file (default fast-cpu, the scanner PC's model)")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between fields in the paced run (default 0.25)")
    parser.add_argument("--modes", default=",".join(RUNS), help=f"comma-separated, any of: {', '.join(RUNS)} (default: all)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, taking turns; the fastest counts (default 2)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child_detect_slide(args) if args.child == "detect_slide" else child_stream(args)
        print("RESULT " + json.dumps(result))
        return
    if not SLIDE.is_file():
        sys.exit(f"{SLIDE} not found (set MICRONET_DATA to the shared data folder)")
    modes = [m for m in args.modes.split(",") if m]
    if "fast" not in modes or any(m not in RUNS for m in modes):
        sys.exit(f"--modes: expected a comma-separated list of {', '.join(RUNS)} including fast, got {args.modes!r}")
    peaks = [matmul_peaks()]
    best: dict[str, dict[str, Any]] = {}
    for rep in range(args.repeat):
        for mode in [*modes, "detect_slide"]:
            print(f"{mode}, run {rep + 1} ...", file=sys.stderr, flush=True)
            r = measure(args, mode)
            r["runs_s"] = best.get(mode, {}).get("runs_s", []) + [r["seconds"]]
            best[mode] = r if mode not in best or r["seconds"] < best[mode]["seconds"] else {**best[mode], "runs_s": r["runs_s"]}
    peaks.append(matmul_peaks())
    reference = best.pop("detect_slide")
    payload = {"machine": run_machine(peaks), "model": args.model, "interval_s": args.interval, "repeat": args.repeat,
               "runs": best, "detect_slide": reference}  # fmt: skip
    write_results("stream", payload, render(payload))


if __name__ == "__main__":
    main()
