#!/usr/bin/env bash
# Installs a GPU extra of pyproject.toml into a fresh venv without torch and checks that
# `export-engine --help` and every GPU-side module import with what it brings, and that
# ONNX Runtime's CUDA build, CuPy, TensorRT and cuda-python all name one CUDA major.
#
#   tools/check_gpu_extra.sh [VENV_DIR] [EXTRA]       (defaults .venv-gpu, gpu)
#
# EXTRA is `gpu` (CUDA 12) or `gpu-cu13` (CUDA 13). First, without installing anything,
# every GPU extra of pyproject.toml is checked to name one CUDA major and one TensorRT
# major (tools/cuda_majors.py --pyproject).
#
# TensorRT's libraries (tensorrt-cuNN-libs) may be on NVIDIA's index only; PyPI has a
# stub that downloads them from pypi.nvidia.com at install time. Where that host is
# reachable (a user's machine) the whole extra installs with `pip install ".[EXTRA]"`;
# where it is not (CI), set MICRONET_SKIP_TENSORRT=1 (the default here when
# pypi.nvidia.com does not answer) and the rest of the extra is installed and checked.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-gpu}"
extra="${2:-gpu}"

python3 tools/cuda_majors.py --pyproject

rm -rf "$venv"
python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip

if [[ -z "${MICRONET_SKIP_TENSORRT:-}" ]]; then
    if "$py" -c "import urllib.request; urllib.request.urlopen('https://pypi.nvidia.com', timeout=5)" 2>/dev/null; then
        MICRONET_SKIP_TENSORRT=0
    else
        MICRONET_SKIP_TENSORRT=1
    fi
fi

if [[ "$MICRONET_SKIP_TENSORRT" == 1 ]]; then
    # The extra's requirements, read from pyproject.toml, less TensorRT.
    mapfile -t reqs < <(EXTRA="$extra" "$py" - <<'EOF'
import os, tomllib
extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"][os.environ["EXTRA"]]
assert any(r.startswith("tensorrt") for r in extra), "a GPU extra must ask for TensorRT"
print("\n".join(r for r in extra if not r.startswith("tensorrt")))
EOF
)
    echo "check_gpu_extra: pypi.nvidia.com is out of reach; installing [$extra] without TensorRT: ${reqs[*]}"
    "$py" -m pip install --quiet . "${reqs[@]}"
    required="onnxruntime,cupy-cuda,cuda-python"
else
    "$py" -m pip install --quiet ".[$extra]"
    required="onnxruntime,cupy-cuda,cuda-python,tensorrt-cu"
fi

"$venv/bin/export-engine" --help >/dev/null
# From outside the checkout: its micronet/ folder would shadow the installed package.
venv_abs="$(cd "$venv" && pwd)"
majors="$(pwd)/tools/cuda_majors.py"
py="$venv_abs/bin/python"
cd /tmp
"$py" "$majors" --installed --require "$required"
"$py" - <<EOF
import importlib, sys
# What export-engine and the GPU runtime import, TensorRT aside when it was skipped.
for name in ("micronet.export.engine", "micronet.runtime.backends.tensorrt", "micronet.runtime.backends.tensorrt_build",
             "micronet.runtime.backends.torch", "micronet.runtime.engine_cache", "micronet.commands.check",
             "onnx", "onnxruntime", "cupy", "cuda.bindings.runtime"):
    importlib.import_module(name)
if "$MICRONET_SKIP_TENSORRT" != "1":
    importlib.import_module("tensorrt")
import onnxruntime
assert "CUDAExecutionProvider" in onnxruntime.get_available_providers(), (
    "the $extra extra installed an ONNX Runtime without the CUDA provider: " + onnxruntime.__file__)
assert "torch" not in sys.modules, "the GPU path imported torch"
print("check_gpu_extra: [$extra]: export-engine --help and the GPU modules import without torch",
      "(TensorRT skipped: pypi.nvidia.com unreachable)" if "$MICRONET_SKIP_TENSORRT" == "1" else "(TensorRT included)")
EOF
