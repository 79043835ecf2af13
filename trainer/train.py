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

import csv
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from micronet.runtime import machine
from micronet.runtime.errors import InputError
from micronet.runtime.model_info import ModelInfo
from micronet.runtime.resample import resample

from .checkpoint import load_checkpoint, load_snapshot, save_checkpoint, save_snapshot
from .data import (
    AugmentConfig,
    PointDataset,
    channel_stats,
    load_point_folder,
    sample_crop,
)
from .distributed import (
    DistContext,
    broadcast_values,
    gather_rng_states,
    hashes_file,
    mean_over_ranks,
    restore_rng_state,
    setup,
    sync_batch_norm,
    weights_digest,
)
from .loss import loss_for, two_source_loss, weighted_mse
from .models import ACTIVATIONS, MicroNet, create_model, widen, with_activation
from .targets import TARGET_KINDS, TargetConfig, make_target
from .validate import choose_threshold, normalize, predict_map, validation_inputs

__all__ = ["TrainConfig", "resolve_bf16", "resolve_channels_last", "resolve_machine_defaults", "resolve_threads", "train"]

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
        valid = {f.name for f in fields(cls)}
        unknown = set(data) - valid
        if unknown:
            raise InputError(f"unknown training option(s) {sorted(unknown)}; valid: {', '.join(sorted(valid))}")
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


def resolve_machine_defaults(cfg: TrainConfig, device: torch.device) -> TrainConfig:
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


class _Sampler:
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
        self, data: PointDataset, cfg: TrainConfig, model_mpp: float, rng: np.random.Generator, target: TargetConfig | None = None
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


def _load_teacher(cfg: TrainConfig, model_mpp: float, device: torch.device) -> tuple[torch.nn.Module, Any, Any] | None:
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


