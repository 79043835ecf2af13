"""How sharp an image is: the blur of its edges in µm, and whether it lies beyond what the
bundled models were trained on.

A slide scanned out of focus, or a camera tile taken through a soft objective, loses the
edges the network finds nuclei by; colour statistics do not see it
(:mod:`micronet.runtime.stain`), so :class:`~micronet.runtime.detector.Detector` measures
focus apart, says once when an image is much softer than the training data, and with
``deblur="auto"`` (its default) deconvolves such an image back to the training data's
edge blur (:func:`deblur`, a Wiener filter of a Gaussian) before the network.

The measure is the re-blur gradient ratio of Zhuo and Sim ("Defocus map estimation from a
single image", Pattern Recognition 2011): an edge blurred by a Gaussian of ``σ`` keeps, after
a second blur of ``σ0``, the share ``σ / sqrt(σ² + σ0²)`` of its gradient, so the ratio
``R`` of the two gradient magnitudes at an edge gives ``σ = σ0 / sqrt(R² − 1)``. It is
taken on the optical density of the grey image (so exposure, which adds a constant, and
gamma, which scales it, leave it alone) at the model's pixel size, at the steepest
:data:`EDGE_QUANTILE` of pixels, and the median over them is the image's edge blur, in
model pixels, then in µm. An image beyond half a megapixel is measured on a grid of
:data:`WINDOW`-pixel windows (at most :data:`MAX_WINDOWS`), so the cost stays tens of
milliseconds whatever the size; its focus map (below, ``deblur="auto"`` only) measures
every pixel, so that costs in proportion to the image (``benchmarks/results/focus_cost.md``).

:data:`BLUR_THRESHOLD_UM` comes from the training images alone
(``benchmarks/focus_threshold.py``, ``benchmarks/results/focus_threshold.txt``): their
sharpest-to-softest span is 0.30–0.56 µm at the bundled models' 0.55 µm/px (CRCHisto train,
MoNuSeg's training half); 0.7 µm, a quarter above the softest, is where an image is called
out of focus. A Gaussian blur adds in quadrature: a CRCHisto image (0.36 µm) blurred by
σ 2 px (1.1 µm) measures 0.9–1.1 µm, and loses 5–30 % of the bundled models' F1
(``benchmarks/results/robust_r12.md``).

**Cell by cell.** Focus varies within a large image (a fold, a bubble, the edge of a
scanner's focus map), so with ``deblur="auto"`` an image of more than :data:`WHOLE` pixels
(a large image, ``fast-cpu``'s 1,272² slide tiles, a stream's blocks of that size) is
judged on a grid of cells of at least :data:`CELL` pixels (:func:`focus_map_px`), and only
its soft cells are deconvolved (:func:`deblur_cells`), blended into their neighbours; a
cell that is mostly background is not measured. One soft field among sharp ones is
deconvolved, where one σ for the whole image (its median, in focus) left it soft; a sharp
field in a soft image is left alone. ``benchmarks/focus_cells.py`` measures what it buys.
An image up to :data:`WHOLE` pixels is judged whole, as before. NumPy and SciPy only,
imported when first measured.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "edge_blur_px",
    "edge_blur_um",
    "pooled_blur_px",
    "focus_message",
    "deblur",
    "deblur_bytes",
    "deblur_sigma_px",
    "deblur_whole",
    "target_sigma_px",
    "deblur_cells",
    "focus_map_px",
    "soft_cells",
    "cell_edges",
    "cells_in_core",
    "sharpened_bytes",
    "sharpened_cells",
    "out_of_focus",
    "sharpened",
    "wiener_kernel",
    "BLUR_THRESHOLD_UM",
    "TRAINING_BLUR_UM",
    "DEBLUR_TARGET_UM",
    "DEBLUR",
    "AUTO_DEBLUR",
]

REBLUR = 1.0  # σ0 of the second blur, in pixels
EDGE_QUANTILE = 0.98  # the steepest 2 % of pixels are the edges measured
MIN_EDGE = 0.02  # optical density per pixel: flatter is no edge (a blank or flat image)
MIN_EDGES = 64  # fewer edge pixels than this give no measure
WHOLE = 1 << 19  # an image of at most this many pixels is measured whole; a larger one on
WINDOW = 256  # windows of this side ...
MAX_WINDOWS = 9  # ... at most this many, on a regular grid
BORDER = 4  # pixels at a window's border, where the filters see the reflection, are skipped
# The training images' span of edge blur (benchmarks/results/focus_threshold.txt) and the
# blur beyond which Detector warns.
TRAINING_BLUR_UM = (0.30, 0.56)
BLUR_THRESHOLD_UM = 0.7
# Detector(deblur="auto"): an image beyond the threshold is deconvolved back to the training
# data's typical edge blur (CRCHisto train's median, 0.37 µm) with a Wiener filter of a
# Gaussian, noise-to-signal WIENER_K; chosen on CRCHisto training images only
# (docs/results.md, thirteenth round).
DEBLUR = (None, "auto")
DEBLUR_TARGET_UM = 0.37
WIENER_K = 0.003
MAX_DEBLUR_PX = 4.0  # the largest σ deconvolved: beyond it the kernel grows past usefulness
STRIP_PIXELS = 1 << 20  # pixels deconvolved at a time (bounds the memory on a large image)
# An image (a slide's tile, a stream's block) of more than WHOLE pixels is judged cell by
# cell under deblur="auto" (deblur_cells): cells of at least CELL pixels a side, each
# measured on its own pixels; only the soft ones are deconvolved, blending into their in-focus neighbours over
# 2·RAMP + 1 pixels. The gate and CELL were chosen on CRCHisto training images and CMU-1
# (docs/results.md, sixteenth round; benchmarks/results/focus_map_stats.txt): once cells
# that are mostly background are left unmeasured, CRCHisto's in-focus training cells
# measure at most 0.51 µm and 99 % of those blurred by σ 2 px above 0.85; on mosaics of
# training images with soft quadrants (benchmarks/focus_cells.py --split train) 128
# recovered the most F1 of 128, 192, 256.
CELL = 128
RAMP = 16
BAND_MARGIN = 8  # rows of context around a row of cells: more than the re-blur's 4σ + Sobel's 1
GRADIENT_PLANES = 8  # float32 planes of a band alive at once while its gradients are taken
BLEND_PIXELS = 1 << 18  # pixels blended at a time (two float32 RGB planes, a weight plane)
AUTO_DEBLUR = "cells"  # how deblur="auto" judges a large image, as outputs record it ("auto:cells")


def _windows(h: int, w: int) -> list[tuple[slice, slice]]:
    """The whole image when it has at most :data:`WHOLE` pixels, else up to
    :data:`MAX_WINDOWS` windows of :data:`WINDOW` pixels on a regular grid (a side
    shorter than a window is taken whole)."""
    if h * w <= WHOLE:
        return [(slice(0, h), slice(0, w))]
    per_side = math.isqrt(MAX_WINDOWS)
    wy, wx = min(h, WINDOW), min(w, WINDOW)
    ys = np.linspace(0, h - wy, min(per_side, math.ceil(h / wy))).astype(int)
    xs = np.linspace(0, w - wx, min(per_side, math.ceil(w / wx))).astype(int)
    return [(slice(int(y), int(y) + wy), slice(int(x), int(x) + wx)) for y in ys for x in xs]


def _gradient2(od: np.ndarray) -> np.ndarray:
    """The squared gradient magnitude (Sobel, per pixel) of a float32 image; 0 on its outer
    row and column of pixels, where the operator would reach outside (they lie in the
    :data:`BORDER` every measure leaves out). Slices rather than ``ndimage.sobel``: about a
    third of the time, the same values to float32 rounding."""
    out = np.zeros(od.shape, np.float32)
    if min(od.shape) < 3:
        return out
    dx = od[:, 2:] - od[:, :-2]
    dy = od[2:] - od[:-2]
    gx = dx[:-2] + dx[2:]
    gx += 2 * dx[1:-1]
    gy = dy[:, :-2] + dy[:, 2:]
    gy += 2 * dy[:, 1:-1]
    gx *= gx
    gy *= gy
    gx += gy
    out[1:-1, 1:-1] = gx * np.float32(1 / 64)
    return out


def _gradients(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The squared gradient magnitudes of an image's optical density before and after the
    re-blur by :data:`REBLUR` (float32, the image's shape)."""
    from scipy import ndimage

    grey = rgb[..., 0].astype(np.float32)  # the sum of R, G, B (channel by channel: NumPy's
    grey += rgb[..., 1]  # reduction over a last axis of 3 is several times slower)
    grey += rgb[..., 2]
    od = -np.log((grey + np.float32(3.0)) * np.float32(1 / 768))  # of the mean of R, G, B, plus 1
    return _gradient2(od), _gradient2(ndimage.gaussian_filter(od, REBLUR))


