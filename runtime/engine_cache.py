"""TensorRT engines built on first use and cached per machine.

``Detector("default", backend="tensorrt")`` needs an engine for *this* GPU and TensorRT
release, which no package can ship. :func:`cached_engine` builds one from an fp16 ONNX
export the first time (minutes; logged at INFO, with the builder's heartbeat) and
loads it from the user's cache afterwards:

    <cache dir>/engines/<onnx stem>-<key>/model.engine (+ model.engine.json)

The key is a hash of the ONNX file's SHA-256, the GPU's name and compute capability,
the TensorRT version and the optimisation profile, so another model, GPU, TensorRT
release or profile never picks up a stale engine. The cache directory is
``$MICRONET_CACHE_DIR``, else ``$XDG_CACHE_HOME/micronet``, else ``~/.cache/micronet``.

A TensorRT engine is native code the GPU runs, so the cache trusts nothing it did not
make: the cache folder and its ``engines/`` must belong to this user and be writable by
no one else (else :func:`cached_engine` refuses them, saying how to fix it); each
engine's SHA-256 is recorded in its sidecar when it is built and checked before it is
deserialised (a changed engine is rebuilt); and the engines it builds are not
version-compatible, so they never need TensorRT's permission to run host code (the
backend grants it only when its caller asks, never from a sidecar field).

Entries are complete or absent: an engine and its sidecar are built in a temporary
directory next to the entry and renamed into place in one step, so a crash never leaves
a half-written engine that looks right; a file lock per entry makes concurrent processes
wait for one build instead of each building (and writing) their own. Kernel timings are
kept per GPU and TensorRT version (``timing/``), so rebuilding another model is faster.

Imports TensorRT (and the builder, ``backends.tensorrt_build``, which needs no torch)
only when an engine is actually built or looked up.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from .errors import InputError, MissingFileError
from .files import FileLock, file_sha256  # file_sha256 re-exported: the engine key hashes the ONNX file

__all__ = [
    "CACHE_ENV",
    "ENGINE_PROFILE",
    "TENSORRT_SOURCES",
    "bundled_engine_source",
    "cache_dir",
    "cached_engine",
    "check_private_folder",
    "engine_key",
    "file_sha256",
]

log = logging.getLogger(__name__)

CACHE_ENV = "MICRONET_CACHE_DIR"
# (min, opt, max) as (N, H, W): what the Detector sends with its defaults (tiles of at
# most 1024², batches of at most 4; smaller images are mirrored out to the minimum).
# Tuned for what it sends most: full batches of 1024² tiles (opt N is the Detector's
# DEFAULT_BATCH_SIZE on a GPU, a test holds them equal); bounded so the build takes
# minutes, not tens of minutes, and each execution context's memory stays small.
ENGINE_PROFILE: tuple[tuple[int, int, int], ...] = ((1, 64, 64), (4, 1024, 1024), (4, 1024, 1024))
# Bundled models (``BUNDLED_MODELS`` names) → the bundled ONNX file TensorRT engines are
# built from: the fp16 export, which a strongly typed build turns into an fp16 engine.
TENSORRT_SOURCES = {"default": "micronet_crchisto.fp16.onnx"}
# Bundled models TensorRT does not run, and why.
_NOT_FOR_TENSORRT = {
    "fast-cpu": "an int8 QDQ model made for ONNX Runtime on the CPU (TensorRT takes fp16 or fp32 exports)",
}
_ENTRY_FILE = "model.engine"


def cache_dir() -> Path:
    """Where cached engines live: ``$MICRONET_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/micronet``, else ``~/.cache/micronet`` (not created here)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "micronet"
    return Path.home() / ".cache" / "micronet"


