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

import contextlib
import difflib
import importlib
import importlib.resources
import logging
import numbers
import threading
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends import Backend
from .bundled import (
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    bundled_model,
    bundled_sample,
    resolve_model,
)
from .classes import class_names, class_probabilities
from .detections import Detections
from .errors import InputError, InputTypeError, MissingPackageError
from .images import DEFAULT_MAX_MEGAPIXELS, as_rgb_image, check_mpp, image_pixel_size, read_image
from .model_info import ModelInfo
from .peaks import _check_params, check_threshold, find_peaks, find_peaks_cuda
from . import stain
from .resample import check_ratio, check_work, default_memory_limit, from_resampled, needs_resampling, resample, resampled_size
from .tiling import (
    Tile,
    alignment,
    default_margin,
    keep_in_core,
    memory_tile_size,
    plan_tiles,
    receptive_radius,
    sort_peaks,
)

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

MODEL_SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt"}
# Device strings ``Detector(device=...)`` accepts: ``"cuda"`` is GPU 0, ``"cuda:N"`` GPU N.
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DEFAULT_TILE_SIZE = 1024
DEFAULT_BATCH_SIZE = 4  # GPU backends: batching fills the device
# CPU backends: a batch does not raise convolution throughput on the CPU, but multiplies
# the activation memory (tiling.tile_bytes_per_pixel: ≈ 1.5 kB per pixel for the wide fp32
# default), so one at a time.
DEFAULT_CPU_BATCH_SIZE = 1
# Test-time augmentation: the network runs on the image and on these flips of it, each
# its own inverse, as ``(flip rows, flip columns)``: none, left-right, up-down, both.
TTA_FLIPS = ((False, False), (False, True), (True, False), (True, True))
# Detector(normalize=...): none, one of the stain module's methods, or "auto" (Reinhard
# where the image lies outside the training data's colours).
NORMALIZE = (None, *stain.METHODS, "auto")


# --- input ---------------------------------------------------------------------------


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value < float("inf")):
        raise InputError(f"{name}: expected a positive number, got {value!r}")
    return float(value)


def _flip(array: Any, rows: bool, columns: bool, row_axis: int) -> Any:
    """A view of ``array`` reversed along ``row_axis`` (``rows``) and the axis after it
    (``columns``): NumPy on the host, CuPy on the GPU alike (basic slicing, no copy)."""
    index: list[slice] = [slice(None)] * array.ndim
    if rows:
        index[row_axis] = slice(None, None, -1)
    if columns:
        index[row_axis + 1] = slice(None, None, -1)
    return array[tuple(index)]


def _flips_per_call(batch_size: int) -> int:
    """How many of the four flip passes of a tile share one backend call of at most
    ``batch_size`` images: all four when they fit, else two, else one."""
    return next(f for f in (4, 2, 1) if f <= batch_size)


def _average_flips(maps: list[Any]) -> Any:
    """The mean of the ``(n, 1, h, w)`` maps of the :data:`TTA_FLIPS` passes, each
    flipped back first, computed where the maps lie (CuPy arithmetic stays on the GPU).

    Summed in pairs, (none + left-right) + (up-down + both): flipping the image only
    swaps terms within a pair or swaps the pairs, and float addition is commutative
    though not associative, so the average of a flipped image is exactly the flipped
    average of the image."""
    back = [_flip(m, rows, columns, 2) for m, (rows, columns) in zip(maps, TTA_FLIPS)]
    total = back[0] + back[1]  # a new array: the backend's maps stay untouched
    total += back[2] + back[3]
    total *= 0.25  # a power of two: exact
    return total


def _on_device(array: Any) -> Any:
    """A context that makes ``array``'s GPU the current one for CuPy (whose ``device``
    is a ``cupy.cuda.Device``); nothing for a NumPy array."""
    device = getattr(array, "device", None)
    return device if hasattr(device, "__enter__") else contextlib.nullcontext()


