"""Distillation: a small MicroNet learns a large one's proximity maps on many images.

A teacher (the wide network, with flip test-time augmentation) labels any H&E pixel, so
the student trains on far more tissue than the 70 annotated CRCHisto images: those
images (annotations and teacher together, and the phenotype labels for the class head),
the training half of MoNuSeg, and unannotated images (whole-slide regions). The teacher's
maps are computed **once**, on the clean images at the teacher's pixel size
(:func:`teacher_maps`, cached on disk), then warped with every crop like the image, while
the crop's pixels are perturbed (stain, brightness, blur, JPEG: :mod:`trainer.augment`):
the student learns to give the clean answer from a perturbed input, at no teacher cost
per step.

The loop reads top to bottom like :mod:`trainer.train`'s (schedule → validate/checkpoint
→ step → log), single process; per crop the loss is

    annotated:    (1 − β) · Eq. 2(pred, annotations) + β · Eq. 2(pred, teacher)
    unannotated:  Eq. 2(pred, teacher)

plus ``class_weight`` × the cross-entropy of the class head at the pixels within
``class_radius_um`` of a labelled nucleus (unlabelled nuclei and background add nothing).

The student may work at another pixel size than the teacher (``model_mpp``): images,
points and teacher maps are brought to it by the runtime's resampler (Pillow's bilinear,
anti-aliased when shrinking), the one the detector uses.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from micronet.runtime.classes import class_probabilities
from micronet.runtime.errors import InputError
from micronet.runtime.evaluation.class_metrics import read_class_labels
from micronet.runtime.evaluation.datasets import load_point_folder
from micronet.runtime.model_info import ModelInfo
from micronet.runtime.resample import resample, to_resampled
from micronet.runtime.stain import training_colour_stats
from scipy.spatial import cKDTree

from .augment import PhotometricConfig
from .checkpoint import load_checkpoint, load_snapshot, save_checkpoint, save_snapshot
from .data import AugmentConfig, sample_crop_with
from .loss import weighted_mse_per_image
from .models import MicroNet, MicroNetConfig
from .narrow import narrow
from .options import check_names
from .targets import TargetConfig, make_target
from .teacher import resize_map, teacher_maps
from .train import resolve_machine_defaults
from .validate import choose_threshold, normalize, validation_inputs

__all__ = ["DistillConfig", "Source", "distill", "teacher_maps", "student_from"]

log = logging.getLogger(__name__)

CRCHISTO_CLASSES = ("epithelial", "fibroblast", "inflammatory", "others")


@dataclass
class DistillConfig:
    """A distillation run; stored in its snapshots and the checkpoint's provenance."""

    teacher: str  # checkpoint of the teacher (its pixel size is the maps')
    init: str | None = None  # checkpoint the student starts from (narrowed when wider: trainer/narrow.py)
    out: str = "runs/distill"
    teacher_cache: str = "runs/teacher_maps"  # maps per image, computed once
    tta: bool = True  # teacher maps averaged over the four flips
    # The student.
    widths: tuple[int, int, int, int] = (16, 32, 64, 64)
    context_channels: int = 6
    activation: str = "relu"
    classes: tuple[str, ...] = CRCHISTO_CLASSES
    model_mpp: float | None = None  # None: the teacher's
    min_distance_um: float = 2.2  # peak spacing (4 px at 0.55 µm/px)
    # Data. `data` is annotated (train split) with phenotype labels in <data>/classes/;
    # `aux_data` annotated without labels; `unlabelled` images "PATH@MPP".
    data: str = "../shared/data/crchisto"
    train_split: str = "train"
    val_split: str = "val"
    aux_data: str | None = None
    aux_split: str | None = None
    unlabelled: list[str] = field(default_factory=list)
    chunk: int = 1000  # unlabelled images are cut into chunks of this side (teacher pixels)
    mix: tuple[float, float, float] = (0.5, 0.2, 0.3)  # share of crops: data, aux, unlabelled
    # Optimisation.
    iterations: int = 6000
    batch: int = 8
    crop: int = 200
    lr: float = 0.005
    lr_milestones: tuple[float, ...] = (0.6, 0.85)
    momentum: float = 0.9
    weight_decay: float = 1e-6
    beta: float = 0.5  # teacher's share of the loss on annotated crops
    lam: float = 5.0  # λ of Eq. 2
    class_weight: float = 0.5
    class_radius_um: float = 2.5
    photometric: float = 1.0  # strength of trainer.augment (0: off)
    photometric_p: float = 0.3  # probability of each perturbation (about 6 % of crops stay clean)
    photometric_options: dict[str, Any] = field(default_factory=dict)  # PhotometricConfig ranges, p_of
    val_every: int = 250
    snapshot_every: int = 250
    eval_radius: float = 6.0  # matching radius in pixels of `data`
    seed: int = 0
    threads: int | None = None
    bf16: bool | None = None
    channels_last: bool | None = None
    device: str = "cpu"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DistillConfig":
        from dataclasses import fields

        check_names(data, (f.name for f in fields(cls)), "distillation")
        data = dict(data)
        for key in ("widths", "classes", "mix", "lr_milestones"):
            if key in data and data[key] is not None:
                data[key] = tuple(data[key])
        cfg = cls(**data)
        _photometric(cfg)  # a bad option fails here, before the teacher's maps are computed
        return cfg


