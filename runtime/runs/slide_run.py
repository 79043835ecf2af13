"""Tiled, streamed detection on a whole slide: :func:`detect_slide`.

It takes the lock on the slide's outputs (:class:`~micronet.runtime.runs.outputs.OutputLock`),
opens the slide (:mod:`~micronet.runtime.slide.reader`), plans the run
(:func:`~micronet.runtime.slide.plan.plan_slide`: level, model-pixel grid, tiles on
tissue), checks what an earlier run left (:meth:`SlideOutputs.check
<micronet.runtime.runs.outputs.InputOutputs.check>`: resume, verify, or refuse other
settings), runs the tiles in batches through the detector, keeps each tile's core
peaks, and hands each batch to the :class:`~micronet.runtime.runs.slide_outputs.SlideOutputs`
as it completes, with tqdm progress bars over the tissue scan and the tiles.

**Pipelining.** Reader threads read, decode and resample the next tiles while the
backend runs the current batch, at most ``queue_size`` tiles ahead (two batches by
default), so memory stays bounded; ``queue_size=0`` reads in the caller's thread
between batches instead, for comparison. On the CPU one reader suffices (reading a
1024² tile takes ~0.1 s, inference far longer, and the cores belong to inference); on
a GPU several readers keep it fed. File reads are serialised; JPEG decoding
(libjpeg-turbo), the resampling and ONNX Runtime release the GIL.
"""

from __future__ import annotations

import hashlib
import logging
import numbers
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import astuple
from functools import partial
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..detections import Detections
from ..errors import InputError
from ..slide.colour import slide_colour_stats
from ..slide.plan import SlidePlan, plan_slide
from ..slide.reader import THUMBNAIL_SIZE, Slide, open_slide
from ..slide.tissue import scan_progress
from ..stain import colour_distance
from ..tiling import core_mask, keep_in_core, sort_peaks
from .outputs import (
    FORMATS,
    InputRun,
    OutputLock,
    check_formats,
    detector_settings,
    fault_point,
    fingerprint,
)
from .slide_outputs import SlideOutputs, output_stem
from .slide_summary import SUMMARY_SUFFIX, slide_summary, write_slide_summary

__all__ = ["detect_slide", "run_slide", "progress_enabled"]

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 60.0  # without a progress bar, a log line this often


# --- detection --------------------------------------------------------------------------------


def detect_slide(detector: Any, path: str | PathLike[str], **options: Any) -> Detections:
    """Nucleus centres in a whole slide (or a region of it), in bounded memory.

    Called as ``detector.detect_slide(path, ...)``: reads the slide tile by tile at the
    model's pixel size, skips glass, runs tiles in batches while reader threads prefetch
    the next ones, keeps each tile's core peaks (and class probabilities), and streams
    the detections to ``out_dir``. Takes :func:`run_slide`'s (keyword-only) options.

    Args:
        detector: the :class:`~micronet.runtime.detector.Detector` to run.
        path: an Aperio ``.svs``, OME-TIFF or tiled pyramidal ``.tif``/``.tiff``.
        level: pyramid level to read; ``None`` (default) picks the coarsest level whose
            pixels are at least as fine as the model's (level 0 for usual slides).
            Pixels are resampled to the model's pixel size either way.
        region: ``(x, y, width, height)`` in level-0 pixels; default the whole slide.
        mpp: level-0 pixel size in µm/px; default the file's own (required when the
            file records none). Overrides the file's value when given.
        tissue_only: skip tiles whose core holds no tissue (see :func:`tissue_mask`).
        progress: show tqdm progress bars (tissue scan, tiles); ``None`` (default):
            when stderr is a terminal (or in a notebook), else a log line a minute.
        out_dir: when given, ``<stem>.csv``, ``<stem>.geojson``, ``<stem>.overlay.png``
            (``formats``: any of ``"csv"``, ``"geojson"``, ``"png"``) are written there
            as ``.partial`` files in its hidden ``.micronet/`` (with the record and the
            lock) until the slide is finished, then ``<stem>.summary.json``.
        resume: ``True``: continue an unfinished run with the same settings found in
            ``out_dir``, return a finished one's detections at once (rewriting any
            output that is missing or damaged), and refuse outputs made with other
            settings. ``False``: start over, replacing every output of this slide
            (``micronet detect --overwrite``).
        wait: when another run is writing this slide's outputs in ``out_dir``, wait
            for it instead of refusing.
        queue_size: tiles read ahead of the batch being run (bounds the memory they
            take); ``None``: two batches; ``0``: no reader threads, tiles are read
            between batches (to measure what prefetching gains).
        reader: ``"auto"``, ``"tifffile"`` or ``"openslide"``
            (:func:`~micronet.runtime.slide.reader.open_slide`).
        readers: threads reading and decoding tiles ahead; ``None``: one when the
            detector runs on the CPU (inference wants the cores), up to four when it
            runs on a GPU (then reading is the bottleneck).
        on_batch: called as ``on_batch(tiles_done, tiles_total)`` after each batch is
            written; an exception it raises stops the run, leaving partial files that
            a rerun resumes.

    Returns:
        :class:`Detections` with ``xy`` ``(N, 2)`` float32 ``(x, y)`` in level-0 pixels
        of the slide (also for a region), ``scores`` ``(N,)``, highest first,
        ``image_shape`` the level-0 ``(H, W)``, ``mpp`` the level-0 pixel size.

    Raises:
        FileNotFoundError: no such slide.
        ValueError: an unsupported, damaged or non-RGB file, a level that does not
            exist, a region outside the slide, no pixel size (pass ``mpp``), a bad
            option, outputs in ``out_dir`` made with other settings (``resume=True``),
            or another run writing them (``wait=False``).
        OSError: an output that cannot be written (full disk, read-only folder), as
            :class:`~micronet.runtime.runs.outputs.OutputWriteError` naming the file.
    """
    return run_slide(detector, path, **options).detections


