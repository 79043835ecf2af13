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
``functools.partial(process_input, out_dir=..., settings=...)``). Slides go to
:func:`~micronet.runtime.runs.slide_run.run_slide`, plain images to :func:`run_image`;
both take the input's lock and keep its outputs complete or absent
(:mod:`micronet.runtime.runs.outputs`).

Also here: :func:`check_out_dir` (is the folder usable, before any model loads),
:func:`is_slide`, and :func:`image_mpp` (the pixel size of a plain image: the caller's,
the file's own, or the model's, assumed).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any

from .. import images
from ..detections import Detections
from ..errors import InputError, MicronetError, MissingFileError
from ..files import BusyError, regular_file
from ..images import IMAGE_SUFFIXES, as_rgb_image, check_mpp, image_orientation
from ..slide.reader import SLIDE_SUFFIXES, slide_suffix  # the one registry; re-exported
from .folder import OutputFolder, written_by_a_run
from .outputs import (
    FORMATS,
    ImageOutputs,
    InputRun,
    OutputLock,
    OutputWriteError,
    check_formats,
    detector_settings,
    fault_point,
    fingerprint,
)
from .summary import RUNNING_ELSEWHERE

__all__ = ["RunSettings", "SummaryRow", "process_input", "run_image", "check_out_dir", "is_slide", "image_mpp", "SLIDE_SUFFIXES", "MPP_ASSUMED"]

log = logging.getLogger(__name__)

SLIDE_MIN_SIDE = 10_000  # a plain TIFF larger than this (px) on a side is read as a slide
MPP_ASSUMED = "assumed: the model's"  # image_mpp's source when neither caller nor file gives one


@dataclass(frozen=True)
class RunSettings:
    """How :func:`process_input` treats every input of a run.

    Attributes:
        formats: outputs to write, of ``csv``, ``geojson``, ``png``.
        mpp: the inputs' pixel size in µm/px; ``None``: each file's own (slides, and
            images that record one), else the model's.
        overwrite: replace every output of an input, whatever an earlier run left.
        wait: wait for another run writing an input's outputs instead of failing it.
        progress: progress bars for slides (``None``: when stderr is a terminal).
        reader: the slide reader, ``"auto"``, ``"tifffile"`` or ``"openslide"``.
    """

    formats: tuple[str, ...] = FORMATS
    mpp: float | None = None
    overwrite: bool = False
    wait: bool = False
    progress: bool | None = False
    reader: str = "auto"


@dataclass
class SummaryRow:
    """One input's line of ``run_summary.csv`` (the first six fields), and more.

    ``dict(row)`` gives every field, as :func:`~micronet.runtime.runs.cohort.run_cohort`
    and :func:`~micronet.runtime.runs.cohort.write_summary` take rows.

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
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


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
        if kind == "slide":
            from .slide_run import run_slide

            run = run_slide(
                detector, path, mpp=settings.mpp, out_dir=out_dir, formats=settings.formats, resume=not settings.overwrite,
                wait=settings.wait, progress=settings.progress, reader=settings.reader,
            )  # fmt: skip
        else:
            run = run_image(detector, path, out_dir, formats=settings.formats, mpp=settings.mpp, overwrite=settings.overwrite, wait=settings.wait)
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


def _class_columns(run: InputRun) -> dict[str, Any]:
    """A slide's tissue area and, with a class head, the count per class (an image's too)."""
    counts = run.detections.class_counts() if run.detections.class_names else {}
    tissue = None if run.summary is None else run.summary.get("tissue_mm2")
    return {"tissue_mm2": tissue, "classes": ";".join(f"{n}={c}" for n, c in counts.items())}


def one_line(exc: BaseException) -> str:
    """An exception as one line: an SDK error's message, anything else with its type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, MicronetError) else f"{type(exc).__name__}: {text}".rstrip(": ")


