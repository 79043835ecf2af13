"""Collects benchmarks/results/*.json and *.md into docs/benchmarks.md: the ratios first
(computed here from the JSON, never typed in), then each section's tables with the
command that produced them and the machine they were measured on.

    python benchmarks/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import run_line  # noqa: E402

CPU_COMMAND = "python benchmarks/bench_cpu.py"
SLIDE_MODELS_COMMAND = "python benchmarks/bench_slide.py --size 12000 --model default --model fast-cpu --modes prefetch --repeat 2 --results-name slide_fast_cpu"
SECTIONS = [
    ("focus_cells", "Focus cell by cell: a soft field within a large image (issue 19, sixteenth round)", "python benchmarks/focus_cells.py"),
    ("focus_cells_train", "Focus cell by cell: the cell size, chosen on CRCHisto training mosaics (issue 19, sixteenth round)", "python benchmarks/focus_cells.py --split train --model fast-cpu --cell 128 --cell 192 --cell 256 --name focus_cells_train"),
    ("pareto_r16_vnni", "The bundled models on a CPU with AVX-512 VNNI: what int8 buys there (issues 18, 19; sixteenth round)", 'python benchmarks/bench_pareto.py --model default --model fast-cpu --model runs/r16/fast_cpu_fp32.onnx --label "fast-cpu\'s checkpoint, fp32 export" --model phenotypes --baseline default --repeat 2 --name pareto_r16_vnni'),
    ("pareto_r15_int8", "What int8 buys on this CPU, and the classical peer's speed (issue 18, fifteenth round)", 'python benchmarks/bench_pareto.py --model default --model fast-cpu --model runs/r15/fast_cpu_fp32.onnx --label "fast-cpu\'s checkpoint, fp32 export" --model runs/tiny/micronet_crchisto_tiny.int8.onnx --label "tiny candidate (8th round), int8" --baseline default --repeat 2 --name pareto_r15_int8'),
    ("focus_cost", "Focus tile by tile: what the measure (with the focus map since the sixteenth round) and the deconvolution cost against the network (issue 19)", "python benchmarks/focus_cost.py"),
    ("robust_r14_accurate_a", "`accurate` (dihedral TTA) under hue and darkening (issue 19, fourteenth round)", 'python benchmarks/bench_robust.py --model accurate --label "accurate (dihedral TTA, 8 passes)" --families hue,darken --grades middle,strongest --name robust_r14_accurate_a'),
    ("robust_r14_accurate_b", "`accurate` (dihedral TTA) under JPEG and gamma (issue 19, fourteenth round)", 'python benchmarks/bench_robust.py --model accurate --label "accurate (dihedral TTA, 8 passes)" --families jpeg,gamma --grades middle,strongest --name robust_r14_accurate_b'),
    ("robust_r14_accurate_hed", "`accurate` (dihedral TTA) under HED stain jitter (issue 19, fourteenth round)", 'python benchmarks/bench_robust.py --model accurate --label "accurate (dihedral TTA, 8 passes)" --families hed --grades middle,strongest --name robust_r14_accurate_hed'),
    ("robust_r13_deblur", "Out-of-focus images deconvolved: `deblur=\"auto\"` (issue 19, thirteenth round: every bundled network, blur)", 'python benchmarks/bench_robust.py --model default --model fast-cpu --model phenotypes --model accurate --label "accurate (dihedral TTA, 8 passes)" --families blur --grades middle,strongest --name robust_r13_deblur'),
    ("robust_r12", "Robustness with `normalize=\"auto\"` white-balancing (issue 19, twelfth round: every bundled network but `accurate`)", "python benchmarks/bench_robust.py --model default --model fast-cpu --model phenotypes --grades middle,strongest --name robust_r12"),
    ("robust_r12_accurate", "Robustness of `accurate` (dihedral TTA, 8 passes) under blur and the camera-like tiles (issue 19, twelfth round)", 'python benchmarks/bench_robust.py --model accurate --label "accurate (dihedral TTA, 8 passes)" --families blur,camera --grades middle,strongest --name robust_r12_accurate'),
    ("robust_r12_methods", "Which normalisation `auto` applies: a white balance or Reinhard, on every image (issue 19, twelfth round)", "python benchmarks/bench_robust.py --model default --model fast-cpu --normalize white --normalize reinhard --families camera,darken --grades middle,strongest --name robust_r12_methods"),
    ("pareto", "The speed / accuracy front (issue 18)", 'python benchmarks/bench_pareto.py --model default --label "default (wide ELU fp32)" --model fast-cpu --label "fast-cpu (lean ReLU int8)" --model default --label "default + TTA" --tta --model runs/family/micronet_crchisto.onnx --label "lean student fp32 (distilled, aug, classes)" --model runs/family/micronet_crchisto_lean.int8.onnx --label "lean student int8" --model runs/family/micronet_crchisto_fast.int8.onnx --label "lean student at 1.1 µm/px int8" --baseline "default (wide ELU fp32)" --repeat 2'),
    ("pareto_r11", "The halfway default and fast-cpu: what they cost (issues 18, 19; tenth and eleventh rounds)", 'python benchmarks/bench_pareto.py --model default --label "default (eleventh round: WiSE-FT)" --model runs/r11/previous_default.onnx --label "default before (seventh round)" --model fast-cpu --label "fast-cpu (tenth round: WiSE-FT)" --model runs/r11/previous_fast_cpu.int8.onnx --label "fast-cpu before" --model phenotypes --label phenotypes --baseline "default (eleventh round: WiSE-FT)" --repeat 2 --name pareto_r11'),
    ("robust_r11_wise", "Robustness: default and fast-cpu fine-tuned from a flip-TTA teacher, and halfway back (issue 19, tenth and eleventh rounds; the halfway files ship)", 'python benchmarks/bench_robust.py --model runs/r10/default-det.onnx --label "default r10 candidate (TTA teacher)" --grades middle,strongest --name robust_r10_candidate; python benchmarks/bench_robust.py --model runs/r11/wise.onnx --label "default r11 WiSE-FT α 0.5 (r10 candidate)" --grades middle,strongest --name robust_r11_wise; python benchmarks/bench_robust.py --model runs/fast10/detector.int8.onnx --label "fast-cpu r10 fine-tuned (int8)" --model runs/fast10/wise.int8.onnx --label "fast-cpu r10 WiSE-FT α 0.5 (int8)" --grades middle,strongest --name robust_r10_fast'),
    ("pareto_tiny", "A fast-cpu candidate at 6.3 GFLOP, on an AVX2-only CPU (issue 18, eighth round)", 'python benchmarks/bench_pareto.py --model default --model fast-cpu --model phenotypes --model runs/tiny/micronet_crchisto_tiny.int8.onnx --label "tiny candidate int8 (8-16-32-32, narrowed + distilled)" --model runs/tiny/micronet_crchisto_tiny.onnx --label "tiny candidate fp32" --baseline default --repeat 2 --name pareto_tiny'),
    ("pareto_avx2_precision", "int8 or fp32 on a CPU without VNNI (issue 18, eighth round)", 'python benchmarks/bench_pareto.py --model fast-cpu --label "fast-cpu (int8, bundled)" --model runs/tiny/fast_cpu_fp32.onnx --label "fast-cpu\'s checkpoint as fp32" --model phenotypes --baseline "fast-cpu (int8, bundled)" --repeat 2 --name pareto_avx2_precision'),
    ("robust_r9_wise", "Robustness: the default fine-tuned for blur, hue and camera tint, and halfway back (issue 19, ninth round; not shipped)", 'python benchmarks/bench_robust.py --model runs/r9/default-det.onnx --label "default r9 candidate" --grades middle,strongest --name robust_r9_candidate; python benchmarks/bench_robust.py --model runs/r9/wise.onnx --label "default r9 WiSE-FT α 0.5" --grades middle,strongest --name robust_r9_wise'),
    ("robust_r7", "Robustness: stain, brightness, focus and compression (issue 19, seventh round: the retrained default)", 'python benchmarks/bench_robust.py --model default --normalize none --grades middle,strongest --name robust_r7'),
    ("pareto_robust", "The default retrained with the photometric augmentation: what it costs (issue 19, seventh round)", 'python benchmarks/bench_pareto.py --model default --label "default (robust, r7)" --model runs/prev_r7/micronet_crchisto.onnx --label "previous default (= accurate\'s file)" --model fast-cpu --model phenotypes --baseline "previous default (= accurate\'s file)" --repeat 2 --name pareto_robust'),
    ("robust_auto", "Robustness: stain, brightness, focus and compression (issue 19, sixth round: `normalize=\"auto\"`)", 'python benchmarks/bench_robust.py --model default --model fast-cpu --model phenotypes --normalize none --grades middle,strongest --name robust_auto'),
    ("robust", "Robustness, the previous run: `normalize=None` the default, Reinhard on every image (issue 19)", 'python benchmarks/bench_robust.py --model fast-cpu --label "fast-cpu (lean ReLU int8)" --model runs/family/micronet_crchisto_lean.int8.onnx --label "lean student int8 (aug, classes)" --normalize none --normalize reinhard --grades middle,strongest'),
    ("pareto_classes", "Class heads: what classifying costs (issue 20)", 'python benchmarks/bench_pareto.py --model default --model phenotypes-wide --model runs/classhead/micronet_crchisto.onnx --label "phenotypes-wide, 1,500-step head (previous file)" --model fast-cpu --model phenotypes --repeat 2 --name pareto_classes'),
    ("pareto_heads", "The defaults classify: a class head at 1/4 resolution (issue 20)", 'python benchmarks/bench_pareto.py --model default --label "default (+ class head at 1/4)" --model runs/prev_r4/micronet_crchisto.onnx --label "previous default (no head)" --model fast-cpu --label "fast-cpu (+ class head at 1/4)" --model runs/prev_r4/micronet_crchisto_relu.int8.onnx --label "previous fast-cpu (no head)" --model runs/prev_r4/micronet_crchisto_phenotypes_wide.onnx --label "phenotypes-wide (retired)" --model phenotypes --baseline "previous default (no head)" --repeat 2 --name pareto_heads'),
    ("pareto_accurate", "`accurate`: the default with dihedral test-time augmentation (issues 18, 20)", 'python benchmarks/bench_pareto.py --model default --label "default (head r 2.75 µm)" --model runs/prev_r5/micronet_crchisto.onnx --label "previous default (head r 1.65 µm)" --model accurate --label "accurate (default + dihedral TTA)" --model default --label "default + flip TTA" --tta --model fast-cpu --model phenotypes --baseline "default (head r 2.75 µm)" --repeat 2 --name pareto_accurate'),
    ("pareto_depth", "The default's deeper class head (issue 20, sixth round)", 'python benchmarks/bench_pareto.py --model default --label "default (head: 2 blocks, r 3.85 µm)" --model runs/prev_r6/micronet_crchisto.onnx --label "previous default (head r 2.75 µm)" --model fast-cpu --baseline "previous default (head r 2.75 µm)" --repeat 2 --name pareto_depth'),
    ("outside", "A held-out outside source: frozen sections from another lab (issue 19)", "python benchmarks/bench_outside.py --data ../outside/cryonuseg --normalize reinhard --normalize macenko"),
    ("cpu", "CPU inference: default vs fast-cpu vs torch, network alone and end to end", CPU_COMMAND),
    ("slide_fast_cpu", "Whole slides: fast-cpu against default in one run", SLIDE_MODELS_COMMAND),
    ("ort_profile", "Where ONNX Runtime's CPU time goes", "python benchmarks/profile_ort.py"),
    ("matcher", "Matching (the paper's evaluation)", "python benchmarks/bench_matcher.py"),
    ("peaks", "Peak finding", "python benchmarks/bench_peaks.py"),
    ("slide", "Whole slides: reading, pipelining and memory (default model)", "python benchmarks/bench_slide.py --size 12000 --keep"),
    (
        "slide_40000",
        "Whole slide at 40,000² (memory bound by the tile, not the slide)",
        "python benchmarks/bench_slide.py --size 40000 --modes read,prefetch,accel-serial,accel-prefetch --keep --results-name slide_40000",
    ),
    ("stream", "Detection while scanning: memory and latency (issue 24)", "python benchmarks/bench_stream.py"),
    (
        "cross_organ",
        "Cross-organ accuracy (MoNuSeg)",
        'python benchmarks/eval_cross_organ.py --model runs/old_models_v2/micronet_crchisto.onnx --label "previous default" '
        '--model runs/old_models_v2/micronet_crchisto_relu.int8.onnx --label "previous fast-cpu" '
        '--model runtime/models/micronet_crchisto.onnx --label default --model runtime/models/micronet_crchisto_relu.int8.onnx '
        '--label fast-cpu',
    ),
    ("tta", "Test-time augmentation (flips): cost and accuracy", "python benchmarks/bench_tta.py"),
    ("train_step", "Training step: precision and memory layout", "python benchmarks/bench_train.py"),
    ("cohort", "Cohorts: serial against a local Ray runtime", "python benchmarks/bench_cohort.py"),
    ("gpu", "GPU: torch CUDA fp16, TensorRT fp16, ONNX Runtime CUDA fp32", "python benchmarks/bench_gpu.py"),
]

# Sections whose results were measured with the previous, lean bundled default (before the
# paper-width default of issue 13) and not rerun since: the page says so under the title.
PREVIOUS_DEFAULT = {"ort_profile", "slide", "slide_40000", "cohort"}
PREVIOUS_DEFAULT_NOTE = (
    "**Measured with the previous bundled default** (the lean 16-32-64-64 network, commit 4a42e66), "
    "not the paper-width default of today: what these rows compare (reading modes, memory, workers, "
    "operators) does not depend on the network's width, but the network's share of the time is about "
    "2.5× larger now (the CPU section above). Rerun the command to measure the current model."
)

# Reading notes under a section's tables: what the numbers mean and what limits them.
# No figures here: every number on the page comes from a results file.
from _report_curated import CURATED  # noqa: E402  (the curated summaries of long results tables)

EXTRA_NOTES = {
    "focus_cells": """\
