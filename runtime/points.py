"""Point CSV files: annotated nucleus centres and detections, one point per row.

The format of ``shared/data/<set>/points/<name>.csv`` and of ``micronet detect``'s CSV
output: the header ``x,y`` (or ``x,y,score`` for detections), then one point per row in
0-based pixel coordinates, ``x`` = column, ``y`` = row. A header-only file holds no
points; a UTF-8 byte-order mark and blank lines are accepted.
"""

from __future__ import annotations

import math
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .matching import as_points

__all__ = ["read_points_csv", "write_points_csv"]

_CSV_HEADERS = (("x", "y"), ("x", "y", "score"))


def read_points_csv(path: str | PathLike[str]) -> np.ndarray:
    """Reads a point CSV: header ``x,y`` (or ``x,y,score``), one point per row.

    Returns:
        ``(N, 2)`` float64 ``(x, y)`` = (column, row) in pixels; a header-only file
        gives ``(0, 2)``. A score column is read past (see :func:`write_points_csv`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: no or another header, a row with the wrong number of fields, a
            non-numeric or non-finite value; the message names the file and line.
    """
    path = Path(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = f.read().splitlines()
    if not lines:
        raise InputError(f"{path}: empty file; expected the header 'x,y' and one point per row")
    header = tuple(h.strip() for h in lines[0].split(","))
    if header not in _CSV_HEADERS:
        valid = " or ".join(repr(",".join(h)) for h in _CSV_HEADERS)
        raise InputError(f"{path}: expected the header {valid}, got {lines[0]!r}")
    width = len(header)
    rows: list[tuple[float, float]] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # blank lines (a trailing one, typically) hold no point
        fields = line.split(",")
        if len(fields) != width:
            raise InputError(f"{path}, line {lineno}: expected {width} comma-separated values, got {len(fields)}: {line!r}")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise InputError(f"{path}, line {lineno}: expected numbers, got {line!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"{path}, line {lineno}: expected finite numbers, got {line!r}")
        rows.append((values[0], values[1]))
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def write_points_csv(path: str | PathLike[str], xy: Any, scores: Any = None) -> None:
    """Writes points as CSV: header ``x,y``, or ``x,y,score`` when scores are given.

    Args:
        path: file to (over)write.
        xy: ``(N, 2)`` points ``(x, y)`` in pixels, any real dtype; each value is written
            with the fewest digits that read back to the same value in that dtype.
        scores: optional ``(N,)`` finite scores.
    """
    arr = np.asarray(xy)
    points = as_points(arr, "xy")
    if arr.size and np.issubdtype(arr.dtype, np.floating) and arr.dtype != np.float64:
        points = points.astype(arr.dtype)  # exact: the values came from this dtype
    columns = [points.astype(str)]
    header = "x,y"
    if scores is not None:
        s = np.asarray(scores)
        if s.shape != (len(points),) or not np.issubdtype(s.dtype, np.number):
            raise InputError(f"scores: expected a ({len(points)},) array of numbers, got shape {s.shape} dtype {s.dtype}")
        if not np.isfinite(s).all():
            raise InputError("scores: expected finite numbers, got NaN or infinity")
        columns.append(s.astype(str)[:, None])
        header = "x,y,score"
    text = np.concatenate(columns, axis=1) if len(points) else np.empty((0, len(header.split(","))), dtype=str)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(header + "\n")
        f.writelines(",".join(row) + "\n" for row in text)