@dataclass
class Source:
    """One training image at the student's pixel size."""

    name: str
    group: int  # 0 data, 1 aux, 2 unlabelled
    image: np.ndarray  # (H, W, 3) uint8
    teacher: np.ndarray  # (H, W) float32, the teacher's map resampled
    points: np.ndarray | None  # (N, 2) (x, y) all annotated centres, None when unannotated
    labelled: np.ndarray | None = None  # (M, 2) (x, y) centres with a phenotype
    labels: np.ndarray | None = None  # (M,) int class index


# --------------------------------------------------------------------------- data


def _read_unlabelled(spec: str, chunk: int) -> dict[str, tuple[np.ndarray, float]]:
    """``PATH@MPP`` → chunks of the image's first level, name → (chunk, mpp)."""
    path, sep, mpp = spec.rpartition("@")
    if not sep:
        raise InputError(f"unlabelled image {spec!r}: expected PATH@MPP (µm/px)")
    import tifffile

    if path.lower().endswith((".svs", ".tif", ".tiff")):
        image = tifffile.imread(path, level=0) if path.lower().endswith(".svs") else tifffile.imread(path)
    else:
        from PIL import Image

        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
    image = np.ascontiguousarray(image[..., :3])
    if image.ndim != 3 or image.dtype != np.uint8:
        raise InputError(f"{path}: expected an RGB uint8 image, got {image.shape} {image.dtype}")
    stem = Path(path).name.split(".")[0]
    h, w = image.shape[:2]
    out = {}
    for y in range(0, h, chunk):
        for x in range(0, w, chunk):
            piece = image[y : y + chunk, x : x + chunk]
            if min(piece.shape[:2]) >= chunk // 2:
                out[f"{stem}_{y}_{x}"] = (np.ascontiguousarray(piece), float(mpp))
    return out


