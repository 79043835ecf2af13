"""A class head on a frozen detector: the paper's fine-tuning with frozen blocks, applied
to phenotypes (issue 20).

Every weight of the detector stays as it is, so its proximity map, threshold and
detections are exactly those of the checkpoint it starts from; only the class head
(``MicroNet.class_head``, and its deep context ``MicroNet.class_context`` when
``class_context > 0``) is trained, with cross-entropy at the pixels within
``class_radius_um`` of a labelled CRCHisto *training* nucleus.

Because the trunk is frozen it runs once per image and view, not once per step: the
cache holds, per view of each training image (the four flips, and photometric variants
from ``trainer/augment.py``), block 10's input at the labelled pixels and the decoder's
1/8- and 1/4-resolution maps whole. A step then runs only the head: the deep context's
3×3 convolutions on the cached maps of a few views, and its transposed convolutions at
just the labelled pixels (a transposed convolution with kernel = stride is, at one output
pixel, a matrix product with the kernel slice at that pixel's offset in its cell; the
test checks this against the full model). Hundreds of times cheaper than joint training.

    micronet fit-classes trainer/pretrained/micronet_crchisto.safetensors -o runs/x/classes.safetensors \\
        [--class-context 16] [--holdout 0.2]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from micronet.runtime.errors import InputError
from micronet.runtime.evaluation.class_metrics import classification_scores, read_class_labels
from micronet.runtime.evaluation.datasets import load_point_folder

from .augment import PhotometricConfig, photometric
from .checkpoint import load_checkpoint, save_checkpoint
from .distill import CRCHISTO_CLASSES
from .models import MicroNet
from .validate import normalize

__all__ = ["VIEWS", "ClassHeadConfig", "disc_offsets", "fit_class_head", "head_logits", "labelled_pixels", "view_image", "with_class_head"]

log = logging.getLogger(__name__)

# The views of each training image: (flip rows, flip columns, photometric seed or None).
VIEWS = ((False, False, None), (False, True, None), (True, False, None), (True, True, None), (False, False, 1), (True, True, 2))
SCALES = {"6": 8, "7": 4}  # the decoder maps' downsampling


@dataclass
class ClassHeadConfig:
    """A frozen-trunk class-head fit; stored in the checkpoint's provenance."""

    checkpoint: str  # the detector (its weights stay as they are)
    out: str
    data: str = "../shared/data/crchisto"
    split: str = "train"
    classes: tuple[str, ...] = CRCHISTO_CLASSES
    class_context: int = 16  # 0: the pixel head alone
    class_scale: int = 1  # 4: the head runs at 1/4 resolution (MicroNetConfig.class_scale)
    class_depth: int = 0  # residual blocks in a head at 1/4 (MicroNetConfig.class_depth)
    class_radius_um: float = 1.65  # pixels this close to a labelled nucleus are trained (3 px at 0.55 µm/px)
    views: int = len(VIEWS)
    iterations: int = 1500
    views_per_step: int = 4
    lr: float = 3e-3
    weight_decay: float = 1e-4
    balance: float = 0.5  # class weights (share)^-balance
    holdout: float = 0.0  # share of the training images held out and scored (0: fit on all)
    cache: str | None = None  # a file keeping the trunk's features between fits (same detector, data, views)
    seed: int = 0
    threads: int | None = None


@dataclass
class _View:
    """One cached view: block 10's input at its labelled pixels, and the decoder maps."""

    image: int
    agg: torch.Tensor  # (N, C) float16
    rows: torch.Tensor  # (N,) int64, in the view's coordinates
    cols: torch.Tensor
    labels: torch.Tensor  # (N,) int64
    centre: torch.Tensor  # (N,) bool: the nucleus's own pixel
    decoder: dict[str, torch.Tensor]  # "6": (C6, h, w) float16, "7": (C7, h, w)
    pooled: torch.Tensor | None = None  # class_scale 4: block 10's input pooled (C, h/4, w/4) float16


