"""Focus cell by cell: what deconvolving only an image's soft cells buys over one σ for the
whole image, on CRCHisto test mosaics whose quadrants are out of focus by different amounts.

    python benchmarks/focus_cells.py [--model default --model fast-cpu] [--sigma 2.0]
    python benchmarks/focus_cells.py --split train --model fast-cpu --cell 128 --cell 192 --cell 256 --name focus_cells_train

Each mosaic is four CRCHisto images of ``--split`` (``test`` by default) side by side
(1000² px at 0.55 µm/px, the bundled models' pixel size, so nothing is resampled): five
mosaics from the 20 test images (``--split train``: 17 from the 70 training images, where
the cell size was chosen). In scenario "1 soft" one quadrant (a different one in each mosaic) is blurred by a Gaussian
of ``--sigma`` px; in "3 soft" every quadrant but that one is. Three ways to run each:

- ``None``: ``Detector(deblur=None)``, no deconvolution;
- ``one σ``: the image measured whole and, when out of focus, deconvolved whole at its
  median blur (what ``deblur="auto"`` did before the focus map, and still does to an image
  up to half a megapixel: ``focus.deblur_whole``), then ``deblur=None``;
- ``cells``: ``Detector(deblur="auto")``, which judges an image of more than half a
  megapixel cell by cell (``focus.deblur_cells``).

The quadrants are blurred apart, so the seams between them are sharp steps: a cell across a
seam can read in focus, which leaves part of a soft quadrant untouched (conservative for
``cells``; a real focus change has no such seam).

F1 within 6 px (CRCHisto's radius) pooled over the soft quadrants and over the sharp ones,
each quadrant scored on its own detections and annotations, beside the same quadrants of
the unblurred mosaics (``clean``, ``deblur="auto"``). ``--cell`` runs ``cells`` at other
cell sizes (``focus.CELL``) too. Nothing was tuned on the test images: the cell size was
chosen on the training mosaics, the edge gate and threshold on CRCHisto training images and
CMU-1 (docs/results.md, sixteenth round). Writes ``results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, write_results  # noqa: E402
from _perturbations import blur  # noqa: E402  (the robustness benchmark's Gaussian blur)

from micronet.runtime import focus  # noqa: E402
from micronet.runtime.detector import Detector  # noqa: E402
from micronet.runtime.evaluation.matching import evaluate_points  # noqa: E402
from micronet.runtime.evaluation.metrics import pool_metrics  # noqa: E402

RADIUS = 6.0
SIDE = 500  # a CRCHisto image's side: a mosaic's quadrant


def mosaics(sigma: float, split: str) -> list[dict]:
    """2 × 2 mosaics of the CRCHisto images of ``split``, each with its quadrants' points (in
    mosaic pixels) and, per scenario, the mosaic with its soft quadrants blurred."""
    from micronet.runtime.evaluation.datasets import load_point_folder

    data = load_point_folder(DATA / "crchisto", split)
    out = []
    for m in range(len(data) // 4):
        images = [np.ascontiguousarray(im[:SIDE, :SIDE]) for im in data.images[4 * m : 4 * m + 4]]
        corners = [(0, 0), (SIDE, 0), (0, SIDE), (SIDE, SIDE)]  # (x, y) of quadrant 0..3
        points = [p[(p[:, 0] < SIDE) & (p[:, 1] < SIDE)] + np.array(c, float) for p, c in zip(data.points[4 * m : 4 * m + 4], corners)]
        odd = m % 4  # the quadrant that differs from the others
        soft = {"1 soft": {odd}, "3 soft": set(range(4)) - {odd}}
        views = {"clean": (images, set())} | {k: ([blur(im, sigma) if q in s else im for q, im in enumerate(images)], s) for k, s in soft.items()}
        built = {k: (np.concatenate([np.concatenate(ims[:2], 1), np.concatenate(ims[2:], 1)], 0), s) for k, (ims, s) in views.items()}
        out.append({"names": data.names[4 * m : 4 * m + 4], "corners": corners, "points": points, "views": built})
    return out


def quadrant_metrics(xy: np.ndarray, mosaic: dict) -> list:
    """Each quadrant's PointMetrics from the detections inside it."""
    result = []
    for (x0, y0), truth in zip(mosaic["corners"], mosaic["points"]):
        inside = (xy[:, 0] >= x0) & (xy[:, 0] < x0 + SIDE) & (xy[:, 1] >= y0) & (xy[:, 1] < y0 + SIDE)
        result.append(evaluate_points(xy[inside], truth, RADIUS))
    return result