def _inner(h: int, w: int) -> tuple[slice, slice]:
    """An image's pixels away from its border (:data:`BORDER`), where the filters see no
    reflection; all of them when it is too small to spare the border."""
    if h > 2 * BORDER and w > 2 * BORDER:
        return slice(BORDER, h - BORDER), slice(BORDER, w - BORDER)
    return slice(0, h), slice(0, w)


def _edge_ratios(g0: np.ndarray, g1: np.ndarray, gated: bool = False) -> np.ndarray:
    """The squared gradient ratios ``R²`` at the steepest pixels of one window's gradients
    (empty when flat; with ``gated``, also when fewer than ``1 − EDGE_QUANTILE`` of its
    pixels are edges, as in a cell of background with a scrap of tissue, whose few edges
    say little of the focus)."""
    if g0.size == 0:
        return np.zeros(0, np.float32)
    floor = np.float32(MIN_EDGE * MIN_EDGE)
    k = min(g0.size - 1, int(EDGE_QUANTILE * (g0.size - 1)))
    steep = g0[g0 >= floor]  # the quantile, when not below the floor, lies among these:
    below = g0.size - steep.size  # partitioning them alone is several times cheaper
    if below > k:  # the quantile is under the floor
        if gated:
            return np.zeros(0, np.float32)
        cut = floor
    else:
        cut = np.partition(steep, k - below)[k - below]
    edges = g0 > cut
    return g0[edges] / np.maximum(g1[edges], np.float32(1e-12))


