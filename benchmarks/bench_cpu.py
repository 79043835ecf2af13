"""CPU inference: the bundled models against each other and against torch, as ratios
measured in one run, and per unit of the machine's float32 matmul peak.

    python benchmarks/bench_cpu.py [--configs 500x1,500x4,1024x1] [--repeat 5] [--e2e-repeat 3] [--quick]

The network alone (``InferenceSession.run`` on uint8 tissue, no peaks), five engines:
torch eager fp32 of the paper's network (ELU); the bundled ``default`` model
(``runtime/models/micronet_crchisto.onnx``, ELU, fp32) and its int8 export; the ReLU
fine-tune in fp32 and the bundled ``fast-cpu`` model (its int8 export,
``runtime/models/micronet_crchisto_relu.int8.onnx``). The two in-between artifacts are
exported here from ``trainer/pretrained/`` with the current exporter.

End to end: every image of the CRCHisto **test split** (``split.csv``; 500², 20×) read
from PNG and detected (tiles, inference, peaks) by ``Detector("default")`` and
``Detector("fast-cpu")``, scored (pooled F1, radius 6 px, each model's ξ).

Speed is reported first as ratios measured in this run: every engine against the
default model and against torch, int8 against the same network's fp32, and megapixels/s
per 100 GFLOP/s of float32 matmul peak (2048³ by NumPy's BLAS and by ONNX Runtime's own
MatMul, measured before, between and after the timings; the highest counts). Raw ms and
MP/s follow, labelled with the machine. Engines are timed interleaved (one call each, round after round; the best
call counts), so a change in the load of a shared machine hits them alike. Network
FLOPs come from torch's flop counter (2 × multiply-adds), so "% of peak" is the useful
arithmetic rate of each engine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA,
    REPO,
    interleaved_best,
    matmul_peaks,
    peak_text,
    per_peak,
    run_machine,
    tissue_batch,
    write_results,
)

TORCH = "torch eager fp32 (ELU)"
DEFAULT = "onnxruntime fp32 (ELU)"  # = the bundled default model
FAST = "onnxruntime int8 (ReLU)"  # = the bundled fast-cpu model
ALIAS = {DEFAULT: "default", FAST: "fast-cpu"}


def parse_configs(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip()]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise SystemExit(f"--configs: expected SIZExBATCH[,SIZExBATCH...], e.g. 500x1,1024x1; got {text!r}")
    return [(p[0], p[1]) for p in pairs]


def parse_args() -> argparse.Namespace:
    """The options; ``configs`` parsed to ``(size, batch)`` pairs, and ``--quick``'s
    settings in place of ``configs``, ``repeat`` and ``e2e_repeat``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "trainer" / "pretrained" / "micronet_crchisto.safetensors")
    parser.add_argument("--fast-checkpoint", type=Path, default=REPO / "trainer" / "pretrained" / "micronet_crchisto_relu.safetensors")
    # 500² is not a multiple of 8 (the export's general branch runs); 1024² is the
    # Detector's CPU tile (the aligned branch).
    parser.add_argument("--configs", default="500x1,500x4,1024x1", help="SIZExBATCH list (default 500x1,500x4,1024x1)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per config, best counts (default 5)")
    parser.add_argument("--e2e-repeat", type=int, default=3, help="timed passes over the test split per model (default 3)")
    parser.add_argument("--quick", action="store_true", help="500x1 only, 3 rounds, 1 end-to-end pass")
    parser.add_argument("--threads", type=int, default=None, help="threads for every engine (default: physical cores)")
    args = parser.parse_args()
    args.configs = [(500, 1)] if args.quick else parse_configs(args.configs)
    if args.quick:
        args.repeat, args.e2e_repeat = 3, 1
    return args


