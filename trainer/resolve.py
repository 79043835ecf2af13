"""Machine-bound training defaults, resolved where the run starts: bfloat16 autocast
where it is native, channels-last where it was measured faster, torch threads from the
physical cores (``TrainConfig.bf16``, ``channels_last``, ``threads`` left ``None``)."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from micronet.runtime import machine

if TYPE_CHECKING:  # pragma: no cover
    from .train import TrainConfig

__all__ = ["native_bf16", "resolve_bf16", "resolve_channels_last", "resolve_machine_defaults", "resolve_threads"]

log = logging.getLogger("micronet.trainer.train")  # the run's log, as before the split


def resolve_bf16(requested: bool | None, device_type: str, native: bool) -> tuple[bool, str]:
    """Whether to autocast to bfloat16, and why (for the log and the provenance).

    Args:
        requested: ``TrainConfig.bf16``: ``True``/``False`` wins; ``None`` chooses bf16
            exactly where it is native.
        device_type: ``"cpu"``, ``"cuda"``, ...
        native: whether the device computes bfloat16 in hardware (see
            :func:`native_bf16`).
    """
    if requested is not None:
        slow = requested and not native
        return requested, "as configured" + (f" although this {device_type} has no native bfloat16" if slow else "")
    if native:
        return True, f"auto: this {device_type} computes bfloat16 natively"
    if device_type == "cpu":
        return False, "auto: this CPU has no AVX512_BF16 / AMX-BF16 (emulated bfloat16 is slower than float32)"
    return False, f"auto: no native bfloat16 on this {device_type}"


def native_bf16(device: torch.device) -> bool:
    """True where ``device`` computes bfloat16 in hardware: a CUDA device with bf16
    (Ampere and later), or a CPU with AVX512_BF16, AMX-BF16 or aarch64's BF16."""
    if device.type == "cuda":
        try:  # torch >= 2.4 would otherwise count emulated bf16 (pre-Ampere GPUs) as supported
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return machine.has_native_bf16()
    return False


def resolve_channels_last(requested: bool | None, device_type: str, bf16: bool) -> tuple[bool, str]:
    """Whether to run in channels-last (NHWC) layout, and why.

    ``None`` chooses it where it was measured faster: float32 steps on the CPU
    (``python benchmarks/bench_train.py``); under bf16 autocast it gained nothing
    measurable, and on GPUs it has not been measured.
    """
    if requested is not None:
        return requested, "as configured"
    if device_type == "cpu" and not bf16:
        return True, "auto: float32 on the CPU (measured faster than NCHW)"
    return False, "auto: bf16 autocast (no measured gain)" if bf16 else f"auto: not measured on {device_type}"


def resolve_threads(requested: int | None, cores: int, local_world: int = 1) -> int:
    """torch intra-op threads: ``requested``, else this process's share of ``cores``
    physical cores (hyper-threads only contend for the same FMA units)."""
    if requested is not None:
        return requested
    return max(1, cores // max(1, local_world))


def resolve_machine_defaults(cfg: "TrainConfig", device: torch.device) -> "TrainConfig":
    """``cfg`` with the machine-bound defaults (``bf16``, ``channels_last``, ``threads``)
    resolved on this machine; logs what was chosen and why, and warns when an explicit
    bf16 will be emulated. The returned config is the one the run stores in its
    checkpoints."""
    native = native_bf16(device)
    bf16, why = resolve_bf16(cfg.bf16, device.type, native)
    channels_last, why_layout = resolve_channels_last(cfg.channels_last, device.type, bf16)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    threads = resolve_threads(cfg.threads, machine.physical_cores(), local_world)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else machine.cpu_model()
    log.info(
        "precision: %s (%s); torch threads: %d (%s); memory format: %s (%s)",
        "bfloat16 autocast" if bf16 else "float32", why,
        threads, "as configured" if cfg.threads is not None else f"physical cores / {local_world} process(es)",
        "channels-last" if channels_last else "NCHW", f"{why_layout}; {where}",
    )
    if bf16 and not native:
        log.warning(
            "bf16=True on %s without native bfloat16 (%s): torch emulates it, several times slower than float32; "
            "leave bf16 unset (auto) or pass --no-bf16",
            device.type, where,
        )
    return replace(cfg, bf16=bf16, channels_last=channels_last, threads=threads)
