"""The held-out outside source (issue 19): recall of each bundled model, with and without
input normalisation, and of the classical peer, on tiles from a lab, scanner and
preparation that no model here ever trained, tuned or distilled on.

    python tools/import_cryonuseg.py CryoNuSeg -o ../outside/cryonuseg    # once (its docstring)
    python benchmarks/bench_outside.py --data ../outside/cryonuseg \\
        [--model default --model fast-cpu --model phenotypes] [--normalize reinhard ...]

The source: the two annotated CryoNuSeg tiles its repository holds (TCGA frozen sections,
40×, 0.25 µm/px; MIT; ``tools/import_cryonuseg.py``). Their annotations are **partial**:
each tile has hand-drawn outlines over part of its nuclei only, so a detection that
matches no annotation may be a nucleus nobody outlined. Precision and F1 would be wrong;
what is scored is **recall** (the share of annotated nuclei found, Hungarian matching
within 16 px = 4 µm, as MoNuSeg) and the number of detections per tile, beside it, so a
model cannot buy recall with a flood of points unseen. Each model runs on the CPU at its
own ξ. Writes ``results/<name>.json`` and ``.md`` (default ``outside``), complete files.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classical  # noqa: E402
from _common import RESULTS, run_line  # noqa: E402
from bench_pareto import CLASSICAL, MONUSEG_RADIUS  # noqa: E402
from bench_robust import _ModelAction, build_runners, classical_row, model_rows  # noqa: E402

RADIUS = MONUSEG_RADIUS  # 16 px at 0.25 µm/px: 4 µm


def score(rows: list[Any], data: Any) -> list[dict[str, Any]]:
    """Per row: pooled recall, per-tile recall and detections."""
    from micronet.runtime.evaluation.matching import match_points

    out = []
    for row in rows:
        tiles = []
        for name, image, truth in zip(data.names, data.images, data.points):
            xy = np.asarray(row.run(image, data.mpp), np.float64).reshape(-1, 2)
            _, true_idx = match_points(xy, truth, RADIUS)
            tiles.append({"tile": name, "annotated": len(truth), "found": int(len(true_idx)), "detections": int(len(xy))})
        found, annotated = sum(t["found"] for t in tiles), sum(t["annotated"] for t in tiles)
        out.append({"row": row.label, "recall": found / annotated, "found": found, "annotated": annotated, "tiles": tiles})
    return out


def table(payload: dict[str, Any]) -> str:
    names = [t["tile"] for t in payload["scores"][0]["tiles"]]
    lines = [
        f"Held-out outside source: {payload['source']} ({len(names)} tiles, {payload['annotated']} annotated nuclei, partial annotations), "
        f"recall within {RADIUS:g} px (4 µm); detections per tile beside it. No model trained, tuned or distilled on these tiles.",
        "",
        "| row | recall | " + " | ".join(f"{n}: recall (detections)" for n in names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for s in payload["scores"]:
        cells = " | ".join(f"{t['found'] / t['annotated']:.3f} ({t['detections']})" for t in s["tiles"])
        lines.append(f"| {s['row']} | {s['recall']:.3f} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the point folder written by tools/import_cryonuseg.py")
    p.add_argument("--model", action=_ModelAction, help="an .onnx file or bundled name (repeatable; default: the three bundled)")
    p.add_argument("--label", action=_ModelAction, help="the row label of the --model before it")
    p.add_argument("--normalize", action="append", default=[], metavar="METHOD", help="also run each model with Detector(normalize=METHOD)")
    p.add_argument("--name", default="outside", help="results/<name>.json/.md (default outside)")
    args = p.parse_args()
    from micronet.runtime.evaluation.datasets import load_point_folder
    from micronet.runtime.files import replace_atomically
    from micronet.runtime.machine import describe_machine

    data = load_point_folder(args.data, "test")
    models = [(m, label or m) for m, label in getattr(args, "models", None) or [[n, None] for n in ("default", "fast-cpu", "phenotypes")]]
    notes: list[str] = []
    rows = model_rows(models, args.normalize, notes)
    build_runners(rows)
    rows.append(classical_row())
    scores = score(rows, data)
    payload = {
        "machine": describe_machine(measure_peak=False),
        "command": shlex.join(["python", "benchmarks/bench_outside.py", *sys.argv[1:]]),
        "source": "CryoNuSeg (github.com/masih4/CryoNuSeg@92a9192, MIT; TCGA frozen sections)",
        "mpp": data.mpp,
        "radius_px": RADIUS,
        "annotated": int(sum(len(t) for t in data.points)),
        "mean_rgb": {n: [round(float(v), 1) for v in im.reshape(-1, 3).mean(0)] for n, im in zip(data.names, data.images)},
        "rows": [r.record for r in rows],
        "notes": notes,
        "scores": scores,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    classical.write_json_atomically(RESULTS / f"{args.name}.json", payload)
    md = f"Machine: {run_line(payload['machine'])}.\n\n{table(payload)}\n"
    replace_atomically(RESULTS / f"{args.name}.md", lambda tmp: (tmp.write_text(md), tmp.chmod(0o644)))
    print(md)


if __name__ == "__main__":
    main()