**Reading it.** Since the sixteenth round `deblur="auto"` judges an image of more than half
a megapixel (here a 1000² mosaic; on a slide, `fast-cpu`'s 1,272² tiles) cell by cell and
deconvolves only its soft cells (`focus.deblur_cells`). `one σ` is what it did before: the
image's median blur, one deconvolution for all of it or none. With one soft quadrant the
median is in focus and `one σ` changes nothing; with three, it over-sharpens the sharp
quadrant, whose F1 falls far below `None`'s, while `cells` leaves it as it was. The cell
size was chosen on the training mosaics (`focus_cells_train`), not on these.""",
    "pareto_r16_vnni": """\
**Reading it.** The same bundled files as `pareto_r15_int8`, on an EPYC with AVX-512 VNNI,
where ONNX Runtime's int8 matrix product runs several times its float32 one (the machine
line). There `fast-cpu`'s int8 file outruns its own fp32 export by about a third (8 % on
the AVX2-only EPYC), and every network gains on the classical detector, whose speed does
not depend on matrix products; half the classical detector's speed stays far out of reach
(issue 18, blocked). docs/results.md, sixteenth round.""",
    "pareto_r11": """\
**Reading it.** The two new files are weight changes on the same graphs, so their cost and
speed are their predecessors' (1.00× and 1.02× here, within the run's noise). The default
gives 0.0026 of CRCHisto F1 for 0.0012 of MoNuSeg F1 and two more robustness checks; fast-cpu
gives 0.0049 of CRCHisto F1 for 0.026 of MoNuSeg F1 and three more checks (docs/results.md,
tenth and eleventh rounds). `micronet detect CMU-1-Small-Region.svs` on this machine: default
81 s and 725 MB peak RSS, fast-cpu 15 s and 690 MB (`/usr/bin/time -f "%e s %M KB"`; 2,765
and 2,755 nuclei); their previous files 83 s and 725 MB, 15 s and 690 MB (2,728 and 2,767). The previous files are `git show 76de33c~2:runtime/models/micronet_crchisto.onnx`
and `git show 76de33c~1:runtime/models/micronet_crchisto_relu.int8.onnx` (in `runs/r11/` for this run).

