"""A classical nucleus detector, the benchmark peer of the networks: colour deconvolution,
smoothing, local maxima, the pipeline QuPath's default cell detection starts from.

    python benchmarks/classical.py            # the cached parameters (tuned first if none are cached)
    python benchmarks/classical.py --retune   # rerun the grid search on CRCHisto train + val

The pipeline, at the image's own pixel size (parameters in µm, so one setting serves
CRCHisto at 0.55 µm/px and MoNuSeg at 0.25 µm/px):

1. colour deconvolution (Ruifrok & Johnston 2001) with scikit-image's H&E-DAB stain
   matrix: the hematoxylin channel of ``skimage.color.rgb2hed``, in its units (optical
   density over that of ``1e-6``, the floor it puts under black, so about 0-1; **not**
   QuPath's log10 OD, whose thresholds do not carry over). :func:`hematoxylin` computes exactly that channel
   with one 256-entry table per colour, as the image is uint8 (``rgb2hed`` takes the log
   of every pixel in float64; the table gives the same values, float32, about 20x sooner);
2. a Gaussian blur of ``sigma_um`` (``scipy.ndimage.gaussian_filter``);
3. local maxima above ``threshold`` and at least ``min_distance_um`` apart, found by the
   runtime's peak finder (:func:`micronet.runtime.peaks.find_peaks`, the peaks of
   ``skimage.feature.peak_local_max`` with the same parameters), the one the networks'
   maps go through: the comparison isolates the map.

:func:`tune` grid-searches σ and the minimum distance on the CRCHisto **train and val**
splits (never test); each (σ, distance) pair's candidates are found once at the lowest
threshold and :func:`micronet.runtime.evaluation.sweep.threshold_sweep` scores every threshold of
the grid from them (raising the threshold only removes peaks), maximising pooled F1 at a
6 px radius (the CRCHisto convention; ``matching``'s gated Hungarian assignment). The
result is cached in ``benchmarks/results/classical_params.json`` with its grid, the F1 of
every pair and the train / val F1 of the chosen one; :func:`load_params` reuses it.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, RESULTS  # noqa: E402

__all__ = ["DEFAULT_GRID", "PARAMS_FILE", "ClassicalParams", "Grid", "candidates", "detect", "hematoxylin", "load_params", "tune"]

log = logging.getLogger(__name__)

PARAMS_FILE = RESULTS / "classical_params.json"
TUNE_SPLITS = ("train", "val")
TUNE_RADIUS = 6.0  # px at 20x (CRCHisto's published protocol, ../shared/data/README.md)


@dataclass(frozen=True)
class ClassicalParams:
    """The detector's settings, in physical units so they hold at any pixel size.

    Attributes:
        sigma_um: standard deviation of the Gaussian blur of the hematoxylin channel, µm.
        min_distance_um: minimum distance between two detections (Chebyshev, as the
            peak finder's window), µm; at least one pixel.
        threshold: a maximum is a detection when the blurred hematoxylin is strictly
            above this, in ``rgb2hed`` units (about 0-1).
    """

    sigma_um: float
    min_distance_um: float
    threshold: float

    def __post_init__(self) -> None:
        for name in ("sigma_um", "min_distance_um"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: expected a positive number of µm, got {value!r}")
        if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool) or not math.isfinite(self.threshold):
            raise ValueError(f"threshold: expected a finite number (rgb2hed hematoxylin units), got {self.threshold!r}")

    def pixels(self, mpp: float) -> tuple[float, int]:
        """``(sigma, min_distance)`` in pixels of an image at ``mpp`` µm/px."""
        return self.sigma_um / mpp, max(1, round(self.min_distance_um / mpp))


@dataclass(frozen=True)
class Grid:
    """The search space of :func:`tune`: σ and minimum distance in µm (each pair is one
    pass of blur and peak finding), and the thresholds every pair is swept over."""

    sigma_um: tuple[float, ...]
    min_distance_um: tuple[float, ...]
    thresholds: tuple[float, ...]

    @property
    def combinations(self) -> int:
        return len(self.sigma_um) * len(self.min_distance_um) * len(self.thresholds)


# 8 blurs x 6 distances = 48 peak-finding passes, each swept over 51 thresholds (the
# sweep costs about one matching, so the threshold axis is fine and nearly free). Nuclei
# in H&E are about 5-10 µm across; a first search over blurs of 0.5-5 µm and distances of
# 1-8 µm peaked near σ 1.5-1.75 µm and the shortest distances on CRCHisto train + val
# (F1 fell steadily from 3 µm on), and this grid brackets that finely. The distances are
# 1, 2, 3, 4, 5 and 6 px at CRCHisto's 0.55 µm/px (no two the same pixel count there).
# The thresholds run from 0 past the blurred hematoxylin of most nuclei (0.03-0.06;
# background about 0.01).
DEFAULT_GRID = Grid(
    sigma_um=(0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0),
    min_distance_um=(0.5, 1.0, 1.5, 2.0, 2.5, 3.5),
    thresholds=tuple(float(t) for t in np.round(np.linspace(0.0, 0.1, 51), 4)),
)


@functools.lru_cache(maxsize=1)
def _od_tables() -> np.ndarray:
    """``(3, 256)`` float32: each uint8 value's contribution to the hematoxylin channel of
    ``skimage.color.rgb2hed``, one row per colour (R, G, B)."""
    from skimage.color import hed_from_rgb

    value = np.maximum(np.arange(256) / 255.0, 1e-6)  # rgb2hed's floor against log(0)
    od = np.log(value) / np.log(1e-6)  # its normalised optical density
    return (od[None, :] * hed_from_rgb[:, 0:1]).astype(np.float32)  # stains = od @ hed_from_rgb


def _check_rgb(rgb: Any) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"rgb: expected a numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb: expected an (H, W, 3) uint8 RGB image, got shape {rgb.shape} {rgb.dtype}")
    return rgb


def _check_mpp(mpp: Any) -> float:
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float, np.floating)) or not math.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"mpp: expected the image's pixel size, a positive number of µm/px, got {mpp!r}")
    return float(mpp)


def hematoxylin(rgb: np.ndarray) -> np.ndarray:
    """The hematoxylin channel of colour deconvolution: ``skimage.color.rgb2hed(rgb)[..., 0]``.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB.

    Returns:
        ``(H, W)`` float32, >= 0 (rgb2hed units: about 0 on white, up to about 1).
    """
    rgb = _check_rgb(rgb)
    t = _od_tables()
    h = t[0][rgb[..., 0]]
    h += t[1][rgb[..., 1]]
    h += t[2][rgb[..., 2]]
    return np.maximum(h, 0.0, out=h)  # rgb2hed clips each stain at 0


def _blurred(rgb: np.ndarray, mpp: float, sigma_um: float) -> np.ndarray:
    return ndimage.gaussian_filter(hematoxylin(rgb), sigma_um / mpp)


def candidates(rgb: np.ndarray, mpp: float, params: ClassicalParams) -> tuple[np.ndarray, np.ndarray]:
    """Every maximum above ``params.threshold``, with its blurred hematoxylin value.

    Returns:
        ``(xy, scores)``: ``(N, 2)`` float32 ``(x, y)`` = (column, row) in the image's
        pixels and ``(N,)`` float32 scores, highest first.
    """
    from micronet.runtime.peaks import find_peaks

    mpp = _check_mpp(mpp)
    _, distance = params.pixels(mpp)
    return find_peaks(_blurred(_check_rgb(rgb), mpp, params.sigma_um), params.threshold, distance)


def detect(rgb: np.ndarray, mpp: float, params: ClassicalParams) -> np.ndarray:
    """Nucleus centres by colour deconvolution, Gaussian blur and local maxima.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB H&E image.
        mpp: its pixel size, µm/px (the parameters are in µm).
        params: the settings, e.g. :func:`load_params` (tuned on CRCHisto train + val).

    Returns:
        ``(N, 2)`` float32 ``(x, y)`` = (column, row) in the image's pixels.
    """
    return candidates(rgb, mpp, params)[0]


# --- tuning ----------------------------------------------------------------------------


def _pair_sweep(blurred: Sequence[np.ndarray], points: Sequence[np.ndarray], mpp: float, sigma_um: float, grid: Grid, radius: float) -> list[dict[str, Any]]:
    """One blur (``blurred``: each image's blurred hematoxylin), every distance of the
    grid: the best threshold of each and its pooled F1."""
    from micronet.runtime.evaluation.sweep import threshold_sweep
    from micronet.runtime.peaks import find_peaks

    thresholds = np.asarray(grid.thresholds, dtype=np.float64)
    rows = []
    for d_um in grid.min_distance_um:
        floor = ClassicalParams(sigma_um, d_um, float(thresholds.min()))
        _, distance = floor.pixels(mpp)
        found = [find_peaks(b, floor.threshold, distance) for b in blurred]
        sweep = threshold_sweep(found, points, thresholds, radius)
        rows.append({"sigma_um": sigma_um, "min_distance_um": d_um, "min_distance_px": distance, "threshold": sweep.best_threshold, "f1": sweep.best_f1})
    return rows


def _f1(data: Any, params: ClassicalParams, radius: float) -> float:
    from micronet.runtime.evaluation.metrics import evaluate_images

    return evaluate_images([detect(im, data.mpp, params) for im in data.images], data.points, radius).pooled.f1


def tune(
    root: Path = DATA / "crchisto",
    splits: Sequence[str] = TUNE_SPLITS,
    grid: Grid = DEFAULT_GRID,
    radius: float = TUNE_RADIUS,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Grid search of σ, minimum distance and threshold for the best pooled F1.

    Args:
        root: a point-annotated data set with ``split.csv`` (default CRCHisto).
        splits: the splits tuned on, pooled; ``"test"`` is refused.
        grid: the search space (:data:`DEFAULT_GRID`).
        radius: matching radius in the data set's pixels (default 6).
        limit: only the first ``limit`` images of each split (a quick check).

    Returns:
        A JSON-ready record: ``params`` (:class:`ClassicalParams` fields), ``f1`` per
        split and pooled, the grid, the best F1 of every (σ, distance) pair, the data.
    """
    from micronet.runtime.evaluation.datasets import load_point_folder
    from tqdm import tqdm

    if "test" in splits:
        raise ValueError(f"splits: the classical detector is tuned on train / val only, never on test; got {list(splits)}")
    if not grid.sigma_um or not grid.min_distance_um or not grid.thresholds:
        raise ValueError(f"grid: expected at least one value on each axis, got {grid}")
    start = time.perf_counter()
    parts = {s: load_point_folder(root, s) for s in splits}
    if limit is not None:
        parts = {s: d.subset(list(range(min(limit, len(d))))) for s, d in parts.items()}
    images = [im for d in parts.values() for im in d.images]
    points = [p for d in parts.values() for p in d.points]
    mpp = next(iter(parts.values())).mpp
    rows: list[dict[str, Any]] = []
    for sigma_um in tqdm(grid.sigma_um, desc="classical grid (σ)", disable=not progress):
        blurred = [_blurred(im, mpp, sigma_um) for im in images]
        rows += _pair_sweep(blurred, points, mpp, sigma_um, grid, radius)
    best = max(rows, key=lambda r: r["f1"])  # first of equals: the smallest σ and distance
    params = ClassicalParams(best["sigma_um"], best["min_distance_um"], best["threshold"])
    f1 = {s: _f1(d, params, radius) for s, d in parts.items()}
    f1["+".join(splits)] = best["f1"]
    return {
        "params": asdict(params),
        "f1": f1,
        "radius_px": radius,
        "data": {"root": root.name, "mpp": mpp, "splits": list(splits), "images": {s: len(d) for s, d in parts.items()}, "limit": limit},
        "grid": {**{k: list(v) for k, v in asdict(grid).items()}, "combinations": grid.combinations, "peak_passes": len(rows)},
        "grid_f1": rows,
        "pipeline": "skimage rgb2hed hematoxylin -> scipy gaussian_filter(sigma_um / mpp) -> runtime find_peaks(threshold, round(min_distance_um / mpp))",
        "seconds": round(time.perf_counter() - start, 1),
    }


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """``payload`` as indented JSON at ``path``, complete or not at all (temporary file,
    then a rename)."""
    from micronet.runtime.files import replace_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    # chmod: the temporary file is created private (0600); a results file is for everyone.
    replace_atomically(path, lambda tmp: (tmp.write_text(json.dumps(payload, indent=2) + "\n"), tmp.chmod(0o644)))


def _describe(grid: Grid, limit: int | None) -> str:
    t = grid.thresholds
    return (
        f"σ {list(grid.sigma_um)} µm × distance {list(grid.min_distance_um)} µm × {len(t)} thresholds "
        f"{min(t):g}-{max(t):g}, {'all images' if limit is None else f'{limit} image(s) per split'}"
    )


def load_params(path: Path = PARAMS_FILE, retune: bool = False, **tune_args: Any) -> ClassicalParams:
    """The tuned parameters cached at ``path``; tuned (:func:`tune` with ``tune_args``)
    and cached first when there are none or ``retune``.

    Raises:
        ValueError: the cache was tuned on another grid or image limit than asked for
            (``tune_args``, else :data:`DEFAULT_GRID` on every image): rerun with ``retune``.
    """
    if retune or not path.is_file():
        record = tune(**tune_args)
        record["command"] = shlex.join(["python", *sys.argv])  # the script as it was started
        write_json_atomically(path, record)
        log.info("classical parameters tuned in %.0f s, cached in %s", record["seconds"], path)
    record = json.loads(path.read_text())
    grid, limit = tune_args.get("grid", DEFAULT_GRID), tune_args.get("limit")
    cached = Grid(*(tuple(record["grid"][k]) for k in ("sigma_um", "min_distance_um", "thresholds")))
    if cached != grid or record["data"]["limit"] != limit:
        raise ValueError(f"{path}: tuned on {_describe(cached, record['data']['limit'])}, asked for {_describe(grid, limit)}; rerun with --retune")
    return ClassicalParams(**record["params"])


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 1,2.5,4; got {text!r}")
    return values


def _linspace(text: str) -> tuple[float, ...]:
    try:
        lo, hi, n = text.split(":")
        values = np.linspace(float(lo), float(hi), int(n))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP:COUNT, e.g. 0:0.1:41; got {text!r}") from None
    return tuple(float(t) for t in np.round(values, 6))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retune", action="store_true", help="rerun the grid search and rewrite the cache")
    parser.add_argument("--sigma", type=_floats, default=DEFAULT_GRID.sigma_um, help="blur σ grid, µm (default %(default)s)")
    parser.add_argument("--min-distance", type=_floats, default=DEFAULT_GRID.min_distance_um, help="minimum distance grid, µm (default %(default)s)")
    parser.add_argument("--thresholds", type=_linspace, default=DEFAULT_GRID.thresholds, help="threshold grid START:STOP:COUNT (default 0:0.1:51)")
    parser.add_argument("--limit", type=int, help="only the first N images of each split (a quick check; do not cache such a result)")
    parser.add_argument("--out", type=Path, default=PARAMS_FILE, help="the cache (default benchmarks/results/classical_params.json)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.out.resolve() == PARAMS_FILE.resolve():
        parser.error("--limit: a tuning on part of the data would replace the cache; give --out elsewhere")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    grid = Grid(args.sigma, args.min_distance, args.thresholds)
    try:
        params = load_params(args.out, retune=args.retune, grid=grid, limit=args.limit)
    except ValueError as exc:
        parser.error(str(exc))
    record = json.loads(args.out.read_text())
    f1 = ", ".join(f"{k} {v:.4f}" for k, v in record["f1"].items())
    print(f"{params} (F1 at {record['radius_px']:g} px: {f1}; grid of {record['grid']['combinations']}; {args.out})")


if __name__ == "__main__":
    main()
