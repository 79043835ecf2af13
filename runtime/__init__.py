"""The MicroNet runtime: detection, peak finding, matching and metrics.

Imports no torch. Optional GPU parts (TensorRT, CuPy, CUDA bindings) load lazily and
raise an ``ImportError`` naming the ``micronet-sdk[gpu]`` extra when missing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Detector": "micronet.runtime.detector",
    "Detections": "micronet.runtime.detections",
    "find_peaks": "micronet.runtime.peaks",
    "match_points": "micronet.runtime.evaluation.matching",
    "evaluate_points": "micronet.runtime.evaluation.matching",
    "PointMetrics": "micronet.runtime.evaluation.matching",
    "open_slide": "micronet.runtime.slide",
    "StreamSession": "micronet.runtime.stream",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    # For type checkers and IDEs; `X as X` marks a re-export.
    from .detections import Detections as Detections
    from .detector import Detector as Detector
    from .evaluation.matching import PointMetrics as PointMetrics
    from .evaluation.matching import evaluate_points as evaluate_points
    from .evaluation.matching import match_points as match_points
    from .peaks import find_peaks as find_peaks
    from .slide import open_slide as open_slide
    from .stream import StreamSession as StreamSession


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'micronet.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
