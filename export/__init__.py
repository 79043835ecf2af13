"""Export: checkpoint → ONNX (fp32 / fp16 / int8), ONNX → TensorRT engine.

``micronet.export.onnx`` needs torch (to read checkpoints) and onnx; the engine builder
``micronet.export.engine`` needs TensorRT only, so it runs on a Jetson next to the ONNX
file.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["export_onnx", "build_engine", "FORMATS"]

_EXPORTS = {
    "export_onnx": "micronet.export.onnx",
    "FORMATS": "micronet.export.onnx",
    "build_engine": "micronet.export.engine",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'micronet.export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
