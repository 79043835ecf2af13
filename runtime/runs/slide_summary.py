"""A slide's per-input summary, ``<stem>.summary.json``: what a pathologist reads first.

The nuclei found, the tissue they were found in (mm², from the slide's tissue mask on
its thumbnail, or the whole region with ``tissue_only=False``), the density per mm², and
with a class head the count and density of each phenotype. Written atomically when the
slide's run finishes (and again by a rerun that finds the slide finished), so the file
is complete or absent; ``run_summary.csv`` carries the same counts in its ``classes``
and ``tissue_mm2`` columns. Its ``focus`` block says how many tiles were out of focus and
where (:func:`focus_summary`): what a scanner operator needs to decide on a rescan.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable
from typing import Any

from .. import focus
from ..detections import Detections
from ..files import check_target, replace_atomically
from ..slide.plan import SlidePlan
from ..slide.tissue import tissue_mask

__all__ = [
    "SUMMARY_SUFFIX",
    "cells_in_core",
    "focus_summary",
    "recorded_blur",
    "recorded_cells",
    "slide_summary",
    "soft_boxes",
    "soft_tiles",
    "tissue_area_mm2",
    "write_slide_summary",
]

SUMMARY_SUFFIX = ".summary.json"
SUMMARY_FORMAT = "micronet-slide-summary/1"


def tissue_area_mm2(plan: SlidePlan, tissue_only: bool) -> tuple[float, str]:
    """The area detected in, in mm², and where it comes from: the tissue mask (Otsu on the
    thumbnail's saturation, the mask that chose the tiles) or the whole region."""
    mx, my = plan.mpp_xy
    if tissue_only and plan.thumbnail is not None:
        mask = plan.tissue if plan.tissue is not None else tissue_mask(plan.thumbnail.image)
        sx, sy = plan.thumbnail.scale_xy  # level-0 pixels per thumbnail pixel
        return float(mask.sum()) * sx * sy * mx * my / 1e6, "tissue mask"
    return plan.region[2] * plan.region[3] * mx * my / 1e6, "whole region"


def slide_summary(name: str, found: Detections, plan: SlidePlan, tissue_only: bool) -> dict[str, Any]:
    """The summary of one slide's detections (see the module docstring)."""
    area, source = tissue_area_mm2(plan, tissue_only)

    def density(count: int) -> float | None:
        return round(count / area, 3) if area > 0 else None

    summary: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        "input": name,
        "region": [int(v) for v in plan.region],
        "mpp": [float(v) for v in plan.mpp_xy],
        "tissue_mm2": round(area, 6),
        "tissue_from": source,
        "nuclei": len(found),
        "density_per_mm2": density(len(found)),
        "colour_distance": None if found.colour_distance is None else round(float(found.colour_distance), 4),
        "edge_blur_um": None if found.edge_blur_um is None else round(float(found.edge_blur_um), 4),
    }
    if found.class_names:
        counts = found.class_counts()
        summary["classes"] = {n: {"count": int(c), "density_per_mm2": density(int(c))} for n, c in counts.items()}
    return summary


def focus_summary(plan: SlidePlan, tile_blur: list[float | None], deblur: str | None, tile_cells: list[list[list[float]]]) -> dict[str, Any]:
    """The slide's focus tile by tile: how many tiles were measured (a tile with too few
    edges, such as blank glass, gives no measure), how many lie beyond
    :data:`~micronet.runtime.focus.BLUR_THRESHOLD_UM` and whether they were deconvolved,
    and each of those: its core's level-0 box ``[x0, y0, x1, y1]`` (the area whose
    nuclei it found) and its edge blur, in plan (raster) order.

    Args:
        plan: the slide's plan; ``tile_blur`` is aligned with its tiles.
        tile_blur: each tile's edge blur in µm (``None``: not measured).
        deblur: the detector's setting (``"auto"``: the tiles beyond were deconvolved).
        tile_cells: each tile's soft cells (level-0 ``[x0, y0, x1, y1, blur_um]`` in its
            core), found where a tile was judged cell by cell (``deblur="auto"``, a tile
            over half a megapixel): those of tiles in focus as a whole are listed as
            ``cells_out_of_focus``, soft fields the tile's median did not show.
    """
    beyond = [{"box": [round(v) for v in box], "edge_blur_um": round(float(blur), 4)} for box, blur in soft_tiles(plan, tile_blur)]
    cells = [{"box": [round(v) for v in c[:4]], "edge_blur_um": c[4]} for c in _cells_of_sharp_tiles(tile_blur, tile_cells)]
    return {
        "threshold_um": focus.BLUR_THRESHOLD_UM,
        "tiles": len(tile_blur),
        "tiles_measured": sum(b is not None for b in tile_blur),
        "tiles_out_of_focus": len(beyond),
        "deconvolved": deblur == "auto",
        "out_of_focus": beyond,
        "cells_out_of_focus": cells,
    }


