"""``micronet evaluate``: precision, recall, F1 and mean distance (ED) of detections.

Two ways in, one of them per call:

- ``--pred DIR --truth DIR --radius R``: score a folder of detection CSVs against a
  folder of annotation CSVs (files pair up by name; format in ``runtime/points.py``):
  :func:`micronet.runtime.evaluation.score_csv_dirs`;
- ``--model FILE --data DIR [--split NAME] [--threshold T]``: run a model on a data set
  and score it: :func:`micronet.runtime.evaluation.evaluate_model_file`.

Prints the pooled P / R / F1 / ED and a per-image table; ``--json FILE`` also writes
them (pooled values at the top level, ``per_image`` below), and with ``--model`` the
precision-recall curve next to it (``FILE.pr.png``). The work is the library's; this
module parses, calls, prints and writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from micronet.runtime.errors import InputError, MissingFileError

__all__ = ["add_parser", "run"]

_SOURCES = (
    "either --pred DIR --truth DIR (score detection CSVs) "
    "or --model FILE --data DIR (evaluate a model on a data set)"
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers the ``evaluate`` subcommand on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "evaluate",
        help="P / R / F1 / ED of detections or of a model on a data set",
        description=f"Precision, recall, F1 and mean distance (ED) of detections. Give {_SOURCES}.",
    )
    csvs = parser.add_argument_group("score detection CSVs")
    csvs.add_argument("--pred", type=Path, metavar="DIR", help="folder of detection CSVs <name>.csv (header x,y or x,y,score)")
    csvs.add_argument("--truth", type=Path, metavar="DIR", help="folder of annotation CSVs, e.g. ../shared/data/crchisto/points")
    model = parser.add_argument_group("evaluate a model")
    model.add_argument("--model", type=Path, metavar="FILE", help="checkpoint, ONNX model or TensorRT engine")
    model.add_argument("--data", type=Path, metavar="DIR", help="data set folder with images/ and points/")
    model.add_argument("--split", metavar="NAME", help="subset of the data set to evaluate (e.g. test)")
    model.add_argument("--threshold", type=float, metavar="T", help="detection threshold (default: the model's own)")
    parser.add_argument(
        "--radius",
        type=float,
        metavar="R",
        help="matching radius in pixels, inclusive (6 at 20x for CRCHistoPhenotypes, 16 at 40x in the paper); "
        "required with --pred",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    return parser


def _check_sources(args: argparse.Namespace) -> None:
    csv_mode = args.pred is not None or args.truth is not None
    model_mode = args.model is not None or args.data is not None
    if csv_mode and model_mode:
        given = [f"--{k}" for k in ("pred", "truth", "model", "data") if getattr(args, k) is not None]
        raise InputError(f"expected {_SOURCES}, not both; got {' '.join(given)}")
    if not csv_mode and not model_mode:
        raise InputError(f"expected {_SOURCES}")
    if csv_mode:
        if args.pred is None or args.truth is None:
            raise InputError("--pred and --truth go together: give both folders")
        if args.radius is None:
            raise InputError("--radius is required with --pred (e.g. 6 for CRCHistoPhenotypes at 20x)")
        extra = [f"--{k}" for k in ("split", "threshold") if getattr(args, k) is not None]
        if extra:
            raise InputError(f"{' and '.join(extra)} apply to --model evaluation only, not to --pred CSVs")
    elif args.model is None or args.data is None:
        raise InputError("--model and --data go together: give the model file and the data set folder")


def run(args: argparse.Namespace) -> int:
    """Runs ``micronet evaluate``; returns the exit status. User errors raise ValueError
    or FileNotFoundError with a one-line message."""
    _check_sources(args)
    if args.model is not None:
        return _run_model(args)
    from micronet.runtime.evaluation import score_csv_dirs

    report = score_csv_dirs(args.pred, args.truth, args.radius)
    print(report.format())
    if args.json is not None:
        out = {**report.to_dict(), "pred_dir": str(args.pred), "truth_dir": str(args.truth)}
        _write_json(args.json, out, allow_nan=False)
        print(f"wrote {args.json}")
    return 0


def _run_model(args: argparse.Namespace) -> int:
    # Loads the model stack only when asked (torch only for a checkpoint).
    from micronet.runtime.evaluation import (
        MODEL_SUFFIXES,
        evaluate_model_file,
        plot_pr_curve,
    )

    if not args.model.exists():
        raise MissingFileError(f"--model: no such file {args.model}")
    if args.model.suffix.lower() not in MODEL_SUFFIXES:
        raise InputError(f"--model {args.model}: expected a .safetensors checkpoint, .onnx model or .engine file")
    result = evaluate_model_file(args.model, args.data, split=args.split, radius=args.radius, threshold=args.threshold)
    print(result.format())
    if args.json is not None:
        out = {**result.to_dict(), "model": str(args.model), "data": str(args.data), "split": args.split}
        _write_json(args.json, out, default=lambda v: None)
        title = f"{args.model.name} on {Path(args.data).name} {args.split or ''}"
        png = plot_pr_curve(result, args.json.with_suffix(".pr.png"), title=title)
        print(f"wrote {args.json} and {png}")
    return 0


def _write_json(path: Path, data: dict[str, Any], **options: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, **options) + "\n", encoding="utf-8")
