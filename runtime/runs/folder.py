"""Where a run puts its files: what a user reads in the output folder, the bookkeeping in
one hidden folder inside it.

An input ``NAME`` leaves in the output folder ``OUT`` only its results, by format:
``NAME.csv``, ``NAME.geojson``, ``NAME.overlay.png``; and the run leaves
``run_summary.csv``. Everything else lives in ``OUT/.micronet/`` (:data:`HIDDEN`):

- ``NAME.progress.json`` and ``NAME.progress.bin``: the input's record (settings,
  progress, checksums; the detections);
- ``NAME.csv.partial`` …: the outputs while they are written, renamed into ``OUT``
  when the input is finished;
- ``NAME.lock`` while a run holds the input, ``run_summary.lock`` while a run merges
  its rows into the summary.

:class:`OutputFolder` names these paths; :func:`written_by_a_run` says whether a file is
an output a run recorded (so it is never taken as an input).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..files import make_folder, name_max

__all__ = ["FORMATS", "HIDDEN", "PARTIAL", "SUFFIXES", "SUMMARY", "OutputFolder", "written_by_a_run"]

log = logging.getLogger(__name__)

FORMATS = ("csv", "geojson", "png")
SUFFIXES = {"csv": ".csv", "geojson": ".geojson", "png": ".overlay.png"}
PARTIAL = ".partial"  # what an output is called (in the hidden folder) until its input is finished
HIDDEN = ".micronet"  # the records, partial outputs and locks of a folder's runs
SUMMARY = "run_summary.csv"
RECORD = ".progress.json"
LONGEST = max(SUFFIXES.values(), key=len) + PARTIAL  # the longest name made from a stem


@dataclass(frozen=True)
class OutputFolder:
    """The paths of one output folder (see the module docstring).

    >>> folder = OutputFolder(Path("results"))
    >>> folder.output("a", "png"), folder.record("a")
    (PosixPath('results/a.overlay.png'), PosixPath('results/.micronet/a.progress.json'))
    """

    dir: Path

    @property
    def hidden(self) -> Path:
        return self.dir / HIDDEN

    def output(self, stem: str, fmt: str) -> Path:
        """Where format ``fmt`` of input ``stem`` ends up."""
        return self.dir / f"{stem}{SUFFIXES[fmt]}"

    def partial(self, stem: str, fmt: str) -> Path:
        """Where format ``fmt`` is written until the input is finished."""
        return self.hidden / f"{stem}{SUFFIXES[fmt]}{PARTIAL}"

    def record(self, stem: str) -> Path:
        return self.hidden / f"{stem}{RECORD}"

    def records_bin(self, stem: str) -> Path:
        return self.hidden / f"{stem}.progress.bin"

    def lock(self, stem: str) -> Path:
        return self.hidden / f"{stem}.lock"

    @property
    def summary(self) -> Path:
        return self.dir / SUMMARY

    def make(self) -> None:
        """Makes the folder and its hidden folder (a symbolic link or a file where the
        hidden folder belongs is refused: :func:`~micronet.runtime.files.make_folder`)."""
        make_folder(self.dir)
        make_folder(self.hidden)

    def check_stem(self, stem: str, input_name: str = "") -> None:
        """Refuses a stem whose longest file name (``stem.overlay.png.partial``) the
        file system would refuse, before anything is written.

        Raises:
            InputError: one line naming the input and the lengths.
        """
        longest = f"{stem}{LONGEST}"
        limit = name_max(self.dir)
        if len(longest.encode("utf-8", "surrogateescape")) > limit:
            room = limit - len(LONGEST) + (len(input_name) - len(stem) if input_name else 0)
            name = input_name or stem
            raise InputError(
                f"{name[:40]}…: a name of {len(name)} characters leaves no room for its output names "
                f"({len(longest)} characters with {LONGEST}; this file system allows {limit}); "
                f"rename the input to at most {max(1, room)} characters"
            )

    def legacy_record(self, stem: str) -> Path:
        """Where records lived before the hidden folder (``OUT/NAME.progress.json``)."""
        return self.dir / f"{stem}{RECORD}"


def written_by_a_run(path: Path) -> str | None:
    """What a run recorded ``path`` as, when it is an output of a finished input in its
    folder (``"overlay of a.png"``), else ``None``. Reads one record: the one an output
    of this name would have (``NAME.overlay.png`` → ``NAME``'s)."""
    folder = OutputFolder(path.parent)
    for fmt, suffix in SUFFIXES.items():
        if not path.name.endswith(suffix) or len(path.name) == len(suffix):
            continue
        stem = path.name[: -len(suffix)]
        for record in (folder.record(stem), folder.legacy_record(stem)):
            try:
                state = json.loads(record.read_text(encoding="utf-8"))
                recorded = state["outputs"][fmt]["file"]
                source = state["settings"]["input"]["name"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if recorded == path.name:
                return f"{'the overlay' if fmt == 'png' else 'the ' + fmt.upper()} of {source}"
    return None
