"""The colour target and the out-of-distribution threshold of ``micronet.runtime.stain``.

    python benchmarks/colour_threshold.py [--model default]

Measures :func:`~micronet.runtime.stain.training_colour_stats` on CRCHisto's 70 training
images (what :data:`~micronet.runtime.stain.DEFAULT_TARGET` records), then
:func:`~micronet.runtime.stain.colour_distance` from it of every CRCHisto (100) and
MoNuSeg (13) image, clean and darkened to half (RGB × 0.5, floored to uint8), as the
Detector measures an image (every pixel). :data:`~micronet.runtime.stain.OOD_THRESHOLD`
must lie above every clean distance and below every darkened one (issue 19: no warning
on a clean image, a warning on every darkened one); the margins are recorded beside it.
With ``--model M`` the distances are measured from the colour statistics that model
carries (``ModelInfo.colour``, what its Detector compares with) instead. ``--hue T …``
adds, per group, the distances of each image turned by T of a hue turn (the robustness
benchmark's ``hue`` family): how far the check sees a hue shift, and how far each image's
hematoxylin and eosin vectors (Macenko) turn from the target's, clean (turn 0) and turned:
whether any stain statistic tells a turned image from a clean one.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA  # noqa: E402
from _perturbations import hue_rotate  # noqa: E402

from micronet.runtime import stain  # noqa: E402
from micronet.runtime.images import read_image  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="measure from this model's colour statistics (a file or bundled name)")
    parser.add_argument("--hue", type=float, nargs="+", default=[], help="also report the distances of images turned by these hue turns")
    args = parser.parse_args(argv)
    split = {row["name"]: row["split"] for row in csv.DictReader(open(DATA / "crchisto" / "split.csv"))}
    crc = sorted((DATA / "crchisto" / "images").glob("*.png"))
    monuseg = sorted((DATA / "monuseg" / "images").glob("*.png"))
    if args.model:
        from micronet.runtime import Detector

        target = Detector(args.model, device="cpu", threads=1).colour_target  # what its Detector compares with
        print(f"{args.model}: colour statistics", json.dumps(target.to_dict()))
    else:
        target = stain.training_colour_stats(read_image(p) for p in crc if split[p.stem] == "train")
        print("DEFAULT_TARGET =", json.dumps(target))
    rows = []
    turned: dict[tuple[str, float], list[tuple[float, float, float]]] = {}  # (group, turn) → (distance, H°, E°)
    for path in crc + monuseg:
        image = read_image(path)
        group = split.get(path.stem, "monuseg")
        stats = stain.measure(image)
        dark = stain.colour_distance(stain.measure((image * 0.5).astype(np.uint8)), target)
        rows.append((group, path.stem, stain.colour_distance(stats, target), dark))
        for t in [0.0, *args.hue] if args.hue else []:  # turn 0: the clean statistics, measured once
            turned.setdefault((group, t), []).append(_turned(stats if t == 0 else stain.measure(hue_rotate(image, t)), target))
    for group in ("train", "val", "test", "monuseg"):
        clean = [r[2] for r in rows if r[0] == group]
        dark = [r[3] for r in rows if r[0] == group]
        print(f"{group}: {len(clean)} images, clean largest {max(clean):.3f}, darkened smallest {min(dark):.3f}")
    worst_clean = max(rows, key=lambda r: r[2])
    worst_dark = min(rows, key=lambda r: r[3])
    threshold = stain.OOD_THRESHOLD
    print(f"clean largest {worst_clean[2]:.3f} ({worst_clean[1]}), darkened smallest {worst_dark[3]:.3f} ({worst_dark[1]})")
    print(
        f"OOD_THRESHOLD {threshold:g}: {threshold - worst_clean[2]:.3f} above every clean image "
        f"({threshold / worst_clean[2]:.2f}×), {worst_dark[3] - threshold:.3f} below every darkened one ({worst_dark[3] / threshold:.2f}×)"
    )
    quiet = all(r[2] <= threshold for r in rows) and all(r[3] > threshold for r in rows)
    print("quiet on every clean image and fires on every darkened one:", quiet)
    for (group, t), values in sorted(turned.items()):
        d, h, e = np.array(values).T
        print(
            f"{group} hue {t:+g}: distance smallest {min(d):.3f}, median {np.median(d):.3f}, largest {max(d):.3f}; "
            f"H vector {np.nanmin(h):.1f}–{np.nanmax(h):.1f}°, E vector {np.nanmin(e):.1f}–{np.nanmax(e):.1f}° from the target's"
        )


def _turned(stats: stain.StainStats, target: Any) -> tuple[float, float, float]:
    """``(colour distance, H angle, E angle)`` of an image's statistics: the angles in degrees
    between its Macenko stain vectors and the target's (NaN without stained pixels)."""
    target = stain.target_stats(target)
    if stats.stains is None or target.stains is None:
        return stain.colour_distance(stats, target), math.nan, math.nan
    h, e = (math.degrees(math.acos(min(1.0, float(np.dot(a, b))))) for a, b in zip(stats.stains, target.stains))
    return stain.colour_distance(stats, target), h, e


if __name__ == "__main__":
    main()
