#!/usr/bin/env bash
# The whole GPU verification in one prepared command, for a session that has a GPU
# (planned to fit in 8 minutes on a fresh H100/H200):
#
#   tools/gpu_check.sh [OUT_DIR]            (default: $OUT, else ./gpu_check_out)
#
# 1. installs this checkout, editable, into the image's Python (no dependencies, no
#    build isolation: a GPU image brings numpy, scipy, CuPy, torch, scikit-build-core,
#    pybind11; wheels carried in .whl/ go first, e.g. onnxruntime-gpu or tensorrt where
#    the image lacks them);
# 2. records the machine (nvidia-smi, describe_machine);
# 3. `micronet check`: every backend available here against the bundled models' known
#    answers, TensorRT included (its fp16 engine built once into the cache) → check.md/json;
# 4. the GPU tests (`pytest -m gpu`): CuPy peaks = CPU peaks, TensorRT = ONNX Runtime,
#    two batches in flight, close() while callers wait, the engine cache → pytest.log;
# 5. benchmarks/bench_gpu.py: TensorRT fp16 against torch CUDA eager and ORT CUDA on
#    the same images → gpu.json/gpu.md (and benchmarks/results/gpu.*).
#
# Every step has its own time limit and runs even when an earlier one failed; the exit
# status is the number of failed steps. Backends whose software is missing are reported
# as skipped by `micronet check` and the benchmark, not as failures.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export MICRONET_CACHE_DIR="${MICRONET_CACHE_DIR:-/tmp/micronet-cache}"
py="${PYTHON:-python3}"
failed=0

step() {  # step NAME SECONDS COMMAND...: runs one step under a time limit, logs it to $out
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    [[ $rc -eq 0 ]] || failed=$((failed + 1))
}

install() {
    # Into the image's own Python (numpy, scipy, CuPy, torch, scikit-build-core, pybind11
    # are there; a GPU machine is bare and handed back afterwards), editable as in CI,
    # carried wheels first.
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl || return 1
    fi
    "$py" -m pip install -q --no-deps --no-build-isolation --no-cache-dir -e . || return 1
    "$py" -c "import sys, micronet.runtime._native; print('micronet installed in', sys.prefix)"
}

export py
export -f install  # `timeout` runs programs, not shell functions
step install 300 bash -c install

step machine 60 bash -c "nvidia-smi -L; nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv; \
    $py -c 'import json; from micronet.runtime.machine import describe_machine, machine_line; d = describe_machine(); print(machine_line(d)); print(json.dumps(d))'"

step check 300 "$py" -m micronet check --json "$out/check.json"
grep '^|' "$out/check.log" >"$out/check.md" || true

# Run from the repository (tests import the installed package via PYTHONPATH; data-bound
# tests skip where ../shared/data is absent).
step pytest 300 "$py" -m pytest -q -m gpu -p no:cacheprovider -o addopts="" \
    tests/runtime/test_peaks.py tests/runtime/test_tensorrt_backend.py tests/runtime/test_engine_cache.py \
    tests/runtime/test_backends.py tests/runtime/test_check.py

step bench 300 "$py" benchmarks/bench_gpu.py --images 8 --large 2 --repeat 3
cp benchmarks/results/gpu.json benchmarks/results/gpu.md "$out/" 2>/dev/null || true

echo "gpu_check: $failed step(s) failed; logs and results in $out"
exit "$failed"
