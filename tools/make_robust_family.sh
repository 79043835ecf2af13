#!/usr/bin/env bash
# Issue 19, seventh round: `default` and `fast-cpu` retrained with the photometric
# augmentation (trainer/augment.py: HED stain, brightness, contrast, gamma, hue, saturation,
# Gaussian blur and defocus, noise, JPEG; strength 1, each at p 0.15), then their class heads
# refitted on the new frozen detectors, as tools/make_class_heads.sh fits them.
#
#   1. Start points, from git: the wide default's detector before it had a head (21d6d3f) is
#      both the teacher (its flip-TTA maps, cached in runs/teacher_maps) and, for `default`,
#      the start; fast-cpu starts from the file shipped before this round (ba9f1f4).
#   2. `micronet distill tools/family/{default,fast-cpu}-robust.json`: detection only
#      (classes []), lr 0.0005, milestones at 60 % and 85 %; default 1,000 iterations
#      (about 35 min on one core), fast-cpu 3,000 (about 45 min). Resumable: rerun.
#   3. best.safetensors (CRCHisto validation F1) → tools/tune_detection.py (minimum peak
#      distance and ξ on validation) → micronet fit-classes (default: context 16, 3.85 µm,
#      two blocks; fast-cpu: context 8, 1.65 µm, no block; 3,000 steps) → exports.
#   4. Scores: CRCHisto test (detection and classes) per export. Which file ships was decided
#      by the rule written before the runs (docs/results.md, seventh round): `default` shipped;
#      `fast-cpu` did not (CRCHisto test 0.8019 against the 0.8056 the rule asked; two more
#      attempts, `--set mix=[0.8,0.1,0.1] --set iterations=1500 [--set lr=0.0002]` on its
#      distill line, gave 0.8020 and 0.8037), so it runs only when named.
#   The previous default's file became `accurate`'s (micronet_crchisto_accurate.onnx).
#
#   tools/make_robust_family.sh [default] [fast-cpu]     # default alone by default; INSTALL=1 installs
set -euo pipefail
cd "$(dirname "$0")/.."
work=runs/robust
data=../shared/data
mkdir -p "$work"
[[ -f $work/default_detector.safetensors ]] || git show 21d6d3f:trainer/pretrained/micronet_crchisto.safetensors > "$work/default_detector.safetensors"
[[ -f $work/fast_cpu_start.safetensors ]] || git show ba9f1f4:trainer/pretrained/micronet_crchisto_relu.safetensors > "$work/fast_cpu_start.safetensors"

build() {  # NAME CONTEXT RADIUS_UM DEPTH
    python -m micronet distill "tools/family/$1-robust.json"
    python tools/tune_detection.py "$work/$1/best.safetensors" --data "$data/crchisto" --split val --radius 6 \
        -o "$work/$1_tuned.safetensors"
    python -m micronet fit-classes "$work/$1_tuned.safetensors" --class-context "$2" --class-scale 4 --class-radius "$3" \
        --class-depth "$4" --iterations 3000 --cache "$work/$1.cache.pt" -o "$work/$1.safetensors"
}
export_default() {
    python -m micronet export "$work/default.safetensors" -o "$work/micronet_crchisto.onnx"
    python -m micronet export "$work/default.safetensors" --precision fp16 -o "$work/micronet_crchisto.fp16.onnx"
    python -m micronet evaluate --model "$work/micronet_crchisto.onnx" --data "$data/crchisto" --split test --radius 6 \
        --json "$work/test_default.json"
}
export_fast() {
    python -m micronet export "$work/fast-cpu.safetensors" --precision int8 --calibration-data "$data/crchisto" \
        -o "$work/micronet_crchisto_relu.int8.onnx"
    python -m micronet evaluate --model "$work/micronet_crchisto_relu.int8.onnx" --data "$data/crchisto" --split test --radius 6 \
        --json "$work/test_fast-cpu.json"
}

models=("$@")
[[ ${#models[@]} -gt 0 ]] || models=(default)
for n in "${models[@]}"; do
    case $n in
        default) build default 16 3.85 2; export_default ;;
        fast-cpu) build fast-cpu 8 1.65 0; export_fast ;;
        *) echo "unknown model $n (default, fast-cpu)" >&2; exit 2 ;;
    esac
done

if [[ "${INSTALL:-0}" == 1 ]]; then
    for n in "${models[@]}"; do
        case $n in
            default) cp "$work/default.safetensors" trainer/pretrained/micronet_crchisto.safetensors
                     files="micronet_crchisto.onnx micronet_crchisto.fp16.onnx" ;;
            fast-cpu) cp "$work/fast-cpu.safetensors" trainer/pretrained/micronet_crchisto_relu.safetensors
                      files="micronet_crchisto_relu.int8.onnx" ;;
        esac
        for f in $files; do cp "$work/$f" "runtime/models/$f.tmp" && mv "runtime/models/$f.tmp" "runtime/models/$f"; done
    done
    python -m micronet check default fast-cpu phenotypes accurate --device cpu
fi