def export_artifacts(args: argparse.Namespace) -> dict[str, Path]:
    """The four ONNX Runtime engines' files: the two bundled models, and the int8 ELU and
    fp32 ReLU networks exported now (to a temporary folder) with the current exporter."""
    from micronet.export.onnx import export_onnx
    from micronet.runtime.detector import bundled_model

    tmp = Path(tempfile.mkdtemp(prefix="micronet-bench-"))
    calib = dict(calibration_data=DATA / "crchisto", calibration_count=32)
    artifacts = {DEFAULT: bundled_model("default")}
    with tqdm(total=2, desc="exporting") as bar:
        artifacts["onnxruntime int8 (ELU)"] = export_onnx(args.checkpoint, tmp / "elu.int8.onnx", "int8", **calib)
        bar.update()
        artifacts["onnxruntime fp32 (ReLU)"] = export_onnx(args.fast_checkpoint, tmp / "relu.onnx")
        bar.update()
    artifacts[FAST] = bundled_model("fast-cpu")
    return artifacts


def ort_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session with every graph optimisation, on ``threads`` threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_networks(
    networks: tuple[Any, Any, Any], sessions: dict[str, Any], artifacts: dict[str, Path], configs: list[tuple[int, int]], repeat: int
) -> list[dict[str, Any]]:
    """The network alone: one row per config and engine, torch and every session timed
    interleaved on the same uint8 tissue batch. ``networks``: the ELU model, the ReLU
    model and the ELU model's ModelInfo (torch's normalisation)."""
    import torch
    from micronet.trainer.models import count_flops

    model, fast_model, info = networks
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)

    def torch_run(x: np.ndarray) -> None:
        with torch.inference_mode():
            model((torch.from_numpy(x).permute(0, 3, 1, 2).float() - mean) / std)

    rows = []
    for size, batch in tqdm(configs, desc="network alone"):
        x = tissue_batch(size, batch)
        gflop_elu = count_flops(model, size, size) / 1e9 * batch
        gflop_relu = count_flops(fast_model, size, size) / 1e9 * batch
        fns: dict[str, Callable[[], Any]] = {TORCH: lambda: torch_run(x)}
        fns.update({name: (lambda s=sess: s.run(None, {"image": x})) for name, sess in sessions.items()})
        times = interleaved_best(fns, repeat if size <= 512 else max(2, repeat // 2))
        for engine, t in times.items():
            same_fp32 = times.get(engine.replace("int8", "fp32").replace("torch eager", "onnxruntime"), t)
            rows.append(
                {
                    "engine": engine,
                    "model": ALIAS.get(engine),
                    "artifact": str(artifacts[engine].relative_to(REPO)) if engine in artifacts and artifacts[engine].is_relative_to(REPO) else None,
                    "size": size,
                    "batch": batch,
                    "ms_per_image": t / batch * 1e3,
                    "megapixels_per_s": size * size * batch / t / 1e6,
                    "gflop_per_s": (gflop_relu if "(ReLU)" in engine else gflop_elu) / t,
                    "x_default": times[DEFAULT] / t,
                    "x_torch": times[TORCH] / t,
                    "x_same_network_fp32": same_fp32 / t,
                }
            )
    return rows


def time_end_to_end(split: Any, files: list[Path], threads: int, e2e_repeat: int) -> tuple[dict[str, float], dict[str, list[np.ndarray]], dict[str, int]]:
    """The two bundled models end to end on ``files`` (PNG read → tiles → inference →
    peaks), timed interleaved: best seconds per pass, and the last pass's detections
    and nuclei count per model."""
    from micronet.runtime.detector import Detector, read_image

    detectors = {alias: Detector(alias, threads=threads) for alias in ("default", "fast-cpu")}
    found: dict[str, list[np.ndarray]] = {}
    nuclei: dict[str, int] = {}

    def e2e(alias: str) -> None:
        det, xy = detectors[alias], []
        for f in files:
            xy.append(det.detect(read_image(f), mpp=split.mpp).xy)
        found[alias], nuclei[alias] = xy, sum(len(p) for p in xy)

    e2e_s = interleaved_best({alias: (lambda a=alias: e2e(a)) for alias in detectors}, e2e_repeat)
    return e2e_s, found, nuclei


def end_to_end_rows(split: Any, files: list[Path], timed: tuple[dict[str, float], dict[str, list[np.ndarray]], dict[str, int]], peak: float) -> list[dict[str, Any]]:
    """One row per bundled model from :func:`time_end_to_end`'s result, with its F1."""
    from micronet.runtime.detector import bundled_model
    from micronet.runtime.evaluation.metrics import evaluate_images

    e2e_s, found, nuclei = timed
    n_px = sum(im.shape[0] * im.shape[1] for im in split.images)
    e2e_rows = []
    for alias, t in e2e_s.items():
        mps = n_px / t / 1e6
        e2e_rows.append(
            {
                "model": alias,
                "file": bundled_model(alias).name,
                "images": len(files),
                "split": "test",
                "seconds": t,
                "megapixels_per_s": mps,
                "megapixels_per_s_per_100_gflops": per_peak(mps, peak),
                "nuclei_per_s": nuclei[alias] / t,
                "x_default": e2e_s["default"] / t,
                "f1_test": evaluate_images(found[alias], split.points, 6.0).pooled.f1,
            }
        )
    return e2e_rows


def artifact_f1(artifacts: dict[str, Path], split: Any, threads: int) -> dict[str, float]:
    """Pooled F1 of every ORT artifact on ``split`` (radius 6 px), each at its own ξ."""
    from micronet.runtime.detector import Detector
    from micronet.runtime.evaluation.metrics import evaluate_images

    f1 = {}
    for name, path in tqdm(artifacts.items(), desc="F1"):
        det = Detector(str(path), threads=threads)
        f1[name] = evaluate_images([det.detect(im, mpp=split.mpp).xy for im in split.images], split.points, 6.0).pooled.f1
    return f1


def report_lines(
    machine: dict[str, Any], threads: int, e2e_repeat: int, rows: list[dict[str, Any]], e2e_rows: list[dict[str, Any]], f1: dict[str, float]
) -> list[str]:
    """The markdown: the fast-cpu / default ratios, the network-alone ratios, the end to
    end table, the raw speeds and every artifact's F1."""
    fast_ratio, e2e_ratio = fast_over_default(rows, e2e_rows)
    lines = [
        f"Threads: {threads} (every engine). Ratios are measured in this run; MP/s per 100 GFLOP/s and % of peak divide "
        f"by this run's float32 matmul peak: {peak_text(machine)}.",
        "",
        "**fast-cpu against default** (speed ratio, same run): network alone "
        + ", ".join(f"{k.split('x')[0]}² batch {k.split('x')[1]}: **{v:.2f}×**" for k, v in fast_ratio.items())
        + f"; end to end on the CRCHisto test split: **{e2e_ratio:.2f}×**.",
        "",
        "Network alone, ratios (int8 rows can pass 100% of the float32 peak: an int8 dot-product instruction does up to "
        "4× the multiply-adds of a float32 one):",
        "",
        "| engine (activation) | bundled as | size | batch | × default | × torch | × same net's fp32 | % of fp32 matmul peak | MP/s per 100 GFLOP/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['model'] or '–'} | {r['size']}² | {r['batch']} | {r['x_default']:.2f}× | {r['x_torch']:.2f}× | "
            f"{r['x_same_network_fp32']:.2f}× | {r['percent_of_peak']:.0f}% | {r['megapixels_per_s_per_100_gflops']:.2f} |"
        )
    lines += [
        "",
        "End to end (PNG read → tiles → inference → peaks), the "
        f"{e2e_rows[0]['images']} images of the CRCHisto test split (split.csv), best of {e2e_repeat} pass(es):",
        "",
        "| model | file | × default | MP/s per 100 GFLOP/s | F1 (test) |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| `{e['model']}` | `{e['file']}` | {e['x_default']:.2f}× | {e['megapixels_per_s_per_100_gflops']:.2f} | {e['f1_test']:.4f} |"
        for e in e2e_rows
    ]
    return lines + raw_lines(rows, e2e_rows, f1)


def fast_over_default(rows: list[dict[str, Any]], e2e_rows: list[dict[str, Any]]) -> tuple[dict[str, float], float]:
    """fast-cpu's speed over default's: per network-alone config (``"500x1"``: ratio), and end to end."""
    fast_ratio = {f"{r['size']}x{r['batch']}": r["x_default"] for r in rows if r["engine"] == FAST}
    e2e_ratio = next(e["x_default"] for e in e2e_rows if e["model"] == "fast-cpu")
    return fast_ratio, e2e_ratio


def raw_lines(rows: list[dict[str, Any]], e2e_rows: list[dict[str, Any]], f1: dict[str, float]) -> list[str]:
    """The markdown's last part: raw speeds on this machine, then each artifact's F1."""
    lines = [
        "",
        "Raw speeds on this machine only (see the machine line; they do not transfer to another CPU):",
        "",
        "| engine | size | batch | ms / image | MP/s | GFLOP/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['engine']} | {r['size']}² | {r['batch']} | {r['ms_per_image']:.1f} | {r['megapixels_per_s']:.2f} | {r['gflop_per_s']:.0f} |" for r in rows
    ]
    lines += [f"| end to end `{e['model']}` | test split | 1 | {1e3 * e['seconds'] / e['images']:.1f} | {e['megapixels_per_s']:.2f} | – |" for e in e2e_rows]
    lines += ["", "F1 on the CRCHisto test split (radius 6 px, each artifact's ξ):", ""]
    lines += [f"- {name}{' = `' + ALIAS[name] + '`' if name in ALIAS else ''}: {v:.4f}" for name, v in f1.items()]
    return lines


def main() -> None:
    args = parse_args()
    import torch
    from micronet.runtime.evaluation.datasets import load_point_folder
    from micronet.runtime.machine import physical_cores
    from micronet.trainer.checkpoint import load_checkpoint

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    model, info = load_checkpoint(args.checkpoint)
    model.eval()
    # The ELU engines run the default's network, the ReLU ones fast-cpu's (since issue 13
    # they differ in width): each engine's GFLOP/s and share of peak count its own FLOPs.
    fast_model, _ = load_checkpoint(args.fast_checkpoint)
    artifacts = export_artifacts(args)
    sessions = {name: ort_session(path, threads) for name, path in artifacts.items()}

    peaks = [matmul_peaks()]
    rows = time_networks((model, fast_model, info), sessions, artifacts, args.configs, args.repeat)
    peaks.append(matmul_peaks())

    # End to end on the CRCHisto test split: PNG read → tiles → inference → peaks.
    split = load_point_folder(DATA / "crchisto", "test")
    files = [DATA / "crchisto" / "images" / f"{name}.png" for name in split.names]
    timed = time_end_to_end(split, files, threads, args.e2e_repeat)
    peaks.append(matmul_peaks())
    machine = run_machine(peaks)
    peak = machine["matmul_peak_gflops"]

    for r in rows:
        r["percent_of_peak"] = 100 * r["gflop_per_s"] / peak
        r["megapixels_per_s_per_100_gflops"] = per_peak(r["megapixels_per_s"], peak)
    e2e_rows = end_to_end_rows(split, files, timed, peak)
    # Accuracy of every ORT artifact on the same split, at its own ξ.
    f1 = artifact_f1(artifacts, split, threads)

    fast_ratio, e2e_ratio = fast_over_default(rows, e2e_rows)
    write_results(
        "cpu",
        {
            "machine": machine,
            "threads": threads,
            "settings": {"configs": [f"{s}x{b}" for s, b in args.configs], "repeat": args.repeat, "e2e_repeat": args.e2e_repeat, "quick": args.quick},
            "artifacts": {k: str(v) for k, v in artifacts.items()},
            "fast_cpu_over_default": {"network": fast_ratio, "end_to_end": e2e_ratio},
            "rows": rows,
            "end_to_end": e2e_rows,
            "f1": f1,
        },
        "\n".join(report_lines(machine, threads, args.e2e_repeat, rows, e2e_rows, f1)),
    )


if __name__ == "__main__":
    main()
