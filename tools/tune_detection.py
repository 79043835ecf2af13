"""Chooses a checkpoint's minimum peak distance and threshold ξ together on validation
images, and writes a copy of the checkpoint that carries them (ModelInfo.min_distance,
ModelInfo.threshold), which every export then inherits.

    python tools/tune_detection.py runs/x/best.safetensors --data ../shared/data/crchisto \
        --split val --radius 6 -o runs/x/tuned.safetensors [--min-distance 2 3 4 5 6]

Training chooses ξ at a fixed minimum distance (3 px); a model whose maps separate
neighbours differently can gain from another spacing. Prints one row per distance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", required=True, help="point-annotated data set folder")
    parser.add_argument("--split", default="val", help="split of the data set (default: val)")
    parser.add_argument("--radius", type=float, default=6.0, help="matching radius in the data's pixels")
    parser.add_argument("--min-distance", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    parser.add_argument("-o", "--output", type=Path, required=True, help="the tuned checkpoint (a new file)")
    args = parser.parse_args(argv)

    from micronet.trainer.checkpoint import load_checkpoint, save_checkpoint
    from micronet.trainer.validate import tune_detection

    md, threshold, rows = tune_detection(str(args.checkpoint), args.data, args.split, args.radius, args.min_distance)
    for r in rows:
        print(f"min distance {r['min_distance']}: ξ {r['threshold']:.4f}  P {r['precision']:.4f}  R {r['recall']:.4f}  F1 {r['f1']:.4f}")
    model, info = load_checkpoint(args.checkpoint)
    info.min_distance = md
    info.threshold = threshold
    info.provenance["detection_tuning"] = {"data": args.data, "split": args.split, "radius": args.radius, "rows": rows}
    save_checkpoint(args.output, model, info)
    print(json.dumps({"min_distance": md, "threshold": threshold, "output": str(args.output)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
