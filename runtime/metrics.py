"""Detection metrics aggregated as the paper reports them, and the point CSV format.

- per image: :func:`micronet.runtime.matching.evaluate_points`;
- pooled over a data set: :func:`evaluate_images` / :func:`pool_metrics` sum TP, FP and
  FN over the images and average the distance over all matched pairs (ED);
- across data sets (Table 1 style, mean ± std): :func:`summarize_across_sets`;
- a detection-threshold sweep with its precision-recall curve and best-F1 threshold:
  :func:`threshold_sweep`;
- folders of point CSVs scored against each other: :func:`score_csv_dirs`.

Point CSVs (the format of ``shared/data/<set>/points/<name>.csv``) have the header
``x,y`` (or ``x,y,score`` for detections) and one point per row, 0-based pixel
coordinates, ``x`` = column, ``y`` = row.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from micronet.runtime import _native
from micronet.runtime.matching import PointMetrics, as_points, check_radius, evaluate_points

__all__ = [
    "EvaluationReport",
    "MeanStd",
    "SetSummary",
    "SweepResult",
    "evaluate_images",
    "pool_metrics",
    "read_points_csv",
    "score_csv_dirs",
    "summarize_across_sets",
    "threshold_sweep",
    "write_points_csv",
]

log = logging.getLogger(__name__)

_CSV_HEADERS = (("x", "y"), ("x", "y", "score"))


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


# --- pooling ------------------------------------------------------------------------


def pool_metrics(per_image: Iterable[PointMetrics]) -> PointMetrics:
    """Pooled metrics of a data set: TP, FP, FN summed over its images, ED averaged
    over all matched pairs (not over images).

    Example:
        >>> a = PointMetrics.from_counts(tp=3, fp=1, fn=0, distance_sum=3.0)
        >>> b = PointMetrics.from_counts(tp=1, fp=0, fn=1, distance_sum=5.0)
        >>> p = pool_metrics([a, b])
        >>> p.tp, p.fp, p.fn, p.precision, p.recall, p.mean_distance
        (4, 1, 1, 0.8, 0.8, 2.0)
    """
    tp = fp = fn = 0
    distance_sum = 0.0
    for m in per_image:
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
        if m.tp:
            distance_sum += m.mean_distance * m.tp
    return PointMetrics.from_counts(tp, fp, fn, distance_sum)


@dataclass(frozen=True)
class EvaluationReport:
    """Per-image and pooled metrics of one data set at one matching radius.

    Attributes:
        radius: the matching radius in pixels.
        names: image names, parallel to ``per_image``.
        per_image: metrics of each image.
        pooled: :func:`pool_metrics` of ``per_image``.
    """

    radius: float
    names: tuple[str, ...]
    per_image: tuple[PointMetrics, ...]
    pooled: PointMetrics

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the pooled ``precision, recall, f1, mean_distance, tp, fp, fn`` at
        the top level, plus ``radius``, ``n_images`` and ``per_image`` (a list of dicts
        with ``name`` and the same keys). A NaN distance (nothing matched) is ``None``.
        """
        return {
            **self.pooled.to_dict(),
            "radius": self.radius,
            "n_images": len(self.names),
            "per_image": [{"name": name, **m.to_dict()} for name, m in zip(self.names, self.per_image)],
        }


def evaluate_images(
    pred_xy: Sequence[Any],
    true_xy: Sequence[Any],
    radius: float,
    names: Sequence[str] | None = None,
) -> EvaluationReport:
    """Scores each image's detections against its annotations and pools the result.

    Args:
        pred_xy: one ``(N_i, 2)`` array of detections per image, ``(x, y)`` in pixels.
        true_xy: one ``(M_i, 2)`` array of annotated centres per image, same order.
        radius: matching radius in pixels (inclusive).
        names: image names for the report; default ``"0", "1", ...``.

    Example:
        >>> report = evaluate_images([[[10, 10]], []], [[[12, 10]], [[5, 5]]], radius=6)
        >>> report.pooled.tp, report.pooled.fn, report.pooled.recall
        (1, 1, 0.5)
    """
    if len(pred_xy) != len(true_xy):
        raise ValueError(f"pred_xy and true_xy: expected one entry per image each, got {len(pred_xy)} and {len(true_xy)}")
    names = tuple(str(i) for i in range(len(true_xy))) if names is None else tuple(names)
    if len(names) != len(true_xy):
        raise ValueError(f"names: expected {len(true_xy)} names, got {len(names)}")
    radius = check_radius(radius)
    per_image = tuple(
        evaluate_points(as_points(p, f"pred_xy[{i}]"), as_points(t, f"true_xy[{i}]"), radius)
        for i, (p, t) in enumerate(zip(pred_xy, true_xy))
    )
    return EvaluationReport(radius=radius, names=names, per_image=per_image, pooled=pool_metrics(per_image))


