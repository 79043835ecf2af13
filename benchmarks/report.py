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
    ("slide", "Whole slides", "python benchmarks/bench_slide.py"),
    ("cross_organ", "Cross-organ accuracy (MoNuSeg)", "python benchmarks/eval_cross_organ.py --model runtime/models/micronet_crchisto.onnx"),
    ("gpu", "GPU: TensorRT FP16 vs ONNX Runtime CUDA vs torch CUDA", "python benchmarks/bench_gpu.py"),
]


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
        else:
            out += ["Not measured yet on this project's machines (needs the hardware named in the title).", ""]
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(out) + "\n")
    print(f"wrote {ROOT / 'docs' / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
