"""``micronet evaluate``: precision, recall, F1 and mean distance (ED) of detections.

Two ways in, one of them per call:

- ``--pred DIR --truth DIR --radius R``: score a folder of detection CSVs against a
  folder of annotation CSVs (files pair up by name; format in ``runtime/metrics.py``);
- ``--model FILE --data DIR [--split NAME] [--threshold T]``: run a model on a data set
  and score it (``micronet.commands._evaluate_model``).

Prints the pooled P / R / F1 / ED and a per-image table; ``--json FILE`` also writes
them (pooled values at the top level, ``per_image`` below).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

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
        raise ValueError(f"expected {_SOURCES}, not both; got {' '.join(given)}")
    if not csv_mode and not model_mode:
        raise ValueError(f"expected {_SOURCES}")
    if csv_mode:
        if args.pred is None or args.truth is None:
            raise ValueError("--pred and --truth go together: give both folders")
        if args.radius is None:
            raise ValueError("--radius is required with --pred (e.g. 6 for CRCHistoPhenotypes at 20x)")
        extra = [f"--{k}" for k in ("split", "threshold") if getattr(args, k) is not None]
        if extra:
            raise ValueError(f"{' and '.join(extra)} apply to --model evaluation only, not to --pred CSVs")
    elif args.model is None or args.data is None:
        raise ValueError("--model and --data go together: give the model file and the data set folder")


def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def format_report(report: Any) -> str:
    """The per-image table and the pooled line of an ``EvaluationReport``, as text."""
    width = max([len("pooled"), *map(len, report.names)])
    head = f"{'image':<{width}}  {'TP':>6} {'FP':>6} {'FN':>6}  {'P':>6} {'R':>6} {'F1':>6} {'ED px':>6}"

    def line(name: str, m: Any) -> str:
        return (
            f"{name:<{width}}  {m.tp:>6d} {m.fp:>6d} {m.fn:>6d}  "
            f"{m.precision:>6.4f} {m.recall:>6.4f} {m.f1:>6.4f} {_fmt(m.mean_distance, '>6.3f')}"
        )

    rule = "-" * len(head)
    rows = [line(n, m) for n, m in zip(report.names, report.per_image)]
    p = report.pooled
    summary = (
        f"{len(report.names)} images, radius {report.radius:g} px: "
        f"P {p.precision:.4f}  R {p.recall:.4f}  F1 {p.f1:.4f}  ED {_fmt(p.mean_distance, '.3f')} px"
    )
    return "\n".join([head, rule, *rows, rule, line("pooled", p), "", summary])


def run(args: argparse.Namespace) -> int:
    """Runs ``micronet evaluate``; returns the exit status. User errors raise ValueError
    or FileNotFoundError with a one-line message."""
    _check_sources(args)
    if args.model is not None:
        from micronet.commands._evaluate_model import run_model_evaluation  # loads the model stack only when asked

        return int(run_model_evaluation(args) or 0)

    from micronet.runtime.metrics import score_csv_dirs

    report = score_csv_dirs(args.pred, args.truth, args.radius)
    print(format_report(report))
    if args.json is not None:
        out = {**report.to_dict(), "pred_dir": str(args.pred), "truth_dir": str(args.truth)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0