def _cells_of_sharp_tiles(tile_blur: list[float | None], tile_cells: list[list[list[float]]]) -> list[list[float]]:
    """The soft cells of the tiles not out of focus as a whole (those are listed whole)."""
    return [c for b, cells in zip(tile_blur, tile_cells) if not focus.out_of_focus(b) for c in cells]


def soft_boxes(plan: SlidePlan, tile_blur: list[float | None], tile_cells: list[list[list[float]]]) -> list[tuple[float, float, float, float]]:
    """The level-0 boxes outlined on the overlay: the cores of the tiles out of focus, and
    the soft cells of the others."""
    return [box for box, _ in soft_tiles(plan, tile_blur)] + [tuple(c[:4]) for c in _cells_of_sharp_tiles(tile_blur, tile_cells)]


def soft_tiles(plan: SlidePlan, tile_blur: list[float | None]) -> list[tuple[tuple[float, float, float, float], float]]:
    """The tiles beyond :data:`~micronet.runtime.focus.BLUR_THRESHOLD_UM`, in plan order:
    each one's core as a level-0 box ``(x0, y0, x1, y1)`` and its edge blur (µm)."""
    return [(plan.grid.core_in_level0(t), b) for t, b in zip(plan.tiles, tile_blur) if focus.out_of_focus(b)]


def write_slide_summary(path: Path, summary: dict[str, Any]) -> Path:
    """Writes the summary atomically (complete or absent); a rerun that finds the same
    summary there leaves the file as it is (verified, not rewritten)."""
    text = json.dumps(summary, indent=1, allow_nan=False) + "\n"
    if check_target(path):
        try:
            if path.read_text(encoding="utf-8") == text:
                return path
        except (OSError, UnicodeDecodeError):
            pass  # unreadable: replaced below
    replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def cells_in_core(plan: SlidePlan, tile: Any, cells: list[tuple[int, int, int, int, float]]) -> list[list[float]]:
    """A tile's soft cells (boxes in the tile's pixels) cut to its core, whose nuclei it
    keeps (:func:`~micronet.runtime.focus.cells_in_core`), as level-0
    ``[x0, y0, x1, y1, blur_um]`` (pixels rounded to 0.1)."""
    return [[round(v, 1) for v in plan.grid.box_in_level0(*c[:4])] + [c[4]] for c in focus.cells_in_core(tile, cells)]


def recorded_cells(state: dict[str, Any], done: int) -> list[list[list[float]]]:
    """The soft cells of the first ``done`` tiles as a run's record holds them (none for
    tiles a record from before they were recorded lacks)."""
    return _recorded(state, "tile_soft_cells", done, list)


def _recorded(state: dict[str, Any], key: str, done: int, missing: Callable[[], Any]) -> list[Any]:
    """The first ``done`` values of a per-tile list in a run's record, ``missing()`` for
    each tile a record from before the list existed lacks."""
    values = list(state.get(key) or [])[:done]
    return values + [missing() for _ in range(done - len(values))]


def recorded_blur(state: dict[str, Any], done: int) -> list[float | None]:
    """The edge blur of the first ``done`` tiles as a run's record holds them (``None`` for
    tiles a record from before they were recorded lacks)."""
    return _recorded(state, "tile_blur_um", done, lambda: None)