def with_class_head(
    model: MicroNet, classes: tuple[str, ...], class_context: int, seed: int = 0, class_scale: int = 1, class_depth: int = 0
) -> MicroNet:
    """A copy of the detector ``model`` with a fresh class head (drawn with ``seed``; at
    ``class_scale``, with ``class_depth`` residual blocks), every detector weight copied and frozen."""
    if model.class_head is not None:
        log.info("replacing the checkpoint's class head")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = MicroNet(
            replace(model.config, classes=tuple(classes), class_context=int(class_context), class_scale=int(class_scale), class_depth=int(class_depth))
        )
    detector = {k: v for k, v in model.state_dict().items() if not k.startswith(("class_head.", "class_context."))}
    missing, unexpected = new.load_state_dict(detector, strict=False)
    if unexpected or any(not k.startswith(("class_head.", "class_context.")) for k in missing):
        raise InputError(f"with_class_head: weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, p in new.named_parameters():
        p.requires_grad_(name.startswith(("class_head.", "class_context.")))
    return new


def disc_offsets(radius: float) -> np.ndarray:
    """``(M, 2)`` integer ``(dy, dx)`` offsets within ``radius`` pixels of a centre."""
    r = int(np.floor(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy**2 + dx**2 <= radius**2
    return np.stack([dy[keep], dx[keep]], axis=1)


def view_image(image: np.ndarray, view: tuple[bool, bool, int | None]) -> np.ndarray:
    """One view of an image: photometric variant (seeded), then row and column flips."""
    flip_r, flip_c, seed = view
    out = image
    if seed is not None:
        out = photometric(out, np.random.default_rng(seed), PhotometricConfig(strength=1.0, p=0.5))
    if flip_r:
        out = out[::-1]
    if flip_c:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def labelled_pixels(points: np.ndarray, labels: np.ndarray, shape: tuple[int, int], view: tuple[bool, bool, int | None], offsets: np.ndarray) -> tuple[np.ndarray, ...]:
    """Rows, columns (in the view's coordinates), labels and distances (px) to the nucleus
    of every pixel at ``offsets`` from a labelled nucleus (rounded centre) inside the image."""
    h, w = shape
    keep = labels >= 0
    centre = np.round(points[keep][:, ::-1]).astype(np.int64)  # (row, col)
    if view[0]:
        centre[:, 0] = h - 1 - centre[:, 0]
    if view[1]:
        centre[:, 1] = w - 1 - centre[:, 1]
    pix = centre[:, None, :] + offsets[None]
    ok = (pix[..., 0] >= 0) & (pix[..., 0] < h) & (pix[..., 1] >= 0) & (pix[..., 1] < w)
    lab = np.broadcast_to(labels[keep][:, None], ok.shape)[ok]
    distance = np.broadcast_to(np.hypot(*offsets.T)[None], ok.shape)[ok]
    return pix[..., 0][ok], pix[..., 1][ok], lab, distance


@torch.no_grad()
def cache_views(model: MicroNet, info: Any, cfg: ClassHeadConfig) -> tuple[list[_View], list[str]]:
    """Runs the frozen trunk once per view of each training image."""
    data = load_point_folder(cfg.data, cfg.split)
    offsets = disc_offsets(cfg.class_radius_um / data.mpp)
    views: list[_View] = []
    model.eval()
    jobs = [(i, v) for i in range(len(data)) for v in VIEWS[: cfg.views]]
    for i, view in tqdm(jobs, desc="trunk features"):
        points = np.asarray(data.points[i], np.float64).reshape(-1, 2)
        labels = read_class_labels(data.root, data.names[i], points, cfg.classes)
        if not (labels >= 0).any():
            continue
        agg, decoder = model._features(normalize(view_image(data.images[i], view)[None], info.mean, info.std))
        r, c, lab, centre = _pixel_tensors(*labelled_pixels(points, labels, agg.shape[-2:], view, offsets))
        pooled = model.pool_cells(agg)[0].half() if model.config.class_scale == 4 else None
        views.append(_View(i, agg[0][:, r, c].T.half(), r, c, lab, centre, {k: v[0].half() for k, v in decoder.items()}, pooled))
    return views, data.names


def _cache_key(cfg: ClassHeadConfig) -> str:
    """What the cached features depend on: the detector's bytes, the data and the views
    (and, for a full-resolution head, the radius: it caches block 10's input at the
    labelled pixels; a head at 1/4 reads whole maps, and :func:`relabel` redraws its pixels)."""
    digest = hashlib.sha256(Path(cfg.checkpoint).read_bytes()).hexdigest()
    radius = [] if cfg.class_scale == 4 else [cfg.class_radius_um]
    key = [digest, str(Path(cfg.data).resolve()), cfg.split, list(cfg.classes), *radius, cfg.views]
    return json.dumps(key + ([cfg.class_scale] if cfg.class_scale != 1 else []))


def relabel(views: list[_View], cfg: ClassHeadConfig) -> list[_View]:
    """The views of a head at 1/4 with their trained pixels redrawn at ``cfg.class_radius_um``
    (the whole maps it reads do not depend on the radius; block 10's input at the old
    pixels is dropped, as such a head does not read it)."""
    data = load_point_folder(cfg.data, cfg.split)
    offsets = disc_offsets(cfg.class_radius_um / data.mpp)
    seen: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}  # image → points, labels, views so far
    out = []
    for v in views:
        if v.image not in seen:
            points = np.asarray(data.points[v.image], np.float64).reshape(-1, 2)
            seen[v.image] = (points, read_class_labels(data.root, data.names[v.image], points, cfg.classes), 0)
        points, labels, k = seen[v.image]
        seen[v.image] = (points, labels, k + 1)  # cache_views appends each image's views in VIEWS order
        h, w = data.images[v.image].shape[:2]
        if not (0 <= 4 * v.pooled.shape[-2] - h < 8 and 0 <= 4 * v.pooled.shape[-1] - w < 8):  # pool_cells' cells, one more unless aligned
            raise InputError(f"fit-classes: cached maps of {data.names[v.image]} do not fit its image")
        rows, cols, labs, centre = _pixel_tensors(*labelled_pixels(points, labels, (h, w), VIEWS[k], offsets))
        out.append(replace(v, agg=v.agg[:0], rows=rows, cols=cols, labels=labs, centre=centre))
    return out


def _pixel_tensors(rows: np.ndarray, cols: np.ndarray, lab: np.ndarray, distance: np.ndarray) -> tuple[torch.Tensor, ...]:
    """:func:`labelled_pixels`' arrays as a view's rows, columns, labels and centre flags."""
    return torch.from_numpy(rows), torch.from_numpy(cols), torch.from_numpy(lab.astype(np.int64)), torch.from_numpy(distance == 0)


def cached_views(model: MicroNet, info: Any, cfg: ClassHeadConfig) -> tuple[list[_View], list[str]]:
    """:func:`cache_views`, kept in ``cfg.cache`` (written whole, then renamed) and read
    back when its key (detector file, data, views) matches."""
    key = _cache_key(cfg)
    path = Path(cfg.cache) if cfg.cache else None
    if path is not None and path.is_file():
        stored = torch.load(path, weights_only=True)
        if stored.get("key") == key:
            log.info("trunk features from %s", path)
            views = [_View(**v) for v in stored["views"]]
            return (relabel(views, cfg) if cfg.class_scale == 4 else views), list(stored["names"])
    views, names = cache_views(model, info, cfg)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two fits may write the same cache at once
        torch.save({"key": key, "names": names, "views": [v.__dict__ for v in views]}, tmp)
        tmp.replace(path)
    return views, names


def _context_at(model: MicroNet, view: _View, d: str) -> torch.Tensor:
    """The deep context ``d``'s full-resolution values ``(N, C)`` at the view's pixels, from
    its low-resolution map, without computing the full-resolution map."""
    conv, act_low, up, act = model.class_context[d]
    low = act_low(conv(view.decoder[d][None].float()))[0]  # (2C, h, w)
    s = SCALES[d]
    feats = low[:, view.rows // s, view.cols // s].T  # (N, 2C)
    two_c, c = up.weight.shape[:2]
    every_offset = (feats @ up.weight.reshape(two_c, c * s * s)).view(-1, c, s * s)  # (N, C, s²)
    offset = ((view.rows % s) * s + view.cols % s).view(-1, 1, 1).expand(-1, c, 1)
    return act(every_offset.gather(2, offset).squeeze(2) + up.bias)


def head_logits(model: MicroNet, view: _View) -> torch.Tensor:
    """``(N, K)`` class logits at the view's labelled pixels, as ``forward_all`` gives them there."""
    if model.config.class_scale == 4:
        decoder = {k: v[None].float() for k, v in view.decoder.items()}
        low = model.class_head(model.class_input(view.pooled[None].float(), decoder))
        full = model.upsample_logits(low, (4 * low.shape[-2], 4 * low.shape[-1]))[0]  # uncut: the view's pixels lie inside
        return full[:, view.rows, view.cols].T
    x = view.agg.float()
    if model.class_context is not None:
        x = torch.cat([x, _context_at(model, view, "6"), _context_at(model, view, "7")], dim=1)
    return model.class_head(x[:, :, None, None])[:, :, 0, 0]


def _split_images(n: int, holdout: float, seed: int) -> set[int]:
    held = int(round(n * holdout))
    return set(np.random.default_rng(seed).permutation(n)[:held].tolist()) if held else set()


def _weights(views: list[_View], k: int, balance: float) -> torch.Tensor:
    counts = torch.bincount(torch.cat([v.labels for v in views]), minlength=k).double().clamp(min=1)
    return ((counts.sum() / counts / k) ** balance).float()


def _head_modules(model: MicroNet) -> list[torch.nn.Module]:
    return [m for m in (model.class_context, model.class_head) if m is not None]


@torch.no_grad()
def set_head_statistics(model: MicroNet, views: list[_View], count: int = 64) -> None:
    """The head's batch-norm statistics, estimated once over ``count`` views spread over
    the training set (a cumulative average of every batch's). Training then keeps them
    fixed: batches of a few images normalise by those images' statistics, and a head that
    learnt to lean on them scores much worse in eval mode (measured: accuracy 0.77 in
    train mode, 0.52 in eval mode on the same pixels)."""
    norms = [m for head in _head_modules(model) for m in head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average
        bn.train()
    for v in views[:: max(1, len(views) // count)]:
        head_logits(model, v)
    for bn in norms:
        bn.momentum = 0.1
    model.eval()


def train_head(model: MicroNet, views: list[_View], cfg: ClassHeadConfig) -> list[dict[str, float]]:
    """AdamW with a one-cycle schedule on the head's parameters; every batch norm stays in
    eval mode (the trunk's frozen, the head's fixed by :func:`set_head_statistics`), so
    training and inference compute the same function."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.iterations)
    weight = _weights(views, len(cfg.classes), cfg.balance)
    rng = np.random.default_rng(cfg.seed)
    set_head_statistics(model, views)
    log_rows = []
    bar = tqdm(range(cfg.iterations), desc="class head")
    for step in bar:
        batch = [views[j] for j in rng.choice(len(views), size=min(cfg.views_per_step, len(views)), replace=False)]
        logits = torch.cat([head_logits(model, v) for v in batch])
        loss = F.cross_entropy(logits, torch.cat([v.labels for v in batch]), weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.iterations - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            log_rows.append({"iteration": step + 1, "loss": float(loss.item())})
    return log_rows


@torch.no_grad()
def score_views(model: MicroNet, views: list[_View], classes: tuple[str, ...]) -> dict[str, Any]:
    """Class scores at the nuclei's own pixels of the first view of each image."""
    model.eval()
    first = {}
    for v in views:
        first.setdefault(v.image, v)
    true, pred = [], []
    for v in first.values():
        true.append(v.labels[v.centre])
        pred.append(head_logits(model, v)[v.centre].argmax(1))
    return classification_scores(torch.cat(true).numpy(), torch.cat(pred).numpy(), classes).as_dict()


def fit_class_head(cfg: ClassHeadConfig) -> Path:
    """Fits the head, scores it on the held-out images (if any), writes the checkpoint."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    detector, info = load_checkpoint(cfg.checkpoint)
    model = with_class_head(detector, cfg.classes, cfg.class_context, cfg.seed, cfg.class_scale, cfg.class_depth)
    views, names = cached_views(model, info, cfg)
    held = _split_images(len(names), cfg.holdout, cfg.seed)
    train = [v for v in views if v.image not in held]
    if not train:
        raise InputError("fit-classes: no training image with a class label")
    log_rows = train_head(model, train, cfg)
    report = {"train": score_views(model, train, cfg.classes)}
    if held:
        report["held_out"] = score_views(model, [v for v in views if v.image in held], cfg.classes)
        report["held_out_images"] = sorted(names[i] for i in held)
    info.architecture = model.config_dict()
    info.provenance = {**info.provenance, "class_head": {"config": {**cfg.__dict__, "classes": list(cfg.classes)}, "scores": report, "log": log_rows}}
    out = save_checkpoint(cfg.out, model.eval(), info)
    _log_report(report)
    return out


def _log_report(report: dict[str, Any]) -> None:
    for part in ("train", "held_out"):
        if part in report:
            s = report[part]
            per = ", ".join(f"{n} {f:.3f}" for n, f in zip(s["names"], s["f1"]))
            log.info("%s: weighted class F1 %.4f (%s)", part, s["weighted_f1"], per)
