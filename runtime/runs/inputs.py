"""The inputs of a run into an output folder, settled before anything runs: files and
folders as given, folders expanded, and every input checked against the outputs the run
will write.

- A file the SDK wrote (an overlay recorded in its folder's ``.micronet/``) is never an
  input: in a folder it is passed over, given by name it is refused. Running into the
  folder the images came from therefore finds the same inputs every time.
- An input whose outputs would land on another input of the run (``a.png``'s overlay
  is ``a.overlay.png``) or on the run's summary (``run_summary.png``'s CSV is
  ``run_summary.csv``) is refused, with or without ``--overwrite``.
- Inputs given on the command line must exist and be regular files (a FIFO or a
  symbolic-link loop is named as such); the entries of a manifest that do not become
  refused rows, and the others run.

>>> planned = plan_inputs([Path("images")], [], Path("results"), ("csv", "png"))   # doctest: +SKIP
>>> planned.files, planned.refused                                               # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError, MicronetError
from ..files import regular_file
from ..images import IMAGE_SUFFIXES
from ..slide.reader import SLIDE_SUFFIXES
from .folder import OutputFolder, written_by_a_run
from .slide_outputs import output_stem
from .summary import SummaryRow

__all__ = ["INPUT_SUFFIXES", "PlannedInputs", "plan_inputs"]

log = logging.getLogger(__name__)

INPUT_SUFFIXES = tuple(dict.fromkeys(IMAGE_SUFFIXES + SLIDE_SUFFIXES))
_WHAT = {"csv": "CSV", "geojson": "GeoJSON", "png": "overlay"}


@dataclass
class PlannedInputs:
    """What a run will do with what it was given.

    Attributes:
        files: the inputs to run, in order.
        refused: a ``failed`` summary row per input that will not run (``input``,
            ``status``, ``error``, ``exception``).
        passed_over: files in the given folders that runs wrote (overlays), not inputs.
    """

    files: list[Path] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    passed_over: list[Path] = field(default_factory=list)

    def refuse(self, path: Path, error: MicronetError) -> None:
        self.refused.append(dict(SummaryRow(str(path), "failed", error=str(error), outcome="failed", exception=error)))


def plan_inputs(given: Sequence[Path], listed: Sequence[Path], out: Path, formats: Sequence[str]) -> PlannedInputs:
    """The inputs of a run (see the module docstring).

    Args:
        given: files and folders from the command line: an error in one raises.
        listed: the entries of a manifest: an error in one refuses that entry.
        out: the output folder.
        formats: the formats the run writes.

    Raises:
        MissingFileError, InputError: a given input that is missing, not a regular file
            or folder, of an unknown kind, a folder without images, or a file a run
            wrote; two inputs with the same output name.
    """
    planned = PlannedInputs()
    for item in given:
        planned.files += _expand(item, planned)
    for item in listed:
        try:
            planned.files += _expand(item, planned)
        except MicronetError as exc:
            planned.refuse(item, exc)
    if planned.passed_over:
        log.info("passed over %d file(s) that micronet detect wrote (overlays), e.g. %s", len(planned.passed_over), planned.passed_over[0])
    stems = [output_stem(f) for f in planned.files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise InputError(f"inputs with the same name would write the same outputs: {', '.join(duplicates)}")
    _refuse_collisions(planned, OutputFolder(out), formats)
    return planned


def _expand(item: Path, planned: PlannedInputs) -> list[Path]:
    """A file as given; a folder as the images and slides inside it (sorted, not
    recursive), passing over files that runs wrote."""
    regular_file(item, "input", folder_ok=True)
    if not item.is_dir():
        if item.suffix.lower() not in INPUT_SUFFIXES:
            raise InputError(f"{item}: expected an image or slide file ({', '.join(INPUT_SUFFIXES)}), got {item.suffix or 'no suffix'!r}")
        ours = written_by_a_run(item)
        if ours is not None:
            raise InputError(f"{item}: {ours}, written by micronet detect (recorded in {OutputFolder(item.parent).hidden}); not an input")
        return [item]
    found = []
    for path in sorted(p for p in item.iterdir() if p.suffix.lower() in INPUT_SUFFIXES and p.is_file()):
        if written_by_a_run(path) is not None:
            planned.passed_over.append(path)
        else:
            found.append(path)
    if not found:
        ours = f" other than {len(planned.passed_over)} that micronet detect wrote" if planned.passed_over else ""
        raise InputError(f"{item}: no images ({', '.join(IMAGE_SUFFIXES)}) or slides in this folder{ours}")
    return found


def _refuse_collisions(planned: PlannedInputs, folder: OutputFolder, formats: Sequence[str]) -> None:
    """Moves to ``refused`` every input one of whose outputs would be the run's summary
    or another input of the run."""
    inputs = {os.path.realpath(f): f for f in planned.files}
    summary = os.path.realpath(folder.summary)
    keep = []
    for path in planned.files:
        problem = None
        for fmt in formats:
            target = os.path.realpath(folder.output(output_stem(path), fmt))
            if target == summary:
                problem = f"its {_WHAT[fmt]} would be {folder.summary}, the run's summary; rename the input"
            elif target in inputs:
                other = inputs[target]
                problem = f"its {_WHAT[fmt]} would replace {other}, an input of this run; choose another --out, or rename one"
            if problem:
                break
        if problem:
            planned.refuse(path, InputError(f"{path.name}: {problem}"))
        else:
            keep.append(path)
    planned.files = keep
