"""Overlapping tiles whose peaks, merged, equal one whole-image pass.

An image larger than a tile is cut into *cores* that partition it; each core is grown
by a *margin* on every side (clipped at the image border) to give the tile the network
sees. Every tile keeps only the peaks inside its own core, so every pixel is decided by
exactly one tile. The result is the whole-image result when two conditions hold:

1. **The margin covers the receptive field plus the peak window.** A map value is
   exact when every input pixel it depends on is inside the tile; a peak test also
   reads the ``(2·min_distance+1)²`` window around the pixel. So
   ``margin ≥ receptive radius + min_distance``.
2. **Tile origins sit on the network's downsampling grid.** MicroNet halves the map
   three times with stride-2 convolutions (8× in all); a tile starting at a multiple of
   8 sees the same stride-2 sampling grid, at every depth, as the whole image does.
   A tile starting elsewhere samples other positions and gives other values.

MicroNet's receptive radius is 76 px up/left and 69 px down/right: the farthest input
row or column whose change moves an output pixel, over all 64 output positions modulo
8, measured on the exported model by ``python tools/measure_receptive_field.py``
(``benchmarks/results/receptive_field.json``). The depth structure fixes it; widths do
not change it, and ``tests/runtime/test_tiling_margin.py`` measures it again on a tiny
model of another width. With the default ``min_distance = 3`` the margin is therefore
``ceil8(76 + 3) = 80`` px. A 1024 px tile then has an 864 px core: 1.4× the pixels of
a whole-image pass, in exchange for bounded memory and batchable tiles.

The baselines of the seed paper's Table 1 (trainer/baselines.py) run through the same
tiling with their own measured radius and stride (``RECEPTIVE_RADIUS``, ``ALIGNMENT``:
``python tools/measure_receptive_field.py --architecture all``). FCN-8s sees 245 px
around a pixel at a stride of 32, so its margin is 256 px and a 1024 px tile keeps only
a 512 px core: pass a larger ``tile_size`` to ``Detector`` for it.

**Tile size from activation memory.** On the CPU the tile's side is what bounds memory:
ONNX Runtime's arena grows to the activations of the largest tile it has run and keeps
them. :func:`memory_tile_size` picks the largest tile whose estimated arena working set
(:func:`tile_bytes_per_pixel`) fits :data:`TILE_MEMORY_BUDGET`, from the model's
metadata alone, so a new model family needs no table entry.

Near-ties are the one caveat: floating-point kernels may pick other algorithms for
other tile shapes, so a map value can differ in the last bits. The tests check that
ONNX Runtime's CPU provider gives identical peaks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError

__all__ = [
    "Tile",
    "plan_tiles",
    "receptive_radius",
    "default_margin",
    "keep_in_core",
    "sort_peaks",
    "sort_scored",
    "alignment",
    "memory_tile_size",
    "tile_bytes_per_pixel",
    "RECEPTIVE_RADIUS",
    "ALIGNMENT",
    "TILE_MEMORY_BUDGET",
]

log = logging.getLogger(__name__)

# Architecture name (ModelInfo.architecture["name"]) → receptive radius in input pixels
# (the largest of the four sides). Measured on the exported ONNX of each (MicroNet: the
# bundled model and a tiny one; the baselines of micronet.trainer.baselines: tiny random
# exports, the radius being the depth structure's) by
#   python tools/measure_receptive_field.py --architecture all --json benchmarks/results/receptive_field.json
# A MicroNet whose class head runs at 1/4 resolution (MicroNetConfig.class_scale 4): its
# logits read 83 px up, 81 left, 76 down, 75 right, farther than the map: block 10's
# input (whose field is the map's) pooled over 4×4 cells, through a 3×3 convolution at 1/4
# and the resize ×4 (tests/runtime/test_tiling_margin.py measures it). The tiles' margin
# grows from 80 to 88 px for such a model, so that classes are the same whole and tiled.
CLASS_QUARTER_RADIUS = 83
# Each residual block of such a head (MicroNetConfig.class_depth: two 3×3 convolutions at
# 1/4) reads 8 px farther (the same test measures a head with one).
CLASS_BLOCK_RADIUS = 8
RECEPTIVE_RADIUS: dict[str, int] = {"micronet": 76, "fcn": 245, "unet": 107, "fcrn_a": 36, "fcrn_b": 22, "frcn": 52}

# Architecture name → total downsampling factor (stride): tile origins are multiples of
# it, so a tile samples the whole image's grid at every depth. Measured by the same
# command (the smallest input shift that shifts the map alike); it is 2 to the number of
# 2×2 max pools (baselines) or stride-2 convolutions (MicroNet) on the deepest path.
ALIGNMENT: dict[str, int] = {"micronet": 8, "fcn": 32, "unet": 16, "fcrn_a": 8, "fcrn_b": 4, "frcn": 8}

# The arena working set a default tile may take on the CPU (batch included). The rest of
# a slide run comes on top: the interpreter, ONNX Runtime and the weights (90-160 MB), the
# slide reader, tissue mask and outputs (90-160 MB on CMU-1, 220 MB on a 40,000² slide;
# benchmarks/results/slide_memory*.md), so a run stays under 1 GB with any bundled model.
TILE_MEMORY_BUDGET = 600 * 2**20
# The default tile's bounds: more than this gains < 10 % in overlap and coarsens progress.
LARGEST_MEMORY_TILE = 2048
# Peak bytes per tile pixel in ONNX Runtime's CPU arena (memory pattern off, see
# backends/onnxruntime.py): a fixed part (the uint8 input, its float copy in blocked
# layout, the map) and a part per activation value (_activation_values). Measured by
# ``python benchmarks/bench_tile_memory.py`` (results/tile_memory.md) on MicroNet
# 8-16-32-32, 16-32-64-64 and 32-64-128-128, ReLU and ELU, fp32, fp16 and int8, at tiles
# of 384² to 1024², and set at or above the largest measurement: the arena grows by
# powers of two, so one model's bytes per pixel vary by up to a quarter with the tile
# size. fp16 runs as fp32 on the CPU.
_ARENA_BYTES = {"fp32": (128, 13.5), "fp16": (128, 13.5), "int8": (48, 6.0)}
# A class head costs more per value than the trunk at any precision: it runs in float
# (the int8 export keeps both heads float), and its logits leave the session beside the
# map and are joined to it (runtime/backends/onnxruntime.py). Measured on CMU-1 with the
# bundled int8 `phenotypes` model (16-32-64-64, 6 context channels, 4 classes): peak RSS
# 533 MB at 768² tiles, 872 MB at 1024², 1225 MB at 1176² (`micronet detect` /
# Detector.detect_slide, /usr/bin/time -v): about 740 B per pixel, of which the head's 20
# values take about 410; 22 B per head value keeps the estimate above the measurement.
_CLASS_HEAD_BYTES = 22.0
# A class head at 1/4 resolution (class_scale 4) holds no full-resolution map but its K
# logits, which are made after the trunk's largest maps are freed. Measured on a 2000²
# image at the tile of the model without the head (tools/head_memory.py), it adds 163 B
# per pixel to the wide fp32 network's peak (20.5 head values: 8 B each) and 14 B to the
# lean int8 one's (12.25 values: 1.1 B each).
_QUARTER_HEAD_BYTES = {"fp32": 8.0, "fp16": 8.0, "int8": 1.5}


@dataclass(frozen=True)
class Tile:
    """One tile of an image, in the image's pixels; ends are exclusive.

    Attributes:
        y0, y1, x0, x1: the tile the network sees: rows ``y0:y1``, columns ``x0:x1``.
        core_y0, core_y1, core_x0, core_x1: the part whose peaks this tile keeps; the
            cores of a plan partition the image.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    core_y0: int
    core_y1: int
    core_x0: int
    core_x1: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the tile."""
        return (self.y1 - self.y0, self.x1 - self.x0)

    def crop(self, image: Any) -> Any:
        """The tile's ``(h, w, ...)`` view of an ``(H, W, ...)`` image."""
        return image[self.y0 : self.y1, self.x0 : self.x1]


