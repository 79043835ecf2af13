#!/usr/bin/env bash
# Gives the bundled `default` (wide ELU fp32) and `fast-cpu` (lean ReLU int8) their class
# heads (issue 20, item 5) without touching their detectors: `micronet fit-classes` fits a
# head with deep context (MicroNetConfig.class_context: 16 channels on the wide network, 8
# on the lean one, 3.8 % more FLOPs each) on the frozen detector, at the labelled CRCHisto
# training nuclei, under 4 flips and 2 photometric variants of each training image. The
# detector's weights, map, threshold and detections stay bit for bit as they were.
#
# First a fit with a fifth of the training images held out (its scores are printed and
# stored in the checkpoint's provenance), then the fit on every training image that ships;
# exports with their known answers; CRCHisto test (with the class table) and MoNuSeg
# held-out; `micronet check`. Installs only with INSTALL=1.
#
#   tools/make_class_heads.sh [WORK_DIR]        # default runs/classhead
#
# About 10 minutes per model on one core of a 2-core CPU (the trunk runs once per image
# and view; the head's steps are cheap).
set -euo pipefail
work=${1:-runs/classhead}
cd "$(dirname "$0")/.."
data=../shared/data
mkdir -p "$work"

fit() {  # NAME CHECKPOINT CONTEXT
    python -m micronet fit-classes "$2" --class-context "$3" --holdout 0.2 -o "$work/$1_holdout.safetensors"
    python -m micronet fit-classes "$2" --class-context "$3" -o "$work/$1.safetensors"
}
fit default trainer/pretrained/micronet_crchisto.safetensors 16
fit fast-cpu trainer/pretrained/micronet_crchisto_relu.safetensors 8

python -m micronet export "$work/default.safetensors" -o "$work/micronet_crchisto.onnx"
python -m micronet export "$work/default.safetensors" --precision fp16 -o "$work/micronet_crchisto.fp16.onnx"
python -m micronet export "$work/fast-cpu.safetensors" -o "$work/micronet_crchisto_relu.onnx"
python -m micronet export "$work/fast-cpu.safetensors" --precision int8 --calibration-data "$data/crchisto" \
    -o "$work/micronet_crchisto_relu.int8.onnx"
for m in micronet_crchisto micronet_crchisto_relu micronet_crchisto_relu.int8; do
    python -m micronet evaluate --model "$work/$m.onnx" --data "$data/crchisto" --split test --radius 6 --json "$work/test_$m.json"
done

if [[ "${INSTALL:-0}" == 1 ]]; then
    cp "$work/default.safetensors" trainer/pretrained/micronet_crchisto.safetensors
    cp "$work/fast-cpu.safetensors" trainer/pretrained/micronet_crchisto_relu.safetensors
    for f in micronet_crchisto.onnx micronet_crchisto.fp16.onnx micronet_crchisto_relu.int8.onnx; do
        cp "$work/$f" "runtime/models/$f.tmp" && mv "runtime/models/$f.tmp" "runtime/models/$f"
    done
    python -m micronet check default fast-cpu --device cpu
fi
