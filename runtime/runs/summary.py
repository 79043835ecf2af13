"""``run_summary.csv``: one row per input of every run into an output folder, merged
under a lock, so that runs side by side (or one after another) leave one truthful table.

Each row says what became of an input (:data:`SUMMARY_FIELDS`): ``ok`` (run by the run
that wrote the row), ``skipped`` (finished already: outputs verified, damaged ones
rewritten), ``failed`` (with one line saying why), or ``running elsewhere`` (another
run held the input; that run writes its own row). :func:`write_summary` merges a run's
rows into the file by input while holding ``.micronet/run_summary.lock``: a run's row
replaces the input's earlier row, except that ``running elsewhere`` never replaces a
row that says the input was done (``ok`` or ``skipped``), whichever run finishes last.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..files import FileLock, check_target, replace_atomically
from .folder import HIDDEN

__all__ = ["DONE", "RUNNING_ELSEWHERE", "SUMMARY_FIELDS", "SummaryRow", "merge_rows", "read_summary", "write_summary"]

log = logging.getLogger(__name__)

SUMMARY_FIELDS = (
    "input", "status", "nuclei", "megapixels", "seconds", "worker", "error", "tissue_mm2", "classes", "colour_distance", "edge_blur_um",
    "tiles_out_of_focus",
)  # fmt: skip
# tissue_mm2: a slide's tissue area (runs.slide_summary); classes: "name=count;…" with a class head;
# colour_distance, edge_blur_um: how far its colours and focus lie from the training data's;
# tiles_out_of_focus: a slide's tiles beyond the focus threshold (its summary.json lists them)
RUNNING_ELSEWHERE = "running elsewhere"
DONE = ("ok", "skipped")  # statuses a row of another run's "running elsewhere" never replaces


@dataclass
class SummaryRow:
    """One input's line of ``run_summary.csv`` (the columns of :data:`SUMMARY_FIELDS`),
    and more: the one row type of a run, made by
    :func:`~micronet.runtime.runs.batch.process_input` for every input it runs, by
    :mod:`~micronet.runtime.runs.inputs` for an input refused before the run and by
    :mod:`~micronet.runtime.runs.cohort` for one whose worker was lost.

    ``dict(row)`` gives every field, as :func:`~micronet.runtime.runs.cohort.run_cohort`
    and :func:`write_summary` take rows.

    Attributes:
        input: the input's path.
        status: ``"ok"``, ``"skipped"`` (finished already: outputs verified, the
            damaged ones rewritten), ``"running elsewhere"`` (another run holds the
            input's lock and writes its outputs) or ``"failed"``.
        nuclei: detections (``None`` when failed).
        megapixels: the input's size (a slide's region).
        seconds: time spent on it in this run.
        error: one line saying why it failed (empty otherwise).
        kind: ``"image"`` or ``"slide"`` (empty when it failed before that was known).
        outcome: ``"ran"``, ``"resumed"``, ``"finished already"``, ``"running
            elsewhere"`` or ``"failed"``.
        rewritten: output files rewritten because they were missing or damaged.
        mpp, mpp_source: the pixel size used and where it came from.
        backend: the detector's backend.
        tissue_mm2: a slide's tissue area in mm² (its ``<stem>.summary.json`` has more).
        classes: with a class head, ``name=count;…`` per phenotype.
        colour_distance: how far its colours lie from the model's training data's, in
            stops (:attr:`Detections.colour_distance`), when measured.
        edge_blur_um: how blurred its edges are, in µm (:attr:`Detections.edge_blur_um`;
            above 0.7 it is out of focus), when measured (a ``skipped`` image's come from
            the record of the run that detected it).
        tiles_out_of_focus: a slide's tiles beyond the focus threshold, "k/n" (its
            ``<stem>.summary.json`` lists them; empty for an image): sort a cohort by
            it to find the slides to rescan.
        worker: ``host:pid`` of the process that ran it (set by the cohort).
        worker_peak_rss_mb: that process's peak resident memory so far, MB (the cohort's).
        exception: the exception of a failed input, or the one saying which run holds
            it (not written to the CSV).
    """

    input: str
    status: str
    nuclei: int | None = None
    megapixels: float | None = None
    seconds: float | None = None
    error: str = ""
    kind: str = ""
    outcome: str = ""
    rewritten: list[str] = field(default_factory=list)
    mpp: float | None = None
    mpp_source: str = ""
    backend: str = ""
    tissue_mm2: float | None = None
    classes: str = ""
    colour_distance: float | None = None
    edge_blur_um: float | None = None
    tiles_out_of_focus: str = ""
    worker: str = ""
    worker_peak_rss_mb: float | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def read_summary(path: Path) -> list[dict[str, str]]:
    """The rows of a summary file; none when it is missing or empty.

    A file that is not a summary (not UTF-8 CSV, or a header without ``input`` and
    ``status``) is never overwritten: it is moved aside to
    ``run_summary.csv.unreadable-<YYYYmmdd-HHMMSS>``, with a warning naming it, and a new
    summary is begun.
    """
    if not check_target(path):
        return []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        _move_aside(path, str(exc))
        return []
    if header is None:  # an empty file: no rows to keep
        return []
    if not {"input", "status"} <= set(header):
        _move_aside(path, f"its header is {','.join(header)!r}, not {','.join(SUMMARY_FIELDS)!r}")
        return []
    return rows


def _move_aside(path: Path, why: str) -> Path:
    """Renames an unreadable summary next to itself (under the summary's lock), so that
    writing a new one loses none of its rows."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.unreadable-{stamp}")
    n = 1
    while os.path.lexists(aside):
        n += 1
        aside = path.with_name(f"{path.name}.unreadable-{stamp}-{n}")
    os.rename(path, aside)
    log.warning("%s is not a run summary (%s); moved it to %s and began a new one", path, why, aside.name)
    return aside


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` rows with ``new`` ones merged in by input (see the module docstring):
    old inputs keep their place, new inputs follow in their order."""
    fresh = {str(r.get("input")): r for r in new}
    merged = []
    for row in old:
        mine = fresh.pop(str(row.get("input", "")), None)
        keep = mine is None or (mine.get("status") == RUNNING_ELSEWHERE and row.get("status") in DONE)
        merged.append(row if keep else mine)
    return merged + [r for r in new if str(r.get("input")) in fresh]


def write_summary(path: str | Path, rows: Iterable[dict[str, Any]], merge: bool = False) -> Path:
    """Writes ``run_summary.csv`` (the columns of :data:`SUMMARY_FIELDS`), atomically.

    With ``merge``, the rows are merged into the existing file (:func:`merge_rows`)
    under an exclusive lock (``.micronet/run_summary.lock`` next to it; waiting for
    another run merging at the same moment), so several runs into one folder, at once
    or one after another, leave one summary of every input."""
    path = Path(path)
    rows = [dict(r) for r in rows]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in SUMMARY_FIELDS})

    if not merge:
        replace_atomically(path, write)
        return path
    with FileLock(path.parent / HIDDEN / f"{path.stem}.lock", wait=True, what=path.name):
        rows = merge_rows(read_summary(path), rows)
        replace_atomically(path, write)
    return path
