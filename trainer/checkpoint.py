"""Checkpoints and training snapshots, as safetensors (never pickle).

- A *checkpoint* (``.safetensors``) holds the model weights and the ``ModelInfo`` JSON
  under the ``"micronet"`` metadata key: all that export and evaluation need.
- A *snapshot* additionally holds the optimiser state (tensors under ``optim.``) and, in
  the metadata, the optimiser's hyper-parameters, the schedule, the iteration, the
  training config and every RNG state, so an interrupted run resumes to the same result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from micronet.runtime.errors import InputError, MissingFileError
from micronet.runtime.model_info import METADATA_KEY, ModelInfo

from .models import model_from_config

__all__ = ["save_checkpoint", "load_checkpoint", "read_info", "read_snapshot_config", "save_snapshot", "load_snapshot"]

_SNAPSHOT_KEY = "micronet_snapshot"


def _model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(path: str | Path, model: torch.nn.Module, info: ModelInfo) -> Path:
    """Writes weights + metadata; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(_model_tensors(model), str(tmp), metadata={METADATA_KEY: info.to_json()})
    tmp.replace(path)  # atomic: an interrupted save never leaves a half-written checkpoint
    return path


def _metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a safetensors checkpoint ({exc})") from exc


def read_info(path: str | Path) -> ModelInfo:
    """The ``ModelInfo`` of a checkpoint or snapshot, without loading the weights."""
    path = Path(path)
    meta = _metadata(path)
    if METADATA_KEY not in meta:
        raise InputError(f"{path}: a safetensors file, but not a MicroNet checkpoint (no {METADATA_KEY!r} metadata)")
    return ModelInfo.from_json(meta[METADATA_KEY], source=str(path))


def read_snapshot_config(path: str | Path) -> dict[str, Any]:
    """The training config a snapshot was written with (``TrainConfig`` as a dict),
    without loading the weights: what ``micronet train --resume`` continues with."""
    path = Path(path)
    meta = _metadata(path)
    if _SNAPSHOT_KEY not in meta:
        raise InputError(f"{path}: not a training snapshot (no {_SNAPSHOT_KEY!r} metadata); resume from last_snapshot.safetensors")
    return dict(json.loads(meta[_SNAPSHOT_KEY])["config"])


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelInfo]:
    """Rebuilds the model (eval mode) and returns it with its ``ModelInfo``."""
    path = Path(path)
    info = read_info(path)
    model = model_from_config(info.architecture)
    tensors = load_file(str(path), device=str(device))
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"{path}: weights do not fit the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval(), info


def save_snapshot(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    info: ModelInfo,
    state: dict[str, Any],
) -> Path:
    """Weights, optimiser and the JSON-able training ``state`` (iteration, schedule, RNGs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = _model_tensors(model)
    opt = optimizer.state_dict()
    for pid, pstate in opt["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        METADATA_KEY: info.to_json(),
        _SNAPSHOT_KEY: json.dumps({"param_groups": opt["param_groups"], **state}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_snapshot(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restores weights, optimiser and torch RNG in place; returns the training state."""
    path = Path(path)
    meta = _metadata(path)
    if _SNAPSHOT_KEY not in meta:
        raise InputError(f"{path}: not a training snapshot (a checkpoint cannot be resumed; use --init to fine-tune)")
    extra = json.loads(meta[_SNAPSHOT_KEY])
    tensors = load_file(str(path))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": extra.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    return extra