def load_sources(cfg: DistillConfig, teacher_mpp: float, model_mpp: float) -> list[Source]:
    """Every training image at the student's pixel size, with its teacher map."""
    data = load_point_folder(cfg.data, cfg.train_split)
    aux = load_point_folder(cfg.aux_data, cfg.aux_split) if cfg.aux_data else None
    raw: dict[str, tuple[np.ndarray, float]] = {}
    annotated: dict[str, tuple[int, np.ndarray, Path | None, str]] = {}
    for group, ds in ((0, data), (1, aux)):
        if ds is None:
            continue
        for name, im, pts in zip(ds.names, ds.images, ds.points):
            raw[f"{ds.root.name}_{name}"] = (im, ds.mpp)
            annotated[f"{ds.root.name}_{name}"] = (group, pts, ds.root / "classes" if group == 0 else None, name)
    for spec in cfg.unlabelled:
        raw.update(_read_unlabelled(spec, cfg.chunk))
    maps = teacher_maps(cfg, raw)
    sources = []
    for key, (image, mpp) in raw.items():
        ratio = mpp / model_mpp
        img, _, scale = resample(image, None, ratio)
        h, w = img.shape[:2]
        teacher = resize_map(maps[key], h, w)
        if key not in annotated:
            sources.append(Source(key, 2, img, teacher, None))
            continue
        group, pts, class_root, name = annotated[key]
        move = (lambda p: to_resampled(p, *scale)) if scale is not None else (lambda p: p)  # noqa: E731
        src = Source(key, group, img, teacher, move(pts))
        if class_root is not None and cfg.classes:  # a detection-only student reads no class labels
            labels = read_class_labels(class_root.parent, name, pts, cfg.classes)  # the same points as points/
            src.labelled, src.labels = move(pts[labels >= 0]), labels[labels >= 0]
        sources.append(src)
    return sources


def _class_target(labelled: np.ndarray, labels: np.ndarray, size: int, radius: float) -> np.ndarray:
    """``(size, size)`` int64: the class of the labelled centre within ``radius``, −1
    elsewhere (ignored by the loss)."""
    out = np.full((size, size), -1, np.int64)
    if len(labelled) == 0:
        return out
    rows, cols = np.mgrid[0:size, 0:size]
    grid = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float64)
    dist, idx = cKDTree(labelled).query(grid, k=1, distance_upper_bound=radius)
    near = np.isfinite(dist)
    out.ravel()[near] = labels[idx[near]]
    return out


def _draw_weights(group: list[Source], by_area: bool) -> np.ndarray:
    """Each source's probability of being drawn within its group: unannotated chunks by
    area (a slide weighs what it holds), annotated images alike."""
    area = np.array([s.image.shape[0] * s.image.shape[1] for s in group], float) if by_area else np.ones(len(group))
    return area / area.sum() if len(group) else area


def _photometric(cfg: DistillConfig) -> PhotometricConfig | None:
    if cfg.photometric <= 0:
        return None
    try:
        return PhotometricConfig.from_options(cfg.photometric, cfg.photometric_p, cfg.photometric_options)
    except (TypeError, ValueError) as exc:
        raise InputError(f"photometric_options: {exc}") from None


