"""The focus map's cells on images the gate and the threshold were chosen on: CRCHisto
training images, sharp and blurred by σ 1, 1.5 and 2 px, and the CMU-1 slide region at the
model's pixel size (:func:`micronet.runtime.focus.focus_map_px`, cells of
:data:`~micronet.runtime.focus.CELL` px on each image's own grid).

    python benchmarks/focus_map_stats.py [--model default]

Per set: how many cells were measured (a cell that is mostly glass is not), the 1st, 50th
and 99th percentiles and the largest edge blur in µm, the share beyond
:data:`~micronet.runtime.focus.BLUR_THRESHOLD_UM`, and how many cells
:func:`~micronet.runtime.focus.soft_cells` calls out of focus (a lone cell beyond it does
not count). CMU-1 also lists its cells beyond the threshold. Writes
``results/focus_map_stats.txt`` (by a rename of a complete file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, RESULTS, run_line, run_machine  # noqa: E402
from _perturbations import blur  # noqa: E402  (the robustness benchmark's Gaussian blur)

from micronet.runtime import focus  # noqa: E402
from micronet.runtime.detector import Detector  # noqa: E402
from micronet.runtime.resample import resample  # noqa: E402


def line(name: str, maps: list[np.ndarray]) -> str:
    values = np.concatenate([m[~np.isnan(m)] for m in maps])
    cells = sum(m.size for m in maps)
    soft = sum(int(focus.soft_cells(m).sum()) for m in maps)
    p1, p50, p99 = np.percentile(values, [1, 50, 99])
    return (
        f"{name:34s} cells measured {values.size:5d} of {cells:5d}  µm p1 {p1:.2f} p50 {p50:.2f} p99 {p99:.2f} max {values.max():.2f}  "
        f"beyond {focus.BLUR_THRESHOLD_UM:g}: {100 * np.mean(values > focus.BLUR_THRESHOLD_UM):5.1f} %  soft cells: {soft}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="whose pixel size (default: default)")
    args = parser.parse_args()
    from micronet.runtime.evaluation.datasets import load_point_folder
    from micronet.runtime.slide import open_slide

    mpp = Detector(args.model, device="cpu").info.mpp
    data = load_point_folder(DATA / "crchisto", "train")
    ratio = data.mpp / mpp
    images = [resample(im, None, ratio)[0] for im in data.images]
    lines = []
    for sigma in (0.0, 1.0, 1.5, 2.0):
        maps = [focus.focus_map_px(blur(im, sigma) if sigma else im) * mpp for im in images]
        lines.append(line(f"CRCHisto train ({len(images)}), " + (f"σ {sigma:g} px" if sigma else "sharp"), maps))
    slide = open_slide(DATA / "slides" / "CMU-1-Small-Region.svs")
    try:
        h, w = slide.shape[:2]
        region, slide_mpp = slide.read_region(0, 0, 0, w, h), float(slide.mpp)
    finally:
        slide.close()
    cmu = resample(region, None, slide_mpp / mpp)[0]
    m = focus.focus_map_px(cmu) * mpp
    lines.append(line("CMU-1 region (one image)", [m]))
    beyond = [f"({i}, {j}) {m[i, j]:.2f}" for i, j in np.argwhere(np.nan_to_num(m) > focus.BLUR_THRESHOLD_UM)]
    lines.append(f"  CMU-1 cells beyond {focus.BLUR_THRESHOLD_UM:g} µm (row, column of {m.shape}): {', '.join(beyond) or 'none'}")
    text = f"Machine: {run_line(run_machine())}.\nCells of {focus.CELL} px (focus.cell_edges), at {mpp} µm/px.\n\n" + "\n".join(lines) + "\n"
    out = RESULTS / "focus_map_stats.txt"
    tmp = out.with_suffix(".txt.partial")
    tmp.write_text(text)
    tmp.replace(out)
    print(text)


if __name__ == "__main__":
    main()
