"""``micronet detect``: nucleus centres in images and slides → CSV, GeoJSON, overlay PNG.

For each image ``NAME.ext`` the output folder receives, by ``--format``:

- ``csv``: ``NAME.csv``, header ``x,y,score``, 0-based pixels (x = column, y = row);
- ``geojson``: ``NAME.geojson``, QuPath detections (*File › Import objects*);
- ``png``: ``NAME.overlay.png``, the image with a circle around each detection.

Whole-slide inputs (``.svs``, ``.ndpi``, ``.mrxs``, ``.scn``, ``.ome.tif``, and TIFFs
larger than 10,000 px on a side) go to ``micronet.runtime.runs.slide_run.detect_slide``, which
streams them tile by tile. ``--demo`` runs the bundled model on the bundled demo image (a
real H&E region of the CMU-1 slide). ``--tta`` runs the network on each image (or tile)
and its three flips and averages the maps before the peaks (``Detector(tta=True)``: 4×
the work).

The inputs are settled first (:func:`micronet.runtime.runs.inputs.plan_inputs`): folders
are expanded, files a run wrote (overlays) are never inputs, and an input whose outputs
would land on another input or on the summary is refused; so are the missing entries of
a manifest, while the others run. Each input is then one call of
:func:`micronet.runtime.runs.batch.process_input` (run by
:func:`micronet.runtime.runs.cohort.run_cohort` in this process): its outputs appear under
their final names only when it is finished, ``.micronet/NAME.progress.json`` records the
settings and checksums (a rerun verifies, resumes, or refuses other settings unless
``--overwrite``), and ``.micronet/NAME.lock`` keeps a second run off them: an input another
run holds is ``running elsewhere`` in ``run_summary.csv``, which every run merges its rows
into under a lock. A failed input is reported and recorded and the others go on (exit
status 1); ``--fail-fast`` stops at the first. Ctrl-C, SIGTERM and SIGHUP stop the run
(status 130, 143, 129) with the summary written; the same command resumes.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from micronet.commands import add_tta_mode, device_arg
from micronet.runtime.errors import InputError
from micronet.runtime.runs.batch import (
    MPP_ASSUMED,
    RunSettings,
    check_out_dir,
    images_without_mpp,
    is_slide,
    process_input,
)
from micronet.runtime.runs.folder import SUMMARY
from micronet.runtime.runs.outputs import FORMATS, parse_formats  # FORMATS re-exported
from micronet.runtime.runs.summary import RUNNING_ELSEWHERE, write_summary

__all__ = ["add_parser", "run", "FORMATS", "is_slide"]

log = logging.getLogger("micronet.detect")

DEMO_OUT = Path("micronet-demo")
INTERRUPTED = 130  # the shell's status for a process stopped by SIGINT (128 + its number)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers the ``detect`` subcommand on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "detect",
        help="images or slides -> CSV, GeoJSON, overlay PNG",
        description="Detect nucleus centres in H&E images (PNG, JPEG, TIFF) or whole slides and write "
        "CSV (x,y,score), QuPath GeoJSON and overlay PNG files, and run_summary.csv (one row per input).",
    )
    _add_inputs(parser)
    _add_detection(parser)
    _add_run(parser)
    return parser


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", type=Path, metavar="INPUT", help="image or slide files, or folders of images")
    parser.add_argument("--out", type=Path, metavar="DIR", help=f"output folder (created; with --demo default {DEMO_OUT}/)")
    parser.add_argument("--demo", action="store_true", help="run the bundled model on the bundled demo image (real H&E: a region of the CMU-1 slide)")
    parser.add_argument(
        "--inputs", dest="manifest", type=Path, metavar="MANIFEST",
        help="also run the inputs listed in a text file (one path per line) or a CSV (--inputs-column, default path/input/slide/file); "
        "a listed input that is missing fails alone, the others run",
    )  # fmt: skip
    parser.add_argument("--inputs-column", metavar="COL", help="the manifest CSV's column of input paths")
    parser.add_argument(
        "--reader", choices=("auto", "tifffile", "openslide"), default="auto",
        help="slide reader (default auto: tifffile for SVS, OME-TIFF, NDPI, TIFF; OpenSlide for MIRAX, SCN, VMS, BIF, DICOM)",
    )  # fmt: skip
    parser.add_argument(
        "--format",
        default=",".join(FORMATS),
        metavar="LIST",
        help=f"comma-separated outputs among {', '.join(FORMATS)} (default: all)",
    )


def _add_detection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        metavar="FILE",
        help="an .onnx model or TensorRT .engine, or a bundled model: default (the paper's network, the default), "
        "fast-cpu (a lean int8 network distilled from it: several times as fast on a CPU, 0.01 F1 less) or phenotypes "
        "(lean, trained for other labs' stains and other organs); each classifies every nucleus",
    )
    parser.add_argument(
        "--device", type=device_arg, default="auto", metavar="D", help="auto, cpu, cuda or cuda:N (default auto: the GPU when available)"
    )
    parser.add_argument(
        "--mpp",
        type=float,
        metavar="UM",
        help="pixel size of the inputs in µm/px; resampled to the model's when different (default: the file's own "
        "(slide metadata, TIFF resolution tags, PNG pHYs, OME-XML), else the model's)",
    )
    parser.add_argument("--threshold", type=float, metavar="T", help="detection threshold ξ (default: the model's own)")
    parser.add_argument(
        "--tta", action="store_true",
        help="test-time augmentation: run the network on each image and its 3 flips (4× the work) and average the "
        "maps before finding peaks; recorded with each input's settings (default: one pass; --model accurate: dihedral)",
    )  # fmt: skip
    add_tta_mode(parser)
    parser.add_argument(
        "--normalize", choices=("auto", "white", "reinhard", "macenko", "none"), default="auto",
        help="stain/intensity normalisation to the model's training colours before the network: a white balance of "
        "only the images whose colours lie outside the training data's (auto, the default: no clean CRCHisto or MoNuSeg "
        "image), every image (white, reinhard, macenko) or none; a slide's statistics come from its tissue; recorded "
        "with each input's settings",
    )  # fmt: skip
    parser.add_argument(
        "--deblur", choices=("auto", "none"), default="auto",
        help="deconvolve an image whose edges are blurred beyond 0.7 µm (out of focus) back to the training data's, "
        "before the network (auto, the default: no clean CRCHisto or MoNuSeg image is beyond it) or never (none); "
        "a slide tile by tile (its summary lists the tiles beyond); recorded with each input's settings",
    )  # fmt: skip


def _add_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace every output of each input, also those of a finished run or of other settings (default: "
        "resume an unfinished run, verify a finished one, refuse outputs of other settings)",
    )
    parser.add_argument("--wait", action="store_true", help="when another run is writing an input's outputs, wait for it (default: fail that input)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first input that fails (default: report it and go on)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (without a terminal there are none: a line per input instead)")
    cluster = parser.add_argument_group("cohorts on Ray (pip install 'micronet-sdk[cluster]')")
    cluster.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
        help="one Ray task per input: without ADDRESS a local Ray runtime on this machine; 'auto' or HOST:PORT joins a cluster",
    )  # fmt: skip
    cluster.add_argument("--workers", type=int, metavar="N", help="Ray workers (default: as many as the cluster's CPUs, or GPUs, allow)")
    cluster.add_argument(
        "--threads", type=int, metavar="T",
        help="ONNX Runtime CPU threads per worker, at most the CPUs this process may use (default: 1 on Ray, the physical cores here)",
    )  # fmt: skip


def _inputs(args: argparse.Namespace, formats: tuple[str, ...]) -> tuple[Any, Path]:
    """What the run runs (:func:`~micronet.runtime.runs.inputs.plan_inputs`) and where
    its results go."""
    from micronet.runtime.bundled import bundled_demo
    from micronet.runtime.runs.inputs import PlannedInputs, plan_inputs

    if args.demo:
        if args.inputs or args.manifest is not None:
            raise InputError("--demo runs on the bundled demo image; give either --demo or INPUT files, not both")
        return PlannedInputs(files=[bundled_demo()]), args.out if args.out is not None else DEMO_OUT
    listed: list[Path] = []
    if args.inputs_column and args.manifest is None:
        raise InputError("--inputs-column applies with --inputs MANIFEST only")
    if args.manifest is not None:
        from micronet.runtime.runs.cohort import read_manifest

        listed = read_manifest(args.manifest, args.inputs_column)
    if not args.inputs and not listed:
        raise InputError("expected INPUT images or slides, --inputs MANIFEST, or --demo")
    if args.out is None:
        raise InputError("--out DIR is required: the folder to write the results to")
    return plan_inputs(list(args.inputs), listed, args.out, formats), args.out


def _check_cluster_options(args: argparse.Namespace) -> None:
    for name, value in (("--workers", args.workers), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise InputError(f"{name}: expected an integer >= 1, got {value}")
    if args.workers is not None and args.ray is None:
        raise InputError("--workers applies with --ray only")


def run(args: argparse.Namespace) -> int:
    """Runs ``micronet detect``; returns the exit status: 0, 1 when an input of several
    failed, 130 when interrupted (143 on SIGTERM, 129 on SIGHUP). Errors before any
    input runs (and the failure of a single input) raise SDK errors with a one-line
    message."""
    from micronet.runtime.bundled import bundled_tta
    from micronet.runtime.runs.cohort import DetectorSpec, run_cohort
    from micronet.runtime.tta import check_tta

    formats = parse_formats(args.format)
    planned, out = _inputs(args, formats)
    files = planned.files
    check_out_dir(out)  # before the model loads: a folder we cannot write fails now, not after inference
    _check_cluster_options(args)
    total = len(files) + len(planned.refused)
    if not files:
        return _nothing_to_run(planned.refused, out)
    # Bars only on a terminal: in a redirected log they are carriage-return noise (a
    # slide then logs a line a minute instead: progress=None).
    bars = not args.no_progress and _stderr_is_terminal()
    on_ray = args.ray is not None
    # On Ray each worker's slide bars would interleave in the driver's log: the cohort bar only.
    progress = False if (args.no_progress or on_ray) else None
    settings = RunSettings(formats=formats, mpp=args.mpp, overwrite=args.overwrite, wait=args.wait, progress=progress, reader=args.reader)
    rows: list[dict[str, Any]] = []
    for row in planned.refused:
        rows.append(row)
        _report(row, len(rows), total, bars)
    ran: list[dict[str, Any]] = []
    on_row = _row_reporter(rows, ran, files, total, bars, images_without_mpp(files) if args.mpp is None else [])
    tta = args.tta_mode or (True if args.tta else None)  # None: the model's own (--model accurate: dihedral)
    spec = DetectorSpec(
        args.model, args.device, args.threshold, args.threads, tta=tta, normalize=None if args.normalize == "none" else args.normalize,
        deblur=None if args.deblur == "none" else args.deblur,
    )  # fmt: skip
    try:
        with _signals_interrupt():
            run_cohort(
                files, partial(process_input, out_dir=out, settings=settings), spec, ray_address=args.ray, workers=args.workers,
                fail_fast=args.fail_fast or total == 1, progress=bars and (total > 1 or on_ray), on_row=on_row,
            )  # fmt: skip
    except KeyboardInterrupt as exc:
        return _interrupted(exc, rows, files[len(ran)] if len(ran) < len(files) else None, out)
    write_summary(out / SUMMARY, rows, merge=True)
    return _conclude(rows, total, formats, out, check_tta(bundled_tta(args.model, tta)))


def _row_reporter(rows: list[dict[str, Any]], ran: list[dict[str, Any]], files: list[Path], total: int, bars: bool, unknown_mpp: list[Path]) -> Any:
    """``on_row`` for the cohort: keeps each row, says the assumed pixel size once, and
    reports the input."""

    def on_row(row: dict[str, Any]) -> None:
        rows.append(row)
        ran.append(row)
        if unknown_mpp and row.get("mpp_source") == MPP_ASSUMED and not any(r.get("mpp_source") == MPP_ASSUMED for r in ran[:-1]):
            count = f"{len(unknown_mpp)} of {len(files)} images record" if len(files) > 1 else "the image records"
            log.warning(
                "%s no pixel size: assumed the model's %.4g µm/px; pass --mpp UM (µm per pixel: about 0.25 at 40×, "
                "0.5 at 20×) for another", count, row["mpp"],
            )  # fmt: skip
        _report(row, len(rows), total, bars)

    return on_row


def _nothing_to_run(refused: list[dict[str, Any]], out: Path) -> int:
    """Every input was refused: one input's error is the command's; several are
    recorded in the summary."""
    if len(refused) == 1:
        raise refused[0]["exception"]
    for i, row in enumerate(refused, 1):
        _report(row, i, len(refused), False)
    write_summary(out / SUMMARY, refused, merge=True)
    print(f"no input to run: {len(refused)} refused (see {out / SUMMARY})")
    return 1


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, ending a run as Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's or ``kill``'s stop) and SIGHUP (a closed terminal) end the
    run as Ctrl-C does: the input being run keeps its partial files, the summary is
    written, and the same command resumes. Outside the main thread nothing changes."""
    wanted = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    try:
        for signum in wanted:
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _interrupted(exc: KeyboardInterrupt, rows: list[dict[str, Any]], current: Path | None, out: Path) -> int:
    """Records the input that was running as interrupted, writes the summary, and
    returns the shell's status for the signal (128 + its number)."""
    signum = exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)
    name = signal.Signals(signum).name
    if current is not None:
        error = "interrupted" if signum == signal.SIGINT else f"interrupted ({name})"
        rows.append({"input": str(current), "status": "failed", "error": error})
    try:
        write_summary(out / SUMMARY, rows, merge=True)
    except OSError as error:
        log.debug("%s not written: %s", out / SUMMARY, error)
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {name}"
    print(f"micronet detect: {what}; rerun the same command to resume", file=sys.stderr)
    return 128 + signum


