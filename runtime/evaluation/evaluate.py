"""Detections or a model over a point-annotated data set: P / R / F1 / ED and the PR curve.

- detection CSVs (a folder, or one file) against annotation CSVs (a data set, a split of
  it, a folder, one image), as ``micronet evaluate --pred`` scores them:
  :func:`score_predictions`, with :func:`find_annotations` selecting the annotations;
- a model, as any callable that returns one image's candidate detections
  (:data:`Candidates`), over a :class:`~micronet.runtime.evaluation.datasets.PointDataset`:
  :func:`evaluate_candidates`;
- a model file (checkpoint, ONNX model, TensorRT engine or bundled model name) on a data
  set folder, as ``micronet evaluate --model`` runs it: :func:`evaluate_model_file`,
  with :func:`model_candidates` turning the file into its candidates callable;
- the precision-recall curve of an evaluation as a PNG: :func:`plot_pr_curve`.

Candidates are found once at a low threshold (the sweep floor) and the sweep then filters
their scores (raising ξ only removes peaks, so this equals detecting at each ξ). No torch
here: only a checkpoint imports it, when one is evaluated.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bundled import BUNDLED_MODELS, bundled_tta, resolve_model
from ..errors import InputError, MissingFileError, MissingPackageError
from ..model_info import ModelInfo
from ..tta import check_tta, recorded_tta
from .datasets import PointDataset, load_point_folder
from .metrics import EvaluationReport, evaluate_images
from .sweep import SweepResult, sweep_thresholds, threshold_sweep
from .predictions import AnnotationSet, PredictionEvaluation, find_annotations, score_predictions  # re-exported

__all__ = [
    "AnnotationSet",
    "Candidates",
    "MODEL_SUFFIXES",
    "ModelEvaluation",
    "PredictionEvaluation",
    "evaluate_candidates",
    "evaluate_model_file",
    "find_annotations",
    "model_candidates",
    "plot_pr_curve",
    "score_predictions",
]

log = logging.getLogger(__name__)

Candidates = Callable[[np.ndarray, float], tuple[np.ndarray, np.ndarray]]
"""``(image, mpp) -> (xy, scores)``: an ``(H, W, 3)`` uint8 RGB image and its pixel size in
µm/px to its candidate detections, ``(N, 2)`` ``(x, y)`` in that image's pixels and their
``(N,)`` scores, found at a threshold at or below the sweep's lowest."""

CheckpointRunner = Callable[[str, float], "tuple[Candidates, ModelInfo]"]
"""Runs a checkpoint: (path, floor) → its :data:`Candidates` and metadata. The trainer
provides one (``micronet.trainer.validate.checkpoint_candidates``); the runtime imports no trainer."""

MODEL_SUFFIXES = (".safetensors", ".onnx", ".engine")
"""The model files :func:`model_candidates` runs: checkpoint, ONNX model, TensorRT engine."""

_DEFAULT_RADIUS = 6.0  # px: CRCHistoPhenotypes at 20x
_DEFAULT_TARGET_SCALE = 5.0  # the trainer's default peak height of the proximity target (Eq. 1)
_THRESHOLD_SOURCES = {"given": "given", "model": "the model’s"}


# --- a model over a data set --------------------------------------------------------


@dataclass(frozen=True)
class ModelEvaluation:
    """Metrics at the operating threshold, plus the whole sweep.

    Attributes:
        threshold: the operating threshold ξ (a detection is kept when score > ξ).
        report: per-image and pooled metrics at ``threshold``.
        sweep: pooled metrics at every threshold of the sweep (PR curve, best-F1 ξ).
        threshold_source: ``"given"`` by the caller or the ``"model"``'s own ξ.
        tta: whether the maps were the mean of 4 flip passes (``True``,
            ``Detector(tta=True)``) or of 8 (``"dihedral"``), as ``Detector.tta``.
    """

    threshold: float
    report: EvaluationReport
    sweep: SweepResult
    threshold_source: str = "given"
    tta: bool | str = False

    def __post_init__(self) -> None:
        if self.threshold_source not in _THRESHOLD_SOURCES:
            valid = ", ".join(map(repr, _THRESHOLD_SOURCES))
            raise InputError(f"threshold_source: expected one of {valid}, got {self.threshold_source!r}")

    def to_dict(self) -> dict[str, Any]:
        """``precision, recall, f1, mean_distance`` (pooled) at the top level, then the
        threshold, whether test-time augmentation ran, ``per_image``, the best-F1
        threshold and the curve."""
        return {
            **self.report.to_dict(),
            "threshold": self.threshold,
            "tta": self.tta,
            "best_threshold": self.sweep.best_threshold,
            "best_f1": self.sweep.best_f1,
            "curve": self.sweep.to_dict()["curve"],
        }

    def format(self) -> str:
        """The report's table (:meth:`EvaluationReport.format`), then the operating ξ,
        where it came from, and the best-F1 ξ of this data set, as text; with ``tta`` a
        last line says so."""
        best = self.sweep.metrics_at(self.sweep.best_index)
        text = (
            f"{self.report.format()}\n"
            f"threshold ξ = {self.threshold:.4g} ({_THRESHOLD_SOURCES[self.threshold_source]}); "
            f"best on this set: ξ = {self.sweep.best_threshold:.4g}, F1 {best.f1:.4f}"
        )
        if not self.tta:
            return text
        passes = "8 passes (the flips of the image and of its transpose)" if self.tta == "dihedral" else "4 flip passes"
        return f"{text}\ntest-time augmentation: mean of {passes}"


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


