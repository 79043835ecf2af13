"""CPU inference: torch eager vs ONNX Runtime fp32 vs ONNX Runtime int8 (QDQ u8s8), same
model, same run, with the CPU's practical peak FLOP/s (a large float32 matrix product)
measured alongside, and the bundled models end to end (read → infer → peaks).

    python benchmarks/bench_cpu.py [--checkpoint trainer/pretrained/micronet_crchisto.safetensors]
                                   [--fast-checkpoint trainer/pretrained/micronet_crchisto_relu.safetensors] [--quick]

Two networks of the same architecture and widths are compared when the second
checkpoint exists: the paper's (ELU) and its ReLU fine-tune, whose activations ONNX
Runtime fuses into its convolutions (and quantises away in int8).

Network FLOPs come from torch's flop counter (2 × multiply-adds), so "% of peak" is the
useful arithmetic rate of each engine. int8 accuracy is the pooled F1 on the CRCHisto
test split (radius 6) next to fp32's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def matmul_peak(threads: int) -> float:
    """Practical float32 peak: best GFLOP/s of a 2048³ product (NumPy's BLAS)."""

    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((2048, 2048), dtype=np.float32)
    t = best_time(lambda: a @ b, repeat=10)
    return 2 * 2048**3 / t / 1e9


def tissue_batch(size: int, batch: int) -> np.ndarray:
    """``batch`` images of ``size²`` tiled from real CRCHisto test images."""
    from micronet.runtime.datasets import load_point_folder

    data = load_point_folder(DATA / "crchisto", "test")
    out = []
    for k in range(batch):
        reps = -(-size // 500)
        tiles = [data.images[(k * reps * reps + i) % len(data)] for i in range(reps * reps)]
        rows = [np.concatenate(tiles[r * reps : (r + 1) * reps], axis=1) for r in range(reps)]
        out.append(np.concatenate(rows, axis=0)[:size, :size])
    return np.ascontiguousarray(np.stack(out))


def pooled_f1(detect, split: str = "test", radius: float = 6.0) -> float:
    from micronet.runtime.datasets import load_point_folder
    from micronet.runtime.metrics import evaluate_images

    data = load_point_folder(DATA / "crchisto", split)
    preds = [detect(im) for im in data.images]
    return evaluate_images(preds, data.points, radius).pooled.f1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "trainer" / "pretrained" / "micronet_crchisto.safetensors")
    parser.add_argument(
        "--fast-checkpoint",
        type=Path,
        default=REPO / "trainer" / "pretrained" / "micronet_crchisto_relu.safetensors",
        help="the ReLU variant (skipped when the file does not exist)",
    )
    parser.add_argument("--quick", action="store_true", help="500² only, batch 1")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from micronet.export.onnx import export_onnx
    from micronet.runtime.detector import Detector
    from micronet.trainer.checkpoint import load_checkpoint
    from micronet.trainer.models import count_flops

    torch.set_num_threads(args.threads)
    model, info = load_checkpoint(args.checkpoint)
    tmp = Path(tempfile.mkdtemp(prefix="micronet-bench-"))
    # (label, checkpoint): the paper's network, and its ReLU variant when present.
    networks = [("ELU", args.checkpoint)] + ([("ReLU", args.fast_checkpoint)] if args.fast_checkpoint.is_file() else [])
    artifacts: dict[str, Path] = {}
    for label, ckpt in tqdm(networks, desc="exporting"):
        stem = tmp / label.lower()
        artifacts[f"onnxruntime fp32 ({label})"] = export_onnx(ckpt, stem.with_suffix(".onnx"))
        artifacts[f"onnxruntime int8 ({label})"] = export_onnx(
            ckpt, stem.with_suffix(".int8.onnx"), "int8", calibration_data=DATA / "crchisto", calibration_count=32
        )

    def session(path: Path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    sessions = {name: session(path) for name, path in artifacts.items()}
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)

    def torch_run(x: np.ndarray) -> None:
        with torch.inference_mode():
            t = (torch.from_numpy(x).permute(0, 3, 1, 2).float() - mean) / std
            model(t)

    # Measured before and after the timed runs; the higher one counts, so a momentary dip
    # never inflates "% of peak".
    peaks = [matmul_peak(args.threads)]
    # 2048² at batch 4 is left out: torch eager's activations (≈ 2.7 GB per full-resolution
    # tensor) plus ONNX Runtime's arenas exceed this 24 GB machine (the process was killed).
    # 500² is not a multiple of 8 (the general graph branch runs); 2048² is (the aligned
    # branch, as for every full Detector tile).
    configs = [(500, 1)] if args.quick else [(500, 1), (500, 4), (2048, 1)]
    rows = []
    for size, batch in tqdm(configs, desc="configs"):
        x = tissue_batch(size, batch)
        gflop = count_flops(model, size, size) / 1e9 * batch
        repeat = 5 if size <= 512 else 2
        times = {"torch eager fp32 (ELU)": best_time(lambda: torch_run(x), repeat)}
        for name, sess in sessions.items():
            times[name] = best_time(lambda: sess.run(None, {"image": x}), repeat)
        for engine, t in times.items():
            same_fp32 = times.get(engine.replace("int8", "fp32").replace("torch eager", "onnxruntime"), t)
            rows.append(
                {
                    "engine": engine,
                    "size": size,
                    "batch": batch,
                    "ms_per_image": t / batch * 1e3,
                    "megapixels_per_s": size * size * batch / t / 1e6,
                    "gflop_per_s": gflop / t,
                    "speedup_vs_torch": times["torch eager fp32 (ELU)"] / t,
                    "speedup_vs_ort_fp32": same_fp32 / t,
                    "speedup_vs_ort_fp32_elu": times["onnxruntime fp32 (ELU)"] / t,
                }
            )

    peaks.append(matmul_peak(args.threads))
    peak = max(peaks)
    for r in rows:
        r["percent_of_peak"] = 100 * r["gflop_per_s"] / peak

    # Accuracy of each artifact on the CRCHisto test split at the model's ξ.
    f1 = {}
    for name, path in artifacts.items():
        det = Detector(str(path), threads=args.threads)
        f1[name] = pooled_f1(lambda im: det.detect(im, mpp=0.55).xy)

    # End to end on 20× tissue: read PNG → detect (tiles, inference, peaks) with each
    # bundled model, per megapixel.
    from micronet.runtime.detector import BUNDLED_MODELS, bundled_model, read_image

    files = sorted((DATA / "crchisto" / "images").glob("*.png"))[:20]
    e2e = []
    for alias in BUNDLED_MODELS:
        det = Detector(alias, threads=args.threads)
        det.detect(read_image(files[0]))
        t0 = time.perf_counter()
        n_px = n_nuclei = 0
        for f in files:
            im = read_image(f)
            n_nuclei += len(det.detect(im))
            n_px += im.shape[0] * im.shape[1]
        t_e2e = time.perf_counter() - t0
        e2e.append(
            {
                "model": bundled_model(alias).name,
                "alias": alias,
                "images": len(files),
                "megapixels_per_s": n_px / t_e2e / 1e6,
                "nuclei_per_s": n_nuclei / t_e2e,
                "f1_test": pooled_f1(lambda im: det.detect(im, mpp=0.55).xy),
            }
        )

    lines = [
        f"CPU practical peak (float32 2048³ matmul, {args.threads} threads, best of 10 before and after the runs: "
        f"{peaks[0]:.0f} and {peaks[1]:.0f}): **{peak:.0f} GFLOP/s**",
        "",
        "| engine (activation) | size | batch | ms / image | MP/s | GFLOP/s | % of peak | × torch | × same net's ORT fp32 | × ORT fp32 (ELU) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['size']}² | {r['batch']} | {r['ms_per_image']:.1f} | {r['megapixels_per_s']:.2f} | "
            f"{r['gflop_per_s']:.0f} | {r['percent_of_peak']:.0f}% | {r['speedup_vs_torch']:.2f}× | {r['speedup_vs_ort_fp32']:.2f}× | "
            f"{r['speedup_vs_ort_fp32_elu']:.2f}× |"
        )
    lines += ["", "F1 on CRCHisto test (radius 6 px, each model's ξ):", ""]
    lines += [f"- {name}: {v:.4f}" for name, v in f1.items()]
    lines += ["", f"End to end (PNG read → tiles → inference → peaks), {len(files)} CRCHisto test images at 20×:", ""]
    lines += [
        f"- `Detector({e['alias']!r})` = `{e['model']}`: **{e['megapixels_per_s']:.2f} MP/s**, {e['nuclei_per_s']:.0f} nuclei/s, F1 {e['f1_test']:.4f}"
        for e in e2e
    ]
    write_results("cpu", {"peak_gflops": peak, "peak_measurements": peaks, "threads": args.threads, "rows": rows, "f1": f1, "end_to_end": e2e}, "\n".join(lines))


if __name__ == "__main__":
    main()