def _conclude(rows: list[dict[str, Any]], total: int, formats: tuple[str, ...], out: Path, tta: str | None) -> int:
    """Raises a single input's error, or prints the closing line; the exit status."""
    failed = [r for r in rows if r["status"] == "failed"]
    elsewhere = [r for r in rows if r["status"] == RUNNING_ELSEWHERE]
    if total == 1 and (failed or elsewhere) and (failed or elsewhere)[0].get("exception") is not None:
        raise (failed or elsewhere)[0]["exception"]  # one input: its error is the command's (one line, status 2)
    done = [r for r in rows if r["status"] in ("ok", "skipped")]
    images = sum(r.get("kind") == "image" for r in done)
    slides = sum(r.get("kind") == "slide" for r in done)
    nuclei = sum(int(r.get("nuclei") or 0) for r in done)
    what = f"{images} image{'s' * (images != 1)}" + (f" and {slides} slide{'s' * (slides != 1)}" if slides else "")
    backend = next((r.get("backend") for r in rows if r.get("backend")), "")
    notes = []
    skipped = sum(r["status"] == "skipped" for r in rows)
    if skipped:
        notes.append(f"{skipped} finished already")
    if elsewhere:
        notes.append(f"{len(elsewhere)} running elsewhere")
    if failed:
        notes.append(f"{len(failed)} failed")
    if len(rows) < total:
        notes.append(f"{total - len(rows)} not run (--fail-fast)")
    note = f" ({', '.join(notes)}; see {out / SUMMARY})" if notes else ""
    written = ", ".join(formats) + (" and each slide's summary.json" if slides else "")
    passes = f", {'flip' if tta == 'flips' else tta} TTA" if tta else ""
    print(f"{nuclei} nuclei in {what} ({backend}{passes}); wrote {written} to {out}/{note}")
    return 1 if failed else 0


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _report(row: dict[str, Any], index: int, total: int, bars: bool) -> None:
    """One line per input on stderr: failures always (unless the command fails with
    it), the rest when there are no progress bars to show them."""
    name = Path(row["input"]).name
    if row["status"] in ("failed", RUNNING_ELSEWHERE):
        if total > 1:
            error = str(row["error"]) if row["status"] == "failed" else f"running elsewhere: {row['error']}"
            _say(f"micronet detect: {error}" if error.startswith(f"{name}:") else f"micronet detect: {name}: {error}", bars)
        return
    if bars:
        return
    counter = f"[{index}/{total}] " if total > 1 else ""
    if row["status"] == "skipped":
        rewritten = row.get("rewritten") or []
        fixed = f"; rewrote {', '.join(rewritten)}" if rewritten else ""
        _say(f"{counter}{name}: finished already, {row['nuclei']} nuclei{fixed}", bars)
    else:
        resumed = " (resumed)" if row.get("outcome") == "resumed" else ""
        _say(f"{counter}{name}: {row['nuclei']} nuclei in {row['seconds']:.1f} s{resumed}", bars)


def _say(line: str, bars: bool) -> None:
    if bars:
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)
