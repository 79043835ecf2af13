"""Running a torch model over whole images and choosing the threshold ξ (validation)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from micronet.runtime.evaluation.sweep import (
    SweepResult,
    sweep_thresholds,
    threshold_sweep,
)
from micronet.runtime.peaks import find_peaks
from micronet.runtime.resample import from_resampled, resample

from .models import map_output

if TYPE_CHECKING:
    from micronet.runtime.evaluation.datasets import PointDataset

__all__ = ["normalize", "predict_map", "detect_candidates", "choose_threshold", "validation_inputs", "tune_detection", "CheckpointCandidates"]


def normalize(images_u8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 → ``(B, 3, H, W)`` float32, per-channel ``(x − mean) / std``."""
    x = torch.from_numpy(np.require(images_u8, requirements=["C", "W"])).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def predict_map(model: torch.nn.Module, image: np.ndarray, mean: Sequence[float], std: Sequence[float], device: str | torch.device = "cpu") -> np.ndarray:
    """The ``(H, W)`` float32 proximity map of one ``(H, W, 3)`` uint8 image."""
    was_training = model.training
    model.eval()
    x = normalize(image[None], mean, std).to(device)
    out = map_output(model, model(x))[0, 0].float().cpu().numpy()  # (H, W); a classifier's probabilities
    model.train(was_training)
    return out


def detect_candidates(
    maps: Sequence[np.ndarray], min_distance: int, floor: float, scales: Sequence[tuple[float, float] | None] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Peaks of each map above a low ``floor``: a threshold sweep then only filters scores.
    With ``scales`` (the ``(sx, sy)`` of :func:`micronet.runtime.resample.resample` per
    map, or ``None``), positions are mapped back to the images' own pixels."""
    out = []
    for k, m in enumerate(maps):
        xy, scores = find_peaks(m, floor, min_distance)
        scale = scales[k] if scales is not None else None
        out.append((from_resampled(xy, *scale).astype(np.float32) if scale is not None else xy, scores))
    return out


def choose_threshold(
    maps: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    radius: float,
    min_distance: int,
    scale: float = 5.0,
    n_thresholds: int = 60,
    scales: Sequence[tuple[float, float] | None] | None = None,
) -> "SweepResult":
    """Sweeps ξ over :func:`~micronet.runtime.evaluation.sweep.sweep_thresholds` of ``scale`` and
    returns the pooled sweep (:func:`~micronet.runtime.evaluation.sweep.threshold_sweep`), whose
    ``best_threshold`` is the best-F1 ξ.

    Candidates are found once at the lowest threshold: because a peak is a maximum of
    its own window, raising ξ only removes peaks (never creates one), so filtering the
    candidates' scores equals rerunning the peak finder at each ξ. ``maps`` are at the
    model's pixel size; with ``scales`` (one per map, from resampling the images to it)
    the candidates are matched in the images' own pixels, where ``truths`` and
    ``radius`` are, exactly as ``micronet evaluate`` matches them.
    """
    thresholds = sweep_thresholds(scale, n_thresholds)
    cands = detect_candidates(maps, min_distance, float(thresholds[0]), scales)
    return threshold_sweep(cands, list(truths), thresholds, radius)


class CheckpointCandidates:
    """Candidate detections of a checkpoint (torch) on one image at the caller's µm/px.

    The image is resampled to the model's pixel size, run whole, and the peaks above
    ``floor`` are mapped back to the image's pixels.
    """

    def __init__(self, path: str, floor: float, device: str = "cpu") -> None:
        from .checkpoint import load_checkpoint

        self.model, self.info = load_checkpoint(path, device)
        self.floor = floor
        self.device = device

    def __call__(self, image: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
        # To model pixels and back, as Detector.detect does (micronet.runtime.resample).
        work, _, scale = resample(image, None, mpp / self.info.mpp)
        prob = predict_map(self.model, work, self.info.mean, self.info.std, self.device)
        xy, scores = find_peaks(prob, self.floor, self.info.min_distance)
        if scale is not None:
            xy = from_resampled(xy, *scale).astype(np.float32)
        return xy, scores


def checkpoint_candidates(path: str, floor: float) -> "tuple[CheckpointCandidates, Any]":
    """A checkpoint's candidates callable and metadata, for the runtime's evaluation
    (``model_candidates(..., checkpoint=checkpoint_candidates)``): the trainer hands the
    runtime what runs torch, so that the runtime imports no trainer."""
    runner = CheckpointCandidates(path, floor)
    return runner, runner.info


def validation_inputs(
    val_set: "PointDataset | None", model_mpp: float
) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple[float, float] | None]]:
    """Validation images at the model's pixel size, their points in their own pixels,
    and the scale of each resampling: detections are mapped back and matched where the
    annotations are, with the radius in the data's pixels (as ``micronet evaluate``)."""
    if val_set is None:
        return [], [], []
    factor = val_set.mpp / model_mpp
    triples = [resample(im, None, factor) for im in val_set.images]  # micronet.runtime.resample
    return [t[0] for t in triples], list(val_set.points), [t[2] for t in triples]


def tune_detection(
    checkpoint: str,
    data: str,
    split: str | None,
    radius: float,
    min_distances: Sequence[int] = (2, 3, 4, 5, 6),
    device: str = "cpu",
) -> tuple[int, float, list[dict[str, float]]]:
    """Chooses the peak finder's minimum distance and ξ together, by pooled F1 on
    ``data``/``split`` (validation images), for a checkpoint's own maps.

    The maps are computed once (the network does not depend on either parameter); for
    each minimum distance, ξ is swept as in training (:func:`choose_threshold`).

    Returns:
        ``(min_distance, threshold, rows)`` with ``rows`` one dict per minimum distance:
        ``min_distance``, ``threshold`` (its best ξ), ``f1``, ``precision``, ``recall``.
    """
    from micronet.runtime.evaluation.datasets import load_point_folder

    from .checkpoint import load_checkpoint

    model, info = load_checkpoint(checkpoint, device)
    dataset = load_point_folder(data, split)
    images, truths, scales = validation_inputs(dataset, info.mpp)
    maps = [predict_map(model, im, info.mean, info.std, device) for im in images]
    peak = float(info.target.get("scale", 5.0))
    rows = []
    for md in min_distances:
        sweep = choose_threshold(maps, truths, radius, int(md), peak, scales=scales)
        best = sweep.metrics_at(sweep.best_index)
        rows.append({"min_distance": int(md), "threshold": float(sweep.best_threshold), "f1": best.f1,
                     "precision": best.precision, "recall": best.recall})
    chosen = max(rows, key=lambda r: r["f1"])
    return chosen["min_distance"], chosen["threshold"], rows
