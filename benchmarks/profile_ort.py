"""Where ONNX Runtime's CPU time goes, per operator type, for each exported artifact.

    python benchmarks/profile_ort.py [--size 1024] [--checkpoint ...] [--fast-checkpoint ...]

Exports the paper's network (ELU) and its ReLU fine-tune, fp32 and int8, runs each
through ONNX Runtime's profiler on a ``size²`` tile of real tissue (the aligned branch,
as every full Detector tile), and tabulates the kernel time per operator type. This is
the evidence behind docs/benchmarks.md's account of the CPU targets: ELU is no fused
activation of ONNX Runtime's blocked (NCHWc) convolutions, so every ELU runs as its
own pass with a layout change before and after it, and in int8 it runs in float
between a DequantizeLinear and a QuantizeLinear.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA,
    REPO,
    matmul_peaks,
    peak_text,
    run_machine,
    tissue_batch,
    write_results,
)

# Operator types that are layout changes ONNX Runtime inserts itself.
LAYOUT_OPS = {"ReorderInput", "ReorderOutput", "Transpose"}
# Control flow whose kernel time is its branch's, already counted per operator: the If
# that picks the export's aligned or general copy of the graph.
WRAPPERS = {"If"}


def profile(path: Path, image: np.ndarray, threads: int, runs: int, prefix: Path) -> dict[str, float]:
    """Mean kernel milliseconds per operator type over ``runs`` calls (after a warm-up)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    so.profile_file_prefix = str(prefix)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for _ in range(2):
        sess.run(None, {"image": image})
    sess.end_profiling()  # drop the warm-up calls from the trace
    so.profile_file_prefix = str(prefix) + "-timed"
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    sess.run(None, {"image": image})  # first call of the new session: arenas, prepacking
    for _ in range(runs):
        sess.run(None, {"image": image})
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["args"]["op_name"] not in WRAPPERS:
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3
    return {op: ms / (runs + 1) for op, ms in per_op.items()}


def width_ceiling(image: np.ndarray, threads: int, tmp: Path) -> list[dict]:
    """fp32 % of peak of the default widths against the wide variant, ELU and ReLU, with
    random weights (speed does not depend on them): how far width alone moves it.
    Rows hold GFLOP and ms; the caller divides by the run's matmul peak."""
    import time

    import onnxruntime as ort
    import torch
    from micronet.export.onnx import export_model
    from micronet.runtime.model_info import ModelInfo
    from micronet.trainer.models import count_flops, create_model

    rows = []
    for name in ("micronet", "micronet_wide"):
        for act in ("elu", "relu"):
            torch.manual_seed(0)
            model = create_model(name, activation=act).eval()
            info = ModelInfo(architecture=model.config_dict(), mean=[200.0] * 3, std=[40.0] * 3, mpp=0.55, threshold=1.0)
            path = tmp / f"{name}_{act}.onnx"
            with torch.no_grad():
                export_model(model, info, path)  # fp32
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            for _ in range(2):
                sess.run(None, {"image": image})
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                sess.run(None, {"image": image})
                times.append(time.perf_counter() - t0)
            gflop = count_flops(model, image.shape[1], image.shape[2]) / 1e9
            rows.append({"model": name, "activation": act, "gflop": gflop, "ms": 1e3 * min(times)})
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: physical cores)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "trainer" / "pretrained" / "micronet_crchisto.safetensors")
    parser.add_argument("--fast-checkpoint", type=Path, default=REPO / "trainer" / "pretrained" / "micronet_crchisto_relu.safetensors")
    return parser.parse_args()


def export_artifacts(args: argparse.Namespace, tmp: Path) -> dict[str, Path]:
    """fp32 and int8 exports of the ELU network and (when its checkpoint is there) the
    ReLU one, into ``tmp``: ``{"fp32 (ELU)": path, "int8 (ELU)": path, ...}``."""
    from micronet.export.onnx import export_onnx

    networks = [("ELU", args.checkpoint)] + ([("ReLU", args.fast_checkpoint)] if args.fast_checkpoint.is_file() else [])
    artifacts = {}
    for label, ckpt in tqdm(networks, desc="exporting"):
        stem = tmp / label.lower()
        artifacts[f"fp32 ({label})"] = export_onnx(ckpt, stem.with_suffix(".onnx"))
        artifacts[f"int8 ({label})"] = export_onnx(
            ckpt, stem.with_suffix(".int8.onnx"), "int8", calibration_data=DATA / "crchisto", calibration_count=32
        )
    return artifacts


