"""The seed paper's study at an equal budget: Table 1 (FCN, U-Net, FCRN-A/B, FRCN,
MicroNet), the λ sweep of Eq. 2, fine-tuning against training from scratch, and
auxiliary data weighted by γ (Xing et al. 2019, Table 1 and Figs. 5-9).

    python benchmarks/paper/run.py --budget 600            # train what is missing, evaluate, report
    python benchmarks/paper/run.py --budget 600 --jobs 2   # two runs at a time, one thread each
    python benchmarks/paper/run.py --budget 600 --only table1 lambda
    python benchmarks/paper/run.py --report-only           # docs/paper.md and plots from paper.json

Every run trains with the same crops (seed), augmentation, optimiser (SGD, Nesterov 0.9,
lr 0.01, weight decay 1e-6, batch 4 of 200²) and schedule (lr ÷10 at 60 % and 85 % of
the budget; the best validation F1 keeps the checkpoint and its ξ), for ``--budget``
iterations (fine-tuning runs: half of it). Each run lives in ``<out>/b<budget>/<name>``
with resumable snapshots: an interrupted study continues where it stopped, in this
session or a later one, and a finished run is never trained again. Its result
(``result.json``: test metrics, PR curve, parameters, GFLOP per 500², training time)
is written once the run is evaluated; ``benchmarks/results/paper.json`` collects them and
``docs/paper.md`` (with ``docs/paper/*.png``) is regenerated from that file.

Data (``../shared/data``): CRCHisto's published split (70 train / 10 val / 20 test, 20×,
matched at 6 px) and MoNuSeg (13 images, 40×, matched at 16 px), split by image in
``benchmarks/paper/monuseg_split.csv`` (7 train / 6 test, every organ in test, colon only
there) for the fine-tuning and auxiliary-data studies.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

DATA = REPO.parent / "shared" / "data"
MONUSEG_SPLIT = HERE / "monuseg_split.csv"
RESULTS = REPO / "benchmarks" / "results" / "paper.json"

# Table 1 of the seed paper (23 organs, 40×, matched at 16 px): P, R, F1 in %, ED in px.
SEED_TABLE1 = {
    "fcn": (79.7, 74.0, 76.4, 5.05),
    "unet": (83.0, 71.7, 76.6, 6.01),
    "fcrn_b": (68.6, 87.5, 76.5, 4.36),
    "frcn": (75.4, 88.2, 81.2, 5.17),
    "micronet": (76.7, 87.8, 81.6, 3.49),
}
MODEL_LABELS = {
    "fcn": "FCN-8s", "unet": "U-Net", "fcrn_a": "FCRN-A", "fcrn_b": "FCRN-B", "frcn": "FRCN", "micronet": "MicroNet",
}
# Widths trained in the study (GFLOP and parameters are reported beside each result).
# FCN-8s and U-Net at their papers' widths cost 20-40x MicroNet per pixel, more than a
# 2-core CPU can train within the study's time; they run at a quarter of every width.
STUDY_OPTIONS: dict[str, dict[str, Any]] = {
    "fcn": {"base": 16},
    "unet": {"base": 16},
    "fcrn_a": {},
    "fcrn_b": {},
    "frcn": {},
    "micronet": {},
}
LAMBDAS = (0.0, 0.005, 0.05, 0.5, 5.0, 50.0)  # Fig. 9
FRACTIONS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0)  # Fig. 5
FREEZE = 5  # fine-tuning with blocks 1-5 (input transition and the downsampling path) frozen
GAMMAS = (0.5, 1.0, 3.0, 10.0)  # Figs. 6-8: weight of the target-domain loss
AUX_FRACTION = 0.25  # one auxiliary crop in each batch of four
MIN_LR = 1e-3  # a diverging run is retried with lr ÷ 10 down to this
GROUPS = ("table1", "lambda", "aux", "finetune")


@dataclass
class Run:
    """One training run and the test sets it is scored on."""

    name: str
    group: str
    config: dict[str, Any]
    evals: dict[str, tuple[str, str | None, float]]  # label -> (data folder, split, radius)
    needs: list[str] = field(default_factory=list)  # runs whose checkpoint this one starts from


def crchisto_test() -> tuple[str, str | None, float]:
    return (str(DATA / "crchisto"), "test", 6.0)


def monuseg_all() -> tuple[str, str | None, float]:
    return (str(DATA / "monuseg"), None, 16.0)


def monuseg_test() -> tuple[str, str | None, float]:
    return (str(DATA / "monuseg"), f"test@{MONUSEG_SPLIT}", 16.0)


def plan(budget: int, out: Path) -> list[Run]:
    """Every run of the study at ``budget`` iterations, in an order that respects
    ``needs`` (the fine-tuning runs start from Table 1's MicroNet)."""
    every = max(25, budget // 8)
    common = {
        "data": str(DATA / "crchisto"), "train_split": "train", "val_split": "val", "eval_radius": 6.0,
        "iterations": budget, "batch": 4, "crop": 200, "lr": 0.01, "lr_milestones": [0.6, 0.85],
        "val_every": every, "snapshot_every": every, "seed": 0,
    }
    runs: list[Run] = []
    for model, options in STUDY_OPTIONS.items():
        runs.append(Run(f"table1_{model}", "table1", {**common, "model": model, "model_options": options},
                        {"crchisto_test": crchisto_test(), "monuseg_all": monuseg_all(), "monuseg_test": monuseg_test()}))
    for lam in LAMBDAS:
        if lam == 5.0:
            continue  # Table 1's MicroNet (λ = 5 is the trainer's default)
        runs.append(Run(f"lambda_{lam:g}", "lambda", {**common, "model": "micronet", "lam": lam}, {"crchisto_test": crchisto_test()}))
    for gamma in GAMMAS:
        runs.append(Run(
            f"aux_gamma_{gamma:g}", "aux",
            {**common, "model": "micronet", "aux_data": str(DATA / "monuseg"), "aux_split": f"train@{MONUSEG_SPLIT}",
             "aux_fraction": AUX_FRACTION, "gamma": gamma},
            {"crchisto_test": crchisto_test(), "monuseg_test": monuseg_test()},
        ))
    source = out / "table1_micronet" / "best.safetensors"
    tune = {
        **common, "data": str(DATA / "monuseg"), "train_split": f"train@{MONUSEG_SPLIT}", "val_split": f"train@{MONUSEG_SPLIT}",
        "eval_radius": 16.0, "iterations": max(1, budget // 2), "val_every": max(25, budget // 16),
        "snapshot_every": max(25, budget // 16), "model": "micronet",
    }
    for fraction in FRACTIONS:
        tag = f"{round(fraction * 100)}"
        evals = {"monuseg_test": monuseg_test()}
        # From scratch at the source model's pixel size (20×), so that only the start differs.
        runs.append(Run(f"finetune_scratch_{tag}", "finetune", {**tune, "target_fraction": fraction, "model_mpp": 0.55}, evals))
        runs.append(Run(f"finetune_init_{tag}", "finetune", {**tune, "target_fraction": fraction, "init": str(source)}, evals,
                        needs=["table1_micronet"]))
        runs.append(Run(f"finetune_frozen_{tag}", "finetune",
                        {**tune, "target_fraction": fraction, "init": str(source), "freeze_blocks": FREEZE}, evals,
                        needs=["table1_micronet"]))
    return runs


# --- one run (a child process) ---------------------------------------------------------


def _summary(report: Any) -> dict[str, Any]:
    """Pooled metrics and mean ± std over images (as the paper reports)."""
    per = report.per_image
    stats = {}
    for key in ("precision", "recall", "f1", "mean_distance"):
        values = np.array([getattr(m, key) for m in per], dtype=np.float64)
        values = values[np.isfinite(values)]
        stats[key] = {"mean": float(values.mean()) if len(values) else None, "std": float(values.std(ddof=1)) if len(values) > 1 else None}
    p = report.pooled
    return {
        "pooled": {"precision": p.precision, "recall": p.recall, "f1": p.f1, "mean_distance": p.mean_distance,
                   "tp": p.tp, "fp": p.fp, "fn": p.fn},
        "per_image_mean_std": stats,
        "n_images": len(per),
        "radius": report.radius,
    }


def run_one(run: Run, out: Path, threads: int) -> dict[str, Any]:
    """Trains (or resumes) one run, evaluates its best checkpoint, writes result.json."""
    import torch
    from micronet.runtime.files import replace_atomically
    from micronet.trainer.checkpoint import load_checkpoint
    from micronet.trainer.models import count_flops
    from micronet.trainer.train import TrainConfig, train

    folder = out / run.name
    result_path = folder / "result.json"
    if result_path.exists():
        # Finished: only test sets added to the study since are evaluated now.
        result = json.loads(result_path.read_text())
        missing = {k: v for k, v in run.evals.items() if k not in result["evals"]}
        if missing:
            for label, (data, split, radius) in missing.items():
                result["evals"][label] = _evaluate(folder / "best.safetensors", data, split, radius)
            text = json.dumps(result, indent=1) + "\n"
            replace_atomically(result_path, lambda tmp: tmp.write_text(text))
        return result
    # A run that diverges (non-finite loss or map) at the study's lr is started again
    # with lr ÷ 10, down to MIN_LR; the result records every lr that diverged, and the
    # report shows the lr a row was trained with.
    config = dict(run.config)
    diverged: list[float] = json.loads((folder / "diverged.json").read_text()) if (folder / "diverged.json").exists() else []
    if diverged:
        config["lr"] = min(diverged) / 10
    while True:
        cfg = TrainConfig.from_dict({**config, "out": str(folder), "threads": threads})
        snapshot = folder / "last_snapshot.safetensors"
        resume = snapshot if snapshot.exists() else None
        try:
            train(cfg, resume=resume, progress=False)
            break
        except FloatingPointError as exc:
            if config["lr"] / 10 < MIN_LR:
                raise
            print(f"{run.name}: diverged at lr {config['lr']:g} ({exc}); again at lr {config['lr'] / 10:g}", flush=True)
            diverged.append(config["lr"])
            for f in folder.iterdir():
                f.unlink()
            (folder / "diverged.json").write_text(json.dumps(diverged))
            config["lr"] /= 10
    best = folder / "best.safetensors"
    model, info = load_checkpoint(best)
    torch.set_num_threads(threads)
    result: dict[str, Any] = {
        "name": run.name, "group": run.group, "config": config, "diverged_at_lr": diverged,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "gflop_500": count_flops(model, 500, 500) / 1e9,
        "best_iteration": info.provenance.get("iterations"), "val_f1": info.provenance.get("val_f1"),
        "threshold": info.threshold, "train_seconds": _train_seconds(folder / "log.csv"),
        "machine": info.provenance.get("machine"), "evals": {},
    }
    for label, (data, split, radius) in run.evals.items():
        result["evals"][label] = _evaluate(best, data, split, radius)
    text = json.dumps(result, indent=1) + "\n"
    replace_atomically(result_path, lambda tmp: tmp.write_text(text))
    return result


def _evaluate(checkpoint: Path, data: str, split: str | None, radius: float) -> dict[str, Any]:
    """One test set's pooled and per-image metrics at the checkpoint's ξ, and its PR curve."""
    from micronet.runtime.evaluation.evaluate import evaluate_model_file
    from micronet.trainer.validate import checkpoint_candidates

    ev = evaluate_model_file(checkpoint, data, split=split, radius=radius, progress=False, checkpoint=checkpoint_candidates)
    return {**_summary(ev.report), "threshold": ev.threshold, "best_f1": ev.sweep.best_f1,
            "best_threshold": ev.sweep.best_threshold, "curve": ev.sweep.to_dict()["curve"]}


def _train_seconds(log_csv: Path) -> float | None:
    import csv

    with log_csv.open() as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["elapsed_s"]) if rows else None


# --- the study (parent) ------------------------------------------------------------------


def _complete(result_path: Path, run: Run) -> bool:
    """Trained, and evaluated on every test set the study now names."""
    if not result_path.exists():
        return False
    return set(run.evals) <= set(json.loads(result_path.read_text())["evals"])


def run_study(runs: list[Run], out: Path, jobs: int, budget: int, threads: int | None = None) -> None:
    """Runs every run not yet done, ``jobs`` at a time (each a child process with
    ``threads = cores // jobs``), in dependency order, with a progress bar."""
    from micronet.runtime.machine import physical_cores
    from tqdm.auto import tqdm

    threads = threads or max(1, physical_cores() // jobs)
    pending = [r for r in runs if not _complete(out / r.name / "result.json", r)]
    done = {r.name for r in runs if r not in pending}
    failed: dict[str, str] = {}
    bar = tqdm(total=len(runs), initial=len(done), desc=f"paper study (budget {budget})", unit="run")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def launch(run: Run) -> int:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--budget", str(budget), "--out", str(out.parent),
               "--run", run.name, "--threads", str(threads)]
        log = (out / f"{run.name}.log").open("a")
        with log:
            return subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    running: dict[Future[int], Run] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            ready = [r for r in pending if all(n in done for n in r.needs)]
            blocked = [r for r in pending if any(n in failed for n in r.needs)]
            for r in blocked:
                failed[r.name] = "a run it needs failed"
                pending.remove(r)
                bar.update(1)
            for r in ready[: max(0, jobs - len(running))]:
                pending.remove(r)
                running[pool.submit(launch, r)] = r
                bar.set_postfix_str(", ".join(x.name for x in running.values()))
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                r = running.pop(fut)
                if fut.result() == 0 and _complete(out / r.name / "result.json", r):
                    done.add(r.name)
                else:
                    failed[r.name] = f"exit {fut.result()}, see {out / (r.name + '.log')}"
                bar.update(1)
    bar.close()
    for name, why in failed.items():
        print(f"run {name} failed: {why}", file=sys.stderr)


def collect(runs: list[Run], out: Path, budget: int) -> dict[str, Any]:
    """paper.json's content: every finished run's result, with the study's settings."""
    results = {}
    for r in runs:
        path = out / r.name / "result.json"
        if path.exists():
            results[r.name] = json.loads(path.read_text())
    return {
        "budget": budget, "seed_table1": SEED_TABLE1, "study_options": STUDY_OPTIONS, "lambdas": LAMBDAS,
        "fractions": FRACTIONS, "freeze_blocks": FREEZE, "gammas": GAMMAS, "aux_fraction": AUX_FRACTION,
        "monuseg_split": MONUSEG_SPLIT.relative_to(REPO).as_posix(), "complete": len(results) == len(runs),
        "monuseg_train_images": sum(1 for line in MONUSEG_SPLIT.read_text().splitlines()[1:] if line.endswith(",train")),
        "runs": results, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=600, help="iterations per run (fine-tuning runs: half)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cores / jobs threads)")
    parser.add_argument("--only", nargs="+", choices=GROUPS, help="these groups only (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "paper", help="run folders (b<budget>/<run> inside)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="regenerate docs/paper.md from --results")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # one run, in a child process
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: physical cores / jobs)")
    args = parser.parse_args()

    from report import write_report  # benchmarks/paper/report.py

    if args.report_only:
        write_report(json.loads(args.results.read_text()))
        return
    out = args.out / f"b{args.budget}"
    out.mkdir(parents=True, exist_ok=True)
    runs = plan(args.budget, out)
    if args.run:
        run = next((r for r in runs if r.name == args.run), None)
        if run is None:
            raise SystemExit(f"--run: no run {args.run!r} in the study")
        run_one(run, out, args.threads or 1)
        return
    chosen = [r for r in runs if args.only is None or r.group in args.only]
    names = {r.name for r in chosen}
    chosen = [r for r in runs if r.name in names or any(r2.name in names and r.name in r2.needs for r2 in chosen)]
    run_study(chosen, out, args.jobs, args.budget, args.threads)
    data = collect(runs, out, args.budget)
    from micronet.runtime.files import replace_atomically

    args.results.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1) + "\n"
    replace_atomically(args.results, lambda tmp: tmp.write_text(text))
    write_report(data)


if __name__ == "__main__":
    main()
