"""Cross-organ accuracy on MoNuSeg 2018 (40×, 0.25 µm/px; five organs): P / R / F1 per
organ for one or more models, as a heatmap (models × organs) plus JSON and markdown.

Images are resampled to each model's pixel size by the detector and coordinates come
back in MoNuSeg pixels; the radius is given in MoNuSeg pixels (the paper: 16 px at 40×;
6 px at 20× on CRCHisto corresponds to ≈ 13 px here).

    python benchmarks/eval_cross_organ.py --model runtime/models/micronet_crchisto.onnx [--model other.onnx ...] [--radius 16]

Checkpoints (.safetensors) are accepted too (needs torch). A model's ξ is its own.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", type=Path, required=True, help="model file (repeatable)")
    parser.add_argument("--label", action="append", help="row label per model (default: file name)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "monuseg")
    parser.add_argument("--radius", type=float, default=16.0)
    parser.add_argument("--split", help="only these images, e.g. test@benchmarks/paper/monuseg_split.csv (the 6 MoNuSeg images no bundled model trained on)")
    parser.add_argument("--results-name", default="cross_organ", help="benchmarks/results/<name>.json/.md/.png")
    return parser.parse_args()


def score_model(model: Path, data: Any, organs: list[str], radius: float) -> dict[str, dict[str, float]]:
    """One model's pooled P / R / F1 per organ and over ``"all"`` images, at its own ξ."""
    from micronet.runtime.evaluation.evaluate import model_candidates as _candidates
    from micronet.runtime.evaluation.metrics import evaluate_images

    checkpoint = None
    if model.suffix == ".safetensors":  # the trainer runs checkpoints (torch)
        from micronet.trainer.validate import checkpoint_candidates as checkpoint
    runner, info = _candidates(model, floor=0.0, checkpoint=checkpoint)
    by_organ: dict[str, list[int]] = defaultdict(list)
    preds = []
    for i, (name, image) in enumerate(zip(data.names, data.images)):
        xy, scores = runner(image, data.mpp)
        preds.append(xy[scores > info.threshold])
        by_organ[data.meta[name]["organ"]].append(i)
    row = {}
    for organ in organs + ["all"]:
        idx = by_organ[organ] if organ != "all" else list(range(len(data)))
        rep = evaluate_images([preds[i] for i in idx], [data.points[i] for i in idx], radius).pooled
        row[organ] = {"precision": rep.precision, "recall": rep.recall, "f1": rep.f1, "images": len(idx)}
    return row


def table_lines(args: argparse.Namespace, n_images: int, labels: list[str], table: dict[str, Any], cols: list[str]) -> list[str]:
    """The markdown: one row per model, F1 (P / R) per organ column."""
    lines = [f"MoNuSeg 2018 ({n_images} images{', split ' + args.split if args.split else ''}, 40×), radius {args.radius:g} px, each model at its own ξ; F1 (P / R)", "",
             "| model | " + " | ".join(f"{c} ({table[labels[0]][c]['images']})" for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for label in labels:
        cells = [f"{table[label][c]['f1']:.3f} ({table[label][c]['precision']:.2f} / {table[label][c]['recall']:.2f})" for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def plot_heatmap(table: dict[str, Any], labels: list[str], cols: list[str], radius: float, path: Path) -> None:
    """F1 as a heatmap, models × organs, to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f1 = np.array([[table[l][c]["f1"] for c in cols] for l in labels])
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 2.5, 0.6 * len(labels) + 1.6))
    im = ax.imshow(f1, vmin=0.5, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(labels)), labels)
    for (r, c), v in np.ndenumerate(f1):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.8 else "k")
    ax.set_title(f"F1 on MoNuSeg organs (radius {radius:g} px at 40×)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    from micronet.runtime.evaluation.datasets import load_point_folder

    data = load_point_folder(args.data, args.split)
    organs = sorted({data.meta[n]["organ"] for n in data.names})
    labels = args.label or [m.name for m in args.model]
    if len(labels) != len(args.model):
        raise SystemExit("--label: give one per --model")
    table: dict[str, dict[str, dict[str, float]]] = {}
    for label, model in zip(labels, args.model):
        table[label] = score_model(model, data, organs, args.radius)
        print(label, {k: round(v["f1"], 4) for k, v in table[label].items()})

    cols = organs + ["all"]
    lines = table_lines(args, len(data), labels, table, cols)
    write_results(args.results_name, {"radius": args.radius, "split": args.split, "models": {l: str(m) for l, m in zip(labels, args.model)}, "f1": table}, "\n".join(lines))
    plot_heatmap(table, labels, cols, args.radius, RESULTS / f"{args.results_name}.png")
    print(f"wrote {RESULTS / (args.results_name + '.png')}")


if __name__ == "__main__":
    main()
