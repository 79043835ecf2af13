"""The parts a training run is built from (trainer/train.py): the crop stream
(:class:`Sampler`), the teacher, network surgery at start-up (another activation,
dropout or width), the process RNG on resume, the log file, the provenance and the
curves plot."""

from __future__ import annotations

import csv
import json
import logging
import platform
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from micronet.runtime import machine
from micronet.runtime.errors import InputError
from micronet.runtime.resample import resample

from .checkpoint import load_checkpoint
from .data import AugmentConfig, PointDataset, sample_crop
from .distributed import DistContext, restore_rng_state
from .models import MicroNet
from .widen import widen
from .targets import TargetConfig, make_target

if TYPE_CHECKING:  # pragma: no cover
    from .train import TrainConfig

log = logging.getLogger("micronet.trainer.train")  # the run's log, as before the split


class Sampler:
    """Crops in passes: each pass visits every image `crops_per_image` times in random
    order. The order and RNG state are part of the snapshot, so a resumed run draws the
    same crops it would have drawn.

    A crop is planned, then rendered: :meth:`plan` takes the next image and a seed for
    its augmentation from the run's stream; :meth:`render` makes the crop from that seed
    alone. Every process of a distributed run plans the whole global batch (cheap) and
    renders only its own slice, so N processes see exactly the crops one process with
    batch N·b sees, without rendering the others' crops.
    """

    def __init__(
        self, data: PointDataset, cfg: "TrainConfig", model_mpp: float, rng: np.random.Generator, target: TargetConfig | None = None
    ) -> None:
        self.data = data
        self.cfg = cfg
        # Images at another pixel size are brought to the model's once, by the resampler
        # the detector uses (anti-aliased, pixel centres corresponding), so the network
        # trains on the pixels it will see; crops then only jitter the scale around 1.
        ratio = data.mpp / model_mpp  # model pixels per source pixel
        resampled = [resample(im, pts, ratio) for im, pts in zip(data.images, data.points)]
        self.images = [r[0] for r in resampled]
        self.points = [r[1] for r in resampled]
        self.scale = 1.0 / ratio if resampled and resampled[0][2] is None else 1.0  # source pixels per model pixel
        self.aug = AugmentConfig(crop=cfg.crop, **cfg.augment)
        # What each crop's map is; default Eq. 1 with the config's α, d and scale.
        self.target = target or TargetConfig(cfg.target_alpha, cfg.target_radius, cfg.target_scale)
        self.rng = rng
        self.order: list[int] = []
        self.pos = 0

    def plan(self) -> tuple[int, int]:
        """The next crop's ``(image index, augmentation seed)``."""
        if self.pos >= len(self.order):
            self.order = self.rng.permutation(np.repeat(np.arange(len(self.data)), self.cfg.crops_per_image)).tolist()
            self.pos = 0
        i = self.order[self.pos]
        self.pos += 1
        return i, int(self.rng.integers(2**63))

    def render(self, plan: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(crop, target)``: ``(crop, crop, 3)`` uint8 and its ``(crop, crop)`` float32 map."""
        i, seed = plan
        crop, pts = sample_crop(self.images[i], self.points[i], np.random.default_rng(seed), self.aug, scale=self.scale)
        return crop, make_target(pts, crop.shape[:2], self.target)

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        return self.render(self.plan())

    def draw_slice(self, per_rank: int, ctx: DistContext) -> list[tuple[np.ndarray, np.ndarray]]:
        """This process's ``per_rank`` crops of the global batch (``ctx.world × per_rank``
        planned, identically on every process)."""
        plans = [self.plan() for _ in range(per_rank * ctx.world)]
        return [self.render(p) for p in plans[ctx.rank * per_rank : (ctx.rank + 1) * per_rank]]

    def state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "order": self.order, "pos": self.pos}

    def restore(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order, self.pos = list(state["order"]), int(state["pos"])


def load_teacher(cfg: "TrainConfig", model_mpp: float, device: torch.device) -> tuple[torch.nn.Module, Any, Any] | None:
    """The frozen teacher network and its normalisation, or None without ``cfg.teacher``.

    Distillation: the student also regresses the teacher's proximity map on every crop
    (Eq. 2 with the teacher's map as the target), which carries the teacher's behaviour
    over where annotations say nothing: used to fine-tune the ReLU variant towards the
    paper's ELU network.
    """
    if not cfg.teacher:
        return None
    with torch.random.fork_rng(devices=[]):  # building the network draws initial weights:
        net, t_info = load_checkpoint(cfg.teacher)  # keep the run's RNG (dropout masks) as it was
    if abs(t_info.mpp - model_mpp) > 0.01 * model_mpp:
        raise InputError(f"teacher {cfg.teacher} works at {t_info.mpp} µm/px, the model at {model_mpp}: they must match")
    net.eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    return net, t_info.mean, t_info.std


def widened(model: torch.nn.Module, cfg: "TrainConfig") -> torch.nn.Module:
    """``--init`` with ``--widths``: the initial network widened to those widths, computing
    the same function (``widen.widen``). Context channels grow with the first width
    unless ``--model-options '{"context_channels": N}'`` says otherwise."""
    if not isinstance(model, MicroNet):
        raise InputError(f"widths: {cfg.init} is a {model.config_dict()['name']!r} network; only a MicroNet can be widened")
    wide = widen(model, tuple(cfg.widths), cfg.model_options.get("context_channels"), seed=cfg.seed)
    old, new = model.config, wide.config
    log.info("widened %s: widths %s -> %s, context channels %d -> %d", cfg.init, old.widths, new.widths, old.context_channels, new.context_channels)
    return wide


def with_dropout(model: torch.nn.Module, dropout: float) -> torch.nn.Module:
    """A copy of a checkpoint's MicroNet with another dropout rate (dropout has no weights)."""
    swapped = type(model)(replace(model.config, dropout=dropout))
    swapped.load_state_dict(model.state_dict())
    return swapped.train(model.training)


def restore_process_rng(saved: dict[str, Any], cfg: "TrainConfig", ctx: DistContext) -> None:
    """This process's torch RNG (its dropout stream) as the snapshot recorded it.

    ``load_snapshot`` gave every process rank 0's state. A snapshot from another process
    count (or from before per-process states) cannot give the others theirs: they get a
    fresh stream of their own, never a copy of rank 0's (same masks on two slices).
    """
    states = saved.get("torch_rng") or []
    saved_world = int(saved.get("world", 1))
    if saved_world == ctx.world and ctx.rank < len(states):
        restore_rng_state(states[ctx.rank], ctx)
        return
    if saved_world != ctx.world and ctx.is_main:
        log.warning(
            "the snapshot was written by %d process(es), this run has %d: the global batch is now %d crops",
            saved_world, ctx.world, ctx.world * cfg.batch,
        )
    if ctx.rank > 0:
        seed = np.random.SeedSequence([cfg.seed, ctx.rank, int(saved["state"]["iteration"])]).generate_state(1)[0]
        torch.manual_seed(int(seed))


def open_log(log_path: Path, resume: str | Path | None, iteration: int) -> tuple[Any, Any]:
    """``log.csv`` for appending (rank 0 only): new with its header, or, when resuming,
    cut back to the snapshot's iteration."""
    new_log = not (resume and log_path.exists())
    if not new_log:
        # Rows written after the snapshot belong to the interrupted run: drop them.
        with log_path.open(newline="") as f:
            rows = list(csv.reader(f))
        rows = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= iteration]
        with log_path.open("w", newline="") as f:
            csv.writer(f).writerows(rows)
    log_file = log_path.open("w" if new_log else "a", newline="")
    writer = csv.writer(log_file)
    if new_log:
        writer.writerow(["iteration", "loss", "lr", "val_f1", "val_precision", "val_recall", "val_threshold", "elapsed_s"])
    return log_file, writer


def provenance(cfg: "TrainConfig", world: int = 1) -> dict[str, Any]:
    """What made a checkpoint: the resolved config, the process count, the software and
    the machine (rank 0's)."""
    return {
        "config": jsonable(asdict(cfg)),
        "processes": world,
        "torch": torch.__version__,
        "host": platform.node(),
        "machine": machine.describe_machine(measure_peak=False),
    }


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def plot_log(log_path: Path, png: Path) -> None:
    """Loss, validation F1 and learning rate against iterations."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional
        log.info("matplotlib not installed: skipping %s", png)
        return
    with log_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    it = np.array([int(r["iteration"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    lr = np.array([float(r["lr"]) for r in rows])
    val = [(int(r["iteration"]), float(r["val_f1"])) for r in rows if r["val_f1"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    k = max(1, len(loss) // 200)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    axes[0].plot(it[: len(smooth)], smooth)
    axes[0].set(title="training loss (Eq. 2)", xlabel="iteration", yscale="log")
    if val:
        axes[1].plot(*zip(*val), marker=".")
    axes[1].set(title="validation F1 (best ξ)", xlabel="iteration")
    axes[2].plot(it, lr)
    axes[2].set(title="learning rate", xlabel="iteration", yscale="log")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
