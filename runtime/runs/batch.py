"""Detecting inputs into an output folder, one at a time: :func:`process_input` takes one
image or slide to its output files and returns its :class:`SummaryRow`.

>>> from micronet.runtime.runs.batch import RunSettings, process_input   # doctest: +SKIP
>>> row = process_input(detector, "a.png", "results", RunSettings(formats=("csv",)))  # doctest: +SKIP
>>> row.status, row.nuclei                                          # doctest: +SKIP
('ok', 412)

It is a plain function of ``(detector, path, out_dir, settings)`` that turns its own
failures into a ``failed`` row, so a batch goes on past a bad input and the same
function runs per input in this process or on Ray workers
(:func:`micronet.runtime.runs.cohort.run_cohort` with
``functools.partial(process_input, out_dir=..., settings=...)``). Every input, slide or
plain image, runs through :func:`~micronet.runtime.runs.run_input.run_input` (over a
:class:`~micronet.runtime.runs.slide_run.SlideSource` or an
:class:`~micronet.runtime.runs.image_run.ImageSource`), which takes the input's lock and
keeps its outputs complete or absent (:mod:`micronet.runtime.runs.outputs`).

Also here: :func:`check_out_dir` (is the folder usable, before any model loads),
:func:`is_slide`, and :func:`images_without_mpp` (the images that record no pixel size).
"""

from __future__ import annotations

import logging
import os
import time
from os import PathLike
from pathlib import Path
from typing import Any

from ..errors import InputError, MicronetError, MissingFileError
from ..files import BusyError, regular_file
from ..images import IMAGE_SUFFIXES, image_pixel_size
from ..slide.reader import SLIDE_SUFFIXES, slide_suffix  # the one registry; re-exported
from .folder import OutputFolder, written_by_a_run
from .image_run import MPP_ASSUMED, ImageSource, run_image  # re-exported
from .outputs import InputRun, OutputWriteError
from .run_input import InputSource, RunSettings, run_input  # RunSettings re-exported
from .summary import RUNNING_ELSEWHERE, SummaryRow  # re-exported

__all__ = [
    "RunSettings",
    "SummaryRow",
    "process_input",
    "run_image",
    "check_out_dir",
    "is_slide",
    "images_without_mpp",
    "SLIDE_SUFFIXES",
    "MPP_ASSUMED",
]

log = logging.getLogger(__name__)

SLIDE_MIN_SIDE = 10_000  # a plain TIFF larger than this (px) on a side is read as a slide


def process_input(detector: Any, path: str | PathLike[str], out_dir: str | PathLike[str], settings: RunSettings = RunSettings()) -> SummaryRow:
    """Detects nuclei in one image or slide and writes its outputs to ``out_dir``.

    Never raises for what goes wrong with the input (a damaged file, a full disk,
    outputs of other settings, a file a run wrote given as an input …): that is a
    ``failed`` row whose ``error`` is one line (and whose ``exception`` is the
    exception). Another run holding the input is a ``running elsewhere`` row (that run
    writes the outputs, and its own row). Only ``KeyboardInterrupt`` and the like pass
    through, leaving partial files that a rerun resumes.

    Args:
        detector: the :class:`~micronet.runtime.detector.Detector`.
        path: an image (PNG, JPEG, TIFF) or slide file (:func:`is_slide`).
        out_dir: the output folder.
        settings: formats, pixel size, overwrite, wait, progress.

    Returns:
        The input's :class:`SummaryRow`.
    """
    path = Path(path)
    started = time.perf_counter()
    kind = ""
    try:
        regular_file(path)  # missing, a FIFO (never opened: a read would wait forever), a link loop
        ours = written_by_a_run(path)
        if ours is not None:
            raise InputError(f"{path.name}: {ours}, written by micronet detect (its record is in {OutputFolder(path.parent).hidden}); not an input")
        kind = "slide" if is_slide(path) else "image"
        run = run_input(detector, _source(kind, path), out_dir, settings)
    except Exception as exc:
        if not isinstance(exc, MicronetError):
            # Not something the input's owner can fix: keep the traceback in the log.
            log.error("%s: unexpected error", path, exc_info=True)
        status = RUNNING_ELSEWHERE if isinstance(exc, BusyError) else "failed"
        return SummaryRow(
            str(path), status, seconds=round(time.perf_counter() - started, 3), error=one_line(exc), kind=kind, outcome=status,
            backend=getattr(detector, "backend_name", ""), exception=exc,
        )  # fmt: skip
    return SummaryRow(
        str(path), "skipped" if run.outcome == "finished already" else "ok", nuclei=len(run.detections), megapixels=round(run.megapixels, 3),
        seconds=round(time.perf_counter() - started, 3), kind=kind, outcome=run.outcome, rewritten=run.rewritten, mpp=run.mpp,
        mpp_source=run.mpp_source, backend=getattr(detector, "backend_name", ""), **_class_columns(run),
    )  # fmt: skip


