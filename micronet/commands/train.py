"""``micronet train``: a config file (JSON) plus flags; flags win over the file.

Data-parallel on N processes (CPU with gloo, or one GPU each with NCCL):
``torchrun --nproc_per_node N -m micronet train --batch B ...`` trains like one process
with batch N·B; only rank 0 writes to --out. See docs/training.md.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any


_BOOL_HELP = {
    "bf16": "bfloat16 autocast (default: on where the device computes bf16 natively, float32 elsewhere)",
    "channels_last": "NHWC activations (default: on for float32 steps on the CPU, where it was measured faster; off elsewhere)",
}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train MicroNet on point-annotated images", description=__doc__)
    p.add_argument("--config", help="JSON file with TrainConfig fields")
    p.add_argument("--resume", help="snapshot to continue from (e.g. runs/x/last_snapshot.safetensors)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # Every TrainConfig field becomes a flag; None means "not given" so it never masks
    # the config file or the defaults.
    from micronet.trainer.train import TrainConfig

    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "widths":
            p.add_argument(flag, type=int, nargs=4, default=None, metavar="C", help="channels of the 4 down blocks")
        elif f.name == "augment":
            p.add_argument(flag, type=json.loads, default=None, help="JSON dict of AugmentConfig overrides")
        elif f.name == "model_options":
            p.add_argument(flag, type=json.loads, default=None, help='JSON dict of the model\'s own options, e.g. \'{"base": 16}\'')
        elif f.name == "lr_milestones":
            p.add_argument(flag, type=float, nargs="+", default=None, metavar="F", help="fixed schedule: lr ÷10 at these fractions of --iterations (no plateau decay)")
        elif f.type in ("bool", "bool | None") or isinstance(f.default, bool):
            # --bf16 / --no-bf16; neither given: None, the config file's or the default
            # (for bf16: chosen from the hardware when training starts).
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=_BOOL_HELP.get(f.name))
        else:
            kind = {int: int, float: float}.get(type(f.default), str)
            if f.name in ("data_mpp", "model_mpp", "aux_mpp", "dropout"):
                kind = float
            if f.name == "threads":
                kind = int
            p.add_argument(flag, type=kind, default=None, help="torch threads (default: physical cores)" if f.name == "threads" else None)


def run(args: argparse.Namespace) -> int:
    from micronet.trainer.train import TrainConfig, train

    values: dict[str, Any] = {}
    if args.config:
        values.update(json.loads(Path(args.config).read_text()))
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    if args.resume and not args.config:
        # Resume with the run's own config; flags still override (e.g. --iterations).
        from micronet.trainer.checkpoint import read_snapshot_config

        saved = read_snapshot_config(args.resume)
        values = {**saved, **{k: v for k, v in values.items()}}
    cfg = TrainConfig.from_dict(values)
    best = train(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"best checkpoint: {best}")
    return 0
