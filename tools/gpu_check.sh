#!/usr/bin/env bash
# The whole GPU verification in one prepared command, for a session that has a GPU
# (planned to fit in about 9 minutes on a fresh H100/H200):
#
#   tools/gpu_check.sh [--dry-run] [--require=ROW,...] [OUT_DIR]   (default: $OUT, else ./gpu_check_out)
#
# Rows, each proved, FAILED, or not provable here:
#   install, machine      this checkout in the image's Python (wheels in .whl/ first); the GPU
#   probe                 what this machine has: CuPy + a CUDA device, torch with CUDA, TensorRT,
#                         ONNX Runtime's CUDA provider (tools/gpu_rows.py probe → caps.json)
#   check ort-cpu|ort-cuda|tensorrt
#                         `micronet check`: every backend here against the bundled models' known answers
#   check torch-cuda      the torch backend (fp16) against the default model's known answers
#   cupy-peaks, torch-cuda, tensorrt, ort-cuda
#                         the GPU tests (`pytest -m gpu`), one row per group of files
#   bench                 benchmarks/bench_gpu.py: network-only rows (GPU-resident input, CUDA
#                         events), a steady-state multi-gigapixel slide run with its breakdown,
#                         GPU utilisation and the roof → gpu.json/gpu.md
#
# A row is required when this machine has what it needs, or when --require names it
# (default: cupy, torch — the GPU path the lent machine proves). A required row that is
# skipped FAILS. A row whose software is missing here (TensorRT, ORT's CUDA provider on the
# lent machine) and that was not required is "not provable here": listed, never a pass.
# The exit status is the number of failed rows (0 only when every required row proved).
#
# --dry-run prints the plan and what this machine could prove, checks that every file the
# plan uses exists and that the GPU tests collect, runs the benchmark's own dry run, and
# exits 0 without touching a GPU (CI runs it on the CPU).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
dry=0
require="cupy,torch"
out=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry=1 ;;
        --require=*) require="${arg#--require=}" ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) out="$arg" ;;
    esac
done
out="${out:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export MICRONET_CACHE_DIR="${MICRONET_CACHE_DIR:-/tmp/micronet-cache-$(id -u)}"
py="${PYTHON:-python3}"
summary="$out/summary.tsv"
: >"$summary"
failed=0
gpu_tests=(tests/runtime/test_peaks.py tests/runtime/test_cuda_options.py tests/runtime/test_torch_backend.py
    tests/runtime/test_tensorrt_backend.py tests/runtime/test_engine_cache.py tests/runtime/test_backends.py tests/runtime/test_check.py)

row() {  # row NAME STATUS DETAIL: one line of the summary (none in a dry run)
    [[ $dry -eq 1 ]] && return 0
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$summary"
    [[ "$2" == "FAILED" ]] && failed=$((failed + 1))
    return 0
}

step() {  # step NAME SECONDS COMMAND...: runs one step under a time limit, logs it to $out; its row
    local name="$1" limit="$2"
    shift 2
    if [[ $dry -eq 1 ]]; then
        echo "would run: $name (limit ${limit}s): $*"
        return 0
    fi
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$out/$name.log"
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    return $rc
}

verdicts() {  # verdicts COMMAND...: rows from tools/gpu_rows.py lines (ROW<TAB>STATUS<TAB>DETAIL)
    while IFS=$'\t' read -r name status detail; do
        [[ -n "$name" ]] && row "$name" "$status" "$detail"
    done < <("$@" 2>>"$out/verdicts.log")
}

install() {
    # Into the image's own Python (numpy, scipy, CuPy, torch, onnx, scikit-build-core,
    # pybind11 are there; a GPU machine is bare and handed back afterwards), carried
    # wheels first.
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl || return 1
    fi
    "$py" -m pip install -q --no-deps --no-build-isolation --no-cache-dir -e . || return 1
    "$py" -c "import sys, micronet.runtime._native; print('micronet installed in', sys.prefix)"
}
export py
export -f install  # `timeout` runs programs, not shell functions

