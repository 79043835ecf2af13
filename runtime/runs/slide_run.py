"""Tiled, streamed detection on a whole slide: :func:`detect_slide`, which is
:func:`~micronet.runtime.runs.run_input.run_input` over a :class:`SlideSource`.

The steps every input takes (the lock, what an earlier run left, complete-or-absent
outputs) are :func:`~micronet.runtime.runs.run_input.run_input`'s; the slide's own are
here: it opens the slide (:mod:`~micronet.runtime.slide.reader`) once the lock is held,
resolves its pixel size once (:func:`~micronet.runtime.slide.plan.slide_pixel_size`),
plans the run (:func:`~micronet.runtime.slide.plan.plan_slide`: level, model-pixel grid,
tiles on tissue), runs the tiles in batches through the detector, keeps each tile's core
peaks, and hands each batch to the :class:`~micronet.runtime.runs.slide_outputs.SlideOutputs`
as it completes (a rerun resumes after the last batch recorded), with tqdm progress bars
over the tissue scan and the tiles.

**Pipelining.** Reader threads read, decode and resample the next tiles while the
backend runs the current batch, at most ``queue_size`` tiles ahead (two batches by
default), so memory stays bounded; ``queue_size=0`` reads in the caller's thread
between batches instead, for comparison. On the CPU one reader suffices (reading a
1024² tile takes ~0.1 s, inference far longer, and the cores belong to inference); on
a GPU several readers keep it fed. File reads are serialised; JPEG decoding
(libjpeg-turbo), the resampling and ONNX Runtime release the GIL.

**Focus, tile by tile.** A slide's focus varies across it (a fold, a bubble, a region the
scanner's focus map missed), so the reader also measures each tile's edge blur
(:func:`micronet.runtime.focus.sharpened`: 0.6–8 % of the network's time on the CPU,
the most for ``fast-cpu``'s large tiles on a VNNI CPU, ``benchmarks/results/focus_cost.md``) and, with
``deblur="auto"``, deconvolves a tile beyond the threshold before the network, as an image
on its own would be (a tile of more than half a megapixel cell by cell,
:func:`~micronet.runtime.focus.deblur_cells`, so a soft field within it is deconvolved
and its sharp fields are not). A tile's margin (at least the network's receptive radius)
is wider than the deconvolution kernel's radius (≤ 28 px), so a core is deconvolved as it
would be in the whole region at that tile's blur. The values are recorded with each batch (a
resumed run keeps them), and the summary lists the tiles out of focus
(:func:`~micronet.runtime.runs.slide_summary.focus_summary`).
"""

from __future__ import annotations

import hashlib
import logging
import numbers
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import astuple
from functools import partial
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .. import focus
from ..detections import Detections
from ..errors import InputError, InputTypeError
from ..slide.colour import slide_measures
from ..slide.plan import SlidePlan, plan_slide, slide_pixel_size
from ..slide.reader import THUMBNAIL_SIZE, SlideBase, open_slide
from ..slide.tissue import scan_progress
from ..stain import colour_distance
from ..tiling import core_mask, keep_in_core, sort_peaks
from .outputs import FORMATS, InputOutputs, InputRun, detector_settings, fingerprint
from .run_input import InputSource, RunSettings, run_input
from .slide_outputs import SlideOutputs, output_stem
from .slide_summary import SUMMARY_SUFFIX, cells_in_core, focus_summary, recorded_blur, recorded_cells, slide_summary, soft_boxes, write_slide_summary

