"""What a run records about one input, so that a rerun can tell whether the outputs in a
folder are its own: the settings that shape the result, the input's fingerprint, the
model's digest, the detections as float32 records, and how two settings differ.

Used by :mod:`micronet.runtime.runs.outputs` (images and the checks on a rerun) and
:mod:`micronet.runtime.runs.slide_outputs` (slides, batch by batch).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..files import file_sha256
from ..focus import AUTO_DEBLUR
from ..stain import AUTO_METHOD

__all__ = [
    "RECORD_FORMAT",
    "SETTINGS_SINCE",
    "append_records",
    "describe_changes",
    "deblur_setting",
    "detector_settings",
    "file_digest",
    "fingerprint",
    "model_digest",
    "read_records",
]

RECORD_FORMAT = "micronet-outputs/1"
# Settings added after records were first written, with the value every run before them
# had: a record without one was made at that value (no test-time augmentation before
# ``tta``; no deconvolution before ``deblur``, which images record since the thirteenth
# round and slides since the fourteenth), so its outputs stay current for a rerun at it,
# and other values are refused.
SETTINGS_SINCE = {"tta": False, "deblur": None}


def fingerprint(path: Path) -> dict[str, Any]:
    """Identifies an input file by name, size and the hash of its first MiB (not the
    mtime, so a copied file still resumes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
    return {"name": path.name, "bytes": path.stat().st_size, "sha256_1mib": digest.hexdigest()}


def file_digest(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex}`` of a file."""
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


_MODEL_DIGESTS: dict[tuple[str, int, int], str] = {}


def detector_settings(detector: Any) -> dict[str, Any]:
    """What of a detector decides its detections, for an output's recorded settings:
    the model (its digest), ξ, the minimum distance, the tiling, test-time
    augmentation and colour normalisation. Images and slides record the same keys,
    so a setting added here is checked on both."""
    return {
        "model": model_digest(detector),
        "threshold": detector.threshold,
        "min_distance": detector.min_distance,
        "tile_size": detector.tile_size,
        "tile_margin": detector.tile_margin,
        "tta": detector.tta,
        "deblur": deblur_setting(getattr(detector, "deblur", None)),
        # Recorded only when set, so outputs made before the option existed still match.
        **({"normalize": normalize_setting(detector.normalize)} if getattr(detector, "normalize", None) else {}),
    }


def normalize_setting(normalize: str) -> str:
    """The recorded ``normalize``: ``"auto"`` with the method it applies (``"auto:white"``),
    since ``auto`` used Reinhard until the twelfth round; a slide begun under the one is
    then never resumed under the other (nor an image's outputs kept), which would mix two
    normalisations in one file."""
    return f"auto:{AUTO_METHOD}" if normalize == "auto" else normalize


def deblur_setting(deblur: str | None) -> str | None:
    """The recorded ``deblur``: ``"auto"`` with how it judges a large image
    (``"auto:cells"``, :data:`~micronet.runtime.focus.AUTO_DEBLUR`), since until the
    sixteenth round ``auto`` deconvolved a tile or image whole at one σ; a slide begun under
    the one is then never resumed under the other, nor an image's outputs kept."""
    return f"auto:{AUTO_DEBLUR}" if deblur == "auto" else deblur


def model_digest(detector: Any) -> str:
    """SHA-256 of the detector's model file (cached per file, size and mtime: a batch
    hashes it once); of its metadata when it runs a Backend object without a file."""
    path = getattr(detector, "model_path", None)
    if path is None:
        return "info:" + hashlib.sha256(detector.info.to_json().encode()).hexdigest()
    stat = Path(path).stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _MODEL_DIGESTS:
        _MODEL_DIGESTS[key] = file_digest(Path(path))["sha256"]
    return _MODEL_DIGESTS[key]


def append_records(f: IO[bytes], xy: np.ndarray, scores: np.ndarray, probabilities: np.ndarray | None = None) -> int:
    """Appends detections to the record as little-endian float32 ``(x, y, score)`` rows,
    followed by the ``K`` class probabilities of a model with a class head; returns the
    file's length."""
    parts = [np.asarray(xy, np.float32).reshape(-1, 2), np.asarray(scores, np.float32)[:, None]]
    if not len(parts[1]):  # nothing to write; and NumPy cannot infer the -1 below for an empty array
        return f.tell()
    if probabilities is not None:
        parts.append(np.asarray(probabilities, np.float32).reshape(len(parts[1]), -1))
    records = np.concatenate(parts, axis=1).astype("<f4")
    f.write(records.tobytes())
    f.flush()
    return f.tell()


def read_records(path: Path, width: int = 3) -> np.ndarray:
    """The record's detections: ``(N, width)`` float32 ``(x, y, score, p_1 … p_K)``
    (``width`` = 3 + K)."""
    return np.fromfile(path, dtype="<f4").reshape(-1, width)


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``"threshold 3.0 → 0.2, formats csv,geojson,png → csv"``: the settings that differ."""

    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.6g}"
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ",".join(value) or "none"
        if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            return "(" + ", ".join(show(v) for v in value) + ")"
        return str(value)

    parts = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        a, b = show(old.get(key, "none")), show(new.get(key, "none"))
        if key == "input":
            parts.append("input (another file of the same name)")
        elif len(a) + len(b) <= 60:
            parts.append(f"{key} {a} → {b}")
        else:
            parts.append(key)
    return ", ".join(parts)
