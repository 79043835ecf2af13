"""``micronet bench``: speed (and accuracy) of models and engines on this machine.

Prints the machine (CPU model, ISA flags, physical cores, float32 matmul peak, GPUs),
then one markdown row per model: format, status, size, P / R / F1 on ``--data`` (when
given), ms per image, images/s, megapixels/s, p50/p99 latency of one batch and nuclei/s,
measured end to end through ``Detector.detect_batch`` (see ``micronet.runtime.diagnostics.bench``),
and the ratios that transfer between machines: speed against the first model listed,
and megapixels/s per 100 GFLOP/s of float32 matmul peak (CPU backends; the faster of
NumPy's BLAS and ONNX Runtime's MatMul, measured before and after the models).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers the ``bench`` subcommand on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "bench",
        help="throughput of models or engines on this machine",
        description="Benchmark .onnx models and TensorRT .engine files end to end (upload, inference, peak "
        "finding): one markdown row per model; with --data also P / R / F1 on a labelled set.",
    )
    parser.add_argument(
        "--model", nargs="+", required=True, metavar="M", help="model files (.onnx, .engine) or bundled model names (default, fast-cpu)"
    )
    parser.add_argument("--batch", type=int, default=1, metavar="N", help="images per detect_batch call (default 1)")
    parser.add_argument("--size", type=int, default=512, metavar="PX", help="timing images are PX × PX (default 512)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run (default auto)")
    parser.add_argument("--repeat", type=int, default=20, metavar="K", help="timed calls per model (default 20)")
    parser.add_argument("--warmup", type=int, default=3, metavar="K", help="untimed calls first (default 3)")
    parser.add_argument("--threads", type=int, metavar="T", help="ONNX Runtime CPU threads (default: physical cores)")
    accuracy = parser.add_argument_group("accuracy on a labelled set")
    accuracy.add_argument("--data", type=Path, metavar="DIR", help="data set folder with images/ and points/")
    accuracy.add_argument("--split", default="test", metavar="NAME", help="subset of --data to score (default test; 'all' for every image)")
    accuracy.add_argument("--radius", type=float, default=6.0, metavar="R", help="matching radius in pixels (default 6)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the settings and rows as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    """Runs ``micronet bench``; returns 0 when every model ran, 1 otherwise."""
    from micronet.runtime.diagnostics.bench import (
        benchmark,
        compare,
        format_table,
        machine_record,
        matmul_yardsticks,
        run_line,
    )
    from micronet.runtime.errors import InputError, MissingFileError

    if args.data is None and args.split != "test":
        raise InputError("--split applies with --data only")
    if args.data is not None and not args.data.is_dir():
        raise MissingFileError(f"--data: no such folder {args.data}")
    split = None if args.split == "all" else args.split
    yardsticks = [matmul_yardsticks()]  # before and after the models; the highest counts
    results = benchmark(
        args.model,
        batch=args.batch,
        size=args.size,
        device=args.device,
        repeat=args.repeat,
        warmup=args.warmup,
        threads=args.threads,
        data=args.data,
        split=split,
        radius=args.radius,
    )
    yardsticks.append(matmul_yardsticks())
    machine = machine_record(yardsticks)
    compare(results, machine["matmul_peak_gflops"])
    settings = {
        "batch": args.batch,
        "size": args.size,
        "device": args.device,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "threads": args.threads,
        "data": None if args.data is None else str(args.data),
        "split": split if args.data is not None else None,
        "radius": args.radius if args.data is not None else None,
    }
    print(f"machine: {run_line(machine)}")
    print(f"batch {args.batch} × {args.size}×{args.size} px, device {args.device}, {args.repeat} timed calls")
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        from micronet.runtime.files import replace_atomically

        text = json.dumps({"machine": machine, "settings": settings, "results": [r.to_dict() for r in results]}, indent=2) + "\n"
        replace_atomically(args.json, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        print(f"wrote {args.json}")
    return 0 if all(r.status == "ok" for r in results) else 1