def _ratios(rgb: np.ndarray) -> np.ndarray:
    """:func:`_edge_ratios` of one window, its border left out."""
    g0, g1 = _gradients(rgb)
    inner = _inner(*g0.shape)
    return _edge_ratios(g0[inner], g1[inner])


def edge_blur_px(rgb: np.ndarray) -> float | None:
    """The median Gaussian blur σ of the edges of an ``(H, W, 3)`` uint8 RGB image, in its
    pixels, or ``None`` when it has too few edges to tell (a blank or flat image)."""
    h, w = rgb.shape[:2]
    return pooled_blur_px([rgb[ys, xs] for ys, xs in _windows(h, w)])


def pooled_blur_px(images: list[np.ndarray]) -> float | None:
    """:func:`edge_blur_px` of several images (e.g. windows of a slide's tissue) as one:
    each image's steepest pixels, pooled, and their median blur."""
    return _median_blur(np.concatenate([np.zeros(0, np.float32), *(_ratios(im) for im in images)]))


def _median_blur(ratios: np.ndarray) -> float | None:
    """The median blur σ (px) of edges with squared gradient ratios ``ratios``; ``None``
    under :data:`MIN_EDGES` of them."""
    if ratios.size < MIN_EDGES:
        return None
    r2 = np.maximum(ratios.astype(np.float64), 1.0 + 2e-4)
    return float(np.median(REBLUR / np.sqrt(r2 - 1.0)))


