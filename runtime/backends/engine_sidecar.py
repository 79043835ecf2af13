"""The sidecar next to every engine (``model.engine.json``) and the check that this
machine may run the engine: same GPU model and compute capability, a TensorRT version the
engine accepts. The runtime reads the sidecar *before* deserialising, so a foreign engine
fails with a message that says how to rebuild it instead of a TensorRT crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from .cuda_env import _major_minor

__all__ = ["REQUIRED_SIDECAR_FIELDS", "SIDECAR_SUFFIX", "check_engine_compatibility", "check_sidecar_fields", "read_sidecar", "sidecar_path"]

SIDECAR_SUFFIX = ".json"  # model.engine -> model.engine.json
REQUIRED_SIDECAR_FIELDS = ("micronet", "tensorrt_version", "gpu_name", "compute_capability")



def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` → ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def _rebuild_hint(engine_path: str | Path) -> str:
    return f"rebuild: export-engine model.onnx -o {engine_path}"


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    """The parsed ``<engine>.json`` written by ``export-engine``; ``ValueError`` when it is
    missing or not a JSON object."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise InputError(
            f"{path} not found: a MicroNet engine needs the metadata sidecar export-engine writes "
            f"next to it; {_rebuild_hint(engine_path)}"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); {_rebuild_hint(engine_path)}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}; {_rebuild_hint(engine_path)}")
    return data


def _sm(compute_capability: str) -> str:
    return "sm_" + str(compute_capability).replace(".", "")


def check_sidecar_fields(sidecar: Any, *, engine_path: str | Path = "model.engine") -> None:
    """``ValueError`` unless the sidecar is a JSON object with every field the runtime
    needs (``micronet``, ``tensorrt_version``, ``gpu_name``, ``compute_capability``)."""
    hint = _rebuild_hint(engine_path)
    if not isinstance(sidecar, dict):
        raise InputError(f"engine sidecar: expected a JSON object, got {type(sidecar).__name__}; {hint}")
    missing = [k for k in REQUIRED_SIDECAR_FIELDS if sidecar.get(k) in (None, "")]
    if missing:
        raise InputError(f"engine sidecar lacks {', '.join(missing)} (not written by export-engine, or damaged); {hint}")


def check_engine_compatibility(
    sidecar: dict[str, Any],
    trt_version: str,
    gpu_name: str,
    compute_capability: str,
    *,
    engine_path: str | Path = "model.engine",
) -> None:
    """Refuses an engine that this machine cannot (or should not) run.

    A TensorRT engine holds kernels chosen for one GPU model and one TensorRT release.
    The rules, applied to the engine's sidecar:

    - the compute capability must equal this GPU's (``"8.9"`` ≠ ``"8.6"``);
    - the GPU name must equal this GPU's: same-architecture GPUs with other memory or
      clocks run an engine tuned for another card, which TensorRT warns may be slow or
      fail;
    - TensorRT ``major.minor`` must equal the installed one, unless the engine was built
      with ``--version-compatible``; then the installed TensorRT may also be newer
      (never older), as TensorRT's version compatibility allows.

    Args:
        sidecar: the parsed ``model.engine.json``.
        trt_version: the installed ``tensorrt.__version__``, e.g. ``"10.3.0"``.
        gpu_name, compute_capability: this GPU, e.g. ``"NVIDIA L4"``, ``"8.9"``.
        engine_path: only for the rebuild command in the message.

    Raises:
        ValueError: naming what the engine was built for, what this machine has, and
            the ``export-engine`` command that rebuilds it.
    """
    hint = _rebuild_hint(engine_path)
    check_sidecar_fields(sidecar, engine_path=engine_path)
    built_trt = str(sidecar["tensorrt_version"])
    built_gpu = str(sidecar["gpu_name"]).strip()
    built_cc = str(sidecar["compute_capability"]).strip()
    version_compatible = sidecar.get("version_compatible", False)
    if not isinstance(version_compatible, bool):
        raise InputError(f"engine sidecar: version_compatible must be true or false, got {version_compatible!r}; {hint}")

    built_v = _major_minor(built_trt, "engine sidecar tensorrt_version")
    here_v = _major_minor(trt_version, "installed TensorRT version")
    problems = []
    if built_cc != str(compute_capability).strip():
        problems.append("another GPU architecture")
    elif built_gpu != str(gpu_name).strip():
        problems.append("another GPU model")
    if version_compatible:
        if here_v < built_v:
            problems.append("a newer TensorRT than the installed one (version-compatible engines run only on the same or later TensorRT)")
    elif here_v != built_v:
        problems.append("another TensorRT version (build with --version-compatible to allow later TensorRT releases)")
    if problems:
        raise InputError(
            f"engine built for {built_gpu} ({_sm(built_cc)}) with TensorRT {built_v[0]}.{built_v[1]}"
            f"{' (version-compatible)' if version_compatible else ''}; "
            f"this machine has {str(gpu_name).strip()} ({_sm(compute_capability)}) with TensorRT {here_v[0]}.{here_v[1]} "
            f"({'; '.join(problems)}); {hint}"
        )
