"""Classification scores among matched nuclei (the SC-CNN protocol).

Detections are first matched to annotations within the radius (the Hungarian matcher,
:mod:`micronet.runtime.matching`); among the matched pairs whose annotation carries a
class label, the predicted class is compared with the true one: per-class precision,
recall and F1, their average weighted by each class's support, and the confusion matrix.
Annotations without a label (unknown class) and unmatched detections take no part: the
detection metrics already count them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ClassScores", "classification_scores"]


@dataclass
class ClassScores:
    """Per-class scores (lists in the order of ``names``) and the confusion matrix
    ``confusion[true, predicted]``."""

    names: list[str]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: list[list[int]] = field(default_factory=list)

    @property
    def weighted_f1(self) -> float:
        """Support-weighted mean of the per-class F1 (SC-CNN's summary)."""
        total = sum(self.support)
        return float(sum(f * s for f, s in zip(self.f1, self.support)) / total) if total else 0.0

    @property
    def accuracy(self) -> float:
        c = np.asarray(self.confusion)
        return float(np.trace(c) / c.sum()) if c.size and c.sum() else 0.0

    def as_dict(self) -> dict:
        return {
            "names": self.names, "precision": self.precision, "recall": self.recall, "f1": self.f1,
            "support": self.support, "weighted_f1": self.weighted_f1, "accuracy": self.accuracy,
            "confusion": self.confusion,
        }

    def table(self) -> str:
        """A markdown table: one row per class, then the weighted average."""
        rows = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for n, p, r, f, s in zip(self.names, self.precision, self.recall, self.f1, self.support):
            rows.append(f"| {n} | {p:.4f} | {r:.4f} | {f:.4f} | {s} |")
        rows.append(f"| **weighted** | | | **{self.weighted_f1:.4f}** | {sum(self.support)} |")
        return "\n".join(rows)


def classification_scores(true: np.ndarray, predicted: np.ndarray, names: list[str] | tuple[str, ...]) -> ClassScores:
    """Scores of ``predicted`` against ``true`` class indices over matched, labelled pairs.

    Args:
        true: ``(M,)`` int class index of each matched annotation; ``-1`` (no label) is
            left out.
        predicted: ``(M,)`` int class index of the detection matched to it.
        names: the ``K`` class names.
    """
    true = np.asarray(true, np.int64).ravel()
    predicted = np.asarray(predicted, np.int64).ravel()
    if true.shape != predicted.shape:
        raise ValueError(f"true and predicted classes differ in length: {true.shape} vs {predicted.shape}")
    k = len(names)
    keep = true >= 0
    t, p = true[keep], predicted[keep]
    if ((t >= k) | (p < 0) | (p >= k)).any():
        raise ValueError(f"class indices must lie in 0..{k - 1}")
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (t, p), 1)
    tp = np.diag(confusion).astype(np.float64)
    predicted_n, true_n = confusion.sum(0), confusion.sum(1)
    precision = np.divide(tp, predicted_n, out=np.zeros(k), where=predicted_n > 0)
    recall = np.divide(tp, true_n, out=np.zeros(k), where=true_n > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    return ClassScores(list(names), precision.tolist(), recall.tolist(), f1.tolist(), true_n.astype(int).tolist(),
                       confusion.tolist())
