"""Scores class-head fits on their held-out training images the way the test split is
scored: the exported model detects, detections are matched to the annotations within
r = 6 px (the Hungarian matcher) and the class is read at each *detected* peak (the SC-CNN
protocol of `micronet evaluate`), not at each annotated nucleus's own pixel as the fit's
own held-out score does.

Each checkpoint is a `micronet fit-classes --holdout F` output; its provenance names the
images it held out. Never a validation or test image: choosing a head by these scores
keeps the test split honest.

    python tools/class_holdout.py runs/r5/hold_*.safetensors [--int8 --calibration-data ../shared/data/crchisto] \
        [--json runs/r5/holdout.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from micronet.export.onnx import export_onnx
from micronet.runtime.detector import Detector
from micronet.runtime.evaluation.class_metrics import evaluate_classes
from micronet.runtime.evaluation.datasets import load_point_folder
from micronet.trainer.checkpoint import load_checkpoint


def held_out_images(checkpoint: Path) -> list[str]:
    _, info = load_checkpoint(checkpoint)
    scores = info.provenance.get("class_head", {}).get("scores", {})
    if "held_out_images" not in scores:
        sys.exit(f"{checkpoint}: not a fit-classes --holdout checkpoint (no held_out_images in its provenance)")
    return list(scores["held_out_images"])


def score(checkpoint: Path, data: Path, precision: str, calibration: Path | None, radius: float) -> dict:
    names = held_out_images(checkpoint)
    every = load_point_folder(data, "train")
    held = set(names)
    keep = [i for i, n in enumerate(every.names) if n in held]
    if len(keep) != len(names):
        sys.exit(f"{checkpoint}: held-out images missing from {data}'s training split")
    subset = replace(every, names=[every.names[i] for i in keep], images=[every.images[i] for i in keep],
                     points=[every.points[i] for i in keep])
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_onnx(checkpoint, Path(tmp) / "model.onnx", precision=precision, calibration_data=calibration)
        scores = evaluate_classes(Detector(str(onnx)), subset, radius, progress=False)
    out = {"checkpoint": str(checkpoint), "precision": precision, "images": len(keep), **scores.as_dict()}
    per = ", ".join(f"{n} {f:.3f}" for n, f in zip(scores.names, scores.f1))
    print(f"{checkpoint}: weighted class F1 {scores.weighted_f1:.4f} at detected peaks ({per}; {len(keep)} images)", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--data", type=Path, default=Path("../shared/data/crchisto"))
    p.add_argument("--radius", type=float, default=6.0)
    p.add_argument("--int8", action="store_true", help="score the int8 export (needs --calibration-data)")
    p.add_argument("--calibration-data", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    precision = "int8" if args.int8 else "fp32"
    rows = [score(c, args.data, precision, args.calibration_data, args.radius) for c in args.checkpoints]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
