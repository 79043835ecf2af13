"""Which backend runs a model: the device argument, the model file's suffix, the
backend the caller names, and the tile and batch sizes the backend accepts.

:func:`open_backend` is what ``Detector(model, device=..., backend=...)`` does to get its
backend: a model file (or bundled name) and a backend name become a ready backend
(ONNX Runtime for ``.onnx``, TensorRT for ``.engine`` and for the bundled model's cached
engine, torch for an ``.onnx`` export when asked), or a caller's Backend object is taken
as it is. :func:`fit_profile` bounds tiles and batches by what the backend accepts.
"""

from __future__ import annotations

import difflib
import importlib
import numbers
from os import PathLike
from pathlib import Path
from typing import Any

from ..bundled import BUNDLED_MODELS, bundled_model, resolve_model
from ..errors import InputError, InputTypeError, MissingPackageError
from ..tiling import memory_tile_size
from . import Backend

__all__ = ["BACKEND_NAMES", "DEVICES", "MODEL_SUFFIXES", "create_backend", "fit_profile", "open_backend", "parse_device"]

MODEL_SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt"}
BACKEND_NAMES = tuple(sorted(set(MODEL_SUFFIXES.values()) | {"torch"}))
# Device strings ``Detector(device=...)`` accepts: ``"cuda"`` is GPU 0, ``"cuda:N"`` GPU N.
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DEFAULT_TILE_SIZE = 1024
DEFAULT_BATCH_SIZE = 4  # GPU backends: batching fills the device
# CPU backends: a batch does not raise convolution throughput on the CPU, but multiplies
# the activation memory (tiling.tile_bytes_per_pixel: ≈ 1.5 kB per pixel for the wide fp32
# default), so one at a time.
DEFAULT_CPU_BATCH_SIZE = 1


def check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


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


def open_backend(model: Any, backend: Any, device: str, device_id: int, threads: int | None) -> tuple[Path | None, Any]:
    """``(model file or None, backend)`` for ``Detector``'s ``model`` and ``backend``
    arguments: a backend it creates for a model file, or the caller's Backend object."""
    if backend is None or isinstance(backend, str):
        if isinstance(backend, str) and backend not in BACKEND_NAMES:
            raise InputError(f"backend: expected one of {', '.join(BACKEND_NAMES)}, a Backend object or None, got {backend!r}")
        if not (model is None or isinstance(model, (str, PathLike))):
            raise InputTypeError(f"model: expected a path to an .onnx or .engine file or None, got {type(model).__name__}")
        path = resolve_model(model)
        return path, create_backend(path, backend, device, device_id, threads)
    if isinstance(backend, Backend):
        if model is not None:
            raise InputError("give either model= or a Backend object as backend=, not both")
        if device != "auto" or threads is not None:
            raise InputError("device and threads configure backends the Detector creates; set them on the Backend object instead")
        return None, backend
    raise InputTypeError(
        f"backend: expected one of {', '.join(BACKEND_NAMES)}, an object with name, device, info and infer(), "
        f"or None, got {type(backend).__name__}"
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


def _model_kind(path: Path) -> str:
    """The backend a model file's suffix calls for; an unknown suffix raises, listing the
    valid ones and the bundled model a misspelt name was likely meant to be."""
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        valid = ", ".join(f"{s} ({b})" for s, b in MODEL_SUFFIXES.items())
        close = difflib.get_close_matches(str(path), list(BUNDLED_MODELS), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(
            f"model: expected a model file ending in {valid} or one of the bundled models: {', '.join(BUNDLED_MODELS)}; "
            f"got {path.name!r}{hint}"
        )
    return MODEL_SUFFIXES[suffix]


def _bundled_engine(path: Path, device: str, device_id: int, threads: int | None) -> Any:
    """A bundled model on TensorRT: an fp16 engine built for this GPU on first use and
    cached (micronet.runtime.engine_cache); any other .onnx needs export-engine."""
    name = _bundled_name(path)
    if name is None:
        raise InputError(
            f"backend='tensorrt' cannot run {path.name!r}: {path.suffix.lower()} files run on the 'onnxruntime' backend; "
            f"build an engine for this GPU with `export-engine {path.name}` (from an fp16 export) and pass the .engine, "
            "or use the bundled model: Detector('default', backend='tensorrt')"
        )
    from ..engine_cache import bundled_engine_source, cached_engine

    source = bundled_engine_source(name)  # ValueError for a model TensorRT does not run
    _check_tensorrt_options(device, threads)
    return _tensorrt_backend(cached_engine(source, device_id=device_id), device_id)


def create_backend(path: Path, kind: str | None, device: str, device_id: int, threads: int | None) -> Any:
    """The backend that runs the model file ``path``: ``kind`` (a backend name) or, when
    ``None``, the one its suffix calls for (:data:`MODEL_SUFFIXES`)."""
    expected = _model_kind(path)
    if kind == "torch":  # an .onnx export run by torch (micronet.runtime.backends.torch)
        if expected != "onnxruntime" or threads is not None:
            raise InputError(f"backend='torch' runs .onnx exports without a threads setting; got {path.name!r}, threads={threads!r}")
        from .torch import TorchBackend

        return TorchBackend(path, device=device, device_id=device_id)
    if kind == "tensorrt" and expected == "onnxruntime":
        return _bundled_engine(path, device, device_id, threads)
    if kind is not None and kind != expected:
        raise InputError(f"backend={kind!r} cannot run {path.name!r}: {path.suffix.lower()} files run on the {expected!r} backend")
    if expected == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, device=device, threads=threads, device_id=device_id)
    _check_tensorrt_options(device, threads)
    return _tensorrt_backend(path, device_id)


def fit_profile(backend: Any, tile_size: int | None, batch_size: int | None, align: int) -> tuple[int, int, tuple[int, int]]:
    """``(tile size, batch size, smallest (h, w) input)`` within what the backend accepts
    (a TensorRT engine's optimisation profile bounds N, H and W; ONNX Runtime has no
    bound); ``None`` sizes get the defaults for the backend's device."""
    info = backend.info
    default_batch = DEFAULT_BATCH_SIZE if backend.device == "cuda" else DEFAULT_CPU_BATCH_SIZE
    batch = default_batch if batch_size is None else check_int(batch_size, "batch_size", 1)
    # On the CPU the largest tile whose activations fit the memory budget (tiling.memory_tile_size).
    fitted = memory_tile_size(info.architecture, info.precision, batch) if backend.device == "cpu" else None
    tile = (fitted or DEFAULT_TILE_SIZE) if tile_size is None else check_int(tile_size, "tile_size", 1)
    profile = getattr(backend, "profile", None)
    if profile is None:
        return tile, batch, (1, 1)
    min_hw = (int(profile[0][1]), int(profile[0][2]))
    max_n, max_h, max_w = (int(v) for v in profile[2][:3])
    largest = min(max_h, max_w) // align * align
    if tile_size is None:
        tile = min(tile, largest)
    elif tile > largest:
        raise InputError(
            f"tile_size: the engine accepts images up to {max_h}×{max_w}, so at most {largest}, got {tile}; "
            "rebuild the engine with a larger profile (export-engine --max NxHxW) or pass a smaller tile_size"
        )
    if max(min_hw) > tile - align + 1:
        raise InputError(f"tile_size: the engine needs images of at least {min_hw[0]}×{min_hw[1]}, got tile_size {tile}")
    if batch_size is None:
        batch = min(batch, max_n)
    elif batch > max_n:
        raise InputError(f"batch_size: the engine accepts batches up to {max_n}, got {batch}")
    return tile, batch, min_hw
