"""The output files of one input in an output folder: complete or absent, never mixed,
never written through a link.

An input ``NAME`` (an image or a slide) leaves in its output folder, by format,
``NAME.csv``, ``NAME.geojson`` and ``NAME.overlay.png``; its record lives in the
folder's hidden ``.micronet/`` (:mod:`micronet.runtime.runs.folder`):
``NAME.progress.json`` (the settings, the progress, and once finished the size and
SHA-256 of every output) and ``NAME.progress.bin`` (the detections, float32
``(x, y, score)`` rows, so damaged outputs are rewritten without running the model).
Four rules keep a folder honest:

- **One writer per input.** :class:`OutputLock` holds an OS lock (``flock``) on
  ``.micronet/NAME.lock``, taken before any file of the input is touched; the OS drops
  it when the process dies, however it dies. The file names the holder (PID and
  command), so a second run refuses at once saying who (:class:`BusyError`), or waits
  for it (``wait=True``).
- **Complete or absent.** Outputs are written as ``.micronet/NAME.csv.partial`` … and
  renamed to their final names only once the input is finished and the record holds
  their checksums. A killed run, a full disk or Ctrl-C leaves partial files and an
  unfinished record, never a final name on an unfinished file.
- **Reruns verify, resume or refuse.** :meth:`InputOutputs.check` compares the record's
  settings (the parameters that shape the result: model file hash, threshold, pixel
  size, test-time augmentation, formats, tile plan …) with this run's. The same and
  finished: every output is checked against its checksum, and a missing, truncated,
  overwritten or swapped one is rewritten from the stored detections. The same and
  unfinished: resumed (slides). Other settings: refused, naming them, unless
  overwriting, which first removes every output of the input in every format, so
  nothing stale stays looking current.
- **No write goes through a link.** Every file is created, truncated or appended to
  without following symbolic links (:mod:`micronet.runtime.files`); a link, folder or
  FIFO where an output, record or lock belongs is an error naming it.

``MICRONET_FAULT_AT`` (a point name) with ``MICRONET_FAULT_AFTER_TILES`` (a tile count,
default 0) and ``MICRONET_FAULT_SIGNAL`` (``KILL``, default; ``INT``; ``TERM``; ``STOP``)
make a run signal itself at that point (:func:`fault_point`): the fault-injection tests
kill, interrupt or pause runs at exact places with it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..detections import Detections
from ..errors import InputError, InputTypeError
from ..files import (  # re-exported
    BusyError,
    FileLock,
    OutputWriteError,
    UnsafeOutputError,
    check_target,
    file_sha256,
    open_output,
    replace_atomically,
    write_new,
    writing,
)
from .folder import FORMATS, PARTIAL, SUFFIXES, OutputFolder
from .records import (  # re-exported
    RECORD_FORMAT,
    SETTINGS_SINCE,
    append_records,
    describe_changes,
    detector_settings,
    file_digest,
    fingerprint,
    model_digest,
    read_records,
)

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "PARTIAL",
    "BusyError",
    "OutputWriteError",
    "UnsafeOutputError",
    "OutputLock",
    "InputOutputs",
    "ImageOutputs",
    "InputRun",
    "Verdict",
    "check_formats",
    "parse_formats",
    "describe_changes",
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

OVERWRITE_HINT = "pass --overwrite (resume=False in Python) to replace all outputs of"


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


def parse_formats(text: str) -> tuple[str, ...]:
    """A command line's ``--format`` value: ``"csv,png"`` → ``("csv", "png")``, in the
    order given, case and repeats ignored; unknown names raise, listing the valid ones."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise InputError(f"--format: expected a comma-separated list of {', '.join(FORMATS)}, got {text!r}")
    return names


def fault_point(name: str, tiles_done: int = 0) -> None:
    """Signals this process when ``MICRONET_FAULT_AT`` names this point and at least
    ``MICRONET_FAULT_AFTER_TILES`` tiles are done (see the module docstring); a no-op
    otherwise. Fires once per process."""
    if os.environ.get("MICRONET_FAULT_AT") != name or tiles_done < int(os.environ.get("MICRONET_FAULT_AFTER_TILES", "0")):
        return
    os.environ.pop("MICRONET_FAULT_AT")
    how = os.environ.get("MICRONET_FAULT_SIGNAL", "KILL").upper()
    os.kill(os.getpid(), getattr(signal, f"SIG{how}"))
    if how in ("INT", "TERM", "HUP"):
        time.sleep(1.0)  # the handler's exception arrives here


# --- the lock ---------------------------------------------------------------------------------