def engine_key(
    onnx_sha256: str,
    gpu_name: str,
    compute_capability: str,
    tensorrt_version: str,
    profile: Sequence[Sequence[int]] = ENGINE_PROFILE,
) -> str:
    """The cache key of an engine: 20 hex digits of a SHA-256 over everything the engine
    depends on. A change in any of them gives another key (and another engine)."""
    fields = {
        "onnx_sha256": str(onnx_sha256),
        "gpu_name": str(gpu_name).strip(),
        "compute_capability": str(compute_capability).strip(),
        "tensorrt_version": str(tensorrt_version).strip(),
        "profile": [[int(v) for v in shape] for shape in profile],
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def bundled_engine_source(name: str = "default") -> Path:
    """The bundled ONNX file an engine for the bundled model ``name`` is built from.

    Raises:
        ValueError: a bundled model TensorRT does not run (``"fast-cpu"``), or an
            unknown name; the message names the ones it runs.
        FileNotFoundError: this installation lacks the file.
    """
    valid = ", ".join(repr(n) for n in TENSORRT_SOURCES)
    if name in _NOT_FOR_TENSORRT:
        raise InputError(
            f"the bundled {name!r} model is {_NOT_FOR_TENSORRT[name]}; TensorRT runs the bundled {valid} model: "
            "Detector('default', backend='tensorrt')"
        )
    if name not in TENSORRT_SOURCES:
        raise InputError(f"bundled model for TensorRT: expected one of {valid}, got {name!r}")
    file = TENSORRT_SOURCES[name]
    resource = importlib.resources.files("micronet.runtime") / "models" / file
    if not resource.is_file():
        raise MissingFileError(
            f"the bundled fp16 model TensorRT engines are built from (micronet/runtime/models/{file}) is missing from "
            "this installation; build an engine with export-engine from `micronet export --precision fp16` and pass the .engine"
        )
    return Path(str(resource))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "gpu"


def _entry_is_valid(entry: Path, expected: dict[str, str]) -> bool:
    """An entry counts only when its engine and sidecar are both there, the sidecar
    describes the wanted ONNX file, GPU and TensorRT release, and the engine is the one
    that was built (its SHA-256 equals the sidecar's)."""
    engine = entry / _ENTRY_FILE
    sidecar = entry / (_ENTRY_FILE + ".json")
    try:
        if not engine.is_file() or engine.stat().st_size == 0:
            return False
        data = json.loads(sidecar.read_text())
        if not isinstance(data, dict) or not all(str(data.get(k, "")).strip() == v for k, v in expected.items()):
            return False
        recorded = data.get("engine_sha256")
        if not isinstance(recorded, str) or file_sha256(engine) != recorded:
            log.warning("the cached engine %s does not match the hash recorded when it was built: rebuilding it", engine)
            return False
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def check_private_folder(folder: Path) -> None:
    """Refuses a cache folder that someone else could write to: another user's, or one
    writable by its group or by everyone (they could put an engine there, and an engine
    is code the GPU runs). POSIX only; on Windows the user's profile folders hold the
    cache.

    Raises:
        ValueError: saying what is wrong and how to fix it.
    """
    if sys.platform == "win32" or not hasattr(os, "geteuid"):
        return
    info = folder.stat()
    hint = f"choose a private folder with {CACHE_ENV}=..., or fix this one"
    if info.st_uid != os.geteuid():
        raise InputError(
            f"the engine cache folder {folder} belongs to user id {info.st_uid}, not to this user ({os.geteuid()}): "
            f"TensorRT engines are code the GPU runs, so the cache uses only a folder of its own; {hint}"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise InputError(
            f"the engine cache folder {folder} is writable by others (mode {stat.filemode(info.st_mode)}): "
            f"TensorRT engines are code the GPU runs, so the cache uses only a private folder; {hint} (chmod go-w {folder})"
        )


def _private_folders(base: Path) -> Path:
    """``base/engines``, made private (0700) where missing; both checked."""
    engines = base / "engines"
    for folder in (base, engines):
        folder.mkdir(mode=0o700, exist_ok=True, parents=folder is base)
        check_private_folder(folder)
    return engines


@contextlib.contextmanager
def _staging(entry: Path) -> Iterator[Path]:
    """A fresh temporary directory next to ``entry`` (same file system, so the final
    rename is atomic), removed on the way out unless it was renamed."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_engine(
    onnx_path: str | Path,
    device_id: int = 0,
    *,
    profile: Sequence[Sequence[int]] = ENGINE_PROFILE,
    root: str | Path | None = None,
) -> Path:
    """The engine for ``onnx_path`` on GPU ``device_id``: from the cache, else built now
    (and cached).

    Args:
        onnx_path: a MicroNet ONNX export, fp16 for an fp16 engine (the bundled one:
            :func:`bundled_engine_source`); fp32 builds an fp32 engine (with a warning),
            int8 is refused.
        device_id: the CUDA device the engine is for (and built on).
        profile: ``(min, opt, max)`` input shapes as ``(N, H, W)``; default
            :data:`ENGINE_PROFILE`.
        root: the cache directory; default :func:`cache_dir`.

    Returns:
        The path of ``model.engine`` (its ``model.engine.json`` sidecar next to it),
        ready for ``TensorRTBackend``.

    Raises:
        FileNotFoundError: no file at ``onnx_path``.
        ImportError: TensorRT (>= 10), or CuPy / cuda-python, is missing (names the extra).
        ValueError: not a MicroNet export, an int8 export, a bad profile, or a cache
            folder that others could write to.
        RuntimeError: no CUDA device ``device_id``, or TensorRT failed to build.
    """
    from .backends.cuda_env import check_device_id, cuda_device_properties, import_tensorrt

    onnx_path = Path(onnx_path)
    device_id = check_device_id(device_id)
    if not onnx_path.is_file():
        raise MissingFileError(f"ONNX model not found: {onnx_path}")
    trt = import_tensorrt("building a TensorRT engine")
    gpu_name, compute_capability = cuda_device_properties(device_id)
    lo, opt, hi = (tuple(int(v) for v in shape) for shape in profile)
    base = Path(root).expanduser() if root is not None else cache_dir()
    engines = _private_folders(base)
    entry, expected = _entry(engines, onnx_path, gpu_name, compute_capability, trt.__version__, (lo, opt, hi))
    engine = entry / _ENTRY_FILE
    if _entry_is_valid(entry, expected):
        log.debug("TensorRT engine for %s from the cache: %s", onnx_path.name, entry)
        return engine

    sm = compute_capability.replace(".", "")
    timing = base / "timing" / f"{_slug(gpu_name)}-sm{sm}-trt{trt.__version__}.cache"
    built_on = f"GPU {device_id} ({gpu_name}, sm_{sm}, TensorRT {trt.__version__})"
    _build_locked(engines, entry, expected, onnx_path, (lo, opt, hi), device_id, timing, built_on)
    return engine


def _build_locked(
    engines: Path,
    entry: Path,
    expected: dict[str, str],
    onnx_path: Path,
    profile: tuple[tuple[int, ...], ...],
    device_id: int,
    timing: Path,
    built_on: str,
) -> None:
    """Builds the cache entry under its lock, unless another process built it while this
    one waited; clears what a killed build left. ``built_on`` names the GPU and TensorRT
    in the log."""
    what = f"the TensorRT engine for {onnx_path.name}"
    with FileLock(engines / f"{entry.name}.lock", wait=True, what=what, remove=False):
        if _entry_is_valid(entry, expected):  # another process built it while we waited
            return
        for stale in engines.glob(f".{entry.name}.*.tmp"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        log.info(
            "building a TensorRT engine for %s on %s, once: this takes a few minutes; later runs load it from %s",
            onnx_path.name, built_on, entry,
        )  # fmt: skip
        _build_entry(onnx_path, entry, profile, timing, device_id)
        log.info("cached %s", entry / _ENTRY_FILE)


def _entry(engines: Path, onnx_path: Path, gpu_name: str, cc: str, trt_version: str, profile: Sequence[tuple[int, ...]]) -> tuple[Path, dict[str, str]]:
    """The entry folder of this model, GPU, TensorRT and profile, and what its sidecar
    must say for the entry to count."""
    sha = file_sha256(onnx_path)
    key = engine_key(sha, gpu_name, cc, trt_version, profile)
    expected = {"onnx_sha256": sha, "gpu_name": gpu_name.strip(), "compute_capability": cc.strip(), "tensorrt_version": str(trt_version).strip()}
    return engines / f"{onnx_path.stem}-{key}", expected


def _build_entry(onnx_path: Path, entry: Path, profile: Sequence[tuple[int, ...]], timing: Path, device_id: int) -> None:
    """Builds the engine and its sidecar in a staging folder and renames it to ``entry``
    (the caller holds the entry's lock)."""
    from .backends.tensorrt_build import build_engine

    lo, opt, hi = profile
    with _staging(entry) as tmp:
        # Not version-compatible: the engine carries no lean runtime (host code).
        build_engine(onnx_path, tmp / _ENTRY_FILE, lo, opt, hi, timing_cache=timing, device_id=device_id, version_compatible=False)
        if entry.exists():  # an invalid or incomplete entry from an older run
            shutil.rmtree(entry)
        os.replace(tmp, entry)  # engine and sidecar appear together
