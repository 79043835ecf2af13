"""One procedure runs any input into an output folder: :func:`run_input` over an
:class:`InputSource`, of which there are two, an image
(:class:`~micronet.runtime.runs.image_run.ImageSource`) and a slide
(:class:`~micronet.runtime.runs.slide_run.SlideSource`).

The steps are the same for both, in this order, and written once here::

    prepare      before the lock: check the input (an image reads its header and
                 resolves its pixel size here)
    lock         one writer per input (OutputLock); a second run refuses or waits
    open, plan   a slide is opened, its pixel size resolved, its tiles planned
    verdict      what an earlier run left (InputOutputs.check): new, resume, finished
    repair       finished already: damaged outputs rewritten from the stored detections
    start        a new (or resumed) record and partial files
    run          detect and write (an image at once, a slide batch by batch), then
                 finish: checksums recorded, partial files renamed

A source supplies what differs: its settings (what the record keeps), its outputs
(:class:`~micronet.runtime.runs.outputs.ImageOutputs` or
:class:`~micronet.runtime.runs.slide_outputs.SlideOutputs`), how it reads a finished
run back, and its detection step. The ``MICRONET_FAULT_AT`` points ``locked``,
``planned``, ``started`` and ``finished`` (:func:`~micronet.runtime.runs.outputs.fault_point`)
lie between the steps, for images and slides alike.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from .folder import OutputFolder
from .outputs import FORMATS, InputOutputs, InputRun, OutputLock, check_formats, fault_point

__all__ = ["RunSettings", "InputSource", "run_input"]


@dataclass(frozen=True)
class RunSettings:
    """How :func:`run_input` (and :func:`~micronet.runtime.runs.batch.process_input`)
    treats every input of a run.

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


class InputSource:
    """One input as :func:`run_input` runs it: the steps it does its own way.

    A subclass sets :attr:`path` and :attr:`stem` (the name its outputs start with) and
    implements :meth:`record`, :meth:`outputs`, :meth:`finished`, :meth:`start` and
    :meth:`run`; :meth:`prepare`, :meth:`open`, :meth:`plan` and :meth:`close` do
    nothing unless overridden.

    Attributes:
        started: ``time.perf_counter()`` when the source was made (its run's seconds).
    """

    path: Path
    stem: str

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def prepare(self, detector: Any, settings: RunSettings) -> None:
        """Checks before the lock is taken (nothing written yet)."""

    def open(self, settings: RunSettings) -> None:
        """Opens what the run reads, once the lock is held."""

    def plan(self, detector: Any) -> None:
        """Decides what the run does (a slide: its level, grid and tiles)."""

    def record(self, detector: Any, formats: tuple[str, ...]) -> dict[str, Any]:
        """The settings that shape the result, as the outputs' record keeps them."""
        raise NotImplementedError

    def outputs(self, out_dir: Path, formats: tuple[str, ...]) -> InputOutputs:
        """The input's outputs in ``out_dir``."""
        raise NotImplementedError

    def finished(self, outputs: InputOutputs, damaged: dict[str, str]) -> InputRun:
        """A finished run read back from its record, its ``damaged`` outputs rewritten."""
        raise NotImplementedError

    def start(self, detector: Any, outputs: InputOutputs, record: dict[str, Any], resume: bool) -> None:
        """Starts the outputs anew, or resumes an unfinished run with the same settings."""
        raise NotImplementedError

    def run(self, detector: Any, outputs: InputOutputs | None) -> InputRun:
        """Detects and writes the outputs (``None``: none are written), finishing them."""
        raise NotImplementedError

    def close(self) -> None:
        """Closes what :meth:`prepare` and :meth:`open` opened; called in any case."""

    def __enter__(self) -> InputSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_input(detector: Any, source: InputSource, out_dir: str | PathLike[str] | None, settings: RunSettings = RunSettings()) -> InputRun:
    """Runs one input into ``out_dir``: lock → open and plan → verdict → repair, or
    start → run → finish (see the module docstring); its outputs stay complete or absent.

    Args:
        detector: the :class:`~micronet.runtime.detector.Detector`.
        source: the input (:class:`~micronet.runtime.runs.image_run.ImageSource`,
            :class:`~micronet.runtime.runs.slide_run.SlideSource`).
        out_dir: the output folder (made when missing); ``None``: detect only, no
            lock and no outputs (``detect_slide`` without ``out_dir``).
        settings: formats, pixel size, overwrite, wait, progress, reader.

    Returns:
        The :class:`~micronet.runtime.runs.outputs.InputRun`: detections, whether the
        input ran, resumed or was finished already, the outputs rewritten, its size and
        pixel size.

    Raises:
        BusyError: another run holds the input (and ``settings.wait`` is false).
        InputError: what the source refuses, or outputs of other settings (unless
            ``settings.overwrite``).
        OutputWriteError: an output that cannot be written.
    """
    with source:
        source.prepare(detector, settings)
        formats = check_formats(settings.formats)
        out = None if out_dir is None else Path(out_dir)
        if out is not None:
            OutputFolder(out).check_stem(source.stem, source.path.name)
        # The lock comes before anything else is opened: a second run refuses at once.
        with OutputLock(out, source.stem, wait=settings.wait) if out is not None else nullcontext():
            source.open(settings)
            fault_point("locked")
            source.plan(detector)
            fault_point("planned")
            outputs = None
            if out is not None:
                outputs = source.outputs(out, formats)
                record = source.record(detector, formats)
                verdict = outputs.check(record, overwrite=settings.overwrite)
                if verdict.action == "finished":
                    return source.finished(outputs, verdict.damaged)
                source.start(detector, outputs, record, resume=verdict.action == "resume")
            fault_point("started")
            found = source.run(detector, outputs)
            fault_point("finished")
            return found
