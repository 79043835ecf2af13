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
import difflib
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bundled import BUNDLED_MODELS, resolve_model
from ..errors import InputError, InputTypeError, MissingFileError, MissingPackageError
from ..model_info import ModelInfo
from .datasets import PointDataset, load_point_folder, read_split
from .metrics import EvaluationReport, evaluate_images
from ..points import read_points_csv, read_scored_points_csv
from .sweep import SweepResult, sweep_thresholds, threshold_sweep

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


# --- detection CSVs against annotations ---------------------------------------------

# Suffixes an image name can carry into a prediction's file name (``img1.png.csv``, as
# some tools write it), stripped when pairing by name.
_IMAGE_NAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".ome", ".svs", ".ndpi", ".mrxs", ".scn")
_SWEEP_LEVELS = 60
_LISTED = 20  # names a one-line report lists before "+N more"


def _natural_key(name: str) -> list[Any]:
    # img2 before img10
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _csv_files(folder: Path) -> list[Path]:
    # Hidden files are other tools' temporaries (``.a.csv.tmp``, editors' locks), not results.
    return sorted((p for p in folder.glob("*.csv") if p.is_file() and not p.name.startswith(".")), key=lambda p: _natural_key(p.stem))


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown if len(names) <= _LISTED else f"{shown} (+{len(names) - _LISTED} more)"


def _image_name(stem: str) -> str:
    """The image a prediction file is named after: ``img1`` for ``img1.csv`` and for
    ``img1.png.csv``."""
    lower = stem.lower()
    for suffix in _IMAGE_NAME_SUFFIXES:
        if lower.endswith(suffix) and len(stem) > len(suffix):
            return _image_name(stem[: -len(suffix)])
    return stem


@dataclass(frozen=True)
class AnnotationSet:
    """The annotation CSVs a prediction is scored against, as :func:`find_annotations`
    selects them.

    Attributes:
        files: ``{image name: annotation CSV}`` of the selected images, in natural name
            order (``img2`` before ``img10``).
        all_names: every annotated image in the folder (selected or not).
        selection: what was selected, in words (``"split 'test'"``, ``"image img5"``,
            ``"all images"``).
    """

    files: dict[str, Path]
    all_names: frozenset[str]
    selection: str


def find_annotations(truth: str | PathLike[str], split: str | None = None, image: str | None = None) -> AnnotationSet:
    """The annotation CSVs at ``truth``, optionally restricted to a split or one image.

    Args:
        truth: one of
            - a data set folder: ``points/`` inside, and ``split.csv`` for ``split``
              (the layout of :mod:`micronet.runtime.evaluation.datasets`; images are not read);
            - a data set's ``points/`` folder (its ``split.csv`` is the parent's);
            - any folder of ``<image name>.csv`` annotation files (no ``split``);
            - one annotation CSV (neither ``split`` nor ``image``): that image alone.
        split: a split of the data set's ``split.csv`` (e.g. ``"test"``).
        image: one annotated image by name (the CSV's stem), instead of ``split``.

    Raises:
        FileNotFoundError: nothing at ``truth``, or a split lists images without an
            annotation file.
        ValueError: ``split`` and ``image`` together, either with one annotation file,
            ``split`` without a ``split.csv``, an unknown split or image (the valid ones
            are listed), or a folder without annotation CSVs.
    """
    truth = Path(truth)
    if split is not None and image is not None:
        raise InputError(f"split and image: give one of them, not both (got split={split!r}, image={image!r})")
    if truth.is_file():
        if split is not None or image is not None:
            what = f"split={split!r}" if split is not None else f"image={image!r}"
            raise InputError(f"{what}: selects from a folder of annotations, but truth {truth} is one annotation file (that image alone)")
        return AnnotationSet({truth.stem: truth}, frozenset([truth.stem]), f"image {truth.stem}")
    if not truth.is_dir():
        raise MissingFileError(f"truth: no such file or folder: {truth}")
    if (truth / "points").is_dir():
        points, split_root = truth / "points", truth
    else:
        points = truth
        split_root = truth.parent if truth.name == "points" and (truth.parent / "split.csv").is_file() else None
    found = {p.stem: p for p in _csv_files(points)}
    if not found:
        raise InputError(f"truth: no *.csv annotation files in {points}")
    if split is not None:
        if split_root is None:
            raise InputError(
                f"split={split!r}: needs a data set folder with split.csv (the folder, or its points/ folder); "
                f"{truth} has none beside it"
            )
        chosen = read_split(split_root, split)
        unannotated = [n for n in chosen if n not in found]
        if unannotated:
            raise MissingFileError(
                f"{split_root / 'split.csv'}: {len(unannotated)} images of split {split!r} have no annotation file in {points}: "
                f"{_listing(unannotated)}"
            )
        names, selection = sorted(chosen, key=_natural_key), f"split {split!r}"
    elif image is not None:
        if image not in found:
            close = difflib.get_close_matches(image, found, n=5)
            hint = f"; closest: {', '.join(close)}" if close else f"; valid: {_listing(sorted(found, key=_natural_key))}"
            raise InputError(f"image={image!r}: no annotation file {image}.csv in {points}{hint}")
        names, selection = [image], f"image {image}"
    else:
        names, selection = list(found), "all images"
    return AnnotationSet({n: found[n] for n in names}, frozenset(found), selection)


