"""GPU inference: TensorRT fp16 against ONNX Runtime's CUDA provider (fp32) and torch CUDA
eager (fp32, and fp16 autocast), on the same images, end to end and model only.
Writes results/gpu.json and results/gpu.md.

    python benchmarks/bench_gpu.py [--images 16] [--large 4] [--repeat 3] [--device 0]
        [--onnx-fp16 M.fp16.onnx] [--onnx-fp32 M.onnx] [--checkpoint M.safetensors]

Models: the bundled default model, by default. TensorRT runs an fp16 engine built from
the fp16 export through the engine cache, exactly as ``Detector("default",
backend="tensorrt")`` does (built on first use within a bounded profile, N×H×W from
1×64×64 to 4×1024×1024, tuned for 2×1024×1024, so the build takes minutes; later runs
load it); ONNX Runtime runs the fp32 export with its CUDA provider; torch runs the
checkpoint (``trainer/pretrained/``) eagerly, in fp32 and under fp16 autocast.

Images: ``--images`` CRCHisto images (500², 20×; the bundled 512² sample and its flips
when ``../shared/data`` is absent), detected with ``detect_batch``, and ``--large``
2048² images tiled from them, each detected alone (3 × 3 tiles of 1024²). End to end
is ``Detector`` from uint8 pixels in host memory to detections (upload, inference,
peaks on the GPU, one copy of the peak list per tile); model only is the backend's
``infer`` on a 1024² batch of 1 and of 4, the map left on the GPU. Best of
``--repeat`` passes after a warm-up. Detections of every engine are compared with ONNX
Runtime fp32 (F1 within 3 px).

Without a CUDA GPU the script says why and exits with status 1. Engines whose software
is missing (TensorRT, ONNX Runtime's CUDA provider, torch with CUDA) are skipped and
listed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CHECKPOINT = REPO / "trainer" / "pretrained" / "micronet_crchisto.safetensors"
LARGE = 2048
MODEL_BATCHES = (1, 4)  # model-only timings: (N, 1024, 1024, 3) batches
MODEL_SIZE = 1024

TRT = "TensorRT fp16"
ORT = "ONNX Runtime CUDA fp32"
TORCH32 = "torch CUDA eager fp32"
TORCH16 = "torch CUDA eager fp16 autocast"
REFERENCE = ORT

log = logging.getLogger("bench_gpu")


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the benchmark, or None when it can."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install 'micronet-sdk[gpu]'); the GPU peak finder and TensorRT need it"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        return f"no CUDA device ({exc})"
    return None if count > 0 else "no CUDA device"


# --- images ------------------------------------------------------------------------------


def source_images(count: int) -> tuple[list[np.ndarray], str]:
    """``count`` H&E images at the model's pixel size and where they come from."""
    from micronet.runtime.detector import bundled_sample, read_image

    files = sorted((DATA / "crchisto" / "images").glob("*.png"))
    if files:
        return [read_image(f)[..., :3] for f in files[:count]], f"CRCHisto images ({DATA / 'crchisto'})"
    sample = np.ascontiguousarray(read_image(bundled_sample())[..., :3])
    variants = [sample, sample[::-1], sample[:, ::-1], sample[::-1, ::-1]]
    variants += [np.ascontiguousarray(v.transpose(1, 0, 2)) for v in variants]
    return [np.ascontiguousarray(variants[k % len(variants)]) for k in range(count)], "the bundled sample image, flipped and transposed"


def large_images(images: list[np.ndarray], count: int, size: int = LARGE) -> list[np.ndarray]:
    """``count`` ``size²`` images, each tiled from the small ones (real tissue throughout)."""
    h = min(im.shape[0] for im in images)
    w = min(im.shape[1] for im in images)
    reps_y, reps_x = -(-size // h), -(-size // w)
    out = []
    for k in range(count):
        tiles = [images[(k * reps_y * reps_x + i) % len(images)][:h, :w] for i in range(reps_y * reps_x)]
        rows = [np.concatenate(tiles[r * reps_x : (r + 1) * reps_x], axis=1) for r in range(reps_y)]
        out.append(np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size]))
    return out


# --- models ------------------------------------------------------------------------------