def _source(kind: str, path: Path) -> InputSource:
    """The input as :func:`run_input` runs it, a slide or a plain image."""
    if kind == "slide":
        from .slide_run import SlideSource  # the slide pipeline's imports only when a slide comes

        return SlideSource(path)
    return ImageSource(path)


def _class_columns(run: InputRun) -> dict[str, Any]:
    """A slide's tissue area, with a class head the count per class (an image's too), the
    input's colour distance and edge blur where they were measured, and a slide's tiles
    out of focus ("k/n")."""
    found = run.detections
    counts = found.class_counts() if found.class_names else {}
    tissue = None if run.summary is None else run.summary.get("tissue_mm2")
    focus = {} if run.summary is None else run.summary.get("focus") or {}

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(float(value), 4)

    return {
        "tissue_mm2": tissue,
        "classes": ";".join(f"{n}={c}" for n, c in counts.items()),
        "colour_distance": rounded(found.colour_distance),
        "edge_blur_um": rounded(found.edge_blur_um),
        "tiles_out_of_focus": f"{focus['tiles_out_of_focus']}/{focus['tiles']}" if focus else "",
    }


def one_line(exc: BaseException) -> str:
    """An exception as one line: an SDK error's message, anything else with its type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, MicronetError) else f"{type(exc).__name__}: {text}".rstrip(": ")


def images_without_mpp(paths: list[Path]) -> list[Path]:
    """The plain images among ``paths`` that record no pixel size (those that cannot
    be read are left to fail on their own turn)."""
    missing = []
    for path in paths:
        try:
            if not is_slide(path) and image_pixel_size(path) is None:
                missing.append(path)
        except (MicronetError, OSError):
            continue
    return missing


def is_slide(path: Path) -> bool:
    """Whether a file is read as a whole slide rather than as one image: a slide suffix
    (``.svs``, ``.ndpi``, ``.mrxs``, ``.ome.tif`` …) or a TIFF larger than 10,000 px on a
    side."""
    suffix = slide_suffix(path)
    if suffix in SLIDE_SUFFIXES and suffix not in IMAGE_SUFFIXES:
        return True
    if suffix in IMAGE_SUFFIXES and suffix in SLIDE_SUFFIXES:  # .tif / .tiff: by size
        import tifffile

        regular_file(path)  # never opens a FIFO (a read would wait forever)
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return max(int(page.imagelength), int(page.imagewidth)) > SLIDE_MIN_SIDE
        except (tifffile.TiffFileError, OSError, IndexError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise MissingFileError(f"input not found: {path}") from exc
            raise InputError(f"{path}: not a readable TIFF ({exc})") from exc
    return False


def check_out_dir(out_dir: str | PathLike[str]) -> Path:
    """Makes the output folder and checks that files can be created in it, so that a
    run fails before any model loads rather than after the first input.

    Raises:
        InputError: the path, or a folder above it, is a file.
        OutputWriteError: the folder cannot be made or written (read-only file system,
            no permission, full disk).
    """
    out = Path(out_dir)
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is a file" if folder == out else f"lies under {folder}, which is a file"
                raise InputError(f"output folder {out} {what}; expected a folder")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc
    probe = out / f".micronet-write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputWriteError(f"the output folder {out} is not writable: {exc.strerror or exc}") from exc
    OutputFolder(out).make()  # a link or a file where .micronet/ belongs fails now
    return out

