"""Point CSV files: annotated nucleus centres and detections, one point per row.

What this module reads: a header naming the columns, then one point per row in 0-based
pixel coordinates, ``x`` = column, ``y`` = row. The header must name an ``x`` and a ``y``
column, in any order; a ``score`` column is read when present; other columns (such as
the ``x_um,y_um`` of ``micronet detect``'s slide CSVs) are passed over. So all of these
read:

- ``shared/data/<set>/points/<name>.csv``: ``x,y``;
- ``micronet detect``'s image CSV: ``x,y,score``;
- ``micronet detect``'s slide CSV: ``x,y,x_um,y_um,score`` (``x, y`` in level-0 pixels).

A header-only file holds no points; a UTF-8 byte-order mark, spaces around names and
values, and blank lines are accepted, and so is UTF-16 text with its byte-order mark
(what spreadsheets save as "Unicode"); other encodings are refused in one line, as are
coordinates beyond ±:data:`MAX_COORDINATE` pixels (no image is that large: such a value
is a unit or export error). What this module writes: ``x,y`` or ``x,y,score``.
"""

from __future__ import annotations

import codecs
import csv
import math
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, InputTypeError
from .files import regular_file

__all__ = ["MAX_COORDINATE", "read_points_csv", "read_scored_points_csv", "write_points_csv"]

MAX_COORDINATE = 1e9  # pixels: 25 km at 0.25 µm/px; the matcher works up to 1e150

_REQUIRED = ("x", "y")
_SCORE = "score"
_EXPECTED = "a header naming an 'x' and a 'y' column (e.g. 'x,y', 'x,y,score' or 'x,y,x_um,y_um,score')"


def as_points(value: Any, name: str) -> np.ndarray:
    """``value`` as a C-contiguous ``(N, 2)`` float64 array of finite points.

    Raises TypeError for non-numeric data and ValueError, naming ``name``, for a wrong
    shape or a NaN/infinite coordinate. An empty list is taken as no points.
    """
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise InputError(f"{name}: expected an (N, 2) array of points: {exc}") from None
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputTypeError(f"{name}: expected real (x, y) coordinates, got dtype {arr.dtype}")
    if arr.ndim == 1 and arr.size == 0:  # [] or np.array([])
        arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"{name}: expected an (N, 2) array of points, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise InputError(f"{name}: expected finite coordinates, got point {i} = ({arr[i, 0]}, {arr[i, 1]})")
    return arr


def read_points_csv(path: str | PathLike[str]) -> np.ndarray:
    """Reads the positions of a point CSV (format: this module's docstring).

    Returns:
        ``(N, 2)`` float64 ``(x, y)`` = (column, row) in pixels; a header-only file
        gives ``(0, 2)``. A score column, when present, is checked and passed over (see
        :func:`read_scored_points_csv`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: no header with ``x`` and ``y``, a repeated column name, a row with
            another number of fields than the header, or a non-numeric or non-finite
            ``x``, ``y`` or ``score``; the message names the file and line.
    """
    return read_scored_points_csv(path)[0]


def read_scored_points_csv(path: str | PathLike[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Reads a point CSV with its scores (format: this module's docstring).

    Returns:
        ``(xy, scores)``: ``(N, 2)`` float64 ``(x, y)`` = (column, row) in pixels, and
        ``(N,)`` float64 scores, or ``None`` when the header has no ``score`` column.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_points_csv`.
    """
    path = regular_file(path, "point CSV")
    lines = _text(path).splitlines()
    if not lines or not lines[0].strip():
        raise InputError(f"{path}: {'empty file' if not lines else 'empty first line'}; expected {_EXPECTED}, then one point per row")
    header = [name.strip() for name in next(csv.reader([lines[0]]))]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated or not all(name in header for name in _REQUIRED):
        problem = f"repeated column {', '.join(map(repr, repeated))} in" if repeated else "got"
        raise InputError(f"{path}: expected {_EXPECTED}, {problem} {lines[0]!r}")
    wanted = [header.index(name) for name in (*_REQUIRED, _SCORE) if name in header]  # x, y[, score]
    width = len(header)
    rows: list[list[float]] = []
    for lineno, fields in enumerate(csv.reader(lines[1:]), start=2):
        if not fields or not "".join(fields).strip():
            continue  # blank lines (a trailing one, typically) hold no point
        line = lines[lineno - 1]
        if len(fields) != width:
            raise InputError(f"{path}, line {lineno}: expected {width} comma-separated values, got {len(fields)}: {line!r}")
        try:
            values = [float(fields[i]) for i in wanted]
        except ValueError:
            raise InputError(f"{path}, line {lineno}: expected numbers, got {line!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"{path}, line {lineno}: expected finite numbers, got {line!r}")
        if abs(values[0]) > MAX_COORDINATE or abs(values[1]) > MAX_COORDINATE:
            raise InputError(f"{path}, line {lineno}: expected pixel positions within ±{MAX_COORDINATE:g}, got {line!r}")
        rows.append(values)
    table = np.array(rows, dtype=np.float64).reshape(-1, len(wanted))
    return table[:, :2].copy(), (table[:, 2].copy() if len(wanted) == 3 else None)


def _text(path: Path) -> str:
    """The file's text: UTF-8 (with or without a byte-order mark), or UTF-16 with one."""
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: damaged UTF-16 text ({exc.reason} at byte {exc.start}); save it as CSV UTF-8") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {raw[exc.start]:#04x} at {exc.start}); save it as CSV UTF-8") from None
    if "\x00" in text[:4096]:
        raise InputError(f"{path}: holds NUL bytes (UTF-16 without a byte-order mark?); save it as CSV UTF-8")
    return text


def write_points_csv(path: str | PathLike[str], xy: Any, scores: Any = None, extra: dict[str, list[str]] | None = None) -> None:
    """Writes points as CSV: header ``x,y``, or ``x,y,score`` when scores are given,
    then the ``extra`` columns (name → one string per point, e.g. a class name).

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
    for name, values in (extra or {}).items():
        if len(values) != len(points):
            raise InputError(f"column {name!r}: expected {len(points)} values, got {len(values)}")
        columns.append(np.asarray(values, dtype=str).reshape(-1, 1))
        header += f",{name}"
    text = np.concatenate(columns, axis=1) if len(points) else np.empty((0, len(header.split(","))), dtype=str)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(header + "\n")
        f.writelines(",".join(row) + "\n" for row in text)