def run_slide(
    detector: Any,
    path: str | PathLike[str],
    *,
    level: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    mpp: float | None = None,
    tissue_only: bool = True,
    progress: bool | None = None,
    out_dir: str | PathLike[str] | None = None,
    formats: Sequence[str] = FORMATS,
    resume: bool = True,
    wait: bool = False,
    queue_size: int | None = None,
    readers: int | None = None,
    reader: str = "auto",
    on_batch: Callable[[int, int], None] | None = None,
) -> InputRun:
    """:func:`detect_slide` (whose docstring describes every argument), returning what
    a batch records of the run: an :class:`~micronet.runtime.runs.outputs.InputRun` with the
    detections, whether the slide ran, resumed or was finished already, the outputs
    rewritten, its megapixels and seconds."""
    started = time.perf_counter()
    queue_size, readers = _pipeline_options(detector, queue_size, readers)
    formats = check_formats(formats)
    show = progress_enabled(progress)
    # The lock comes before anything else: a second run on this slide refuses at once.
    lock = OutputLock(Path(out_dir), output_stem(Path(path)), wait=wait) if out_dir is not None else nullcontext()
    with lock, open_slide(path, reader=reader) as slide:
        fault_point("locked")
        with scan_progress(slide, region, show, slide.path.name):
            plan = plan_slide(detector, slide, region=region, level=level, mpp=mpp, tissue_only=tissue_only)
        _log_plan(slide, plan, detector, tissue_only)
        run = _SlideRun(detector, slide, plan, started, "mpp= / --mpp" if mpp is not None else slide.mpp_source, tissue_only)
        fault_point("planned")
        if out_dir is not None:
            finished = run.open_outputs(Path(out_dir), formats, resume)
            if finished is not None:
                return finished
        fault_point("started")
        found = run.detect(queue_size, readers, show, progress is None and not show, on_batch)
        fault_point("finished")
        return found


def _pipeline_options(detector: Any, queue_size: Any, readers: Any) -> tuple[int, int]:
    """The read-ahead depth (two batches by default) and reader threads (one on the
    CPU, up to four beside a GPU), checked."""
    if isinstance(queue_size, bool) or (queue_size is not None and (not isinstance(queue_size, numbers.Integral) or queue_size < 0)):
        raise InputError(f"queue_size: expected an integer >= 0 or None, got {queue_size!r}")
    if isinstance(readers, bool) or (readers is not None and (not isinstance(readers, numbers.Integral) or readers < 1)):
        raise InputError(f"readers: expected an integer >= 1 or None, got {readers!r}")
    queue_size = 2 * detector.batch_size if queue_size is None else int(queue_size)
    if readers is None:
        readers = 1 if detector.device == "cpu" else max(1, min(4, (os.cpu_count() or 2) - 1))
    return queue_size, int(readers)


def _log_plan(slide: Slide, plan: SlidePlan, detector: Any, tissue_only: bool) -> None:
    grid = plan.grid
    log.info(
        "%s: level %d (%d×%d px at %.4g µm/px) as a %d×%d grid at the model's %.4g µm/px; %d of %d tiles %s",
        slide.path.name, plan.level.index, grid.width, grid.height, plan.mpp * plan.level.downsample, grid.model_width,
        grid.model_height, detector.info.mpp, len(plan.tiles), plan.tiles_planned,
        "on tissue" if tissue_only else "(tissue_only=False)",
    )  # fmt: skip


