#!/usr/bin/env bash
# Rebuilds the bundled model family (docs/results.md, "The family"):
#   accurate   the paper-width network (32-64-128-128, ELU), fp32 + fp16: the teacher;
#   default    a lean ReLU student (16-32-64-64, 6 context channels, class head),
#              distilled from the teacher's flip-TTA maps at 0.55 µm/px, fp32 + fp16;
#   fast-cpu   the same student architecture at 1.1 µm/px (a quarter of the pixels), int8.
# Steps: the previous models from git (teacher and the students' start), the two
# distillation runs (tools/family/*.json; each resumes from its snapshot), ξ and the
# minimum distance chosen together on CRCHisto validation, the exports, the known
# answers checked and the test split evaluated.
#
#   tools/make_family.sh [WORK_DIR]        # default runs/family
#
# Long: the two runs take about 70 minutes side by side on a 2-core CPU with native
# bf16 (AMX), 1 thread each. Writes trainer/pretrained/ and runtime/models/ only at the
# end, with complete files.
set -euo pipefail
work=${1:-runs/family}
cd "$(dirname "$0")/.."
data=../shared/data
mkdir -p "$work" runs/previous_models

# The teacher (today's accurate model) and the students' start: the lean ReLU network
# shipped as fast-cpu before the family (commit b7c6066).
teacher=trainer/pretrained/micronet_crchisto_wide.safetensors
init=runs/previous_models/micronet_crchisto_relu.safetensors
[ -f "$init" ] || git show b7c6066:trainer/pretrained/micronet_crchisto_relu.safetensors > "$init"

for m in default fast-cpu; do
    python -m micronet distill tools/family/$m.json --set "out=\"$work/$m\"" --set "teacher=\"$teacher\"" --set "init=\"$init\""
done
python tools/tune_detection.py "$work/default/best.safetensors" --data "$data/crchisto" --split val --radius 6 \
    --min-distance 3 4 5 -o "$work/default.safetensors"
python tools/tune_detection.py "$work/fast-cpu/best.safetensors" --data "$data/crchisto" --split val --radius 6 \
    --min-distance 1 2 3 -o "$work/fast-cpu.safetensors"

python -m micronet export "$work/default.safetensors" -o "$work/micronet_crchisto.onnx"
python -m micronet export "$work/default.safetensors" --precision fp16 -o "$work/micronet_crchisto.fp16.onnx"
python -m micronet export "$work/fast-cpu.safetensors" --precision int8 --calibration-data "$data/crchisto" \
    -o "$work/micronet_crchisto_fast.int8.onnx"

cp "$work/default.safetensors" trainer/pretrained/micronet_crchisto.safetensors
cp "$work/fast-cpu.safetensors" trainer/pretrained/micronet_crchisto_fast.safetensors
for f in micronet_crchisto.onnx micronet_crchisto.fp16.onnx micronet_crchisto_fast.int8.onnx; do
    cp "$work/$f" "runtime/models/$f.tmp" && mv "runtime/models/$f.tmp" "runtime/models/$f"
done
for m in default fast-cpu accurate; do
    python -m micronet check "$m" --device cpu
    python -m micronet evaluate --model "$m" --data "$data/crchisto" --split test --radius 6
done
