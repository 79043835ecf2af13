"""Which CUDA major each GPU package asks for, so that an extra never mixes two.

ONNX Runtime's CUDA build, CuPy, TensorRT and the CUDA bindings each link one CUDA
major's libraries; two majors in one environment load two sets of libraries, or fail to
find one. Two checks, used by ``tools/check_gpu_extra.sh`` and ``tests/test_gpu_extras.py``:

    python tools/cuda_majors.py --pyproject      # every GPU extra of pyproject.toml names one major
    python tools/cuda_majors.py --installed      # the packages installed here name one major

Exit status 0 when they agree, 1 (and what disagrees) otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU_EXTRAS = ("gpu", "gpu-cu13")
# onnxruntime-gpu on PyPI: CUDA 12 builds up to 1.26, CUDA 13 from 1.27 (the versions'
# own requirements: nvidia-cuda-runtime-cu12 in 1.26.0, -cu13 in 1.27.0).
ORT_CUDA13_FROM = (1, 27)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _bounds(spec: str) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """``(lowest allowed, first excluded)`` of a specifier such as ``>=1.21,<1.27``."""
    lo = hi = None
    for part in spec.split(","):
        part = part.strip()
        if part.startswith(">="):
            lo = _version(part[2:])
        elif part.startswith("<") and not part.startswith("<="):
            hi = _version(part[1:])
        elif part.startswith("=="):
            lo = hi = _version(part[2:])
    return lo, hi


def requirement_major(requirement: str) -> tuple[str, int | None]:
    """``(package, CUDA major)`` of one requirement string; ``None`` for a package that
    names no CUDA major (onnx), and ``-1`` for one whose range spans two majors."""
    match = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)", requirement)
    assert match is not None, requirement
    name, spec = match.group(1).lower().replace("_", "-"), match.group(3).split(";")[0]
    named = re.match(r"(?:tensorrt-cu|cupy-cuda)(\d+)", name)
    if named:
        return name, int(named.group(1))
    lo, hi = _bounds(spec)
    if name == "onnxruntime-gpu":
        if lo is None:
            return name, -1
        first = 13 if lo[:2] >= ORT_CUDA13_FROM else 12
        last = 12 if hi is not None and hi[:2] <= ORT_CUDA13_FROM else 13
        return name, first if first == last else -1
    if name == "cuda-python":
        if lo is None or hi is None or hi[0] != lo[0] + 1 or hi[1:] not in ((), (0,), (0, 0)):
            return name, -1
        return name, lo[0]
    return name, None


def extra_majors(requirements: list[str]) -> dict[str, int]:
    """The CUDA major of each package of an extra that names one."""
    found = dict(requirement_major(r) for r in requirements)
    return {k: v for k, v in found.items() if v is not None}


def check_pyproject(path: Path = REPO / "pyproject.toml") -> list[str]:
    """What is wrong with the GPU extras (an empty list when each names one major)."""
    import tomllib

    extras = tomllib.loads(path.read_text())["project"]["optional-dependencies"]
    problems, majors = [], {}
    for extra in GPU_EXTRAS:
        found = extra_majors(extras.get(extra, []))
        kinds = sorted({"onnxruntime-gpu" if k == "onnxruntime-gpu" else k.rstrip("0123456789x") for k in found})
        if kinds != ["cuda-python", "cupy-cuda", "onnxruntime-gpu", "tensorrt-cu"]:
            problems.append(f"[{extra}] must ask for onnxruntime-gpu, TensorRT, CuPy and cuda-python of one CUDA major, got {sorted(found)}")
        if len(set(found.values())) != 1 or -1 in found.values():
            problems.append(f"[{extra}] mixes CUDA majors (-1: a range over two): {found}")
        for req in extras.get(extra, []):
            if req.lower().startswith("tensorrt"):
                lo, hi = _bounds(re.sub(r"^[A-Za-z0-9_.-]+(\[[^\]]*\])?", "", req))
                if lo is None or hi is None or hi[:1] != (lo[0] + 1,):
                    problems.append(f"[{extra}] {req}: pin one TensorRT major (>=10.x,<11), as the engines and the README assume")
        majors[extra] = set(found.values())
    if len(GPU_EXTRAS) == 2 and majors[GPU_EXTRAS[0]] == majors[GPU_EXTRAS[1]]:
        problems.append(f"[{GPU_EXTRAS[0]}] and [{GPU_EXTRAS[1]}] name the same CUDA major: {majors}")
    return problems


def installed_majors() -> dict[str, int]:
    """The CUDA major of each GPU package installed here: ONNX Runtime's from its build
    info, CuPy and TensorRT from their distribution names, cuda-python from its version."""
    from importlib import metadata

    found: dict[str, int] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        named = re.fullmatch(r"(tensorrt-cu|cupy-cuda)(\d+)x?(-libs|-bindings)?", name)
        if named:
            found[name] = int(named.group(2))
        elif name == "cuda-python":
            found[name] = _version(dist.version)[0]
    try:
        from onnxruntime.capi import build_and_package_info as ort_build

        cuda = getattr(ort_build, "cuda_version", "")
        if cuda:
            found["onnxruntime (CUDA build)"] = _version(cuda)[0]
    except ImportError:
        pass
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pyproject", action="store_true", help="check the GPU extras of pyproject.toml")
    parser.add_argument("--installed", action="store_true", help="check the GPU packages installed in this environment")
    parser.add_argument("--require", default="", help="comma-separated packages that must be among the installed ones")
    args = parser.parse_args(argv)
    problems = check_pyproject() if args.pyproject else []
    if args.installed:
        found = installed_majors()
        print("cuda_majors: installed:", ", ".join(f"{k} -> CUDA {v}" for k, v in sorted(found.items())) or "no GPU package")
        if len(set(found.values())) > 1:
            problems.append(f"the installed GPU packages name more than one CUDA major: {found}")
        for name in filter(None, args.require.split(",")):
            if not any(k.startswith(name) for k in found):
                problems.append(f"{name} is not installed (or names no CUDA major)")
    for problem in problems:
        print(f"cuda_majors: {problem}", file=sys.stderr)
    if not problems:
        print("cuda_majors: one CUDA major per " + ("extra" if args.pyproject and not args.installed else "environment"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
