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
from ..tiling import keep_in_core, sort_peaks
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

__all__ = ["detect_slide", "run_slide", "progress_enabled"]

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 60.0  # without a progress bar, a log line this often


# --- detection --------------------------------------------------------------------------------


def detect_slide(detector: Any, path: str | PathLike[str], **options: Any) -> Detections:
    """Nucleus centres in a whole slide (or a region of it), in bounded memory.

    Called as ``detector.detect_slide(path, ...)``. Reads the slide tile by tile at the
    model's pixel size, skips glass, runs tiles in batches of ``detector.batch_size``
    while reader threads prefetch the next ones, keeps each tile's core peaks, and
    streams the detections to ``out_dir`` (see :mod:`micronet.runtime.runs.slide_outputs`
    for the files).

    Takes the arguments of :func:`run_slide` (the options are keyword-only there).

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
        out_dir: when given, ``<stem>.csv``, ``<stem>.geojson`` and
            ``<stem>.overlay.png`` (``formats`` chooses) are written there, under
            ``.partial`` names in its hidden ``.micronet/`` until the slide is
            finished, with the record ``.micronet/<stem>.progress.json``/``.bin``; the
            lock ``.micronet/<stem>.lock`` keeps a second run off them.
        formats: any of ``"csv"``, ``"geojson"``, ``"png"`` (a sequence, or one
            comma-separated string).
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
    if isinstance(queue_size, bool) or (queue_size is not None and (not isinstance(queue_size, numbers.Integral) or queue_size < 0)):
        raise InputError(f"queue_size: expected an integer >= 0 or None, got {queue_size!r}")
    queue_size = 2 * detector.batch_size if queue_size is None else int(queue_size)
    if isinstance(readers, bool) or (readers is not None and (not isinstance(readers, numbers.Integral) or readers < 1)):
        raise InputError(f"readers: expected an integer >= 1 or None, got {readers!r}")
    if readers is None:
        readers = 1 if detector.device == "cpu" else max(1, min(4, (os.cpu_count() or 2) - 1))
    formats = check_formats(formats)
    show = progress_enabled(progress)
    # The lock comes before anything else: a second run on this slide refuses at once.
    lock = OutputLock(Path(out_dir), output_stem(Path(path)), wait=wait) if out_dir is not None else nullcontext()
    with lock, open_slide(path, reader=reader) as slide:
        fault_point("locked")
        with scan_progress(slide, region, show, slide.path.name):
            plan = plan_slide(detector, slide, region=region, level=level, mpp=mpp, tissue_only=tissue_only)
        grid, tiles, mpp0 = plan.grid, plan.tiles, plan.mpp
        megapixels = plan.region[2] * plan.region[3] / 1e6
        log.info(
            "%s: level %d (%d×%d px at %.4g µm/px) as a %d×%d grid at the model's %.4g µm/px; %d of %d tiles %s",
            slide.path.name, plan.level.index, grid.width, grid.height, mpp0 * plan.level.downsample, grid.model_width,
            grid.model_height, detector.info.mpp, len(tiles), plan.tiles_planned,
            "on tissue" if tissue_only else "(tissue_only=False)",
        )  # fmt: skip
        # One set of colour statistics, from the slide's tissue, for every tile: tiles are
        # normalised alike and the slide is measured (and warned of) as a whole.
        colour = slide_colour_stats(slide, plan)
        distance = None if colour is None else colour_distance(colour, detector.colour_target)
        fault_point("planned")

        def result(xy: np.ndarray, scores: np.ndarray, outcome: str, rewritten: list[str] | None = None) -> InputRun:
            mpp_source = "mpp= / --mpp" if mpp is not None else slide.mpp_source
            seconds = time.perf_counter() - started
            return InputRun(Detections(xy, scores, slide.shape, mpp0, distance), outcome, rewritten or [], megapixels, seconds, mpp0, mpp_source)

        outputs = None
        outcome = "ran"
        done, prev_xy, prev_scores = 0, np.zeros((0, 2), np.float32), np.zeros((0,), np.float32)
        if out_dir is not None:
            thumbnail = plan.thumbnail
            if thumbnail is None and "png" in formats:
                thumbnail = slide.read_thumbnail(THUMBNAIL_SIZE, plan.region)
            settings = _settings(detector, slide, plan, tissue_only, formats)
            outputs = SlideOutputs(Path(out_dir), output_stem(slide.path), formats, plan.mpp_xy, thumbnail)
            verdict = outputs.check(settings, overwrite=not resume)
            if verdict.action == "finished":
                rewritten = outputs.repair(verdict.damaged, outputs.write_whole)
                xy, scores = outputs.records()
                log.info("%s: finished already%s; %d detections", slide.path.name, f" (rewrote {', '.join(rewritten)})" if rewritten else "", len(scores))
                return result(*sort_peaks(xy, scores), "finished already", rewritten)
            done, prev_xy, prev_scores = outputs.open(settings, len(tiles), resume=verdict.action == "resume")
            outcome = "resumed" if done else "ran"
        fault_point("started")

        found_xy, found_scores = [prev_xy], [prev_scores]
        count = len(prev_scores)
        todo = tiles[done:]
        read = partial(grid.read_tile, slide)
        prefetcher = _Prefetcher(read, todo, queue_size, int(readers)) if queue_size > 0 and todo else None
        reads = prefetcher if prefetcher is not None else ((tile, read(tile)) for tile in todo)
        bar = _progress_bar(len(tiles), done, count, slide.path.name, show)
        logged_at = time.monotonic()
        elapsed_before = float(outputs.state.get("seconds", 0.0)) if outputs is not None else 0.0
        try:
            for batch in _batches(reads, detector.batch_size):
                # Tiles are at the model's pixel size already (and each ≤ tile_size: one pass).
                results = detector.detect_batch([pixels for _, pixels in batch], mpp=detector.info.mpp, colour_stats=colour)
                kept = [keep_in_core(tile, d.xy, d.scores) for (tile, _), d in zip(batch, results)]
                xy = grid.to_level0(np.concatenate([k[0] for k in kept]))
                scores = np.concatenate([k[1] for k in kept]).astype(np.float32)
                found_xy.append(xy)
                found_scores.append(scores)
                done += len(batch)
                count += len(scores)
                if outputs is not None:
                    outputs.commit(xy, scores, done, elapsed_before + time.perf_counter() - started)
                # The count first, then the step: the bar's last drawing shows the final count.
                bar.set_postfix_str(f"nuclei={count}", refresh=False)
                bar.update(len(batch))
                if progress is None and not show and time.monotonic() - logged_at > LOG_INTERVAL_S:
                    log.info("%s: %d of %d tiles, %d nuclei so far", slide.path.name, done, len(tiles), count)
                    logged_at = time.monotonic()
                if on_batch is not None:
                    on_batch(done, len(tiles))
            xy, scores = sort_peaks(np.concatenate(found_xy), np.concatenate(found_scores))
            seconds = time.perf_counter() - started
            if outputs is not None:
                outputs.finish(
                    {
                        "tiles_planned": plan.tiles_planned,
                        "megapixels": megapixels,
                        "seconds": elapsed_before + seconds,
                        "detections": len(scores),
                    }
                )
        finally:
            bar.close()
            if prefetcher is not None:
                prefetcher.close()
            if outputs is not None:
                outputs.close()
        fault_point("finished")
        log.info("%s: %d nuclei in %.1f s (%.2f megapixels/s)", slide.path.name, len(scores), seconds, megapixels / max(seconds, 1e-9))
        return result(xy, scores, outcome)


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
