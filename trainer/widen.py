"""Widening a trained MicroNet: a wider network computing the same function, the start
of a wider fine-tune (``micronet train --widths``; docs/results.md, the paper width)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from micronet.runtime.errors import InputError

from .models import MicroNet, MicroNetConfig
from .narrow import channel_layout

__all__ = ["widen"]


def widen(model: MicroNet, widths: tuple[int, ...], context_channels: int | None = None, seed: int = 0) -> MicroNet:
    """A wider MicroNet that computes the same function as ``model``: the start of a
    fine-tune that adds capacity without losing what ``model`` learnt (zero-init
    widening, in the spirit of Net2Net, Chen et al. 2016).

    Every old channel keeps its weights; a new channel gets the fresh network's random
    incoming weights and **zero** weights into every old channel, so the old channels,
    and the output, are unchanged (exactly, in eval mode). Training then moves the zero
    weights first, since their gradients are the new channels' activations.
    Concatenated inputs (blocks 7-9 and the aggregation in block 10) are remapped part
    by part. ``context_channels`` defaults to the old count scaled like the first width.
    ``seed`` draws the new channels' weights without touching the global torch RNG (a
    training run's dropout masks, each process's own, stay as they were). Raises
    ``InputError`` when a width would shrink.
    """
    old = model.config
    if old.classes:
        raise InputError("widen: a network with a class head cannot be widened (widen the detector, then train the head)")
    new_widths = tuple(int(w) for w in widths)
    if len(new_widths) != 4:
        raise InputError(f"widen: expected four widths, got {new_widths}")
    cc = round(old.context_channels * new_widths[0] / old.widths[0]) if context_channels is None else int(context_channels)
    if any(n < o for n, o in zip(new_widths, old.widths)) or cc < old.context_channels:
        raise InputError(
            f"widen: every width must stay or grow: {old.widths} (context {old.context_channels}) "
            f"-> {new_widths} (context {cc})"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wide = MicroNet(replace(old, widths=new_widths, context_channels=cc))
    _copy_into_wider(model, wide, _concat_inputs(old, new_widths, cc))
    return wide.train(model.training)


def _concat_inputs(old: MicroNetConfig, wn: tuple[int, ...], cc: int) -> dict[str, torch.Tensor]:
    """Where each old input channel of a concatenating layer (blocks 7-9, the aggregation
    in block 10) sits in the wide network's concatenation (parts from
    :func:`trainer.narrow.channel_layout`)."""
    spaces, reads = channel_layout(old)
    size_old, size_new = (*old.widths, old.context_channels), (*wn, cc)
    concat_inputs = {}
    for module, parts in reads.items():
        if len(parts) > 1:
            sizes = [spaces[p][0] for p in parts]
            starts = [sum(size_new[i] for i in sizes[:k]) for k in range(len(sizes))]
            concat_inputs[module] = torch.cat([s + torch.arange(size_old[i]) for s, i in zip(starts, sizes)])
    return concat_inputs


def _copy_into_wider(model: MicroNet, wide: MicroNet, concat_inputs: dict[str, torch.Tensor]) -> None:
    """Every old weight into its place in ``wide``; old outputs read zero from new inputs."""
    modules = dict(wide.named_modules())
    state = wide.state_dict()  # views of the wide network's tensors: writing them writes it
    with torch.no_grad():
        for name, t_old in model.state_dict().items():
            t_new = state[name]
            if t_old.shape == t_new.shape:
                t_new.copy_(t_old)
                continue
            module_name = name.rsplit(".", 1)[0]
            if t_old.dim() == 4:  # convolution weights: (out, in, k, k), transposed (in, out, k, k)
                transposed = isinstance(modules[module_name], nn.ConvTranspose2d)
                out_dim, in_dim = (1, 0) if transposed else (0, 1)
                in_idx = concat_inputs.get(module_name, torch.arange(t_old.shape[in_dim]))
                out_idx = torch.arange(t_old.shape[out_dim])
                w = t_new.movedim((out_dim, in_dim), (0, 1))  # a view: (out, in, k, k)
                w[out_idx] = 0.0  # old outputs read nothing from new inputs...
                w[out_idx[:, None], in_idx[None, :]] = t_old.movedim((out_dim, in_dim), (0, 1))  # ...and the old weights
            else:  # batch norm statistics and affine parameters, biases: per output channel
                t_new[: t_old.shape[0]] = t_old