class _CropStream:
    """Crops drawn from the sources by group share; its RNG state is part of the snapshot."""

    def __init__(self, sources: list[Source], cfg: DistillConfig, target: TargetConfig, class_radius: float) -> None:
        self.groups = [[s for s in sources if s.group == g] for g in range(3)]
        mix = np.array([m if self.groups[g] else 0.0 for g, m in enumerate(cfg.mix)])
        if mix.sum() <= 0:
            raise InputError("no training images")
        self.mix = mix / mix.sum()
        self.weights = [_draw_weights(group, by_area=g == 2) for g, group in enumerate(self.groups)]  # fixed for the run
        self.aug = AugmentConfig(crop=cfg.crop, color_jitter=0.0)
        self.photo = _photometric(cfg)
        self.target = target
        self.scale = target.scale
        self.class_radius = class_radius
        self.rng = np.random.default_rng(cfg.seed)

    def draw(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """``(crop (c, c, 3) uint8, annotation map or None, teacher map, class target)``."""
        g = int(self.rng.choice(3, p=self.mix))
        group = self.groups[g]
        src = group[int(self.rng.choice(len(group), p=self.weights[g]))]
        sets = [src.points if src.points is not None else np.zeros((0, 2))]
        sets.append(src.labelled if src.labelled is not None else np.zeros((0, 2)))
        crop = sample_crop_with(src.image, sets, self.rng, self.aug, maps=(src.teacher,), photometric=self.photo)
        size = crop.image.shape[0]
        gt = make_target(crop.points[0], (size, size), self.target) if src.points is not None else None
        labels = src.labels[crop.kept[1]] if src.labels is not None else np.zeros(0, np.int64)
        cls = _class_target(crop.points[1], labels, size, self.class_radius)
        return crop.image, gt, np.clip(crop.maps[0], 0.0, self.scale), cls


# --------------------------------------------------------------------------- student


def student_from(cfg: DistillConfig, init: torch.nn.Module | None) -> MicroNet:
    """The student network; with ``init``, its detector narrowed to the student's widths
    and context channels (:func:`trainer.narrow.narrow`: the channels of largest
    batch-norm scale; equal widths copy every weight). The class head starts fresh."""
    config = MicroNetConfig(widths=tuple(cfg.widths), context_channels=cfg.context_channels, activation=cfg.activation,
                            classes=tuple(cfg.classes))
    student = MicroNet(config)
    if init is None:
        return student
    if not isinstance(init, MicroNet):
        raise InputError(f"init: expected a MicroNet checkpoint, got {type(init).__name__}")
    try:
        detector = narrow(init, config.widths, config.context_channels)
    except InputError as e:
        raise InputError(f"init: {e} (a student may be narrower than its init, never wider)") from None
    state = student.state_dict()
    with torch.no_grad():
        for name, t in detector.state_dict().items():
            if name not in state or state[name].shape != t.shape:
                raise InputError(f"init: {name} ({tuple(t.shape)}) does not fit the student (context depths, blocks)")
            state[name].copy_(t)
    return student


# --------------------------------------------------------------------------- loop


@dataclass
class _Run:
    """What the loop needs, built once by :func:`_set_up`."""

    cfg: DistillConfig
    out: Path
    device: torch.device
    model: MicroNet
    stream: _CropStream
    info: ModelInfo
    optimizer: torch.optim.Optimizer
    validation: tuple[Any, Any, Any, Any]  # images, points, scales at the model's pixel size; the data set
    state: dict[str, Any] = field(default_factory=lambda: {"iteration": 0, "best_f1": -1.0, "best_iteration": 0, "elapsed": 0.0})

    @property
    def snapshot_path(self) -> Path:
        return self.out / "last_snapshot.safetensors"


def _set_up(cfg: DistillConfig, resume: bool) -> _Run:
    """The student, its sources and crop stream, its metadata (with the colour statistics
    of its labelled training tissue) and optimiser; restored from the snapshot when
    resuming."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    cfg = resolve_machine_defaults(cfg, device)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t_info = load_checkpoint(cfg.teacher)[1]
    init_net, init_info = load_checkpoint(cfg.init) if cfg.init else (None, t_info)
    model_mpp = float(cfg.model_mpp or t_info.mpp)
    px = lambda um: um / model_mpp  # noqa: E731  µm → student pixels
    # Eq. 1's radius d in µm is the teacher's, so the maps it regresses are the teacher's.
    target = TargetConfig(float(t_info.target.get("alpha", 3.0)), float(t_info.target["radius"]) * t_info.mpp / model_mpp,
                          float(t_info.target.get("scale", 5.0)))
    model = student_from(cfg, init_net).to(device)
    sources = load_sources(cfg, t_info.mpp, model_mpp)
    stream = _CropStream(sources, cfg, target, px(cfg.class_radius_um))
    log.info("%d sources: %s", len(sources), {g: sum(s.group == g for s in sources) for g in range(3)})
    val_set = load_point_folder(cfg.data, cfg.val_split)
    info = ModelInfo(
        architecture=model.config_dict(), mean=list(init_info.mean), std=list(init_info.std), mpp=model_mpp,
        threshold=0.5 * target.scale, min_distance=max(1, int(round(px(cfg.min_distance_um)))), target=target.as_metadata(),
        eval_radius=cfg.eval_radius, provenance={"distillation": _jsonable(asdict(cfg))},
        colour=training_colour_stats([s.image for s in sources if s.group < 2]),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    run = _Run(cfg, out, device, model, stream, info, optimizer, (*validation_inputs(val_set, model_mpp), val_set))
    if resume and run.snapshot_path.is_file():
        saved = load_snapshot(run.snapshot_path, model, optimizer)
        run.state.update(saved["state"])
        stream.rng.bit_generator.state = saved["rng"]
        run.info = ModelInfo.from_json(json.dumps(saved["info"]))
        if run.info.colour is None:  # a snapshot from before the colour statistics
            run.info.colour = info.colour
        log.info("resumed from %s at iteration %d", run.snapshot_path, run.state["iteration"])
    return run


def distill(cfg: DistillConfig, resume: bool = True, progress: bool = True) -> Path:
    """Runs (or resumes from ``<out>/last_snapshot.safetensors``) and returns the best
    checkpoint by CRCHisto validation F1 (``<out>/best.safetensors``)."""
    from tqdm.auto import tqdm

    run = _set_up(cfg, resume)
    cfg, state = run.cfg, run.state
    log_file, writer = _open_log(run.out / "log.csv", state["iteration"])
    bar = tqdm(total=cfg.iterations, initial=state["iteration"], disable=not progress, desc="distill", unit="it")
    t0 = time.perf_counter() - state["elapsed"]
    run.model.train()
    while state["iteration"] < cfg.iterations:
        it = state["iteration"] + 1
        lr = cfg.lr * 0.1 ** sum((it - 1) / cfg.iterations >= m for m in cfg.lr_milestones)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        loss, class_loss = _step(run.model, run.optimizer, run.stream, cfg, run.info, run.device)
        state["iteration"] = it
        state["elapsed"] = time.perf_counter() - t0
        row: list[Any] = [it, f"{loss:.5f}", f"{class_loss:.5f}", lr, "", "", "", "", "", f"{state['elapsed']:.1f}"]
        if it % cfg.val_every == 0 or it == cfg.iterations:
            row[4:9] = _validate_and_keep(run, it)
            bar.set_postfix(loss=f"{loss:.3f}", val_f1=row[4], best=f"{state['best_f1']:.4f}", acc=row[8])
        writer.writerow(row)
        bar.update(1)
        if it % cfg.snapshot_every == 0 or it == cfg.iterations:
            log_file.flush()
            save_snapshot(run.snapshot_path, run.model, run.optimizer, run.info,
                          {"state": state, "rng": run.stream.rng.bit_generator.state, "info": json.loads(run.info.to_json())})
    bar.close()
    log_file.close()
    return run.out / "best.safetensors"


def _validate_and_keep(run: _Run, it: int) -> list[str]:
    """Validates; keeps the checkpoint when its F1 is the best so far; the log columns."""
    images, points, scales, val_set = run.validation
    f1, p, r, xi, acc = _validate(run.model, run.info, images, points, scales, val_set, run.cfg, run.device)
    if f1 > run.state["best_f1"]:
        run.state.update(best_f1=f1, best_iteration=it)
        run.info.threshold = xi
        run.info.provenance.update(iterations=it, val_f1=f1, val_precision=p, val_recall=r, val_class_accuracy=acc)
        save_checkpoint(run.out / "best.safetensors", run.model, run.info)
    return [f"{f1:.4f}", f"{p:.4f}", f"{r:.4f}", f"{xi:.4f}", f"{acc:.4f}"]


def _step(model: MicroNet, optimizer: torch.optim.Optimizer, stream: _CropStream, cfg: DistillConfig, info: ModelInfo,
          device: torch.device) -> tuple[float, float]:
    """One optimiser step on a fresh batch; returns (total loss, class loss)."""
    items = [stream.draw() for _ in range(cfg.batch)]
    crops = np.stack([c for c, _, _, _ in items])  # (B, c, c, 3) uint8
    x = normalize(crops, info.mean, info.std).to(device)  # (B, 3, c, c)
    soft = torch.from_numpy(np.stack([t for _, _, t, _ in items]))[:, None].to(device)  # (B, 1, c, c)
    annotated = torch.tensor([g is not None for _, g, _, _ in items], device=device)
    gt = torch.from_numpy(np.stack([g if g is not None else t for _, g, t, _ in items]))[:, None].to(device)
    cls = torch.from_numpy(np.stack([c for _, _, _, c in items])).to(device)  # (B, c, c)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bool(cfg.bf16)):
        pred, logits = model.forward_all(x)
    pred = pred.float()
    to_teacher = weighted_mse_per_image(pred, soft, cfg.lam)
    to_truth = weighted_mse_per_image(pred, gt, cfg.lam)
    per_image = torch.where(annotated, (1 - cfg.beta) * to_truth + cfg.beta * to_teacher, to_teacher)
    loss = per_image.mean()
    class_loss = torch.zeros(())
    if logits is not None and bool((cls >= 0).any()):
        class_loss = F.cross_entropy(logits.float(), cls, ignore_index=-1)
        loss = loss + cfg.class_weight * class_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value}; lower lr")
    return value, float(class_loss.detach())


@torch.no_grad()
def _validate(model: MicroNet, info: ModelInfo, images, points, scales, val_set, cfg: DistillConfig, device) -> tuple[float, float, float, float, float]:
    """Detection F1 at the best ξ on the validation images, and the class head's accuracy
    at the labelled validation nuclei (read at the annotated centres)."""
    model.eval()
    maps, correct, total = [], 0, 0
    for im, name, truth, scale in zip(images, val_set.names, points, scales):
        x = normalize(im[None], info.mean, info.std).to(device)
        m, logits = model.forward_all(x)
        maps.append(m[0, 0].float().cpu().numpy())
        if logits is not None:
            labels = read_class_labels(val_set.root, name, truth, tuple(cfg.classes))
            xy = truth[labels >= 0]
            if len(xy):
                xy = to_resampled(xy, *scale) if scale is not None else xy
                pred = class_probabilities(logits[0].float().cpu().numpy(), xy).argmax(1)  # the runtime's gather
                correct += int((pred == labels[labels >= 0]).sum())
                total += len(xy)
    model.train()
    sweep = choose_threshold(maps, points, cfg.eval_radius, info.min_distance, float(info.target.get("scale", 5.0)), scales=scales)
    best = sweep.metrics_at(sweep.best_index)
    return best.f1, best.precision, best.recall, float(sweep.best_threshold), correct / max(1, total)


def _open_log(path: Path, iteration: int) -> tuple[Any, Any]:
    """``log.csv`` for appending: new with its header, or, when resuming, cut back to the
    snapshot's iteration (rows written after it belong to the interrupted run)."""
    header = ["iteration", "loss", "class_loss", "lr", "val_f1", "val_precision", "val_recall", "val_threshold", "val_class_acc", "elapsed_s"]
    rows = [header]
    if iteration > 0 and path.exists():
        with path.open(newline="") as f:
            rows += [r for r in list(csv.reader(f))[1:] if r and int(r[0]) <= iteration]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    log_file = path.open("a", newline="")
    return log_file, csv.writer(log_file)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def main(argv: list[str] | None = None) -> None:
    """``python -m micronet.trainer.distill CONFIG.json``: the same as ``micronet distill``."""
    from micronet.cli import main as cli

    raise SystemExit(cli(["distill", *(argv if argv is not None else __import__("sys").argv[1:])]))


if __name__ == "__main__":
    main()