def model_files(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The fp16 and fp32 ONNX files and the checkpoint (None when absent)."""
    from micronet.runtime.detector import bundled_model
    from micronet.runtime.engine_cache import bundled_engine_source

    checkpoint = args.checkpoint if args.checkpoint is not None else (CHECKPOINT if CHECKPOINT.is_file() else None)
    fp32 = args.onnx_fp32 if args.onnx_fp32 is not None else bundled_model("default")
    fp16, bundled16 = args.onnx_fp16, False
    if fp16 is None:
        try:
            fp16, bundled16 = bundled_engine_source("default"), True
        except FileNotFoundError:
            if checkpoint is None:
                raise
            from micronet.export.onnx import export_onnx

            log.info("the bundled fp16 export is missing: exporting it from %s", checkpoint)
            fp16 = export_onnx(checkpoint, work / "model.fp16.onnx", "fp16")
    return {"fp16": Path(fp16), "fp32": Path(fp32), "checkpoint": checkpoint, "bundled_fp16": bundled16}


class TorchBackend:
    """The checkpoint in torch, eager, behind the ``Backend`` protocol: uint8 ``(N, H, W,
    3)`` in, ``(N, 1, H, W)`` float32 out as a CuPy array sharing torch's memory."""

    device = "cuda"

    def __init__(self, checkpoint: Path, autocast: bool, device_id: int) -> None:
        import torch

        if not torch.cuda.is_available():
            raise ImportError("torch without CUDA")
        from micronet.export.onnx import DeployableModel
        from micronet.trainer.checkpoint import load_checkpoint

        torch.backends.cudnn.benchmark = True
        model, info = load_checkpoint(checkpoint)
        self.info = info
        self.name = "torch-cuda-fp16-autocast" if autocast else "torch-cuda-fp32"
        self._torch = torch
        self._device = torch.device("cuda", device_id)
        self._autocast = autocast
        # The network as trained (no folding), uint8 → normalised inside, as the exports.
        self._net = DeployableModel(model, info.mean, info.std).to(self._device).eval()

    def infer(self, batch: np.ndarray) -> Any:
        import cupy

        torch = self._torch
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self._autocast):
            out = self._net(torch.from_numpy(np.ascontiguousarray(batch)).to(self._device))  # (N, 1, H, W) float32
        torch.cuda.synchronize(self._device)  # complete, as the Backend protocol promises
        return cupy.from_dlpack(out)  # zero-copy; keeps `out` alive


def make_detectors(files: dict[str, Any], device_id: int, skipped: dict[str, str], versions: dict[str, str]) -> dict[str, Any]:
    """name → ``Detector``; engines whose software is missing go to ``skipped``."""
    from micronet.runtime.detector import Detector

    detectors: dict[str, Any] = {}
    device = f"cuda:{device_id}"
    try:
        import tensorrt

        versions["tensorrt"] = tensorrt.__version__
        t0 = time.perf_counter()
        if files["bundled_fp16"]:
            detectors[TRT] = Detector("default", backend="tensorrt", device=device)  # the user's path, cache included
        else:
            from micronet.runtime.engine_cache import cached_engine

            detectors[TRT] = Detector(cached_engine(files["fp16"], device_id=device_id), device=device)
        versions["tensorrt engine ready in"] = f"{time.perf_counter() - t0:.0f} s (built, or loaded from the cache)"
    except ImportError as exc:
        skipped[TRT] = str(exc)
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
        detectors[ORT] = Detector(files["fp32"], device=device)
        if detectors[ORT].backend_name != "onnxruntime-cuda" or detectors[ORT].device != "cuda":
            skipped[ORT] = f"ran as {detectors.pop(ORT).backend_name} (maps on the host): no CUDA provider or no CuPy"
    except ValueError as exc:
        skipped[ORT] = f"{exc} (pip install 'micronet-sdk[gpu]' installs onnxruntime-gpu)"
    if files["checkpoint"] is None:
        skipped[TORCH32] = skipped[TORCH16] = "no checkpoint (--checkpoint)"
    else:
        try:
            import torch

            versions["torch"] = torch.__version__
            for name, autocast in ((TORCH32, False), (TORCH16, True)):
                detectors[name] = Detector(backend=TorchBackend(files["checkpoint"], autocast, device_id))
        except ImportError as exc:
            skipped[TORCH32] = skipped[TORCH16] = str(exc)
    return detectors


# --- timing ------------------------------------------------------------------------------


def time_detector(det: Any, images: list[np.ndarray], large: list[np.ndarray], repeat: int) -> dict[str, Any]:
    def small_pass() -> list[Any]:
        return det.detect_batch(images)

    def large_pass() -> list[Any]:
        return [det.detect(image) for image in large]

    row: dict[str, Any] = {}
    for key, run, imgs in (("images", small_pass, images), ("large", large_pass, large)):
        if not imgs:
            continue
        seconds = best_time(run, repeat, warmup=1)
        pixels = sum(im.shape[0] * im.shape[1] for im in imgs)
        row[key] = {"seconds": seconds, "images_per_s": len(imgs) / seconds, "megapixels_per_s": pixels / 1e6 / seconds}
    return row


