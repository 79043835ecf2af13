"""``micronet evaluate --model``: a checkpoint, ONNX model or engine on a data set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _candidates(model: Path, floor: float):
    """(callable, ModelInfo) for any model file; checkpoints need torch, others do not."""
    suffix = model.suffix.lower()
    if suffix == ".safetensors":
        from micronet.trainer.validate import CheckpointCandidates

        runner = CheckpointCandidates(str(model), floor)
        return runner, runner.info
    if suffix in (".onnx", ".engine"):
        from micronet.runtime.detector import Detector

        det = Detector(str(model), threshold=floor)

        def run(image: np.ndarray, mpp: float):
            found = det.detect(image, mpp=mpp)
            return found.xy, found.scores

        return run, det.info
    raise ValueError(f"--model {model}: expected a .safetensors checkpoint, .onnx model or .engine file")


def run_model_evaluation(args: argparse.Namespace) -> int:
    from micronet.commands.evaluate import format_report
    from micronet.runtime.datasets import load_point_folder
    from micronet.runtime.evaluation import evaluate_candidates, plot_pr_curve

    if not args.model.exists():
        raise FileNotFoundError(f"--model: no such file {args.model}")
    data = load_point_folder(args.data, args.split)
    radius = 6.0 if args.radius is None else args.radius
    probe_info = None
    # The sweep floor depends on the model's target scale; read the metadata first.
    if args.model.suffix.lower() == ".safetensors":
        from micronet.trainer.checkpoint import read_info

        probe_info = read_info(args.model)
    scale = float((probe_info.target if probe_info else {"scale": 5.0}).get("scale", 5.0))
    thresholds = np.linspace(0.02 * scale, 0.9 * scale, 60)
    runner, info = _candidates(args.model, float(thresholds[0]))
    threshold = info.threshold if args.threshold is None else args.threshold
    if threshold < thresholds[0]:
        raise ValueError(f"--threshold {threshold} is below the sweep floor {thresholds[0]:.3f}")
    result = evaluate_candidates(runner, data, radius, threshold, thresholds)
    print(format_report(result.report))
    best = result.sweep.metrics_at(result.sweep.best_index)
    print(f"threshold ξ = {threshold:.4g} ({'given' if args.threshold is not None else 'the model’s'}); "
          f"best on this set: ξ = {result.sweep.best_threshold:.4g}, F1 {best.f1:.4f}")
    if args.json is not None:
        out = {**result.to_dict(), "model": str(args.model), "data": str(args.data), "split": args.split}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=lambda v: None) + "\n", encoding="utf-8")
        png = plot_pr_curve(result, args.json.with_suffix(".pr.png"), title=f"{args.model.name} on {Path(args.data).name} {args.split or ''}")
        print(f"wrote {args.json} and {png}")
    return 0