class OutputLock(FileLock):
    """An exclusive lock on the outputs of one input in a folder: a :class:`FileLock`
    on ``.micronet/<stem>.lock``.

    >>> with OutputLock(out_dir, "slide"):        # doctest: +SKIP
    ...     ...                                   # write slide.csv etc.

    Args:
        out_dir: the output folder (made when missing, with its hidden folder).
        stem: the name the input's outputs start with (checked to leave room for the
            longest output name on this file system).
        wait: wait for another run holding the lock instead of refusing.

    Raises:
        BusyError: another process holds the lock (and ``wait`` is false); the message
            names its PID and command.
        InputError: a stem too long for its output names.
        OutputWriteError: the lock file cannot be made (read-only folder, a link there …).
    """

    def __init__(self, out_dir: str | os.PathLike[str], stem: str, wait: bool = False) -> None:
        self.dir = Path(out_dir)
        self.stem = stem
        folder = OutputFolder(self.dir)
        folder.check_stem(stem)
        busy = f"{stem}: its outputs in {self.dir} are being written by another run"
        super().__init__(folder.lock(stem), busy=busy, wait=wait, what=f"the outputs of {stem}")

    def acquire(self) -> None:
        OutputFolder(self.dir).make()
        super().acquire()

    def _open_and_lock(self) -> int:
        try:
            return super()._open_and_lock()
        except BusyError as exc:
            raise BusyError(f"{exc}; wait for it to finish, or pass --wait (wait=True) to wait for it") from None


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
    summary: dict[str, Any] | None = None  # a slide's summary (runs.slide_summary): tissue, counts, densities


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
        state_path, bin_path: the record (in the hidden folder).
        state: the record as last saved.
    """

    record_width = 3  # float32 values per record row: (x, y, score), plus K class probabilities for a slide with classes

    def __init__(self, out_dir: Path, stem: str, formats: tuple[str, ...]) -> None:
        self.dir = Path(out_dir)
        self.folder = OutputFolder(self.dir)
        self.stem = stem
        self.formats = formats
        self.paths = {f: self.folder.output(stem, f) for f in FORMATS}
        self.state_path = self.folder.record(stem)
        self.bin_path = self.folder.records_bin(stem)
        self.state: dict[str, Any] = {}

    def partial(self, fmt: str) -> Path:
        """Where format ``fmt`` is written until the input is finished."""
        return self.folder.partial(self.stem, fmt)

    # -- what is there --

    def load_state(self) -> dict[str, Any] | None:
        """The record, or ``None`` when there is none (or it is not one of ours). A
        record from before the hidden folder (next to the outputs) is moved into it."""
        self._adopt_legacy_record()
        if not check_target(self.state_path):
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

    def _adopt_legacy_record(self) -> None:
        old_json = self.folder.legacy_record(self.stem)
        old_bin = old_json.with_name(f"{self.stem}.progress.bin")
        if check_target(self.state_path) or not check_target(old_json):
            return
        self.folder.make()
        with writing(self.bin_path):
            if check_target(old_bin):
                check_target(self.bin_path)
                os.replace(old_bin, self.bin_path)
            os.replace(old_json, self.state_path)
        log.info("%s: its record moved into %s", self.stem, self.folder.hidden)

    def check(self, settings: dict[str, Any], overwrite: bool = False) -> Verdict:
        """What this run does with the files already in the folder.

        Raises:
            InputError: outputs of a run with other settings (naming them), or outputs
                with no record of the run that made them; unless ``overwrite``.
            UnsafeOutputError: a link (or folder, FIFO …) where an output belongs.
        """
        there = [p.name for p in self.paths.values() if check_target(p)]
        if overwrite:
            return Verdict("new")
        state = self.load_state()
        if state is None:
            if there:
                raise InputError(
                    f"{', '.join(there)}: already in {self.dir} with no record of the run that wrote "
                    f"{'it' if len(there) == 1 else 'them'} ({self.folder.hidden.name}/{self.state_path.name}); {OVERWRITE_HINT} {self.stem}"
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
        if problem is None and len(read_records(self.bin_path, self.record_width)) != state.get("detections"):
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
        if not check_target(path):
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
        self.folder.make()
        for path in [*(p for f in FORMATS for p in (self.paths[f], self.partial(f))), self.bin_path]:
            with writing(path):
                if check_target(path):
                    path.unlink()
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
            self._rename(self.partial(fmt), self.paths[fmt])
            fault_point(f"finish:renamed:{fmt}")

    @staticmethod
    def _rename(part: Path, final: Path) -> None:
        with writing(final):
            check_target(part)
            check_target(final)
            os.replace(part, final)

    def repair(self, damaged: dict[str, str], write: Callable[[str, Path], None]) -> list[str]:
        """Rewrites the damaged outputs of a finished run: a finished partial file (left
        by a kill among the final renames) is renamed, anything else rewritten by
        ``write(fmt, path)`` from the stored detections. Returns the files rewritten."""
        rewritten = []
        for fmt, why in damaged.items():
            final, part = self.paths[fmt], self.partial(fmt)
            expected = self.state["outputs"].get(fmt)
            if expected is None or self._damage(part, expected) is not None:
                write_new(part, lambda p, fmt=fmt: write(fmt, p))
                digest = file_digest(part)
                if expected is None or digest != {k: expected[k] for k in ("bytes", "sha256")}:
                    # Not what was written then (another Pillow encodes PNGs its own
                    # way): record what is there now.
                    self.state["outputs"][fmt] = {"file": final.name, **digest}
                    self.save_state()
            self._rename(part, final)
            log.warning("%s: %s; rewritten from the stored detections", final.name, why)
            rewritten.append(final.name)
        return rewritten


class ImageOutputs(InputOutputs):
    """The outputs of one plain image, all written at once when it is done: ``NAME.csv``
    (header ``x,y,score``, :meth:`Detections.to_csv`), ``NAME.geojson``
    (:meth:`Detections.to_geojson`), ``NAME.overlay.png`` (:meth:`Detections.to_overlay`)."""

    def write(self, found: Detections, image: Callable[[], np.ndarray]) -> None:
        """Writes every format and the record under partial names, then finishes them.
        ``image()`` gives the ``(H, W, 3)`` uint8 image (for the overlay)."""
        for fmt in self.formats:
            write_new(self.partial(fmt), lambda p, fmt=fmt: self.write_format(fmt, p, found, image))
            fault_point(f"image:wrote:{fmt}")
        with writing(self.bin_path), open_output(self.bin_path, "w") as f:
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
