"""The output files of one input in an output folder: complete or absent, never mixed.

An input ``NAME`` (an image or a slide) leaves in its output folder, by format,
``NAME.csv``, ``NAME.geojson`` and ``NAME.overlay.png``, and its record:
``NAME.progress.json`` (the settings, the progress, and once finished the size and
SHA-256 of every output) and ``NAME.progress.bin`` (the detections, float32
``(x, y, score)`` rows, so damaged outputs are rewritten without running the model).
Three rules keep a folder honest:

- **One writer per input.** :class:`OutputLock` holds an OS lock (``flock``) on
  ``NAME.lock``, taken before any file of the input is touched; the OS drops it when
  the process dies, however it dies. The file names the holder (PID and command), so
  a second run refuses at once saying who, or waits for it (``wait=True``).
- **Complete or absent.** Outputs are written as ``NAME.csv.partial`` … and renamed
  to their final names only once the input is finished and the record holds their
  checksums. A killed run, a full disk or Ctrl-C leaves ``.partial`` files and an
  unfinished record, never a final name on an unfinished file.
- **Reruns verify, resume or refuse.** :meth:`InputOutputs.check` compares the record's
  settings (the parameters that shape the result: model file hash, threshold, pixel
  size, test-time augmentation, formats, tile plan …) with this run's. The same and
  finished: every output is checked against its checksum, and a missing, truncated,
  overwritten or swapped one is rewritten from the stored detections. The same and
  unfinished: resumed (slides). Other settings: refused, naming them, unless
  overwriting, which first removes every output of the input in every format, so
  nothing stale stays looking current.

``MICRONET_FAULT_AT`` (a point name) with ``MICRONET_FAULT_AFTER_TILES`` (a tile count,
default 0) and ``MICRONET_FAULT_SIGNAL`` (``KILL``, default; ``INT``; ``STOP``) make a
run signal itself at that point (:func:`fault_point`): the fault-injection tests kill,
interrupt or pause runs at exact places with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..detections import Detections
from ..errors import InputError, InputTypeError
from ..files import FileLock, OutputWriteError, file_sha256, replace_atomically, writing  # re-exported

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "PARTIAL",
    "OutputWriteError",
    "OutputLock",
    "InputOutputs",
    "ImageOutputs",
    "InputRun",
    "Verdict",
    "check_formats",
    "fingerprint",
    "file_digest",
    "file_sha256",
    "detector_settings",
    "model_digest",
    "replace_atomically",
    "writing",
    "append_records",
    "read_records",
    "fault_point",
]

log = logging.getLogger(__name__)

FORMATS = ("csv", "geojson", "png")
SUFFIXES = {"csv": ".csv", "geojson": ".geojson", "png": ".overlay.png"}
PARTIAL = ".partial"  # what an output is called until its input is finished
RECORD_FORMAT = "micronet-outputs/1"
OVERWRITE_HINT = "pass --overwrite (resume=False in Python) to replace all outputs of"
# Settings added after records were first written, with the value every run before them
# had: a record without one was made at that value (no test-time augmentation before
# ``tta``), so its outputs stay current for a rerun at it, and other values are refused.
SETTINGS_SINCE = {"tta": False}


def check_formats(formats: Any) -> tuple[str, ...]:
    """Output format names (a sequence, or one comma-separated string) as a tuple in
    :data:`FORMATS` order; a ``ValueError`` lists the valid names."""
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    try:
        names = tuple(formats)
    except TypeError:
        raise InputTypeError(f"formats: expected a sequence of format names ({', '.join(FORMATS)}), got {type(formats).__name__}") from None
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise InputError(f"formats: expected one or more of {', '.join(FORMATS)}, got {list(names)!r}")
    return tuple(f for f in FORMATS if f in names)


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
        # Recorded only when set, so outputs made before the option existed still match.
        **({"normalize": detector.normalize} if getattr(detector, "normalize", None) else {}),
    }


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


def append_records(f: IO[bytes], xy: np.ndarray, scores: np.ndarray) -> int:
    """Appends detections to the record as little-endian float32 ``(x, y, score)`` rows;
    returns the file's length."""
    records = np.concatenate([np.asarray(xy, np.float32).reshape(-1, 2), np.asarray(scores, np.float32)[:, None]], axis=1).astype("<f4")
    f.write(records.tobytes())
    f.flush()
    return f.tell()


