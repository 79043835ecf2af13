"""Flip test-time augmentation: what ``Detector(tta=True)`` costs and what it gains, for
the bundled default model on the CPU (ONNX Runtime), in one run.

    python benchmarks/bench_tta.py [--repeat 5] [--no-f1] [--quick]

**Cost.** ``Detector("default", device="cpu")`` with ``tta=False`` and ``tta=True``
(4 passes: as is, flipped left-right, up-down, both; maps averaged before the peaks)
on two images: the bundled sample (512², ``micronet detect --demo``'s image) and a 1024²
crop of a mosaic of CRCHisto test images (the CPU tile size: one tile). Timed end to end
(``detect`` on an array: inference, the flips and the mean, the peaks), interleaved
(one call of each configuration per round, the best call counts), so a change in the
load of a shared machine hits them alike. Three configurations: one pass; tta with the
CPU's default batch size 1 (the 4 passes one after another); tta with ``batch_size=4``
(the 4 passes in one ONNX Runtime call).

**Accuracy.** ``micronet evaluate --model default --data ../shared/data/crchisto
--split test --radius 6 [--tta]`` (:func:`micronet.runtime.evaluation.evaluate.evaluate_model_file`):
pooled P / R / F1 at the model's ξ (chosen on validation data without tta), and the best
F1 over the threshold sweep on the test set itself (an upper bound, not an operating
point).

Writes ``benchmarks/results/tta.json`` and ``tta.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    DATA,
    interleaved_best,
    matmul_peaks,
    peak_text,
    run_machine,
    tissue_batch,
    write_results,
)

CONFIGS = {
    "one pass": {"tta": False},
    "tta, batch 1": {"tta": True},
    "tta, batch 4": {"tta": True, "batch_size": 4},
}
REFERENCE = "one pass"
COMMAND = "micronet evaluate --model default --data ../shared/data/crchisto --split test --radius 6"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per image, best counts (default 5; 3 at 1024²)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: physical cores)")
    parser.add_argument("--no-f1", action="store_true", help="skip the CRCHisto test-split evaluation (about 5 minutes on 2 cores)")
    parser.add_argument("--quick", action="store_true", help="2 rounds, the sample only, no F1")
    return parser.parse_args()


def time_configs(detectors: dict[str, Any], images: dict[str, np.ndarray], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per image and configuration: its best time, the ratio to one pass, and how
    many of its detections lie within 2 px of one pass's."""
    from micronet.runtime.evaluation.matching import evaluate_points

    rows = []
    for label, image in images.items():
        repeat = 2 if args.quick else (args.repeat if image.shape[0] <= 512 else max(2, (args.repeat + 1) // 2))
        mpp = detectors[REFERENCE].info.mpp  # both images are at the model's pixel size
        found = {name: det.detect(image, mpp=mpp) for name, det in detectors.items()}
        times = interleaved_best({name: (lambda d=det, x=image, m=mpp: d.detect(x, mpp=m)) for name, det in detectors.items()}, repeat)
        single = found[REFERENCE]
        for name, t in times.items():
            agree = evaluate_points(found[name].xy, single.xy, 2.0)
            rows.append(
                {
                    "image": label,
                    "size": list(image.shape[:2]),
                    "config": name,
                    **CONFIGS[name],
                    "repeat": repeat,
                    "ms": t * 1e3,
                    "x_one_pass_time": t / times[REFERENCE],
                    "detections": len(found[name]),
                    "matched_within_2px_of_one_pass": agree.tp,
                    "share_matched_within_2px": agree.tp / max(len(found[name]), len(single), 1),
                }
            )
    return rows


def evaluate_f1() -> dict[str, dict[str, Any]]:
    """``micronet evaluate`` of the default model on the CRCHisto test split, without and
    with tta: ``{"one pass": ..., "tta": ...}``."""
    from micronet.runtime.evaluation.evaluate import evaluate_model_file

    f1: dict[str, dict[str, Any]] = {}
    for tta in (False, True):
        started = time.perf_counter()
        ev = evaluate_model_file("default", DATA / "crchisto", split="test", radius=6.0, tta=tta, progress=False)
        pooled = ev.report.pooled
        f1["tta" if tta else "one pass"] = {
            "command": COMMAND + (" --tta" if tta else ""),
            "threshold": ev.threshold,
            "precision": pooled.precision,
            "recall": pooled.recall,
            "f1": pooled.f1,
            "mean_distance": pooled.mean_distance,
            "best_threshold_on_test": ev.sweep.best_threshold,
            "best_f1_on_test": ev.sweep.best_f1,
            "images": len(ev.report.per_image),
            "seconds": time.perf_counter() - started,
        }
    return f1


def report_lines(machine: dict[str, Any], threads: int, model_name: str, rows: list[dict[str, Any]], ratio: dict[str, float], f1: dict[str, dict[str, Any]]) -> list[str]:
    """The markdown: the cost table, then the accuracy table when F1 was measured."""
    lines = [
        (
            f"`Detector(\"default\", device=\"cpu\")` ({model_name}, ONNX Runtime, {threads} threads), "
            "end to end on an array (inference, flips and mean, peaks); best of interleaved rounds. "
            f"Machine yardstick: {peak_text(machine)}."
        ),
        "",
        "**Cost of tta** (time with tta / time with one pass, same run): "
        + ", ".join(f"{k}: **{v:.2f}×**" for k, v in ratio.items())
        + ".",
        "",
        "| image | configuration | ms | × one pass | detections | within 2 px of one pass |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['image']} | {r['config']} | {r['ms']:.0f} | {r['x_one_pass_time']:.2f}× | {r['detections']} | "
        f"{100 * r['share_matched_within_2px']:.1f}% |"
        for r in rows
    ]
    if f1:
        lines += [
            "",
            (
                f"CRCHisto test split ({next(iter(f1.values()))['images']} images, radius 6 px), `{COMMAND} [--tta]`; "
                "ξ is the model's, chosen on validation data without tta:"
            ),
            "",
            "| | ξ | P | R | F1 | ED px | best F1 over ξ on test (ξ) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {v['threshold']:.3f} | {v['precision']:.4f} | {v['recall']:.4f} | **{v['f1']:.4f}** | "
            f"{v['mean_distance']:.2f} | {v['best_f1_on_test']:.4f} ({v['best_threshold_on_test']:.2f}) |"
            for name, v in f1.items()
        ]
    return lines


def main() -> None:
    args = parse_args()
    from micronet.runtime.detector import Detector, bundled_model, bundled_sample, read_image
    from micronet.runtime.machine import physical_cores

    threads = args.threads or physical_cores()
    detectors = {name: Detector("default", device="cpu", threads=threads, **options) for name, options in CONFIGS.items()}
    images = {"bundled sample 512²": read_image(bundled_sample())}
    if not args.quick:
        images["CRCHisto test mosaic 1024²"] = tissue_batch(1024, 1)[0]

    peaks = [matmul_peaks()]
    rows = time_configs(detectors, images, args)
    peaks.append(matmul_peaks())
    f1: dict[str, dict[str, Any]] = {}
    if not (args.no_f1 or args.quick):
        f1 = evaluate_f1()
        peaks.append(matmul_peaks())
    machine = run_machine(peaks)

    ratio = {r["image"]: r["x_one_pass_time"] for r in rows if r["config"] == "tta, batch 1"}
    lines = report_lines(machine, threads, bundled_model("default").name, rows, ratio, f1)
    write_results(
        "tta",
        {
            "machine": machine,
            "threads": threads,
            "model": bundled_model("default").name,
            "settings": {"repeat": args.repeat, "quick": args.quick, "configs": CONFIGS},
            "tta_over_one_pass_time": ratio,
            "rows": rows,
            "crchisto_test": f1,
        },
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()
