"""The training loop: schedule → validate/checkpoint → step → log, top to bottom.

Faithful to Xing et al. 2019 (Implementation details): SGD with Nesterov momentum 0.9,
learning rate 0.01, weight decay 1e-6, batch 4 of random 200×200 crops (four per image
per pass), the learning rate divided by 10 when validation F1 stops improving, training
stopped once it falls below 1e-4. Fine-tuning freezes the first k blocks; auxiliary data
is mixed into each batch and weighted by the two-source loss γ·L_target + L_auxiliary.

Under ``torchrun --nproc_per_node N`` the same loop runs data-parallel (trainer/distributed.py,
docs/training.md): N processes with ``batch`` b each train like one process with batch N·b.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from micronet.runtime.errors import InputError
from micronet.runtime.model_info import ModelInfo
from micronet.runtime.stain import training_colour_stats

from .checkpoint import load_checkpoint, load_snapshot, save_checkpoint, save_snapshot
from .data import channel_stats, load_point_folder
from .distributed import (
    DistContext,
    broadcast_values,
    gather_rng_states,
    hashes_file,
    mean_over_ranks,
    setup,
    sync_batch_norm,
    weights_digest,
)
from .loss import loss_for, two_source_loss, weighted_mse
from .models import ACTIVATIONS, create_model, with_activation
from .options import check_names
from .resolve import (  # re-exported: the machine-bound defaults were defined here
    native_bf16,
    resolve_bf16,
    resolve_channels_last,
    resolve_machine_defaults,
    resolve_threads,
)
from .targets import TARGET_KINDS, TargetConfig
from .train_parts import (
    Sampler,
    jsonable,
    load_teacher,
    open_log,
    plot_log,
    provenance,
    restore_process_rng,
    widened,
    with_dropout,
)
from .validate import choose_threshold, normalize, predict_map, validation_inputs

_Sampler = Sampler  # the name tests and older callers import

__all__ = ["TrainConfig", "native_bf16", "resolve_bf16", "resolve_channels_last", "resolve_machine_defaults", "resolve_threads", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a run needs; stored in every snapshot and in the checkpoint provenance.

    Distributed training (``torchrun --nproc_per_node N -m micronet train ...``, see
    docs/training.md): ``batch`` is per process, so the global batch is N·``batch``;
    ``device="cuda"`` puts process r on ``cuda:LOCAL_RANK`` with NCCL, ``"cpu"`` uses
    gloo. Every process takes its slice of one global crop stream, gradients are
    averaged and batch norm uses the global batch's statistics, so the run matches one
    process with batch N·``batch`` (dropout masks aside: set ``dropout=0`` to compare
    bit for bit). Only rank 0 writes to ``out``; resume with the same N.
    """

    data: str = "../shared/data/crchisto"  # point-annotated folder (see trainer/data.py)
    train_split: str | None = "train"
    val_split: str | None = "val"
    data_mpp: float | None = None  # µm/px of `data`; None: dataset.json or known sets
    model_mpp: float | None = None  # µm/px the model works at; None: that of `data`
    target_fraction: float = 1.0  # use this fraction of the target training images
    aux_data: str | None = None  # auxiliary point-annotated folder
    aux_split: str | None = None
    aux_mpp: float | None = None
    aux_fraction: float = 0.0  # share of each batch drawn from the auxiliary data
    gamma: float = 1.0  # weight of the target-domain loss when aux data is mixed in
    model: str = "micronet"  # registry name (micronet.trainer.models.list_models())
    widths: tuple[int, int, int, int] | None = None  # override the variant's widths
    model_options: dict[str, Any] = field(default_factory=dict)  # the model's own options (baselines: {"base": 16})
    activation: str | None = None  # override the variant's (or, with init, the checkpoint's) activation
    init: str | None = None  # checkpoint to fine-tune from
    teacher: str | None = None  # checkpoint whose proximity maps are a second target (distillation)
    teacher_weight: float = 0.5  # β: loss = (1 − β)·Eq. 2 against annotations + β·Eq. 2 against the teacher
    freeze_blocks: int = 0  # freeze blocks 1..k (fine-tuning)
    dropout: float | None = None  # override the variant's dropout (blocks 4-5); 0 turns it off
    iterations: int = 100_000  # the paper's budget
    batch: int = 4  # crops per step and process: under torchrun the global batch is WORLD_SIZE × batch
    crop: int = 200
    crops_per_image: int = 4  # per pass over the images
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-6
    patience: int = 2_000  # iterations without a better validation F1 before lr ÷ 10
    # A fixed schedule instead: lr ÷ 10 at each of these fractions of `iterations` (an
    # equal-budget study gives every model the same schedule); plateaus then decay nothing.
    lr_milestones: list[float] | None = None
    min_lr: float = 1e-4  # stop once the learning rate falls below this
    val_every: int = 250
    snapshot_every: int = 250
    eval_radius: float = 6.0  # matching radius (pixels of `data`) for choosing ξ
    min_distance: int = 3  # peak spacing in model pixels
    lam: float = 5.0  # λ of Eq. 2
    target_alpha: float = 3.0  # α of Eq. 1
    target_radius: float = 15.0  # d of Eq. 1 (model pixels)
    target_scale: float = 5.0
    # What the network regresses: None, the model's own (MicroNet and FRCN: Eq. 1's
    # proximity map; FCN and U-Net: a nucleus disk, as pixel classifiers; FCRN-A/B: a
    # Gaussian density map). See trainer/targets.py.
    target_kind: str | None = None
    disk_radius: float = 6.0  # model pixels, for "disk"
    density_sigma: float = 3.0  # model pixels, for "density"
    density_scale: float = 100.0  # FCRN's density multiplier
    augment: dict[str, Any] = field(default_factory=dict)  # AugmentConfig overrides
    seed: int = 0
    device: str = "cpu"
    # NHWC activations. None: channels-last for float32 steps on the CPU (0.81x the step
    # time of NCHW there, no gain under bf16: benchmarks/results/train_step.md), NCHW
    # elsewhere (not measured on a GPU). Resolved when training starts, after bf16.
    channels_last: bool | None = None
    # bfloat16 autocast. None: where it is native (CUDA with bf16, a CPU with AVX512_BF16
    # or AMX-BF16; 0.63x the float32 step time on such a CPU, train_step.md), float32
    # elsewhere (emulated bf16 is several times slower). Resolved when training starts.
    bf16: bool | None = None
    threads: int | None = None  # torch intra-op threads; None: this process's share of the physical cores
    out: str = "runs/micronet"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        check_names(data, (f.name for f in fields(cls)), "training")
        data = dict(data)
        if data.get("widths") is not None:
            data["widths"] = tuple(data["widths"])
        return cls(**data)

    def check(self) -> None:
        if not 0.0 < self.target_fraction <= 1.0:
            raise InputError(f"target_fraction: expected (0, 1], got {self.target_fraction}")
        if not 0.0 <= self.aux_fraction < 1.0:
            raise InputError(f"aux_fraction: expected [0, 1), got {self.aux_fraction}")
        if self.aux_fraction > 0 and not self.aux_data:
            raise InputError("aux_fraction > 0 needs aux_data")
        if not 0 <= self.freeze_blocks <= 10:
            raise InputError(f"freeze_blocks: expected 0..10, got {self.freeze_blocks}")
        if self.freeze_blocks and not self.init:
            raise InputError("freeze_blocks needs init (a checkpoint to fine-tune from)")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise InputError(f"activation: expected one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if not 0.0 <= self.teacher_weight <= 1.0:
            raise InputError(f"teacher_weight: expected [0, 1], got {self.teacher_weight}")
        if self.lr_milestones is not None and not all(0.0 < m < 1.0 for m in self.lr_milestones):
            raise InputError(f"lr_milestones: expected fractions of the run in (0, 1), got {self.lr_milestones}")
        if self.batch < 1 or self.iterations < 0:
            raise InputError("batch must be >= 1 and iterations >= 0")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads: expected >= 1 or None (physical cores), got {self.threads}")
        if self.target_kind is not None and self.target_kind not in TARGET_KINDS:
            raise InputError(f"target_kind: expected one of {', '.join(TARGET_KINDS)} or None (the model's), got {self.target_kind!r}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout: expected a probability in [0, 1) or None (the variant's), got {self.dropout}")


def train(cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True) -> Path:
    """Trains and returns the path of the best checkpoint (``<out>/best.safetensors``).

    Under torchrun every process calls this; they train one model data-parallel and
    only rank 0 writes (checkpoints, snapshot, ``log.csv``, ``curves.png``). Each returns
    once the checkpoint is written.

    Args:
        cfg: the run's configuration.
        resume: a snapshot to continue from (``<out>/last_snapshot.safetensors``); the
            config stored in it wins over ``cfg`` except for ``iterations`` and ``out``.
            Under torchrun every process reads it (shared storage across nodes).
    """
    cfg.check()
    requested = cfg  # as given: snapshots keep it, so a resumed run resolves on its own machine
    ctx = setup(cfg.device)  # rank and world from torchrun's environment; (0, 1) otherwise
    try:
        return _train(cfg, requested, ctx, resume, progress)
    finally:
        ctx.close()


class _Run:
    """One training run, built at set-up; the loop (:func:`_train`) calls its steps.

    Set-up resolves the machine's defaults, loads the data and the network (fresh, or a
    checkpoint to fine-tune, reshaped as asked), builds the objective, the optimiser and
    the crop streams, and restores a snapshot when resuming. Then, per iteration:
    :meth:`schedule` → :meth:`step` → :meth:`validate` (every ``val_every``) →
    :meth:`write` → :meth:`snapshot` (every ``snapshot_every``); :meth:`finish` at the end.
    """

    def __init__(self, cfg: TrainConfig, requested: TrainConfig, ctx: DistContext, resume: str | Path | None) -> None:
        self.requested, self.ctx, self.out = requested, ctx, Path(cfg.out)
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg = resolve_machine_defaults(cfg, ctx.device)  # from here on bf16, channels_last and threads are set
        torch.set_num_threads(cfg.threads)
        # Per process: dropout masks must differ between the processes' slices of the batch.
        # The initial weights differ too, until DDP broadcasts rank 0's.
        torch.manual_seed(cfg.seed + ctx.rank)
        self._load_data()
        self._build_model()
        self._build_objective()
        self.state: dict[str, Any] = {"iteration": 0, "best_f1": -1.0, "best_iteration": 0, "last_change": 0, "lr": cfg.lr, "elapsed": 0.0}
        if resume:
            self._resume(resume)
        self.log_file, self.writer = open_log(self.out / "log.csv", resume, self.state["iteration"]) if ctx.is_main else (None, None)
        self.hash_path = hashes_file(ctx)
        self.val_images, self.val_points, self.val_scales = validation_inputs(self.val_set, self.model_mpp)
        self.stop = False
        self.running: float | None = None

    def _load_data(self) -> None:
        """The target set (train split, optionally a fraction), validation, auxiliary."""
        cfg = self.cfg
        train_set = load_point_folder(cfg.data, cfg.train_split, cfg.data_mpp)
        if cfg.target_fraction < 1.0:
            keep = np.random.default_rng(cfg.seed).permutation(len(train_set))[: max(1, round(cfg.target_fraction * len(train_set)))]
            train_set = train_set.subset(sorted(keep))
        if cfg.val_split and cfg.val_split == cfg.train_split:
            # Validating on the training split (a target set too small to hold images out)
            # means on the images trained on: a fraction's own, never the ones it left out.
            val_set = train_set
        else:
            val_set = load_point_folder(cfg.data, cfg.val_split, cfg.data_mpp) if cfg.val_split else None
        self.train_set, self.val_set = train_set, val_set
        self.aux_set = load_point_folder(cfg.aux_data, cfg.aux_split, cfg.aux_mpp) if cfg.aux_fraction > 0 else None
        self.model_mpp = cfg.model_mpp or train_set.mpp

    def _build_model(self) -> None:
        """Fresh, or from a checkpoint (fine-tuning keeps its normalisation); frozen
        blocks, synchronised batch norm, the device and layout, DDP over processes."""
        cfg, ctx = self.cfg, self.ctx
        if cfg.init:
            model, init_info = load_checkpoint(cfg.init)
            self.mean, self.std = init_info.mean, init_info.std
            self.model_mpp = cfg.model_mpp or init_info.mpp
            model = _reshaped(model, cfg)
        else:
            model = create_model(cfg.model, widths=cfg.widths, activation=cfg.activation, dropout=cfg.dropout, **cfg.model_options)
            self.mean, self.std = channel_stats(self.train_set.images + (self.aux_set.images if self.aux_set else []))
        for p in [p for blk in model.blocks()[: cfg.freeze_blocks] for m in blk for p in m.parameters()]:
            p.requires_grad_(False)
        model = sync_batch_norm(model, ctx)  # N processes: batch statistics of the global batch
        model.to(ctx.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model, self.net = model, model
        if ctx.world > 1:
            # Broadcasts rank 0's weights and buffers now and averages the gradients in backward.
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def _build_objective(self) -> None:
        """Target, loss, teacher, optimiser, crop streams and the checkpoint's metadata."""
        cfg, model = self.cfg, self.model
        kind = cfg.target_kind or getattr(model, "target_kind", "proximity")
        self.target = TargetConfig(
            cfg.target_alpha, cfg.target_radius, cfg.target_scale, kind=kind,
            disk_radius=cfg.disk_radius, sigma=cfg.density_sigma, density_scale=cfg.density_scale,
        )
        if cfg.teacher and kind != "proximity":
            raise InputError(f"teacher: distillation regresses proximity maps; this run's target is {kind!r}")
        self.loss_fn = loss_for(kind, cfg.lam)
        self.teacher = load_teacher(cfg, self.model_mpp, self.ctx.device)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
        # One crop stream for the whole run, the same on every process (each renders its slice).
        rng = np.random.default_rng(cfg.seed)
        self.sampler = Sampler(self.train_set, cfg, self.model_mpp, rng, self.target)
        self.aux_sampler = Sampler(self.aux_set, cfg, self.model_mpp, rng, self.target) if self.aux_set else None
        self.n_aux = round(cfg.batch * cfg.aux_fraction) if self.aux_set else 0  # per process
        # Which of this process's crops are target (True) and which auxiliary: fixed for the run.
        self.domain = torch.tensor([True] * (cfg.batch - self.n_aux) + [False] * self.n_aux, device=self.ctx.device)
        self.info = ModelInfo(
            architecture=model.config_dict(), mean=[float(v) for v in self.mean], std=[float(v) for v in self.std],
            mpp=float(self.model_mpp), threshold=0.5 * self.target.peak(), min_distance=cfg.min_distance,
            target=self.target.as_metadata(), eval_radius=cfg.eval_radius, provenance=provenance(cfg, self.ctx.world),
            # What its training tissue looks like: the Detector warns of images far from it.
            colour=training_colour_stats(self.sampler.images + (self.aux_sampler.images if self.aux_sampler else [])),
        )

    def _resume(self, resume: str | Path) -> None:
        saved = load_snapshot(resume, self.model, self.optimizer)  # every process: weights, optimiser, rank 0's torch RNG
        self.state.update(saved["state"])
        self.sampler.restore(saved["sampler"])
        if self.aux_sampler and "aux_sampler" in saved:
            self.aux_sampler.restore(saved["aux_sampler"])
        restore_process_rng(saved, self.cfg, self.ctx)
        self.info = ModelInfo.from_json(json.dumps(saved["info"]))
        self.info.provenance.update(provenance(self.cfg, self.ctx.world))  # this run's machine and resolved settings
        log.info("resumed from %s at iteration %d", resume, self.state["iteration"])

    @property
    def done(self) -> bool:
        return self.state["iteration"] >= self.cfg.iterations or self.stop

    def _batch(self) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """This process's slice of the global target crops, then of the auxiliary crops."""
        cfg, device = self.cfg, self.ctx.device
        items = self.sampler.draw_slice(cfg.batch - self.n_aux, self.ctx)
        items += self.aux_sampler.draw_slice(self.n_aux, self.ctx) if self.aux_sampler else []
        crops = np.stack([c for c, _ in items])  # (B, 200, 200, 3) uint8
        x = normalize(crops, self.mean, self.std).to(device)  # (B, 3, 200, 200)
        y = torch.from_numpy(np.stack([t for _, t in items]))[:, None].to(device)  # (B, 1, 200, 200)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return crops, x, y

    def _loss(self, crops: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Eq. 2 (or the baseline's loss), two-source with auxiliary crops, and the
        teacher's share when distilling."""
        cfg, device = self.cfg, self.ctx.device
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            pred = self.net(x)
        if self.n_aux:
            loss = two_source_loss(pred, y, self.domain, cfg.gamma, cfg.lam, self.loss_fn)
        else:
            loss = self.loss_fn(pred, y)  # Eq. 2 for proximity maps
        if self.teacher is not None:
            teacher_net, t_mean, t_std = self.teacher
            with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                soft = teacher_net(normalize(crops, t_mean, t_std).to(device)).float()
            # Into the targets' range: Eq. 2 weights pixels by their target, and a linear
            # head can go below 0 (a weak teacher far below, making weights negative).
            soft = soft.clamp(0.0, cfg.target_scale)
            loss = (1.0 - cfg.teacher_weight) * loss + cfg.teacher_weight * weighted_mse(pred, soft, cfg.lam)
        return loss

    def step(self) -> list[Any]:
        """One optimiser step on one global batch; its log row (validation columns empty)."""
        cfg, state = self.cfg, self.state
        loss = self._loss(*self._batch())
        if cfg.lr_milestones:
            done = state["iteration"] / max(1, cfg.iterations)
            state["lr"] = cfg.lr * 0.1 ** sum(done >= m for m in cfg.lr_milestones)
            self._set_lr()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: gradients averaged over the processes here
        self.optimizer.step()
        state["iteration"] += 1
        it = state["iteration"]
        # The global batch's loss (mean over processes); syncs the device once per step,
        # cheap next to the step, and every process sees the same value (and raises together).
        value = mean_over_ranks(loss, self.ctx)
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at iteration {it}; lower lr or check the data")
        if self.hash_path is not None:
            with self.hash_path.open("a") as f:
                f.write(f"{it} {weights_digest(self.model)}\n")
        self.running = value if self.running is None else 0.98 * self.running + 0.02 * value
        return [it, f"{value:.5f}", self.optimizer.param_groups[0]["lr"], "", "", "", "", ""]

    def _set_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.state["lr"]

    def validating(self) -> bool:
        it = self.state["iteration"]
        return bool(self.val_images) and (it % self.cfg.val_every == 0 or it == self.cfg.iterations)

    def validate(self, row: list[Any]) -> None:
        """Chooses ξ by best F1, keeps the best checkpoint, decays lr on a plateau: rank 0
        validates and decides, the others take the schedule from it."""
        cfg, state, it = self.cfg, self.state, self.state["iteration"]
        if self.ctx.is_main:
            maps = [predict_map(self.model, im, self.mean, self.std, self.ctx.device) for im in self.val_images]
            if not all(np.isfinite(m).all() for m in maps):
                raise FloatingPointError(f"the network's map became non-finite at iteration {it} (diverged); lower lr or check the data")
            sweep = choose_threshold(maps, self.val_points, cfg.eval_radius, cfg.min_distance, self.target.peak(), scales=self.val_scales)
            best = sweep.metrics_at(sweep.best_index)
            row[3:7] = [f"{best.f1:.4f}", f"{best.precision:.4f}", f"{best.recall:.4f}", f"{sweep.best_threshold:.4f}"]
            if best.f1 > state["best_f1"]:
                state.update(best_f1=best.f1, best_iteration=it, last_change=it)
                self.info.threshold = sweep.best_threshold
                self.info.provenance.update(iterations=it, val_f1=best.f1, val_precision=best.precision, val_recall=best.recall)
                save_checkpoint(self.out / "best.safetensors", self.model, self.info)
            elif not cfg.lr_milestones and it - state["last_change"] >= cfg.patience:
                state["lr"] /= 10.0
                state["last_change"] = it
                log.info("iteration %d: validation F1 flat for %d iterations, lr -> %g", it, cfg.patience, state["lr"])
                self.stop = state["lr"] < cfg.min_lr
        lr, last_change, flag = broadcast_values([state["lr"], state["last_change"], float(self.stop)], self.ctx)
        state.update(lr=lr, last_change=int(last_change))
        self.stop = bool(flag)
        self._set_lr()

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self.running:.4f}", "val_f1": f"{self.state['best_f1']:.3f}", "lr": f"{self.state['lr']:.0e}"}

    def write(self, row: list[Any], elapsed: float) -> None:
        self.state["elapsed"] = elapsed
        row[7] = f"{elapsed:.1f}"
        if self.writer is not None:
            self.writer.writerow(row)

    def snapshot_due(self) -> bool:
        it = self.state["iteration"]
        return it % self.cfg.snapshot_every == 0 or it == self.cfg.iterations or self.stop

    def snapshot(self) -> None:
        """Everything a resumed run needs: weights, optimiser, schedule, crop streams,
        metadata, the request and every process's RNG (a collective)."""
        rng_states = gather_rng_states(self.ctx)  # every process's dropout stream (a collective)
        if not self.ctx.is_main:
            return
        self.log_file.flush()
        extra = {
            "state": self.state, "sampler": self.sampler.state(), "info": json.loads(self.info.to_json()),
            "config": jsonable(asdict(self.requested)), "world": self.ctx.world, "torch_rng": rng_states,
        }
        if self.aux_sampler:
            extra["aux_sampler"] = self.aux_sampler.state()
        save_snapshot(self.out / "last_snapshot.safetensors", self.model, self.optimizer, self.info, extra)

    def finish(self) -> Path:
        if self.ctx.is_main:
            self.log_file.close()
            if not (self.out / "best.safetensors").exists():
                save_checkpoint(self.out / "best.safetensors", self.model, self.info)  # no validation set: last weights
            plot_log(self.out / "log.csv", self.out / "curves.png")
        self.ctx.barrier()  # every process returns once the checkpoint exists
        return self.out / "best.safetensors"


def _reshaped(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """A checkpoint's network with the activation, dropout and widths the run asks for."""
    if cfg.activation and not hasattr(model.config, "activation"):
        raise InputError(f"activation: {cfg.init} is a {model.config_dict()['name']!r} network, which has no activation option")
    if cfg.activation and cfg.activation != model.config.activation:
        model = with_activation(model, cfg.activation)
    if cfg.dropout is not None and cfg.dropout != model.config.dropout:
        model = with_dropout(model, cfg.dropout)
    if cfg.widths and tuple(cfg.widths) != tuple(getattr(model.config, "widths", ())):
        model = widened(model, cfg)
    return model


def _train(cfg: TrainConfig, requested: TrainConfig, ctx: DistContext, resume: str | Path | None, progress: bool) -> Path:
    """The loop, top to bottom: step → validate/checkpoint → log → snapshot."""
    from tqdm.auto import tqdm

    run = _Run(cfg, requested, ctx, resume)
    bar = tqdm(total=run.cfg.iterations, initial=run.state["iteration"], disable=not progress or not ctx.is_main, desc="train", unit="it")
    t_start = time.perf_counter() - run.state["elapsed"]
    run.model.train()
    while not run.done:
        row = run.step()
        if run.validating():
            run.validate(row)
            if ctx.is_main:
                bar.set_postfix(**run.postfix())
        elif ctx.is_main and run.state["iteration"] % 10 == 0:
            bar.set_postfix(**run.postfix())
        run.write(row, time.perf_counter() - t_start)
        bar.update(1)
        if run.snapshot_due():
            run.snapshot()
    bar.close()
    return run.finish()
