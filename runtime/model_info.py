"""The metadata every MicroNet artifact carries (checkpoint, ONNX model, engine).

One JSON document, the same in a checkpoint's safetensors metadata, an ONNX model's
``metadata_props`` and an engine's ``.engine.json``: what the model expects as input,
how its output is decoded, and where it came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InputError

__all__ = ["ModelInfo", "METADATA_KEY", "FORMAT", "INPUT_NAME", "OUTPUT_NAME", "CLASS_OUTPUT_NAME"]

METADATA_KEY = "micronet"  # key in safetensors metadata and ONNX metadata_props
FORMAT = "micronet-model/1"
# The tensor names of every exported model and engine: uint8 N×H×W×3 in, float N×1×H×W out.
INPUT_NAME = "image"
OUTPUT_NAME = "proximity"
# A model with a class head has a second output: per-class logits N×K×H×W, the class
# names in ModelInfo.architecture["classes"].
CLASS_OUTPUT_NAME = "class_logits"


@dataclass
class ModelInfo:
    """Input contract, decoding parameters and provenance of a model.

    architecture: ``{"name": "micronet", "widths": [...], ...}``.
    mean, std: per-channel RGB normalisation in 0–255 units (applied inside ONNX graphs).
    mpp: pixel size (µm/px) the model was trained at.
    threshold: detection threshold ξ chosen on validation data (best F1).
    min_distance: minimum peak distance in model pixels.
    target: Eq. 1 parameters ``{"alpha", "radius", "scale"}``.
    eval_radius: matching radius (model pixels) used to choose ξ.
    provenance: data, command, iterations, validation F1, versions.
    precision: numeric precision of the artifact carrying this metadata.
    colour: the colour statistics of the training tissue
        (:func:`micronet.runtime.stain.training_colour_stats`), which the detector
        normalises images to and measures how far they lie from; ``None`` for models
        exported without them (the detector then uses
        :data:`micronet.runtime.stain.DEFAULT_TARGET`, CRCHisto's).
    """

    architecture: dict[str, Any]
    mean: list[float]
    std: list[float]
    mpp: float
    threshold: float
    min_distance: int = 3
    target: dict[str, float] = field(default_factory=lambda: {"alpha": 3.0, "radius": 15.0, "scale": 5.0})
    eval_radius: float = 6.0
    provenance: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # of the artifact carrying it: fp32, fp16, int8
    colour: dict[str, Any] | None = None
    format: str = FORMAT

    def to_json(self) -> str:
        data = asdict(self)
        if data["colour"] is None:
            del data["colour"]  # a model without colour statistics reads as it did before they existed
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> "ModelInfo":
        """Parses and validates; a foreign or damaged document raises ``ValueError``."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise InputError(f"{source}: MicroNet metadata is not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InputError(f"{source}: not a MicroNet model (metadata format {got!r}, expected {FORMAT!r})")
        known = set(cls.__dataclass_fields__)
        missing = {"architecture", "mean", "std", "mpp", "threshold"} - set(data)
        if missing:
            raise InputError(f"{source}: MicroNet metadata lacks {', '.join(sorted(missing))}")
        colour = data.get("colour")
        if colour is not None:
            from .stain import StainStats  # checks the dict; NumPy only

            StainStats.from_dict(colour, f"{source}: colour")
        return cls(**{k: v for k, v in data.items() if k in known})
