"""``export-engine``: ONNX → TensorRT engine, built on the machine that will run it
(Jetson included).

    export-engine model.fp16.onnx -o model.engine [--min 1x256x256 --opt 4x1024x1024
        --max 8x2048x2048] [--workspace-gb 4] [--timing-cache FILE] [--version-compatible]
        [--device N]

Needs TensorRT 10 or later. The network is *strongly typed*: an fp16 export (``micronet
export --precision fp16``) becomes an fp16 engine, an fp32 export an fp32 engine; a
model with a class head keeps its ``class_logits`` output. Next to ``model.engine`` goes
``model.engine.json``, which the runtime checks before it loads the engine.

This module is the command line; the builder is the runtime's
(:mod:`micronet.runtime.backends.tensorrt_build`, which the engine cache uses too), and
its functions are re-exported here for code that imported them from this module. Needs
TensorRT, ONNX Runtime and CuPy or cuda-python; never torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from micronet.runtime.backends.tensorrt_build import (
    DEFAULT_MAX,
    DEFAULT_MIN,
    DEFAULT_OPT,
    Shape,
    build_engine,
    check_profile,
    general_graph,
    parse_shape,
    read_onnx_info,
)
from micronet.runtime.errors import MicronetError

__all__ = ["build_engine", "parse_shape", "check_profile", "read_onnx_info", "general_graph", "main"]


def _shape_arg(text: str) -> Shape:
    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fmt(shape: Shape) -> str:
    return "x".join(map(str, shape))


def main(argv: Sequence[str] | None = None) -> int:
    """The ``export-engine`` command; returns the exit status (2 for user errors)."""
    parser = argparse.ArgumentParser(
        prog="export-engine",
        description="Build a TensorRT engine from a MicroNet ONNX export, on the machine that will run it. "
        "Writes MODEL.engine and MODEL.engine.json (metadata the runtime checks).",
    )
    parser.add_argument("onnx", type=Path, help="a MicroNet ONNX export (fp16 for an fp16 engine: micronet export --precision fp16)")
    parser.add_argument("-o", "--output", type=Path, help="the engine to write (default: the ONNX path with .engine)")
    parser.add_argument("--min", type=_shape_arg, default=DEFAULT_MIN, metavar="NxHxW", help=f"smallest batch x height x width (default {_fmt(DEFAULT_MIN)})")
    parser.add_argument("--opt", type=_shape_arg, default=DEFAULT_OPT, metavar="NxHxW", help=f"the shape to tune for (default {_fmt(DEFAULT_OPT)})")
    parser.add_argument("--max", type=_shape_arg, default=DEFAULT_MAX, metavar="NxHxW", help=f"largest batch x height x width (default {_fmt(DEFAULT_MAX)})")
    parser.add_argument("--workspace-gb", type=float, default=4.0, help="builder scratch memory in GiB (default 4)")
    parser.add_argument("--timing-cache", type=Path, help="reuse and update kernel timings in this file (faster rebuilds)")
    parser.add_argument("--version-compatible", action="store_true", help="let later TensorRT releases run the engine (may be slower)")
    parser.add_argument("--device", type=int, default=0, metavar="N", help="the CUDA device to build for (default 0)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages, TensorRT's included")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output = args.output if args.output is not None else args.onnx.with_suffix(".engine")
    try:
        build_engine(
            args.onnx,
            output,
            min_shape=args.min,
            opt_shape=args.opt,
            max_shape=args.max,
            workspace_gb=args.workspace_gb,
            timing_cache=args.timing_cache,
            version_compatible=args.version_compatible,
            device_id=args.device,
        )
    except MicronetError as exc:
        # User errors: one clear line, no traceback.
        print(f"export-engine: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # the build failed; the message quotes TensorRT
        print(f"export-engine: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
