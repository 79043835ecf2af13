"""``micronet distill``: train a small MicroNet on a large one's proximity maps.

A run is described by a JSON file of :class:`micronet.trainer.distill.DistillConfig`
fields (the bundled models' files are in ``tools/family/``); ``--set key=JSON``
overrides one field. The run resumes from ``<out>/last_snapshot.safetensors`` unless
``--no-resume``; the best checkpoint by CRCHisto validation F1 is ``<out>/best.safetensors``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from micronet.runtime.errors import InputError, MissingFileError

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "distill",
        help="train a small MicroNet on a large one's (flip-TTA) proximity maps",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("config", help="JSON file of DistillConfig fields (e.g. tools/family/default.json)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override one field, e.g. --set iterations=500")
    parser.add_argument("--no-resume", action="store_true", help="start over even if <out>/last_snapshot.safetensors exists")
    return parser


def run(args: argparse.Namespace) -> int:
    path = Path(args.config)
    if not path.is_file():
        raise MissingFileError(f"distill: config not found: {path}")
    try:
        data = json.loads(path.read_text())
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise InputError(f"--set expects KEY=JSON, got {item!r}")
            data[key] = json.loads(value)
    except json.JSONDecodeError as exc:
        raise InputError(f"distill: {exc}") from exc
    from micronet.trainer.distill import DistillConfig, distill

    try:
        cfg = DistillConfig.from_dict(data)
    except TypeError as exc:
        raise InputError(f"distill: {exc}") from exc
    print(distill(cfg, resume=not args.no_resume))
    return 0
