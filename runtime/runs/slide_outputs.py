"""The output files of one slide run, written tile batch by tile batch, and the record
that lets a rerun resume, verify or refuse them.

:class:`SlideOutputs` is the slide case of :class:`~micronet.runtime.runs.outputs.InputOutputs`
(the lock, the complete-or-absent rule and the checks on a rerun are there). While the
run goes on, every file has its ``.partial`` name in the folder's hidden ``.micronet/``;
they get their final names only when the last tile is done and the record holds their
checksums:

- ``<stem>.csv``: header ``x,y,x_um,y_um,score``; level-0 pixels (shortest float32
  repr, as :meth:`Detections.to_csv`), µm from the slide's top-left corner to the pixel
  centre, ``(x + 0.5) · mpp``. Rows are appended and flushed per batch, in tile order.
- ``<stem>.geojson``: a QuPath FeatureCollection of ``Point`` detections, features
  exactly as :meth:`Detections.to_geojson` makes them. After each batch the new
  features are written over the closing ``]}`` and the trailer is written again, so
  the partial file is valid JSON between batches — without rewriting what is already
  there, which a whole-slide file (hundreds of MB) could not afford after every batch.
- ``<stem>.overlay.png``: the thumbnail with the detections drawn; the partial one is
  redrawn every 30 s and when a run stops (a preview), the final one at the end.
- ``.micronet/<stem>.progress.json`` and ``.micronet/<stem>.progress.bin``: the record.
  The JSON (replaced atomically after each batch) holds the settings, the number of
  tiles done and the byte length of every partial file at that point, and once
  finished the size and SHA-256 of every output; the ``.bin`` holds the detections so far as float32
  ``(x, y, score)`` records. A rerun with the same settings truncates each partial
  file to its recorded length (dropping a batch torn by a kill) and carries on from the
  next tile; a rerun of a finished run checks the outputs and rewrites any that is
  missing or damaged from the ``.bin``, byte for byte as the run wrote it.

Each format is written by its own small functions — ``start_*`` (a new file),
``append_*`` (one batch, returning the length to record) and ``reopen_*`` (back to a
recorded length) — which :class:`SlideOutputs` calls for the formats asked for.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..classes import class_colour
from ..detections import Detections
from ..errors import InputError
from ..files import open_output, write_new
from ..slide.reader import Thumbnail, slide_suffix
from .outputs import (
    FORMATS,
    InputOutputs,
    append_records,
    check_formats,
    fault_point,
    fingerprint,
    read_records,
    replace_atomically,
    writing,
)

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

OVERLAY_NUCLEUS_UM = 4.0  # circle radius drawn on the overlay
OVERLAY_COLOR = (0, 255, 0)
OVERLAY_SOFT_COLOR = (255, 140, 0)  # the outline of a tile out of focus
OVERLAY_INTERVAL_S = 30.0
CSV_HEADER = "x,y,x_um,y_um,score\n"
GEOJSON_HEAD = b'{"type":"FeatureCollection","features":['
GEOJSON_TAIL = b"]}"


def output_stem(path: Path) -> str:
    """The name the outputs of an input start with: ``a.svs`` → ``a``, ``b.ome.tif`` → ``b``,
    ``c.png`` → ``c``."""
    suffix = slide_suffix(path)
    return path.name[: -len(suffix)] if suffix and path.name.lower().endswith(suffix) else path.stem


# --- the formats ------------------------------------------------------------------------------
# Files are binary, so that tell() is the byte length the record keeps.


def csv_header(class_names: tuple[str, ...] = ()) -> str:
    """``x,y,x_um,y_um,score``, and with a class head ``class`` and one ``p_<name>``
    column per class (the image CSV's class columns)."""
    if not class_names:
        return CSV_HEADER
    return CSV_HEADER.rstrip("\n") + ",class," + ",".join(f"p_{n}" for n in class_names) + "\n"


def start_csv(f: IO[bytes], class_names: tuple[str, ...] = ()) -> int:
    """Writes the CSV header; returns the file's length."""
    f.write(csv_header(class_names).encode())
    f.flush()
    return f.tell()


def append_csv(
    f: IO[bytes], xy: np.ndarray, scores: np.ndarray, mpp_xy: tuple[float, float],
    probabilities: np.ndarray | None = None, class_names: tuple[str, ...] = (),
) -> int:
    """Appends one row per detection (level-0 ``xy`` ``(N, 2)`` float32, ``scores``
    ``(N,)``, with a class head their ``(N, K)`` ``probabilities``); returns the file's
    length."""
    if len(xy):
        x_um = np.round((xy[:, 0].astype(np.float64) + 0.5) * mpp_xy[0], 3)
        y_um = np.round((xy[:, 1].astype(np.float64) + 0.5) * mpp_xy[1], 3)
        columns = [xy.astype(str), x_um.astype(str)[:, None], y_um.astype(str)[:, None], scores.astype(str)[:, None]]
        if class_names:
            extra = Detections(xy, scores, class_probabilities=probabilities, class_names=class_names).class_columns()
            columns += [np.asarray(v, dtype=object)[:, None] for v in extra.values()]
        table = np.concatenate(columns, axis=1)  # (N, 5 [+ 1 + K]) shortest round-trip reprs
        f.write("".join(",".join(row) + "\n" for row in table.tolist()).encode())
        f.flush()
    return f.tell()


def reopen_csv(path: Path, length: int) -> IO[bytes]:
    """The CSV cut back to ``length`` bytes, open for appending."""
    with open_output(path, "r+") as f:
        f.truncate(length)
    return open_output(path, "a")


def start_geojson(f: IO[bytes]) -> int:
    """Writes an empty FeatureCollection; returns where the first feature goes."""
    f.write(GEOJSON_HEAD + GEOJSON_TAIL)
    f.flush()
    return len(GEOJSON_HEAD)


def append_geojson(
    f: IO[bytes], end: int, xy: np.ndarray, scores: np.ndarray,
    probabilities: np.ndarray | None = None, class_names: tuple[str, ...] = (),
) -> int:
    """Writes one batch's features (with QuPath classifications for a class head) over
    the closing ``]}`` at ``end`` (where the features so far end) and the closing again;
    returns the new end."""
    if not len(xy):
        return end
    found = Detections(xy, scores, class_probabilities=probabilities, class_names=class_names) if class_names else Detections(xy, scores)
    features = found.to_geojson()["features"]
    text = json.dumps(features, separators=(",", ":"), allow_nan=False)[1:-1].encode("utf-8")  # the list's items
    f.seek(end)
    f.write((b"," if end > len(GEOJSON_HEAD) else b"") + text + GEOJSON_TAIL)
    f.flush()
    return f.tell() - len(GEOJSON_TAIL)


def reopen_geojson(path: Path, end: int) -> IO[bytes]:
    """The GeoJSON cut back to the features before ``end`` and closed again, open for
    :func:`append_geojson`."""
    f = open_output(path, "r+")
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
        self._radius = max(1, round(OVERLAY_NUCLEUS_UM / (mpp_xy[0] * thumbnail.scale)))
        self.changed = True  # since last written
        self.written_at = 0.0  # time.monotonic()

    def draw(self, xy: np.ndarray, classes: np.ndarray | None = None, class_names: tuple[str, ...] = ()) -> None:
        """Draws level-0 positions ``(N, 2)``, coloured by class when given."""
        if not len(xy):
            return
        r, width = self._radius, max(1, self._radius // 3)
        colours = [OVERLAY_COLOR] * len(xy) if classes is None else [class_colour(class_names[c], int(c)) for c in classes.tolist()]
        for (x, y), colour in zip(self.thumbnail.from_level0(xy).tolist(), colours):
            self._draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=width)
        self.changed = True

    def mark_soft(self, boxes: list[tuple[float, float, float, float]]) -> None:
        """Outlines level-0 boxes ``(x0, y0, x1, y1)``: the tiles out of focus."""
        for x0, y0, x1, y1 in boxes:
            (a, b), (c, d) = self.thumbnail.from_level0(np.array([[x0, y0], [x1, y1]], np.float64)).tolist()
            self._draw.rectangle((a, b, max(a, c - 1), max(b, d - 1)), outline=OVERLAY_SOFT_COLOR, width=max(1, self._radius // 2))
        self.changed = self.changed or bool(boxes)

    def write(self, path: Path) -> None:
        """Writes the drawing to ``path`` (a partial file: no need to be atomic), when it
        changed."""
        if not self.changed:
            return
        write_new(path, self.save)
        self.changed = False
        self.written_at = time.monotonic()

    def save(self, path: Path) -> None:
        """Saves the drawing as PNG to ``path`` (a file :func:`write_new` made)."""
        self._canvas.save(path, format="PNG")


# --- the outputs of one slide --------------------------------------------------------------------


class SlideOutputs(InputOutputs):
    """The streamed CSV / GeoJSON / overlay files of one slide run, and its record.

    Take the input's :class:`~micronet.runtime.runs.outputs.OutputLock` first. Then
    :meth:`check` says what to do: ``"finished"`` → :meth:`repair` what is damaged
    (with :meth:`write_whole`) and use :meth:`records`; else :meth:`open`, :meth:`commit`
    after each batch, :meth:`finish` at the end, and :meth:`close` in any case. Each
    :meth:`commit` appends one batch to every partial file and then records the new
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
        paths: format name → final output file; :meth:`partial` its name until finished.
        state_path, bin_path: the record.
        state: the record as last saved (settings, ``tiles_total``, ``tiles_done``,
            ``detections``, ``bytes`` per partial file, ``complete``, ``seconds``,
            ``tile_blur_um`` (each tile's edge blur, µm, in plan order),
            ``tile_soft_cells`` (each tile's soft cells in its core, level-0
            ``[x0, y0, x1, y1, blur_um]``, under ``deblur="auto"``), and
            once complete ``outputs``: the size and SHA-256 of each file).
    """

    def __init__(
        self, out_dir: Path, stem: str, formats: tuple[str, ...], mpp_xy: tuple[float, float], thumbnail: Thumbnail | None,
        class_names: tuple[str, ...] = (),
    ) -> None:
        if "png" in formats and thumbnail is None:
            raise InputError("thumbnail: the overlay PNG needs the region's thumbnail, got None")
        super().__init__(Path(out_dir), stem, formats)
        self.mpp_xy = mpp_xy
        self.thumbnail = thumbnail
        self.class_names = tuple(class_names)  # a class head's: records hold (x, y, score, p_1 … p_K)
        self.record_width = 3 + len(self.class_names)
        self.resumed_probabilities: np.ndarray | None = None  # of the detections a resumed run keeps
        self._files: dict[str, IO[bytes]] = {}
        self._overlay: _Overlay | None = None
        self._finished = False
        # Level-0 boxes of the tiles out of focus, outlined on the final overlay (and on
        # one a repair redraws); set by the slide run before finish() or repair().
        self.soft_boxes: list[tuple[float, float, float, float]] = []

    # -- opening --

    def open(self, settings: dict[str, Any], tiles: int, resume: bool) -> tuple[int, np.ndarray, np.ndarray]:
        """Starts new partial files, or reopens those of the unfinished run :meth:`check`
        found (``resume``).

        Returns:
            ``(tiles_done, xy, scores)``: tiles already done and their detections.
        """
        if resume and not self.state.get("tiles_done"):
            resume = False  # nothing done yet: nothing to keep
        if resume and (not self.bin_path.is_file() or any(not self.partial(f).is_file() for f in self.formats if f != "png")):
            log.warning("%s: partial files of the unfinished run are missing; starting over", self.state_path.name)
            resume = False
        if not resume:
            self.start(settings, tiles_total=tiles, tiles_done=0, bytes={}, seconds=0.0)
            self._start_files()
            self.save_state()
            return 0, np.zeros((0, 2), np.float32), np.zeros((0,), np.float32)
        records = self._reopen_files()
        log.info("%s: resuming after tile %d of %d (%d detections so far)", self.state_path.name, self.state["tiles_done"], tiles, len(records))
        xy, scores = records[:, :2].copy(), records[:, 2].copy()
        self.resumed_probabilities = records[:, 3:].copy() if self.class_names else None
        if self._overlay is not None:
            self._overlay.draw(xy, *self._classes(self.resumed_probabilities))
        return int(self.state["tiles_done"]), xy, scores

    def _open(self, name: str, path: Path, mode: str) -> IO[bytes]:
        self._files[name] = open_output(path, mode)
        return self._files[name]

    def _start_files(self) -> None:
        sizes = self.state["bytes"]
        self._open("bin", self.bin_path, "w")
        sizes["bin"] = 0
        if "csv" in self.formats:
            with writing(self.partial("csv")):
                sizes["csv"] = start_csv(self._open("csv", self.partial("csv"), "w"), self.class_names)
        if "geojson" in self.formats:
            with writing(self.partial("geojson")):
                sizes["geojson"] = start_geojson(self._open("geojson", self.partial("geojson"), "w"))
        self._new_overlay()

    def _reopen_files(self) -> np.ndarray:
        sizes = self.state["bytes"]
        with writing(self.bin_path), open_output(self.bin_path, "r+") as f:
            f.truncate(sizes["bin"])
        records = read_records(self.bin_path, self.record_width)
        if len(records) != self.state["detections"]:
            raise InputError(f"{self.bin_path}: holds {len(records)} detections, its record says {self.state['detections']}; pass --overwrite (resume=False) to start over")
        self._open("bin", self.bin_path, "a")
        if "csv" in self.formats:
            with writing(self.partial("csv")):
                self._files["csv"] = reopen_csv(self.partial("csv"), sizes["csv"])
        if "geojson" in self.formats:
            with writing(self.partial("geojson")):
                self._files["geojson"] = reopen_geojson(self.partial("geojson"), sizes["geojson"])
        self._new_overlay()
        return records

    def _new_overlay(self) -> None:
        if self.thumbnail is not None and "png" in self.formats:
            self._overlay = _Overlay(self.thumbnail, self.mpp_xy)

    # -- writing --

    def commit(
        self, xy: np.ndarray, scores: np.ndarray, tiles_done: int, seconds: float, probabilities: np.ndarray | None = None,
        tile_blur: list[float | None] | None = None, tile_cells: list[list[list[float]]] | None = None,
    ) -> None:
        """Appends one batch's detections (level-0 ``xy`` ``(N, 2)`` float32, ``scores``
        ``(N,)``, and with a class head their ``(N, K)`` ``probabilities``) to every
        partial file, then records the new file lengths, ``tiles_done``, the batch's
        ``tile_blur`` (each tile's edge blur in µm, appended to ``tile_blur_um``), its
        ``tile_cells`` (each tile's soft cells, appended to ``tile_soft_cells``) and the
        ``seconds`` spent so far."""
        sizes = self.state["bytes"]
        probs = probabilities if self.class_names else None
        with writing(self.bin_path):
            sizes["bin"] = append_records(self._files["bin"], xy, scores, probs)
        fault_point("commit:records", tiles_done)
        if "csv" in self._files:
            with writing(self.partial("csv")):
                sizes["csv"] = append_csv(self._files["csv"], xy, scores, self.mpp_xy, probs, self.class_names)
            fault_point("commit:csv", tiles_done)
        if "geojson" in self._files:
            with writing(self.partial("geojson")):
                sizes["geojson"] = append_geojson(self._files["geojson"], sizes["geojson"], xy, scores, probs, self.class_names)
            fault_point("commit:geojson", tiles_done)
        if self._overlay is not None:
            self._overlay.draw(xy, *self._classes(probs))
        self.state["tiles_done"] = tiles_done
        if tile_blur is not None:
            self.state.setdefault("tile_blur_um", []).extend(tile_blur)
        if tile_cells is not None:
            self.state.setdefault("tile_soft_cells", []).extend(tile_cells)
        self.state["detections"] += len(xy)
        self.state["seconds"] = seconds
        self.save_state()
        fault_point("commit:state", tiles_done)
        if self._overlay is not None and time.monotonic() - self._overlay.written_at > OVERLAY_INTERVAL_S:
            self._overlay.write(self.partial("png"))
            fault_point("commit:overlay", tiles_done)

    def finish(self, summary: dict[str, Any]) -> None:
        """Closes the partial files, draws the final overlay, records their checksums and
        ``summary`` (tiles planned, megapixels, seconds, detections) in a finished record,
        and gives the files their final names."""
        self._close_files()
        fault_point("finish:closed")
        if self._overlay is not None:
            self._overlay.mark_soft(self.soft_boxes)
            self._overlay.changed = True
            self._overlay.write(self.partial("png"))
        self.finish_outputs(summary)
        self._finished = True

    def close(self) -> None:
        """Closes the files; after an error or interruption, writes the partial overlay as
        it stands (a preview of how far the run came)."""
        self._close_files()
        if self._overlay is not None and not self._finished:
            try:
                self._overlay.write(self.partial("png"))
            except OSError as exc:  # a full disk: the error that stopped the run is what counts
                log.debug("%s: not written (%s)", self.partial("png"), exc)

    def _close_files(self) -> None:
        files, self._files = self._files, {}
        for name, f in files.items():
            with writing(self.bin_path if name == "bin" else self.partial(name)):
                f.close()

    # -- repairing --

    def write_whole(self, fmt: str, path: Path) -> None:
        """Writes format ``fmt`` from the stored detections to ``path`` (a new file
        :func:`write_new` made), byte for byte as the run wrote it batch by batch (the
        records are in tile order)."""
        xy, scores, probs = self.stored()
        if fmt == "png":
            assert self.thumbnail is not None  # checked in __init__
            overlay = _Overlay(self.thumbnail, self.mpp_xy)
            overlay.draw(xy, *self._classes(probs))
            overlay.mark_soft(self.soft_boxes)
            overlay.save(path)
            return
        with open_output(path, "r+") as f:
            f.truncate(0)
            if fmt == "csv":
                start_csv(f, self.class_names)
                append_csv(f, xy, scores, self.mpp_xy, probs, self.class_names)
            else:
                append_geojson(f, start_geojson(f), xy, scores, probs, self.class_names)

    def records(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored detections ``(xy (N, 2), scores (N,))`` float32, in written order."""
        xy, scores, _ = self.stored()
        return xy, scores

    def stored(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The stored detections from one read of the record: ``xy (N, 2)``, ``scores
        (N,)`` and the ``(N, K)`` class probabilities (``None`` without a class head),
        float32, in written order."""
        records = read_records(self.bin_path, self.record_width)
        probs = records[:, 3:].copy() if self.class_names else None
        return records[:, :2].copy(), records[:, 2].copy(), probs

    def _classes(self, probabilities: np.ndarray | None) -> tuple[np.ndarray | None, tuple[str, ...]]:
        """The overlay's colouring: each detection's class index and the class names."""
        if probabilities is None or not self.class_names:
            return None, ()
        return np.argmax(probabilities, axis=1), self.class_names