def read_records(path: Path) -> np.ndarray:
    """The record's detections: ``(N, 3)`` float32 ``(x, y, score)``."""
    return np.fromfile(path, dtype="<f4").reshape(-1, 3)


def fault_point(name: str, tiles_done: int = 0) -> None:
    """Signals this process when ``MICRONET_FAULT_AT`` names this point and at least
    ``MICRONET_FAULT_AFTER_TILES`` tiles are done (see the module docstring); a no-op
    otherwise. Fires once per process."""
    if os.environ.get("MICRONET_FAULT_AT") != name or tiles_done < int(os.environ.get("MICRONET_FAULT_AFTER_TILES", "0")):
        return
    os.environ.pop("MICRONET_FAULT_AT")
    how = os.environ.get("MICRONET_FAULT_SIGNAL", "KILL").upper()
    os.kill(os.getpid(), getattr(signal, f"SIG{how}"))
    if how == "INT":
        time.sleep(1.0)  # the KeyboardInterrupt arrives here


# --- the lock ---------------------------------------------------------------------------------


class OutputLock(FileLock):
    """An exclusive lock on the outputs of one input in a folder: a :class:`FileLock`
    on ``<stem>.lock``.

    >>> with OutputLock(out_dir, "slide"):        # doctest: +SKIP
    ...     ...                                   # write slide.csv etc.

    Args:
        out_dir: the output folder (made when missing).
        stem: the name the input's outputs start with.
        wait: wait for another run holding the lock instead of refusing.

    Raises:
        InputError: another process holds the lock (and ``wait`` is false); the message
            names its PID and command.
        OutputWriteError: the lock file cannot be made (read-only folder …).
    """

    def __init__(self, out_dir: str | os.PathLike[str], stem: str, wait: bool = False) -> None:
        self.dir = Path(out_dir)
        self.stem = stem
        busy = f"{stem}: its outputs in {self.dir} are being written by another run"
        super().__init__(self.dir / f"{stem}.lock", busy=busy, wait=wait, what=f"the outputs of {stem}")

    def _open_and_lock(self) -> int:
        try:
            return super()._open_and_lock()
        except InputError as exc:
            raise InputError(f"{exc}; wait for it to finish, or pass --wait (wait=True) to wait for it") from None


# --- the outputs of one input ------------------------------------------------------------------


@dataclass
class Verdict:
    """What :meth:`InputOutputs.check` found in the folder.

    Attributes:
        action: ``"new"`` (start, removing whatever is there), ``"resume"`` (an unfinished
            run with the same settings) or ``"finished"``.
        damaged: for ``"finished"``: format → what is wrong with its file (missing,
            truncated, changed).
    """

    action: str
    damaged: dict[str, str] = field(default_factory=dict)


@dataclass
class InputRun:
    """One input run into an output folder.

    Attributes:
        detections: what was found (for a finished run, what its record holds).
        outcome: ``"ran"``, ``"resumed"`` or ``"finished already"``.
        rewritten: output files rewritten because they were missing or damaged.
        megapixels: the input's (or region's) size.
        seconds: time spent in this call.
        mpp: the pixel size used (µm/px), and ``mpp_source`` where it came from.
    """

    detections: Detections
    outcome: str
    rewritten: list[str] = field(default_factory=list)
    megapixels: float = 0.0
    seconds: float = 0.0
    mpp: float | None = None
    mpp_source: str = ""


