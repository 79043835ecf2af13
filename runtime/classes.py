"""Nucleus phenotypes: the class head's logits read at the detected peaks.

A model with a class head has a second output, per-class logits ``N×K×H×W`` at the
proximity map's resolution (``model_info.CLASS_OUTPUT_NAME``), and its class names in
``ModelInfo.architecture["classes"]``. Only the pixels of the peaks are read: a softmax
over ``K`` values per detection, never over the whole map. The same function serves
NumPy arrays on the CPU and CuPy arrays on the GPU (the gather runs where the logits
are; only ``N×K`` values come back).

Colours follow the conventions pathologists know from QuPath's default classes (Tumor
red, Stroma green, Immune cells purple, Other yellow), so an imported GeoJSON looks
familiar.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["class_names", "class_probabilities", "class_colour", "CLASS_COLOURS"]

CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "epithelial": (200, 0, 0),
    "fibroblast": (150, 200, 150),
    "inflammatory": (160, 90, 160),
    "others": (255, 200, 0),
}
_FALLBACK = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def class_names(info: Any) -> tuple[str, ...]:
    """The class names a model's metadata declares (empty: no class head)."""
    return tuple(str(c) for c in (getattr(info, "architecture", None) or {}).get("classes", ()) or ())


def class_colour(name: str, index: int = 0) -> tuple[int, int, int]:
    """An ``(r, g, b)`` colour for a class: the conventional one, else a fixed palette."""
    return CLASS_COLOURS.get(name, _FALLBACK[index % len(_FALLBACK)])


def class_probabilities(logits: Any, xy: np.ndarray) -> np.ndarray:
    """Softmax of the logits at integer peak positions.

    Args:
        logits: ``(K, H, W)`` float array (NumPy, or CuPy on the GPU).
        xy: ``(N, 2)`` peak positions ``(x, y)`` in the logits' pixels (integers, or
            floats rounded to the nearest pixel and clipped into the map).

    Returns:
        ``(N, K)`` float32 NumPy probabilities (rows sum to 1).
    """
    k, h, w = logits.shape
    xy = np.asarray(xy).reshape(-1, 2)
    if len(xy) == 0:
        return np.zeros((0, k), np.float32)
    cols = np.clip(np.rint(xy[:, 0]).astype(np.int64), 0, w - 1)
    rows = np.clip(np.rint(xy[:, 1]).astype(np.int64), 0, h - 1)
    xp = _array_module(logits)
    picked = logits[:, xp.asarray(rows), xp.asarray(cols)].T.astype(xp.float32)  # (N, K), where the logits are
    picked = picked - picked.max(axis=1, keepdims=True)
    e = xp.exp(picked)
    probs = e / e.sum(axis=1, keepdims=True)
    return probs.get() if hasattr(probs, "get") else np.asarray(probs)


def _array_module(a: Any) -> Any:
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np
