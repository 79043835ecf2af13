#!/usr/bin/env bash
# Rebuilds the bundled models from a chosen default checkpoint, the way the shipped ones
# were made (docs/results.md):
#   1. the default checkpoint with ξ and the minimum peak distance chosen together on
#      CRCHisto validation (tools/tune_detection.py),
#   2. its fp32 ONNX (Detector "default") and fp16 ONNX (the TensorRT source),
#   3. the fast-cpu model: a lean ReLU network distilled from the default on the same data
#      (CRCHisto + MoNuSeg's training split as auxiliary data), exported to int8. It
#      starts from FAST_INIT: by default the candidate itself (with ReLU swapped in); a
#      default wider than fast-cpu should be needs a lean start, e.g. the previous
#      fast-cpu checkpoint (docs/results.md names the one used),
#   4. the reference results checked (micronet check) and the test split evaluated.
#
#   tools/make_bundled_models.sh CANDIDATE.safetensors [WORK_DIR]
#   THREADS=1 tools/make_bundled_models.sh ...   # torch threads for the training step
#   FAST_INIT=lean.safetensors tools/make_bundled_models.sh ...   # the fast-cpu student's start
#
# Long: step 3 trains 2,000 iterations (about 10 minutes on a 2-core CPU with native
# bf16, 3-4 times that in float32). Writes trainer/pretrained/ and runtime/models/ only
# at the end of each step, with complete files.
set -euo pipefail
candidate=${1:?usage: tools/make_bundled_models.sh CANDIDATE.safetensors [WORK_DIR]}
work=${2:-runs/bundled}
cd "$(dirname "$0")/.."
data=../shared/data
split=benchmarks/paper/monuseg_split.csv
mkdir -p "$work"

python tools/tune_detection.py "$candidate" --data "$data/crchisto" --split val --radius 6 -o "$work/default.safetensors"
python -m micronet export "$work/default.safetensors" -o "$work/micronet_crchisto.onnx"
python -m micronet export "$work/default.safetensors" --precision fp16 -o "$work/micronet_crchisto.fp16.onnx"

if [ ! -f "$work/relu/best.safetensors" ] || [ -f "$work/relu/last_snapshot.safetensors" -a ! -f "$work/relu/done" ]; then
    resume=()
    [ -f "$work/relu/last_snapshot.safetensors" ] && resume=(--resume "$work/relu/last_snapshot.safetensors")
    python -m micronet train --init "${FAST_INIT:-$work/default.safetensors}" --activation relu \
        --teacher "$work/default.safetensors" --teacher-weight 0.5 \
        --data "$data/crchisto" --aux-data "$data/monuseg" --aux-split "train@$split" --aux-fraction 0.25 --gamma 3 \
        --lr 0.002 --iterations 2000 --patience 1000 --val-every 250 --snapshot-every 250 \
        ${THREADS:+--threads "$THREADS"} --out "$work/relu" "${resume[@]}"
    touch "$work/relu/done"
fi
python tools/tune_detection.py "$work/relu/best.safetensors" --data "$data/crchisto" --split val --radius 6 -o "$work/relu.safetensors"
python -m micronet export "$work/relu.safetensors" --precision int8 --calibration-data "$data/crchisto" \
    -o "$work/micronet_crchisto_relu.int8.onnx"

cp "$work/default.safetensors" trainer/pretrained/micronet_crchisto.safetensors
cp "$work/relu.safetensors" trainer/pretrained/micronet_crchisto_relu.safetensors
for f in micronet_crchisto.onnx micronet_crchisto.fp16.onnx micronet_crchisto_relu.int8.onnx; do
    cp "$work/$f" "runtime/models/$f.tmp" && mv "runtime/models/$f.tmp" "runtime/models/$f"
done
python -m micronet check default --device cpu
python -m micronet check fast-cpu --device cpu
for m in default fast-cpu; do
    python -m micronet evaluate --model "$m" --data "$data/crchisto" --split test --radius 6
done
