"""``micronet export``: a checkpoint → an ONNX model (fp32, fp16 or int8).

The model takes uint8 RGB ``N×H×W×3`` and returns the proximity map ``N×1×H×W``; the
checkpoint's metadata (threshold ξ, pixel size, normalisation) travels inside it. See
``micronet.export.onnx`` for what each precision is for. A TensorRT engine is built from
the ONNX file on the target machine with ``export-engine``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from micronet.runtime.errors import InputError, MissingFileError, MissingPackageError

__all__ = ["add_parser", "run"]

PRECISIONS = ("fp32", "fp16", "int8")  # micronet.export.onnx.FORMATS, known here without importing torch


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers the ``export`` subcommand on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "export",
        help="checkpoint -> ONNX (fp32, fp16, int8)",
        description="Export a MicroNet checkpoint (.safetensors) to ONNX: uint8 RGB N×H×W×3 in, proximity map "
        "N×1×H×W out, the model's metadata inside. fp32 is the reference, fp16 feeds TensorRT (export-engine), "
        "int8 is the fast CPU model (needs --calibration-data).",
    )
    parser.add_argument("checkpoint", type=Path, help="a .safetensors checkpoint written by micronet train")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT.onnx",
        help="the ONNX file to write (default: the checkpoint's name with .onnx, .fp16.onnx or .int8.onnx)",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="numeric precision (default fp32)")
    parser.add_argument(
        "--calibration-data",
        type=Path,
        metavar="DIR",
        help="int8 only: training images (a data set folder with images/, or a folder of images)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Runs ``micronet export``; returns the exit status. User errors raise ValueError or
    FileNotFoundError with a one-line message."""
    if not args.checkpoint.is_file():
        raise MissingFileError(f"checkpoint not found: {args.checkpoint}")
    if args.checkpoint.suffix.lower() != ".safetensors":
        raise InputError(f"expected a .safetensors checkpoint, got {args.checkpoint.name!r}")
    if args.precision == "int8" and args.calibration_data is None:
        raise InputError("--precision int8 needs --calibration-data DIR (training images to calibrate the activations)")
    if args.precision != "int8" and args.calibration_data is not None:
        raise InputError(f"--calibration-data applies to --precision int8 only, not {args.precision}")
    if args.calibration_data is not None and not args.calibration_data.is_dir():
        raise MissingFileError(f"--calibration-data: no such folder {args.calibration_data}")
    if args.output is not None and args.output.suffix.lower() != ".onnx":
        raise InputError(f"-o/--output: expected a file ending in .onnx, got {args.output.name!r}")
    try:
        from micronet.export.onnx import FORMATS, export_onnx
    except ImportError as exc:
        raise MissingPackageError(
            f"micronet export needs torch, onnx and safetensors: pip install 'micronet-sdk[train]' (missing: {exc.name})"
        ) from exc
    output = args.output if args.output is not None else args.checkpoint.with_name(args.checkpoint.stem + FORMATS[args.precision].suffix)

    written = export_onnx(args.checkpoint, output, precision=args.precision, calibration_data=args.calibration_data)
    size_mb = written.stat().st_size / 1e6
    print(f"wrote {written} ({args.precision}, {size_mb:.2f} MB)")
    return 0