def time_model(det: Any, repeat: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    out = {}
    for n in MODEL_BATCHES:
        if n > det.batch_size:
            continue
        batch = rng.integers(0, 256, (n, MODEL_SIZE, MODEL_SIZE, 3), dtype=np.uint8)
        out[f"{n}x{MODEL_SIZE}x{MODEL_SIZE}_ms"] = best_time(lambda: det.backend.infer(batch), repeat, warmup=2) * 1e3
    return out


def agreement(found: list[Any], reference: list[Any]) -> dict[str, float]:
    from micronet.runtime.evaluation.matching import evaluate_points

    tp = fp = fn = 0
    for f, r in zip(found, reference):
        m = evaluate_points(f.xy, r.xy, radius=3.0)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    return {"f1_vs_reference": 2 * tp / max(1, 2 * tp + fp + fn), "detections": tp + fp, "reference_detections": tp + fn}


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="small (500²) images, detected as one batch list (default 16)")
    parser.add_argument("--large", type=int, default=4, help=f"{LARGE}² images, each detected alone (default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the best counts (default 3)")
    parser.add_argument("--device", type=int, default=0, help="the CUDA device (default 0)")
    parser.add_argument("--onnx-fp16", type=Path, help="fp16 export for TensorRT (default: the bundled one)")
    parser.add_argument("--onnx-fp32", type=Path, help="fp32 export for ONNX Runtime (default: the bundled default model)")
    parser.add_argument("--checkpoint", type=Path, help=f"checkpoint for torch (default: {CHECKPOINT.relative_to(REPO)})")
    args = parser.parse_args(argv)
    if min(args.images, args.large) < 0 or args.images + args.large < 1 or args.repeat < 1:
        parser.error("--images and --large must be >= 0 (not both 0), --repeat >= 1")

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    reason = no_gpu_reason()
    if reason is not None:
        print(f"bench_gpu: cannot run: {reason}", file=sys.stderr)
        return 1

    import cupy
    from micronet.runtime.machine import describe_machine

    machine = describe_machine()
    versions: dict[str, str] = {"cupy": cupy.__version__}
    skipped: dict[str, str] = {}
    images, source = source_images(args.images) if args.images else source_images(1)
    large = large_images(images, args.large)
    if not args.images:
        images = []

    with tempfile.TemporaryDirectory(prefix="micronet-bench-gpu-") as tmp:
        files = model_files(args, Path(tmp))
        detectors = make_detectors(files, args.device, skipped, versions)
        if not detectors:
            print(f"bench_gpu: no GPU engine could run: {json.dumps(skipped, indent=1)}", file=sys.stderr)
            return 1
        rows: dict[str, dict[str, Any]] = {}
        found: dict[str, list[Any]] = {}
        for name, det in detectors.items():
            t0 = time.perf_counter()
            found[name] = det.detect_batch(images) if images else [det.detect(im) for im in large]
            rows[name] = {"backend": det.backend_name, "tile_size": det.tile_size, "batch_size": det.batch_size}
            rows[name]["end_to_end"] = time_detector(det, images, large, args.repeat)
            rows[name]["model_only"] = time_model(det, args.repeat)
            log.info("%s: done in %.0f s", name, time.perf_counter() - t0)
        reference = REFERENCE if REFERENCE in found else next(iter(found))
        for name in rows:
            rows[name]["agreement"] = agreement(found[name], found[reference])
        for det in detectors.values():
            close = getattr(det.backend, "close", None)
            if close is not None:
                close()

    gpu = next((g for g in machine.get("gpus", []) if g.get("index") == str(args.device)), {})
    lines = [
        "## GPU inference",
        "",
        f"GPU {args.device}: {gpu.get('name', '?')} (sm_{str(gpu.get('compute_capability', '?')).replace('.', '')}); "
        + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        + ".",
        f"Images: {len(images)} from {source}, detected with `detect_batch`; {len(large)} of {LARGE}² tiled from them, "
        f"each detected alone. End to end = `Detector` from host uint8 pixels to detections; model only = the backend's "
        f"`infer` on a {MODEL_SIZE}² batch, the map left on the GPU. Best of {args.repeat} after a warm-up.",
        "",
        f"| engine | backend | images/s ({len(images)} small) | MP/s (small) | MP/s ({LARGE}²) | model 1×{MODEL_SIZE}² (ms) | "
        f"model 4×{MODEL_SIZE}² (ms) | F1 vs {reference} |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        e2e, model = row["end_to_end"], row["model_only"]
        lines.append(
            f"| {name} | {row['backend']} | {fmt(e2e.get('images', {}).get('images_per_s'))} | "
            f"{fmt(e2e.get('images', {}).get('megapixels_per_s'))} | {fmt(e2e.get('large', {}).get('megapixels_per_s'))} | "
            f"{fmt(model.get(f'1x{MODEL_SIZE}x{MODEL_SIZE}_ms'), 2)} | {fmt(model.get(f'4x{MODEL_SIZE}x{MODEL_SIZE}_ms'), 2)} | "
            f"{row['agreement']['f1_vs_reference']:.4f} |"
        )
    if TRT in rows and reference in rows and reference != TRT:
        for key in ("images", "large"):
            a, b = rows[TRT]["end_to_end"].get(key), rows[reference]["end_to_end"].get(key)
            if a and b:
                lines.append(f"\nTensorRT fp16 end to end ({key}): {a['megapixels_per_s'] / b['megapixels_per_s']:.2f}× {reference}.")
    for name, why in skipped.items():
        lines.append(f"\nSkipped {name}: {why}")
    payload = {
        "machine": machine,
        "device": args.device,
        "versions": versions,
        "images": {"small": len(images), "large": len(large), "large_size": LARGE, "source": source},
        "models": {k: str(v) if v is not None else None for k, v in files.items()},
        "repeat": args.repeat,
        "reference": reference,
        "skipped": skipped,
        "rows": rows,
    }
    write_results("gpu", json.loads(json.dumps(payload, default=str)), "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
