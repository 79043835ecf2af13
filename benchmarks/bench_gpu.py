"""GPU inference: TensorRT FP16 vs ONNX Runtime (CUDA execution provider) vs torch CUDA on
the same model, at 512² and 2048², batch 1 and 4, with the peak finder on the device
(``find_peaks_cuda`` on the map the engine left on the GPU) and on the host (copy the map
back, then ``find_peaks``). Writes results/gpu.json and results/gpu.md.

    python benchmarks/bench_gpu.py --checkpoint model.safetensors
    python benchmarks/bench_gpu.py --onnx-fp16 model.fp16.onnx --onnx-fp32 model.onnx [--engine model.engine]

Missing ONNX files are exported from the checkpoint; without a checkpoint a randomly
initialised ``micronet`` stands in (timings only; the JSON says so). The TensorRT engine is
built from the fp16 ONNX unless ``--engine`` names one. Rows whose software is missing
(TensorRT, ONNX Runtime's CUDA provider, torch with CUDA) are skipped and listed. On a
machine without a CUDA device the script prints "skipped: no CUDA device" and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, write_results  # noqa: E402

from micronet.runtime.peaks import find_peaks  # noqa: E402


def cuda_unavailable() -> str | None:
    """Why this machine cannot run the benchmark, or None when it can."""
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None:
        try:
            if cupy.cuda.runtime.getDeviceCount() > 0:
                return None
        except cupy.cuda.runtime.CUDARuntimeError:
            pass
        return "no CUDA device"
    try:
        import torch

        has_device = torch.cuda.is_available()
    except ImportError:
        has_device = False
    if has_device:
        return "CuPy not installed (pip install 'micronet-sdk[gpu]'); the GPU peak finder and the TensorRT backend need it"
    return "no CUDA device"


def he_like(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, size, size, 3) uint8: pink background with nucleus-sized dark purple blobs."""
    from scipy import ndimage as ndi

    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        mask = np.zeros((size, size), np.float32)
        count = size * size // 400  # about one nucleus per 400 px², as in the H&E data
        mask[rng.integers(0, size, count), rng.integers(0, size, count)] = 1.0
        mask = np.clip(ndi.gaussian_filter(mask, 3.0) * 60.0, 0.0, 1.0)[..., None]
        img = np.array([230.0, 170.0, 205.0]) * (1 - mask) + np.array([95.0, 55.0, 140.0]) * mask
        out[k] = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return out


# --- artifacts ---------------------------------------------------------------------------


