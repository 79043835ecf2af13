"""The batched half of :class:`~micronet.runtime.detector.Detector`: the work on images
already checked and converted (``(H, W, 3)`` uint8 C-contiguous RGB arrays).

As in segment-anything's predictor, ``Detector.detect`` and ``detect_batch`` check and
convert the caller's input and hand it to :meth:`TiledInference._detect_prepared`, which

1. checks the work against ``max_megapixels`` / ``max_memory_gb`` before allocating;
2. brings each image to the model's pixel size and measures its colours
   (:mod:`micronet.runtime.prepare`) and, for an image on its own (not a tile of a slide
   or stream, which come with ``colour_stats``), its focus, deconvolving it when out of
   focus (:mod:`micronet.runtime.focus`; a slide's tiles are, as they are read);
3. groups the tiles of every image by shape and runs them through the backend in
   batches, with flip TTA (:mod:`micronet.runtime.tta`), two batches in flight on a GPU
   backend with ``infer_async``;
4. keeps each tile's core peaks and merges them, back in the caller's pixels.

The Detector supplies the model-specific steps it calls: ``plan_tiles``,
``_to_model_pixels`` and ``_peaks``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from . import focus, stain
from .classes import class_probabilities
from .detections import Detections
from .errors import InputError
from .prepare import Colour, measure_colour, tile_batch, tile_input_shape, work_sizes
from .resample import check_work, from_resampled
from .tiling import Tile, keep_in_core, sort_scored
from .tta import TTA_FLIPS, flipped, flips_per_call, infer_flips, merge_flips

__all__ = ["CLOSED", "TiledInference"]

log = logging.getLogger("micronet.runtime.detector")  # its messages are the Detector's

CLOSED = "this Detector is closed (Detector.close(), or the end of its with block); create a new one"


class _ClosedBackend:
    """What a closed Detector holds instead of its backend: the description, for
    ``repr`` and ``info``, and an ``infer`` that says it is closed."""

    def __init__(self, backend: Any) -> None:
        self.name, self.device, self.info = backend.name, backend.device, backend.info
        self.profile = getattr(backend, "profile", None)

    def infer(self, batch: Any) -> Any:
        raise InputError(CLOSED)


class TiledInference:
    """Detection on prepared images, batched by tile shape (the base of ``Detector``,
    which sets the attributes used here: ``backend``, ``info``, ``tta``, ``tta_mode``, ``normalize``, ``deblur``,
    ``batch_size``, ``tile_size``, ``max_megapixels``, ``max_memory``, ``class_names``,
    ``_colour_target``, ``_min_hw`` and the once-per-Detector flags)."""

    def _check_work(
        self,
        images: list[np.ndarray],
        mpps: list[float | None],
        labels: list[str] | None,
        mpp_names: list[tuple[str, bool]] | None,
        colour_stats: stain.StainStats | None = None,
    ) -> None:
        """Refuses, before anything is allocated, a pixel size out of range or work beyond
        ``max_megapixels`` / ``max_memory_gb`` (:mod:`micronet.runtime.resample`'s rules),
        and says once which pixel size an image without one is taken to have."""
        if self.closed:
            raise InputError(CLOSED)
        model_mpp = self.info.mpp
        sizes = work_sizes(images, mpps, model_mpp, self.max_megapixels, labels, mpp_names)
        in_flight = self.batch_size * (2 if self._submitter() is not None else 1)  # two batches in flight when pipelined
        deblur = self.deblur == "auto" and colour_stats is None  # parts of a whole are not deconvolved here
        check_work(sizes, self.tile_size, in_flight, self.max_megapixels, self.max_memory, labels, deblur)
        if any(m is None for m in mpps):
            with self._said_lock:
                say, self._assumed_mpp_said = not self._assumed_mpp_said, True
            if say:
                log.warning(
                    "an image without a pixel size (no mpp given, none recorded in the file): taken to be at the model's "
                    "%g µm/px; pass mpp= (µm/px: about 0.25 at 40×, 0.5 at 20×) for images at another (said once per Detector)",
                    model_mpp,
                )

    def _detect_prepared(
        self,
        images: list[np.ndarray],
        mpps: list[float | None],
        labels: list[str] | None = None,
        mpp_names: list[tuple[str, bool]] | None = None,
        colour_stats: stain.StainStats | None = None,
    ) -> list[Detections]:
        """The work: ``images`` are checked ``(H, W, 3)`` uint8 C-contiguous arrays;
        ``labels`` and ``mpp_names`` (name, whether the caller typed it) name them and
        their pixel sizes in errors; ``colour_stats`` replaces each image's own."""
        self._check_work(images, mpps, labels, mpp_names, colour_stats)
        model_images, scales, colours, blurs, groups = self._prepare(images, mpps, colour_stats)
        found: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in images]
        # With tta a tile is 4 network passes, and a backend call holds at most
        # batch_size images: fewer tiles per chunk when the flips share a call.
        flips = flips_per_call(self.batch_size) if self.tta else 1
        per_chunk = self.batch_size // flips
        chunks = [jobs[start : start + per_chunk] for jobs in groups.values() for start in range(0, len(jobs), per_chunk)]

        def collect(chunk: list[tuple[int, Tile]], maps: Any) -> None:
            for k, (i, tile) in enumerate(chunk):
                found[i].append(self._tile_peaks(maps[k], tile))

        submit = self._submitter()
        # A chunk of several calls runs them one after another (and so does dihedral TTA:
        # a non-square tile's transposed passes have another shape).
        if submit is None or flips not in (1, len(TTA_FLIPS)) or self.tta_mode == "dihedral":
            for chunk in chunks:
                batch = self._batch(chunk, model_images, colours)  # (B, h, w, 3) uint8
                maps = self._infer(batch)  # (B, 1, h, w) float32, NumPy or CuPy
                collect(chunk, maps)
                del maps  # releases a GPU map before the next batch is allocated
        else:
            self._run_pipelined(submit, chunks, model_images, colours, collect)
        return [self._result(*parts) for parts in zip(images, mpps, scales, found, colours, blurs)]

    def _prepare(
        self, images: list[np.ndarray], mpps: list[float | None], colour_stats: stain.StainStats | None
    ) -> tuple[list[np.ndarray], list[tuple[float, float] | None], list[Colour], list[float | None], dict[tuple[int, int], list[tuple[int, Tile]]]]:
        """Each image at the model's pixel size, its scale, colour and edge blur (µm; only
        without ``colour_stats``), and the ``(image index, tile)`` backend inputs grouped by
        tile shape so one call runs one shape (insertion order keeps the work roughly in
        image order)."""
        model_images, scales, colours, blurs = [], [], [], []
        groups: dict[tuple[int, int], list[tuple[int, Tile]]] = {}
        for i, (image, mpp) in enumerate(zip(images, mpps)):
            resized, scale = self._to_model_pixels(image, mpp)
            colours.append(self._colour(resized, colour_stats))
            blur = None
            if colour_stats is None:  # a whole image (a slide's tiles are measured as they are read)
                resized, blur = focus.sharpened(resized, self.info.mpp, self.deblur)
                self._say_focus(blur)
            model_images.append(resized)
            scales.append(scale)
            blurs.append(blur)
            h, w = resized.shape[:2]
            for tile in self.plan_tiles(h, w):
                groups.setdefault(self._input_shape(tile), []).append((i, tile))
        return model_images, scales, colours, blurs, groups

    def _submitter(self) -> Any:
        """The backend's ``infer_async`` when it has one and runs on a GPU, else ``None``."""
        return getattr(self.backend, "infer_async", None) if self.backend.device == "cuda" else None

    def _run_pipelined(self, submit: Any, chunks: list[list[tuple[int, Tile]]], images: list[np.ndarray], colours: list[Colour], collect: Any) -> None:
        """Two batches in flight: batch k+1 is uploaded and inferred on the GPU while the
        peaks of batch k are found (on the GPU too, then one small copy)."""
        pending: tuple[list[tuple[int, Tile]], Any] | None = None  # (chunk, job)
        try:
            for chunk in chunks:
                batch = self._batch(chunk, images, colours)  # (B, h, w, 3) uint8
                if self.tta:
                    batch = flipped(batch, TTA_FLIPS)  # (4B, h, w, 3): one call
                # Never wait for a context while holding an unwaited job: two threads
                # doing so would each wait for the other's.
                job = submit(batch, block=pending is None)
                if job is None:  # all contexts busy (other threads): finish ours first
                    done, pending = pending, None
                    collect(done[0], self._merge(done[1].wait()))
                    job = submit(batch, block=True)
                if pending is not None:
                    done, pending = pending, None
                    collect(done[0], self._merge(done[1].wait()))
                pending = (chunk, job)
            if pending is not None:
                done, pending = pending, None
                collect(done[0], self._merge(done[1].wait()))
        finally:
            if pending is not None:
                pending[1].wait()  # hands its context back even when collecting failed

    def _tile_peaks(self, maps: Any, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """The peaks in one tile's core from its ``(C, h, w)`` maps: positions and scores
        (with a class head, ``(N, 1 + K)``: the score, then the class probabilities)."""
        xy, scores = self._peaks(maps[0])
        if self.class_names:
            # The class logits at the peaks (where the map lies: N×K values come back),
            # carried with the scores through the core filter.
            probs = class_probabilities(maps[1:], xy)  # (N, K)
            scores = np.concatenate([scores[:, None], probs], axis=1)
        return keep_in_core(tile, xy, scores)

    def _result(
        self,
        image: np.ndarray,
        mpp: float | None,
        scale: tuple[float, float] | None,
        parts: list[tuple[np.ndarray, np.ndarray]],
        colour: Colour,
        blur: float | None,
    ) -> Detections:
        """One image's detections from its tiles' peaks: merged, sorted, and mapped back
        to the caller's pixels."""
        width = 1 + len(self.class_names)  # the score, then the class probabilities
        xy = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 2), np.float32)
        values = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, width) if width > 1 else (0,), np.float32)
        xy, scores, probs = sort_scored(xy, values)
        if scale is not None:
            xy = from_resampled(xy, *scale).astype(np.float32)  # back to the caller's pixels
        return Detections(xy, scores.astype(np.float32, copy=False), image.shape[:2], mpp, colour[0], probs, self.class_names, blur)

    def _colour(self, image: np.ndarray, given: stain.StainStats | None) -> Colour:
        """``(colour distance, normalisation method or None, statistics)`` of one image
        at the model's pixel size: its own statistics unless ``given``. Logs, once per
        Detector, an image outside the training data's colours."""
        colour, outside = measure_colour(image, given, self._colour_target, self.normalize)
        if outside and self.normalize in (None, "auto"):
            with self._said_lock:
                say, self._colour_said = not self._colour_said, True
            if say:
                if self.normalize is None:
                    log.warning("%s (said once per Detector)", stain.colour_message(colour[2], self._colour_target))
                else:
                    described = stain.colour_message(colour[2], self._colour_target, suggest=None)
                    log.warning("%s; normalised with %r (normalize='auto'; said once per Detector)", described, stain.AUTO_METHOD)
        return colour

    def _say_focus(self, blur: float | None, what: str = "image") -> None:
        """Logs, once per Detector, an edge blur beyond :data:`~micronet.runtime.focus.BLUR_THRESHOLD_UM`
        (of an image, or of a slide: its tissue pooled, and each tile measured and
        deblurred on its own as it is read)."""
        if focus.out_of_focus(blur):
            with self._said_lock:
                say, self._focus_said = not self._focus_said, True
            if not say:
                return
            parts = "" if what == "image" else "its out-of-focus tiles are "
            if self.deblur == "auto":
                done = f"{parts}deconvolved back to {focus.DEBLUR_TARGET_UM:g} µm (deblur='auto'); rescan or refocus it if you can"
            else:
                done = "detections may be missed; rescan or refocus it, or pass deblur='auto'"
            log.warning("%s; %s (said once per Detector)", focus.focus_message(blur, what), done)

    def _batch(self, chunk: list[tuple[int, Tile]], images: list[np.ndarray], colours: list[Colour]) -> np.ndarray:
        """The ``(B, h, w, 3)`` uint8 backend input of a chunk of ``(image index, tile)``
        (:func:`micronet.runtime.prepare.tile_batch`)."""
        return tile_batch(chunk, images, colours, self._colour_target, self._min_hw)

    def _infer(self, batch: np.ndarray) -> Any:
        """``(B, h, w, 3)`` uint8 → ``(B, 1, h, w)`` float32 maps, NumPy or CuPy (where
        the backend leaves them): one backend call; with ``tta`` the mean of the
        :data:`TTA_FLIPS` passes (8 with ``tta="dihedral"``), in calls of at most
        ``batch_size`` images."""
        if not self.tta:
            return self.backend.infer(batch)
        return infer_flips(self.backend.infer, batch, self.batch_size, self.tta_mode)

    def _merge(self, maps: Any) -> Any:
        """The maps of one chunk from its one backend call: as they are, or with
        ``tta`` the ``(4B, 1, h, w)`` flip passes averaged to ``(B, 1, h, w)``."""
        return merge_flips(maps) if self.tta else maps

    def _input_shape(self, tile: Tile) -> tuple[int, int]:
        """The tile's ``(h, w)``, grown to the backend's minimum input size."""
        return tile_input_shape(tile, self._min_hw)
