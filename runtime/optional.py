"""Optional GPU packages, imported when first needed, with one message that says how to
install them. ``import micronet.runtime`` never imports any of them."""

from __future__ import annotations

from typing import Any

from .errors import MissingPackageError

__all__ = ["GPU_EXTRA", "import_cupy"]

GPU_EXTRA = "pip install 'micronet-sdk[gpu]'"


def import_cupy(purpose: str, *, required: bool = True) -> Any:
    """``import cupy``; without it an ``ImportError`` naming ``purpose`` and the pip extra
    (one line), or ``None`` when ``required`` is false."""
    try:
        import cupy
    except ImportError as exc:
        if not required:
            return None
        raise MissingPackageError(f"{purpose} needs CuPy: {GPU_EXTRA} (or cupy-cuda12x)") from exc
    return cupy
