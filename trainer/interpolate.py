"""Weight-space interpolation of two checkpoints of one network (WiSE-FT, Wortsman et al.,
CVPR 2022): ``θ = (1 − α) θ_base + α θ_other``. A fine-tuned model that gained robustness
but lost some clean accuracy and the model it started from often have, between them, a
point with most of both, at no cost in FLOPs or training.

Every tensor the two share is interpolated (batch-norm running statistics included; integer
counters are the base's). Tensors only the base has (a class head on top of the detector,
which the fine-tuning did not train) are kept as they are; the base's ``ModelInfo`` is kept,
with the interpolation recorded in its provenance. The detector's ξ and minimum distance are
then the base's: re-tune them (``tools/tune_detection.py``).

    python -m micronet.trainer.interpolate BASE.safetensors OTHER.safetensors --alpha 0.5 -o OUT.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from micronet.runtime.errors import InputError

from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["interpolate"]


def interpolate(base: torch.nn.Module, other: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """``base`` with every tensor it shares with ``other`` moved ``alpha`` of the way to it
    (in place; returned). ``other`` may lack some of ``base``'s tensors, never the reverse."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha {alpha} is outside [0, 1]")
    mine, theirs = base.state_dict(), other.state_dict()
    extra = sorted(set(theirs) - set(mine))
    if extra:
        raise InputError(f"the second checkpoint has tensors the base lacks ({extra[:3]}): not the same network")
    mixed = {}
    for name, value in mine.items():
        if name not in theirs:
            continue
        if theirs[name].shape != value.shape:
            raise InputError(f"{name}: shape {tuple(theirs[name].shape)} against the base's {tuple(value.shape)}: not the same network")
        if value.is_floating_point():
            mixed[name] = torch.lerp(value, theirs[name].to(value.dtype), alpha)
    base.load_state_dict(mixed, strict=False)
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="the checkpoint whose head and metadata are kept")
    parser.add_argument("other", type=Path, help="the same network, fine-tuned")
    parser.add_argument("--alpha", type=float, default=0.5, help="share of OTHER (default 0.5)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    base, info = load_checkpoint(args.base)
    other, _ = load_checkpoint(args.other)
    interpolate(base, other, args.alpha)
    info.provenance["interpolation"] = {"base": str(args.base), "other": str(args.other), "alpha": args.alpha, "method": "WiSE-FT"}
    save_checkpoint(args.output, base, info)
    print(f"wrote {args.output} ({1 - args.alpha:g} × {args.base.name} + {args.alpha:g} × {args.other.name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