def receptive_radius(architecture: dict[str, Any]) -> int:
    """Receptive radius (input pixels) of an architecture described as in ``ModelInfo``.

    Raises:
        ValueError: an architecture whose radius is not known; pass the tile margin
            explicitly then.
    """
    name = architecture.get("name") if isinstance(architecture, dict) else None
    if name not in RECEPTIVE_RADIUS:
        raise InputError(
            f"the receptive field of architecture {name!r} is not known (known: {', '.join(RECEPTIVE_RADIUS)}); "
            "pass tile_margin= explicitly (at least the receptive radius plus min_distance, a multiple of the downsampling factor)"
        )
    radius = RECEPTIVE_RADIUS[name]
    if name == "micronet" and _quarter_head(architecture):
        radius = max(radius, CLASS_QUARTER_RADIUS + CLASS_BLOCK_RADIUS * _class_depth(architecture))  # the class logits read farther than the map
    return radius


def alignment(architecture: dict[str, Any]) -> int:
    """Downsampling factor of an architecture (1 when unknown: no grid to align to)."""
    name = architecture.get("name") if isinstance(architecture, dict) else None
    return ALIGNMENT.get(name, 1)


def default_margin(architecture: dict[str, Any], min_distance: int) -> int:
    """The smallest margin that makes tiling exact: receptive radius + ``min_distance``,
    rounded up to the architecture's downsampling factor (80 for MicroNet with
    ``min_distance = 3``)."""
    align = alignment(architecture)
    return int(math.ceil((receptive_radius(architecture) + int(min_distance)) / align) * align)


