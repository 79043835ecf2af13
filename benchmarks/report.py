"""Collects benchmarks/results/*.md into docs/benchmarks.md (with the commands that
produced them), so the doc always shows the latest measured tables.

    python benchmarks/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

SECTIONS = [
    ("matcher", "Matching (the paper's evaluation)", "python benchmarks/bench_matcher.py"),
    ("peaks", "Peak finding", "python benchmarks/bench_peaks.py"),
    ("cpu", "CPU inference: torch vs ONNX Runtime fp32 vs int8", "python benchmarks/bench_cpu.py"),
    ("ort_profile", "Where ONNX Runtime's CPU time goes", "python benchmarks/profile_ort.py"),
    ("slide", "Whole slides", "python benchmarks/bench_slide.py --size 12000 --repeat 2 --keep"),
    (
        "slide_fast_cpu",
        "Whole slides with the fast-cpu model",
        "python benchmarks/bench_slide.py --size 12000 --model runtime/models/micronet_crchisto_relu.int8.onnx --modes prefetch --results-name slide_fast_cpu",
    ),
    (
        "slide_40000",
        "Whole slide at 40,000² (memory bound by the tile, not the slide)",
        "python benchmarks/bench_slide.py --size 40000 --modes read,prefetch,accel-serial,accel-prefetch --keep --results-name slide_40000",
    ),
    (
        "cross_organ",
        "Cross-organ accuracy (MoNuSeg)",
        'python benchmarks/eval_cross_organ.py --model runtime/models/micronet_crchisto.onnx --label "default (ELU, fp32)" '
        '--model runtime/models/micronet_crchisto_relu.int8.onnx --label "fast-cpu (ReLU, int8)"',
    ),
    ("gpu", "GPU: TensorRT FP16 vs ONNX Runtime CUDA vs torch CUDA", "python benchmarks/bench_gpu.py"),
]

# Reading notes shown under a section's table (what the numbers mean, what limits them).
NOTES = {
    "slide_fast_cpu": """\
Against the default model on the same slides (section above): 2.0× the megapixels/s and
less than half the memory (int8 activations). Nuclei found: 96,880 against 90,945 on the
synthetic slide (built from CRCHisto tissue), 2,043 against 2,093 on the real CMU-1
region. (An undistilled ReLU fine-tune found only 1,680 on CMU-1; docs/results.md.)
""",
    "cpu": """\
**Reading it against the targets** (ONNX Runtime fp32 ≥ 50% of peak; int8 ≥ 1.8× fp32 at
F1 within 0.01; the bundled model ≥ 2 MP/s end to end):

- The paper's network (ELU, the `default` model) stays at about a third of peak in fp32
  and gains about 1.1× from int8. The cause is the activation, not the convolutions:
  ONNX Runtime's CPU provider runs convolutions in a blocked layout (NCHWc) with ReLU,
  Sigmoid or Tanh fused in, but ELU is none of these, so each of the network's 27 ELUs
  runs as its own pass (ONNX Runtime's ELU kernel is 3.6× slower than its ReLU per
  element: 18.7 against 5.1 ms on 16×1024² floats) with a layout change before and after
  it; in int8 each ELU is a float island between a DequantizeLinear and a QuantizeLinear.
  The profile below shows it: at 1024², ELU and the layout changes around it take 442 ms
  in fp32, more than all the convolutions (332 ms); in int8, ELU with its
  dequantize/quantize pair takes 432 of 840 ms.
- The `fast-cpu` model (the same network fine-tuned with ReLU and distilled from the
  default; CRCHisto test F1 0.800 against 0.802, MoNuSeg 0.825 against 0.813) reaches about half of peak in fp32, and its int8 export detects at
  ≥ 2 MP/s end to end; that is the model to deploy on a CPU.
- int8 gains 1.4–1.6× over fp32 of the same network, not 1.8×: ONNX Runtime's CPU
  provider has no int8 ConvTranspose (microsoft/onnxruntime#8988), so the four
  transposed convolutions of the upsampling path and the multi-context aggregation run
  in float with layout changes around them (158 of 439 ms in the int8 profile).
  Rewriting them as a 1×1 convolution plus DepthToSpace was measured and is slower
  (ONNX Runtime's DepthToSpace is a generic transpose).
- Width sets the ceiling (last table of the profile section): at 1024² the wide variant
  (32-64-128-128) reaches 52% of peak with ELU and 72% with ReLU, against 31% and 50%
  for the default widths; more channels per pixel give the convolutions more work per
  byte moved. The default keeps the lean widths because absolute speed is what a
  scanner PC needs (a quarter of the FLOPs; docs/architecture.md).
- Input sizes that are multiples of 8 (2048² here, and every full Detector tile) run a
  copy of the graph without the crops odd sizes need (an ONNX `If` in the export): 7%
  faster in fp32 and 22% in int8 at 1024², identical maps.
""",
}


def main() -> None:
    out = [
        "# Benchmarks",
        "",
        "Measured side by side in one run on one machine; ratios matter more than absolute",
        "times. Each section names the command that produced it; the raw numbers are in",
        "`benchmarks/results/*.json`. Regenerate this page with `python benchmarks/report.py`.",
        "",
    ]
    for name, title, command in SECTIONS:
        out += [f"## {title}", "", f"`{command}`", ""]
        md, js = RESULTS / f"{name}.md", RESULTS / f"{name}.json"
        if md.exists():
            if js.exists():
                machine = json.loads(js.read_text()).get("machine", {})
                if machine:
                    out += [f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores.", ""]
            out += [md.read_text().strip(), ""]
            if name in NOTES:
                out += [NOTES[name].strip(), ""]
        else:
            out += ["Not measured yet on this project's machines (needs the hardware named in the title).", ""]
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(out) + "\n")
    print(f"wrote {ROOT / 'docs' / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
