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
from pathlib import Path
from typing import Any

from ..files import FileLock, check_target, replace_atomically
from .folder import HIDDEN

__all__ = ["DONE", "RUNNING_ELSEWHERE", "SUMMARY_FIELDS", "merge_rows", "read_summary", "write_summary"]

log = logging.getLogger(__name__)

SUMMARY_FIELDS = ("input", "status", "nuclei", "megapixels", "seconds", "worker", "error", "tissue_mm2", "classes")
# tissue_mm2: a slide's tissue area (runs.slide_summary); classes: "name=count;…" with a class head
RUNNING_ELSEWHERE = "running elsewhere"
DONE = ("ok", "skipped")  # statuses a row of another run's "running elsewhere" never replaces


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
