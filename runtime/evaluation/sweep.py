"""The detection-threshold sweep: pooled P / R / F1 / ED of a data set at each threshold
ξ, i.e. its precision-recall curve, and the best-F1 threshold.

Candidates are found once at the lowest threshold and the sweep only filters their
scores: a peak is a maximum of its own window, so raising ξ only removes peaks (never
creates one), and filtering equals rerunning the peak finder at each ξ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from micronet.runtime import _native
from micronet.runtime.evaluation.matching import PointMetrics, as_points, check_radius

from ..errors import InputError

__all__ = ["SweepResult", "sweep_thresholds", "threshold_sweep"]


def sweep_thresholds(scale: float, n: int = 60) -> np.ndarray:
    """The ``(n,)`` float64 thresholds a model is swept over: evenly spaced from 2 % to
    90 % of the peak height ``scale`` of its training target (Eq. 1), ascending; the
    first is the floor the candidates are found at.

    Example:
        >>> sweep_thresholds(5.0, 3).round(6).tolist()
        [0.1, 2.3, 4.5]
    """
    return np.linspace(0.02 * scale, 0.9 * scale, n)


@dataclass(frozen=True, eq=False)
class SweepResult:
    """Pooled metrics at each detection threshold: the precision-recall curve.

    All arrays are ``(T,)`` and follow the order of ``thresholds`` as given.

    Attributes:
        thresholds: float64 thresholds; a detection is kept when its score is strictly
            greater (the peak finder's convention).
        tp, fp, fn: int64 pooled counts.
        precision, recall, f1, mean_distance: float64 pooled metrics (see
            :class:`~micronet.runtime.evaluation.matching.PointMetrics` for the empty cases).
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

    Equals :func:`micronet.runtime.evaluation.metrics.evaluate_images` on the detections with
    ``score > threshold`` at every threshold, but builds each image's gating graph
    once: detections enter in descending score order and each group of nearby points
    is solved once, incrementally, so a sweep over any number of thresholds costs
    about one matching.

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
        raise InputError(
            f"detections and true_xy: expected one entry per image each, got {len(detections)} and {len(true_xy)}"
        )
    radius = check_radius(radius)
    thr = _check_thresholds(thresholds)
    # Queries in descending threshold order, i.e. nondecreasing numbers kept.
    order = np.argsort(-thr, kind="stable")
    thr_desc = thr[order]
    tp = np.zeros(len(thr), dtype=np.int64)
    kept = np.zeros(len(thr), dtype=np.int64)
    distance_sum = np.zeros(len(thr), dtype=np.float64)
    n_true = 0
    for i, (item, truth) in enumerate(zip(detections, true_xy)):
        xy, scores = _candidates(item, i)
        truth = as_points(truth, f"true_xy[{i}]")
        rank = np.argsort(-scores, kind="stable")  # admission order
        # Kept at threshold t: the scores > t, which are a prefix of `rank`.
        n_kept = len(scores) - np.searchsorted(np.sort(scores), thr_desc, side="right")  # (T,) nondecreasing
        image_tp, image_dist = _native.match_prefix_sweep(np.ascontiguousarray(xy[rank]), truth, radius, n_kept)
        tp += image_tp
        kept += n_kept
        distance_sum += image_dist
        n_true += len(truth)
    # Back to the caller's threshold order.
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return _pooled(thr, tp[inverse], kept[inverse], n_true, distance_sum[inverse])


def _check_thresholds(thresholds: Any) -> np.ndarray:
    """``thresholds`` as a ``(T,)`` float64 array, or ``ValueError``."""
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim != 1 or thr.size == 0:
        raise InputError(f"thresholds: expected a non-empty 1-D array, got shape {thr.shape}")
    if np.isnan(thr).any():
        raise InputError("thresholds: expected numbers, got NaN")
    return thr


def _candidates(item: Any, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``i``'s ``(xy, scores)`` pair checked: ``(N, 2)`` points and ``(N,)``
    float64 scores."""
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise InputError(f"detections[{i}]: expected an (xy, scores) pair")
    xy = as_points(item[0], f"detections[{i}] xy")
    scores = np.asarray(item[1], dtype=np.float64)
    if scores.shape != (len(xy),):
        raise InputError(f"detections[{i}] scores: expected shape ({len(xy)},), got {scores.shape}")
    if np.isnan(scores).any():
        raise InputError(f"detections[{i}] scores: expected numbers, got NaN")
    return xy, scores


def _pooled(thr: np.ndarray, tp: np.ndarray, kept: np.ndarray, n_true: int, distance_sum: np.ndarray) -> SweepResult:
    """The :class:`SweepResult` of pooled counts at each of ``thr`` (all ``(T,)``), with
    :class:`PointMetrics`' conventions for the empty cases."""
    fp, fn = kept - tp, n_true - tp
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
