"""The output files of one slide run, and the record that lets a rerun resume it.

:class:`SlideOutputs` holds the files of one input in ``out_dir``, written as batches
complete, so an interrupted run leaves valid files and a rerun resumes:

- ``<stem>.csv``: header ``x,y,x_um,y_um,score``; level-0 pixels (shortest float32
  repr, as :meth:`Detections.to_csv`), µm from the slide's top-left corner to the pixel
  centre, ``(x + 0.5) · mpp``. Rows are appended and flushed per batch, in tile order.
- ``<stem>.geojson``: a QuPath FeatureCollection of ``Point`` detections, features
  exactly as :meth:`Detections.to_geojson` makes them. After each batch the new
  features are written over the closing ``]}`` and the trailer is written again, so
  the file is valid JSON between batches — without rewriting what is already there,
  which a whole-slide file (hundreds of MB) could not afford after every batch.
- ``<stem>.overlay.png``: the thumbnail with the detections drawn, rewritten
  atomically (temporary file + rename) every 30 s and at the end.
- ``<stem>.progress.json`` and ``<stem>.progress.bin``: the resume record. The JSON
  (replaced atomically after each batch) holds the settings, the number of tiles done
  and the byte length of every output at that point; the ``.bin`` holds the
  detections so far as float32 ``(x, y, score)`` records. A rerun with the same
  settings truncates each file to its recorded length (dropping a batch torn by a
  kill) and carries on from the next tile; with other settings it starts over. A
  finished record makes a rerun return the saved detections at once.

Each format is written by its own small functions — ``start_*`` (a new file),
``append_*`` (one batch, returning the length to record) and ``reopen_*`` (back to a
recorded length) — which :class:`SlideOutputs` calls for the formats asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..detections import Detections
from ..errors import InputError, InputTypeError
from .reader import Thumbnail, slide_suffix

__all__ = [
    "SlideOutputs",
    "FORMATS",
    "check_formats",
    "output_stem",
    "fingerprint",
    "replace_atomically",
    "start_csv",
    "append_csv",
    "reopen_csv",
    "start_geojson",
    "append_geojson",
    "reopen_geojson",
    "append_records",
    "read_records",
]

log = logging.getLogger(__name__)

FORMATS = ("csv", "geojson", "png")
OVERLAY_NUCLEUS_UM = 4.0  # circle radius drawn on the overlay
OVERLAY_COLOR = (0, 255, 0)
OVERLAY_INTERVAL_S = 30.0
PROGRESS_FORMAT = "micronet-slide-progress/1"
CSV_HEADER = "x,y,x_um,y_um,score\n"
GEOJSON_HEAD = b'{"type":"FeatureCollection","features":['
GEOJSON_TAIL = b"]}"


def check_formats(formats: Any) -> tuple[str, ...]:
    """Output format names (a sequence, or one comma-separated string) as a tuple in
    :data:`FORMATS` order; a ``ValueError`` lists the valid names."""
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    try:
        names = tuple(formats)
    except TypeError:
        raise InputTypeError(f"formats: expected a sequence of format names ({', '.join(FORMATS)}), got {type(formats).__name__}") from None
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise InputError(f"formats: expected one or more of {', '.join(FORMATS)}, got {list(names)!r}")
    return tuple(f for f in FORMATS if f in names)


def output_stem(path: Path) -> str:
    """The name the outputs of a slide start with: ``a.svs`` → ``a``, ``b.ome.tif`` → ``b``."""
    suffix = slide_suffix(path)
    return path.name[: -len(suffix)] if suffix and path.name.lower().endswith(suffix) else path.stem


def fingerprint(path: Path) -> dict[str, Any]:
    """Identifies the slide file by size and the hash of its first MiB (not the mtime,
    so a copied slide still resumes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
    return {"name": path.name, "bytes": path.stat().st_size, "sha256_1mib": digest.hexdigest()}


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Calls ``write`` on a temporary name next to ``path``, then renames it over
    ``path``: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


# --- the formats ------------------------------------------------------------------------------
# Files are binary, so that tell() is the byte length the resume record keeps.


def append_records(f: IO[bytes], xy: np.ndarray, scores: np.ndarray) -> int:
    """Appends detections to the resume record as little-endian float32 ``(x, y, score)``
    rows; returns the file's length."""
    records = np.concatenate([xy, scores[:, None]], axis=1).astype("<f4")
    f.write(records.tobytes())
    f.flush()
    return f.tell()


def read_records(path: Path) -> np.ndarray:
    """The resume record's detections: ``(N, 3)`` float32 ``(x, y, score)``."""
    return np.fromfile(path, dtype="<f4").reshape(-1, 3)


def start_csv(f: IO[bytes]) -> int:
    """Writes the CSV header; returns the file's length."""
    f.write(CSV_HEADER.encode())
    f.flush()
    return f.tell()


def append_csv(f: IO[bytes], xy: np.ndarray, scores: np.ndarray, mpp_xy: tuple[float, float]) -> int:
    """Appends one row per detection (level-0 ``xy`` ``(N, 2)`` float32, ``scores``
    ``(N,)``); returns the file's length."""
    if len(xy):
        x_um = np.round((xy[:, 0].astype(np.float64) + 0.5) * mpp_xy[0], 3)
        y_um = np.round((xy[:, 1].astype(np.float64) + 0.5) * mpp_xy[1], 3)
        columns = [xy.astype(str), x_um.astype(str)[:, None], y_um.astype(str)[:, None], scores.astype(str)[:, None]]
        table = np.concatenate(columns, axis=1)  # (N, 5) shortest round-trip reprs
        f.write("".join(",".join(row) + "\n" for row in table.tolist()).encode())
        f.flush()
    return f.tell()


def reopen_csv(path: Path, length: int) -> IO[bytes]:
    """The CSV cut back to ``length`` bytes, open for appending."""
    with open(path, "r+b") as f:
        f.truncate(length)
    return open(path, "ab")


def start_geojson(f: IO[bytes]) -> int:
    """Writes an empty FeatureCollection; returns where the first feature goes."""
    f.write(GEOJSON_HEAD + GEOJSON_TAIL)
    f.flush()
    return len(GEOJSON_HEAD)


def append_geojson(f: IO[bytes], end: int, xy: np.ndarray, scores: np.ndarray) -> int:
    """Writes one batch's features over the closing ``]}`` at ``end`` (where the
    features so far end) and the closing again; returns the new end."""
    if not len(xy):
        return end
    features = Detections(xy, scores).to_geojson()["features"]
    text = json.dumps(features, separators=(",", ":"), allow_nan=False)[1:-1].encode("utf-8")  # the list's items
    f.seek(end)
    f.write((b"," if end > len(GEOJSON_HEAD) else b"") + text + GEOJSON_TAIL)
    f.flush()
    return f.tell() - len(GEOJSON_TAIL)


def reopen_geojson(path: Path, end: int) -> IO[bytes]:
    """The GeoJSON cut back to the features before ``end`` and closed again, open for
    :func:`append_geojson`."""
    f = open(path, "r+b")
    f.seek(end)
    f.write(GEOJSON_TAIL)
    f.truncate()
    f.flush()
    return f


class _Overlay:
    """The overlay PNG: the thumbnail with a circle on each detection."""

    def __init__(self, thumbnail: Thumbnail, mpp_xy: tuple[float, float]) -> None:
        from PIL import Image, ImageDraw

        self.thumbnail = thumbnail
        self._canvas = Image.fromarray(thumbnail.image.copy())
        self._draw = ImageDraw.Draw(self._canvas)
        sx, sy = thumbnail.scale_xy
        self._radius = max(1, round(OVERLAY_NUCLEUS_UM / (mpp_xy[0] * (sx + sy) / 2)))
        self.changed = True  # since last written
        self.written_at = 0.0  # time.monotonic()

    def draw(self, xy: np.ndarray) -> None:
        """Draws level-0 positions ``(N, 2)``."""
        if not len(xy):
            return
        r, width = self._radius, max(1, self._radius // 3)
        for x, y in self.thumbnail.from_level0(xy).tolist():
            self._draw.ellipse((x - r, y - r, x + r, y + r), outline=OVERLAY_COLOR, width=width)
        self.changed = True

    def write(self, path: Path) -> None:
        """Replaces ``path`` atomically with the drawing, when it changed."""
        if not self.changed:
            return
        replace_atomically(path, lambda p: self._canvas.save(p, format="PNG"))
        self.changed = False
        self.written_at = time.monotonic()


# --- the outputs of one input --------------------------------------------------------------------


class SlideOutputs:
    """The streamed CSV / GeoJSON / overlay files of one slide run, and its resume record.

    Call :meth:`finished` (a finished run's detections, if any), else :meth:`open`, then
    :meth:`commit` after each batch, :meth:`finish` at the end, and :meth:`close` in any
    case. Each :meth:`commit` appends one batch to every file and then records the new
    byte lengths in ``.progress.json``; a resumed run truncates the files back to those
    lengths, so a batch half-written by a kill is dropped and redone.

    Args:
        out_dir: the folder (made when missing).
        stem: the name the files start with (:func:`output_stem`).
        formats: of :data:`FORMATS`, as :func:`check_formats` returns them.
        mpp_xy: the level-0 ``(x, y)`` pixel size in µm/px (the CSV's µm columns).
        thumbnail: the region's thumbnail, the overlay's background; required for
            ``"png"``.

    Attributes:
        paths: format name → output file.
        state_path, bin_path: the resume record.
        state: the record as last saved (settings, ``tiles_total``, ``tiles_done``,
            ``detections``, ``bytes`` per file, ``complete``, ``seconds``).
    """

    def __init__(self, out_dir: Path, stem: str, formats: tuple[str, ...], mpp_xy: tuple[float, float], thumbnail: Thumbnail | None) -> None:
        if "png" in formats and thumbnail is None:
            raise InputError("thumbnail: the overlay PNG needs the region's thumbnail, got None")
        self.dir = out_dir
        self.formats = formats
        self.mpp_xy = mpp_xy
        self.paths = {
            "csv": out_dir / f"{stem}.csv",
            "geojson": out_dir / f"{stem}.geojson",
            "png": out_dir / f"{stem}.overlay.png",
        }
        self.state_path = out_dir / f"{stem}.progress.json"
        self.bin_path = out_dir / f"{stem}.progress.bin"
        self.thumbnail = thumbnail
        self.state: dict[str, Any] = {}
        self._files: dict[str, IO[bytes]] = {}
        self._overlay: _Overlay | None = None

    # -- opening --

    def finished(self, settings: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """``(xy, scores)`` of a finished run with these settings whose files are all
        there, else ``None``."""
        state = self._load_state()
        if state is None or not state.get("complete") or state.get("settings") != settings:
            return None
        if not self.bin_path.is_file() or not all(self.paths[f].is_file() for f in self.formats):
            return None
        records = read_records(self.bin_path)
        if len(records) != state["detections"]:
            return None
        log.info("%s: finished already; returning its %d detections", self.state_path.name, len(records))
        return records[:, :2].copy(), records[:, 2].copy()

    def open(self, settings: dict[str, Any], tiles: int, resume: bool) -> tuple[int, np.ndarray, np.ndarray]:
        """Opens the files, resuming a matching unfinished run when ``resume``.

        Returns:
            ``(tiles_done, xy, scores)``: tiles already done and their detections.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        previous = self._load_state() if resume else None
        if previous is not None and previous.get("settings") != settings:
            changed = sorted(k for k in set(settings) | set(previous.get("settings", {})) if settings.get(k) != previous["settings"].get(k))
            log.warning("%s: the saved run used other settings (%s); starting over", self.state_path.name, ", ".join(changed))
            previous = None
        if previous is not None and previous["tiles_total"] != tiles:
            log.warning("%s: the saved run planned %d tiles, this one %d; starting over", self.state_path.name, previous["tiles_total"], tiles)
            previous = None
        if previous is not None and (not self.bin_path.is_file() or any(not self.paths[f].is_file() for f in self.formats if f != "png")):
            log.warning("%s: output files of the saved run are missing; starting over", self.state_path.name)
            previous = None
        if previous is None:
            self.state = {
                "format": PROGRESS_FORMAT,
                "settings": settings,
                "tiles_total": tiles,
                "tiles_done": 0,
                "detections": 0,
                "bytes": {},
                "complete": False,
                "seconds": 0.0,
            }
            self._start_files()
            self._save_state()
            return 0, np.zeros((0, 2), np.float32), np.zeros((0,), np.float32)
        self.state = previous
        records = self._reopen_files()
        if self.state["tiles_done"]:
            log.info("%s: resuming after tile %d of %d (%d detections so far)", self.state_path.name, self.state["tiles_done"], tiles, len(records))
        xy, scores = records[:, :2].copy(), records[:, 2].copy()
        if self._overlay is not None:
            self._overlay.draw(xy)
        return int(self.state["tiles_done"]), xy, scores

    def _load_state(self) -> dict[str, Any] | None:
        if not self.state_path.is_file():
            return None
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s); starting over", self.state_path, exc)
            return None
        if not isinstance(state, dict) or state.get("format") != PROGRESS_FORMAT:
            log.warning("%s is not a MicroNet progress record; starting over", self.state_path)
            return None
        return state

    def _start_files(self) -> None:
        sizes = self.state["bytes"]
        self._files["bin"] = open(self.bin_path, "wb")
        sizes["bin"] = 0
        if "csv" in self.formats:
            self._files["csv"] = open(self.paths["csv"], "wb")
            sizes["csv"] = start_csv(self._files["csv"])
        if "geojson" in self.formats:
            self._files["geojson"] = open(self.paths["geojson"], "wb")
            sizes["geojson"] = start_geojson(self._files["geojson"])
        self._new_overlay()

    def _reopen_files(self) -> np.ndarray:
        sizes = self.state["bytes"]
        with open(self.bin_path, "r+b") as f:
            f.truncate(sizes["bin"])
        records = read_records(self.bin_path)
        if len(records) != self.state["detections"]:
            raise InputError(f"{self.bin_path}: holds {len(records)} detections, its record says {self.state['detections']}; delete it to start over")
        self._files["bin"] = open(self.bin_path, "ab")
        if "csv" in self.formats:
            self._files["csv"] = reopen_csv(self.paths["csv"], sizes["csv"])
        if "geojson" in self.formats:
            self._files["geojson"] = reopen_geojson(self.paths["geojson"], sizes["geojson"])
        self._new_overlay()
        return records

    def _new_overlay(self) -> None:
        if self.thumbnail is not None and "png" in self.formats:
            self._overlay = _Overlay(self.thumbnail, self.mpp_xy)

    # -- writing --

    def commit(self, xy: np.ndarray, scores: np.ndarray, tiles_done: int, seconds: float) -> None:
        """Appends one batch's detections (level-0 ``xy`` ``(N, 2)`` float32, ``scores``
        ``(N,)``) to every file, then records the new file lengths, ``tiles_done`` and
        the ``seconds`` spent so far."""
        sizes = self.state["bytes"]
        sizes["bin"] = append_records(self._files["bin"], xy, scores)
        if "csv" in self._files:
            sizes["csv"] = append_csv(self._files["csv"], xy, scores, self.mpp_xy)
        if "geojson" in self._files:
            sizes["geojson"] = append_geojson(self._files["geojson"], sizes["geojson"], xy, scores)
        if self._overlay is not None:
            self._overlay.draw(xy)
        self.state["tiles_done"] = tiles_done
        self.state["detections"] += len(xy)
        self.state["seconds"] = seconds
        self._save_state()
        if self._overlay is not None and time.monotonic() - self._overlay.written_at > OVERLAY_INTERVAL_S:
            self.write_overlay()

    def _save_state(self) -> None:
        text = json.dumps(self.state, indent=1)
        replace_atomically(self.state_path, lambda p: p.write_text(text, encoding="utf-8"))

    def write_overlay(self) -> None:
        """Writes the overlay PNG as it stands, if it changed since last written."""
        if self._overlay is not None:
            self._overlay.write(self.paths["png"])

    def finish(self, summary: dict[str, Any]) -> None:
        """Marks the run complete in its record, with ``summary`` (tiles planned,
        megapixels, seconds, detections)."""
        self.state.update(summary, complete=True)
        self._save_state()

    def close(self) -> None:
        """Closes the files; writes the overlay as it stands (also after an error, so an
        interrupted run leaves a current one)."""
        for f in self._files.values():
            f.close()
        self._files = {}
        self.write_overlay()
