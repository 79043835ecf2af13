"""The models and the sample image shipped inside the package (``runtime/models/``),
by the names ``Detector(name)``, ``micronet detect --model name`` and ``micronet check``
accept."""

from __future__ import annotations

import importlib.resources
from os import PathLike
from pathlib import Path

from .errors import InputError, MissingFileError

__all__ = [
    "BUNDLED_MODELS",
    "BUNDLED_TTA",
    "DEFAULT_MODEL",
    "DEMO_IMAGE",
    "SAMPLE_IMAGE",
    "bundled_demo",
    "bundled_image",
    "bundled_model",
    "bundled_sample",
    "bundled_tta",
    "resolve_model",
]

DEFAULT_MODEL = "micronet_crchisto.onnx"  # in micronet/runtime/models/
# Models shipped in the package, by the name ``Detector(name)`` and ``--model name``
# accept (docs/results.md has their accuracy, docs/benchmarks.md their speed):
#   default    the paper's network at the paper's width (32-64-128-128, ELU), fp32,
#              trained with stain, brightness, blur and JPEG augmentation (seventh round),
#              then halfway (WiSE-FT) to a fine-tune with more blur and hue (eleventh
#              round); every backend (CRCHisto test F1 0.816, MoNuSeg 0.874). It classifies
#              each nucleus (epithelial, fibroblast, inflammatory, others; weighted class F1 0.810)
#              with a head at 1/4 resolution fitted on the frozen detector (`micronet
#              fit-classes --class-scale 4 --class-depth 2 --class-radius 3.85`, 3.5 % more FLOPs).
#   fast-cpu   the lean network (16-32-64-64, a quarter of the FLOPs) with ReLU, int8 QDQ,
#              distilled from the default: ONNX Runtime fuses ReLU into its convolutions
#              and quantises it away, so the CPU runs it 3.4-4x as fast as the default,
#              for 0.01 F1 (CRCHisto test 0.806, MoNuSeg 0.868; halfway, WiSE-FT, to a
#              fine-tune with the augmentation, tenth round). Classifies with the same
#              kind of head (weighted class F1 0.755).
#   phenotypes the lean network (16-32-64-64, 6 context channels, ReLU) with a class head
#              (epithelial, fibroblast, inflammatory, others), distilled from the default
#              with stain, brightness, blur and JPEG augmentation, int8 QDQ: the one for
#              other labs' stains and other organs (MoNuSeg 0.865), for 0.025 CRCHisto F1
#              (0.795; weighted class F1 0.717).
# (`phenotypes-wide`, the default's detector with a full-resolution class head, was
# retired when the default got its own, better and cheaper one: docs/results.md.)
#   accurate   the default's network before its seventh-round retraining with photometric
#              augmentation (its own file since: the retrained detector loses 0.006 CRCHisto
#              F1 under TTA), run with dihedral test-time augmentation (8 passes: the flips
#              of the image and of its transpose, maps averaged; BUNDLED_TTA): for a GPU, or
#              where time matters less than the last point of F1 on CRCHisto (test 0.826,
#              MoNuSeg 0.853, weighted class F1 0.825; 8x the default's work).
BUNDLED_MODELS = {
    "default": DEFAULT_MODEL,
    "fast-cpu": "micronet_crchisto_relu.int8.onnx",
    "phenotypes": "micronet_crchisto_phenotypes.int8.onnx",
    "accurate": "micronet_crchisto_accurate.onnx",
}
# The test-time augmentation a bundled name runs with when the caller gives none
# (``Detector(name)``, ``--model name``); ``tta=False`` turns it off.
BUNDLED_TTA = {"accurate": "dihedral"}
SAMPLE_IMAGE = "sample.png"  # next to it: synthetic (tools/make_sample.py), with its true centres in sample.csv
# Real H&E: a 512×512 region of the CMU-1 slide (OpenSlide test data, freely
# distributable) at 0.499 µm/px, recorded in its pHYs; cut by tools/make_demo_image.py.
DEMO_IMAGE = "demo_cmu1.png"


def _bundled(name: str, what: str, instead: str) -> Path:
    resource = importlib.resources.files("micronet.runtime") / "models" / name
    if not resource.is_file():
        raise MissingFileError(f"the bundled {what} (micronet/runtime/models/{name}) is missing from this installation; {instead}")
    return Path(str(resource))


def bundled_model(name: str = "default") -> Path:
    """Path of a model shipped in the package (``runtime/models/``): ``"default"`` or
    another name of :data:`BUNDLED_MODELS`.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
        FileNotFoundError: this installation lacks the file.
    """
    if name not in BUNDLED_MODELS:
        raise InputError(f"bundled model: expected one of {', '.join(BUNDLED_MODELS)}, got {name!r}")
    return _bundled(BUNDLED_MODELS[name], f"{name} model", "pass a model file instead: Detector('model.onnx')")


def resolve_model(model: str | PathLike[str] | None) -> Path:
    """A model argument as a file path: ``None`` → the bundled default; a name of
    :data:`BUNDLED_MODELS` (that is not also an existing file) → that bundled model;
    anything else → itself."""
    if model is None:
        return bundled_model()
    if str(model) in BUNDLED_MODELS and not Path(model).exists():
        return bundled_model(str(model))
    return Path(model)


def bundled_tta(model: str | PathLike[str] | None, tta: bool | str | None = None) -> bool | str:
    """The test-time augmentation ``model`` runs with: ``tta`` when given, else that of a
    bundled name in :data:`BUNDLED_TTA` (that is not also an existing file), else ``False``."""
    if tta is not None:
        return tta
    if model is not None and str(model) in BUNDLED_TTA and not Path(model).exists():
        return BUNDLED_TTA[str(model)]
    return False


def bundled_sample() -> Path:
    """Path of the sample H&E image shipped with the default model (what
    ``micronet detect --demo`` runs on), at the default model's pixel size.

    Raises:
        FileNotFoundError: this installation lacks it.
    """
    return _bundled(SAMPLE_IMAGE, "sample image", "run micronet detect on your own image instead")


def bundled_demo() -> Path:
    """Path of the demo image shipped in the package (what ``micronet detect --demo``
    runs on): a real H&E region of the CMU-1 slide, 512×512 at 0.499 µm/px (recorded in
    the file, so the detector resamples it to the model's pixel size).

    Raises:
        FileNotFoundError: this installation lacks it.
    """
    return _bundled(DEMO_IMAGE, "demo image", "run micronet detect on your own image instead")


def bundled_image(name: str) -> Path:
    """Path of a bundled image by file name (:data:`SAMPLE_IMAGE`, :data:`DEMO_IMAGE`):
    the known-answer test's reference images are cut from them.

    Raises:
        ValueError: another name.
        FileNotFoundError: this installation lacks it.
    """
    if name not in (SAMPLE_IMAGE, DEMO_IMAGE):
        raise InputError(f"bundled image: expected {SAMPLE_IMAGE!r} or {DEMO_IMAGE!r}, got {name!r}")
    return _bundled(name, f"image {name}", "reinstall micronet-sdk")
