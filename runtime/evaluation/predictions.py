"""Detection CSVs against annotation CSVs, as ``micronet evaluate --pred`` scores them:
:func:`score_predictions`, with :func:`find_annotations` selecting the annotations (a
data set, a split of it, a folder, one image). Any CSV with ``x`` and ``y`` columns
reads, so the image and slide CSVs of ``micronet detect`` score as they are.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MissingFileError
from ..points import read_points_csv, read_scored_points_csv
from .datasets import read_split
from .metrics import EvaluationReport, evaluate_images
from .sweep import SweepResult, threshold_sweep

__all__ = ["AnnotationSet", "PredictionEvaluation", "find_annotations", "score_predictions"]


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
    names, selection = _select(found, points, split_root, truth, split, image)
    return AnnotationSet({n: found[n] for n in names}, frozenset(found), selection)


def _select(
    found: dict[str, Path], points: Path, split_root: Path | None, truth: Path, split: str | None, image: str | None
) -> tuple[list[str], str]:
    """The annotated images ``split`` or ``image`` selects, and how to name the selection."""
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
    return names, selection


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
    pred_files, extra = _prediction_files(pred, truth, annotations)
    truth_xy = [read_points_csv(annotations.files[n]) for n in names]
    found, missing = _read_predictions(names, pred_files)
    report, sweep = _score(names, found, truth_xy, pred_files, radius, threshold)
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


def _prediction_files(pred: Path, truth: str | PathLike[str], annotations: AnnotationSet) -> tuple[dict[str, Path], list[str]]:
    """Image name → its prediction CSV, and the CSVs named after no annotated image."""
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

    return pred_files, extra


def _read_predictions(names: list[str], pred_files: dict[str, Path]) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], list[str]]:
    """Each image's predicted points and scores (None without a score column); an image
    without a prediction file has none, and is listed as missing."""
    found: list[tuple[np.ndarray, np.ndarray | None]] = []
    missing: list[str] = []
    for n in names:
        if n in pred_files:
            found.append(read_scored_points_csv(pred_files[n]))
        else:
            missing.append(n)
            found.append((np.empty((0, 2)), np.empty(0)))
    return found, missing


def _score(
    names: list[str], found: list[tuple[np.ndarray, np.ndarray | None]], truth_xy: list[np.ndarray], pred_files: dict[str, Path],
    radius: float, threshold: float | None,
) -> tuple[EvaluationReport, SweepResult | None]:
    """The report at ``threshold`` (every detection without one) and, when every file has
    scores, the sweep over score levels."""
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
    return report, sweep
