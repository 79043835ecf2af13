"""``Detector``: nucleus centres in H&E images, with any MicroNet model and backend.

>>> from micronet import Detector                      # doctest: +SKIP
>>> det = Detector()                                   # doctest: +SKIP
>>> found = det.detect(rgb)                            # doctest: +SKIP
>>> found.xy, found.scores                             # doctest: +SKIP

As in segment-anything's predictor, :meth:`Detector.detect` (and
:meth:`Detector.detect_batch`) check and convert the caller's input; one batched method
does the work on prepared arrays:

1. resample each image to the model's pixel size when the caller's differs (bilinear);
   measure its colours against the training data's and, with ``normalize``, map them
   onto them (:mod:`micronet.runtime.stain`, per tile with the image's statistics);
2. cut images larger than a tile into overlapping tiles (:mod:`micronet.runtime.tiling`)
   and batch tiles (or whole images) of one shape through the backend;
3. with ``tta=True``, run the network on each batch and its three flips and average
   the maps, flipped back, where they lie (:meth:`Detector._infer`);
4. find the peaks of each proximity map where it lies: with CuPy on the GPU, so only
   coordinates leave the device, with the native scan on the CPU;
5. keep each tile's core peaks, merge, and map positions back to the caller's pixels.

One ``Detector`` may be called from several threads at once: it holds no scratch
state, and the backends are thread-safe.

Whole slides: ``det.detect_slide(path, ...)`` runs
:func:`micronet.runtime.runs.slide_run.detect_slide`, imported on first use. Slides
being scanned: ``det.stream(width, height, mpp=...)`` (:mod:`micronet.runtime.stream`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np

from . import focus, stain
from .backends import Backend
from .backends.select import (  # re-exported where they were before backends/select.py
    DEFAULT_BATCH_SIZE,  # noqa: F401
    DEFAULT_CPU_BATCH_SIZE,  # noqa: F401
    DEFAULT_TILE_SIZE,  # noqa: F401
    DEVICES,  # noqa: F401
    MODEL_SUFFIXES,
    check_int,
    fit_profile,
    open_backend,
    parse_device,
)
from .bundled import (
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    bundled_model,
    bundled_sample,
    bundled_tta,
    resolve_model,
)
from .classes import class_names
from .detections import Detections
from .errors import InputError
from .images import DEFAULT_MAX_MEGAPIXELS, as_rgb_image, read_image
from .inference import CLOSED, TiledInference, _ClosedBackend  # noqa: F401 (CLOSED re-exported)
from .model_info import ModelInfo
from .peaks import _check_params, check_threshold, find_peaks, find_peaks_cuda
from .prepare import batch_inputs, check_colour_stats, check_positive, prepare_image
from .resample import default_memory_limit, resample
from .tiling import Tile, alignment, default_margin, plan_tiles, receptive_radius
from .tta import TTA_FLIPS, average_flips, check_tta, recorded_tta  # noqa: F401 (TTA_FLIPS re-exported)

if TYPE_CHECKING:  # pragma: no cover - imported on first use of Detector.stream
    from .stream import StreamSession

__all__ = [
    "Detector",
    "as_rgb_image",
    "read_image",
    "bundled_model",
    "bundled_sample",
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "resolve_model",
    "MODEL_SUFFIXES",
    "parse_device",
]

log = logging.getLogger(__name__)

_average_flips = average_flips  # its name here before micronet.runtime.tta held it
# Detector(normalize=...): none, one of the stain module's methods, or "auto" (the white
# balance, stain.AUTO_METHOD, where the image lies outside the training data's colours).
NORMALIZE = (None, *stain.METHODS, "auto")
class Detector(TiledInference):
    """Finds nucleus centres in H&E images with a MicroNet model.

    Args:
        model: an ``.onnx`` model (run by ONNX Runtime) or a TensorRT ``.engine``
            (built on this GPU by ``export-engine``); ``None`` or ``"default"`` for the
            bundled default model; ``"fast-cpu"`` for the bundled CPU-fast variant
            (:data:`BUNDLED_MODELS`).
        device: ``"auto"`` (GPU 0 when the backend can use one, else the CPU),
            ``"cpu"``, ``"cuda"`` (GPU 0) or ``"cuda:N"`` (GPU N, for ONNX Runtime's
            CUDA provider and TensorRT alike).
        backend: ``None`` to choose by the model's suffix; a backend name
            (``"onnxruntime"``, ``"tensorrt"``) to insist on one; or a ready object
            implementing :class:`micronet.runtime.backends.Backend` (then ``model``
            must be ``None``). ``backend="tensorrt"`` with the bundled model (``None``
            or ``"default"``) builds an fp16 engine for this GPU from the bundled fp16
            export on first use (minutes, logged) and loads it from the user's cache
            afterwards (:mod:`micronet.runtime.engine_cache`); ``"fast-cpu"`` is an
            int8 CPU model and is refused. A CUDA backend with ``infer_async(batch,
            block=...)`` (TensorRT) gets the next batch while the peaks of the last
            are found.
        threshold: detection threshold ξ on the proximity map; default: the model's
            own (``ModelInfo.threshold``, chosen on validation data).
        min_distance: minimum distance between detections in model pixels; default: the
            model's own.
        tile_size: images larger than this (in model pixels, along either axis) run as
            overlapping tiles of at most ``tile_size²``; a multiple of the network's
            downsampling factor (8 for MicroNet). Default on the CPU: the largest tile
            whose activations fit 600 MiB (:func:`micronet.runtime.tiling.memory_tile_size`,
            from the model's widths and precision: 632 for the wide fp32 model, 1304 for
            the lean int8 one); on the GPU 1024, or less when a TensorRT engine's
            optimisation profile allows less.
        tile_margin: context around each tile's core; default: the smallest margin that
            makes tiled results equal a whole-image pass (80 px for MicroNet with
            ``min_distance = 3``; see :mod:`micronet.runtime.tiling`).
        batch_size: images or tiles of one shape sent to the backend together.
            Default: 4 on the GPU (or the engine profile's largest batch when that is
            smaller), 1 on the CPU, where batching adds memory but not speed.
        threads: CPU threads of ONNX Runtime's CPU provider (default: physical cores);
            more than the CPUs this process may use are capped to them, with a warning.
        max_megapixels: the largest image the detector makes, decodes or takes whole: an
            image resampled to the model's pixel size, an image file read by path (the
            decompression-bomb guard), or an array passed in. Default 256 MP (16 000²
            pixels, 768 MB as RGB); larger images are slides (:meth:`detect_slide` reads
            a window at a time).
        max_memory_gb: the working memory (GiB) one ``detect`` / ``detect_batch`` call may
            plan for: resampled images plus the tiles in flight at about 1 KiB per model
            pixel (:func:`micronet.runtime.resample.working_memory`); default ¾ of this
            machine's memory. Both limits are checked before anything is allocated.
        verify: run the model's known-answer test (``micronet check``,
            :mod:`micronet.runtime.diagnostics.check`) on this backend once at load, and refuse to
            work where it disagrees with the reference results the model carries.
        tta: test-time augmentation. ``True`` (or ``"flips"``): the network runs 4
            passes per image or tile: as it is, flipped left-right, flipped up-down and
            flipped both ways (:data:`TTA_FLIPS`); each map is flipped back and the 4
            are averaged
            before the peaks are found, with the same ``threshold`` and
            ``min_distance``. It applies wherever the detector runs a network
            (``detect``, ``detect_batch``, tiles, ``detect_slide``; CPU and GPU, where
            the flips and the mean stay on the GPU). The averaged map of a flipped
            image is the flipped averaged map. Tiles equal a whole-image pass when the
            image's sides (in model pixels) are multiples of 8; at other sizes a
            flipped interior tile meets the network's 8-pixel grid from its own far
            edge, and a few peaks move by up to a pixel. Cost: 4× the network's work
            (``benchmarks/bench_tta.py``); the passes share backend calls of up to
            ``batch_size`` images (all 4 in one call when ``batch_size >= 4``, as on
            the GPU by default; one at a time on the CPU by default, to bound memory),
            so ``batch_size`` still bounds the images per call and the memory.
            ``"dihedral"``: 8 passes, the 4 flips of the image and of its transpose
            (the 8 symmetries of the square), their maps brought back and averaged; 8×
            the work (the transposed passes run after the others); its averaged map of
            a flipped or transposed image is that of the image, flipped or transposed,
            up to float rounding. Default ``None``: one pass (``False``), except for
            the bundled name ``"accurate"``, the default's network with
            ``"dihedral"`` (:data:`~micronet.runtime.bundled.BUNDLED_TTA`).
        normalize: colour normalisation before the network
            (:mod:`micronet.runtime.stain`): ``"auto"`` (the default: the white
            balance, ``"white"``, only for images whose :func:`~micronet.runtime.stain.colour_distance` from the
            model's training colours, ``info.colour``, exceeds
            :data:`~micronet.runtime.stain.OOD_THRESHOLD`; no clean CRCHisto or MoNuSeg
            image does, so their detections are those of ``None``),
            ``"white"``, ``"reinhard"`` or ``"macenko"`` (every image), or ``None`` (never). Each image's statistics are
            measured once, at the model's pixel size, and every tile uses them (a
            slide's are its tissue's: :func:`micronet.runtime.runs.slide_run.detect_slide`), so
            tiles equal a whole-image pass. The distance is measured whatever this
            option and carried on :attr:`Detections.colour_distance`; an image beyond
            the threshold is warned of once per Detector (``logging``): with ``None``
            that detections may be missed, with ``"auto"`` that it was normalised.
            On a GPU too the normalisation runs in NumPy on the host batch, in place,
            before the backend's one upload: the backends take host ``uint8`` batches
            and copy them to the device themselves, so there is no device-side input
            to transform and no extra copy is made.
        deblur: ``"auto"`` (the default) deconvolves an image whose edge blur
            (:attr:`Detections.edge_blur_um`, :mod:`micronet.runtime.focus`) exceeds
            :data:`~micronet.runtime.focus.BLUR_THRESHOLD_UM` back to the training
            data's (a Wiener filter of a Gaussian, at the model's pixel size, on the
            host, the whole image before its tiles); no clean CRCHisto or MoNuSeg image
            is beyond it, so their detections are those of ``None`` (never). An image
            beyond it is warned of once per Detector either way. A slide's tiles are
            measured and deblurred each on its own (its summary lists those beyond);
            a stream's fields are not.

    Raises:
        FileNotFoundError: the model file (or the bundled model) is missing.
        ValueError: an unknown suffix (the message lists valid ones), a foreign model,
            an invalid or incompatible option.
        ImportError: a ``.engine`` or ``backend="tensorrt"`` without TensorRT (names
            the ``micronet-sdk[gpu]`` extra).
        micronet.runtime.diagnostics.check.VerificationError: ``verify=True`` and this backend's
            results differ from the model's reference results beyond tolerance.
    """

    def __init__(
        self,
        model: str | PathLike[str] | None = None,
        device: str = "auto",
        backend: str | Backend | None = None,
        threshold: float | None = None,
        min_distance: int | None = None,
        tile_size: int | None = None,
        tile_margin: int | None = None,
        batch_size: int | None = None,
        threads: int | None = None,
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        max_memory_gb: float | None = None,
        verify: bool = False,
        tta: bool | str | None = None,
        normalize: str | None = "auto",
        deblur: str | None = "auto",
    ) -> None:
        device, device_id = parse_device(device)
        tta = bundled_tta(model, tta)  # "accurate": the default's network with dihedral TTA
        self._check_options(normalize, tta, max_megapixels, max_memory_gb)
        if deblur not in focus.DEBLUR:
            raise InputError(f"deblur: expected one of {', '.join(map(repr, focus.DEBLUR))}, got {deblur!r}")
        self.deblur = deblur
        self.model_path, self.backend = open_backend(model, backend, device, device_id, threads)
        info: ModelInfo = self.backend.info
        self.class_names: tuple[str, ...] = class_names(info)  # phenotypes, when the model classifies
        self._colour_target = stain.target_stats(info.colour)  # CRCHisto's for models without
        if normalize == "macenko" and self._colour_target.stains is None:
            raise InputError("normalize='macenko': the model's colour statistics have no stain vectors; use normalize='reinhard'")
        self.threshold, self.min_distance = _check_params(
            info.threshold if threshold is None else check_threshold(threshold),
            info.min_distance if min_distance is None else min_distance,
        )
        self._align = alignment(info.architecture)
        self.tile_size, self.batch_size, self._min_hw = fit_profile(self.backend, tile_size, batch_size, self._align)
        self.tile_margin = self._margin(tile_margin)
        plan_tiles(1, 1, self.tile_size, self.tile_margin, self._align, max(self._min_hw))  # validates the combination now
        log.debug("Detector: %s on %s, tiles %d/%d", self.backend_name, self.device, self.tile_size, self.tile_margin)
        if verify:
            # The known-answer test of micronet check, on this backend, before first use.
            from .diagnostics.check import verify_detector

            verify_detector(self)

    def _check_options(self, normalize: Any, tta: Any, max_megapixels: Any, max_memory_gb: Any) -> None:
        """Checks and keeps the options that need no backend."""
        if normalize not in NORMALIZE:
            raise InputError(f"normalize: expected one of {', '.join(map(repr, NORMALIZE))}, got {normalize!r}")
        self.normalize = normalize
        self._colour_said = False  # whether the colour warning was logged (once per Detector)
        self._focus_said = False  # whether the focus warning was logged (once per Detector)
        self.tta_mode = check_tta(tta)  # None, "flips" or "dihedral"
        self.max_megapixels = check_positive(max_megapixels, "max_megapixels")
        self.max_memory = default_memory_limit() if max_memory_gb is None else int(check_positive(max_memory_gb, "max_memory_gb") * 2**30)
        # Whether this detector has said which pixel size it assumed for an image without
        # one (once per Detector; threads share it).
        self._assumed_mpp_said = False
        self._said_lock = threading.Lock()

    def _margin(self, tile_margin: int | None) -> int:
        """The tile margin: the default one, or the caller's, warned of when it is below
        what makes tiles equal a whole-image pass."""
        architecture = self.info.architecture
        if tile_margin is None:
            return default_margin(architecture, self.min_distance)
        margin = check_int(tile_margin, "tile_margin", 0)
        try:
            needed = receptive_radius(architecture) + self.min_distance
        except ValueError:
            needed = 0
        if margin < needed:
            log.warning(
                "tile_margin=%d is below the receptive radius + min_distance (%d): tiled results will differ "
                "slightly from a whole-image pass",
                margin,
                needed,
            )
        return margin

    def plan_tiles(self, height: int, width: int) -> list[Tile]:
        """The tiles this detector runs on a ``height × width`` image in model pixels:
        origins on the network's grid, cores that partition the image, margins that make
        the merged result equal a whole-image pass (see :mod:`micronet.runtime.tiling`).
        Readers that stream large images (``detect_slide``) cut along the same plan."""
        return plan_tiles(height, width, self.tile_size, self.tile_margin, self._align, max(self._min_hw))

    # --- description ------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        """The model's metadata: pixel size, threshold ξ, normalisation, provenance."""
        return self.backend.info

    @property
    def tta(self) -> bool | str:
        """The test-time augmentation as outputs record it: ``False``, ``True`` (flips)
        or ``"dihedral"`` (:attr:`tta_mode` is ``None``, ``"flips"`` or ``"dihedral"``)."""
        return recorded_tta(self.tta_mode)

    @property
    def colour_target(self) -> stain.StainStats:
        """The training data's colour statistics that ``normalize`` maps images onto
        and :attr:`Detections.colour_distance` measures from: the model's
        (``info.colour``), else :data:`~micronet.runtime.stain.DEFAULT_TARGET`."""
        return self._colour_target

    @property
    def backend_name(self) -> str:
        """``"tensorrt"``, ``"onnxruntime-cuda"`` or ``"onnxruntime-cpu"``."""
        return self.backend.name

    @property
    def device(self) -> str:
        """``"cuda"`` when proximity maps stay on the GPU, else ``"cpu"``."""
        return self.backend.device

    # --- releasing --------------------------------------------------------------------

    def close(self) -> None:
        """Releases the model: the backend this Detector created is closed (ONNX
        Runtime's session, TensorRT's engine and execution contexts) and dropped, and
        with it the memory it held, GPU memory included. A Backend object the caller
        passed is only let go of (closing it is the caller's). Idempotent; ``detect``
        and the others raise ``ValueError`` afterwards, as a closed file does. Not while
        another thread is detecting with this Detector.

        >>> with Detector("fast-cpu") as det:     # doctest: +SKIP
        ...     found = det.detect(rgb)
        """
        backend = self.backend
        if isinstance(backend, _ClosedBackend):
            return
        self.backend = _ClosedBackend(backend)
        close = getattr(backend, "close", None)
        if self.model_path is not None and callable(close):
            close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or the ``with`` block left)."""
        return isinstance(self.backend, _ClosedBackend)

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        model = self.model_path.name if self.model_path is not None else type(self.backend).__name__
        return (
            f"Detector({model!r}, backend={self.backend_name!r}, device={self.device!r}, threshold={self.threshold:g}, "
            f"min_distance={self.min_distance}, mpp={self.info.mpp:g}, tta={self.tta!r}, normalize={self.normalize!r}, deblur={self.deblur!r})"
        )

    # --- detection --------------------------------------------------------------------

    def detect(self, image: Any, mpp: float | None = None, *, colour_stats: stain.StainStats | None = None) -> Detections:
        """Nucleus centres in one image.

        Args:
            image: an ``(H, W, 3)`` uint8 RGB array (any size: large images run as
                tiles), or the path of a PNG, JPEG or TIFF file holding one.
            mpp: the image's pixel size in µm/px. When it differs from the model's
                (``info.mpp``) by more than 1%, the image is resampled to the model's
                pixel size first; positions come back in the image's own pixels. It
                must lie within 1/8 to 8 times the model's (0.069–4.4 µm/px for the
                bundled models; :func:`~micronet.runtime.resample.check_ratio`).
                ``None``: for a path, the pixel size the file records
                (:func:`~micronet.runtime.images.image_pixel_size`: TIFF resolution
                tags, PNG pHYs, OME-XML, JFIF) when it records a plausible one; else the
                model's own, which the detector then logs once (a warning).
            colour_stats: colour statistics measured elsewhere
                (:func:`micronet.runtime.stain.measure`), e.g. over the tissue of the
                slide this image is a field of view of, to normalise with and measure
                by instead of the image's own (``normalize``).

        Returns:
            :class:`Detections`: ``xy`` ``(N, 2)`` float32 ``(x, y)`` = (column, row) in
            the image's pixels, ``scores`` ``(N,)`` float32, highest first;
            ``colour_distance`` how far the image's colours lie from the training
            data's.

        Raises:
            TypeError: ``image`` is neither an array nor a path.
            ValueError: not ``(H, W, 3)`` uint8 (grayscale, RGBA, 16-bit and float
                images are named as such), empty, a damaged or truncated file, a bad
                ``mpp`` or one outside the range, or work beyond ``max_megapixels`` /
                ``max_memory_gb`` (refused before anything is allocated).
            FileNotFoundError: no such image file.
        """
        array, mpp, label, mpp_name = self._input(image, mpp, "image", "mpp")
        return self._detect_prepared([array], [mpp], [label], [mpp_name], check_colour_stats(colour_stats))[0]


    def _input(self, image: Any, mpp: Any, name: str, mpp_name: str) -> tuple[np.ndarray, float | None, str, tuple[str, bool]]:
        """``(array, mpp, label, (mpp_name, typed))`` for one image, checked and
        converted (:func:`micronet.runtime.prepare.prepare_image`)."""
        return prepare_image(image, mpp, name, mpp_name, self.max_megapixels)

    def detect_batch(
        self,
        images: Sequence[Any] | np.ndarray,
        mpp: float | Sequence[float | None] | None = None,
        *,
        colour_stats: stain.StainStats | None = None,
    ) -> list[Detections]:
        """Nucleus centres in several images; images (or tiles) of one shape share
        backend calls of up to ``batch_size``.

        Args:
            images: a sequence of what :meth:`detect` accepts, or an ``(N, H, W, 3)``
                uint8 array.
            mpp: one pixel size (µm/px) for all images, one per image, or ``None``
                (per image: a path's own, else the model's; as for :meth:`detect`).
            colour_stats: one set of colour statistics for all the images (e.g. the
                tiles of one slide), instead of each image's own (as for :meth:`detect`).

        Returns:
            One :class:`Detections` per image, in order.
        """
        images, given = batch_inputs(images, mpp)
        prepared = [self._input(im, m, f"images[{i}]", name) for i, (im, (m, name)) in enumerate(zip(images, given))]
        if not prepared:
            return []
        arrays, mpps, labels, mpp_names = (list(column) for column in zip(*prepared))
        return self._detect_prepared(arrays, mpps, labels, mpp_names, check_colour_stats(colour_stats))

    def detect_slide(self, path: str | PathLike[str], **kwargs: Any) -> Detections:
        """Nucleus centres in a whole slide (or a region of it), tile by tile in bounded
        memory, optionally streamed to CSV / GeoJSON / overlay files.

        :func:`micronet.runtime.runs.slide_run.detect_slide` with this detector: see there for
        the options (``level``, ``region``, ``mpp``, ``tissue_only``, ``out_dir``, ...),
        the files written, what comes back (positions in level-0 pixels) and the errors.
        """
        from .runs.slide_run import detect_slide  # the slide reader's imports only when used

        return detect_slide(self, path, **kwargs)

    def stream(self, width: int, height: int, *, mpp: float | None = None, **kwargs: Any) -> StreamSession:
        """Detection while a slide is being scanned: a session that takes fields of view
        in any order (``add(rgb, x, y)``) and hands out detections, in slide pixels, as
        soon as they are final (``ready()``, ``finish()``); they equal :meth:`detect` on
        the stitched slide. :class:`micronet.runtime.stream.StreamSession` with this
        detector: see there for the options (``colour_stats``, ``backlog``) and errors.
        """
        from .stream import StreamSession

        return StreamSession(self, width, height, mpp=mpp, **kwargs)


    def _to_model_pixels(self, image: np.ndarray, mpp: float | None) -> tuple[np.ndarray, tuple[float, float] | None]:
        """The image at the model's pixel size, and the ``(sx, sy)`` model pixels per
        image pixel when it had to be resampled."""
        if mpp is None:
            return image, None
        resized, _, scale = resample(image, None, mpp / self.info.mpp)  # model pixels per image pixel
        if scale is not None:
            log.debug("resampled %s at %.4g µm/px to %s at the model's %.4g µm/px", image.shape[:2], mpp, resized.shape[:2], self.info.mpp)
        return resized, scale

    def _peaks(self, prob_map: Any) -> tuple[np.ndarray, np.ndarray]:
        """Peaks of one ``(H, W)`` map where it lies: ``find_peaks_cuda`` on the map's
        GPU (one copy of the peak list back), the native scan for a NumPy map."""
        if self.backend.device == "cuda":
            return find_peaks_cuda(prob_map, self.threshold, self.min_distance)
        return find_peaks(prob_map, self.threshold, self.min_distance)