def cell_edges(n: int) -> np.ndarray:
    """The boundaries of the focus map's cells along a side of ``n`` pixels: ``n // CELL``
    (at least one) cells of near-equal length, so each is at least :data:`CELL` long."""
    return np.linspace(0, n, max(1, n // CELL) + 1).round().astype(int)


def focus_map_px(rgb: np.ndarray) -> np.ndarray:
    """The edge blur σ (px) of each cell of an ``(H, W, 3)`` uint8 image, on the grid of
    :func:`cell_edges` along each side: a ``(rows, cols)`` float64 array, NaN where a cell
    is mostly background (under 2 % of its pixels are edges) or has too few edges. The
    gradients are taken over the whole image once, so a cell's pixels are measured as
    the whole image's are (none of its border but the image's is left out)."""
    h, w = rgb.shape[:2]
    ys, xs = cell_edges(h), cell_edges(w)
    rows, cols = _inner(h, w)
    out = np.full((len(ys) - 1, len(xs) - 1), np.nan)
    for i in range(len(ys) - 1):
        # A row of cells with BAND_MARGIN rows of context: its gradients equal the whole
        # image's there, at a band's memory.
        top, bottom = max(0, ys[i] - BAND_MARGIN), min(h, ys[i + 1] + BAND_MARGIN)
        g0, g1 = _gradients(rgb[top:bottom])
        y = slice(max(ys[i], rows.start) - top, min(ys[i + 1], rows.stop) - top)
        for j in range(len(xs) - 1):
            x = slice(max(xs[j], cols.start), min(xs[j + 1], cols.stop))
            blur = _median_blur(_edge_ratios(g0[y, x], g1[y, x], gated=True))
            out[i, j] = np.nan if blur is None else blur
    return out


def edge_blur_um(rgb: np.ndarray, mpp: float) -> float | None:
    """:func:`edge_blur_px` of an image at ``mpp`` µm/px, in µm."""
    px = edge_blur_px(rgb)
    return None if px is None else px * float(mpp)


def focus_message(blur_um: float, what: str = "image") -> str:
    """The start of the one-line warning for an image (``what``: or a slide) whose edges are
    blurred by ``blur_um`` µm."""
    lo, hi = TRAINING_BLUR_UM
    return (
        f"this {what} looks out of focus: its edges are blurred by about {blur_um:.2f} µm (σ), against {lo:.2f}–{hi:.2f} µm "
        f"in the training data (threshold {BLUR_THRESHOLD_UM:g})"
    )


# --- deconvolution -------------------------------------------------------------------------


def deblur_sigma_px(blur_px: float, target_px: float) -> float:
    """The Gaussian σ (pixels) that takes an edge blur of ``blur_px`` back to ``target_px``:
    blurs add in quadrature, so ``sqrt(blur² − target²)``, at most :data:`MAX_DEBLUR_PX`."""
    return float(min(MAX_DEBLUR_PX, math.sqrt(max(0.0, blur_px * blur_px - target_px * target_px))))


def wiener_kernel(sigma: float, k: float = WIENER_K) -> np.ndarray:
    """The ``(2R+1, 2R+1)`` float64 spatial kernel of the Wiener filter ``H / (H² + k)`` of a
    Gaussian ``H`` of ``sigma`` pixels, cut at ``R = ceil(6σ) + 4`` (its tail beyond holds
    a few per cent of its weight) and scaled to sum 1, so flat areas keep their value."""
    radius = int(math.ceil(6 * sigma)) + 4
    n = 4 * radius + 4  # the grid the kernel is computed on: wider than it, so no wrap-around
    f = np.fft.fftfreq(n)
    h = np.exp(-2 * math.pi**2 * sigma * sigma * (f[:, None] ** 2 + f[None, :] ** 2))
    kernel = np.fft.fftshift(np.real(np.fft.ifft2(h / (h * h + k))))
    c = n // 2
    kernel = kernel[c - radius : c + radius + 1, c - radius : c + radius + 1]
    return kernel / kernel.sum()


def deblur(rgb: np.ndarray, sigma_px: float) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image deconvolved by a Gaussian of ``sigma_px`` pixels
    (:func:`wiener_kernel`; mirrored at the image's borders), as a new uint8 image. Strips
    of rows (about :data:`STRIP_PIXELS` pixels) are deconvolved one at a time with the
    rows around them, so a large image costs a strip's memory, and the result equals the
    whole image's."""
    from scipy.signal import fftconvolve

    kernel = wiener_kernel(sigma_px)
    r = kernel.shape[0] // 2
    h, w = rgb.shape[:2]
    mode = "reflect" if min(h, w) > r else "symmetric"  # a tiny image: NumPy's reflect needs more pixels than r
    out = np.empty_like(rgb)
    strip = max(2 * r + 1, STRIP_PIXELS // max(1, w))
    for y0 in range(0, h, strip):
        y1 = min(h, y0 + strip)
        top, bottom = max(0, y0 - r), min(h, y1 + r)
        rows = rgb[top:bottom].astype(np.float64)  # float64: strips round as the whole image does
        rows = np.pad(rows, ((r - (y0 - top), r - (bottom - y1)), (r, r), (0, 0)), mode=mode)
        for c in range(3):
            sharp = fftconvolve(rows[..., c], kernel, mode="valid")
            np.clip(np.rint(sharp), 0, 255, out=sharp)
            out[y0:y1, :, c] = sharp
    return out


def out_of_focus(blur_um: float | None) -> bool:
    """Whether an edge blur (µm; ``None``: not measured) lies beyond :data:`BLUR_THRESHOLD_UM`."""
    return blur_um is not None and blur_um > BLUR_THRESHOLD_UM


def sharpened(rgb: np.ndarray, mpp: float, setting: str | None) -> tuple[np.ndarray, float | None]:
    """An image at ``mpp`` µm/px (the model's) measured and, when ``setting`` (the
    Detector's ``deblur``) is ``"auto"`` and its edge blur exceeds
    :data:`BLUR_THRESHOLD_UM`, deconvolved back to :data:`DEBLUR_TARGET_UM` (:func:`deblur`).

    Returns:
        ``(image, blur_um)``: the image (``rgb`` itself unless deconvolved) and its edge
        blur in µm before any deconvolution (``None``: too few edges).
    """
    image, blur, _ = sharpened_cells(rgb, mpp, setting)
    return image, blur


def sharpened_cells(rgb: np.ndarray, mpp: float, setting: str | None) -> tuple[np.ndarray, float | None, list[tuple[int, int, int, int, float]]]:
    """:func:`sharpened`, with the soft cells of an image judged cell by cell: each one's
    box ``(x0, y0, x1, y1)`` in the image's pixels and its edge blur in µm (none for an
    image judged whole, under ``deblur=None``, or with no soft cell)."""
    blur = edge_blur_um(rgb, mpp)
    if setting != "auto":
        return rgb, blur, []
    if rgb.shape[0] * rgb.shape[1] > WHOLE:
        image, cells = _deblur_cells(rgb, mpp)
        return image, blur, cells
    return deblur_whole(rgb, mpp, blur), blur, []


def target_sigma_px(blur_um: float, mpp: float) -> float:
    """The Gaussian σ (pixels at ``mpp`` µm/px) that takes an edge blur of ``blur_um`` back
    to :data:`DEBLUR_TARGET_UM` (:func:`deblur_sigma_px`)."""
    return deblur_sigma_px(blur_um / mpp, DEBLUR_TARGET_UM / mpp)


def deblur_whole(rgb: np.ndarray, mpp: float, blur_um: float | None) -> np.ndarray:
    """An image judged whole: deconvolved back to :data:`DEBLUR_TARGET_UM` when its edge
    blur ``blur_um`` lies beyond :data:`BLUR_THRESHOLD_UM`, else ``rgb`` itself (what
    ``deblur="auto"`` does to an image up to :data:`WHOLE` pixels)."""
    return deblur(rgb, target_sigma_px(blur_um, mpp)) if out_of_focus(blur_um) else rgb


def cells_in_core(tile: Any, cells: list[tuple[int, int, int, int, float]]) -> list[tuple[int, int, int, int, float]]:
    """A tile's soft cells (:func:`sharpened_cells` on its pixels) cut to its core, whose
    nuclei it keeps, in the pixels of the image the tile was cut from; cells outside the
    core are left to the tiles whose cores they lie in."""
    kept = []
    for x0, y0, x1, y1, blur in cells:
        bx0, by0 = max(tile.x0 + x0, tile.core_x0), max(tile.y0 + y0, tile.core_y0)
        bx1, by1 = min(tile.x0 + x1, tile.core_x1), min(tile.y0 + y1, tile.core_y1)
        if bx0 < bx1 and by0 < by1:
            kept.append((bx0, by0, bx1, by1, blur))
    return kept


def _ramps(edges: np.ndarray) -> np.ndarray:
    """``(n, cells)`` float64: each cell's indicator along a side of ``n = edges[-1]`` pixels,
    smoothed by a box of ``2·RAMP + 1`` pixels (edge values held at the borders). Rows sum
    to 1, and a pixel beyond ``RAMP`` of a cell has exactly 0 of it."""
    from scipy import ndimage

    n = int(edges[-1])
    ind = np.zeros((n, len(edges) - 1))
    for k in range(len(edges) - 1):
        ind[edges[k] : edges[k + 1], k] = 1.0
    return np.clip(ndimage.uniform_filter1d(ind, 2 * RAMP + 1, axis=0, mode="nearest"), 0.0, 1.0)


def soft_cells(cells_um: np.ndarray) -> np.ndarray:
    """Which cells of a focus map (µm, NaN: not measured) are out of focus: beyond
    :data:`BLUR_THRESHOLD_UM`, with at least one of their eight neighbours beyond it too
    (a lone cell's reading rests on few edges: on CMU-1 one cell of mostly glass and smooth
    keratin reads 0.78 µm, the slide's only one beyond, ``benchmarks/focus_map_stats.py``),
    unless every measured cell is."""
    from scipy import ndimage

    beyond = np.nan_to_num(cells_um, nan=0.0) > BLUR_THRESHOLD_UM
    if beyond.sum() == (~np.isnan(cells_um)).sum():
        return beyond
    neighbours = ndimage.convolve(beyond.astype(np.int32), np.ones((3, 3), np.int32), mode="constant") - beyond
    return beyond & (neighbours > 0)


def deblur_cells(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image at ``mpp`` µm/px with its out-of-focus cells
    (:func:`focus_map_px` beyond :data:`BLUR_THRESHOLD_UM`) deconvolved back to
    :data:`DEBLUR_TARGET_UM` at the median blur of those cells (:func:`soft_cells`: a
    lone soft cell does not count), and the rest untouched
    (``rgb`` itself when no cell is soft). No cell in focus: the whole image is deconvolved,
    as :func:`sharpened` does a small one. A soft cell blends into its in-focus neighbours
    over :data:`RAMP` pixels on each side of their border (bilinear in the smoothed cell
    indicators); beyond that every pixel keeps its value exactly. The soft cells' box is
    deconvolved with the kernel's radius of pixels around it, so it equals the whole
    image's deconvolution there."""
    return _deblur_cells(rgb, mpp)[0]


def _deblur_cells(rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, list[tuple[int, int, int, int, float]]]:
    """:func:`deblur_cells`, and its soft cells (box in pixels, edge blur in µm)."""
    cells = focus_map_px(rgb) * float(mpp)
    measured = ~np.isnan(cells)
    soft = soft_cells(cells)
    if not soft.any():
        return rgb, []
    h, w = rgb.shape[:2]
    ys, xs = cell_edges(h), cell_edges(w)
    boxes = [(int(xs[j]), int(ys[i]), int(xs[j + 1]), int(ys[i + 1]), round(float(cells[i, j]), 4)) for i, j in np.argwhere(soft)]
    sigma = target_sigma_px(float(np.median(cells[soft])), mpp)
    if not (measured & ~soft).any():
        return deblur(rgb, sigma), boxes
    a, b = _ramps(ys), _ramps(xs)
    weights = soft.astype(np.float64)
    rows, cols = np.nonzero(a @ weights.any(axis=1) > 0)[0], np.nonzero(b @ weights.any(axis=0) > 0)[0]
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    r = wiener_kernel(sigma).shape[0] // 2
    cy0, cx0 = max(0, y0 - r), max(0, x0 - r)
    sharp = deblur(rgb[cy0 : min(h, y1 + r), cx0 : min(w, x1 + r)], sigma)[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
    out = rgb.copy()
    step = max(1, BLEND_PIXELS // max(1, x1 - x0))
    for s0 in range(y0, y1, step):
        s1 = min(y1, s0 + step)
        weight = (a[s0:s1] @ weights @ b[x0:x1].T).astype(np.float32)[..., None]
        src = rgb[s0:s1, x0:x1].astype(np.float32)
        blend = sharp[s0 - y0 : s1 - y0].astype(np.float32)
        blend -= src
        blend *= weight
        blend += src
        out[s0:s1, x0:x1] = np.rint(blend, out=blend)
    return out, boxes


def deblur_bytes(height: int, width: int) -> int:
    """An upper bound on the memory :func:`deblur` allocates for an image of
    ``height × width`` pixels at the largest σ (:data:`MAX_DEBLUR_PX`): the uint8 output,
    and one strip's float64 padded rows plus SciPy's real-FFT buffers for one channel
    (padded to fast lengths, a few complex128 and float64 planes of the strip)."""
    r = math.ceil(6 * MAX_DEBLUR_PX) + 4
    strip = min(height, max(2 * r + 1, STRIP_PIXELS // max(1, width)))
    rows, cols = strip + 2 * r, width + 2 * r  # the padded strip
    # fftconvolve: both operands padded to about (rows + 2r) × (cols + 2r), rounded up to
    # fast FFT lengths (≤ 1/8 more per side), and their half-spectra (complex128).
    fy, fx = (rows + 2 * r) * 9 // 8 + 1, (cols + 2 * r) * 9 // 8 + 1
    fft = 3 * fy * (fx // 2 + 1) * 16 + 2 * fy * fx * 8
    return 3 * height * width + rows * cols * 3 * 8 + fft


def sharpened_bytes(height: int, width: int) -> int:
    """An upper bound on the memory :func:`sharpened` allocates under ``deblur="auto"`` for
    an image of ``height × width`` pixels: :func:`deblur_bytes` (an image judged whole, or
    the soft cells' box), plus, for an image judged cell by cell, the blended uint8 copy and
    one strip's weights and float32 planes, or the focus map's gradients of a row of cells
    if more."""
    total = deblur_bytes(height, width)
    if height * width <= WHOLE:
        return total
    strip = min(height, max(1, BLEND_PIXELS // max(1, width))) * width
    band = min(height, 2 * CELL + 2 * BAND_MARGIN) * width  # the focus map's row of cells, freed before
    return max(total + 3 * height * width + strip * (8 + 4 + 2 * 3 * 4), band * 4 * GRADIENT_PLANES)
