"""A plain image as a run's input: :class:`ImageSource` for
:func:`~micronet.runtime.runs.run_input.run_input`, and :func:`run_image` over it.

The image file is opened once (:class:`~micronet.runtime.images.ImageFile`): its header
gives the orientation and the pixel size it records before the lock, and the same open
file gives the pixels when the image runs (not when it is finished already).
"""

from __future__ import annotations

import logging
import time
from os import PathLike
from pathlib import Path
from typing import Any

from ..detections import Detections, check_measure
from ..errors import InputError
from ..files import regular_file
from ..images import ImageFile, as_rgb_image
from ..pixel_size import PixelSize, resolve_pixel_size
from .outputs import FORMATS, ImageOutputs, InputOutputs, InputRun, detector_settings, fingerprint
from .run_input import InputSource, RunSettings, run_input
from .slide_outputs import output_stem

__all__ = ["ImageSource", "run_image", "image_pixel_size_for", "MPP_ASSUMED", "MPP_GIVEN"]

log = logging.getLogger(__name__)

MPP_ASSUMED = "assumed: the model's"  # the source of an image's pixel size when neither caller nor file gives one
MPP_GIVEN = "--mpp"  # the source of the pixel size its caller gave


def image_pixel_size_for(file: ImageFile, mpp: float | None, model_mpp: float) -> PixelSize:
    """The pixel size to run a plain image at, resolved once: ``mpp`` when given
    (:data:`MPP_GIVEN`), else the file's own (:attr:`ImageFile.pixel_size`: TIFF
    resolution tags, PNG pHYs, OME-XML, JFIF), else the model's (:data:`MPP_ASSUMED`).
    Square: an image runs at one pixel size (x and y of a file that records two, their
    mean)."""
    assumed = PixelSize.square(model_mpp, MPP_ASSUMED)
    return resolve_pixel_size(mpp, file.pixel_size, name=file.path.name, given_source=MPP_GIVEN, assumed=assumed)


class ImageSource(InputSource):
    """A plain image (PNG, JPEG, TIFF) for :func:`run_input`: read whole, detected at
    once, its outputs written together (:class:`ImageOutputs`). Its file stays open
    from :meth:`prepare` to :meth:`close`.

    Attributes:
        path: the image file.
        pixel_size: the :class:`PixelSize` it runs at, once prepared.
    """

    def __init__(self, path: str | PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self.stem = output_stem(self.path)
        self.file: ImageFile | None = None
        self.pixel_size: PixelSize | None = None
        self.image: Any = None  # (H, W, 3) uint8, once read
        self.found: Detections | None = None
        self.megapixels = 0.0

    def prepare(self, detector: Any, settings: RunSettings) -> None:
        self.path = regular_file(self.path, "image")
        self.file = ImageFile(self.path)
        self.pixel_size = image_pixel_size_for(self.file, settings.mpp, detector.info.mpp)

    def record(self, detector: Any, formats: tuple[str, ...]) -> dict[str, Any]:
        orientation = self.file.orientation
        return {
            "input": fingerprint(self.path),
            "reader": "tifffile" if self.file.is_tiff else "pillow",
            # Recorded only when turned, so the records of upright images stay current.
            **({"orientation": orientation} if orientation != 1 else {}),
            "mpp": self.pixel_size.mean,
            **detector_settings(detector),
            "formats": list(formats),
        }

    def outputs(self, out_dir: Path, formats: tuple[str, ...]) -> InputOutputs:
        return ImageOutputs(out_dir, self.stem, formats)

    def _result(self, outcome: str, rewritten: list[str] | None = None) -> InputRun:
        seconds = time.perf_counter() - self.started
        return InputRun(self.found, outcome, rewritten or [], self.megapixels, seconds, self.pixel_size.mean, self.pixel_size.source)

    def finished(self, outputs: InputOutputs, damaged: dict[str, str]) -> InputRun:
        xy, scores = outputs.records()
        shape = tuple(outputs.state.get("image_shape") or ()) or None
        # The measures of the run that made them (records before them have none; a value
        # that is not a number >= 0 is left out, not trusted).
        measured = {k: _measure(k, outputs.state.get(k)) for k in ("colour_distance", "edge_blur_um")}
        self.found = found = Detections(xy, scores, shape, self.pixel_size.mean, **measured)
        rewritten = outputs.repair(damaged, lambda fmt, p: ImageOutputs.write_format(fmt, p, found, self._pixels))
        log.info("%s: finished already%s; %d detections", self.path.name, f" (rewrote {', '.join(rewritten)})" if rewritten else "", len(found))
        self.megapixels = float(outputs.state.get("megapixels", 0.0))
        return self._result("finished already", rewritten)

    def _pixels(self) -> Any:
        return as_rgb_image(self.file)

    def start(self, detector: Any, outputs: InputOutputs, record: dict[str, Any], resume: bool) -> None:
        # Read and detect before touching the outputs: an unreadable image leaves an
        # earlier run's files as they were. An image does not resume.
        self.image = self._pixels()
        self.found = detector.detect(self.image, mpp=self.pixel_size.mean)
        self.megapixels = self.image.shape[0] * self.image.shape[1] / 1e6
        found = self.found
        outputs.start(
            record, image_shape=list(self.image.shape[:2]), megapixels=self.megapixels,
            colour_distance=found.colour_distance, edge_blur_um=found.edge_blur_um,
        )  # fmt: skip

    def run(self, detector: Any, outputs: InputOutputs | None) -> InputRun:
        assert isinstance(outputs, ImageOutputs)  # an image always runs into a folder
        try:
            outputs.write(self.found, lambda: self.image)
        except BaseException:
            # An image does not resume: its partial files are of no use to a rerun.
            for fmt in FORMATS:
                try:
                    outputs.partial(fmt).unlink(missing_ok=True)
                except OSError:
                    pass
            raise
        return self._result("ran")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _measure(name: str, value: Any) -> float | None:
    """A measure read back from a record (:func:`~micronet.runtime.detections.check_measure`),
    ``None`` where it is not a valid one."""
    try:
        return check_measure(name, value)
    except InputError:
        return None


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
    complete or absent: :func:`run_input` over an :class:`ImageSource`.

    A finished run with the same settings is not redone (its outputs are verified and
    any missing or damaged one is rewritten from the stored detections); outputs of
    other settings are refused unless ``overwrite``.

    Args:
        detector: the :class:`~micronet.runtime.detector.Detector`.
        path: a PNG, JPEG or TIFF image.
        out_dir: the output folder (made when missing).
        formats: any of ``"csv"``, ``"geojson"``, ``"png"``.
        mpp: the image's pixel size in µm/px; ``None``: the file's own, else the
            model's (:func:`image_pixel_size_for`).
        overwrite: replace whatever an earlier run left.
        wait: wait for another run writing this image's outputs instead of refusing.
    """
    settings = RunSettings(formats=formats, mpp=mpp, overwrite=overwrite, wait=wait)
    return run_input(detector, ImageSource(path), out_dir, settings)
