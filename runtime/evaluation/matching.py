"""Matching detections to annotated nucleus centres, as the paper scores them.

A detection may match an annotation only when their Euclidean distance is at most
``radius`` (inclusive). Among those pairs the matching has maximum cardinality and,
among matchings of that size, minimal total distance: the optimum of the Hungarian
method on the dense distance matrix with out-of-radius pairs forbidden. Unmatched
detections are false positives (FP), unmatched annotations false negatives (FN).

The native core (``micronet.runtime._native``, C++) splits the within-radius pairs into
their small connected groups and solves each exactly, so it reaches the same optimum
as ``scipy.optimize.linear_sum_assignment`` on the dense matrix in time and memory
linear in the number of points.

Points are ``(N, 2)`` arrays of ``(x, y)`` = (column, row) pixel coordinates, any real
dtype (float32 and float64 are usual); an empty set may be given as ``np.empty((0, 2))``
or ``[]``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from micronet.runtime import _native

from ..errors import InputError, InputTypeError
from ..points import as_points  # re-exported: the checks on point arrays are the core's

__all__ = ["PointMetrics", "evaluate_points", "match_points"]


@dataclass(frozen=True)
class PointMetrics:
    """Detection scores of one image or of a pooled set of images.

    Attributes:
        tp: matched detections (true positives).
        fp: unmatched detections (false positives).
        fn: unmatched annotations (false negatives).
        precision: ``tp / (tp + fp)``; 1.0 when there are no detections (nothing false
            was claimed).
        recall: ``tp / (tp + fn)``; 1.0 when there are no annotations (nothing was missed).
        f1: ``2 tp / (2 tp + fp + fn)``, the harmonic mean of precision and recall; 1.0
            when there are neither detections nor annotations. So an empty prediction
            on an annotated image scores P = 1, R = 0, F1 = 0 (the end point of a
            precision-recall curve), detections on an empty image P = 0, R = 1, F1 = 0.
        mean_distance: mean Euclidean distance of the matched pairs in pixels (ED);
            NaN when nothing matched.
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    mean_distance: float

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int, distance_sum: float) -> PointMetrics:
        """Metrics from the counts and the summed distance of the ``tp`` matched pairs."""
        tp, fp, fn = int(tp), int(fp), int(fn)
        if min(tp, fp, fn) < 0:
            raise InputError(f"counts must be >= 0, got tp={tp}, fp={fp}, fn={fn}")
        return cls(
            tp=tp,
            fp=fp,
            fn=fn,
            precision=tp / (tp + fp) if tp + fp else 1.0,
            recall=tp / (tp + fn) if tp + fn else 1.0,
            f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            mean_distance=float(distance_sum) / tp if tp else math.nan,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields; a NaN ``mean_distance`` becomes ``None``."""
        out = asdict(self)
        if math.isnan(out["mean_distance"]):
            out["mean_distance"] = None
        return out


def check_radius(radius: Any) -> float:
    """``radius`` as a float, or TypeError/ValueError if it is not a finite number >= 0."""
    if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, numbers.Real):
        raise InputTypeError(f"radius: expected a number of pixels, got {type(radius).__name__} {radius!r}")
    r = float(radius)
    if not (math.isfinite(r) and r >= 0.0):
        raise InputError(f"radius: expected a finite number of pixels >= 0, got {radius!r}")
    return r


def match_points(pred_xy: Any, true_xy: Any, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of detections to annotations within ``radius``.

    Args:
        pred_xy: ``(N, 2)`` detections, ``(x, y)`` = (column, row) in pixels.
        true_xy: ``(M, 2)`` annotated centres, same convention.
        radius: largest matching distance in pixels, inclusive; finite, >= 0 (0 matches
            coincident points only). The CRCHistoPhenotypes literature uses 6 px at 20x,
            the MicroNet paper 16 px at 40x.

    Returns:
        ``(pred_idx, true_idx)``: two ``(K,)`` int64 arrays, ``pred_xy[pred_idx[k]]``
        matched to ``true_xy[true_idx[k]]``, sorted by ``pred_idx``. K is the largest
        number of pairs within ``radius`` that can be matched one-to-one; among such
        matchings this one has the least total distance (ties are broken arbitrarily).

    Raises:
        ValueError: a wrong shape, a NaN/infinite coordinate, or a bad radius.
        TypeError: non-numeric points or radius.

    Example:
        >>> pred = [[10.0, 10.0], [14.0, 10.0], [50.0, 50.0]]
        >>> true = [[12.0, 10.0], [19.0, 10.0]]
        >>> pred_idx, true_idx = match_points(pred, true, radius=6)
        >>> pred_idx.tolist(), true_idx.tolist()
        ([0, 1], [0, 1])
    """
    pred = as_points(pred_xy, "pred_xy")
    true = as_points(true_xy, "true_xy")
    return _native.match_points(pred, true, check_radius(radius))


def evaluate_points(pred_xy: Any, true_xy: Any, radius: float) -> PointMetrics:
    """TP / FP / FN, precision, recall, F1 and mean matched distance of one image.

    Arguments as for :func:`match_points`; see :class:`PointMetrics` for the values
    taken when either side is empty.

    Example:
        >>> m = evaluate_points([[10, 10], [14, 10], [50, 50]], [[12, 10], [19, 10]], radius=6)
        >>> m.tp, m.fp, m.fn, round(m.f1, 3), m.mean_distance
        (2, 1, 0, 0.8, 3.5)
    """
    pred = as_points(pred_xy, "pred_xy")
    true = as_points(true_xy, "true_xy")
    pred_idx, true_idx = _native.match_points(pred, true, check_radius(radius))
    delta = pred[pred_idx] - true[true_idx]  # (K, 2)
    # sqrt(dx*dx + dy*dy): the same arithmetic as the radius test in the core
    distance_sum = float(np.sqrt(delta[:, 0] * delta[:, 0] + delta[:, 1] * delta[:, 1]).sum())
    tp = len(pred_idx)
    return PointMetrics.from_counts(tp, len(pred) - tp, len(true) - tp, distance_sum)
