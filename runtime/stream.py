"""Detection while a slide is being scanned: :class:`StreamSession` (``Detector.stream``).

A scanner captures fields of view one after another, with some overlap, at known stage
positions. A session takes each field as it arrives (``add(rgb, x, y)``, slide pixels
of its top-left corner, in any order) and hands out detections as soon as they are
final, in slide coordinates, without ever holding the slide.

**Blocks.** The slide at the model's pixel size is cut by the detector's own tile plan
(``Detector.plan_tiles``): cores that partition it, each grown by the margin that makes
tiles equal a whole-image pass (receptive radius + ``min_distance``,
:mod:`micronet.runtime.tiling`). A block's *window* is the rectangle of slide pixels its
tile reads (through resampling, :class:`~micronet.runtime.resample.BilinearAxis`'s input
range). Once every pixel of it has arrived or is known to be background, the block is
stitched, resampled and run, its core's peaks are final, and every field no pending block
reads is freed. Results equal ``detector.detect(stitched, mpp=mpp)`` bit for bit: the
same tiles of the same pixels. Each block is measured for focus before the network, and
one out of focus is deconvolved (``deblur="auto"``) as a slide's tile is; the block's
:class:`FinalRegion` carries its edge blur, so a scanner can refocus and rescan it while
the slide is still in it (out of focus, the results are ``detect``'s on the stitched image
only with ``deblur=None``).

**The stitched image.** Where fields overlap, the pixel that arrived first is kept (a
scanner's overlapping fields show the same tissue; in any order, such fields stitch to
one image). Pixels no field covers are :data:`BACKGROUND`, white like glass: those
declared with ``skip(x, y, width, height)``, and at ``finish()`` every pixel still
missing. Pixels outside the slide are no pixels at all: tiles stop at its edge, as
``detect`` stops at the image's.

**Memory.** Only fields a pending block still reads are kept, plus at most ``backlog``
blocks waiting for the network: for a row-by-row or serpentine scan about a tile's
height of fields and the row being scanned, two strips, not the slide.

**Threads.** ``add`` prepares blocks in the caller's thread; one worker thread per session
runs the network. Another thread may read results meanwhile (``ready(wait=True)``), and
``cancel`` may come from any thread.
"""

from __future__ import annotations

import itertools
import logging
import numbers
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np

from . import focus
from .detections import Detections
from .errors import InputError, InputTypeError
from .images import as_rgb_image, check_mpp
from .resample import (
    MPP_TOLERANCE,
    BilinearAxis,
    check_ratio,
    from_resampled,
    needs_resampling,
    resampled_size,
)
from .stain import METHODS, StainStats, colour_distance
from .stream_blocks import BACKGROUND, Block, Piece, covered, model_pixels
from .tiling import keep_in_core, sort_scored