def _train(cfg: TrainConfig, requested: TrainConfig, ctx: DistContext, resume: str | Path | None, progress: bool) -> Path:
    rank, world, device = ctx.rank, ctx.world, ctx.device
    out = Path(cfg.out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    cfg = resolve_machine_defaults(cfg, device)  # from here on bf16, channels_last and threads are set
    torch.set_num_threads(cfg.threads)
    # Per process: dropout masks must differ between the processes' slices of the batch.
    # The initial weights differ too, until DDP broadcasts rank 0's.
    torch.manual_seed(cfg.seed + rank)

    # Data: the target set (train split, optionally a fraction), validation, auxiliary.
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
    aux_set = load_point_folder(cfg.aux_data, cfg.aux_split, cfg.aux_mpp) if cfg.aux_fraction > 0 else None
    model_mpp = cfg.model_mpp or train_set.mpp

    # Model: fresh, or from a checkpoint (fine-tuning keeps its normalisation).
    if cfg.init:
        model, init_info = load_checkpoint(cfg.init)
        mean, std = init_info.mean, init_info.std
        model_mpp = cfg.model_mpp or init_info.mpp
        if cfg.activation and not hasattr(model.config, "activation"):
            raise InputError(f"activation: {cfg.init} is a {model.config_dict()['name']!r} network, which has no activation option")
        if cfg.activation and cfg.activation != model.config.activation:
            model = with_activation(model, cfg.activation)
        if cfg.dropout is not None and cfg.dropout != model.config.dropout:
            model = _with_dropout(model, cfg.dropout)
        if cfg.widths and tuple(cfg.widths) != tuple(getattr(model.config, "widths", ())):
            model = _widened(model, cfg)
    else:
        model = create_model(cfg.model, widths=cfg.widths, activation=cfg.activation, dropout=cfg.dropout, **cfg.model_options)
        mean, std = channel_stats(train_set.images + (aux_set.images if aux_set else []))
    frozen = [p for blk in model.blocks()[: cfg.freeze_blocks] for m in blk for p in m.parameters()]
    for p in frozen:
        p.requires_grad_(False)
    model = sync_batch_norm(model, ctx)  # N processes: batch statistics of the global batch
    model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: torch.nn.Module = model
    if world > 1:
        # Broadcasts rank 0's weights and buffers now and averages the gradients in backward.
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    kind = cfg.target_kind or getattr(model, "target_kind", "proximity")
    target = TargetConfig(
        cfg.target_alpha, cfg.target_radius, cfg.target_scale, kind=kind,
        disk_radius=cfg.disk_radius, sigma=cfg.density_sigma, density_scale=cfg.density_scale,
    )
    if cfg.teacher and kind != "proximity":
        raise InputError(f"teacher: distillation regresses proximity maps; this run's target is {kind!r}")
    loss_fn = loss_for(kind, cfg.lam)
    teacher = _load_teacher(cfg, model_mpp, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)

    # One crop stream for the whole run, the same on every process (each renders its slice).
    rng = np.random.default_rng(cfg.seed)
    sampler = _Sampler(train_set, cfg, model_mpp, rng, target)
    aux_sampler = _Sampler(aux_set, cfg, model_mpp, rng, target) if aux_set else None
    n_aux = round(cfg.batch * cfg.aux_fraction) if aux_set else 0  # per process

    info = ModelInfo(
        architecture=model.config_dict(),
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        mpp=float(model_mpp),
        threshold=0.5 * target.peak(),
        min_distance=cfg.min_distance,
        target=target.as_metadata(),
        eval_radius=cfg.eval_radius,
        provenance=_provenance(cfg, world),
    )
    state: dict[str, Any] = {"iteration": 0, "best_f1": -1.0, "best_iteration": 0, "last_change": 0, "lr": cfg.lr, "elapsed": 0.0}
    if resume:
        saved = load_snapshot(resume, model, optimizer)  # every process: weights, optimiser, rank 0's torch RNG
        state.update(saved["state"])
        sampler.restore(saved["sampler"])
        if aux_sampler and "aux_sampler" in saved:
            aux_sampler.restore(saved["aux_sampler"])
        _restore_process_rng(saved, cfg, ctx)
        info = ModelInfo.from_json(json.dumps(saved["info"]))
        info.provenance.update(_provenance(cfg, world))  # this run's machine and resolved settings
        log.info("resumed from %s at iteration %d", resume, state["iteration"])

    log_file, writer = _open_log(out / "log.csv", resume, state["iteration"]) if ctx.is_main else (None, None)
    hash_path = hashes_file(ctx)

    val_images, val_points, val_scales = validation_inputs(val_set, model_mpp)
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.iterations, initial=state["iteration"], disable=not progress or not ctx.is_main, desc="train", unit="it")
    t_start = time.perf_counter() - state["elapsed"]
    model.train()
    running = None
    stop = False
    while state["iteration"] < cfg.iterations and not stop:
        # Batch: this process's slice of the global target crops, then of the auxiliary
        # crops (domain flag for the two-source loss).
        items = sampler.draw_slice(cfg.batch - n_aux, ctx)
        items += aux_sampler.draw_slice(n_aux, ctx) if aux_sampler else []
        crops = np.stack([c for c, _ in items])  # (B, 200, 200, 3) uint8
        x = normalize(crops, mean, std).to(device)  # (B, 3, 200, 200)
        y = torch.from_numpy(np.stack([t for _, t in items]))[:, None].to(device)  # (B, 1, 200, 200)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            pred = net(x)
        if n_aux:
            domain = torch.tensor([True] * (cfg.batch - n_aux) + [False] * n_aux, device=device)
            loss = two_source_loss(pred, y, domain, cfg.gamma, cfg.lam, loss_fn)
        else:
            loss = loss_fn(pred, y)  # Eq. 2 for proximity maps
        if teacher is not None:
            teacher_net, t_mean, t_std = teacher
            with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                soft = teacher_net(normalize(crops, t_mean, t_std).to(device)).float()
            # Into the targets' range: Eq. 2 weights pixels by their target, and a linear
            # head can go below 0 (a weak teacher far below, making weights negative).
            soft = soft.clamp(0.0, cfg.target_scale)
            loss = (1.0 - cfg.teacher_weight) * loss + cfg.teacher_weight * weighted_mse(pred, soft, cfg.lam)
        if cfg.lr_milestones:
            done = state["iteration"] / max(1, cfg.iterations)
            state["lr"] = cfg.lr * 0.1 ** sum(done >= m for m in cfg.lr_milestones)
            for group in optimizer.param_groups:
                group["lr"] = state["lr"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: gradients averaged over the processes here
        optimizer.step()
        state["iteration"] += 1
        it = state["iteration"]
        # The global batch's loss (mean over processes); syncs the device once per step,
        # cheap next to the step, and every process sees the same value (and raises together).
        value = mean_over_ranks(loss, ctx)
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at iteration {it}; lower lr or check the data")
        if hash_path is not None:
            with hash_path.open("a") as f:
                f.write(f"{it} {weights_digest(model)}\n")
        running = value if running is None else 0.98 * running + 0.02 * value
        row: list[Any] = [it, f"{value:.5f}", optimizer.param_groups[0]["lr"], "", "", "", "", ""]

        # Validate: choose ξ by best F1; keep the best checkpoint; decay lr on a plateau.
        # Rank 0 validates and decides; the others take the schedule from it.
        validating = bool(val_images) and (it % cfg.val_every == 0 or it == cfg.iterations)
        if validating and ctx.is_main:
            maps = [predict_map(model, im, mean, std, device) for im in val_images]
            if not all(np.isfinite(m).all() for m in maps):
                raise FloatingPointError(f"the network's map became non-finite at iteration {it} (diverged); lower lr or check the data")
            sweep = choose_threshold(maps, val_points, cfg.eval_radius, cfg.min_distance, target.peak(), scales=val_scales)
            best = sweep.metrics_at(sweep.best_index)
            row[3:7] = [f"{best.f1:.4f}", f"{best.precision:.4f}", f"{best.recall:.4f}", f"{sweep.best_threshold:.4f}"]
            if best.f1 > state["best_f1"]:
                state.update(best_f1=best.f1, best_iteration=it, last_change=it)
                info.threshold = sweep.best_threshold
                info.provenance.update(iterations=it, val_f1=best.f1, val_precision=best.precision, val_recall=best.recall)
                save_checkpoint(out / "best.safetensors", model, info)
            elif not cfg.lr_milestones and it - state["last_change"] >= cfg.patience:
                state["lr"] /= 10.0
                state["last_change"] = it
                log.info("iteration %d: validation F1 flat for %d iterations, lr -> %g", it, cfg.patience, state["lr"])
                stop = state["lr"] < cfg.min_lr
            bar.set_postfix(loss=f"{running:.4f}", val_f1=f"{state['best_f1']:.3f}", lr=f"{state['lr']:.0e}")
        elif ctx.is_main and it % 10 == 0:
            bar.set_postfix(loss=f"{running:.4f}", val_f1=f"{state['best_f1']:.3f}", lr=f"{state['lr']:.0e}")
        if validating:
            lr, last_change, flag = broadcast_values([state["lr"], state["last_change"], float(stop)], ctx)
            state.update(lr=lr, last_change=int(last_change))
            stop = bool(flag)
            for group in optimizer.param_groups:
                group["lr"] = state["lr"]
        state["elapsed"] = time.perf_counter() - t_start
        row[7] = f"{state['elapsed']:.1f}"
        if writer is not None:
            writer.writerow(row)
        bar.update(1)

        if it % cfg.snapshot_every == 0 or it == cfg.iterations or stop:
            rng_states = gather_rng_states(ctx)  # every process's dropout stream (a collective)
            if ctx.is_main:
                log_file.flush()
                extra = {
                    "state": state, "sampler": sampler.state(), "info": json.loads(info.to_json()),
                    "config": _jsonable(asdict(requested)), "world": world, "torch_rng": rng_states,
                }
                if aux_sampler:
                    extra["aux_sampler"] = aux_sampler.state()
                save_snapshot(out / "last_snapshot.safetensors", model, optimizer, info, extra)
    bar.close()
    if ctx.is_main:
        log_file.close()
        if not (out / "best.safetensors").exists():
            save_checkpoint(out / "best.safetensors", model, info)  # no validation set: last weights
        _plot_log(out / "log.csv", out / "curves.png")
    ctx.barrier()  # every process returns once the checkpoint exists
    return out / "best.safetensors"


def _widened(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """``--init`` with ``--widths``: the initial network widened to those widths, computing
    the same function (``models.widen``). Context channels grow with the first width
    unless ``--model-options '{"context_channels": N}'`` says otherwise."""
    if not isinstance(model, MicroNet):
        raise InputError(f"widths: {cfg.init} is a {model.config_dict()['name']!r} network; only a MicroNet can be widened")
    wide = widen(model, tuple(cfg.widths), cfg.model_options.get("context_channels"), seed=cfg.seed)
    old, new = model.config, wide.config
    log.info("widened %s: widths %s -> %s, context channels %d -> %d", cfg.init, old.widths, new.widths, old.context_channels, new.context_channels)
    return wide


def _with_dropout(model: torch.nn.Module, dropout: float) -> torch.nn.Module:
    """A copy of a checkpoint's MicroNet with another dropout rate (dropout has no weights)."""
    swapped = type(model)(replace(model.config, dropout=dropout))
    swapped.load_state_dict(model.state_dict())
    return swapped.train(model.training)


def _restore_process_rng(saved: dict[str, Any], cfg: TrainConfig, ctx: DistContext) -> None:
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


def _open_log(log_path: Path, resume: str | Path | None, iteration: int) -> tuple[Any, Any]:
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


def _provenance(cfg: TrainConfig, world: int = 1) -> dict[str, Any]:
    """What made a checkpoint: the resolved config, the process count, the software and
    the machine (rank 0's)."""
    return {
        "config": _jsonable(asdict(cfg)),
        "processes": world,
        "torch": torch.__version__,
        "host": platform.node(),
        "machine": machine.describe_machine(measure_peak=False),
    }


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _plot_log(log_path: Path, png: Path) -> None:
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
