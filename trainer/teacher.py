"""The teacher's proximity maps for distillation (trainer/distill.py): one map per image
at the teacher's pixel size, the mean over the four flips with TTA, computed once in
overlapping tiles and cached on disk by the teacher's hash (one ``.npy`` per image,
written whole then renamed)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from micronet.runtime.model_info import ModelInfo
from micronet.runtime.resample import resample

from .checkpoint import load_checkpoint
from .validate import normalize

if TYPE_CHECKING:  # pragma: no cover
    from .distill import DistillConfig

__all__ = ["resize_map", "teacher_map", "teacher_maps"]



@torch.no_grad()
def teacher_map(net: torch.nn.Module, info: ModelInfo, image: np.ndarray, tta: bool, tile: int = 1024) -> np.ndarray:
    """The teacher's ``(H, W)`` map of an image at its pixel size: the mean over the four
    flips with ``tta``; run in overlapping tiles so memory stays bounded."""
    h, w = image.shape[:2]
    out = np.zeros((h, w), np.float32)
    halo = 64
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            ya, xa = max(0, y0 - halo), max(0, x0 - halo)
            yb, xb = min(h, y0 + tile + halo), min(w, x0 + tile + halo)
            x = normalize(image[None, ya:yb, xa:xb], info.mean, info.std)  # (1, 3, h, w)
            flips = [(), (3,), (2,), (2, 3)] if tta else [()]
            acc = torch.zeros(x.shape[-2:])
            for dims in flips:
                xi = torch.flip(x, dims) if dims else x
                yi = net(xi)[0, 0].float()
                acc += torch.flip(yi, [d - 2 for d in dims]) if dims else yi
            m = (acc / len(flips)).numpy()
            out[y0 : min(h, y0 + tile), x0 : min(w, x0 + tile)] = m[y0 - ya : y0 - ya + min(tile, h - y0), x0 - xa : x0 - xa + min(tile, w - x0)]
    return out


def teacher_maps(cfg: "DistillConfig", images: dict[str, tuple[np.ndarray, float]]) -> dict[str, np.ndarray]:
    """The teacher's map of each image, at the teacher's pixel size, from the cache or
    computed (and cached, one ``.npy`` per image, written whole then renamed).

    Args:
        images: name → ``(image (H, W, 3) uint8, its µm/px)``.
    """
    from tqdm.auto import tqdm

    net, info = load_checkpoint(cfg.teacher)
    digest = hashlib.sha256(Path(cfg.teacher).read_bytes()).hexdigest()[:12]
    cache = Path(cfg.teacher_cache) / f"{digest}{'_tta' if cfg.tta else ''}"
    cache.mkdir(parents=True, exist_ok=True)
    maps = {}
    for name, (image, mpp) in tqdm(images.items(), desc="teacher maps", unit="image"):
        path = cache / f"{name}.npy"
        if path.is_file():
            maps[name] = np.load(path)
            continue
        at_teacher = resample(image, None, mpp / info.mpp)[0]
        m = teacher_map(net, info, at_teacher, cfg.tta)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, m)
        tmp.replace(path)
        maps[name] = m
    return maps


def resize_map(m: np.ndarray, height: int, width: int) -> np.ndarray:
    """A float map to ``(height, width)`` with Pillow's bilinear filter (the image
    resampler's, anti-aliased when shrinking; pixel centres correspond)."""
    if m.shape == (height, width):
        return m
    from PIL import Image

    return np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR), dtype=np.float32)