![F1 against end-to-end speed, AMD EPYC (AVX2)](../benchmarks/results/pareto_r11.png)""",
    "pareto_classes": """\
**Reading it.** (Third round; `phenotypes-wide` has since been retired, see the next
section.) `phenotypes-wide` is `default` with a class head fitted on its frozen
detector (`micronet fit-classes`): the same detections, F1 for F1, and 3.8 % more FLOPs,
yet 0.57× its speed. The head's full-resolution maps take about 1 KB of ONNX Runtime
memory per pixel, so the tile that fits the memory budget shrinks and a 500² image runs as
four overlapping tiles. The same head on `fast-cpu` cost 14 % in an earlier run (docs/results.md). That is why the defaults do
not carry it (docs/results.md).""",
    "pareto_heads": """\
**Reading it.** `default` and `fast-cpu` now carry a class head computed at 1/4 resolution
and resized (`MicroNetConfig.class_scale = 4`), fitted on their frozen detectors: the same
detections, F1 for F1 (fast-cpu's int8 file requantised: +0.0003), 2.3 % more FLOPs, and
0.99× and 0.97× the speed of their previous files on these 500² images (0.90× and 0.87× on
the CMU-1 slide: docs/results.md). The previous files are `git show e4c633d:runtime/models/<file>`
(in `runs/prev_r4/` for this run). `phenotypes-wide`, last round's full-resolution head on
the same wide detector, ran at 0.60×; it is retired.""",
    "pareto_accurate": """\
**Reading it.** `accurate` is the default's file with dihedral test-time augmentation (8
passes: the flips of the image and of its transpose, `Detector(tta="dihedral")`); it meets
issue 18's accurate row (CRCHisto test ≥ 0.825, MoNuSeg held-out ≥ 0.850) at 8× the
network's work, a model for a GPU. The default's class head was refitted at 2.75 µm from
the nuclei (docs/results.md, fifth round): the same graph, so the same FLOPs, detections and
speed as its previous file (`git show f8d2fd1:runtime/models/micronet_crchisto.onnx`, in
`runs/prev_r5/` for this run; 1.03× is run-to-run noise).""",
    "pareto_depth": """\
