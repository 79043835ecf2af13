"""The robustness benchmark's held-out sets under its perturbations, for the scripts that
measure them without running a model (``colour_perturbed.py``, ``focus_threshold.py``):
the same images, levels and seed as ``bench_robust.py``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
from _common import RESULTS
from _perturbations import FAMILIES, GRADES, perturbations
from bench_robust import _names, load_sets

from micronet.runtime.files import replace_atomically

__all__ = ["parse_args", "perturbed_sets", "write_report"]


def parse_args(description: str, model_help: str) -> argparse.Namespace:
    """``--model`` (a file or bundled name, default ``default``) and ``--grades`` (the
    levels to measure, checked as ``bench_robust.py`` checks them)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help=model_help)
    parser.add_argument(
        "--grades", type=_names(GRADES, "grades"), default=["middle", "strongest"], help=f"levels to measure (of {','.join(GRADES)}; default middle,strongest)"
    )
    return parser.parse_args()


def perturbed_sets(grades: list[str], seed: int = 0) -> Iterator[tuple[str, Any, Any, list[np.ndarray]]]:
    """``(set name, data set, level or None for clean, images)`` for CRCHisto test and
    MoNuSeg held-out, clean and under each level of every family at ``grades``."""
    for name, data in load_sets(None).items():
        for level in [None, *perturbations(list(FAMILIES), grades)]:
            images = data.images if level is None else [level(im, seed, f"{name}/{n}") for im, n in zip(data.images, data.names)]
            yield name, data, level, images


def write_report(script: str, header: list[str], lines: list[str]) -> None:
    """Prints ``python benchmarks/<script>.py <args>``, ``header`` and ``lines``, and writes
    them to ``results/<script>.txt`` by a rename of a complete file."""
    text = "\n".join([" ".join([f"python benchmarks/{script}.py", *sys.argv[1:]]), *header, "", *lines])
    print(text)
    replace_atomically(RESULTS / f"{script}.txt", lambda tmp: tmp.write_text(text + "\n"))
