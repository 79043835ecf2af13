"""Which perturbed images ``normalize="auto"`` normalises: the colour distance of every
image of the robustness benchmark's sets under each of its levels.

    python benchmarks/colour_perturbed.py [--model default] [--grades middle,strongest]

For CRCHisto test and MoNuSeg held-out (``benchmarks/bench_robust.py``'s sets and
perturbations, seed 0), clean and under each level, the smallest and largest
:func:`~micronet.runtime.stain.colour_distance` from the model's training colours
(``ModelInfo.colour``) and how many images lie beyond
:data:`~micronet.runtime.stain.OOD_THRESHOLD`: those ``auto`` normalises (with
:data:`~micronet.runtime.stain.AUTO_METHOD`) and warns of; the others run untouched, so
their detections are those of ``normalize=None``. Writes
``results/colour_perturbed.txt`` (by a rename of a complete file).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _perturbed_sets import parse_args, perturbed_sets, write_report  # noqa: E402

from micronet.runtime import stain  # noqa: E402
from micronet.runtime.detector import Detector  # noqa: E402


def distance_lines(target: stain.StainStats, grades: list[str]) -> list[str]:
    """One line per set and level: ``set level: distance min–max, k/n beyond``."""
    lines = []
    for name, _, level, images in perturbed_sets(grades):
        d = [stain.colour_distance(stain.measure(im), target) for im in images]
        beyond = sum(v > stain.OOD_THRESHOLD for v in d)
        label = "clean" if level is None else f"{level.label} ({level.grade})"
        lines.append(f"{name:8s} {label:26s} distance {min(d):.2f}–{max(d):.2f}  beyond {stain.OOD_THRESHOLD:g}: {beyond}/{len(d)}")
    return lines


def main() -> None:
    args = parse_args(__doc__, "its colour statistics are the target (a file or bundled name)")
    target = stain.target_stats(Detector(args.model, device="cpu").info.colour)
    header = [f"model {args.model}: auto applies {stain.AUTO_METHOD!r} beyond {stain.OOD_THRESHOLD:g} stops"]
    write_report("colour_perturbed", header, distance_lines(target, args.grades))


if __name__ == "__main__":
    main()
