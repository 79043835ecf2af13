"""Cohort scaling: the same cohort of slides run serially in this process and on a local
Ray runtime with 1 and 2 workers. Writes results/cohort.json and .md.

    python benchmarks/bench_cohort.py [--slides 6] [--model fast-cpu] [--formats csv]

The cohort is ``--slides`` copies of CMU-1-Small-Region.svs (a real Aperio slide,
2220×2967 at 0.499 µm/px) under other names, each run through exactly what ``micronet
detect`` runs per input (``micronet.runtime.runs.batch.process_input``), into a fresh output
folder per configuration. Serially the Detector uses every core; on Ray each worker
gets ``cores / workers`` ONNX Runtime threads, so the configurations use the same CPUs.
Reported per configuration: wall time, slides/hour, megapixels/s (level-0 pixels),
the speed against serial, peak resident memory per worker, and for Ray the start-up of
the runtime and the overhead per slide (Ray's wall time less start-up, less the serial
time, per slide). On 2 cores this measures Ray's cost, not its gain: the gain comes
from more cores and more machines (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, run_machine, write_results  # noqa: E402


def _run(slides: list[Path], out: Path, model: str, formats: tuple[str, ...], ray_address: str | None, workers: int | None, threads: int | None) -> dict:
    from micronet.runtime.runs.batch import RunSettings, process_input
    from micronet.runtime.runs.cohort import DetectorSpec, run_cohort

    process = partial(process_input, out_dir=out, settings=RunSettings(formats=formats))
    startup = 0.0
    if ray_address is not None:
        import ray

        t0 = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="warning")
        startup = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        rows = run_cohort(slides, process, DetectorSpec(model, "cpu", threads=threads), ray_address=ray_address, workers=workers, progress=False)
        seconds = time.perf_counter() - t0
    finally:
        if ray_address is not None:
            import ray

            ray.shutdown()
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"bench_cohort: {len(failed)} slides failed: {failed[0].get('error')}")
    per_worker: dict[str, float] = {}
    for r in rows:
        per_worker[r["worker"]] = max(per_worker.get(r["worker"], 0.0), float(r.get("worker_peak_rss_mb") or 0.0))
    return {
        "seconds": seconds,
        "startup_s": startup,
        "megapixels": sum(float(r["megapixels"]) for r in rows),
        "nuclei": sum(int(r["nuclei"]) for r in rows),
        "workers": len(per_worker),
        "peak_rss_mb_per_worker": max(per_worker.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=6, help="copies of CMU-1 in the cohort (default 6)")
    parser.add_argument("--model", default="fast-cpu", help="model file or bundled name (default fast-cpu)")
    parser.add_argument("--formats", default="csv", help="outputs per slide (default csv)")
    args = parser.parse_args(argv)

    from micronet.runtime.machine import physical_cores

    source = DATA / "slides" / "CMU-1-Small-Region.svs"
    if not source.is_file():
        raise SystemExit(f"bench_cohort: {source} not found (../shared/data)")
    cores = physical_cores()
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    work = Path(tempfile.mkdtemp(prefix="micronet-bench-cohort-"))
    try:
        slides = []
        for k in range(args.slides):
            shutil.copy(source, work / f"slide{k:03d}.svs")
            slides.append(work / f"slide{k:03d}.svs")
        configs = [("serial (this process)", None, None, None), ("Ray, 1 worker", "local", 1, cores)]
        if cores >= 2:
            configs.append(("Ray, 2 workers", "local", 2, max(1, cores // 2)))
        results = []
        for name, address, workers, threads in configs:
            print(f"{name} ...", file=sys.stderr, flush=True)
            r = _run(slides, work / f"out-{len(results)}", args.model, formats, address, workers, threads)
            r.update(config=name, threads_per_worker=threads or cores)
            results.append(r)
            print(f"  {r['seconds']:.1f} s (+ {r['startup_s']:.1f} s start-up)", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    serial = results[0]
    for r in results:
        r["slides_per_hour"] = args.slides / r["seconds"] * 3600
        r["megapixels_per_s"] = r["megapixels"] / r["seconds"]
        r["speed_vs_serial"] = serial["seconds"] / r["seconds"]
        r["ray_overhead_s_per_slide"] = None if r is serial else (r["seconds"] - serial["seconds"]) / args.slides
    lines = [
        f"{args.slides} copies of CMU-1-Small-Region.svs (2220×2967, 0.499 µm/px), model `{args.model}`, outputs {', '.join(formats)}; "
        f"the same {cores} cores in every configuration (ONNX Runtime threads per worker = cores / workers).",
        "",
        "| configuration | workers × threads | wall s | × serial | slides/hour | MP/s | Ray start-up s | Ray overhead s/slide | peak RSS MB per worker |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        overhead = "–" if r["ray_overhead_s_per_slide"] is None else f"{r['ray_overhead_s_per_slide']:+.2f}"
        startup = "–" if r["startup_s"] == 0 else f"{r['startup_s']:.1f}"
        lines.append(
            f"| {r['config']} | {r['workers']} × {r['threads_per_worker']} | {r['seconds']:.1f} | {r['speed_vs_serial']:.2f}× | "
            f"{r['slides_per_hour']:.0f} | {r['megapixels_per_s']:.2f} | {startup} | {overhead} | {r['peak_rss_mb_per_worker']:.0f} |"
        )
    lines += [
        "",
        "Ray overhead per slide: (Ray wall time − serial wall time) / slides, start-up excluded; it includes the cost of "
        "splitting the cores between workers. Peak RSS: the worker process (the serial row: this process).",
    ]
    write_results("cohort", {"machine": run_machine(), "settings": vars(args), "rows": results}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