def picked(per: list[list], sets: list[dict], scenario: str, soft: bool) -> list:
    """The quadrants' metrics of every mosaic that are (``soft``) or are not blurred in ``scenario``."""
    return [q for qs, s in zip(per, sets) for i, q in enumerate(qs) if (i in s["views"][scenario][1]) == soft]


def with_cell(cell: int, run):
    """``run`` with the focus map's cells of at least ``cell`` pixels."""

    def wrapped(im):
        kept, focus.CELL = focus.CELL, cell
        try:
            return run(im)
        finally:
            focus.CELL = kept

    return wrapped


def model_rows(model: str, sets: list[dict], cells: list[int]) -> list[dict]:
    """F1 of the soft and the sharp quadrants, pooled over the mosaics, per scenario and way."""
    auto, none = Detector(model, device="cpu", deblur="auto"), Detector(model, device="cpu", deblur=None)
    mpp = auto.info.mpp
    ways = {
        "None": lambda im: none.detect(im, mpp=mpp).xy,
        "one σ": lambda im: none.detect(focus.deblur_whole(im, mpp, focus.edge_blur_um(im, mpp)), mpp=mpp).xy,
    }
    for cell in cells:
        ways["cells" if cell == focus.CELL else f"cells of {cell}"] = with_cell(cell, lambda im: auto.detect(im, mpp=mpp).xy)
    clean = [quadrant_metrics(auto.detect(s["views"]["clean"][0], mpp=mpp).xy, s) for s in sets]
    rows = []
    for scenario in ("1 soft", "3 soft"):
        for way, run in ways.items():
            per = [quadrant_metrics(run(s["views"][scenario][0]), s) for s in sets]
            row = {"model": model, "scenario": scenario, "way": way}
            for part in ("soft", "sharp"):
                got = pool_metrics(picked(per, sets, scenario, part == "soft"))
                ref = pool_metrics(picked(clean, sets, scenario, part == "soft"))
                row[part] = {"f1": got.f1, "precision": got.precision, "recall": got.recall, "clean_f1": ref.f1}
            rows.append(row)
            print(row, flush=True)
    auto.close()
    none.close()
    return rows


def table(rows: list[dict], sigma: float, split: str, count: int) -> str:
    lines = [
        f"CRCHisto {split} mosaics ({count} × 1000², four images each) with quadrants blurred by σ {sigma:g} px; F1 within {RADIUS:g} px "
        "of the soft and of the sharp quadrants, pooled, and the same quadrants unblurred (`clean`).",
        "",
        "| model | scenario | way | soft quadrants F1 | (clean) | sharp quadrants F1 | (clean) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['scenario']} | {r['way']} | {r['soft']['f1']:.4f} | {r['soft']['clean_f1']:.4f} | {r['sharp']['f1']:.4f} | {r['sharp']['clean_f1']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="bundled name or model file (default: default and fast-cpu)")
    parser.add_argument("--sigma", type=float, default=2.0, help="the soft quadrants' Gaussian blur, px (default 2)")
    parser.add_argument("--split", default="test", help="CRCHisto split the mosaics are made of (default test)")
    parser.add_argument("--cell", type=int, action="append", help=f"focus-map cell sizes to run (default: focus.CELL, {focus.CELL})")
    parser.add_argument("--name", default="focus_cells", help="results/<name>.json and .md")
    args = parser.parse_args()
    sets = mosaics(args.sigma, args.split)
    rows = [r for m in (args.model or ["default", "fast-cpu"]) for r in model_rows(m, sets, args.cell or [focus.CELL])]
    payload = {"split": args.split, "sigma_px": args.sigma, "radius_px": RADIUS, "cell": focus.CELL, "rows": rows, "command": " ".join(sys.argv)}
    write_results(args.name, payload, table(rows, args.sigma, args.split, len(sets)))


if __name__ == "__main__":
    main()
