"""MicroNet SDK: nucleus detection in H&E microscopy (Xing et al., BMC Bioinformatics 2019).

>>> from micronet import Detector            # doctest: +SKIP
>>> found = Detector().detect(rgb)           # doctest: +SKIP

The runtime (``micronet.runtime``) needs numpy, scipy and onnxruntime only; the trainer
(``micronet.trainer``) and exporter (``micronet.export``) are imported on demand.
Public names are resolved lazily so ``import micronet`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "Detector": "micronet.runtime.detector",
    "Detections": "micronet.runtime.detections",
    "find_peaks": "micronet.runtime.peaks",
    "match_points": "micronet.runtime.matching",
    "evaluate_points": "micronet.runtime.matching",
    "PointMetrics": "micronet.runtime.matching",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from micronet.runtime.detections import Detections
    from micronet.runtime.detector import Detector
    from micronet.runtime.matching import PointMetrics, evaluate_points, match_points
    from micronet.runtime.peaks import find_peaks


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'micronet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
