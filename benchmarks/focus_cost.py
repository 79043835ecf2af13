"""What focus costs a slide, tile by tile: the edge-blur measure every tile now takes
(:func:`micronet.runtime.focus.sharpened` in ``detect_slide``'s readers and a stream's
worker) and the deconvolution an out-of-focus tile takes, against the network pass on
the same tile, in one run (ratios, so they carry to another machine better than seconds).

    python benchmarks/focus_cost.py [--model default --model fast-cpu] [--tiles 6] [--repeat 3]

Tiles: the first ``--tiles`` tissue tiles of ``CMU-1-Small-Region.svs`` as ``detect_slide``
plans and reads them for each model (its own tile size, at its pixel size). For each tile,
timed in turns (``interleaved_best``): the read; the edge blur alone (``focus.edge_blur_um``,
what ``deblur=None`` measures); the measure (``focus.sharpened`` under
``deblur="auto"`` as the reader calls it: the edge blur, and for a tile beyond half a
megapixel the focus map of its cells; CMU-1's tiles are in focus, so nothing is deconvolved);
the deconvolution at the σ a tile blurred by 2 px would get (``focus.deblur``, σ =
sqrt(b² − 0.37²) µm for b = 1.1 µm); the network (``Detector.detect_batch`` on the one
tile, with the slide's colour statistics, as the slide run calls it). Writes
``results/focus_cost.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    DATA,
    interleaved_best,
    matmul_peaks,
    peak_text,
    run_machine,
    write_results,
)
from micronet.runtime import focus
from micronet.runtime.detector import Detector

SLIDE = DATA / "slides" / "CMU-1-Small-Region.svs"
SOFT_BLUR_UM = 1.1  # a CRCHisto image blurred by σ 2 px measures 0.9–1.1 µm (focus_threshold.txt)


def model_row(model: str, tiles: int, repeat: int) -> dict:
    """Best seconds per tile of each step, summed over the tiles, for one model."""
    from micronet.runtime.slide import open_slide, plan_slide
    from micronet.runtime.slide.colour import slide_measures

    det = Detector(model, device="cpu")
    slide = open_slide(SLIDE)
    try:
        plan = plan_slide(det, slide)
        colour, _ = slide_measures(slide, plan, det.info.mpp)
        chosen = plan.tiles[:tiles]
        mpp = det.info.mpp
        sigma = focus.target_sigma_px(SOFT_BLUR_UM, mpp)
        totals = {"read": 0.0, "blur": 0.0, "measure": 0.0, "deblur": 0.0, "network": 0.0}
        pixels = 0
        for tile in chosen:
            rgb = plan.grid.read_tile(slide, tile)
            pixels += rgb.shape[0] * rgb.shape[1]
            best = interleaved_best(
                {
                    "read": lambda t=tile: plan.grid.read_tile(slide, t),
                    "blur": lambda im=rgb: focus.edge_blur_um(im, mpp),
                    "measure": lambda im=rgb: focus.sharpened(im, mpp, "auto"),
                    "deblur": lambda im=rgb: focus.deblur(im, sigma),
                    "network": lambda im=rgb: det.detect_batch([im], mpp=mpp, colour_stats=colour),
                },
                repeat,
            )
            for k, v in best.items():
                totals[k] += v
    finally:
        slide.close()
        det.close()
    return {"model": model, "tile_size": det.tile_size, "tiles": len(chosen), "megapixels": pixels / 1e6, "seconds": totals,
            "measure_vs_network": totals["measure"] / totals["network"], "deblur_vs_network": totals["deblur"] / totals["network"]}


def table(rows: list[dict], machine: dict) -> str:
    lines = [
        f"Focus, tile by tile, on `CMU-1-Small-Region.svs` (CPU; matmul peak {peak_text(machine)}). Best of the run per tile, summed; "
        "the measure (with a focus map of the cells of a tile over half a megapixel) runs on every tile, the deconvolution only on tiles or cells beyond 0.7 µm.",
        "",
        "| model | tiles (side) | megapixels | read s | edge blur alone s | measure s | deconvolution s | network s | measure ÷ network | deconvolution ÷ network |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["seconds"]
        lines.append(
            f"| {r['model']} | {r['tiles']} ({r['tile_size']}) | {r['megapixels']:.2f} | {s['read']:.3f} | {s.get('blur', float('nan')):.3f} | {s['measure']:.3f} | {s['deblur']:.3f} | "
            f"{s['network']:.3f} | {100 * r['measure_vs_network']:.1f} % | {100 * r['deblur_vs_network']:.1f} % |"
        )
    lines.append("")
    lines.append("Command: `python benchmarks/focus_cost.py` (`benchmarks/focus_cost.py`).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="bundled name or .onnx (default: default and fast-cpu)")
    parser.add_argument("--tiles", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    before = matmul_peaks()
    rows = [model_row(m, args.tiles, args.repeat) for m in (args.model or ["default", "fast-cpu"])]
    machine = run_machine([before, matmul_peaks()])
    write_results("focus_cost", {"machine": machine, "rows": rows, "command": " ".join(sys.argv)}, table(rows, machine))


if __name__ == "__main__":
    main()