@dataclass(frozen=True)
class PredictionEvaluation:
    """Detection CSVs scored against annotations (:func:`score_predictions`).

    Attributes:
        report: per-image and pooled metrics at ``threshold``.
        threshold: detections are kept when their score is greater; ``None``: every
            detection in the files.
        sweep: pooled metrics over thresholds spanning the files' scores (PR curve,
            best-F1 threshold); ``None`` when a file has no ``score`` column or no file
            has a detection.
        missing: annotated images without a prediction file. They are scored as images
            the tool found nothing in: all their nuclei are false negatives, as the
            paper counts a nucleus no detection matched.
        missing_nuclei: how many annotated nuclei those images hold.
        extra: prediction files (by image name) with no annotation file; not scored.
        unselected: prediction files of annotated images outside the selection (another
            split, another image); not scored.
        selection: the images scored, in words (:attr:`AnnotationSet.selection`).
    """

    report: EvaluationReport
    threshold: float | None
    sweep: SweepResult | None
    missing: tuple[str, ...] = ()
    missing_nuclei: int = 0
    extra: tuple[str, ...] = ()
    unselected: int = 0
    selection: str = "all images"

    def to_dict(self) -> dict[str, Any]:
        """The report's dict (pooled metrics at the top level, ``per_image``), then the
        threshold, the selection, ``missing``, ``extra`` and, with scores, the best-F1
        threshold and the curve."""
        out: dict[str, Any] = {
            **self.report.to_dict(),
            "threshold": self.threshold,
            "selection": self.selection,
            "missing": list(self.missing),
            "missing_nuclei": self.missing_nuclei,
            "extra": list(self.extra),
            "unselected": self.unselected,
        }
        if self.sweep is not None:
            out.update(best_threshold=self.sweep.best_threshold, best_f1=self.sweep.best_f1, curve=self.sweep.to_dict()["curve"])
        return out

    def format(self) -> str:
        """The report's table, then one line each for missing, extra and unselected
        prediction files (when there are any) and the threshold, as text."""
        lines = [self.report.format()]
        n = len(self.report.names)
        if self.missing:
            lines.append(
                f"missing: {len(self.missing)} of {n} images have no prediction file, scored as detecting nothing "
                f"(their {self.missing_nuclei} nuclei count as misses): {_listing(self.missing)}"
            )
        if self.extra:
            lines.append(f"extra: {len(self.extra)} prediction files have no annotation file, not scored: {_listing(self.extra)}")
        if self.unselected:
            lines.append(f"not scored: {self.unselected} prediction files of annotated images outside {self.selection}")
        kept = "every detection in the files" if self.threshold is None else f"score > {self.threshold:.4g} (given)"
        if self.sweep is None:
            found = self.report.pooled.tp + self.report.pooled.fp
            lines.append(f"threshold: {kept} ({'no score column' if found else 'no detections'})")
        else:
            best = self.sweep.metrics_at(self.sweep.best_index)
            lines.append(f"threshold: {kept}; best on this set: score > {self.sweep.best_threshold:.4g}, F1 {best.f1:.4f}")
        return "\n".join(lines)


def _score_levels(scores: np.ndarray, n: int = _SWEEP_LEVELS) -> np.ndarray:
    """Up to ``n`` ascending thresholds over the scores: the first keeps every detection,
    the others are score quantiles (so the curve has points where the detections are)."""
    low = np.nextafter(scores.min(), -np.inf)
    return np.unique(np.concatenate([[low], np.quantile(scores, np.linspace(0, 1, n)[1:-1])]))