def prepare_models(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Paths of the checkpoint and the fp16/fp32 ONNX files, exporting what is missing."""
    notes = []
    checkpoint = args.checkpoint
    fp16, fp32 = args.onnx_fp16, args.onnx_fp32
    if checkpoint is None and (fp16 is None or fp32 is None):
        from micronet.runtime.model_info import ModelInfo
        from micronet.trainer.checkpoint import save_checkpoint
        from micronet.trainer.models import create_model

        model = create_model("micronet")
        info = ModelInfo(architecture=model.config_dict(), mean=[180.0, 130.0, 170.0], std=[40.0, 45.0, 35.0], mpp=0.5, threshold=1.0)
        checkpoint = save_checkpoint(work / "random.safetensors", model, info)
        notes.append("random weights (no --checkpoint): timings only, peak counts are not meaningful")
    if fp16 is None or fp32 is None:
        from micronet.export.onnx import export_onnx

        if fp16 is None:
            fp16 = export_onnx(checkpoint, work / "model.fp16.onnx", "fp16")
        if fp32 is None:
            fp32 = export_onnx(checkpoint, work / "model.onnx", "fp32")
    return {"checkpoint": checkpoint, "fp16": Path(fp16), "fp32": Path(fp32), "notes": notes}


# --- runners: each maps an (N, S, S, 3) uint8 batch to (N, 1, S, S) maps ----------------
# `device` runners return a CuPy array (the map stays on the GPU); `host` runners a NumPy one.


def tensorrt_runner(engine: Path) -> tuple[Callable[[np.ndarray], Any], Any]:
    from micronet.runtime.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend(engine)
    return backend.infer, backend


def ort_runners(onnx_path: Path) -> tuple[Callable[[np.ndarray], Any], Callable[[np.ndarray], Any]]:
    """(map kept on the GPU through I/O binding, map returned to the host) on one session."""
    import cupy
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ImportError("ONNX Runtime without the CUDA execution provider (pip install onnxruntime-gpu)")
    session = ort.InferenceSession(str(onnx_path), providers=[("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise ImportError(f"ONNX Runtime could not start its CUDA execution provider (got {session.get_providers()})")

    def on_device(batch: np.ndarray) -> Any:
        binding = session.io_binding()
        binding.bind_cpu_input("image", batch)
        binding.bind_output("proximity", "cuda", 0)
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        value = binding.get_outputs()[0]
        shape = tuple(value.shape())
        nbytes = int(np.prod(shape)) * 4  # float32
        memory = cupy.cuda.UnownedMemory(value.data_ptr(), nbytes, value)  # keeps `value` alive
        return cupy.ndarray(shape, cupy.float32, cupy.cuda.MemoryPointer(memory, 0))

    def to_host(batch: np.ndarray) -> Any:
        return session.run(["proximity"], {"image": batch})[0]

    return on_device, to_host


def torch_runner(checkpoint: Path, device_out: bool) -> Callable[[np.ndarray], Any]:
    import cupy
    import torch

    if not torch.cuda.is_available():
        raise ImportError("torch without CUDA")
    from micronet.export.onnx import DeployableModel, fold_batchnorm
    from micronet.trainer.checkpoint import load_checkpoint

    torch.backends.cudnn.benchmark = True
    model, info = load_checkpoint(checkpoint)
    # The same graph as the fp16 export: folded batch norms, fp16 compute, uint8 in.
    net = DeployableModel(fold_batchnorm(model).half(), info.mean, info.std, dtype=torch.float16).cuda().eval()

    @torch.inference_mode()
    def run(batch: np.ndarray) -> Any:
        out = net(torch.from_numpy(batch).cuda(non_blocking=False))  # (N, 1, H, W) float32
        torch.cuda.synchronize()
        return cupy.asarray(out) if device_out else out.cpu().numpy()

    return run


# --- timing ------------------------------------------------------------------------------


def time_variants(infer: Callable[[np.ndarray], Any], batch: np.ndarray, threshold: float, min_distance: int, repeat: int, on_device: bool) -> dict[str, Any]:
    import cupy

    from micronet.runtime.peaks import find_peaks_cuda

    def device_peaks() -> int:
        maps = infer(batch)
        return sum(len(find_peaks_cuda(maps[k], threshold, min_distance)[0]) for k in range(len(batch)))

    def host_peaks() -> int:
        maps = infer(batch)
        host = cupy.asnumpy(maps) if isinstance(maps, cupy.ndarray) else maps
        return sum(len(find_peaks(host[k], threshold, min_distance)[0]) for k in range(len(batch)))

    row: dict[str, Any] = {"infer_ms": best_time(lambda: infer(batch), repeat, warmup=3) * 1e3}
    row["peaks_host_ms"] = best_time(host_peaks, repeat) * 1e3
    row["peaks_device_ms"] = best_time(device_peaks, repeat) * 1e3 if on_device else None
    row["peaks"] = device_peaks() if on_device else host_peaks()
    return row


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a MicroNet .safetensors checkpoint (needed for the torch rows)")
    parser.add_argument("--onnx-fp16", type=Path, help="fp16 ONNX export (default: exported from the checkpoint)")
    parser.add_argument("--onnx-fp32", type=Path, help="fp32 ONNX export (default: exported from the checkpoint)")
    parser.add_argument("--engine", type=Path, help="a TensorRT engine built for this GPU (default: built from --onnx-fp16)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048], help="square image sizes (default 512 2048)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="batch sizes (default 1 4)")
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per measurement; the best counts")
    parser.add_argument("--quick", action="store_true", help="512² only, 3 repeats")
    parser.add_argument("--threshold", type=float, help="peak threshold (default: the model's ξ; random weights: the map's 98th percentile)")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    reason = cuda_unavailable()
    if reason is not None:
        print(f"skipped: {reason}")
        return 0
    import cupy

    from micronet.runtime.backends.tensorrt import cuda_device_properties

    sizes = [512] if args.quick else sorted(args.sizes)
    batches = sorted(args.batches)
    repeat = 3 if args.quick else args.repeat
    gpu_name, cc = cuda_device_properties(0)
    versions: dict[str, str] = {"cupy": cupy.__version__}
    skipped: dict[str, str] = {}

    with tempfile.TemporaryDirectory(prefix="micronet-bench-gpu-") as tmp:
        work = Path(tmp)
        models = prepare_models(args, work)
        from micronet.export.engine import read_onnx_info

        info = read_onnx_info(models["fp16"])

        runners: dict[str, tuple[Callable[[np.ndarray], Any], bool]] = {}  # name -> (infer, map stays on device)
        closers = []
        try:
            import tensorrt

            versions["tensorrt"] = tensorrt.__version__
            engine = args.engine
            if engine is None:
                from micronet.export.engine import build_engine

                engine = build_engine(
                    models["fp16"], work / "model.engine", min_shape=(1, sizes[0], sizes[0]),
                    opt_shape=(batches[-1], sizes[-1], sizes[-1]), max_shape=(batches[-1], sizes[-1], sizes[-1]),
                    timing_cache=work / "timing.cache",
                )
            trt_infer, trt_backend = tensorrt_runner(engine)
            closers.append(trt_backend.close)
            runners["TensorRT fp16"] = (trt_infer, True)
        except ImportError as exc:
            skipped["TensorRT fp16"] = str(exc)
        try:
            import onnxruntime

            versions["onnxruntime"] = onnxruntime.__version__
            for precision in ("fp16", "fp32"):
                on_device, to_host = ort_runners(models[precision])
                runners[f"ORT CUDA {precision}"] = (on_device, True)
                runners[f"ORT CUDA {precision} (host output)"] = (to_host, False)
        except ImportError as exc:
            skipped["ONNX Runtime CUDA"] = str(exc)
        if models["checkpoint"] is not None:
            try:
                import torch

                versions["torch"] = torch.__version__
                runners["torch CUDA fp16"] = (torch_runner(models["checkpoint"], device_out=True), True)
            except ImportError as exc:
                skipped["torch CUDA fp16"] = str(exc)
        else:
            skipped["torch CUDA fp16"] = "needs --checkpoint"

        rng = np.random.default_rng(0)
        data = {(s, b): he_like(rng, b, s) for s in sizes for b in batches}
        threshold = args.threshold
        if threshold is None:
            threshold = float(info.threshold)
            if models["notes"]:
                reference = next(iter(runners.values()))[0](data[(sizes[0], batches[0])])
                reference = cupy.asnumpy(reference) if isinstance(reference, cupy.ndarray) else reference
                threshold = float(np.percentile(reference, 98))

        # Parity of the engine with ONNX Runtime fp32 on the smallest batch.
        parity = None
        if "TensorRT fp16" in runners and "ORT CUDA fp32 (host output)" in runners:
            batch = data[(sizes[0], batches[0])]
            a = cupy.asnumpy(runners["TensorRT fp16"][0](batch))
            b = runners["ORT CUDA fp32 (host output)"][0](batch)
            parity = {"max_abs_diff": float(np.abs(a - b).max()), "map_range": float(b.max() - b.min())}

        rows = []
        for name, (infer, on_device) in runners.items():
            for s in sizes:
                for b in batches:
                    t0 = time.perf_counter()
                    row = {"backend": name, "size": s, "batch": b}
                    row.update(time_variants(infer, data[(s, b)], threshold, info.min_distance, repeat, on_device))
                    best = row["peaks_device_ms"] if row["peaks_device_ms"] is not None else row["peaks_host_ms"]
                    row["images_per_s"] = b / (best / 1e3)
                    row["megapixels_per_s"] = b * s * s / 1e6 / (best / 1e3)
                    rows.append(row)
                    print(f"{name} {s}² ×{b}: {fmt(row['infer_ms'])} ms ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        for close in closers:
            close()

    lines = [
        "## GPU inference",
        "",
        f"{gpu_name} (sm_{cc.replace('.', '')}); " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".",
        f"Synthetic H&E-like images, peak threshold {threshold:.4g}, min distance {info.min_distance}. "
        f"Time per batch: best of {repeat} calls, host uint8 pixels in, peaks out, in milliseconds.",
        "",
        "| backend | size | batch | infer (ms) | + peaks on GPU (ms) | + copy + CPU peaks (ms) | images/s | MP/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['size']}² | {r['batch']} | {fmt(r['infer_ms'])} | {fmt(r['peaks_device_ms'])} | "
            f"{fmt(r['peaks_host_ms'])} | {r['images_per_s']:.1f} | {r['megapixels_per_s']:.0f} |"
        )
    if parity is not None:
        lines += ["", f"TensorRT fp16 vs ONNX Runtime fp32: max |Δ| {parity['max_abs_diff']:.3g} over a map range of {parity['map_range']:.3g}."]
    for name, why in skipped.items():
        lines.append(f"\nSkipped {name}: {why}")
    for note in models["notes"]:
        lines.append(f"\nNote: {note}")
    payload = {
        "gpu": {"name": gpu_name, "compute_capability": cc},
        "versions": versions,
        "threshold": threshold,
        "min_distance": info.min_distance,
        "repeat": repeat,
        "parity": parity,
        "skipped": skipped,
        "notes": models["notes"],
        "rows": rows,
    }
    write_results("gpu", json.loads(json.dumps(payload, default=str)), "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
