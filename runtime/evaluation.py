"""A model over a point-annotated data set: P / R / F1 / ED and the PR curve (no torch).

The model is any callable that returns candidate detections ``(xy, scores)`` of one
image, in that image's pixels, found at a low threshold; the sweep then filters the
scores (raising ξ only removes peaks, so this equals detecting at each ξ).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .datasets import PointDataset
from .metrics import EvaluationReport, SweepResult, evaluate_images, threshold_sweep

__all__ = ["ModelEvaluation", "evaluate_candidates", "plot_pr_curve"]

log = logging.getLogger(__name__)

Candidates = Callable[[np.ndarray, float], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ModelEvaluation:
    """Metrics at the operating threshold, plus the whole sweep.

    report: per-image and pooled metrics at ``threshold``.
    sweep: pooled metrics at every threshold of the sweep (PR curve, best-F1 ξ).
    """

    threshold: float
    report: EvaluationReport
    sweep: SweepResult

    def to_dict(self) -> dict[str, Any]:
        """``precision, recall, f1, mean_distance`` (pooled) at the top level, then the
        threshold, ``per_image``, the best-F1 threshold and the curve."""
        return {
            **self.report.to_dict(),
            "threshold": self.threshold,
            "best_threshold": self.sweep.best_threshold,
            "best_f1": self.sweep.best_f1,
            "curve": self.sweep.to_dict()["curve"],
        }


def evaluate_candidates(
    candidates: Candidates,
    data: PointDataset,
    radius: float,
    threshold: float,
    thresholds: np.ndarray,
    progress: bool = True,
) -> ModelEvaluation:
    """Runs ``candidates(image, data.mpp)`` on every image and scores the detections.

    Args:
        candidates: image ``(H, W, 3)`` uint8 and its µm/px → ``(xy (N, 2), scores (N,))``
            found at a threshold at or below ``thresholds.min()`` and ``threshold``.
        radius: matching radius in the data set's pixels.
        threshold: the operating threshold ξ (strict: kept when score > ξ).
        thresholds: the sweep's thresholds (PR curve).
    """
    from tqdm.auto import tqdm

    found = [candidates(im, data.mpp) for im in tqdm(data.images, desc="evaluate", unit="img", disable=not progress)]
    kept = [xy[scores > threshold] for xy, scores in found]
    report = evaluate_images(kept, data.points, radius, names=data.names)
    sweep = threshold_sweep(found, data.points, np.asarray(thresholds, dtype=np.float64), radius)
    return ModelEvaluation(threshold=float(threshold), report=report, sweep=sweep)


def plot_pr_curve(evaluation: ModelEvaluation, path: str | Path, title: str = "") -> Path:
    """Precision–recall curve over thresholds with the operating and best-F1 points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = evaluation.sweep
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot(s.recall, s.precision, "-", color="C0", label="PR over ξ")
    op = evaluation.report.pooled
    ax.plot([op.recall], [op.precision], "o", color="C3", label=f"ξ = {evaluation.threshold:.2f}: F1 {op.f1:.3f}")
    b = s.metrics_at(s.best_index)
    ax.plot([b.recall], [b.precision], "x", color="k", label=f"best ξ = {s.best_threshold:.2f}: F1 {b.f1:.3f}")
    for f1 in (0.7, 0.8, 0.9):
        r = np.linspace(f1 / (2 - f1) + 1e-3, 1, 100)
        ax.plot(r, f1 * r / (2 * r - f1), ":", color="0.7", lw=0.8)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01), title=title or "precision–recall")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
