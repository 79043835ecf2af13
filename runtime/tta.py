"""Test-time augmentation: the network runs on a batch and on its three flips, and the
maps, flipped back, are averaged where they lie (NumPy on the host, CuPy on the GPU)
before the peaks are found (``Detector(tta=True)`` or ``tta="flips"``). With
``tta="dihedral"`` it also runs on the transposed batch and its three flips (the 8
symmetries of the square: the flips and the 90° rotations), and the two 4-pass means,
the second transposed back, are averaged.

Batches are ``(B, h, w, 3)`` uint8 RGB, maps ``(B, 1, h, w)`` float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InputTypeError

__all__ = [
    "TTA_FLIPS",
    "TTA_MODES",
    "average_flips",
    "average_transposed",
    "check_tta",
    "flip",
    "flipped",
    "flips_per_call",
    "infer_flips",
    "merge_flips",
    "on_device",
    "recorded_tta",
    "tta_passes",
]

# The network runs on the image and on these flips of it, each its own inverse, as
# ``(flip rows, flip columns)``: none, left-right, up-down, both.
TTA_FLIPS = ((False, False), (False, True), (True, False), (True, True))
# The modes by name, with the network passes each costs per image or tile.
TTA_MODES = {"flips": 4, "dihedral": 8}


def check_tta(tta: Any) -> str | None:
    """The TTA mode a ``tta`` option names: ``False``/``None`` → ``None`` (one pass),
    ``True`` → ``"flips"``, or a name of :data:`TTA_MODES`.

    Raises:
        InputTypeError: anything else (the valid values are listed).
    """
    if tta is None or isinstance(tta, (bool, np.bool_)):
        return "flips" if tta else None
    if isinstance(tta, str) and tta in TTA_MODES:
        return tta
    raise InputTypeError(f"tta: expected True, False or one of {', '.join(map(repr, TTA_MODES))}, got {tta!r}")


def recorded_tta(mode: str | None) -> bool | str:
    """A mode as outputs record it (``Detector.tta``): ``False``, ``True`` for flips (as
    before the dihedral mode existed) or ``"dihedral"``."""
    return "dihedral" if mode == "dihedral" else mode is not None


def tta_passes(mode: str | None) -> int:
    """Network passes per image or tile under ``mode`` (:func:`check_tta`'s result)."""
    return TTA_MODES[mode] if mode else 1


def flip(array: Any, rows: bool, columns: bool, row_axis: int) -> Any:
    """A view of ``array`` reversed along ``row_axis`` (``rows``) and the axis after it
    (``columns``): NumPy on the host, CuPy on the GPU alike (basic slicing, no copy)."""
    index: list[slice] = [slice(None)] * array.ndim
    if rows:
        index[row_axis] = slice(None, None, -1)
    if columns:
        index[row_axis + 1] = slice(None, None, -1)
    return array[tuple(index)]


def flips_per_call(batch_size: int) -> int:
    """How many of the four flip passes of a tile share one backend call of at most
    ``batch_size`` images: all four when they fit, else two, else one."""
    return next(f for f in (4, 2, 1) if f <= batch_size)


def average_flips(maps: list[Any]) -> Any:
    """The mean of the ``(n, 1, h, w)`` maps of the :data:`TTA_FLIPS` passes, each
    flipped back first, computed where the maps lie (CuPy arithmetic stays on the GPU).

    Summed in pairs, (none + left-right) + (up-down + both): flipping the image only
    swaps terms within a pair or swaps the pairs, and float addition is commutative
    though not associative, so the average of a flipped image is exactly the flipped
    average of the image."""
    back = [flip(m, rows, columns, 2) for m, (rows, columns) in zip(maps, TTA_FLIPS)]
    total = back[0] + back[1]  # a new array: the backend's maps stay untouched
    total += back[2] + back[3]
    total *= 0.25  # a power of two: exact
    return total


def average_transposed(direct: Any, transposed: Any) -> Any:
    """The mean of the 4-pass mean ``direct`` ``(n, C, h, w)`` and the 4-pass mean of the
    transposed batch ``(n, C, w, h)``, transposed back (a new array, where they lie)."""
    total = direct + transposed.swapaxes(-1, -2)
    total *= 0.5
    return total


def on_device(array: Any) -> Any:
    """A context that makes ``array``'s GPU the current one for CuPy (whose ``device``
    is a ``cupy.cuda.Device``); nothing for a NumPy array."""
    device = getattr(array, "device", None)
    return device if hasattr(device, "__enter__") else contextlib.nullcontext()


def flipped(batch: np.ndarray, flips: Sequence[tuple[bool, bool]]) -> np.ndarray:
    """``(B, h, w, 3)`` → ``(len(flips)·B, h, w, 3)``, C-contiguous: the batch under
    each flip in turn (flip-major, so each flip's maps are one slice)."""
    return np.concatenate([flip(batch, rows, columns, 1) for rows, columns in flips])


def infer_flips(infer: Any, batch: np.ndarray, batch_size: int, mode: str = "flips") -> Any:
    """The mean map of ``batch`` over the passes of ``mode`` (:data:`TTA_FLIPS`, and for
    ``"dihedral"`` the same of the transposed batch), run by ``infer`` (a backend's) in
    calls of at most ``batch_size`` images."""
    n = len(batch)
    per_call = flips_per_call(max(1, batch_size // n))  # passes per call
    means = []
    for group in (batch, batch.transpose(0, 2, 1, 3))[: 2 if mode == "dihedral" else 1]:
        maps: list[Any] = []
        for start in range(0, len(TTA_FLIPS), per_call):
            out = infer(flipped(group, TTA_FLIPS[start : start + per_call]))  # (per_call·B, C, h, w)
            maps += [out[k * n : (k + 1) * n] for k in range(len(out) // n)]
        with on_device(maps[0]):
            means.append(average_flips(maps))
    if len(means) == 1:
        return means[0]
    with on_device(means[0]):
        return average_transposed(*means)


def merge_flips(maps: Any) -> Any:
    """The ``(4B, 1, h, w)`` maps of one call on a :func:`flipped` batch of all four
    flips, averaged to ``(B, 1, h, w)``."""
    n = len(maps) // len(TTA_FLIPS)
    with on_device(maps):
        return average_flips([maps[k * n : (k + 1) * n] for k in range(len(TTA_FLIPS))])