# --- across data sets ---------------------------------------------------------------


@dataclass(frozen=True)
class MeanStd:
    """A mean and a standard deviation; formats as ``"0.812 ± 0.010"`` with the given spec."""

    mean: float
    std: float

    def __format__(self, spec: str) -> str:
        return f"{format(self.mean, spec)} ± {format(self.std, spec)}"

    def __str__(self) -> str:
        return format(self, ".4f")


@dataclass(frozen=True)
class SetSummary:
    """Mean ± std of the pooled metrics of several data sets (or runs, or folds)."""

    n_sets: int
    precision: MeanStd
    recall: MeanStd
    f1: MeanStd
    mean_distance: MeanStd

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"n_sets": k, "f1": {"mean": .., "std": ..}, ...}``; NaN is ``None``."""
        out: dict[str, Any] = {"n_sets": self.n_sets}
        for key in ("precision", "recall", "f1", "mean_distance"):
            v: MeanStd = getattr(self, key)
            out[key] = {"mean": _json_float(v.mean), "std": _json_float(v.std)}
        return out


def summarize_across_sets(per_set: Sequence[PointMetrics], ddof: int = 1) -> SetSummary:
    """Mean ± standard deviation of P, R, F1 and ED over data sets, as in the paper's
    Table 1.

    Args:
        per_set: the pooled metrics of each data set (e.g. ``report.pooled``).
        ddof: delta degrees of freedom of the standard deviation; the default 1 gives
            the sample standard deviation (NaN for a single set), 0 the population one.

    A set with no matched pair has a NaN ED, and then so has the summary's ED: the mean
    distance is undefined rather than taken over the other sets only.

    Example:
        >>> a = PointMetrics.from_counts(tp=8, fp=2, fn=2, distance_sum=16.0)
        >>> b = PointMetrics.from_counts(tp=6, fp=4, fn=4, distance_sum=18.0)
        >>> print(f"{summarize_across_sets([a, b]).f1:.3f}")
        0.700 ± 0.141
    """
    if len(per_set) == 0:
        raise ValueError("per_set: expected the metrics of at least one data set, got none")
    if ddof < 0:
        raise ValueError(f"ddof: expected an integer >= 0, got {ddof}")

    def spread(values: list[float]) -> MeanStd:
        a = np.asarray(values, dtype=np.float64)
        mean = float(a.mean())
        dof = len(a) - ddof
        std = float(np.sqrt(((a - mean) ** 2).sum() / dof)) if dof > 0 else math.nan
        return MeanStd(mean, std)

    return SetSummary(
        n_sets=len(per_set),
        precision=spread([m.precision for m in per_set]),
        recall=spread([m.recall for m in per_set]),
        f1=spread([m.f1 for m in per_set]),
        mean_distance=spread([m.mean_distance for m in per_set]),
    )


# --- threshold sweep ----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SweepResult:
    """Pooled metrics at each detection threshold: the precision-recall curve.

    All arrays are ``(T,)`` and follow the order of ``thresholds`` as given.

    Attributes:
        thresholds: float64 thresholds; a detection is kept when its score is strictly
            greater (the peak finder's convention).
        tp, fp, fn: int64 pooled counts.
        precision, recall, f1, mean_distance: float64 pooled metrics (see
            :class:`~micronet.runtime.matching.PointMetrics` for the empty cases).
        best_index: index of the highest F1; among equal F1 the highest threshold
            (the fewest detections) wins.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    mean_distance: np.ndarray
    best_index: int

    @property
    def best_threshold(self) -> float:
        return float(self.thresholds[self.best_index])

    @property
    def best_f1(self) -> float:
        return float(self.f1[self.best_index])

    def metrics_at(self, index: int) -> PointMetrics:
        """The pooled :class:`PointMetrics` at ``thresholds[index]``."""
        return PointMetrics(
            tp=int(self.tp[index]),
            fp=int(self.fp[index]),
            fn=int(self.fn[index]),
            precision=float(self.precision[index]),
            recall=float(self.recall[index]),
            f1=float(self.f1[index]),
            mean_distance=float(self.mean_distance[index]),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the best threshold and its metrics, plus one entry per threshold."""
        return {
            "best_threshold": self.best_threshold,
            "best": self.metrics_at(self.best_index).to_dict(),
            "curve": [{"threshold": float(t), **self.metrics_at(i).to_dict()} for i, t in enumerate(self.thresholds)],
        }


def threshold_sweep(
    detections: Sequence[tuple[Any, Any]],
    true_xy: Sequence[Any],
    thresholds: Any,
    radius: float,
) -> SweepResult:
    """Pooled P / R / F1 / ED of a data set at each detection threshold.

    Equals :func:`evaluate_images` on the detections with ``score > threshold`` at
    every threshold, but builds each image's gating graph once: detections enter in
    descending score order and each group of nearby points is solved once,
    incrementally, so a sweep over any number of thresholds costs about one matching.

    Args:
        detections: per image, ``(xy, scores)``: candidate detections ``(N_i, 2)``
            ``(x, y)`` in pixels and their ``(N_i,)`` scores (e.g. proximity-map peaks
            found at a low threshold).
        true_xy: per image, the ``(M_i, 2)`` annotated centres.
        thresholds: ``(T,)`` thresholds, any order; +-inf allowed, NaN not.
        radius: matching radius in pixels (inclusive).

    Example:
        >>> dets = [([[10, 10], [30, 30], [50, 50]], [0.9, 0.6, 0.3])]
        >>> sweep = threshold_sweep(dets, [[[11, 10], [30, 31]]], [0.2, 0.5, 0.8], radius=6)
        >>> sweep.tp.tolist(), sweep.fp.tolist(), sweep.best_threshold
        ([2, 2, 1], [1, 0, 0], 0.5)
    """
    if len(detections) != len(true_xy):
        raise ValueError(
            f"detections and true_xy: expected one entry per image each, got {len(detections)} and {len(true_xy)}"
        )
    radius = check_radius(radius)
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim != 1 or thr.size == 0:
        raise ValueError(f"thresholds: expected a non-empty 1-D array, got shape {thr.shape}")
    if np.isnan(thr).any():
        raise ValueError("thresholds: expected numbers, got NaN")
    # Queries in descending threshold order, i.e. nondecreasing numbers kept.
    order = np.argsort(-thr, kind="stable")
    thr_desc = thr[order]
    tp = np.zeros(len(thr), dtype=np.int64)
    kept = np.zeros(len(thr), dtype=np.int64)
    distance_sum = np.zeros(len(thr), dtype=np.float64)
    n_true = 0
    for i, (item, truth) in enumerate(zip(detections, true_xy)):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"detections[{i}]: expected an (xy, scores) pair")
        xy = as_points(item[0], f"detections[{i}] xy")
        scores = np.asarray(item[1], dtype=np.float64)
        if scores.shape != (len(xy),):
            raise ValueError(f"detections[{i}] scores: expected shape ({len(xy)},), got {scores.shape}")
        if np.isnan(scores).any():
            raise ValueError(f"detections[{i}] scores: expected numbers, got NaN")
        truth = as_points(truth, f"true_xy[{i}]")
        rank = np.argsort(-scores, kind="stable")  # admission order
        # Kept at threshold t: the scores > t, which are a prefix of `rank`.
        n_kept = len(scores) - np.searchsorted(np.sort(scores), thr_desc, side="right")  # (T,) nondecreasing
        image_tp, image_dist = _native.match_prefix_sweep(np.ascontiguousarray(xy[rank]), truth, radius, n_kept)
        tp += image_tp
        kept += n_kept
        distance_sum += image_dist
        n_true += len(truth)
    fp, fn = kept - tp, n_true - tp
    # Back to the caller's threshold order, with PointMetrics' conventions for empty cases.
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    tp, fp, fn, distance_sum = tp[inverse], fp[inverse], fn[inverse], distance_sum[inverse]
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 1.0)
    f1 = np.where(tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0)
    mean_distance = np.where(tp > 0, distance_sum / np.maximum(tp, 1), np.nan)
    best = np.flatnonzero(f1 == f1.max())
    best_index = int(best[np.argmax(thr[best])])
    return SweepResult(
        thresholds=thr.copy(),
        tp=tp,
        fp=fp,
        fn=fn,
        precision=precision,
        recall=recall,
        f1=f1,
        mean_distance=mean_distance,
        best_index=best_index,
    )


# --- point CSV files ----------------------------------------------------------------


def read_points_csv(path: str | PathLike[str]) -> np.ndarray:
    """Reads a point CSV: header ``x,y`` (or ``x,y,score``), one point per row.

    Returns:
        ``(N, 2)`` float64 ``(x, y)`` = (column, row) in pixels; a header-only file
        gives ``(0, 2)``. A score column is read past (see :func:`write_points_csv`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: no or another header, a row with the wrong number of fields, a
            non-numeric or non-finite value; the message names the file and line.
    """
    path = Path(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = f.read().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file; expected the header 'x,y' and one point per row")
    header = tuple(h.strip() for h in lines[0].split(","))
    if header not in _CSV_HEADERS:
        valid = " or ".join(repr(",".join(h)) for h in _CSV_HEADERS)
        raise ValueError(f"{path}: expected the header {valid}, got {lines[0]!r}")
    width = len(header)
    rows: list[tuple[float, float]] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # blank lines (a trailing one, typically) hold no point
        fields = line.split(",")
        if len(fields) != width:
            raise ValueError(f"{path}, line {lineno}: expected {width} comma-separated values, got {len(fields)}: {line!r}")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise ValueError(f"{path}, line {lineno}: expected numbers, got {line!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{path}, line {lineno}: expected finite numbers, got {line!r}")
        rows.append((values[0], values[1]))
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def write_points_csv(path: str | PathLike[str], xy: Any, scores: Any = None) -> None:
    """Writes points as CSV: header ``x,y``, or ``x,y,score`` when scores are given.

    Args:
        path: file to (over)write.
        xy: ``(N, 2)`` points ``(x, y)`` in pixels, any real dtype; each value is written
            with the fewest digits that read back to the same value in that dtype.
        scores: optional ``(N,)`` finite scores.
    """
    arr = np.asarray(xy)
    points = as_points(arr, "xy")
    if arr.size and np.issubdtype(arr.dtype, np.floating) and arr.dtype != np.float64:
        points = points.astype(arr.dtype)  # exact: the values came from this dtype
    columns = [points.astype(str)]
    header = "x,y"
    if scores is not None:
        s = np.asarray(scores)
        if s.shape != (len(points),) or not np.issubdtype(s.dtype, np.number):
            raise ValueError(f"scores: expected a ({len(points)},) array of numbers, got shape {s.shape} dtype {s.dtype}")
        if not np.isfinite(s).all():
            raise ValueError("scores: expected finite numbers, got NaN or infinity")
        columns.append(s.astype(str)[:, None])
        header = "x,y,score"
    text = np.concatenate(columns, axis=1) if len(points) else np.empty((0, len(header.split(","))), dtype=str)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(header + "\n")
        f.writelines(",".join(row) + "\n" for row in text)


def _natural_key(name: str) -> list[Any]:
    # img2 before img10
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def score_csv_dirs(pred_dir: str | PathLike[str], truth_dir: str | PathLike[str], radius: float) -> EvaluationReport:
    """Scores a folder of detection CSVs against a folder of annotation CSVs.

    Files pair up by name: ``truth_dir/<name>.csv`` with ``pred_dir/<name>.csv``. Every
    truth file needs its prediction file (an image without detections is a header-only
    file); prediction files without a truth file are ignored (logged), so one folder of
    detections can be scored against a split.

    Returns:
        :class:`EvaluationReport` with images in natural name order (``img2`` before
        ``img10``).

    Raises:
        FileNotFoundError: a folder is missing, or truth files lack predictions (all
            their names are listed).
        ValueError: no truth files, or a malformed CSV.
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    for folder, what in ((pred_dir, "pred_dir"), (truth_dir, "truth_dir")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what}: no such directory: {folder}")
    truth_files = sorted(truth_dir.glob("*.csv"), key=lambda p: _natural_key(p.stem))
    if not truth_files:
        raise ValueError(f"truth_dir: no *.csv point files in {truth_dir}")
    pred_files = {p.stem: p for p in pred_dir.glob("*.csv")}
    missing = [t.stem for t in truth_files if t.stem not in pred_files]
    if missing:
        raise FileNotFoundError(
            f"pred_dir: no prediction file for {len(missing)} of {len(truth_files)} truth files "
            f"(expected <name>.csv in {pred_dir}): {', '.join(missing)}"
        )
    extra = len(pred_files) - len(truth_files)
    if extra:
        log.info("ignoring %d prediction files in %s that have no truth file in %s", extra, pred_dir, truth_dir)
    names = [t.stem for t in truth_files]
    return evaluate_images(
        [read_points_csv(pred_files[n]) for n in names],
        [read_points_csv(t) for t in truth_files],
        radius,
        names=names,
    )
