"""Two models on the real, unannotated slide regions of ../shared/data/slides: detection
counts and an overlay of each model's detections on a crop of each region, side by side.

    python tools/compare_on_slides.py --model runs/old_models/micronet_crchisto.onnx --label "previous default" \
        --model default --label "default" [--out docs/results/slides_compare.png]

No annotations exist for these regions: the overlay is for looking (the epidermis band
and keratin of CMU-1, the pale vacuoles of OS-1), the counts for comparing with other
tools (StarDist in QuPath finds 331 nuclei on OS-1-detail, issue 13).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SLIDES = REPO.parent / "shared" / "data" / "slides"
# (file, crop box (x0, y0, x1, y1) in level-0 pixels shown in the overlay)
REGIONS = [("CMU-1-Small-Region.svs", (1050, 1150, 1650, 1750)), ("OS-1-detail.ome.tif", (200, 200, 800, 800))]


def read_region(path: Path) -> tuple[np.ndarray, float]:
    """The region's RGB pixels at level 0 and its µm/px (from the file's metadata)."""
    from micronet.runtime.slide import open_slide

    with open_slide(path) as slide:
        h, w = slide.shape
        image = np.asarray(slide.read_region(0, 0, 0, w, h))[..., :3]
        return np.ascontiguousarray(image), float(slide.mpp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--label", action="append", required=True)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "slides_compare.png")
    args = parser.parse_args(argv)
    if len(args.model) != len(args.label):
        raise SystemExit("--label: one per --model")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from micronet.runtime.detector import Detector
    from micronet.runtime.files import replace_atomically

    detectors = [Detector(m, device="cpu") for m in args.model]
    counts: dict[str, dict[str, int]] = {}
    fig, axes = plt.subplots(len(REGIONS), len(detectors), figsize=(5 * len(detectors), 5 * len(REGIONS)), squeeze=False)
    for row, (name, (x0, y0, x1, y1)) in enumerate(REGIONS):
        image, mpp = read_region(SLIDES / name)
        for col, (label, det) in enumerate(zip(args.label, detectors)):
            xy = det.detect(image, mpp=mpp).xy
            counts.setdefault(name, {})[label] = int(len(xy))
            inside = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
            ax = axes[row, col]
            ax.imshow(image[y0:y1, x0:x1])
            ax.scatter(xy[inside, 0] - x0, xy[inside, 1] - y0, s=9, c="lime", edgecolors="black", linewidths=0.3)
            ax.set_title(f"{label}: {name}\n{len(xy)} detections in the region, {int(inside.sum())} in this crop", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Complete or absent: each file is written under a temporary name, then renamed.
    replace_atomically(args.out, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    record = {"models": dict(zip(args.label, args.model)), "counts": counts}
    json_path = REPO / "benchmarks" / "results" / "slides_compare.json"
    replace_atomically(json_path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    print(json.dumps(record, indent=2))
    print(f"wrote {args.out} and {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