**Reading it.** The default's class head gained two residual blocks at 1/4 resolution
(`MicroNetConfig.class_depth`, docs/results.md, sixth round): weighted class F1 0.8126
against 0.7909 on CRCHisto test, detections unchanged (frozen detector), 1.2 % more FLOPs
and 0.98× its previous file's speed on these 500² images. On a slide the head's longer
reach widens the tiles' margin (104 against 88 px): about 0.9× there (docs/results.md). The
previous file is `git show 7cbce11:runtime/models/micronet_crchisto.onnx` (in
`runs/prev_r6/` for this run).""",
    "pareto_tiny": """\
**Reading it.** Measured on an AMD EPYC with AVX2 only (no AVX-512, no VNNI), the kind of CPU
issue 18 was filed on. The tiny candidate is `micronet_tiny`'s widths (8-16-32-32, context 4),
started from the shipped `fast-cpu` detector narrowed by batch-norm scale
(`trainer/narrow.py`) and distilled from the default's maps (`tools/make_tiny.sh`). A quarter
of fast-cpu's FLOPs buys 1.8× its speed here, not 4×: eight-channel convolutions at full
resolution use little of the machine, and without VNNI int8 is no faster than fp32 (the fp32
file is a little faster). It keeps MoNuSeg's F1 (0.868) but loses 0.034 on CRCHisto (0.777),
so it does not replace `fast-cpu` (docs/results.md, eighth round).

