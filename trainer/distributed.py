"""Data-parallel training under ``torchrun``: the process group, batch norm over the
global batch, and the few collectives the loop needs.

``torchrun --nproc_per_node N -m micronet train ...`` starts N processes; each reads its
place from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). The
backend follows the training device: NCCL for ``cuda`` (one GPU per process,
``cuda:LOCAL_RANK``), gloo for ``cpu``.

What makes N processes with per-process batch b train like one process with batch N·b
(see ``tests/trainer/test_distributed.py``):

- every process draws the *global* batch's crop plan from the same RNG stream and
  renders only its own slice (``train._Sampler``);
- DistributedDataParallel averages the gradients, and the loop logs the mean loss over
  all processes;
- batch norm normalises with the statistics of the global batch: ``torch.nn.SyncBatchNorm``
  on CUDA; on the CPU, where ``SyncBatchNorm`` refuses its input (torch 2.13 raises
  "SyncBatchNorm expected input tensor to be on GPU ..."), :class:`CpuSyncBatchNorm`,
  which all-reduces per-channel sums over gloo.

Dropout masks are drawn from each process's own torch RNG (seed + rank), so they are as
random as in one process but not the same masks: runs with dropout agree with a
one-process run in distribution, not to the last bit.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from micronet.runtime.errors import InputError

__all__ = [
    "DistContext",
    "CpuSyncBatchNorm",
    "setup",
    "sync_batch_norm",
    "mean_over_ranks",
    "broadcast_values",
    "gather_rng_states",
    "restore_rng_state",
    "weights_digest",
    "hashes_file",
    "HASHES_ENV",
]

# Debugging aid and test hook: a folder; every process appends "<iteration> <sha256 of
# its weights and buffers>" after each step to <folder>/rank<R>.txt. The one exception
# to "only rank 0 writes": the folder is named by the caller, never inside --out.
HASHES_ENV = "MICRONET_DEBUG_WEIGHT_HASHES"


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: ``rank`` of ``world`` processes, the device it
    trains on, and the collective backend (``None`` for a one-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False  # this run initialised the default process group (and destroys it)
    bn_group: Any = None  # the gloo group CpuSyncBatchNorm reduces over (kept apart from DDP's)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, snapshots, logs and plots."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{name}: expected an integer (set by torchrun), got {value!r}") from None


def setup(device: str) -> DistContext:
    """Joins the process group when started by torchrun (``WORLD_SIZE`` > 1), else a
    one-process context. ``device`` is ``TrainConfig.device``: ``"cuda"`` gives each
    process ``cuda:LOCAL_RANK`` and NCCL; ``"cpu"`` gives gloo."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world <= 1:
        return DistContext(device=torch.device(device))
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is not None:
            raise InputError(
                f"device {device!r} under torchrun: every process takes cuda:LOCAL_RANK; pass --device cuda"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)  # before NCCL starts, so its communicator binds this GPU
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise InputError(f"device {device!r}: distributed training runs on 'cpu' (gloo) or 'cuda' (NCCL)")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend)
    elif dist.get_backend() != backend:
        raise InputError(f"the process group uses {dist.get_backend()}, but device {device!r} needs {backend}")
    # Batch-norm sums travel in their own group on the CPU, so their blocking all-reduces
    # in the backward pass never interleave with DDP's bucketed gradient all-reduces.
    bn_group = dist.new_group(backend="gloo") if backend == "gloo" else None
    return DistContext(rank, world, local_rank, dev, backend, owns, bn_group)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; its gradient is the sum of the processes' gradients, which is
    what makes the global statistics differentiable for every process's inputs."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """``BatchNorm2d`` that, in training mode, normalises with the mean and variance of
    the global batch (all processes), like ``torch.nn.SyncBatchNorm`` but on CPU tensors
    over gloo. Same parameters, buffers and ``state_dict`` keys as ``BatchNorm2d``, so
    checkpoints do not know it was used. In eval mode it is plain ``BatchNorm2d``.
    """

    process_group: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        if not self.training or self.process_group is None or not self.track_running_stats:
            return super().forward(x)
        c = x.shape[1]
        # Per-channel Σx, Σx² and the count, in float64 so E[x²] − E[x]² keeps the variance.
        local = torch.cat(
            [
                x.sum((0, 2, 3), dtype=torch.float64),
                x.square().sum((0, 2, 3), dtype=torch.float64),
                torch.tensor([x.numel() // c], dtype=torch.float64, device=x.device),
            ]
        )  # (2C + 1,)
        total = _AllReduceSum.apply(local, self.process_group)
        n = total[-1]
        mean = total[:c] / n  # (C,)
        var = (total[c : 2 * c] / n - mean.square()).clamp_min(0.0)  # biased: what BN normalises with
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1.0 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
            unbiased = var * (n / (n - 1.0).clamp_min(1.0))
            self.running_var.mul_(1.0 - f).add_(unbiased.to(self.running_var.dtype), alpha=f)
        inv_std = torch.rsqrt(var + self.eps).float()  # (C,)
        y = (x - mean.float().view(1, c, 1, 1)) * inv_std.view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def sync_batch_norm(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model`` with every ``BatchNorm2d`` normalising over the global batch (in place;
    returns ``model``). Parameters and buffers are the same objects, so frozen weights
    stay frozen and an optimiser built before or after sees the same tensors."""
    if ctx.world <= 1:
        return model
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:
            sync = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                sync.weight, sync.bias = child.weight, child.bias
            if child.track_running_stats:
                sync.running_mean, sync.running_var = child.running_mean, child.running_var
                sync.num_batches_tracked = child.num_batches_tracked
            sync.process_group = ctx.bn_group
            sync.train(child.training)
            setattr(model, name, sync)
        else:
            sync_batch_norm(child, ctx)
    return model


def mean_over_ranks(value: torch.Tensor, ctx: DistContext) -> float:
    """The mean of a scalar over all processes (the loss the global batch would have)."""
    if ctx.world <= 1:
        return float(value.item())
    total = value.detach().float().reshape(1).clone()
    dist.all_reduce(total)
    return float(total.item()) / ctx.world


def broadcast_values(values: list[float], ctx: DistContext) -> list[float]:
    """Rank 0's ``values`` on every process (the schedule rank 0 decided by validation)."""
    if ctx.world <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.broadcast(t, src=0)
    return t.tolist()


def _encode(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _decode(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def gather_rng_states(ctx: DistContext) -> list[dict[str, str]]:
    """Every process's torch RNG state (CPU, and CUDA when it trains there), rank order,
    as JSON-able strings for the snapshot: dropout masks differ per process, so a resumed
    run needs each process's own stream back."""
    mine = {"cpu": _encode(torch.get_rng_state())}
    if ctx.device.type == "cuda":
        mine["cuda"] = _encode(torch.cuda.get_rng_state(ctx.device))
    if ctx.world <= 1:
        return [mine]
    states: list[Any] = [None] * ctx.world
    dist.all_gather_object(states, mine)
    return states


def restore_rng_state(state: dict[str, str], ctx: DistContext) -> None:
    """Sets this process's torch RNG from one entry of :func:`gather_rng_states`."""
    torch.set_rng_state(_decode(state["cpu"]))
    if "cuda" in state and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(_decode(state["cuda"]), ctx.device)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes, values in a
    contiguous layout): equal digests mean bit-identical models."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def hashes_file(ctx: DistContext) -> Path | None:
    """``<$MICRONET_DEBUG_WEIGHT_HASHES>/rank<R>.txt``, or None when the variable is unset."""
    folder = os.environ.get(HASHES_ENV)
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder) / f"rank{ctx.rank}.txt"