def model_candidates(
    model: str | PathLike[str], floor: float, tta: bool | str = False, checkpoint: CheckpointRunner | None = None
) -> tuple[Candidates, ModelInfo]:
    """The :data:`Candidates` callable of a model file, and the model's metadata.

    Args:
        model: a ``.safetensors`` checkpoint (run by ``checkpoint``), an ``.onnx`` model or a
            TensorRT ``.engine`` (run by a :class:`~micronet.runtime.detector.Detector` on
            the best backend available), or the name of a bundled model
            (:data:`~micronet.runtime.bundled.BUNDLED_MODELS`: ``default``, ``fast-cpu``).
        floor: the threshold the candidates are found at.
        tta: test-time augmentation (``Detector(tta=...)``: ``True``/``"flips"`` or
            ``"dihedral"``); for ``.onnx`` and ``.engine`` models and bundled names only.
        checkpoint: what runs a checkpoint: the trainer's
            ``micronet.trainer.validate.checkpoint_candidates`` (torch), passed by the
            caller so that the runtime never imports the trainer.

    Raises:
        ValueError: another kind of file (the valid suffixes are listed), or ``tta``
            with a checkpoint.
    """
    path = resolve_model(model)
    suffix = path.suffix.lower()
    _check_tta(path, tta)
    if suffix == ".safetensors":
        if checkpoint is None:
            raise InputError(
                f"model {path.name}: a .safetensors checkpoint runs in the trainer's torch code; pass "
                "checkpoint=micronet.trainer.validate.checkpoint_candidates (as `micronet evaluate` does), or export it "
                "(micronet export) and evaluate the .onnx"
            )
        return checkpoint(str(path), floor)
    if suffix in (".onnx", ".engine"):
        from ..detector import Detector

        det = Detector(str(path), threshold=floor, tta=tta)

        def run(image: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
            found = det.detect(image, mpp=mpp)
            return found.xy, found.scores

        return run, det.info
    raise InputError(f"model {path}: expected a .safetensors checkpoint, .onnx model or .engine file, or a bundled model ({_bundled_names()})")


def _bundled_names() -> str:
    return ", ".join(BUNDLED_MODELS)


def _check_tta(path: Path, tta: Any) -> bool | str:
    """``tta`` as ``Detector.tta`` records it (``False``, ``True`` for flips or
    ``"dihedral"``). Refuses a ``tta`` that names no mode
    (:func:`~micronet.runtime.tta.check_tta`), and ``tta`` with a checkpoint: its maps come
    from the trainer's torch code, which has no flip passes."""
    mode = check_tta(tta)
    if mode and path.suffix.lower() == ".safetensors":
        raise InputError(
            f"model {path.name}: test-time augmentation runs in the Detector (an .onnx or .engine model, or a bundled "
            f"model: {_bundled_names()}), not on a .safetensors checkpoint; export it (micronet export) and evaluate "
            "the .onnx, or evaluate the checkpoint without tta"
        )
    return recorded_tta(mode)


def _target_scale(info: ModelInfo) -> float:
    return float(info.target.get("scale", _DEFAULT_TARGET_SCALE))


def evaluate_model_file(
    model: str | PathLike[str],
    data: str | PathLike[str] | PointDataset,
    split: str | None = None,
    radius: float | None = None,
    threshold: float | None = None,
    progress: bool = True,
    tta: bool | str | None = None,
    checkpoint: CheckpointRunner | None = None,
) -> ModelEvaluation:
    """A checkpoint, ONNX model or TensorRT engine on a point-annotated data set, as
    ``micronet evaluate --model`` runs it.

    The model finds candidates once per image, at the floor of
    :func:`~micronet.runtime.evaluation.sweep.sweep_thresholds` for its own target scale (the
    thresholds the trainer chose ξ over), and the sweep filters them; the metrics at the
    operating ξ are those of the candidates scoring above it.

    Args:
        model: a model file or bundled model name, see :func:`model_candidates`.
        data: a data set folder (images/ and points/, see
            :func:`~micronet.runtime.evaluation.datasets.load_point_folder`) or a loaded
            :class:`~micronet.runtime.evaluation.datasets.PointDataset`.
        split: of a folder, the split to evaluate (e.g. ``"test"``); default: all images.
        radius: matching radius in the data set's pixels; default 6 (CRCHistoPhenotypes
            at 20x).
        threshold: the operating ξ; default: the model's own (``ModelInfo.threshold``).
        progress: show a progress bar.
        tta: test-time augmentation (``Detector(tta=...)``: ``True`` or ``"flips"``,
            4 passes, or ``"dihedral"``, 8; maps averaged before the peaks), for
            ``.onnx`` and ``.engine`` models and bundled names; a checkpoint refuses it.
            Default ``None``: the bundled name's own (``"accurate"``: dihedral), else none.
        checkpoint: what runs a ``.safetensors`` checkpoint, see :func:`model_candidates`.

    Raises:
        FileNotFoundError: no model file, or no data set there.
        ValueError: a file that is no model, a ``split`` with a loaded data set, a
            ``threshold`` below the sweep's floor, or ``tta`` with a checkpoint.
    """
    tta = bundled_tta(model, tta)
    path = resolve_model(model)
    if not path.exists():
        raise MissingFileError(f"model: no such file {path} (and no bundled model of that name: {_bundled_names()})")
    tta = _check_tta(path, tta)  # before the data set loads
    dataset = _dataset(data, split)
    thresholds = sweep_thresholds(_DEFAULT_TARGET_SCALE)
    runner, info = model_candidates(path, float(thresholds[0]), tta=tta, checkpoint=checkpoint)
    if _target_scale(info) != _DEFAULT_TARGET_SCALE:
        # The floor depends on the model's target scale, which its metadata (read with the
        # model) gives: open it again at its own floor.
        thresholds = sweep_thresholds(_target_scale(info))
        runner, info = model_candidates(path, float(thresholds[0]), tta=tta, checkpoint=checkpoint)
    source = "model" if threshold is None else "given"
    threshold = info.threshold if threshold is None else float(threshold)
    if threshold < thresholds[0]:
        raise InputError(f"threshold {threshold} is below the sweep floor {thresholds[0]:.3f}")
    radius = _DEFAULT_RADIUS if radius is None else radius
    result = evaluate_candidates(runner, dataset, radius, threshold, thresholds, progress=progress)
    return dataclasses.replace(result, threshold_source=source, tta=tta)


# --- plots --------------------------------------------------------------------------


def plot_pr_curve(evaluation: ModelEvaluation | PredictionEvaluation, path: str | Path, title: str = "") -> Path:
    """Precision–recall curve over thresholds with the operating and best-F1 points, as
    a PNG at ``path`` (needs matplotlib: ``pip install 'micronet-sdk[plot]'``).

    Raises:
        ValueError: a :class:`PredictionEvaluation` without a sweep (files without scores).
    """
    if evaluation.sweep is None:
        raise InputError("plot_pr_curve: this evaluation has no threshold sweep (its detections carry no scores)")
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingPackageError("the precision-recall plot needs matplotlib: pip install 'micronet-sdk[plot]'") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = evaluation.sweep
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot(s.recall, s.precision, "-", color="C0", label="PR over ξ")
    op = evaluation.report.pooled
    operating = "all detections" if evaluation.threshold is None else f"ξ = {evaluation.threshold:.2f}"
    ax.plot([op.recall], [op.precision], "o", color="C3", label=f"{operating}: F1 {op.f1:.3f}")
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


def _dataset(data: str | PathLike[str] | PointDataset, split: str | None) -> PointDataset:
    """A loaded data set as it is (``split`` applies to folders only), or a folder's split."""
    if isinstance(data, PointDataset):
        if split is not None:
            raise InputError(f"split: applies to a data set folder, not to a loaded PointDataset (got split={split!r}; use PointDataset.subset)")
        return data
    return load_point_folder(data, split)