![F1 against end-to-end speed, AMD EPYC (AVX2)](../benchmarks/results/pareto_tiny.png)""",
    "pareto_avx2_precision": """\
**Reading it.** On an AMD EPYC with AVX2 only, `fast-cpu`'s int8 file runs no faster than the
same checkpoint exported as fp32 (`micronet export trainer/pretrained/micronet_crchisto_relu.safetensors
-o runs/tiny/fast_cpu_fp32.onnx`): ONNX Runtime's int8 convolutions gain their speed from VNNI
(AVX-512 VNNI or AVX-VNNI), which this CPU lacks. The int8 file stays the bundled one: on
VNNI CPUs it is the faster (on a Sapphire Rapids the first round's lean student ran 3.93× the
default as int8 and 2.70× as fp32, docs/results.md), and here it costs nothing in speed and
0.007 of MoNuSeg F1.""",
    "pareto_robust": """\
**Reading it.** `default` is the paper-width network retrained with the photometric
augmentation (stain, brightness, gamma, hue, blur, noise, JPEG; docs/results.md, seventh
round), with its class head refitted: the same graph, so the same FLOPs and speed as its
previous file, which is now `accurate`'s (`runtime/models/micronet_crchisto_accurate.onnx`;
`git show ba9f1f4:runtime/models/micronet_crchisto.onnx`, in `runs/prev_r7/` for this run).
It trades a little CRCHisto F1 for more on MoNuSeg's unseen organs. `fast-cpu` and
`phenotypes` are unchanged.""",
    "outside": """\
**Reading it.** These two tiles (CryoNuSeg, TCGA frozen sections, 40×; `tools/import_cryonuseg.py`
names the commit and licence) are the project's held-out outside source: no model trains,
tunes or distils on them, and no setting was chosen on them. Frozen sections are darker,
more tinted and softer than the formalin-fixed scans of CRCHisto and MoNuSeg. Their outlines
cover part of each tile only, so a detection without a partner may be a nucleus nobody drew:
recall is the score, with the number of detections beside it so that recall bought with a
flood of points shows. The models trained with the photometric augmentation (`phenotypes`,
and `default` since the seventh round) find the most annotated nuclei; Reinhard's
normalisation helps `phenotypes` a little and costs the others; Macenko's normalisation
loses nuclei on these tiles for every model.""",
    "pareto": "(the `runs/family/` files: `tools/make_family.sh`; the lean student int8 is the bundled\n`phenotypes`). Every model and the classical peer in turns on the same images, one run.\n\n![F1 against end-to-end speed](../benchmarks/results/pareto.png)\n\nNo model of this round meets issue 18's targets (docs/results.md says what was tried):\nthe classical detector runs 14 MP/s here, so `fast-cpu`'s target (half of it) is about\n7 MP/s, 10× today's fast-cpu.",
    "stream": '**Measured on a busy machine:** the float32 matmul rate was 51-70 GFLOP/s during this run, against 268-325 GFLOP/s in quiet runs on this machine type (`benchmarks/results/slide_memory.md`). Other jobs held most of the 2 cores, so every time in seconds is several times a quiet run\'s. The memory figures and the latency in fields do not depend on the load. The time ratio does, and it is only a rough one: the runs took turns, but they spread widely (stream 15.9 and 24.0 s, `detect_slide` 23.5 and 25.2 s; `benchmarks/results/stream.json`). Read it as "the stream is no slower than `detect_slide`". Both read and resample the same tiles and run the same network on them.\n\n- **Same answer.** The stream found the same 2,767 nuclei as `detect_slide` on CMU-1 (and `tests/runtime/test_stream.py` checks positions and scores bit for bit against `detect` on the stitched slide, in three scan orders with gaps).\n- **Memory is strips, not the slide.** A block runs once its whole window has arrived. So the session holds the fields of one tile height (1304 model px = 1437 slide px with the default tile) plus the field row being scanned, plus up to 2 prepared tiles waiting for the network (2 × 5.1 MB). CMU-1-Small-Region is only about two tiles tall, so for it that is the whole slide and more (23.9 MB held, 18.8 MB slide; overlapping fields are held whole). Three CMU-1s stacked (56.5 MB) hold 26.6 MB, barely more. A full 46,000-px-wide scan would hold about 46,000 × (1437 + 512) × 3 B ≈ 270 MB of fields at the default tile, whatever its length. The process\'s peak RSS is the detector\'s own (ONNX Runtime\'s arena for its tile) plus that: 649 MB against `detect_slide`\'s 665 MB.\n- **Smaller tiles, smaller strips.** With `Detector("fast-cpu", tile_size=640)` the session holds 11.1 MB, and the peak RSS is 249 MB (a smaller arena). A field\'s detections are final 10 fields after it arrives (median) instead of 17, for more overlap work (24 blocks instead of 6).\n- **Latency.** A field\'s detections are final once the fields one tile height further on have arrived: 17 fields later at the median with the default tile. That is scan geometry, whatever the speed. In seconds, add the queue and the network: block latency (context complete → final) is the network\'s time per tile times the blocks queued before it.',
}


NOTES = {
    "pareto_r15_int8": """\