__all__ = ["BACKGROUND", "FinalRegion", "StreamCounts", "StreamSession"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class FinalRegion:
    """Detections that became final together, those of one block's core.

    Attributes:
        detections: ``(x, y)`` in slide pixels (``image_shape`` the slide's), highest
            score first; possibly none.
        box: ``(x0, y0, x1, y1)`` slide pixels, ends exclusive, whose detections are now
            all final (a block's core: the boxes partition the slide).
        latency_s: seconds from the arrival that completed the block's context (or from
            ``finish()``) to its detections being final.
        edge_blur_um: the block's edge blur in µm (:mod:`micronet.runtime.focus`; also its
            ``detections.edge_blur_um``), ``None`` where too few edges to tell.
        soft_cells: for a block judged cell by cell (over half a megapixel, with
            ``deblur="auto"``), its soft cells in its core: ``(x0, y0, x1, y1, blur_um)``
            in slide pixels, soft fields its median blur does not show (deconvolved).
    """

    detections: Detections
    box: tuple[float, float, float, float]
    latency_s: float
    edge_blur_um: float | None = None
    soft_cells: tuple[tuple[float, float, float, float, float], ...] = ()


@dataclass(frozen=True)
class StreamCounts:
    """Running totals (:meth:`StreamSession.counts`): ``nuclei`` final so far, of
    those per most probable class name when the model classifies (``classes``, else
    empty), blocks final of all, fields of view added."""

    nuclei: int
    classes: dict[str, int]
    blocks_final: int
    blocks_total: int
    fields: int


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _scored(d: Detections) -> np.ndarray:
    """``(N,)`` scores, or with a class head ``(N, 1 + K)``: the score, then the class probabilities."""
    return d.scores if d.class_probabilities is None else np.concatenate([d.scores[:, None], d.class_probabilities], axis=1)


class StreamSession:
    """Detections of a slide while its fields of view arrive (``Detector.stream``); the
    module docstring says how they equal ``detect`` on the stitched slide.

    >>> with detector.stream(46000, 32914, mpp=0.499) as session:   # doctest: +SKIP
    ...     for rgb, x, y in scanner:                               # (H, W, 3) uint8 fields
    ...         session.add(rgb, x, y)
    ...         for found in session.ready():                       # FinalRegion
    ...             overlay.mark(found.box, found.detections.xy)
    ...     rest = session.finish()                                 # Detections

    Args:
        detector: the :class:`~micronet.runtime.detector.Detector` to run.
        width, height: the slide's (scan area's) size in its own pixels.
        mpp: its pixel size in µm/px, resampled to the model's as ``detect`` does when
            they differ by more than 1 %; ``None``: the model's own.
        colour_stats: statistics to normalise by (``stain.measure`` on a representative
            field), required with white/reinhard/macenko (a stream never sees the whole image);
            results then equal ``detect(..., colour_stats=...)``. ``"auto"`` without: none.
        backlog: blocks waiting for the network at most; ``add`` waits while more are
            queued, which bounds memory. Default: twice the batch size.

    Raises:
        ValueError: a bad size, pixel size or backlog; white/reinhard/macenko without ``colour_stats``.
        TypeError: ``colour_stats`` that is not ``StainStats``.
    """

    def __init__(self, detector: Any, width: int, height: int, *, mpp: float | None = None,
                 colour_stats: StainStats | None = None, backlog: int | None = None) -> None:  # fmt: skip
        self._detector = detector
        self.width, self.height = _check_int(width, "width", 1), _check_int(height, "height", 1)
        self.mpp = check_mpp(mpp)
        model_mpp = detector.info.mpp
        ratio = 1.0 if self.mpp is None else check_ratio(self.mpp / model_mpp, self.mpp, model_mpp, "mpp")
        mh, mw = resampled_size(self.height, self.width, ratio) if needs_resampling(ratio) else (self.height, self.width)
        self._scale = (mw / self.width, mh / self.height) if (mh, mw) != (self.height, self.width) else None
        self._backlog_limit = 2 * detector.batch_size if backlog is None else _check_int(backlog, "backlog", 1)
        self._tile_stats, self._distance = self._colour(colour_stats)
        self._names: tuple[str, ...] = tuple(detector.class_names)
        self._blocks, self._row_windows, self._col_windows = self._plan(mh, mw)
        self._cond = threading.Condition()  # guards everything below and the blocks' state
        self._state = "open"  # open → finishing → finished; or cancelled, or failed
        self._error: BaseException | None = None
        self._backlog: deque[tuple[Block, np.ndarray, float]] = deque()  # (block, tile pixels, since)
        self._done: deque[FinalRegion] = deque()
        self._worker: threading.Thread | None = None
        self._seq, self._busy, self._preparing = itertools.count(), False, 0  # preparing: taken, stitched outside the lock
        self._nuclei, self._classes, self._final, self._fields = 0, Counter(dict.fromkeys(self._names, 0)), 0, 0
        self.held_bytes = self.peak_held_bytes = 0  # pixels held: fields kept and blocks queued
        if self.mpp is None:
            log.warning("stream: no mpp given; the slide is taken to be at the model's %g µm/px", model_mpp)

    def _colour(self, given: Any) -> tuple[StainStats, float | None]:
        """The statistics each block is run with, and the distance results carry."""
        if given is not None and not isinstance(given, StainStats):
            raise InputTypeError(f"colour_stats: expected StainStats (stain.measure) or None, got {type(given).__name__}")
        if given is None and self._detector.normalize in METHODS:  # every image normalised: needs statistics
            raise InputError(f"normalize={self._detector.normalize!r}: a stream never sees the whole slide to measure its "
                             "colours; pass colour_stats= (stain.measure on a representative field)")  # fmt: skip
        if given is None:  # no distance ("auto" cannot tell, so does not normalise): the target's own
            return self._detector.colour_target, None
        return given, colour_distance(given, self._detector.colour_target)

    def _plan(self, mh: int, mw: int) -> tuple[list[Block], list[tuple[int, int]], list[tuple[int, int]]]:
        """The blocks (the detector's tiles of the model-pixel slide, row-major) and the
        slide-pixel window of each row and column of them."""
        tiles = self._detector.plan_tiles(mh, mw)
        rows = list(dict.fromkeys((t.y0, t.y1, t.core_y0, t.core_y1) for t in tiles))  # in plan order
        cols = list(dict.fromkeys((t.x0, t.x1, t.core_x0, t.core_x1) for t in tiles))
        sx, sy = self._scale or (1.0, 1.0)
        row_axes = [BilinearAxis(self.height, mh, a, b) if mh != self.height else None for a, b, _, _ in rows]
        col_axes = [BilinearAxis(self.width, mw, a, b) if mw != self.width else None for a, b, _, _ in cols]
        row_windows = [(ax.start, ax.stop) if ax else (a, b) for ax, (a, b, _, _) in zip(row_axes, rows)]
        col_windows = [(ax.start, ax.stop) if ax else (a, b) for ax, (a, b, _, _) in zip(col_axes, cols)]
        blocks = []
        for (_, _, cy0, cy1), rax, (wy0, wy1) in zip(rows, row_axes, row_windows):
            for (_, _, cx0, cx1), cax, (wx0, wx1) in zip(cols, col_axes, col_windows):
                tile = tiles[len(blocks)]
                assert (tile.core_y0, tile.core_x0) == (cy0, cx0), "plan_tiles is row-major"
                box = (cx0 / sx, cy0 / sy, cx1 / sx, cy1 / sy)  # pixel edges scale by the ratio
                blocks.append(Block(tile, (wx0, wy0, wx1, wy1), cax, rax, box))
        return blocks, row_windows, col_windows

    # --- arrivals ---------------------------------------------------------------------

    def add(self, rgb: np.ndarray, x: int, y: int, *, mpp: float | None = None) -> None:
        """A field of view: ``rgb`` ``(h, w, 3)`` uint8, its top-left corner at slide
        pixels ``(x, y)`` (column, row; integers >= 0), inside the slide. Copied, so a
        scanner may reuse its buffer; ``mpp``, when given, is checked against the
        session's (within 1 %). Blocks whose context this completes are prepared here and
        queued for the network; ``add`` waits while ``backlog`` blocks are queued.

        Raises:
            ValueError: not ``(h, w, 3)`` uint8, a field reaching outside the slide, another
                pixel size, or a session finished or cancelled.
            TypeError: not an array.
        """
        if isinstance(rgb, (str, PathLike)):
            raise InputTypeError(f"rgb: expected an (H, W, 3) uint8 RGB array of the field, got a path {str(rgb)!r}")
        pixels = as_rgb_image(rgb, "rgb")
        given = check_mpp(mpp)
        if given is not None and abs(given / (ours := self.mpp or self._detector.info.mpp) - 1) > MPP_TOLERANCE:
            raise InputError(f"mpp: this field is at {given:g} µm/px, the stream at {ours:g} µm/px; one stream per pixel size")
        h, w = pixels.shape[:2]
        x0, y0 = self._check_box(x, y, w, h, "field")
        self._arrive(x0, y0, x0 + w, y0 + h, pixels.copy())

    def skip(self, x: int, y: int, width: int, height: int) -> None:
        """Declares ``width × height`` slide pixels at ``(x, y)`` a gap no field will
        fill: :data:`BACKGROUND`, so blocks next to it need not wait for ``finish``; pixels
        that arrived before keep their values (the first arrival wins). ``ValueError``
        for a rectangle outside the slide or a session finished or cancelled."""
        x0, y0 = self._check_box(x, y, _check_int(width, "width", 1), _check_int(height, "height", 1), "gap")
        self._arrive(x0, y0, x0 + int(width), y0 + int(height), None)

    def _check_box(self, x: Any, y: Any, w: int, h: int, what: str) -> tuple[int, int]:
        x0, y0 = _check_int(x, "x", 0), _check_int(y, "y", 0)
        if x0 + w > self.width or y0 + h > self.height:
            slide = f"{self.width}×{self.height}"
            raise InputError(f"{what} at (x, y) = ({x0}, {y0}) of W×H {w}×{h} reaches past the slide's W×H {slide}; crop it")
        return x0, y0

    def _arrive(self, x0: int, y0: int, x1: int, y1: int, pixels: np.ndarray | None) -> None:
        now = time.monotonic()
        with self._cond:
            self._raise_unless_open()
            piece = Piece(x0, y0, x1, y1, pixels, next(self._seq))
            self._fields += pixels is not None
            ready = []
            for block in self._blocks_reading(piece):
                block.pieces.append(piece)
                piece.refs += 1
                if covered(block.window, block.pieces):
                    ready.append(block)
            self._hold(piece.nbytes if piece.refs else 0)  # a field no pending block reads is dropped now
            jobs = [self._take(block) for block in ready]
            self._preparing += len(jobs)
        self._prepare(jobs, now)

    def _blocks_reading(self, piece: Piece) -> list[Block]:
        """The pending blocks whose windows intersect ``piece``."""
        rows = [r for r, (a, b) in enumerate(self._row_windows) if a < piece.y1 and b > piece.y0]
        cols = [c for c, (a, b) in enumerate(self._col_windows) if a < piece.x1 and b > piece.x0]
        blocks = (self._blocks[r * len(self._col_windows) + c] for r in rows for c in cols)
        return [b for b in blocks if not b.taken]

    def _hold(self, nbytes: int) -> None:
        self.held_bytes += nbytes
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)  # bytes, not RSS: fields and queued blocks

    def _take(self, block: Block) -> tuple[Block, list[Piece]]:
        """Marks a block as no longer pending and releases the fields only it still read
        (the caller holds the lock); returns it with the pieces to stitch it from."""
        block.taken = True
        pieces, block.pieces = block.pieces, []
        for p in pieces:
            p.refs -= 1
            if p.refs == 0:
                self._hold(-p.nbytes)
        return block, pieces

    def _prepare(self, jobs: list[Any], since: float) -> None:
        """Stitches and resamples each ``(block, pieces)`` job outside the lock, then
        queues it for the worker, waiting while the backlog is full."""
        left = len(jobs)
        try:
            for k in range(len(jobs)):
                (block, pieces), jobs[k] = jobs[k], None  # the fields go as soon as stitched
                pixels = model_pixels(block, pieces)
                del pieces
                with self._cond:
                    left, self._preparing = left - 1, self._preparing - 1
                    while len(self._backlog) >= self._backlog_limit and self._state in ("open", "finishing"):
                        self._cond.wait()
                    self._raise_unless_open(finishing=True)
                    self._backlog.append((block, pixels, since))
                    self._hold(pixels.nbytes)
                    if self._worker is None:
                        self._worker = threading.Thread(target=self._work, name="micronet-stream", daemon=True)
                        self._worker.start()
                    self._cond.notify_all()
        except BaseException as exc:  # finish() must not wait for the jobs left
            with self._cond:
                self._preparing -= left
                if self._error is None and self._state in ("open", "finishing"):
                    self._error, self._state = exc, "failed"  # a block is lost: no whole answer any more
                self._cond.notify_all()
            raise

    # --- the network ------------------------------------------------------------------

    def _work(self) -> None:
        """The worker thread: runs queued blocks in batches until finished or cancelled."""
        while True:
            with self._cond:
                while not self._backlog and self._state in ("open", "finishing"):
                    self._cond.wait()
                if not self._backlog or self._state not in ("open", "finishing"):
                    return
                batch = [self._backlog.popleft() for _ in range(min(self._detector.batch_size, len(self._backlog)))]
                self._busy = True
                self._cond.notify_all()  # room in the backlog
            try:
                found = self._run(batch)
            except BaseException as exc:  # handed to the caller's next call
                with self._cond:
                    self._error, self._state, self._busy = exc, "failed", False
                    self._cond.notify_all()
                return
            with self._cond:
                self._busy = False
                for (_, pixels, _), region in zip(batch, found):
                    self._hold(-pixels.nbytes)
                    if self._state in ("open", "finishing"):  # dropped once cancelled
                        self._done.append(region)
                        self._final, self._nuclei = self._final + 1, self._nuclei + len(region.detections)
                        self._classes.update(region.detections.class_counts())
                self._cond.notify_all()

    def _run(self, batch: list[tuple[Block, np.ndarray, float]]) -> list[FinalRegion]:
        """One backend call: the tiles at the model's pixel size (so ``detect_batch``
        neither resamples nor tiles them again; each measured, and deconvolved when out of
        focus, first), each tile's core peaks to slide pixels."""
        det = self._detector
        sharp = [focus.sharpened_cells(pixels, det.info.mpp, getattr(det, "deblur", None)) for _, pixels, _ in batch]
        found = det.detect_batch([pixels for pixels, _, _ in sharp], mpp=det.info.mpp, colour_stats=self._tile_stats)
        regions = []
        sx, sy = self._scale or (1.0, 1.0)
        for (block, _, since), d, (_, blur, cells) in zip(batch, found, sharp):
            xy, values = keep_in_core(block.tile, d.xy, _scored(d))  # (N, 2) in the model-pixel slide
            if self._scale is not None:
                xy = from_resampled(xy, *self._scale).astype(np.float32)  # back to the slide's pixels
            soft = tuple((x0 / sx, y0 / sy, x1 / sx, y1 / sy, b) for x0, y0, x1, y1, b in focus.cells_in_core(block.tile, cells))  # edges scale by the ratio
            regions.append(FinalRegion(self._result(xy, values, blur), block.box, time.monotonic() - since, blur, soft))
        return regions

    def _result(self, xy: np.ndarray, values: np.ndarray, blur: float | None = None) -> Detections:
        """Detections in slide pixels, highest score first, from ``(N, 2)`` positions and
        ``(N,)`` scores, or ``(N, 1 + K)`` scores and class probabilities."""
        xy, scores, probs = sort_scored(xy, values)
        return Detections(xy, scores, (self.height, self.width), self.mpp, self._distance, probs, self._names, blur)

    # --- results ----------------------------------------------------------------------

    def ready(self, wait: bool = False) -> Iterator[FinalRegion]:
        """The regions (:class:`FinalRegion`) final since the last call, each handed out
        once, here or by :meth:`finish`. ``wait=False``: what is final now; ``True``: wait
        for more until the session is finished or cancelled (a reader thread's loop).
        Raises what the worker raised running the network, if it failed."""
        while True:
            with self._cond:
                while wait and not self._done and self._state in ("open", "finishing") and self._error is None:
                    self._cond.wait()
                if self._error is not None:
                    raise self._error
                if not self._done:
                    return
                region = self._done.popleft()
            yield region

    def counts(self) -> StreamCounts:
        """Running totals: nuclei final so far (per class when the model classifies),
        blocks final of all, fields added."""
        with self._cond:
            return StreamCounts(self._nuclei, dict(self._classes), self._final, len(self._blocks), self._fields)

    def finish(self) -> Detections:
        """Ends the scan: every pixel not received is :data:`BACKGROUND`. Runs the blocks
        still pending and returns the detections :meth:`ready` has not handed out (all,
        when it was never called), in slide pixels, highest score first. ``ValueError``
        when finished or cancelled already; what the worker raised, if it failed."""
        now = time.monotonic()
        with self._cond:
            self._raise_unless_open()
            self._state = "finishing"
            jobs = [self._take(b) for b in self._blocks if not b.taken]
            self._preparing += len(jobs)
        self._prepare(jobs, now)
        with self._cond:
            while (self._backlog or self._busy or self._preparing) and self._state == "finishing":
                self._cond.wait()
            self._raise_unless_open(finishing=True)
            self._state = "finished"
            self._cond.notify_all()
            rest, self._done = list(self._done), deque()
        return self._merge([r.detections for r in rest])

    def _merge(self, parts: list[Detections]) -> Detections:
        xy = np.concatenate([np.zeros((0, 2), np.float32)] + [d.xy for d in parts])
        empty = np.zeros((0, 1 + len(self._names)) if self._names else (0,), np.float32)
        return self._result(xy, np.concatenate([empty] + [_scored(d) for d in parts]))

    def cancel(self) -> None:
        """Stops the session from any thread: queued blocks and held fields are dropped,
        the worker stops after the batch it is running, ``ready(wait=True)`` returns, and
        later ``add`` / ``skip`` / ``finish`` raise. Nothing happens once finished."""
        with self._cond:
            if self._state in ("finished", "cancelled", "failed"):
                return
            self._state = "cancelled"
            for block in self._blocks:
                if not block.taken:
                    self._take(block)
            for _, pixels, _ in self._backlog:
                self._hold(-pixels.nbytes)
            self._backlog.clear()
            self._cond.notify_all()

    def _raise_unless_open(self, finishing: bool = False) -> None:
        """Raises the worker's error, or says the session is closed (``finishing``: also
        accept the state in which ``finish`` queues the last blocks)."""
        if self._error is not None:
            raise self._error
        if self._state != "open" and not (finishing and self._state == "finishing"):
            raise InputError(f"this stream is {self._state}; start another with Detector.stream")

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()  # a session left without finish() (an error, a break) stops its worker

    def __repr__(self) -> str:
        c = self.counts()
        return f"StreamSession({self.width}×{self.height}, mpp={self.mpp}, {self._state}, {c.blocks_final}/{c.blocks_total})"