def _axis_spans(length: int, tile: int, margin: int, align: int, min_size: int) -> list[tuple[int, int, int, int]]:
    """``(start, stop, core_start, core_stop)`` along one axis.

    Tile k starts at ``k · (tile − 2·margin)`` (a multiple of the alignment when tile and
    margin are); its core is its extent less a margin on each inner side. The last tile
    runs to the end of the axis, so it may be shorter than ``tile`` (but longer than
    ``2·margin``); when that is shorter than ``min_size`` it starts earlier (on the
    grid), keeping its core. Every tile is at most ``tile`` long.
    """
    if length <= tile:
        return [(0, length, 0, length)]
    step = tile - 2 * margin
    spans = []
    start, core_start = 0, 0
    while start + tile < length:
        core_stop = start + tile - margin
        spans.append((start, start + tile, core_start, core_stop))
        start, core_start = start + step, core_stop
    if length - start < min_size:
        start = min(start, max(0, (length - min_size) // align * align))
    spans.append((start, length, core_start, length))
    return spans


def plan_tiles(height: int, width: int, tile_size: int, margin: int, align: int = 8, min_size: int = 1) -> list[Tile]:
    """Tiles covering an ``(height, width)`` image, row-major.

    Args:
        height, width: image size in pixels (≥ 1).
        tile_size: the largest tile side; an image no larger than this along an axis is
            not cut along that axis. A multiple of ``align``.
        margin: context on each inner side of a core; a multiple of ``align``, and
            ``tile_size > 2·margin``.
        align: the network's downsampling factor; every tile origin is a multiple of it.
        min_size: the smallest tile side a backend accepts (a TensorRT profile's
            minimum); tiles of a cut axis are at least this long. At most
            ``tile_size − align + 1``.

    Returns:
        Tiles whose cores partition the image. An image that fits one tile gives one
        tile covering it, core included.

    >>> [(t.x0, t.x1, t.core_x0, t.core_x1) for t in plan_tiles(10, 300, 128, 32)]
    [(0, 128, 0, 96), (64, 192, 96, 160), (128, 256, 160, 224), (192, 300, 224, 300)]
    """
    for name, value in (("height", height), ("width", width), ("tile_size", tile_size), ("align", align), ("min_size", min_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"{name}: expected an integer >= 1, got {value!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
        raise InputError(f"margin: expected an integer >= 0, got {margin!r}")
    if tile_size % align or margin % align:
        raise InputError(
            f"tile_size and margin: expected multiples of {align} (the network's downsampling factor), "
            f"got tile_size={tile_size}, margin={margin}"
        )
    if tile_size <= 2 * margin:
        raise InputError(f"tile_size: expected more than 2 × margin = {2 * margin}, got {tile_size}")
    if min_size > tile_size - align + 1:
        raise InputError(f"min_size: expected at most tile_size − {align - 1} = {tile_size - align + 1}, got {min_size}")
    rows = _axis_spans(int(height), int(tile_size), int(margin), int(align), int(min_size))
    cols = _axis_spans(int(width), int(tile_size), int(margin), int(align), int(min_size))
    return [Tile(y0, y1, x0, x1, cy0, cy1, cx0, cx1) for (y0, y1, cy0, cy1) in rows for (x0, x1, cx0, cx1) in cols]


def keep_in_core(tile: Tile, xy: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The peaks of one tile that lie in its core, moved to image coordinates.

    Args:
        tile: the tile the peaks were found in.
        xy: ``(N, 2)`` float32 ``(x, y)`` in the tile's pixels.
        scores: ``(N,)`` their map values.

    Returns:
        ``(xy, scores)`` of the kept peaks, ``xy`` in the image's pixels. A peak belongs
        to the core holding its (whole-pixel) position.
    """
    keep = core_mask(tile, xy)
    x = xy[:, 0] + tile.x0
    y = xy[:, 1] + tile.y0
    out = np.stack([x[keep], y[keep]], axis=1).astype(np.float32, copy=False).reshape(-1, 2)
    return out, scores[keep]


def core_mask(tile: Tile, xy: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: which of a tile's peaks (``xy`` in the tile's pixels) lie in its
    core, the peaks :func:`keep_in_core` keeps (and values that travel with them, such as
    class probabilities, keep with it)."""
    # Whole-pixel positions; a refined one (±0.5 px) counts for its nearest pixel.
    px, py = np.floor(xy[:, 0] + tile.x0 + 0.5), np.floor(xy[:, 1] + tile.y0 + 0.5)
    return (px >= tile.core_x0) & (px < tile.core_x1) & (py >= tile.core_y0) & (py < tile.core_y1)


def sort_peaks(xy: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The permutation that puts peaks in ``find_peaks`` order: highest score first, ties
    in row-major order (apply it to the values that travel with the peaks too)."""
    if len(scores) < 2:
        return np.arange(len(scores))
    return np.lexsort((xy[:, 0], xy[:, 1], -scores.astype(np.float64)))


def sort_scored(xy: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Peaks in :func:`sort_peaks` order from ``(N, 2)`` positions and ``values``:
    ``(N,)`` scores, or ``(N, 1 + K)`` the score then the K class probabilities.
    Returns ``(xy, scores, class probabilities or None)``, sorted."""
    perm = sort_peaks(xy, values[:, 0] if values.ndim == 2 else values)
    xy, values = xy[perm], values[perm]
    return (xy, values[:, 0], values[:, 1:]) if values.ndim == 2 else (xy, values, None)


# --- tile size from activation memory --------------------------------------------------------


def _activation_values(architecture: dict[str, Any]) -> float | None:
    """Activation values per input pixel in one feature map per depth of a MicroNet: depth
    d (0-3) runs at 1/2^d of the resolution, so ``widths[d] / 4**d``; the context branches
    and the class head's hidden map are at full resolution. ``None`` for architectures
    without MicroNet's widths (the baselines)."""
    if not isinstance(architecture, dict) or architecture.get("name") != "micronet":
        return None
    try:
        widths = [float(w) for w in architecture["widths"]]
        context = _aggregated_channels(architecture) - widths[0]
    except (KeyError, TypeError, ValueError):
        return None
    return sum(w / 4**d for d, w in enumerate(widths)) + context


def _aggregated_channels(architecture: dict[str, Any]) -> float:
    """Channels of block 10's input: block 9's output and the multi-context branches."""
    return float(architecture["widths"][0]) + float(architecture.get("context_channels", 0)) * len(architecture.get("context_depths", ()))


def _quarter_head(architecture: dict[str, Any]) -> bool:
    """Whether the architecture has a class head at 1/4 resolution (``class_scale`` 4)."""
    return bool(architecture.get("classes")) and int(architecture.get("class_scale", 1) or 1) == 4


def _class_depth(architecture: dict[str, Any]) -> int:
    """Residual blocks of a head at 1/4 (``class_depth``; absent before the field existed)."""
    return int(architecture.get("class_depth", 0) or 0)


def _class_head_values(architecture: dict[str, Any]) -> float:
    """Values per pixel of the class head (0 without a head). At full resolution: its
    hidden map, the K logits and its deep context's two full-resolution maps. At 1/4
    (``class_scale`` 4): the K resized logits, and its 1/4-resolution input, hidden map and
    logits counted per full-resolution pixel (÷ 16)."""
    classes = architecture.get("classes") if isinstance(architecture, dict) else None
    if not classes:
        return 0.0
    widths, k = [float(w) for w in architecture["widths"]], len(classes)
    cc = float(architecture.get("class_context", 0) or 0)
    if _quarter_head(architecture):
        hidden = widths[0] * (1 + 2 * _class_depth(architecture))  # each block: two maps
        return k + (widths[2] + cc + _aggregated_channels(architecture) + hidden + k) / 16.0
    return widths[0] + k + 2.0 * cc


def tile_bytes_per_pixel(architecture: dict[str, Any], precision: str) -> float | None:
    """Estimated peak bytes ONNX Runtime's CPU provider holds per pixel of a tile:
    ``fixed + per_value · values``, with ``values`` the activation values per pixel of
    one feature map per depth (``Σ widths[d] / 4**d`` plus the full-resolution context
    and class-head channels) and ``fixed``, ``per_value`` measured for the precision
    (fp32 and fp16: 128 B + 13.5 B per value; int8: 48 B + 6 B). The wide fp32 MicroNet
    (32-64-128-128, 16 context channels) gives 1559 B/px, the lean int8 one 366 B/px.

    Returns:
        Bytes per pixel, or ``None`` for an architecture or precision it cannot estimate.
    """
    values = _activation_values(architecture)
    if values is None or precision not in _ARENA_BYTES:
        return None
    fixed, per_value = _ARENA_BYTES[precision]
    head = _QUARTER_HEAD_BYTES[precision] if _quarter_head(architecture) else _CLASS_HEAD_BYTES
    return fixed + per_value * values + head * _class_head_values(architecture)


def memory_tile_size(
    architecture: dict[str, Any], precision: str, batch_size: int = 1, budget: int = TILE_MEMORY_BUDGET
) -> int | None:
    """The largest tile side whose ``batch_size`` tiles fit ``budget`` bytes of
    activations (:func:`tile_bytes_per_pixel`): ``floor(sqrt(budget / (batch_size ·
    bytes per pixel)))``, down to a multiple of the architecture's alignment, at most
    :data:`LARGEST_MEMORY_TILE` and at least four margins (a smaller tile would be
    mostly overlap; a warning says the budget is exceeded then).

    >>> wide = {"name": "micronet", "widths": [32, 64, 128, 128], "context_channels": 16, "context_depths": [2, 3, 4]}
    >>> memory_tile_size(wide, "fp32"), memory_tile_size({**wide, "widths": [16, 32, 64, 64], "context_channels": 8}, "int8")
    (632, 1304)

    Returns:
        The tile side in pixels, or ``None`` when the memory of this architecture or
        precision is not known (then the caller's default applies).
    """
    per_pixel = tile_bytes_per_pixel(architecture, precision)
    if per_pixel is None:
        return None
    align = alignment(architecture)
    side = int(math.sqrt(budget / (max(1, int(batch_size)) * per_pixel))) // align * align
    smallest = 4 * default_margin(architecture, 3)
    if side < smallest:
        log.warning(
            "this model needs an estimated %.0f MB of activations per %d² tile (batch %d), more than the %.0f MB budget; "
            "using tiles of %d² anyway (pass tile_size= to choose)",
            batch_size * per_pixel * smallest**2 / 2**20, smallest, batch_size, budget / 2**20, smallest,
        )
        return smallest
    return min(side, LARGEST_MEMORY_TILE)
