"""Where an image is out of focus: the edge blur (:func:`micronet.runtime.focus.edge_blur_um`)
of the training images, of the held-out sets clean and under every level of the robustness
benchmark, and of the two real slides (from windows of their tissue, as ``detect_slide``
measures a slide), at the model's pixel size.

    python benchmarks/focus_threshold.py [--model default] [--grades middle,strongest]

The threshold :data:`~micronet.runtime.focus.BLUR_THRESHOLD_UM` and the training span
:data:`~micronet.runtime.focus.TRAINING_BLUR_UM` are read off the training images only
(CRCHisto train, MoNuSeg's training half of ``paper/monuseg_split.csv``); the held-out
lines check it: no clean image beyond it, and which perturbed ones are. Each image is
first brought to the model's pixel size as the Detector brings it (``resample``). Writes
``results/focus_threshold.txt`` (by a rename of a complete file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA  # noqa: E402
from _perturbed_sets import parse_args, perturbed_sets, write_report  # noqa: E402
from bench_pareto import MONUSEG_SPLIT  # noqa: E402

from micronet.runtime import focus  # noqa: E402
from micronet.runtime.detector import Detector  # noqa: E402
from micronet.runtime.resample import resample  # noqa: E402


def blur_of(rgb: np.ndarray, mpp: float, model_mpp: float) -> float | None:
    """Edge blur in µm of an image at ``mpp``, at the model's pixel size."""
    at_model = resample(rgb, None, mpp / model_mpp)[0] if abs(mpp / model_mpp - 1) > 0.01 else rgb
    return focus.edge_blur_um(at_model, model_mpp)


def line(name: str, label: str, values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    beyond = sum(v > focus.BLUR_THRESHOLD_UM for v in got)
    span = f"{min(got):.3f}–{max(got):.3f} (median {float(np.median(got)):.3f})" if got else "–"
    return f"{name:9s} {label:26s} edge blur µm {span}  beyond {focus.BLUR_THRESHOLD_UM:g}: {beyond}/{len(values)}"


def training_lines(model_mpp: float) -> list[str]:
    from micronet.runtime.evaluation.datasets import load_point_folder

    out = []
    for name, data in (("crchisto", load_point_folder(DATA / "crchisto", "train")), ("monuseg", load_point_folder(DATA / "monuseg", MONUSEG_SPLIT.replace("test@", "train@")))):
        out.append(line(name, "train (clean)", [blur_of(im, data.mpp, model_mpp) for im in data.images]))
    return out


def slide_lines(model: str) -> list[str]:
    """CMU-1 and OS-1 as ``detect_slide`` measures them: windows of their tissue
    (:func:`micronet.runtime.slide.colour.slide_measures`)."""
    from micronet.runtime.slide import open_slide, plan_slide
    from micronet.runtime.slide.colour import slide_measures

    det = Detector(model, device="cpu")
    out = []
    for name, file in (("CMU-1", "CMU-1-Small-Region.svs"), ("OS-1", "OS-1-detail.ome.tif")):
        with open_slide(DATA / "slides" / file) as slide:
            out.append(line(name, "slide tissue (clean)", [slide_measures(slide, plan_slide(det, slide), det.info.mpp)[1]]))
    return out


def held_out_lines(model_mpp: float, grades: list[str]) -> list[str]:
    out = []
    for name, data, level, images in perturbed_sets(grades):
        label = "held-out clean" if level is None else f"{level.label} ({level.grade})"
        out.append(line(name, label, [blur_of(im, data.mpp, model_mpp) for im in images]))
    return out


def main() -> None:
    args = parse_args(__doc__, "the model whose pixel size images are measured at (a file or bundled name)")
    model_mpp = Detector(args.model, device="cpu").info.mpp
    header = [f"model {args.model} at {model_mpp:g} µm/px; threshold {focus.BLUR_THRESHOLD_UM:g} µm, training span {focus.TRAINING_BLUR_UM}"]
    write_report("focus_threshold", header, training_lines(model_mpp) + slide_lines(args.model) + [""] + held_out_lines(model_mpp, args.grades))


if __name__ == "__main__":
    main()