class InputOutputs:
    """The output files of one input and their record (see the module docstring).

    Subclasses write the formats (:class:`ImageOutputs` at once,
    :class:`~micronet.runtime.runs.slide_outputs.SlideOutputs` batch by batch); this class
    decides what a run does with what is already there, and finishes the files.

    Args:
        out_dir: the folder.
        stem: the name the files start with.
        formats: of :data:`FORMATS`, as :func:`check_formats` returns them.

    Attributes:
        paths: format → final file (all formats, also those not written).
        state_path, bin_path: the record.
        state: the record as last saved.
    """

    def __init__(self, out_dir: Path, stem: str, formats: tuple[str, ...]) -> None:
        self.dir = Path(out_dir)
        self.stem = stem
        self.formats = formats
        self.paths = {f: self.dir / f"{stem}{SUFFIXES[f]}" for f in FORMATS}
        self.state_path = self.dir / f"{stem}.progress.json"
        self.bin_path = self.dir / f"{stem}.progress.bin"
        self.state: dict[str, Any] = {}

    def partial(self, fmt: str) -> Path:
        """Where format ``fmt`` is written until the input is finished."""
        path = self.paths[fmt]
        return path.with_name(path.name + PARTIAL)

    # -- what is there --

    def load_state(self) -> dict[str, Any] | None:
        """The record, or ``None`` when there is none (or it is not one of ours)."""
        if not self.state_path.is_file():
            return None
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s)", self.state_path, exc)
            return None
        if not isinstance(state, dict) or state.get("format") != RECORD_FORMAT or not isinstance(state.get("settings"), dict):
            log.warning("%s is not a record of this MicroNet version", self.state_path)
            return None
        return state

    def check(self, settings: dict[str, Any], overwrite: bool = False) -> Verdict:
        """What this run does with the files already in the folder.

        Raises:
            InputError: outputs of a run with other settings (naming them), or outputs
                with no record of the run that made them; unless ``overwrite``.
        """
        if overwrite:
            return Verdict("new")
        state = self.load_state()
        if state is None:
            there = [p.name for p in self.paths.values() if p.exists()]
            if there:
                raise InputError(
                    f"{', '.join(there)}: already in {self.dir} with no record of the run that wrote "
                    f"{'it' if len(there) == 1 else 'them'} ({self.state_path.name}); {OVERWRITE_HINT} {self.stem}"
                )
            return Verdict("new")
        recorded, wanted = ({**SETTINGS_SINCE, **s} for s in (state["settings"], settings))
        if recorded != wanted:
            changes = describe_changes(recorded, wanted)
            what = "were made" if state.get("complete") else "are an unfinished run"
            raise InputError(f"{self.stem}: the outputs in {self.dir} {what} with other settings ({changes}); {OVERWRITE_HINT} {self.stem}")
        self.state = state
        if not state.get("complete"):
            return Verdict("resume")
        problem = self._damage(self.bin_path, state.get("records"))
        if problem is None and len(read_records(self.bin_path)) != state.get("detections"):
            problem = "holds another number of detections than its record"
        if problem is not None:
            log.warning("%s: %s; running this input again", self.bin_path.name, problem)
            return Verdict("new")
        outputs = state.get("outputs", {})
        damaged = {f: why for f in self.formats if (why := self._damage(self.paths[f], outputs.get(f))) is not None}
        return Verdict("finished", damaged)

    @staticmethod
    def _damage(path: Path, expected: dict[str, Any] | None) -> str | None:
        """What is wrong with a file against its recorded digest, or ``None``."""
        if expected is None:
            return "not in the record"
        if not path.is_file():
            return "missing"
        size = path.stat().st_size
        if size < expected["bytes"]:
            return f"truncated or replaced ({size} of {expected['bytes']} bytes)"
        if size != expected["bytes"] or file_digest(path)["sha256"] != expected["sha256"]:
            return "changed since it was written (checksum differs)"
        return None

    def records(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored detections ``(xy (N, 2), scores (N,))`` float32, in written order."""
        records = read_records(self.bin_path)
        return records[:, :2].copy(), records[:, 2].copy()

    # -- starting and finishing --

    def start(self, settings: dict[str, Any], **state: Any) -> None:
        """Removes every output of the input (all formats, finished or partial) and its
        record, then saves a new, unfinished record with ``settings`` and ``state``."""
        # Outputs go before the new record exists: a kill in between leaves the old
        # record with its outputs missing (a rerun rewrites them), never the new record
        # next to old outputs.
        for fmt in FORMATS:
            for path in (self.paths[fmt], self.partial(fmt)):
                with writing(path):
                    path.unlink(missing_ok=True)
        with writing(self.bin_path):
            self.bin_path.unlink(missing_ok=True)
        self.state = {"format": RECORD_FORMAT, "settings": settings, "complete": False, "detections": 0, **state}
        self.save_state()

    def save_state(self) -> None:
        """Replaces the record atomically with :attr:`state`."""
        text = json.dumps(self.state, indent=1)
        replace_atomically(self.state_path, lambda p: p.write_text(text, encoding="utf-8"))

    def finish_outputs(self, summary: dict[str, Any]) -> None:
        """Records the partial files' sizes and checksums and ``summary`` in a finished
        record, then gives the files their final names."""
        outputs = {f: {"file": self.paths[f].name, **file_digest(self.partial(f))} for f in self.formats}
        self.state.update(summary, complete=True, outputs=outputs, records={"file": self.bin_path.name, **file_digest(self.bin_path)})
        self.save_state()
        fault_point("finish:recorded")
        # A kill among these renames leaves finished partials that a rerun renames.
        for fmt in self.formats:
            with writing(self.paths[fmt]):
                os.replace(self.partial(fmt), self.paths[fmt])
            fault_point(f"finish:renamed:{fmt}")

    def repair(self, damaged: dict[str, str], write: Callable[[str, Path], None]) -> list[str]:
        """Rewrites the damaged outputs of a finished run: a finished partial file (left
        by a kill among the final renames) is renamed, anything else rewritten by
        ``write(fmt, path)`` from the stored detections. Returns the files rewritten."""
        rewritten = []
        for fmt, why in damaged.items():
            final, part = self.paths[fmt], self.partial(fmt)
            expected = self.state["outputs"].get(fmt)
            with writing(part):
                if expected is None or self._damage(part, expected) is not None:
                    write(fmt, part)
                    digest = file_digest(part)
                    if expected is None or digest != {k: expected[k] for k in ("bytes", "sha256")}:
                        # Not what was written then (another Pillow encodes PNGs its own
                        # way): record what is there now.
                        self.state["outputs"][fmt] = {"file": final.name, **digest}
                        self.save_state()
                os.replace(part, final)
            log.warning("%s: %s; rewritten from the stored detections", final.name, why)
            rewritten.append(final.name)
        return rewritten


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


class ImageOutputs(InputOutputs):
    """The outputs of one plain image, all written at once when it is done: ``NAME.csv``
    (header ``x,y,score``, :meth:`Detections.to_csv`), ``NAME.geojson``
    (:meth:`Detections.to_geojson`), ``NAME.overlay.png`` (:meth:`Detections.to_overlay`)."""

    def write(self, found: Detections, image: Callable[[], np.ndarray]) -> None:
        """Writes every format and the record under partial names, then finishes them.
        ``image()`` gives the ``(H, W, 3)`` uint8 image (for the overlay)."""
        for fmt in self.formats:
            with writing(self.partial(fmt)):
                self.write_format(fmt, self.partial(fmt), found, image)
            fault_point(f"image:wrote:{fmt}")
        with writing(self.bin_path), open(self.bin_path, "wb") as f:
            append_records(f, found.xy, found.scores)
        self.finish_outputs({"detections": len(found)})

    @staticmethod
    def write_format(fmt: str, path: Path, found: Detections, image: Callable[[], np.ndarray]) -> None:
        """Writes one format of ``found`` to ``path``."""
        if fmt == "csv":
            found.to_csv(path)
        elif fmt == "geojson":
            found.to_geojson(path)
        else:
            found.to_overlay(image(), path)
