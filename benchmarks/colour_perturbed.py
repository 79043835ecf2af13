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

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402
from _perturbations import FAMILIES, GRADES, perturbations  # noqa: E402
from bench_robust import load_sets  # noqa: E402

from micronet.runtime import stain  # noqa: E402
from micronet.runtime.detector import Detector  # noqa: E402
from micronet.runtime.files import replace_atomically  # noqa: E402


def distance_lines(target: stain.StainStats, grades: list[str]) -> list[str]:
    """One line per set and level: ``set level: distance min–max, k/n beyond``."""
    lines = []
    for name, data in load_sets(None).items():
        for level in [None, *perturbations(list(FAMILIES), grades)]:
            images = data.images if level is None else [level(im, 0, f"{name}/{n}") for im, n in zip(data.images, data.names)]
            d = [stain.colour_distance(stain.measure(im), target) for im in images]
            beyond = sum(v > stain.OOD_THRESHOLD for v in d)
            label = "clean" if level is None else f"{level.label} ({level.grade})"
            lines.append(f"{name:8s} {label:26s} distance {min(d):.2f}–{max(d):.2f}  beyond {stain.OOD_THRESHOLD:g}: {beyond}/{len(d)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="its colour statistics are the target (a file or bundled name)")
    parser.add_argument("--grades", default="middle,strongest", help=f"levels to measure (of {','.join(GRADES)})")
    args = parser.parse_args()
    grades = args.grades.split(",")
    if unknown := sorted(set(grades) - set(GRADES)):
        parser.error(f"--grades: unknown {', '.join(unknown)} (valid: {', '.join(GRADES)})")
    target = stain.target_stats(Detector(args.model, device="cpu").info.colour)
    command = " ".join(["python benchmarks/colour_perturbed.py", *sys.argv[1:]])
    lines = [command, f"model {args.model}: auto applies {stain.AUTO_METHOD!r} beyond {stain.OOD_THRESHOLD:g} stops", ""]
    lines += distance_lines(target, grades)
    print("\n".join(lines))
    replace_atomically(RESULTS / "colour_perturbed.txt", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
