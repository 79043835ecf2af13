"""Activation memory per tile pixel on ONNX Runtime's CPU provider: the measurements
behind ``micronet.runtime.tiling.tile_bytes_per_pixel`` and the session options of
``micronet.runtime.backends.onnxruntime``.

Each measurement runs in a child process: it loads a model, runs tiles of two shapes
(``side²`` and ``(side − 120) × side``) three times each, and reports how far the peak
resident memory (``VmHWM``) grew over the loaded session's, and the CPU time of the
tiles. Two tables:

1. **Bytes per tile pixel** per model and tile side with the backend's own settings,
   against the estimate the default tile size is chosen from (it should never be
   below the measurement).
2. **Session options** at one tile side: the backend's settings (arena on, memory
   pattern off) against ONNX Runtime's defaults (both on) and the arena off, with and
   without the pattern: peak growth and CPU seconds per run of a tile.

    python benchmarks/bench_tile_memory.py                         # the bundled models
    python benchmarks/bench_tile_memory.py --family                # and random-weight stand-ins
    python benchmarks/bench_tile_memory.py --model lean.onnx --sides 512,768

``--family`` adds MicroNets of every width, activation and precision the estimate is
meant for, with random weights (memory does not depend on them), exported by
``micronet.export`` into a temporary folder: needs torch.

Writes ``results/tile_memory.json`` and ``.md`` (``--results-name``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

# Random-weight stand-ins of --family: name → (registered model, activation, precision).
FAMILY = {
    "tiny_relu_fp32": ("micronet_tiny", "relu", "fp32"),
    "lean_relu_fp32": ("micronet_lean", "relu", "fp32"),
    "lean_relu_int8": ("micronet_lean", "relu", "int8"),
    "lean_elu_int8": ("micronet_lean", "elu", "int8"),
    "wide_relu_int8": ("micronet_wide", "relu", "int8"),
    "wide_elu_fp16": ("micronet_wide", "elu", "fp16"),
}

# name → (enable_cpu_mem_arena, enable_mem_pattern); "backend" is the backend as shipped.
OPTIONS: dict[str, tuple[bool, bool] | None] = {
    "backend": None,
    "arena + pattern (ORT default)": (True, True),
    "no arena, pattern": (False, True),
    "no arena, no pattern": (False, False),
}


def _peak_bytes() -> int:
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def child(model: str, side: int, option: str, threads: int) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import onnxruntime as ort

    from micronet.runtime.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(model, device="cpu", threads=threads)
    session = backend._session
    if OPTIONS[option] is not None:  # the backend's options but for the two named
        options = session.get_session_options()
        options.enable_cpu_mem_arena, options.enable_mem_pattern = OPTIONS[option]
        del backend, session
        session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    loaded = _peak_bytes()
    shapes = [(side, side), (side - 120, side)] * 3
    rng = np.random.default_rng(0)
    t0 = time.process_time()
    for h, w in shapes:
        session.run(None, {name: rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)})
    cpu = time.process_time() - t0
    return {"grown_bytes": _peak_bytes() - loaded, "loaded_bytes": loaded, "cpu_s_per_run": cpu / len(shapes)}


def export_family(folder: Path) -> list[Path]:
    """The :data:`FAMILY` stand-ins as ONNX files in ``folder`` (int8 calibrated on CRCHisto crops)."""
    import torch

    from _common import DATA
    from micronet.export.onnx import calibration_crops, export_model
    from micronet.runtime.model_info import ModelInfo
    from micronet.trainer.models import create_model

    crops = calibration_crops(DATA / "crchisto" / "images", 8)
    paths = []
    for name, (factory, activation, precision) in FAMILY.items():
        torch.manual_seed(0)
        model = create_model(factory, activation=activation).eval()
        info = ModelInfo(architecture=model.config_dict(), mean=[180.0, 130.0, 170.0], std=[40.0, 45.0, 35.0], mpp=0.55, threshold=0.5)
        paths.append(export_model(model, info, folder / f"{name}.onnx", precision, calibration=crops if precision == "int8" else None))
    return paths


def measure(model: Path, side: int, option: str, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", str(model), str(side), option, str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def model_rows(model: Path, sides: list[int], threads: int) -> list[dict[str, Any]]:
    from micronet.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from micronet.runtime.tiling import memory_tile_size, tile_bytes_per_pixel

    info = OnnxRuntimeBackend(model, device="cpu", threads=1).info
    estimate = tile_bytes_per_pixel(info.architecture, info.precision)
    tile = memory_tile_size(info.architecture, info.precision)
    rows = []
    for side in sorted(set(sides) | ({tile} if tile else set())):
        print(f"{model.name}: {side}² ...", file=sys.stderr, flush=True)
        r = measure(model, side, "backend", threads)
        per_pixel = r["grown_bytes"] / side**2
        rows.append(
            {"model": model.name, "widths": info.architecture.get("widths"), "activation": info.architecture.get("activation"),
             "precision": info.precision, "side": side, "default_tile": side == tile, **r, "bytes_per_pixel": per_pixel,
             "estimate_bytes_per_pixel": estimate}
        )  # fmt: skip
    return rows


def option_rows(model: Path, side: int, threads: int) -> list[dict[str, Any]]:
    rows = []
    for option in OPTIONS:
        print(f"{model.name}: {side}², {option} ...", file=sys.stderr, flush=True)
        rows.append({"model": model.name, "side": side, "option": option, **measure(model, side, option, threads)})
    return rows


def render(rows: list[dict[str, Any]], options: list[dict[str, Any]], threads: int) -> str:
    out = [
        "Peak resident memory a session grows by while running tiles of two shapes three times each (ONNX Runtime CPU "
        f"provider, {threads} threads), per tile pixel, against `micronet.runtime.tiling.tile_bytes_per_pixel`; "
        "the default tile (600 MiB of estimated activations) is marked *.",
        "",
        "| model | widths | activation | precision | tile | MB grown | B/px measured | B/px estimated | estimate / measured |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        est = r["estimate_bytes_per_pixel"]
        widths = "-".join(map(str, r["widths"] or [])) or "–"
        estimated = f"{est:.0f} | {est / r['bytes_per_pixel']:.2f}" if est else "– | –"
        out.append(
            f"| `{r['model']}` | {widths} | {r['activation'] or '–'} | {r['precision']} | {r['side']}²{' *' if r['default_tile'] else ''} | "
            f"{r['grown_bytes'] / 2**20:.0f} | {r['bytes_per_pixel']:.0f} | {estimated} |"
        )
    if options:
        out += [
            "",
            "Session options (the backend's: CPU arena on, memory pattern off), same tiles; CPU seconds per tile run "
            "(user + system, all threads; the machine may be shared, so compare within a model):",
            "",
            "| model | tile | options | MB grown | CPU s per run |",
            "|---|---:|---|---:|---:|",
        ]
        out += [
            f"| `{r['model']}` | {r['side']}² | {r['option']} | {r['grown_bytes'] / 2**20:.0f} | {r['cpu_s_per_run']:.2f} |" for r in options
        ]
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, side, option, threads = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
        print(json.dumps(child(model, side, option, threads)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="an .onnx model or a bundled name; repeatable (default: every bundled model)")
    parser.add_argument("--family", action="store_true", help="also random-weight stand-ins of every width, activation and precision")
    parser.add_argument("--sides", default="384,512,768,1024", help="tile sides to measure, comma-separated (the default tile is added)")
    parser.add_argument("--options-side", type=int, default=768, help="tile side of the session-options table (0: skip it)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--results-name", default="tile_memory")
    args = parser.parse_args()

    from micronet.runtime.detector import BUNDLED_MODELS, resolve_model

    models = [resolve_model(m) for m in (args.model or list(BUNDLED_MODELS))]
    if args.family:
        models += export_family(Path(tempfile.mkdtemp(prefix="micronet-tile-memory-")))
    sides = [int(s) for s in args.sides.split(",") if s.strip()]
    rows = [r for m in models for r in model_rows(m, sides, args.threads)]
    options = [r for m in models for r in option_rows(m, args.options_side, args.threads)] if args.options_side else []
    table = render(rows, options, args.threads)
    write_results(args.results_name, {"threads": args.threads, "rows": rows, "options": options}, table)


if __name__ == "__main__":
    main()