if [[ $dry -eq 1 ]]; then
    echo "gpu_check --dry-run: the plan (required rows: $require, and every row whose software the machine has)"
    missing=0
    for f in tools/gpu_rows.py benchmarks/bench_gpu.py "${gpu_tests[@]}"; do
        [[ -f "$f" ]] || { echo "missing: $f"; missing=1; }
    done
fi

step install 300 bash -c install && row install proved "editable install in $($py -c 'import sys; print(sys.prefix)')" || row install FAILED "see $out/install.log"
step machine 60 bash -c "nvidia-smi -L && nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv && \
    $py -c 'import json; from micronet.runtime.machine import describe_machine, machine_line; d = describe_machine(); print(machine_line(d)); print(json.dumps(d))'" \
    && row machine proved "$(grep -m1 'GPU 0' "$out/machine.log" 2>/dev/null || echo GPU)" || row machine FAILED "no GPU seen (nvidia-smi)"
caps="$out/caps.json"
"$py" tools/gpu_rows.py probe >"$caps" 2>/dev/null || echo '{}' >"$caps"
echo "probe: $(cat "$caps")"

step check 300 "$py" -m micronet check --json "$out/check.json"
if [[ $dry -eq 0 ]]; then
    if [[ -s "$out/check.json" ]]; then
        verdicts "$py" tools/gpu_rows.py check "$out/check.json" "$caps" "--require=$require"
    else
        row check FAILED "micronet check wrote no results (see $out/check.log)"
    fi
fi
has_torch=$("$py" -c "import json, sys; print(1 if json.load(open(sys.argv[1])).get('torch') else 0)" "$caps" 2>/dev/null || echo 0)
if [[ $has_torch == 1 || ",$require," == *",torch,"* || $dry -eq 1 ]]; then
    step check-torch 240 "$py" tools/gpu_rows.py check-torch "$out/check_torch.json" \
        && row "check torch-cuda" proved "the torch backend (fp16) agrees with the known answers" \
        || row "check torch-cuda" FAILED "see $out/check-torch.log"
else
    row "check torch-cuda" "not provable here" "no torch with CUDA on this machine"
fi

# Run from the repository (data-bound tests skip where ../shared/data is absent).
step pytest 420 "$py" -m pytest -q -m gpu -p no:cacheprovider -o addopts="" -rs --junitxml="$out/pytest.xml" "${gpu_tests[@]}"
if [[ $dry -eq 0 ]]; then
    if [[ -s "$out/pytest.xml" ]]; then
        verdicts "$py" tools/gpu_rows.py pytest "$out/pytest.xml" "$caps" "--require=$require"
    else
        row pytest FAILED "pytest wrote no report (timed out? see $out/pytest.log)"
    fi
fi

step bench 420 "$py" benchmarks/bench_gpu.py --out "$out" && row bench proved "$(grep -m1 'MP/s' "$out/bench.log" 2>/dev/null || echo 'see gpu.md')" \
    || row bench FAILED "see $out/bench.log"

if [[ $dry -eq 1 ]]; then
    echo "on this machine ($(cat "$caps")) the rows would be:"
    "$py" tools/gpu_rows.py explain "$caps" "--require=$require"
    echo "on the lent GPU machine (H100/H200, CuPy, torch with CUDA, no TensorRT, the CPU build of onnxruntime):"
    "$py" tools/gpu_rows.py explain lent "--require=$require"
    echo "collecting the GPU tests (they skip without a GPU, each with its reason):"
    "$py" -m pytest -q --collect-only -m gpu -p no:cacheprovider -o addopts="" "${gpu_tests[@]}" | tail -n 1 || missing=1
    "$py" benchmarks/bench_gpu.py --dry-run || missing=1
    echo "gpu_check --dry-run: nothing ran on a GPU; rows without their software here would read 'not provable here'"
    exit "$missing"
fi

echo
echo "gpu_check summary ($out/summary.tsv):"
column -t -s $'\t' "$summary" 2>/dev/null || cat "$summary"
echo "gpu_check: $failed row(s) FAILED; rows 'not provable here' are not passes; logs and results in $out"
exit "$failed"