def profile_lines(profiles: dict[str, dict[str, float]], args: argparse.Namespace) -> list[str]:
    """The per-operator table: kernel ms per call of each artifact, the totals, the
    convolutions' share and each artifact's speed against fp32 (ELU)."""
    ops = sorted({op for p in profiles.values() for op in p}, key=lambda op: -max(p.get(op, 0.0) for p in profiles.values()))
    names = list(profiles)
    lines = [
        f"ONNX Runtime CPU provider, {args.threads} threads, one {args.size}² tile of CRCHisto tissue; kernel ms per call "
        f"(mean of {args.runs + 1}), by operator type. *Layout* = ReorderInput/ReorderOutput/Transpose that ONNX Runtime inserts.",
        "",
        "| operator | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for op in ops:
        if max(p.get(op, 0.0) for p in profiles.values()) < 0.05:
            continue  # the If's shape test and similar: microseconds
        cells = [f"{profiles[n][op]:.1f}" if profiles[n].get(op, 0.0) >= 0.05 else "–" for n in names]
        lines.append(f"| {op}{' (layout)' if op in LAYOUT_OPS else ''} | " + " | ".join(cells) + " |")
    totals = {n: sum(p.values()) for n, p in profiles.items()}
    lines.append("| **total** | " + " | ".join(f"**{totals[n]:.0f}**" for n in names) + " |")
    conv = {n: sum(ms for op, ms in p.items() if "Conv" in op and op != "ConvTranspose") for n, p in profiles.items()}
    lines.append("| convolutions' share | " + " | ".join(f"{100 * conv[n] / totals[n]:.0f}%" for n in names) + " |")
    default = "fp32 (ELU)"  # the bundled default model's network and precision
    lines.append("| **speed × fp32 (ELU)** | " + " | ".join(f"**{totals[default] / totals[n]:.2f}×**" for n in names) + " |")
    return lines


def width_lines(widths: list[dict], machine: dict[str, Any], size: int) -> list[str]:
    """The width-against-ceiling table (rows with their ``percent_of_peak`` filled)."""
    lines = [
        "",
        f"Width against the ceiling: ONNX Runtime fp32, same {size}² tile, random weights, "
        f"% of this run's float32 matmul peak ({peak_text(machine)}):",
        "",
        "| variant | activation | GFLOP | ms | % of peak |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| `{r['model']}` | {r['activation']} | {r['gflop']:.0f} | {r['ms']:.0f} | {r['percent_of_peak']:.0f}% |" for r in widths]
    return lines


def main() -> None:
    args = parse_args()
    from micronet.runtime.machine import physical_cores

    args.threads = args.threads or physical_cores()
    peaks = [matmul_peaks()]

    tmp = Path(tempfile.mkdtemp(prefix="micronet-profile-"))
    artifacts = export_artifacts(args, tmp)
    image = tissue_batch(args.size, 1)
    profiles = {name: profile(path, image, args.threads, args.runs, tmp / name.replace(" ", "_")) for name, path in tqdm(artifacts.items(), desc="profiling")}

    lines = profile_lines(profiles, args)
    widths = width_ceiling(image, args.threads, tmp)
    peaks.append(matmul_peaks())
    machine = run_machine(peaks)
    peak = machine["matmul_peak_gflops"]
    for r in widths:
        r["percent_of_peak"] = 100 * r["gflop"] / (r["ms"] / 1e3) / peak
    lines += width_lines(widths, machine, args.size)
    write_results("ort_profile", {"machine": machine, "size": args.size, "threads": args.threads, "profiles": profiles, "widths": widths}, "\n".join(lines))


if __name__ == "__main__":
    main()
