#!/usr/bin/env bash
# Rebuilds the lean students of the first family round (docs/results.md, "Issues 18–20,
# first round") and installs the one that ships, `phenotypes`:
#   the 0.55 µm/px student (16-32-64-64, 6 context channels, ReLU, class head), distilled
#   from the wide default's flip-TTA maps with photometric augmentation → int8 → the
#   bundled `phenotypes`;
#   the 1.1 µm/px student (same network, a quarter of the pixels) → int8, a candidate on
#   the front (benchmarks/bench_pareto.py), not bundled.
# Steps: the two distillation runs (tools/family/*.json; each resumes from its snapshot),
# ξ and the minimum distance chosen together on CRCHisto validation, the exports, the
# known answers checked and the test split evaluated (with the class table).
#
#   tools/make_family.sh [WORK_DIR]        # default runs/family
#
# Long: the two runs take about 70 minutes side by side on a 2-core CPU with native
# bf16 (AMX), 1 thread each; the teacher's maps (once, cached in runs/teacher_maps) about
# 13 minutes. Writes trainer/pretrained/ and runtime/models/ only at the end, with
# complete files.
set -euo pipefail
work=${1:-runs/family}
cd "$(dirname "$0")/.."
data=../shared/data
mkdir -p "$work"

# Teacher: the bundled wide default; start: the bundled fast-cpu checkpoint (both as of
# commit b7c6066, unchanged since).
for m in default fast-cpu; do
    micronet distill tools/family/$m.json --set "out=\"$work/$m\""
done
python tools/tune_detection.py "$work/default/best.safetensors" --data "$data/crchisto" --split val --radius 6 \
    --min-distance 3 4 5 -o "$work/default.safetensors"
python tools/tune_detection.py "$work/fast-cpu/best.safetensors" --data "$data/crchisto" --split val --radius 6 \
    --min-distance 1 2 3 -o "$work/fast-cpu.safetensors"

python -m micronet export "$work/default.safetensors" -o "$work/micronet_crchisto.onnx"
python -m micronet export "$work/default.safetensors" --precision int8 --calibration-data "$data/crchisto" \
    -o "$work/micronet_crchisto_lean.int8.onnx"
python -m micronet export "$work/fast-cpu.safetensors" --precision int8 --calibration-data "$data/crchisto" \
    -o "$work/micronet_crchisto_fast.int8.onnx"

cp "$work/default.safetensors" trainer/pretrained/micronet_crchisto_phenotypes.safetensors
cp "$work/micronet_crchisto_lean.int8.onnx" runtime/models/micronet_crchisto_phenotypes.int8.onnx.tmp
mv runtime/models/micronet_crchisto_phenotypes.int8.onnx.tmp runtime/models/micronet_crchisto_phenotypes.int8.onnx
python -m micronet check phenotypes --device cpu
python -m micronet evaluate --model phenotypes --data "$data/crchisto" --split test --radius 6 --json "$work/test_phenotypes.json"