def _check_colour_stats(stats: Any) -> stain.StainStats | None:
    if stats is not None and not isinstance(stats, stain.StainStats):
        raise InputTypeError(f"colour_stats: expected StainStats (micronet.runtime.stain.measure) or None, got {type(stats).__name__}")
    return stats


# --- backends ------------------------------------------------------------------------


CLOSED = "this Detector is closed (Detector.close(), or the end of its with block); create a new one"


class _ClosedBackend:
    """What a closed Detector holds instead of its backend: the description, for
    ``repr`` and ``info``, and an ``infer`` that says it is closed."""

    def __init__(self, backend: Any) -> None:
        self.name, self.device, self.info = backend.name, backend.device, backend.info
        self.profile = getattr(backend, "profile", None)

    def infer(self, batch: Any) -> Any:
        raise InputError(CLOSED)


def parse_device(device: Any) -> tuple[str, int]:
    """A ``device`` argument as ``(kind, GPU index)``: ``"auto"``, ``"cpu"`` and ``"cuda"``
    → index 0, ``"cuda:N"`` → N."""
    if isinstance(device, str):
        if device in ("auto", "cpu", "cuda"):
            return device, 0
        index = device[len("cuda:") :] if device.startswith("cuda:") else ""
        if index.isascii() and index.isdigit():
            return "cuda", int(index)
    raise InputError(
        f"device: expected one of {', '.join(repr(d) for d in DEVICES)} (N a GPU index: 0, 1, ...), got {device!r}"
    )


def _bundled_name(path: Path) -> str | None:
    """The :data:`BUNDLED_MODELS` name of ``path`` when it is a bundled model file."""
    for name in BUNDLED_MODELS:
        try:
            bundled = bundled_model(name)
        except FileNotFoundError:
            continue
        if path == bundled or (path.is_file() and path.resolve() == bundled.resolve()):
            return name
    return None


def _check_tensorrt_options(device: str, threads: int | None) -> None:
    if device == "cpu":
        raise InputError("device='cpu': TensorRT runs on CUDA GPUs only; use the .onnx model on the CPU")
    if threads is not None:
        raise InputError("threads applies to the ONNX Runtime CPU provider only, not to TensorRT")


def _tensorrt_backend(engine: Path, device_id: int) -> Any:
    try:
        module = importlib.import_module("micronet.runtime.backends.tensorrt")
    except ModuleNotFoundError as exc:
        raise MissingPackageError(
            f"TensorRT engines need TensorRT and the CUDA bindings: pip install 'micronet-sdk[gpu]' (missing: {exc.name})"
        ) from exc
    return module.TensorRTBackend(engine, device_id=device_id)


def _create_backend(path: Path, kind: str | None, device: str, device_id: int, threads: int | None) -> Any:
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        valid = ", ".join(f"{s} ({b})" for s, b in MODEL_SUFFIXES.items())
        close = difflib.get_close_matches(str(path), list(BUNDLED_MODELS), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(
            f"model: expected a model file ending in {valid} or one of the bundled models: {', '.join(BUNDLED_MODELS)}; "
            f"got {path.name!r}{hint}"
        )
    expected = MODEL_SUFFIXES[suffix]
    if kind == "torch":  # an .onnx export run by torch (micronet.runtime.backends.torch)
        if expected != "onnxruntime" or threads is not None:
            raise InputError(f"backend='torch' runs .onnx exports without a threads setting; got {path.name!r}, threads={threads!r}")
        from .backends.torch import TorchBackend

        return TorchBackend(path, device=device, device_id=device_id)
    if kind == "tensorrt" and expected == "onnxruntime":
        # A bundled model on TensorRT: an fp16 engine built for this GPU on first use and
        # cached (micronet.runtime.engine_cache); any other .onnx needs export-engine.
        name = _bundled_name(path)
        if name is None:
            raise InputError(
                f"backend='tensorrt' cannot run {path.name!r}: {suffix} files run on the 'onnxruntime' backend; "
                f"build an engine for this GPU with `export-engine {path.name}` (from an fp16 export) and pass the .engine, "
                "or use the bundled model: Detector('default', backend='tensorrt')"
            )
        from .engine_cache import bundled_engine_source, cached_engine

        source = bundled_engine_source(name)  # ValueError for a model TensorRT does not run
        _check_tensorrt_options(device, threads)
        return _tensorrt_backend(cached_engine(source, device_id=device_id), device_id)
    if kind is not None and kind != expected:
        raise InputError(f"backend={kind!r} cannot run {path.name!r}: {suffix} files run on the {expected!r} backend")
    if expected == "onnxruntime":
        from .backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, device=device, threads=threads, device_id=device_id)
    _check_tensorrt_options(device, threads)
    return _tensorrt_backend(path, device_id)


