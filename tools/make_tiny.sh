#!/usr/bin/env bash
# Issue 18, eighth round: a fast-cpu candidate at micronet_tiny's widths (8-16-32-32, context 4;
# 6.3 GFLOP per 500²): the shipped fast-cpu detector narrowed by batch-norm scale
# (trainer/narrow.py), then distilled from the shipped default's maps (one pass, no TTA)
# with the photometric augmentation (p 0.15), detection only, 3,000 iterations at lr 0.002
# (about 60 min on two cores of an AMD EPYC). Resumable: rerun.
#
#   1. micronet distill tools/family/fast-cpu-tiny.json
#   2. best.safetensors (CRCHisto validation F1) → tools/tune_detection.py (minimum peak
#      distance and ξ on validation) → int8 export (calibration: CRCHisto train)
#   3. scores: CRCHisto test (r 6) here; MoNuSeg held-out (r 16), speed and robustness from
#      benchmarks/bench_pareto.py and benchmarks/bench_robust.py (docs/results.md, eighth round).
#
#   tools/make_tiny.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=runs/tiny
data=../shared/data
python -m micronet distill tools/family/fast-cpu-tiny.json
python tools/tune_detection.py "$work/fast-cpu-tiny/best.safetensors" --data "$data/crchisto" --split val --radius 6 \
    -o "$work/tiny_tuned.safetensors"
python -m micronet export "$work/tiny_tuned.safetensors" --precision int8 --calibration-data "$data/crchisto" \
    -o "$work/micronet_crchisto_tiny.int8.onnx"
python -m micronet export "$work/tiny_tuned.safetensors" -o "$work/micronet_crchisto_tiny.onnx"
python -m micronet evaluate --model "$work/micronet_crchisto_tiny.int8.onnx" --data "$data/crchisto" --split test --radius 6 \
    --json "$work/test_tiny_int8.json"