def score_predictions(
    pred: str | PathLike[str],
    truth: str | PathLike[str],
    radius: float,
    split: str | None = None,
    image: str | None = None,
    threshold: float | None = None,
) -> PredictionEvaluation:
    """Scores detection CSVs against annotation CSVs, as ``micronet evaluate --pred`` does.

    Any CSV with ``x`` and ``y`` columns reads (:mod:`micronet.runtime.points`), so the
    image (``x,y,score``) and slide (``x,y,x_um,y_um,score``) CSVs of ``micronet
    detect`` score as they are.

    Args:
        pred: a folder of ``<image name>.csv`` detection files (``<name>.png.csv`` pairs
            with ``<name>`` too), or one CSV file: then ``truth`` must select one image
            (one annotation file, or ``image``), and the two pair whatever their names.
        truth: annotations, selected with ``split`` or ``image``; see
            :func:`find_annotations`.
        radius: matching radius in pixels (inclusive).
        threshold: keep detections scoring above it (every file needs a ``score``
            column); default every detection.

    An annotated image without a prediction file is scored as one the tool detected
    nothing in (its nuclei are misses) and listed in :attr:`PredictionEvaluation.missing`;
    prediction files without an annotation file are listed and not scored.

    Raises:
        FileNotFoundError: nothing at ``pred``; a folder with no CSV named after any
            selected image; see also :func:`find_annotations`.
        ValueError: one prediction file against several images, two files for one image,
            ``threshold`` with a file without scores, or a malformed CSV (file and line).
    """
    pred = Path(pred)
    annotations = find_annotations(truth, split, image)
    names = list(annotations.files)
    if pred.is_file():
        if len(names) != 1:
            raise InputError(
                f"pred {pred} is one CSV file, but truth {truth} holds {len(names)} images ({annotations.selection}): "
                f"give one annotation CSV, or a folder and image=NAME"
            )
        pred_files = {names[0]: pred}
        extra: list[str] = []
    elif pred.is_dir():
        pred_files = {}
        for p in _csv_files(pred):
            name = _image_name(p.stem)
            if name in pred_files:
                raise InputError(f"pred: {pred_files[name].name} and {p.name} in {pred} are both predictions for image {name}")
            pred_files[name] = p
        if not pred_files:
            raise MissingFileError(f"pred: no *.csv prediction files in {pred}")
        if not any(n in pred_files for n in names):
            raise MissingFileError(
                f"pred: none of the {len(pred_files)} CSV files in {pred} is named after an image of {annotations.selection} "
                f"in {truth} (expected <image name>.csv, e.g. {names[0]}.csv; found {_listing(list(pred_files))})"
            )
        extra = [n for n in pred_files if n not in annotations.all_names]
    else:
        raise MissingFileError(f"pred: no such file or folder: {pred}")

    truth_xy = [read_points_csv(annotations.files[n]) for n in names]
    found: list[tuple[np.ndarray, np.ndarray | None]] = []
    missing: list[str] = []
    for n in names:
        if n in pred_files:
            found.append(read_scored_points_csv(pred_files[n]))
        else:
            missing.append(n)
            found.append((np.empty((0, 2)), np.empty(0)))
    # A file without points holds no scores to lack, whatever its header says.
    unscored = [pred_files[n] for n, (xy, s) in zip(names, found) if s is None and len(xy)]
    if threshold is not None:
        if unscored:
            raise InputError(f"threshold: needs a 'score' column in every prediction CSV; {unscored[0]} has none")
        if not math.isfinite(threshold):
            raise InputError(f"threshold: expected a finite number, got {threshold}")
    scored = [(xy, np.empty(0) if s is None else s) for xy, s in found]
    kept = scored if threshold is None else [(xy[s > threshold], s[s > threshold]) for xy, s in scored]
    report = evaluate_images([xy for xy, _ in kept], truth_xy, radius, names=names)
    sweep = None
    if not unscored and any(len(s) for _, s in scored):
        levels = _score_levels(np.concatenate([s for _, s in scored]))
        sweep = threshold_sweep(scored, truth_xy, levels, radius)
    unselected = sum(1 for n in pred_files if n in annotations.all_names and n not in annotations.files) if pred.is_dir() else 0
    return PredictionEvaluation(
        report=report,
        threshold=None if threshold is None else float(threshold),
        sweep=sweep,
        missing=tuple(missing),
        missing_nuclei=int(sum(len(t) for n, t in zip(names, truth_xy) if n in missing)),
        extra=tuple(extra),
        unselected=unselected,
        selection=annotations.selection,
    )


