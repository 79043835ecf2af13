"""Classification scores among matched nuclei (the SC-CNN protocol).

Detections are first matched to annotations within the radius (the Hungarian matcher,
:mod:`micronet.runtime.evaluation.matching`); among the matched pairs whose annotation carries a
class label, the predicted class is compared with the true one: per-class precision,
recall and F1, their average weighted by each class's support, and the confusion matrix.
Annotations without a label (unknown class) and unmatched detections take no part: the
detection metrics already count them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["ClassScores", "classification_scores", "evaluate_classes", "plot_confusion", "read_class_labels"]


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


def read_class_labels(root: Any, name: str, points: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """``(M,)`` class index of each annotated centre of image ``name``: from
    ``<root>/classes/<name>.csv`` (header ``x,y,class``; the same points as ``points/``,
    matched by position), ``-1`` for a centre without a label.

    Raises:
        ValueError: a class name not among ``names``.
    """
    import csv
    from pathlib import Path

    labels = np.full(len(points), -1, np.int64)
    path = Path(root) / "classes" / f"{name}.csv"
    if not path.is_file() or not len(points):
        return labels
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    unknown = {r["class"] for r in rows} - set(names)
    if unknown:
        raise ValueError(f"{path}: classes {sorted(unknown)} are not the model's {list(names)}")
    # One label per row, to one point at the same position (a position annotated twice
    # carries two rows and two points).
    free: dict[tuple[float, float], list[int]] = {}
    for i, (x, y) in enumerate(np.round(np.asarray(points, np.float64), 3).tolist()):
        free.setdefault((x, y), []).append(i)
    index = {n: k for k, n in enumerate(names)}
    for r in rows:
        slots = free.get((round(float(r["x"]), 3), round(float(r["y"]), 3)))
        if slots:
            labels[slots.pop(0)] = index[r["class"]]
    return labels


def evaluate_classes(detector: Any, dataset: Any, radius: float, progress: bool = True) -> ClassScores | None:
    """Classification scores of a classifying :class:`~micronet.runtime.detector.Detector`
    on a point data set whose folder has ``classes/`` (CRCHisto): detections matched to
    annotations within ``radius`` (the Hungarian matcher), then scored among the matched
    pairs with a label. ``None`` when the model has no class head."""
    from tqdm.auto import tqdm

    from .matching import match_points

    names = tuple(detector.class_names)
    if not names:
        return None
    true_all, pred_all = [], []
    for name, image, points in tqdm(list(zip(dataset.names, dataset.images, dataset.points)), desc="classes", disable=not progress):
        found = detector.detect(image, mpp=dataset.mpp)
        labels = read_class_labels(dataset.root, name, np.asarray(points, np.float64).reshape(-1, 2), names)
        pred_idx, true_idx = match_points(found.xy, points, radius)
        true_all.append(labels[true_idx])
        pred_all.append(found.classes[pred_idx])
    return classification_scores(np.concatenate(true_all), np.concatenate(pred_all), names)


def plot_confusion(scores: ClassScores, path: Any, title: str = "") -> Any:
    """The confusion matrix (rows: true class, columns: predicted; each row normalised)
    as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = np.asarray(scores.confusion, np.float64)
    norm = c / np.maximum(c.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(c)):
        for j in range(len(c)):
            ax.text(j, i, f"{int(c[i, j])}\n{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(c)), scores.names, rotation=30, ha="right")
    ax.set_yticks(range(len(c)), scores.names)
    ax.set(xlabel="predicted", ylabel="true", title=title or f"weighted F1 {scores.weighted_f1:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
