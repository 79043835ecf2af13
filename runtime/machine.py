"""What this machine is: CPU model, the instruction sets that change our numbers, cores,
GPUs, and a measured matrix-multiply peak.

Every benchmark result and every ``micronet check`` row names the machine it ran on,
because int8 kernels, float rounding on near-ties and speed all depend on it:

- ``avx2`` without ``avx512_vnni``/``avx_vnni``: ONNX Runtime's u8×s8 kernels add
  pairs of products in 16-bit saturating arithmetic (``vpmaddubsw``); our int8 exports
  use 7-bit weights so that can never saturate (``micronet.export.onnx``).
- ``avx512_bf16`` / ``amx_bf16``: bfloat16 runs natively; elsewhere torch emulates it,
  several times slower than float32 (the trainer's ``bf16`` default follows this).
- ``amx_int8``, ``avx512_vnni``, ``avx_vnni``: int8 dot products without saturation.

Only the standard library and NumPy; no torch.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ISA_FLAGS",
    "cpu_flags",
    "cpu_model",
    "cuda_device_count",
    "describe_machine",
    "has_native_bf16",
    "has_vnni",
    "machine_line",
    "matmul_peak_gflops",
    "physical_cores",
    "usable_cpus",
]

# The /proc/cpuinfo flags that change what our kernels compute or how fast (x86).
ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    # aarch64 (Jetson, Graviton): dot products and bf16
    "asimddp",
    "bf16",
    "i8mm",
    "sve",
)


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """All CPU feature flags the kernel reports (``flags`` on x86, ``Features`` on
    aarch64); empty where ``/proc/cpuinfo`` does not exist."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name, e.g. ``"AMD EPYC 9R14"``; the platform's processor
    string where ``/proc/cpuinfo`` has none."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def has_vnni() -> bool:
    """True when int8 dot products accumulate in 32 bits without saturation
    (AVX-512 VNNI, AVX-VNNI or AMX on x86; always on aarch64's ``sdot``)."""
    flags = cpu_flags()
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


def has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 in hardware (AVX512_BF16 or AMX-BF16 on x86,
    the ``bf16`` feature on aarch64). Elsewhere torch's bf16 autocast on the CPU is
    emulated and slower than float32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once).

    Reads the CPU topology in ``/sys`` for the CPUs in the process's affinity mask;
    elsewhere falls back to the logical CPU count.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


def usable_cpus() -> int:
    """Logical CPUs this process may run on: its affinity mask (``taskset``, a batch
    scheduler's allocation), bounded by a cgroup v2 CPU quota (a container's
    ``--cpus``); ``os.cpu_count()`` where neither can be read. More compute threads than
    this only wait for each other."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def matmul_peak_gflops(size: int = 1024, repeat: int = 5) -> float:
    """The best float32 GFLOP/s of NumPy's BLAS on a ``size × size`` matrix product:
    the yardstick that makes speeds from different machines comparable (a model's MP/s
    divided by this peak is roughly machine-independent)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best / 1e9


def cuda_device_count() -> int:
    """CUDA devices the driver reports (0 without a driver), asked through libcuda itself
    so that no GPU package is needed to tell a CPU machine."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def _gpus() -> list[dict[str, str]]:
    """Name and compute capability of each CUDA device (none without a driver, or
    without CuPy or cuda-python to ask)."""
    from .backends.cuda_env import cuda_device_properties

    out = []
    for i in range(cuda_device_count()):
        try:
            name, cc = cuda_device_properties(i)
        except (ImportError, RuntimeError):  # no package to ask: the GPUs go unnamed
            return out
        out.append({"index": str(i), "name": name, "compute_capability": cc})
    return out


def describe_machine(measure_peak: bool = True) -> dict[str, Any]:
    """A JSON-ready description of this machine for benchmark results and check reports.

    Returns:
        ``{"cpu": model name, "isa": [flags of ISA_FLAGS present], "physical_cores",
        "logical_cpus", "arch", "python", "numpy_matmul_gflops" (float32, when
        ``measure_peak``), "gpus": [{"index", "name", "compute_capability"}]}``.
    """
    flags = cpu_flags()
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "physical_cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "gpus": _gpus(),
    }
    if measure_peak:
        out["numpy_matmul_gflops"] = round(matmul_peak_gflops(), 1)
    return out


def machine_line(machine: dict[str, Any]) -> str:
    """One line for a report header: ``AMD EPYC 9R14, 2 cores, avx2 avx512f …, 75 GFLOP/s``."""
    cores = machine.get("physical_cores", machine.get("cores", "?"))  # "cores": records from before this module
    isa = " ".join(machine["isa"]) if "isa" in machine else "ISA flags not recorded"
    parts = [str(machine.get("cpu", "?")), f"{cores} cores", isa or "no ISA flags read"]
    if machine.get("numpy_matmul_gflops") is not None:
        parts.append(f"fp32 matmul peak {machine['numpy_matmul_gflops']:g} GFLOP/s")
    for gpu in machine.get("gpus", []):
        parts.append(f"GPU {gpu['index']}: {gpu['name']} (sm_{gpu['compute_capability'].replace('.', '')})")
    return ", ".join(parts)