# --- a model over a data set --------------------------------------------------------


@dataclass(frozen=True)
class ModelEvaluation:
    """Metrics at the operating threshold, plus the whole sweep.

    Attributes:
        threshold: the operating threshold ξ (a detection is kept when score > ξ).
        report: per-image and pooled metrics at ``threshold``.
        sweep: pooled metrics at every threshold of the sweep (PR curve, best-F1 ξ).
        threshold_source: ``"given"`` by the caller or the ``"model"``'s own ξ.
        tta: whether the maps were the mean of 4 flip passes (``Detector(tta=True)``).
    """

    threshold: float
    report: EvaluationReport
    sweep: SweepResult
    threshold_source: str = "given"
    tta: bool = False

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
        return text + "\ntest-time augmentation: mean of 4 flip passes" if self.tta else text


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
    model: str | PathLike[str], floor: float, tta: bool = False, checkpoint: CheckpointRunner | None = None
) -> tuple[Candidates, ModelInfo]:
    """The :data:`Candidates` callable of a model file, and the model's metadata.

    Args:
        model: a ``.safetensors`` checkpoint (run by ``checkpoint``), an ``.onnx`` model or a
            TensorRT ``.engine`` (run by a :class:`~micronet.runtime.detector.Detector` on
            the best backend available), or the name of a bundled model
            (:data:`~micronet.runtime.bundled.BUNDLED_MODELS`: ``default``, ``fast-cpu``).
        floor: the threshold the candidates are found at.
        tta: flip test-time augmentation (``Detector(tta=True)``); for ``.onnx`` and
            ``.engine`` models and bundled names only.
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

        det = Detector(str(path), threshold=floor, tta=bool(tta))

        def run(image: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
            found = det.detect(image, mpp=mpp)
            return found.xy, found.scores

        return run, det.info
    raise InputError(f"model {path}: expected a .safetensors checkpoint, .onnx model or .engine file, or a bundled model ({_bundled_names()})")


def _bundled_names() -> str:
    return ", ".join(BUNDLED_MODELS)


def _check_tta(path: Path, tta: Any) -> None:
    """Refuses a ``tta`` that is no bool, and ``tta`` with a checkpoint: its maps come
    from the trainer's torch code, which has no flip passes."""
    if not isinstance(tta, (bool, np.bool_)):
        raise InputTypeError(f"tta: expected True or False, got {tta!r}")
    if tta and path.suffix.lower() == ".safetensors":
        raise InputError(
            f"model {path.name}: test-time augmentation runs in the Detector (an .onnx or .engine model, or a bundled "
            f"model: {_bundled_names()}), not on a .safetensors checkpoint; export it (micronet export) and evaluate "
            "the .onnx, or evaluate the checkpoint without tta"
        )


def _target_scale(info: ModelInfo) -> float:
    return float(info.target.get("scale", _DEFAULT_TARGET_SCALE))


def evaluate_model_file(
    model: str | PathLike[str],
    data: str | PathLike[str] | PointDataset,
    split: str | None = None,
    radius: float | None = None,
    threshold: float | None = None,
    progress: bool = True,
    tta: bool = False,
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
        tta: flip test-time augmentation (``Detector(tta=True)``: 4 passes, maps
            averaged before the peaks), for ``.onnx`` and ``.engine`` models and
            bundled names; a checkpoint refuses it.
        checkpoint: what runs a ``.safetensors`` checkpoint, see :func:`model_candidates`.

    Raises:
        FileNotFoundError: no model file, or no data set there.
        ValueError: a file that is no model, a ``split`` with a loaded data set, a
            ``threshold`` below the sweep's floor, or ``tta`` with a checkpoint.
    """
    path = resolve_model(model)
    if not path.exists():
        raise MissingFileError(f"model: no such file {path} (and no bundled model of that name: {_bundled_names()})")
    _check_tta(path, tta)  # before the data set loads
    if isinstance(data, PointDataset):
        if split is not None:
            raise InputError(f"split: applies to a data set folder, not to a loaded PointDataset (got split={split!r}; use PointDataset.subset)")
        dataset = data
    else:
        dataset = load_point_folder(data, split)
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
    return dataclasses.replace(result, threshold_source=source, tta=bool(tta))


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