__all__ = ["detect_slide", "run_slide", "SlideSource", "progress_enabled"]

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
    rewritten, its megapixels and seconds. :func:`run_input` over a :class:`SlideSource`."""
    source = SlideSource(path, level=level, region=region, tissue_only=tissue_only, queue_size=queue_size, readers=readers, on_batch=on_batch)
    settings = RunSettings(formats=formats, mpp=mpp, overwrite=not resume, wait=wait, progress=progress, reader=reader)
    return run_input(detector, source, out_dir, settings)


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


def _log_plan(slide: SlideBase, plan: SlidePlan, detector: Any, tissue_only: bool) -> None:
    grid = plan.grid
    log.info(
        "%s: level %d (%d×%d px at %.4g µm/px) as a %d×%d grid at the model's %.4g µm/px; %d of %d tiles %s",
        slide.path.name, plan.level.index, grid.width, grid.height, plan.mpp * plan.level.downsample, grid.model_width,
        grid.model_height, detector.info.mpp, len(plan.tiles), plan.tiles_planned,
        "on tissue" if tissue_only else "(tissue_only=False)",
    )  # fmt: skip


class SlideSource(InputSource):
    """A whole slide for :func:`run_input`: opened once the lock is held, planned (level,
    model-pixel grid, tiles on tissue), and run tile batch by tile batch into its
    :class:`SlideOutputs`, which a rerun resumes. Class probabilities travel with the
    peaks when the model has a class head.

    Args:
        path: the slide file.
        level, region, tissue_only, queue_size, readers, on_batch: as for
            :func:`detect_slide`.

    Attributes:
        slide: the open slide, once :meth:`open` ran.
        slide_plan: its :class:`SlidePlan` (with the resolved ``pixel_size``), once
            :meth:`plan` ran.
    """

    def __init__(
        self, path: str | PathLike[str], *, level: int | None = None, region: tuple[int, int, int, int] | None = None,
        tissue_only: bool = True, queue_size: int | None = None, readers: int | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        if not isinstance(path, (str, PathLike)):
            raise InputTypeError(f"path: expected a slide file path, got {type(path).__name__}")
        self.path, self.stem = Path(path), output_stem(Path(path))
        self.level, self.region, self.tissue_only = level, region, tissue_only
        self.queue_size, self.readers, self.on_batch = queue_size, readers, on_batch
        self.slide: SlideBase | None = None
        self.slide_plan: SlidePlan | None = None
        self.outcome, self.done = "ran", 0
        self.tile_blur: list[float | None] = []  # each tile's edge blur (µm), in plan order
        self.tile_cells: list[list[list[float]]] = []  # each tile's soft cells in its core: level-0 box, blur (µm)
        self.deblur: str | None = None

    def prepare(self, detector: Any, settings: RunSettings) -> None:
        self.queue_size, self.readers = _pipeline_options(detector, self.queue_size, self.readers)
        self.show = progress_enabled(settings.progress)
        self.log_progress = settings.progress is None and not self.show
        self.mpp = settings.mpp
        self.deblur = getattr(detector, "deblur", None)
        self.names: tuple[str, ...] = tuple(getattr(detector, "class_names", ()) or ())
        k = len(self.names)
        self.prev = (np.zeros((0, 2), np.float32), np.zeros((0,), np.float32), np.zeros((0, k), np.float32) if k else None)

    def open(self, settings: RunSettings) -> None:
        self.slide = open_slide(self.path, reader=settings.reader)

    def plan(self, detector: Any) -> None:
        slide = self.slide
        pixel_size = slide_pixel_size(slide, self.mpp)  # resolved once, here; the plan carries it
        with scan_progress(slide, self.region, self.show, slide.path.name):
            self.slide_plan = plan = plan_slide(detector, slide, region=self.region, level=self.level, mpp=pixel_size, tissue_only=self.tissue_only)
        _log_plan(slide, plan, detector, self.tissue_only)
        # One set of colour statistics, from the slide's tissue, for every tile: tiles are
        # normalised alike and the slide is measured (and warned of) as a whole; its focus
        # from the same windows of tissue.
        self.colour, self.blur = slide_measures(slide, plan, detector.info.mpp)
        self.distance = None if self.colour is None else colour_distance(self.colour, detector.colour_target)
        say_focus = getattr(detector, "_say_focus", None)
        if say_focus is not None:
            say_focus(self.blur, "slide")

    def record(self, detector: Any, formats: tuple[str, ...]) -> dict[str, Any]:
        plan, slide = self.slide_plan, self.slide
        tiles = np.array([astuple(t) for t in plan.tiles], np.int64)
        return {
            "input": fingerprint(slide.path),
            "reader": getattr(slide, "reader", type(slide).__name__),
            "level": plan.level.index,
            "region": list(plan.region),
            "mpp": list(plan.mpp_xy),
            **detector_settings(detector),
            "tile_plan": f"{len(tiles)} tiles, sha256 {hashlib.sha256(tiles.tobytes()).hexdigest()[:16]}",
            "tissue_only": bool(self.tissue_only),
            "formats": list(formats),
        }

    def outputs(self, out_dir: Path, formats: tuple[str, ...]) -> InputOutputs:
        plan = self.slide_plan
        thumbnail = plan.thumbnail
        if thumbnail is None and "png" in formats:
            thumbnail = self.slide.read_thumbnail(THUMBNAIL_SIZE, plan.region)
        return SlideOutputs(out_dir, self.stem, formats, plan.mpp_xy, thumbnail, self.names)

    def result(self, xy: np.ndarray, scores: np.ndarray, probs: np.ndarray | None, outcome: str, out_dir: Path | None, rewritten: list[str] | None = None) -> InputRun:
        plan = self.slide_plan
        found = Detections(xy, scores, self.slide.shape, plan.mpp, self.distance, probs, self.names if probs is not None else (), self.blur)
        summary = slide_summary(self.slide.path.name, found, plan, self.tissue_only)
        summary["focus"] = focus_summary(plan, self.tile_blur, self.deblur, self.tile_cells)
        if out_dir is not None:
            write_slide_summary(out_dir / f"{self.stem}{SUMMARY_SUFFIX}", summary)
        seconds = time.perf_counter() - self.started
        return InputRun(found, outcome, rewritten or [], self._megapixels(), seconds, plan.mpp, plan.pixel_size.source, summary)

    def _megapixels(self) -> float:
        region = self.slide_plan.region
        return region[2] * region[3] / 1e6

    def finished(self, outputs: InputOutputs, damaged: dict[str, str]) -> InputRun:
        assert isinstance(outputs, SlideOutputs)
        self.tile_blur = recorded_blur(outputs.state, len(self.slide_plan.tiles))
        self.tile_cells = recorded_cells(outputs.state, len(self.slide_plan.tiles))
        outputs.soft_boxes = soft_boxes(self.slide_plan, self.tile_blur, self.tile_cells)  # a repaired overlay outlines them
        rewritten = outputs.repair(damaged, outputs.write_whole)
        xy, scores, probs = outputs.stored()
        log.info("%s: finished already%s; %d detections", self.path.name, f" (rewrote {', '.join(rewritten)})" if rewritten else "", len(scores))
        return self.result(*_sorted(xy, scores, probs), "finished already", outputs.dir, rewritten)

    def start(self, detector: Any, outputs: InputOutputs, record: dict[str, Any], resume: bool) -> None:
        assert isinstance(outputs, SlideOutputs)
        self.done, xy, scores = outputs.open(record, len(self.slide_plan.tiles), resume=resume)
        if self.names:  # a resumed run's probabilities, or none yet
            self.prev = (xy, scores, outputs.resumed_probabilities if self.done else np.zeros((0, len(self.names)), np.float32))
        else:
            self.prev = (xy, scores, None)
        self.tile_blur = recorded_blur(outputs.state, self.done)
        self.tile_cells = recorded_cells(outputs.state, self.done)
        self.outcome = "resumed" if self.done else "ran"

    def _found(self, batch: list[tuple[Any, np.ndarray]], results: list[Detections]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One batch's core peaks in level-0 pixels, their scores and class probabilities."""
        masks = [core_mask(tile, d.xy) for (tile, _), d in zip(batch, results)]
        kept = [keep_in_core(tile, d.xy, d.scores) for (tile, _), d in zip(batch, results)]
        xy = self.slide_plan.grid.to_level0(np.concatenate([k[0] for k in kept]))
        scores = np.concatenate([k[1] for k in kept]).astype(np.float32)
        probs = None
        if self.names:
            probs = np.concatenate([d.class_probabilities[m] for d, m in zip(results, masks)]).astype(np.float32)
        return xy, scores, probs

    def run(self, detector: Any, outputs: InputOutputs | None) -> InputRun:
        """Runs the tiles not done yet in batches, committing each to the outputs."""
        plan, slide = self.slide_plan, self.slide
        assert outputs is None or isinstance(outputs, SlideOutputs)
        found = [self.prev]
        done, count = self.done, len(self.prev[1])
        todo = plan.tiles[done:]
        read = partial(_read_sharpened, plan.grid.read_tile, slide, detector.info.mpp, self.deblur)  # (pixels, blur, soft cells)
        prefetcher = _Prefetcher(read, todo, self.queue_size, self.readers) if self.queue_size > 0 and todo else None
        reads = prefetcher if prefetcher is not None else ((tile, read(tile)) for tile in todo)
        bar = _progress_bar(len(plan.tiles), done, count, slide.path.name, self.show)
        logged_at = time.monotonic()
        elapsed_before = float(outputs.state.get("seconds", 0.0)) if outputs is not None else 0.0
        try:
            for batch in _batches(reads, detector.batch_size):
                # Tiles are at the model's pixel size already (and each ≤ tile_size: one pass).
                results = detector.detect_batch([pixels for _, (pixels, _, _) in batch], mpp=detector.info.mpp, colour_stats=self.colour)
                xy, scores, probs = self._found(batch, results)
                found.append((xy, scores, probs))
                blurs = [None if b is None else round(float(b), 4) for _, (_, b, _) in batch]
                cells = [cells_in_core(plan, tile, c) for tile, (_, _, c) in batch]
                self.tile_blur.extend(blurs)
                self.tile_cells.extend(cells)
                done += len(batch)
                count += len(scores)
                if outputs is not None:
                    outputs.commit(xy, scores, done, elapsed_before + time.perf_counter() - self.started, probs, blurs, cells)
                # The count first, then the step: the bar's last drawing shows the final count.
                bar.set_postfix_str(f"nuclei={count}", refresh=False)
                bar.update(len(batch))
                if self.log_progress and time.monotonic() - logged_at > LOG_INTERVAL_S:
                    log.info("%s: %d of %d tiles, %d nuclei so far", slide.path.name, done, len(plan.tiles), count)
                    logged_at = time.monotonic()
                if self.on_batch is not None:
                    self.on_batch(done, len(plan.tiles))
            xy, scores, probs = _sorted(*_joined(found))
            seconds = time.perf_counter() - self.started
            if outputs is not None:
                summary = {"tiles_planned": plan.tiles_planned, "megapixels": self._megapixels(), "seconds": elapsed_before + seconds, "detections": len(scores)}
                outputs.soft_boxes = soft_boxes(plan, self.tile_blur, self.tile_cells)  # outlined on the overlay
                outputs.finish(summary)
        finally:
            bar.close()
            if prefetcher is not None:
                prefetcher.close()
            if outputs is not None:
                outputs.close()
        log.info("%s: %d nuclei in %.1f s (%.2f megapixels/s)", slide.path.name, len(scores), seconds, self._megapixels() / max(seconds, 1e-9))
        _say_tiles_out_of_focus(slide.path.name, self.tile_blur, self.deblur)
        return self.result(xy, scores, probs, self.outcome, None if outputs is None else outputs.dir)

    def close(self) -> None:
        if self.slide is not None:
            self.slide.close()


