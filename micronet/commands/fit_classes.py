"""``micronet fit-classes``: give a trained detector a class head, its own weights frozen.

The detector's map, threshold and detections stay exactly as they were; the head (and,
with ``--class-context N``, its deep context over the decoder's 1/8- and 1/4-resolution
maps) is fitted with cross-entropy at labelled training nuclei
(:mod:`micronet.trainer.class_head`). ``--holdout 0.2`` scores it on a fifth of the
training images first; the bundled default uses ``--holdout 0`` (every training image).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("fit-classes", help="fit a class head on a frozen detector", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="the detector (.safetensors)")
    parser.add_argument("-o", "--output", required=True, help="the checkpoint to write (detector + class head)")
    parser.add_argument("--data", default="../shared/data/crchisto", help="a point folder with classes/ (default: CRCHisto)")
    parser.add_argument("--split", default="train", help="its training split (default: train)")
    parser.add_argument("--class-context", type=int, default=16, help="channels of the deep context (0: the pixel head alone; default 16)")
    parser.add_argument("--class-scale", type=int, choices=(1, 4), default=1,
                        help="1: the head at full resolution; 4: at 1/4, its logits resized (about 2 %% of the FLOPs, little memory; default 1)")
    parser.add_argument("--class-depth", type=int, default=0,
                        help="with --class-scale 4: residual blocks in the head (each reads 8 px farther; default 0)")
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--views", type=int, default=6, help="views per image: 4 flips, then 2 photometric variants (default 6)")
    parser.add_argument("--class-radius", type=float, default=1.65,
                        help="µm: pixels this close to a labelled nucleus are trained (default 1.65, 3 px at 0.55 µm/px)")
    parser.add_argument("--balance", type=float, default=0.5, help="class weights (share)^-balance (0: plain cross-entropy; default 0.5)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule (default 0.003)")
    parser.add_argument("--holdout", type=float, default=0.0, help="share of training images held out and scored (default 0)")
    parser.add_argument("--cache", help="a file keeping the frozen trunk's features between fits (e.g. runs/classhead/default.cache.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    return parser


def run(args: argparse.Namespace) -> int:
    from micronet.runtime.errors import InputError

    if not 0.0 <= args.holdout < 1.0:
        raise InputError(f"--holdout: expected a share in [0, 1), got {args.holdout}")
    if args.class_context < 0 or args.iterations < 1 or not 1 <= args.views <= 6:
        raise InputError("--class-context >= 0, --iterations >= 1 and --views in 1..6 expected")
    if not (args.class_radius >= 0 and args.balance >= 0 and args.lr > 0):
        raise InputError("--class-radius >= 0, --balance >= 0 and --lr > 0 expected")
    from micronet.trainer.class_head import ClassHeadConfig, fit_class_head

    cfg = ClassHeadConfig(checkpoint=args.checkpoint, out=args.output, data=args.data, split=args.split, class_context=args.class_context,
                          class_scale=args.class_scale, class_depth=args.class_depth, class_radius_um=args.class_radius, balance=args.balance, lr=args.lr,
                          iterations=args.iterations, views=args.views, holdout=args.holdout, cache=args.cache, seed=args.seed,
                          threads=args.threads)
    print(fit_class_head(cfg))
    return 0