class _SlideRun:
    """One slide's run after planning: its outputs (when written), the detection loop,
    and what it returns. Class probabilities travel with the peaks when the model has a
    class head."""

    def __init__(self, detector: Any, slide: Slide, plan: SlidePlan, started: float, mpp_source: str, tissue_only: bool) -> None:
        self.detector, self.slide, self.plan, self.started = detector, slide, plan, started
        self.mpp_source, self.tissue_only = mpp_source, tissue_only
        self.names: tuple[str, ...] = tuple(getattr(detector, "class_names", ()) or ())
        # One set of colour statistics, from the slide's tissue, for every tile: tiles are
        # normalised alike and the slide is measured (and warned of) as a whole.
        self.colour = slide_colour_stats(slide, plan)
        self.distance = None if self.colour is None else colour_distance(self.colour, detector.colour_target)
        self.outputs: SlideOutputs | None = None
        self.out_dir: Path | None = None
        self.outcome, self.done = "ran", 0
        k = len(self.names)
        self.prev = (np.zeros((0, 2), np.float32), np.zeros((0,), np.float32), np.zeros((0, k), np.float32) if k else None)

    def result(self, xy: np.ndarray, scores: np.ndarray, probs: np.ndarray | None, outcome: str, rewritten: list[str] | None = None) -> InputRun:
        found = Detections(xy, scores, self.slide.shape, self.plan.mpp, self.distance, probs, self.names if probs is not None else ())
        summary = slide_summary(self.slide.path.name, found, self.plan, self.tissue_only)
        if self.out_dir is not None:
            write_slide_summary(self.out_dir / f"{output_stem(self.slide.path)}{SUMMARY_SUFFIX}", summary)
        megapixels = self.plan.region[2] * self.plan.region[3] / 1e6
        seconds = time.perf_counter() - self.started
        return InputRun(found, outcome, rewritten or [], megapixels, seconds, self.plan.mpp, self.mpp_source, summary)

    def open_outputs(self, out_dir: Path, formats: tuple[str, ...], resume: bool) -> InputRun | None:
        """Opens the slide's outputs; an :class:`InputRun` when they are finished already
        (damaged ones rewritten), else ``None`` (a new or resumed run follows)."""
        plan, slide = self.plan, self.slide
        thumbnail = plan.thumbnail
        if thumbnail is None and "png" in formats:
            thumbnail = slide.read_thumbnail(THUMBNAIL_SIZE, plan.region)
        settings = _settings(self.detector, slide, plan, self.tissue_only, formats)
        self.out_dir = out_dir
        self.outputs = outputs = SlideOutputs(out_dir, output_stem(slide.path), formats, plan.mpp_xy, thumbnail, self.names)
        verdict = outputs.check(settings, overwrite=not resume)
        if verdict.action == "finished":
            rewritten = outputs.repair(verdict.damaged, outputs.write_whole)
            xy, scores, probs = outputs.stored()
            log.info("%s: finished already%s; %d detections", slide.path.name, f" (rewrote {', '.join(rewritten)})" if rewritten else "", len(scores))
            return self.result(*_sorted(xy, scores, probs), "finished already", rewritten)
        self.done, xy, scores = outputs.open(settings, len(plan.tiles), resume=verdict.action == "resume")
        if self.names:  # a resumed run's probabilities, or none yet
            self.prev = (xy, scores, outputs.resumed_probabilities if self.done else np.zeros((0, len(self.names)), np.float32))
        else:
            self.prev = (xy, scores, None)
        self.outcome = "resumed" if self.done else "ran"
        return None

    def _found(self, batch: list[tuple[Any, np.ndarray]], results: list[Detections]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One batch's core peaks in level-0 pixels, their scores and class probabilities."""
        masks = [core_mask(tile, d.xy) for (tile, _), d in zip(batch, results)]
        kept = [keep_in_core(tile, d.xy, d.scores) for (tile, _), d in zip(batch, results)]
        xy = self.plan.grid.to_level0(np.concatenate([k[0] for k in kept]))
        scores = np.concatenate([k[1] for k in kept]).astype(np.float32)
        probs = None
        if self.names:
            probs = np.concatenate([d.class_probabilities[m] for d, m in zip(results, masks)]).astype(np.float32)
        return xy, scores, probs

    def detect(self, queue_size: int, readers: int, show: bool, log_progress: bool, on_batch: Callable[[int, int], None] | None) -> InputRun:
        """Runs the tiles not done yet in batches, committing each to the outputs."""
        plan, slide, outputs, detector = self.plan, self.slide, self.outputs, self.detector
        found = [self.prev]
        done, count = self.done, len(self.prev[1])
        todo = plan.tiles[done:]
        read = partial(plan.grid.read_tile, slide)
        prefetcher = _Prefetcher(read, todo, queue_size, readers) if queue_size > 0 and todo else None
        reads = prefetcher if prefetcher is not None else ((tile, read(tile)) for tile in todo)
        bar = _progress_bar(len(plan.tiles), done, count, slide.path.name, show)
        logged_at = time.monotonic()
        elapsed_before = float(outputs.state.get("seconds", 0.0)) if outputs is not None else 0.0
        try:
            for batch in _batches(reads, detector.batch_size):
                # Tiles are at the model's pixel size already (and each ≤ tile_size: one pass).
                results = detector.detect_batch([pixels for _, pixels in batch], mpp=detector.info.mpp, colour_stats=self.colour)
                xy, scores, probs = self._found(batch, results)
                found.append((xy, scores, probs))
                done += len(batch)
                count += len(scores)
                if outputs is not None:
                    outputs.commit(xy, scores, done, elapsed_before + time.perf_counter() - self.started, probs)
                # The count first, then the step: the bar's last drawing shows the final count.
                bar.set_postfix_str(f"nuclei={count}", refresh=False)
                bar.update(len(batch))
                if log_progress and time.monotonic() - logged_at > LOG_INTERVAL_S:
                    log.info("%s: %d of %d tiles, %d nuclei so far", slide.path.name, done, len(plan.tiles), count)
                    logged_at = time.monotonic()
                if on_batch is not None:
                    on_batch(done, len(plan.tiles))
            xy, scores, probs = _sorted(*_joined(found))
            seconds = time.perf_counter() - self.started
            if outputs is not None:
                megapixels = plan.region[2] * plan.region[3] / 1e6
                outputs.finish({"tiles_planned": plan.tiles_planned, "megapixels": megapixels, "seconds": elapsed_before + seconds, "detections": len(scores)})
        finally:
            bar.close()
            if prefetcher is not None:
                prefetcher.close()
            if outputs is not None:
                outputs.close()
        megapixels = plan.region[2] * plan.region[3] / 1e6
        log.info("%s: %d nuclei in %.1f s (%.2f megapixels/s)", slide.path.name, len(scores), seconds, megapixels / max(seconds, 1e-9))
        return self.result(xy, scores, probs, self.outcome)


def _joined(found: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    xy = np.concatenate([f[0] for f in found])
    scores = np.concatenate([f[1] for f in found])
    probs = None if found[0][2] is None else np.concatenate([f[2] for f in found])
    return xy, scores, probs


def _sorted(xy: np.ndarray, scores: np.ndarray, probs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Peaks in ``find_peaks`` order (highest score first), probabilities with them."""
    order = sort_peaks(xy, scores)
    return xy[order], scores[order], None if probs is None else probs[order]


def _settings(detector: Any, slide: Slide, plan: SlidePlan, tissue_only: bool, formats: tuple[str, ...]) -> dict[str, Any]:
    """The parameters that shape the result: what a rerun must share with the record to
    resume it or to take its outputs as its own."""
    tiles = np.array([astuple(t) for t in plan.tiles], np.int64)
    return {
        "input": fingerprint(slide.path),
        "reader": getattr(slide, "reader", type(slide).__name__),
        "level": plan.level.index,
        "region": list(plan.region),
        "mpp": list(plan.mpp_xy),
        **detector_settings(detector),
        "tile_plan": f"{len(tiles)} tiles, sha256 {hashlib.sha256(tiles.tobytes()).hexdigest()[:16]}",
        "tissue_only": bool(tissue_only),
        "formats": list(formats),
    }


def progress_enabled(progress: bool | None) -> bool:
    """Whether to draw progress bars: as asked, or (``None``) when stderr is a terminal
    or a notebook shows them; a redirected log would fill with carriage returns."""
    if progress is not None:
        return bool(progress)
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)()) or "ipykernel" in sys.modules


# --- prefetching and batching -------------------------------------------------------------------


class _Prefetcher:
    """Reads items ahead in ``readers`` threads, at most ``depth`` items ahead (ready or
    being read), and yields ``(item, read(item))`` in the items' order.

    The bound on look-ahead is what keeps memory independent of the slide: at most
    ``depth`` decoded tiles exist besides the batch being run.
    """

    def __init__(self, read: Callable[[Any], Any], items: Iterable[Any], depth: int, readers: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._read = read
        self._items = iter(items)
        self._pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="micronet-slide-reader")
        self._pending: deque[tuple[Any, Any]] = deque()
        for _ in range(depth):
            if not self._submit():
                break

    def _submit(self) -> bool:
        for item in self._items:
            self._pending.append((item, self._pool.submit(self._read, item)))
            return True
        return False

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        while self._pending:
            item, future = self._pending.popleft()
            result = future.result()  # re-raises a reader's exception here
            self._submit()
            yield item, result

    def close(self) -> None:
        for _, future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _progress_bar(total: int, initial: int, count: int, name: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    # The count as a plain integer: tqdm's own number format shows 200000 as "2e+5".
    return tqdm(total=total, initial=initial, unit="tile", desc=name, disable=not enabled, dynamic_ncols=True, postfix=f"nuclei={count}")