def _read_sharpened(read: Callable[[Any, Any], np.ndarray], slide: Any, mpp: float, deblur: str | None, tile: Any) -> tuple[np.ndarray, float | None, list]:
    """A tile's pixels at the model's pixel size (``mpp``), deconvolved when out of focus
    and ``deblur="auto"``, its edge blur in µm (measured before), and the soft cells of a
    tile judged cell by cell (:func:`~micronet.runtime.focus.sharpened_cells`)."""
    return focus.sharpened_cells(read(slide, tile), mpp, deblur)


def _say_tiles_out_of_focus(name: str, blurs: list[float | None], deblur: str | None) -> None:
    """One line when some of a slide's tiles lie beyond the focus threshold."""
    beyond = sum(map(focus.out_of_focus, blurs))
    if beyond:
        done = "deconvolved (deblur='auto')" if deblur == "auto" else "not deconvolved (deblur=None): detections there may be missed"
        log.warning(
            "%s: %d of %d tiles are out of focus (edge blur above %g µm), %s; the summary lists them",
            name, beyond, len(blurs), focus.BLUR_THRESHOLD_UM, done,
        )


def _joined(found: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    xy = np.concatenate([f[0] for f in found])
    scores = np.concatenate([f[1] for f in found])
    probs = None if found[0][2] is None else np.concatenate([f[2] for f in found])
    return xy, scores, probs


def _sorted(xy: np.ndarray, scores: np.ndarray, probs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Peaks in ``find_peaks`` order (highest score first), probabilities with them."""
    order = sort_peaks(xy, scores)
    return xy[order], scores[order], None if probs is None else probs[order]


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