class Detector:
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
        tta: test-time augmentation by flips. The network runs 4 passes per image or
            tile: as it is, flipped left-right, flipped up-down and flipped both ways
            (:data:`TTA_FLIPS`); each map is flipped back and the 4 are averaged
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
            Default ``False``: one pass.
        normalize: colour normalisation before the network
            (:mod:`micronet.runtime.stain`): ``None`` (default: none), ``"reinhard"``
            or ``"macenko"`` (every image), or ``"auto"`` (Reinhard, only for images
            whose :func:`~micronet.runtime.stain.colour_distance` from the model's
            training colours, ``info.colour``, exceeds
            :data:`~micronet.runtime.stain.OOD_THRESHOLD`). Each image's statistics are
            measured once, at the model's pixel size, and every tile uses them (a
            slide's are its tissue's: :func:`micronet.runtime.runs.slide_run.detect_slide`), so
            tiles equal a whole-image pass. The distance is measured whatever this
            option and carried on :attr:`Detections.colour_distance`; with ``None`` an
            image beyond the threshold is warned of once per Detector (``logging``).
            On a GPU too the normalisation runs in NumPy on the host batch, in place,
            before the backend's one upload: the backends take host ``uint8`` batches
            and copy them to the device themselves, so there is no device-side input
            to transform and no extra copy is made.

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
        tta: bool = False,
        normalize: str | None = None,
    ) -> None:
        device, device_id = parse_device(device)
        if normalize not in NORMALIZE:
            raise InputError(f"normalize: expected one of {', '.join(map(repr, NORMALIZE))}, got {normalize!r}")
        self.normalize = normalize
        self._colour_said = False  # whether the colour warning was logged (once per Detector)
        if not isinstance(tta, (bool, np.bool_)):
            raise InputTypeError(f"tta: expected True or False, got {tta!r}")
        self.tta = bool(tta)
        self.max_megapixels = _check_positive(max_megapixels, "max_megapixels")
        self.max_memory = default_memory_limit() if max_memory_gb is None else int(_check_positive(max_memory_gb, "max_memory_gb") * 2**30)
        # Whether this detector has said which pixel size it assumed for an image without
        # one (once per Detector; threads share it).
        self._assumed_mpp_said = False
        self._said_lock = threading.Lock()
        backend_names = sorted(set(MODEL_SUFFIXES.values()) | {"torch"})
        if backend is None or isinstance(backend, str):
            if isinstance(backend, str) and backend not in backend_names:
                raise InputError(f"backend: expected one of {', '.join(backend_names)}, a Backend object or None, got {backend!r}")
            if model is None or isinstance(model, (str, PathLike)):
                path = resolve_model(model)
            else:
                raise InputTypeError(f"model: expected a path to an .onnx or .engine file or None, got {type(model).__name__}")
            self.model_path: Path | None = path
            self.backend: Any = _create_backend(path, backend, device, device_id, threads)
        elif isinstance(backend, Backend):
            if model is not None:
                raise InputError("give either model= or a Backend object as backend=, not both")
            if device != "auto" or threads is not None:
                raise InputError("device and threads configure backends the Detector creates; set them on the Backend object instead")
            self.model_path = None
            self.backend = backend
        else:
            raise InputTypeError(
                f"backend: expected one of {', '.join(backend_names)}, an object with name, device, info and infer(), "
                f"or None, got {type(backend).__name__}"
            )

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
        self.tile_size, self.batch_size = self._fit_profile(tile_size, batch_size)
        if tile_margin is None:
            self.tile_margin = default_margin(info.architecture, self.min_distance)
        else:
            self.tile_margin = _check_int(tile_margin, "tile_margin", 0)
            try:
                needed = receptive_radius(info.architecture) + self.min_distance
            except ValueError:
                needed = 0
            if self.tile_margin < needed:
                log.warning(
                    "tile_margin=%d is below the receptive radius + min_distance (%d): tiled results will differ "
                    "slightly from a whole-image pass",
                    self.tile_margin,
                    needed,
                )
        plan_tiles(1, 1, self.tile_size, self.tile_margin, self._align, max(self._min_hw))  # validates the combination now
        log.debug("Detector: %s on %s, tiles %d/%d", self.backend_name, self.device, self.tile_size, self.tile_margin)
        if verify:
            # The known-answer test of micronet check, on this backend, before first use.
            from .diagnostics.check import verify_detector

            verify_detector(self)

    def plan_tiles(self, height: int, width: int) -> list[Tile]:
        """The tiles this detector runs on a ``height × width`` image in model pixels:
        origins on the network's grid, cores that partition the image, margins that make
        the merged result equal a whole-image pass (see :mod:`micronet.runtime.tiling`).
        Readers that stream large images (``detect_slide``) cut along the same plan."""
        return plan_tiles(height, width, self.tile_size, self.tile_margin, self._align, max(self._min_hw))

    def _fit_profile(self, tile_size: int | None, batch_size: int | None) -> tuple[int, int]:
        """Tile and batch sizes within what the backend accepts (a TensorRT engine's
        optimisation profile bounds N, H and W; ONNX Runtime has no bound)."""
        default_batch = DEFAULT_BATCH_SIZE if self.backend.device == "cuda" else DEFAULT_CPU_BATCH_SIZE
        batch = default_batch if batch_size is None else _check_int(batch_size, "batch_size", 1)
        # On the CPU the largest tile whose activations fit the memory budget (tiling.memory_tile_size).
        fitted = memory_tile_size(self.info.architecture, self.info.precision, batch) if self.backend.device == "cpu" else None
        tile = (fitted or DEFAULT_TILE_SIZE) if tile_size is None else _check_int(tile_size, "tile_size", 1)
        profile = getattr(self.backend, "profile", None)
        self._min_hw = (1, 1)
        if profile is None:
            return tile, batch
        self._min_hw = (int(profile[0][1]), int(profile[0][2]))
        max_n, max_h, max_w = (int(v) for v in profile[2][:3])
        largest = min(max_h, max_w) // self._align * self._align
        if tile_size is None:
            tile = min(tile, largest)
        elif tile > largest:
            raise InputError(
                f"tile_size: the engine accepts images up to {max_h}×{max_w}, so at most {largest}, got {tile}; "
                "rebuild the engine with a larger profile (export-engine --max NxHxW) or pass a smaller tile_size"
            )
        if max(self._min_hw) > tile - self._align + 1:
            raise InputError(f"tile_size: the engine needs images of at least {self._min_hw[0]}×{self._min_hw[1]}, got tile_size {tile}")
        if batch_size is None:
            batch = min(batch, max_n)
        elif batch > max_n:
            raise InputError(f"batch_size: the engine accepts batches up to {max_n}, got {batch}")
        return tile, batch

    # --- description ------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        """The model's metadata: pixel size, threshold ξ, normalisation, provenance."""
        return self.backend.info

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
            f"min_distance={self.min_distance}, mpp={self.info.mpp:g}, tta={self.tta}, normalize={self.normalize!r})"
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
        return self._detect_prepared([array], [mpp], [label], [mpp_name], _check_colour_stats(colour_stats))[0]

    def _input(self, image: Any, mpp: Any, name: str, mpp_name: str) -> tuple[np.ndarray, float | None, str, tuple[str, bool]]:
        """``(array, mpp, label, (mpp_name, typed))`` for one image, checked and
        converted. Its pixel size is the caller's (``typed``), else for a path the one
        the file records, else ``None``; ``mpp_name`` names it in errors."""
        mpp = check_mpp(mpp, mpp_name)
        label, typed = name, True
        if isinstance(image, (str, PathLike)):
            label = Path(image).name
            recorded = image_pixel_size(image) if mpp is None else None
            if recorded is not None:
                mpp, source = recorded
                mpp_name, typed = f"{label} (pixel size from its {source}; pass mpp= to override)", False
                log.debug("%s: %.4g µm/px from its %s", label, mpp, source)
        return as_rgb_image(image, name, self.max_megapixels), mpp, label, (mpp_name, typed)

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
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif isinstance(images, (str, PathLike, np.ndarray)) or not isinstance(images, Sequence):
            raise InputTypeError(f"images: expected a sequence of images or an (N, H, W, 3) array, got {type(images).__name__}")
        if mpp is None or isinstance(mpp, numbers.Real):
            given = [(check_mpp(mpp), "mpp")] * len(images)
        elif isinstance(mpp, Sequence) and not isinstance(mpp, str):
            if len(mpp) != len(images):
                raise InputError(f"mpp: expected one pixel size per image ({len(images)}), got {len(mpp)}")
            given = [(m, f"mpp[{i}]") for i, m in enumerate(mpp)]
        else:
            raise InputTypeError(f"mpp: expected a number, a sequence of numbers or None, got {type(mpp).__name__}")
        prepared = [self._input(im, m, f"images[{i}]", name) for i, (im, (m, name)) in enumerate(zip(images, given))]
        if not prepared:
            return []
        arrays, mpps, labels, mpp_names = (list(column) for column in zip(*prepared))
        return self._detect_prepared(arrays, mpps, labels, mpp_names, _check_colour_stats(colour_stats))

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

    def _check_work(
        self,
        images: list[np.ndarray],
        mpps: list[float | None],
        labels: list[str] | None,
        mpp_names: list[tuple[str, bool]] | None,
    ) -> None:
        """Refuses, before anything is allocated, a pixel size out of range or work beyond
        ``max_megapixels`` / ``max_memory_gb`` (:mod:`micronet.runtime.resample`'s rules),
        and says once which pixel size an image without one is taken to have."""
        if self.closed:
            raise InputError(CLOSED)
        model_mpp = self.info.mpp
        sizes = []
        for k, (image, mpp) in enumerate(zip(images, mpps)):
            h, w = image.shape[:2]
            if h * w / 1e6 > self.max_megapixels:  # arrays as image files (read_image): larger ones are slides
                raise InputError(
                    f"{labels[k] if labels else 'image'}: {w}×{h} pixels ({h * w / 1e6:,.0f} MP), more than max_megapixels="
                    f"{self.max_megapixels:g}; run it as a slide (Detector.detect_slide on a tiled TIFF), which reads a window "
                    "at a time, or raise max_megapixels"
                )
            out = (h, w)
            if mpp is not None:
                name, typed = mpp_names[k] if mpp_names else ("mpp", True)
                ratio = check_ratio(mpp / model_mpp, mpp, model_mpp, name, typed=typed)
                if needs_resampling(ratio):
                    out = resampled_size(h, w, ratio)
            sizes.append(((h, w), out))
        pipelined = self.backend.device == "cuda" and getattr(self.backend, "infer_async", None) is not None
        in_flight = self.batch_size * (2 if pipelined else 1)  # two batches in flight when pipelined
        check_work(sizes, self.tile_size, in_flight, self.max_megapixels, self.max_memory, labels)
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
        self._check_work(images, mpps, labels, mpp_names)
        model_images: list[np.ndarray] = []
        scales: list[tuple[float, float] | None] = []
        colours: list[tuple[float | None, str | None, stain.StainStats | None]] = []  # (distance, method, stats)
        # (image index, tile) per backend input, grouped by tile shape so one call runs
        # one shape; insertion order keeps the work roughly in image order.
        groups: dict[tuple[int, int], list[tuple[int, Tile]]] = {}
        for i, (image, mpp) in enumerate(zip(images, mpps)):
            resized, scale = self._to_model_pixels(image, mpp)
            model_images.append(resized)
            scales.append(scale)
            colours.append(self._colour(resized, colour_stats))
            h, w = resized.shape[:2]
            for tile in self.plan_tiles(h, w):
                groups.setdefault(self._input_shape(tile), []).append((i, tile))

        found: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in images]
        # With tta a tile is 4 network passes, and a backend call holds at most
        # batch_size images: fewer tiles per chunk when the flips share a call.
        flips = _flips_per_call(self.batch_size) if self.tta else 1
        per_chunk = self.batch_size // flips
        chunks = [jobs[start : start + per_chunk] for jobs in groups.values() for start in range(0, len(jobs), per_chunk)]

        def collect(chunk: list[tuple[int, Tile]], maps: Any) -> None:
            for k, (i, tile) in enumerate(chunk):
                xy, scores = self._peaks(maps[k, 0])
                if self.class_names:
                    # The class logits at the peaks (where the map lies: N×K values come
                    # back), carried with the scores through the core filter.
                    probs = class_probabilities(maps[k, 1:], xy)  # (N, K)
                    scores = np.concatenate([scores[:, None], probs], axis=1)
                found[i].append(keep_in_core(tile, xy, scores))

        submit = getattr(self.backend, "infer_async", None) if self.backend.device == "cuda" else None
        if flips not in (1, len(TTA_FLIPS)):
            submit = None  # a chunk takes several calls: run them one after another
        if submit is None:
            for chunk in chunks:
                batch = self._batch(chunk, model_images, colours)  # (B, h, w, 3) uint8
                maps = self._infer(batch)  # (B, 1, h, w) float32, NumPy or CuPy
                collect(chunk, maps)
                del maps  # releases a GPU map before the next batch is allocated
        else:
            # Two batches in flight: batch k+1 is uploaded and inferred on the GPU while
            # the peaks of batch k are found (on the GPU too, then one small copy).
            pending: tuple[list[tuple[int, Tile]], Any] | None = None  # (chunk, job)
            try:
                for chunk in chunks:
                    batch = self._batch(chunk, model_images, colours)  # (B, h, w, 3) uint8
                    if self.tta:
                        batch = self._flipped(batch, TTA_FLIPS)  # (4B, h, w, 3): one call
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

        results = []
        width = 1 + len(self.class_names)  # the score, then the class probabilities
        for image, mpp, scale, parts, (distance, _, _) in zip(images, mpps, scales, found, colours):
            xy = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 2), np.float32)
            values = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, width) if width > 1 else (0,), np.float32)
            scores = values[:, 0] if width > 1 else values
            order = sort_peaks(xy, scores, order=True)
            xy, values = xy[order], values[order]
            if scale is not None:
                xy = from_resampled(xy, *scale).astype(np.float32)  # back to the caller's pixels
            probs = values[:, 1:] if width > 1 else None
            scores = values[:, 0] if width > 1 else values
            results.append(Detections(xy, scores.astype(np.float32, copy=False), image.shape[:2], mpp, distance, probs, self.class_names))
        return results

    def _colour(self, image: np.ndarray, given: stain.StainStats | None) -> tuple[float | None, str | None, stain.StainStats | None]:
        """``(colour distance, normalisation method or None, statistics)`` of one image
        at the model's pixel size: its own statistics unless ``given``. Logs, once per
        Detector, an image outside the training data's colours."""
        stats = given
        if stats is None:
            if image.shape[0] * image.shape[1] < stain.MIN_PIXELS:
                return None, None, None  # too few pixels to measure or normalise
            stats = stain.measure(image)
        distance = stain.colour_distance(stats, self._colour_target)
        outside = distance > stain.OOD_THRESHOLD
        method = ("reinhard" if outside else None) if self.normalize == "auto" else self.normalize
        if method == "macenko" and stats.stains is None:
            log.debug("no stained pixels to find stain vectors in: the image is not normalised")
            method = None
        if outside and self.normalize in (None, "auto"):
            with self._said_lock:
                say, self._colour_said = not self._colour_said, True
            if say:
                if self.normalize is None:
                    log.warning("%s (said once per Detector)", stain.colour_message(stats, self._colour_target))
                else:
                    described = stain.colour_message(stats, self._colour_target, suggest=None)
                    log.info("%s; normalised with 'reinhard' (normalize='auto'; said once per Detector)", described)
        return distance, method, stats

    def _batch(self, chunk: list[tuple[int, Tile]], images: list[np.ndarray], colours: list[tuple[Any, Any, Any]]) -> np.ndarray:
        """The ``(B, h, w, 3)`` uint8 backend input of a chunk of ``(image index, tile)``:
        the tiles' pixels, each normalised in place with its image's statistics."""
        batch = np.stack([self._crop(images[i], tile) for i, tile in chunk])  # a new array: normalised in place
        for k, (i, _) in enumerate(chunk):
            _, method, stats = colours[i]
            if method is not None:
                stain.apply(batch[k], stats, self._colour_target, method, out=batch[k])
        return batch

    def _infer(self, batch: np.ndarray) -> Any:
        """``(B, h, w, 3)`` uint8 → ``(B, 1, h, w)`` float32 maps, NumPy or CuPy (where
        the backend leaves them): one backend call; with ``tta`` the mean of the
        :data:`TTA_FLIPS` passes, in calls of at most ``batch_size`` images."""
        if not self.tta:
            return self.backend.infer(batch)
        n = len(batch)
        flips = _flips_per_call(max(1, self.batch_size // n))  # passes per call
        maps: list[Any] = []
        for start in range(0, len(TTA_FLIPS), flips):
            out = self.backend.infer(self._flipped(batch, TTA_FLIPS[start : start + flips]))  # (flips·B, 1, h, w)
            maps += [out[k * n : (k + 1) * n] for k in range(len(out) // n)]
        with _on_device(maps[0]):
            return _average_flips(maps)

    def _merge(self, maps: Any) -> Any:
        """The maps of one chunk from its one backend call: as they are, or with
        ``tta`` the ``(4B, 1, h, w)`` flip passes averaged to ``(B, 1, h, w)``."""
        if not self.tta:
            return maps
        n = len(maps) // len(TTA_FLIPS)
        with _on_device(maps):
            return _average_flips([maps[k * n : (k + 1) * n] for k in range(len(TTA_FLIPS))])

    @staticmethod
    def _flipped(batch: np.ndarray, flips: Sequence[tuple[bool, bool]]) -> np.ndarray:
        """``(B, h, w, 3)`` → ``(len(flips)·B, h, w, 3)``, C-contiguous: the batch
        under each flip in turn (flip-major, so each flip's maps are one slice)."""
        return np.concatenate([_flip(batch, rows, columns, 1) for rows, columns in flips])

    def _input_shape(self, tile: Tile) -> tuple[int, int]:
        """The tile's ``(h, w)``, grown to the backend's minimum input size."""
        h, w = tile.shape
        return (max(h, self._min_hw[0]), max(w, self._min_hw[1]))

    def _crop(self, image: np.ndarray, tile: Tile) -> np.ndarray:
        """The tile's pixels; an image smaller than the backend's minimum input (a
        TensorRT profile's) is mirrored out to it at the bottom and right. Its peaks
        there lie outside the core and are dropped; the map near those two edges is
        then that of the mirrored image, not exactly of the image alone."""
        crop = tile.crop(image)
        h, w = self._input_shape(tile)
        if (h, w) == crop.shape[:2]:
            return crop
        return np.pad(crop, ((0, h - crop.shape[0]), (0, w - crop.shape[1]), (0, 0)), mode="symmetric")

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