**Reading it.** The machine line now carries ONNX Runtime's int8 (u8×s8) matrix-product rate
beside the float32 one (`ort_int8_matmul_gops`, `runtime/diagnostics/bench.py`). On this
AVX2-only EPYC it is 1.14× the float32 rate, so `fast-cpu`'s int8 file runs only 8 % faster
than the same checkpoint in fp32: it is fast here because it is lean, not because it is
int8. Half the classical detector's speed (6.5 MP/s here) would need a network of at most
2.9 GFLOP per 500² running at the whole int8 peak; the smallest MicroNet trained (6.3
GFLOP, 0.7765 CRCHisto F1) reaches 0.061×. docs/results.md, fifteenth round.""",
    "focus_cost": """\
**Reading it.** Every tile of a slide (in its reader threads) and every block of a stream
(in its worker) is measured for focus before the network, and with `deblur="auto"` one
beyond 0.7 µm is deconvolved (`runtime/focus.py`, `focus.sharpened`). Since the sixteenth
round a tile over half a megapixel (`fast-cpu`'s 1,272²) also gets a focus map of its
cells, and only its soft cells are deconvolved; the measure was made 3–4× cheaper in the
same round, so the map costs less than the old measure alone did. On a VNNI CPU, where the
int8 network is fast, the measure's share of `fast-cpu`'s time is the largest; a
deconvolution is paid only by soft tiles or cells. The tile side is each model's own
(`default` 592 px, `fast-cpu` 1,272 px), so the rows compare steps, not models.""",
    "robust_r14_accurate_a": """\
**Reading it.** `accurate` (the sixth round's detector, trained without the photometric
augmentation) under dihedral TTA, on the families `robust_r12_accurate` and
`robust_r13_deblur` left out. It misses CRCHisto hue +0.1 (83.0 %, strongest) and darken
×0.7 (94.5 %, middle), where `default` (trained with the augmentation) keeps 86.0 % and
95.9 % (`robust_r12`). With blur σ 1 px and camera B, that is four CRCHisto checks
`accurate` fails; docs/results.md, fourteenth round.""",
    "robust_r14_accurate_b": """\
**Reading it.** JPEG and gamma pass for `accurate` under TTA (12 of 12).""",
    "robust_r14_accurate_hed": """\
**Reading it.** HED jitter passes for `accurate` under TTA (4 of 4). With
`robust_r14_accurate_a` and `_b`, `robust_r13_deblur` and `robust_r12_accurate`, all 36
checks are measured and 32 pass: `accurate` fails CRCHisto hue +0.1, darken ×0.7, blur
σ 1 px and camera B.""",
    "robust_r13_deblur": """\
**Reading it.** The Detector's default is now `deblur="auto"`: an image whose edge blur
(`Detections.edge_blur_um`, `runtime/focus.py`) exceeds 0.7 µm is deconvolved back to
0.37 µm (a Wiener filter of a Gaussian, constants chosen on CRCHisto training images) before
the network. It reaches every CRCHisto image blurred by σ 2 px (0.90–1.14 µm) and two of
the six MoNuSeg ones (σ 2 px is 0.5 µm there); no σ 1 px image, no clean one and no image
of any other family (`benchmarks/results/focus_threshold.txt`), so those rows are
`robust_r12`'s and `robust_r12_accurate`'s to the digit. Against them, CRCHisto blur σ 2 px:
`default` 88.6 → 95.3 %, **`fast-cpu` 81.8 → 93.6 %** (its last miss), `phenotypes`
94.6 → 97.7 %, **`accurate` 70.1 → 89.1 %** (now above the classical 0.6313). MoNuSeg σ 2 px:
fast-cpu 95.8 → 99.4 %, accurate 96.1 → 100.1 %, phenotypes 99.3 → 99.2 %. With the other
families of `robust_r12`, `default`, `fast-cpu` and `phenotypes` now pass all 36 checks;
`accurate` still misses blur σ 1 px (94.5 %, not beyond the threshold) and camera B (94.7 %,
`robust_r12_accurate`).""",
    "robust_r12_methods": """\
**Reading it.** The `+ white` and `+ reinhard` columns normalise *every* image; the plain
columns are `auto`, now the white balance for images beyond 0.6 stops (all camera B and C
tiles, all darkened to 0.4×, 1 of 20 CRCHisto and 5 of 6 MoNuSeg images darkened to 0.7×, 1
MoNuSeg image under γ 2, nothing else: `python benchmarks/colour_perturbed.py`,
`benchmarks/results/colour_perturbed.txt`).
Reinhard matches each image's mean and spread in lαβ to the training data's, so clean
CRCHisto images with more or fewer nuclei than average get their colours moved: it costs
0.035 clean CRCHisto F1 (default 0.8164 → 0.7815), and camera tile B keeps 0.7530. The
white balance changes only a gain per channel: clean CRCHisto 0.8161 (−0.0003), camera B
0.7957. That is why `auto` applies the white balance, and still only beyond the threshold:
then no clean image changes at all.""",
    "cpu": """\
**Reading it.** The paper's network (ELU, the `default` model) gains little from int8
and stays far below the matmul peak. The cause is the activation, not the convolutions:
ONNX Runtime's CPU provider runs convolutions in a blocked layout (NCHWc) with ReLU,
Sigmoid or Tanh fused in, but ELU is none of these, so each of the network's 27 ELUs runs
as its own pass with a layout change before and after it, and in int8 each ELU is a
float island between a DequantizeLinear and a QuantizeLinear (the profile section shows
the time per operator). The `fast-cpu` model is the lean network (16-32-64-64, a quarter
of the paper-width default's FLOPs) with ReLU, distilled from the default
(docs/results.md); its int8 export is the model to deploy on a CPU. int8 gains less than the 4× of its arithmetic: ONNX Runtime's CPU provider has no
int8 ConvTranspose (microsoft/onnxruntime#8988), so the six transposed convolutions of
each branch of the export (three in the upsampling path, three in the multi-context
aggregation) run in float with layout changes around them. 500² is not a multiple
of 8, so its rows run the export's general branch; 1024², the Detector's CPU tile, runs
the aligned branch without the per-level crops. "% of fp32 matmul peak" counts each
engine's own network: the ELU rows the default's FLOPs, the ReLU rows fast-cpu's (GFLOP
column of the width table below); an int8 row can pass 100%.
""",
    "cohort": """\
Two workers of one thread each beat one worker of two threads on two cores: reading,
decoding and peak finding are single-threaded per slide, so two slides at once keep
both cores busy. Ray's own cost per slide is within the noise here; its start-up is paid
once per run. docs/deployment.md says how to run the same command on a cluster.
""",
    "ort_profile": """\
Width sets the ceiling (last table): more channels per pixel give the convolutions more
work per byte moved. That is why the paper-width default (since issue 13: 4× the FLOPs of
the lean network) runs only about 2.4× slower than a lean one would. For a scanner PC the
bundled `fast-cpu` model keeps the lean widths, with ReLU and int8 (docs/architecture.md).
""",
}


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine_text(machine: dict[str, Any]) -> str:
    """The machine line; records written before machine records named ISA flags and a
    matmul peak say so instead of passing for complete."""
    if "isa" in machine:
        return f"Machine: {run_line(machine)}."
    cores = machine.get("physical_cores") or machine.get("cores") or machine.get("cpu_count") or "?"
    return (
        f"Machine: {machine.get('cpu', '?')}, {cores} logical CPUs (an older record without ISA flags or matmul peak; "
        "not re-measured since: compare its ratios, not its absolute numbers, with other sections)."
    )


def _load_warning(machine: dict[str, Any]) -> str | None:
    """A warning when the matmul rate measured before and after the run differs by more
    than 20%: the machine's load changed during the run, so even its ratios are suspect."""
    runs = machine.get("matmul_measurements_gflops") or []
    for key in ("onnxruntime", "numpy"):
        rates = [m[key] for m in runs if key in m]
        if len(rates) > 1 and min(rates) < 0.8 * max(rates):
            return (
                f"**Measured on a busy machine:** the {key} matmul rate moved between {min(rates):.0f} and {max(rates):.0f} "
                "GFLOP/s during this run (other jobs on the shared CPU): shares of the peak, and ratios between rows "
                "timed at different moments, are suspect; ratios between settings timed in turns over several rounds "
                "(best of each) hold better. Rerun on a quiet machine before quoting the others."
            )
    return None


def _summary() -> list[str]:
    """The ratios at a glance, each with its command and machine."""
    out = ["## Ratios at a glance", ""]
    cpu = _load("cpu")
    if cpu and "fast_cpu_over_default" in cpu:
        peak = cpu["machine"].get("matmul_peak_gflops") or cpu["machine"]["numpy_matmul_gflops"]
        out += [f"`{CPU_COMMAND}` — {_machine_text(cpu['machine'])}", ""]
        out += ["| measure | default | fast-cpu | fast-cpu / default |", "|---|---:|---:|---:|"]
        for r_default, r_fast in _pairs(cpu["rows"], lambda r: r["model"] == "default", lambda r: r["model"] == "fast-cpu", ("size", "batch")):
            out.append(
                f"| network alone, {r_default['size']}² × {r_default['batch']}: MP/s per 100 GFLOP/s of matmul peak | "
                f"{r_default['megapixels_per_s_per_100_gflops']:.2f} | {r_fast['megapixels_per_s_per_100_gflops']:.2f} | "
                f"**{r_fast['x_default']:.2f}×** |"
            )
        e2e = {e["model"]: e for e in cpu["end_to_end"]}
        if {"default", "fast-cpu"} <= set(e2e):
            d, f = e2e["default"], e2e["fast-cpu"]
            out.append(
                f"| end to end, CRCHisto test split ({d['images']} images): MP/s per 100 GFLOP/s | "
                f"{d['megapixels_per_s_per_100_gflops']:.2f} | {f['megapixels_per_s_per_100_gflops']:.2f} | **{f['x_default']:.2f}×** |"
            )
            out.append(f"| F1 on the CRCHisto test split (radius 6 px) | {d['f1_test']:.4f} | {f['f1_test']:.4f} | – |")
        m = cpu["machine"]
        rates = f"NumPy's BLAS {m['numpy_matmul_gflops']:.0f}" + (f", ONNX Runtime's MatMul {m['ort_matmul_gflops']:.0f}" if "ort_matmul_gflops" in m else "")
        out += ["", f"(Float32 matmul peak of that run: {peak:.0f} GFLOP/s, the higher of {rates}; raw MP/s are in the section below.)", ""]
        out += [w, ""] if (w := _load_warning(m)) else []
    slide = _load("slide_fast_cpu")
    if slide and slide.get("versus_first_model"):
        out += [f"`{SLIDE_MODELS_COMMAND}` — {_machine_text(slide['machine'])}", ""]
        out += ["| slide | fast-cpu / default speed | peak memory ratio |", "|---|---:|---:|"]
        out += [f"| {v['slide']} | **{v['speed_ratio']:.2f}×** | {v['peak_rss_ratio']:.2f}× |" for v in slide["versus_first_model"]]
        out += [""]
        out += [w, ""] if (w := _load_warning(slide["machine"])) else []
    matcher = _load("matcher")
    if matcher:
        key = next((k for k in matcher if k.startswith("speedup_at_")), None)
        if key and matcher[key]:
            n = int(key.rsplit("_", 1)[1])
            cells = ", ".join(f"{m.replace('_over_micronet', '')} {v:,.0f}×" for m, v in matcher[key].items())
            out += [f"- Matching at N = {n:,}, time of each alternative / micronet's: {cells} (`python benchmarks/bench_matcher.py`).", ""]
    peaks = _load("peaks")
    if peaks:
        cells = "; ".join(
            f"{r['size']}²: {r['speedup_vs_peak_local_max']:.0f}× faster than peak_local_max, {r['speedup_vs_separable_numpy']:.1f}× than a separable NumPy filter"
            for r in peaks["rows"]
        )
        out += [f"- Peak finding: {cells} (`python benchmarks/bench_peaks.py`).", ""]
    return out if len(out) > 2 else []


def _pairs(rows: list[dict], first: Callable[[dict], bool], second: Callable[[dict], bool], keys: tuple[str, ...]) -> list[tuple[dict, dict]]:
    a = {tuple(r[k] for k in keys): r for r in rows if first(r)}
    b = {tuple(r[k] for k in keys): r for r in rows if second(r)}
    return [(a[k], b[k]) for k in a if k in b]


def main() -> None:
    out = [
        "# Benchmarks",
        "",
        "Absolute speeds belong to one machine; what carries over to another is a ratio measured",
        "in the same run (model against model on the same images, in turns) and throughput per",
        "unit of the machine's float32 matmul peak (\"MP/s per 100 GFLOP/s\"). So each section",
        "gives the ratios first, then the raw numbers labelled with the machine (CPU model, ISA",
        "flags, cores, the matmul peak measured in that run). The peak is the faster of NumPy's",
        "BLAS and ONNX Runtime's own MatMul on a 2048³ float32 product, measured before and after",
        "the timed runs (the highest counts, so a busy moment on a shared machine does not inflate",
        "a share of it): a NumPy build may leave part of a CPU's vector width unused, and the",
        "models run in ONNX Runtime. Each section names the command that produced it; the raw",
        "numbers are in `benchmarks/results/*.json`. Regenerate this page with",
        "`python benchmarks/report.py`.",
        "",
    ]
    out += _summary()
    for name, title, command in SECTIONS:
        out += [f"## {title}", "", f"`{command}`", ""]
        if name in PREVIOUS_DEFAULT:
            out += [PREVIOUS_DEFAULT_NOTE, ""]
        md, payload = RESULTS / f"{name}.md", _load(name)
        if name in CURATED:
            out += [CURATED[name].strip(), ""]
        elif md.exists():
            text = md.read_text().strip()
            if not text.startswith("Machine:") and payload and payload.get("machine"):
                out += [_machine_text(payload["machine"]), ""]
            warning = _load_warning(payload.get("machine", {})) if payload else None
            out += [text, ""] + ([warning, ""] if warning else [])
            if name in NOTES or name in EXTRA_NOTES:
                out += [{**NOTES, **EXTRA_NOTES}[name].strip(), ""]
        else:
            out += ["Not measured yet on this project's machines (needs the hardware named in the title).", ""]
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(out) + "\n")
    print(f"wrote {ROOT / 'docs' / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