def run_image(
    detector: Any,
    path: str | PathLike[str],
    out_dir: str | PathLike[str],
    formats: Any = FORMATS,
    mpp: float | None = None,
    overwrite: bool = False,
    wait: bool = False,
) -> InputRun:
    """Detects nuclei in one plain image and writes ``NAME.csv`` (``x,y,score``),
    ``NAME.geojson`` and ``NAME.overlay.png`` (``formats`` chooses) to ``out_dir``,
    complete or absent (:class:`~micronet.runtime.runs.outputs.ImageOutputs`).

    A finished run with the same settings is not redone (its outputs are verified and
    any missing or damaged one is rewritten from the stored detections); outputs of
    other settings are refused unless ``overwrite``.

    Args:
        detector: the :class:`~micronet.runtime.detector.Detector`.
        path: a PNG, JPEG or TIFF image.
        out_dir: the output folder (made when missing).
        formats: any of ``"csv"``, ``"geojson"``, ``"png"``.
        mpp: the image's pixel size in µm/px; ``None``: :func:`image_mpp`.
        overwrite: replace whatever an earlier run left.
        wait: wait for another run writing this image's outputs instead of refusing.
    """
    from .slide_outputs import output_stem

    started = time.perf_counter()
    path = regular_file(path, "image")
    formats = check_formats(formats)
    used_mpp, mpp_source = image_mpp(path, mpp, detector.info.mpp)
    stem = output_stem(path)
    OutputFolder(Path(out_dir)).check_stem(stem, path.name)
    with OutputLock(Path(out_dir), stem, wait=wait):
        fault_point("locked")
        outputs = ImageOutputs(Path(out_dir), stem, formats)
        settings = _image_settings(detector, path, used_mpp, formats)
        verdict = outputs.check(settings, overwrite=overwrite)
        if verdict.action == "finished":
            found, rewritten = _finished_image(outputs, verdict.damaged, path, used_mpp)
            return InputRun(found, "finished already", rewritten, float(outputs.state.get("megapixels", 0.0)), time.perf_counter() - started, used_mpp, mpp_source)
        # Read and detect before touching the outputs: an unreadable image leaves an
        # earlier run's files as they were.
        image = as_rgb_image(path)
        found = detector.detect(image, mpp=used_mpp)
        megapixels = image.shape[0] * image.shape[1] / 1e6
        outputs.start(settings, image_shape=list(image.shape[:2]), megapixels=megapixels)
        try:
            outputs.write(found, lambda: image)
        except BaseException:
            # An image does not resume: its partial files are of no use to a rerun.
            for fmt in FORMATS:
                try:
                    outputs.partial(fmt).unlink(missing_ok=True)
                except OSError:
                    pass
            raise
        fault_point("finished")
    return InputRun(found, "ran", [], megapixels, time.perf_counter() - started, used_mpp, mpp_source)


def _image_settings(detector: Any, path: Path, mpp: float, formats: tuple[str, ...]) -> dict[str, Any]:
    """The parameters that shape an image's result, as its record keeps them."""
    orientation = image_orientation(path)
    return {
        "input": fingerprint(path),
        "reader": "tifffile" if path.suffix.lower() in (".tif", ".tiff") else "pillow",
        # Recorded only when turned, so the records of upright images stay current.
        **({"orientation": orientation} if orientation != 1 else {}),
        "mpp": mpp,
        **detector_settings(detector),
        "formats": list(formats),
    }


def _finished_image(outputs: ImageOutputs, damaged: dict[str, str], path: Path, mpp: float) -> tuple[Detections, list[str]]:
    """A finished image's detections from its record, its damaged outputs rewritten."""
    xy, scores = outputs.records()
    shape = tuple(outputs.state.get("image_shape") or ()) or None
    found = Detections(xy, scores, shape, mpp)
    rewritten = outputs.repair(damaged, lambda fmt, p: ImageOutputs.write_format(fmt, p, found, lambda: as_rgb_image(path)))
    log.info("%s: finished already%s; %d detections", path.name, f" (rewrote {', '.join(rewritten)})" if rewritten else "", len(found))
    return found, rewritten


def image_mpp(path: Path, mpp: float | None, model_mpp: float) -> tuple[float, str]:
    """The pixel size to run a plain image at, and where it came from: ``mpp`` when
    given (``"--mpp"``), else the file's own (``micronet.runtime.images.image_pixel_size``:
    TIFF resolution tags, PNG pHYs, OME-XML), else the model's (:data:`MPP_ASSUMED`)."""
    mpp = check_mpp(mpp)
    recorded = _recorded_mpp(path)
    if mpp is not None:
        if recorded is not None and abs(mpp / recorded[0] - 1) > 0.01:
            log.warning("%s: using --mpp %.4g µm/px, not the %.4g µm/px its %s records", path.name, mpp, recorded[0], recorded[1])
        return mpp, "--mpp"
    if recorded is not None:
        return recorded
    return float(model_mpp), MPP_ASSUMED


def _recorded_mpp(path: Path) -> tuple[float, str] | None:
    read = getattr(images, "image_pixel_size", None)  # arrives with issue 11 item 8
    if read is None:
        return None
    found = read(path)
    return (float(found[0]), str(found[1])) if found is not None else None


def images_without_mpp(paths: list[Path]) -> list[Path]:
    """The plain images among ``paths`` that record no pixel size (those that cannot
    be read are left to fail on their own turn)."""
    missing = []
    for path in paths:
        try:
            if not is_slide(path) and _recorded_mpp(path) is None:
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

