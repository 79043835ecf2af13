"""``micronet check``: the known-answer self-test of every backend on this machine.

Runs each model (the bundled ones by default) on every backend this machine has — ONNX
Runtime on the CPU for fp32 and int8 models, ONNX Runtime's CUDA provider and TensorRT
when a GPU is there — against the reference results the model carries
(:mod:`micronet.runtime.diagnostics.check`), and prints one row per backend: the device (CPU model
and ISA flags, or GPU name and compute capability), the largest and the mean |Δ map|,
how many more or fewer detections than the reference, the F1 against the reference
detections, the share of them found within 1 px, for a model with a class head the
share with the reference's class, and MP/s. Exits 1 when any backend disagrees beyond its precision's tolerance or fails to
run; backends this machine lacks are listed as skipped. What a scanner vendor runs at
install time, and on a GPU machine the whole GPU verification in one command.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from micronet.commands import device_arg
from micronet.runtime.errors import InputError

__all__ = ["add_parser", "run", "plan_checks"]

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers the ``check`` subcommand on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "check",
        help="known-answer self-test of every backend on this machine",
        description="Run models (default: the bundled ones) on every backend available here (ONNX Runtime CPU, "
        "ONNX Runtime CUDA, TensorRT) against the reference results stored in each model at export; one row per "
        "backend; exit 1 when any disagrees.",
    )
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="model files (.onnx, .engine) or bundled model names (default: every bundled model; on a GPU also "
        "default through TensorRT)",
    )
    parser.add_argument(
        "--device",
        type=device_arg,
        default="auto",
        metavar="D",
        help="auto (every backend available), cpu, or cuda / cuda:N (GPU backends only) (default auto)",
    )
    parser.add_argument("--repeat", type=int, default=3, metavar="K", help="timed runs per reference image (default 3)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the machine and rows as JSON")
    return parser


def _cuda_available() -> tuple[bool, str]:
    from micronet.runtime.machine import cuda_device_count

    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this ONNX Runtime has no CUDA provider (pip install 'micronet-sdk[gpu]')"
    if cuda_device_count() < 1:
        return False, "no CUDA GPU (no NVIDIA driver or device)"
    return True, ""


def _tensorrt_available() -> tuple[bool, str]:
    from micronet.runtime.machine import cuda_device_count

    if cuda_device_count() < 1:
        return False, "no CUDA GPU (no NVIDIA driver or device)"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "TensorRT is not installed (pip install 'micronet-sdk[gpu]'; on a Jetson, JetPack's)"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False, "CuPy is not installed (pip install 'micronet-sdk[gpu]')"
    return True, ""


def plan_checks(models: list[str], device: str) -> list[tuple[str, str | None, str, str]]:
    """The (model, backend, device, why-skipped) combinations to run: ``backend`` is
    ``None`` for a combination this machine cannot run, with the reason in the last
    field."""
    from micronet.runtime.bundled import BUNDLED_MODELS, BUNDLED_TTA, resolve_model

    explicit = bool(models)
    if not models:
        models = [n for n in BUNDLED_MODELS if n not in BUNDLED_TTA]  # "accurate" is the default's file
    cpu_ok = device in ("auto", "cpu")
    gpu_ok = device == "auto" or device.startswith("cuda")
    gpu_device = device if device.startswith("cuda") else "cuda"
    cuda, cuda_why = _cuda_available() if gpu_ok else (False, "--device cpu")
    trt, trt_why = _tensorrt_available() if gpu_ok else (False, "--device cpu")
    plan: list[tuple[str, str | None, str, str]] = []
    for name in models:
        path = resolve_model(name)
        if path.suffix.lower() == ".engine":
            plan.append((name, "tensorrt", gpu_device, "") if trt else (name, None, gpu_device, trt_why))
            continue
        precision = _onnx_precision(path)
        if cpu_ok and (precision != "fp16" or explicit):
            plan.append((name, "onnxruntime", "cpu", ""))
        if precision == "int8" or not gpu_ok:
            continue  # int8 QDQ models are made for the CPU
        plan.append((name, "onnxruntime", gpu_device, "") if cuda else (name, None, "cuda (onnxruntime)", cuda_why))
        plan.append((name, "tensorrt", gpu_device, "") if trt else (name, None, "cuda (tensorrt)", trt_why))
    return plan


def _onnx_precision(path: Path) -> str:
    from micronet.runtime.backends.onnxruntime import OnnxRuntimeBackend

    try:
        return OnnxRuntimeBackend(path, device="cpu", threads=1).info.precision
    except (ValueError, FileNotFoundError):
        return "?"  # the check itself reports the error


def run(args: argparse.Namespace) -> int:
    """Runs ``micronet check``; returns 0 when every backend agrees, 1 otherwise."""
    from micronet.runtime.detector import Detector
    from micronet.runtime.diagnostics.check import (
        CheckResult,
        check_detector,
        format_check_table,
    )
    from micronet.runtime.machine import describe_machine, machine_line

    if args.repeat < 1:
        raise InputError(f"--repeat: expected an integer >= 1, got {args.repeat}")
    machine = describe_machine()
    results: list[CheckResult] = []
    for model, backend, device, why in plan_checks(list(args.models), args.device):
        if backend is None:
            results.append(CheckResult(model=str(model), backend=device, status="skipped", problems=[why]))
            continue
        try:
            detector = Detector(model, backend=backend, device=device)
        except (ValueError, ImportError, FileNotFoundError, RuntimeError) as exc:
            results.append(CheckResult(model=str(model), backend=f"{backend} ({device})", status="error", problems=[str(exc)]))
            continue
        try:
            result = check_detector(detector, repeats=args.repeat)
        except (ValueError, RuntimeError) as exc:
            result = CheckResult(model=str(model), backend=detector.backend_name, status="error", problems=[str(exc)])
        result.model = str(model)
        results.append(result)
    print(format_check_table(results, machine_line(machine)))
    failed = [r for r in results if not r.ok]
    ran = [r for r in results if r.status != "skipped"]
    print(f"\n{len(ran) - len(failed)} of {len(ran)} backend runs agree with the reference results" + (f"; {len(results) - len(ran)} skipped" if len(ran) < len(results) else ""))
    if args.json is not None:
        from micronet.runtime.files import replace_atomically

        text = json.dumps({"machine": machine, "results": [r.to_dict() for r in results]}, indent=2) + "\n"
        replace_atomically(args.json, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return 1 if failed or not ran else 0
