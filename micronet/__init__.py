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

# The installed distribution's version; a source tree that is not installed falls back
# to the version in pyproject.toml (keep the two in step).
_SOURCE_VERSION = "0.1.0"


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("micronet-sdk")
    except PackageNotFoundError:
        return _SOURCE_VERSION


__version__ = _installed_version()

# The runtime's public names, re-exported from micronet.runtime, which resolves them lazily
# (one lazy-export table: micronet/runtime/__init__.py).
__all__ = ["__version__", "Detector", "Detections", "find_peaks", "match_points", "evaluate_points", "PointMetrics"]
_RUNTIME_NAMES = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:  # pragma: no cover
    from micronet.runtime import Detections, Detector, PointMetrics, evaluate_points, find_peaks, match_points


def __getattr__(name: str) -> Any:
    if name not in _RUNTIME_NAMES:
        raise AttributeError(f"module 'micronet' has no attribute {name!r}")
    value = getattr(importlib.import_module("micronet.runtime"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
