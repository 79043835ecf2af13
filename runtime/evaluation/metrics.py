"""Detection metrics aggregated as the paper reports them.

- per image: :func:`micronet.runtime.evaluation.matching.evaluate_points`;
- pooled over a data set: :func:`evaluate_images` / :func:`pool_metrics` sum TP, FP and
  FN over the images and average the distance over all matched pairs (ED), in an
  :class:`EvaluationReport` (as a dict, or as the text table ``micronet evaluate``
  prints);
- across data sets (Table 1 style, mean ± std): :func:`summarize_across_sets`.

The threshold sweep is :mod:`micronet.runtime.evaluation.sweep`, point CSV files are
:mod:`micronet.runtime.points`, and a model or a folder of CSVs over a data set is
:mod:`micronet.runtime.evaluation.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from micronet.runtime.evaluation.matching import (
    PointMetrics,
    as_points,
    check_radius,
    evaluate_points,
)

from ..errors import InputError

__all__ = [
    "EvaluationReport",
    "MeanStd",
    "SetSummary",
    "evaluate_images",
    "pool_metrics",
    "summarize_across_sets",
]

def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


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

    def format(self) -> str:
        """The per-image table, the pooled line and a one-line summary, as text; a
        distance that is undefined (nothing matched) shows as ``-``.

        Example:
            >>> report = evaluate_images([[[10, 10]], []], [[[12, 10]], [[5, 5]]], radius=6, names=["a", "b"])
            >>> print(report.format())
            image       TP     FP     FN       P      R     F1  ED px
            ---------------------------------------------------------
            a            1      0      0  1.0000 1.0000 1.0000  2.000
            b            0      0      1  1.0000 0.0000 0.0000 -
            ---------------------------------------------------------
            pooled       1      0      1  1.0000 0.5000 0.6667  2.000
            <BLANKLINE>
            2 images, radius 6 px: P 1.0000  R 0.5000  F1 0.6667  ED 2.000 px
        """
        width = max([len("pooled"), *map(len, self.names)])
        head = f"{'image':<{width}}  {'TP':>6} {'FP':>6} {'FN':>6}  {'P':>6} {'R':>6} {'F1':>6} {'ED px':>6}"

        def line(name: str, m: PointMetrics) -> str:
            return (
                f"{name:<{width}}  {m.tp:>6d} {m.fp:>6d} {m.fn:>6d}  "
                f"{m.precision:>6.4f} {m.recall:>6.4f} {m.f1:>6.4f} {_fmt(m.mean_distance, '>6.3f')}"
            )

        rule = "-" * len(head)
        rows = [line(n, m) for n, m in zip(self.names, self.per_image)]
        p = self.pooled
        summary = (
            f"{len(self.names)} images, radius {self.radius:g} px: "
            f"P {p.precision:.4f}  R {p.recall:.4f}  F1 {p.f1:.4f}  ED {_fmt(p.mean_distance, '.3f')} px"
        )
        return "\n".join([head, rule, *rows, rule, line("pooled", p), "", summary])


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
        raise InputError(f"pred_xy and true_xy: expected one entry per image each, got {len(pred_xy)} and {len(true_xy)}")
    names = tuple(str(i) for i in range(len(true_xy))) if names is None else tuple(names)
    if len(names) != len(true_xy):
        raise InputError(f"names: expected {len(true_xy)} names, got {len(names)}")
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
        raise InputError("per_set: expected the metrics of at least one data set, got none")
    if ddof < 0:
        raise InputError(f"ddof: expected an integer >= 0, got {ddof}")

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
