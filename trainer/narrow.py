"""Narrowing a trained MicroNet: a narrower detector that keeps, in every channel space,
the channels of largest batch-norm scale: the start of a distillation into a smaller
student (``micronet distill`` with an ``init`` wider than the student; the inverse of
:mod:`trainer.widen`).

A *channel space* is a set of channels that several layers write or read together: the
output of a residual block with an identity skip is the sum of its input and its second
convolution, so the block before it, the block itself and every reader (the next block,
the stride-2 convolution, the decoder's concatenation, a context branch) must keep the
same channels. A channel's importance is the sum over the space's writers of its
batch-norm |γ|, each writer's scaled to its largest (Liu et al. 2017, network slimming,
read on a trained network instead of trained for). The class head is not carried over:
train it again on the narrowed detector.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from micronet.runtime.errors import InputError

from .models import MicroNet, MicroNetConfig

__all__ = ["narrow", "channel_layout"]


def channel_layout(cfg: MicroNetConfig) -> tuple[dict[str, tuple[int, list[str]]], dict[str, list[str]]]:
    """The detector's channel spaces, ``name → (size index, writers)`` (a writer ``P``
    is a convolution ``P.0`` and its batch norm ``P.1``; size index 0-3 is a width, 4 the
    context channels), and each reading convolution's input: ``module → spaces`` in
    concatenation order."""
    spaces: dict[str, tuple[int, list[str]]] = {
        "S0": (0, ["block1.0", "block2.conv2"]),
        "S1": (1, ["down2.0", "block3.conv2"]),
        "S2": (2, ["down3.0", "block4.conv2"]),
        "S3": (3, ["down4.0", "block5.conv2", "block6.conv2"]),
        "B10": (0, ["block10.0"]),
    }
    reads: dict[str, list[str]] = {"down2.0.0": ["S0"], "down3.0.0": ["S1"], "down4.0.0": ["S2"], "block10.2": ["B10"]}
    block_in = {2: ["S0"], 3: ["S1"], 4: ["S2"], 5: ["S3"], 6: ["S3"], 7: ["S2", "U7"], 8: ["S1", "U8"], 9: ["S0", "U9"]}
    level = {2: 0, 3: 1, 4: 2, 5: 3, 6: 3, 7: 2, 8: 1, 9: 0}
    for b, src in block_in.items():
        spaces[f"I{b}"] = (level[b], [f"block{b}.conv1"])  # inside the block
        reads[f"block{b}.conv1.0"] = src
        reads[f"block{b}.conv2.0"] = [f"I{b}"]
    for b, prev in ((7, "S3"), (8, "S7"), (9, "S8")):  # the decoder: upsample, concatenate, block
        spaces[f"U{b}"] = (level[b], [f"up{b}"])
        spaces[f"S{b}"] = (level[b], [f"block{b}.conv2", f"block{b}.skip"])
        reads[f"up{b}.0"] = [prev]
        reads[f"block{b}.skip.0"] = block_in[b]
    depth_space = {2: "S1", 3: "S2", 4: "S3"}
    for d in cfg.context_depths:
        spaces[f"C{d}"] = (4, [f"context.{d}"])
        reads[f"context.{d}.0"] = [depth_space[d]]
    reads["block10.0.0"] = ["S9"] + [f"C{d}" for d in cfg.context_depths]
    return spaces, reads


def _keep(state: dict[str, torch.Tensor], writers: list[str], n: int) -> torch.Tensor:
    """The ``n`` channels of largest summed (per writer scaled) |γ|, in their old order."""
    score = sum(g / g.max().clamp_min(1e-12) for g in (state[f"{w}.1.weight"].abs() for w in writers))
    return torch.sort(torch.argsort(score, descending=True, stable=True)[:n]).values


def narrow(model: MicroNet, widths: tuple[int, ...], context_channels: int | None = None) -> MicroNet:
    """A detector of ``widths`` (and ``context_channels``, by default the old count scaled
    like the first width) holding ``model``'s most important channels (module docstring),
    in ``model``'s mode; no class head. Raises ``InputError`` when a width would grow."""
    old = model.config
    new_widths = tuple(int(w) for w in widths)
    if len(new_widths) != 4:
        raise InputError(f"narrow: expected four widths, got {new_widths}")
    cc = max(1, round(old.context_channels * new_widths[0] / old.widths[0])) if context_channels is None else int(context_channels)
    if any(n > o or n < 1 for n, o in zip(new_widths, old.widths)) or not 1 <= cc <= old.context_channels:
        raise InputError(
            f"narrow: every width must stay or shrink: {old.widths} (context {old.context_channels}) "
            f"-> {new_widths} (context {cc})"
        )
    small = MicroNet(replace(old, widths=new_widths, context_channels=cc, classes=(), class_context=0, class_scale=1, class_depth=0))
    sizes_old, sizes_new = (*old.widths, old.context_channels), (*new_widths, cc)
    spaces, reads = channel_layout(old)
    src = model.state_dict()
    keep = {s: _keep(src, writers, sizes_new[i]) for s, (i, writers) in spaces.items()}
    out_of = {f"{w}.{k}": s for s, (_, writers) in spaces.items() for w in writers for k in (0, 1)}
    in_of = {}
    for module, parts in reads.items():
        offsets = torch.cumsum(torch.tensor([0] + [sizes_old[spaces[p][0]] for p in parts[:-1]]), 0)
        in_of[module] = torch.cat([o + keep[p] for o, p in zip(offsets.tolist(), parts)])
    modules = dict(model.named_modules())
    state = small.state_dict()
    with torch.no_grad():
        for name, t in state.items():
            module, _, leaf = name.rpartition(".")
            s = src[name]
            if s.dim() >= 1 and module in out_of:
                out_dim = 1 if isinstance(modules[module], nn.ConvTranspose2d) and leaf == "weight" else 0
                s = s.index_select(out_dim, keep[out_of[module]])
            if s.dim() == 4 and module in in_of:
                in_dim = 0 if isinstance(modules[module], nn.ConvTranspose2d) else 1
                s = s.index_select(in_dim, in_of[module])
            if s.shape != t.shape:  # a layer the layout does not know: a bug, not bad input
                raise RuntimeError(f"narrow: {name} is {tuple(s.shape)} after narrowing, expected {tuple(t.shape)}")
            t.copy_(s)
    return small.train(model.training)
