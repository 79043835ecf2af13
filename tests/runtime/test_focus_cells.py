"""The focus map (``micronet.runtime.focus``): an image of more than half a megapixel judged
cell by cell under ``deblur="auto"``: which cells are soft, only they deconvolved and
blended, the memory bound, and a slide's record and summary of its soft cells."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from focus_support import blurred
from micronet.runtime import focus

MODEL_MPP = 0.55
BLUR_MARGIN = 8  # the blur model's receptive radius and more (tests/runtime/conftest.py)


def quadrants(images: list[np.ndarray], soft: set[int], sigma: float = 2.0) -> np.ndarray:
    """A 1000² mosaic of four 500² images, quadrants ``soft`` (0 top left, 1 top right, 2
    bottom left, 3 bottom right) blurred by ``sigma`` px."""
    ims = [blurred(im, sigma) if q in soft else im for q, im in enumerate(images[:4])]
    return np.concatenate([np.concatenate(ims[:2], 1), np.concatenate(ims[2:], 1)], 0)


def test_the_focus_map_finds_the_soft_quadrant_and_leaves_background_unmeasured(crchisto_images: list[np.ndarray]) -> None:
    """On a 1000² mosaic with its top-right quadrant blurred by σ 2 px, cut into 7 × 7 cells
    (of 142–143 px), every cell inside that quadrant is beyond the threshold and every cell
    of the sharp left and bottom quadrants within it; a cell of plain background with a
    scrap of tissue is left unmeasured rather than called soft."""
    mosaic = quadrants(crchisto_images, {1})
    assert mosaic.shape[0] * mosaic.shape[1] > focus.WHOLE
    cells = focus.focus_map_px(mosaic) * MODEL_MPP
    assert cells.shape == (7, 7) and list(focus.cell_edges(1000)) == [0, 143, 286, 429, 571, 714, 857, 1000]
    assert (cells[:3, 4:] > focus.BLUR_THRESHOLD_UM).all(), cells
    assert max(cells[:, :3].max(), cells[4:].max()) < focus.BLUR_THRESHOLD_UM - 0.05, cells
    background = np.full((512, 512, 3), 240, np.uint8)
    background[:10, :10] = crchisto_images[0][:10, :10]  # a scrap of tissue in a corner
    assert np.isnan(focus.focus_map_px(background)).all()


def test_a_lone_soft_cell_does_not_count_but_a_pair_or_all_do() -> None:
    cells = np.full((4, 5), 0.45)
    cells[0, 0] = np.nan
    cells[2, 3] = 0.9  # alone
    assert not focus.soft_cells(cells).any()
    cells[3, 4] = 0.8  # a diagonal neighbour
    assert focus.soft_cells(cells).sum() == 2 and focus.soft_cells(cells)[2, 3]
    alone = np.array([[np.nan, 0.9], [np.nan, np.nan]])  # the one cell measured
    assert focus.soft_cells(alone)[0, 1] and focus.soft_cells(alone).sum() == 1


def test_only_the_soft_cells_are_deconvolved_and_the_rest_keep_every_pixel(crchisto_images: list[np.ndarray]) -> None:
    """deblur="auto" on the mosaic with one soft quadrant: its median blur is in focus (three
    quadrants are sharp), so one σ for the whole image would change nothing. The soft cells
    are deconvolved at their median σ and blended: the result is the image plus the share of
    the deconvolution given by the soft cells' indicator averaged over a box of 2·RAMP + 1,
    within 1 (rounding); every pixel whose box holds no soft cell keeps its value exactly."""

    mosaic = quadrants(crchisto_images, {1})
    assert not focus.out_of_focus(focus.edge_blur_um(mosaic, MODEL_MPP))
    out, blur = focus.sharpened(mosaic, MODEL_MPP, "auto")
    assert blur == focus.edge_blur_um(mosaic, MODEL_MPP) and out.dtype == np.uint8 and out.shape == mosaic.shape
    cells = focus.focus_map_px(mosaic)
    soft = focus.soft_cells(cells * MODEL_MPP)
    assert 1 <= soft.sum() < soft.size
    sigma = focus.deblur_sigma_px(float(np.median(cells[soft])), focus.DEBLUR_TARGET_UM / MODEL_MPP)
    edges = focus.cell_edges(1000)
    pixels = soft[np.searchsorted(edges, np.arange(1000), "right") - 1][:, np.searchsorted(edges, np.arange(1000), "right") - 1]
    weight = ndimage.uniform_filter(pixels.astype(np.float64), 2 * focus.RAMP + 1, mode="nearest")[..., None]
    want = mosaic + weight * (focus.deblur(mosaic, sigma).astype(np.float64) - mosaic)
    assert np.abs(out - want).max() <= 1.0
    np.testing.assert_array_equal(out[weight[..., 0] == 0], mosaic[weight[..., 0] == 0])
    assert (weight == 0).mean() > 0.5 and (out != mosaic).any(axis=-1)[weight[..., 0] == 1].mean() > 0.5
    assert focus.sharpened(mosaic, MODEL_MPP, None)[0] is mosaic
    sharp = quadrants(crchisto_images, set())
    assert focus.sharpened(sharp, MODEL_MPP, "auto")[0] is sharp  # no soft cell: no copy


def test_a_large_image_soft_everywhere_is_deconvolved_whole(crchisto_images: list[np.ndarray]) -> None:
    """Blurred as one (no sharp seam between its quadrants), every measured cell is soft."""
    mosaic = blurred(quadrants(crchisto_images, set()), 2.0)
    cells = focus.focus_map_px(mosaic)
    assert focus.soft_cells(cells * MODEL_MPP).sum() == (~np.isnan(cells)).sum() > 40
    sigma = focus.deblur_sigma_px(float(np.nanmedian(cells)), focus.DEBLUR_TARGET_UM / MODEL_MPP)
    np.testing.assert_array_equal(focus.sharpened(mosaic, MODEL_MPP, "auto")[0], focus.deblur(mosaic, sigma))


def test_the_memory_bound_covers_a_deconvolution_by_cells(crchisto_images: list[np.ndarray], monkeypatch) -> None:
    """sharpened_bytes bounds what sharpened allocates (tracemalloc) on a large image judged
    by cells, in strips too: within 2× of it when all but one quadrant is soft at the
    largest σ (the soft cells' box nearly the whole image), under it with one soft
    quadrant; a small image's bound is deblur_bytes'."""
    import tracemalloc

    focus.sharpened(quadrants(crchisto_images, {1})[:300, :300], MODEL_MPP, "auto")  # SciPy imported outside the trace
    assert focus.sharpened_bytes(500, 500) == focus.deblur_bytes(500, 500)
    bound = focus.sharpened_bytes(1000, 1000)
    for soft, tight in (({1}, False), ({0, 1, 2}, True)):
        mosaic = quadrants(crchisto_images, soft, sigma=5.0)
        for strip in (focus.STRIP_PIXELS, 100 * 1000):
            monkeypatch.setattr(focus, "STRIP_PIXELS", strip)
            monkeypatch.setattr(focus, "BLEND_PIXELS", min(strip, focus.BLEND_PIXELS))
            tracemalloc.start()
            try:
                assert focus.sharpened(mosaic, MODEL_MPP, "auto")[0] is not mosaic
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak <= focus.sharpened_bytes(1000, 1000) and (not tight or focus.sharpened_bytes(1000, 1000) <= 2 * peak), (soft, strip, peak, bound)


def test_a_slide_tile_judged_by_cells_lists_its_soft_cells(crchisto_images: list[np.ndarray], blur_onnx: Path, tmp_path: Path) -> None:
    """A 1000² slide (four CRCHisto images, the top-right one blurred by σ 2 px) read as one
    tile over half a megapixel, so judged cell by cell: in focus as a whole, it is not a soft
    tile, but its soft cells are listed (level-0 boxes within the blurred quadrant, every
    cell wholly inside it among them), kept in the record and outlined on the overlay; a
    rerun ("finished already") lists the same from the record."""
    tifffile = pytest.importorskip("tifffile")
    from PIL import Image

    from micronet.runtime.detector import Detector
    from micronet.runtime.runs.slide_outputs import OVERLAY_SOFT_COLOR

    image = quadrants(crchisto_images, {1})
    path = tmp_path / "cells.tif"
    resolution = {"resolution": (1e4 / MODEL_MPP, 1e4 / MODEL_MPP), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb", metadata=None, **resolution)
    det = Detector(blur_onnx, device="cpu", threads=2, tile_size=1024, tile_margin=BLUR_MARGIN)
    assert len(det.plan_tiles(1000, 1000)) == 1
    summaries = []
    for _ in range(2):
        det.detect_slide(path, tissue_only=False, out_dir=tmp_path / "out", progress=False)
        summaries.append(json.loads((tmp_path / "out" / "cells.summary.json").read_text())["focus"])
    focus_block = summaries[0]
    assert summaries[1] == focus_block and focus_block["tiles_out_of_focus"] == 0 and focus_block["out_of_focus"] == []
    boxes = [c["box"] for c in focus_block["cells_out_of_focus"]]
    assert all(x1 > 500 and y0 < 500 for x0, y0, x1, y1 in boxes), boxes  # each reaches into the blurred quadrant
    edges = focus.cell_edges(1000)  # the tile is the slide: cells in level-0 pixels
    inside = {(int(edges[j]), int(edges[i]), int(edges[j + 1]), int(edges[i + 1])) for i in range(3) for j in range(4, 7)}
    assert inside <= {tuple(b) for b in boxes}
    assert all(c["edge_blur_um"] > focus.BLUR_THRESHOLD_UM for c in focus_block["cells_out_of_focus"])
    record = json.loads((tmp_path / "out" / ".micronet" / "cells.progress.json").read_text())
    assert len(record["tile_soft_cells"]) == 1 and len(record["tile_soft_cells"][0]) == len(boxes)
    with Image.open(tmp_path / "out" / "cells.overlay.png") as im:
        drawn = np.all(np.asarray(im.convert("RGB")) == OVERLAY_SOFT_COLOR, axis=-1)
    assert drawn.any() and not drawn[drawn.shape[0] * 3 // 5 :].any()  # outlined in the top half only


def test_a_stream_block_judged_by_cells_carries_its_soft_cells(crchisto_images: list[np.ndarray], blur_onnx: Path) -> None:
    """The same 1000² scan as one block over half a megapixel: its final region is in focus
    as a whole and carries the soft cells sharpened_cells finds on the block, in slide pixels."""
    import time

    from micronet.runtime.detector import Detector

    image = quadrants(crchisto_images, {1})
    det = Detector(blur_onnx, device="cpu", threads=2, tile_size=1024, tile_margin=BLUR_MARGIN)
    want = [tuple(float(v) for v in c[:4]) + (c[4],) for c in focus.sharpened_cells(image, MODEL_MPP, "auto")[2]]
    regions = []
    with det.stream(1000, 1000, mpp=MODEL_MPP) as session:
        session.add(image, 0, 0)
        for _ in range(600):
            regions += list(session.ready())
            if regions:
                break
            time.sleep(0.05)
        session.finish()
    assert len(regions) == 1 and not focus.out_of_focus(regions[0].edge_blur_um)
    assert len(want) >= 9 and list(regions[0].soft_cells) == want
