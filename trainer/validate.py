"""Running a torch model over whole images and choosing the threshold ξ (validation)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from micronet.runtime.metrics import SweepResult, threshold_sweep
from micronet.runtime.peaks import find_peaks

__all__ = ["normalize", "predict_map", "resample", "detect_candidates", "choose_threshold", "CheckpointCandidates"]


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
    out = model(x)[0, 0].float().cpu().numpy()  # (H, W)
    model.train(was_training)
    return out


def resample(image: np.ndarray, points: np.ndarray | None, factor: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Bilinear whole-image resampling by ``factor`` (output px per input px); ``points``
    ``(N, 2)`` (x, y) are scaled with it. Within 1% of 1 nothing changes."""
    if abs(factor - 1.0) <= 0.01:
        return image, points
    from PIL import Image

    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    out = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    return out, None if points is None else points * np.array([size[0] / w, size[1] / h])


def detect_candidates(maps: Sequence[np.ndarray], min_distance: int, floor: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Peaks of each map above a low ``floor``: a threshold sweep then only filters scores."""
    return [find_peaks(m, floor, min_distance) for m in maps]


def choose_threshold(
    maps: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    radius: float,
    min_distance: int,
    scale: float = 5.0,
    n_thresholds: int = 60,
) -> "SweepResult":
    """Sweeps ξ over (0, scale) and returns the pooled best-F1 threshold.

    Candidates are found once at the lowest threshold: because a peak is a maximum of
    its own window, raising ξ only removes peaks (never creates one), so filtering the
    candidates' scores equals rerunning the peak finder at each ξ.
    """
    thresholds = np.linspace(0.02 * scale, 0.9 * scale, n_thresholds)
    cands = detect_candidates(maps, min_distance, float(thresholds[0]))
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
        work, _ = resample(image, None, mpp / self.info.mpp)  # to model pixels
        prob = predict_map(self.model, work, self.info.mean, self.info.std, self.device)
        xy, scores = find_peaks(prob, self.floor, self.info.min_distance)
        if work is not image:
            xy = xy * np.array([image.shape[1] / work.shape[1], image.shape[0] / work.shape[0]], np.float32)
        return xy, scores
