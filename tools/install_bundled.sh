#!/usr/bin/env bash
# Makes a trained model a bundled one: CHECKPOINT becomes trainer/pretrained/NAME and each
# SRC.onnx runtime/models/DEST.onnx, each file a rename of a complete copy (a crash leaves the
# old file or the new one, never part of one); then `micronet check` on the family.
#
#   tools/install_bundled.sh CHECKPOINT NAME.safetensors SRC.onnx=DEST.onnx [SRC=DEST ...]
#
# Paths are relative to the repository root (the chains that call it run there).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 3 ]]; then
    echo "usage: tools/install_bundled.sh CHECKPOINT NAME.safetensors SRC.onnx=DEST.onnx [...]" >&2
    exit 2
fi
put() { cp "$1" "$2.tmp" && mv "$2.tmp" "$2"; }
for pair in "${@:3}"; do
    [[ $pair == *=* ]] || { echo "install_bundled: '$pair' is not SRC=DEST" >&2; exit 2; }
    [[ -f ${pair%%=*} ]] || { echo "install_bundled: no file ${pair%%=*}" >&2; exit 2; }
done
[[ -f $1 ]] || { echo "install_bundled: no file $1" >&2; exit 2; }
put "$1" "trainer/pretrained/$2"
for pair in "${@:3}"; do put "${pair%%=*}" "runtime/models/${pair#*=}"; done
python -m micronet check default fast-cpu phenotypes accurate --device cpu
