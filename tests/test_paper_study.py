"""benchmarks/paper: the study's plan and the report built from paper.json."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

PAPER = Path(__file__).resolve().parents[1] / "benchmarks" / "paper"


@pytest.fixture()
def paper(monkeypatch):
    monkeypatch.syspath_prepend(str(PAPER))
    monkeypatch.syspath_prepend(str(PAPER.parent))
    for name in ("run", "report"):
        sys.modules.pop(name, None)
    return importlib.import_module("run"), importlib.import_module("report")


def test_the_plan_gives_every_model_the_same_budget_and_schedule(paper, tmp_path):
    run, _ = paper
    runs = run.plan(300, tmp_path)
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 6 + 5 + 4 + 18
    table = [r for r in runs if r.group == "table1"]
    assert {r.config["model"] for r in table} == {"fcn", "unet", "fcrn_a", "fcrn_b", "frcn", "micronet"}
    for r in table:  # equal budget: only the model (and its width) differs
        rest = {k: v for k, v in r.config.items() if k not in ("model", "model_options")}
        assert rest == {k: v for k, v in table[0].config.items() if k not in ("model", "model_options")}
        assert r.config["iterations"] == 300 and r.config["lr_milestones"] == [0.6, 0.85]
    tuned = [r for r in runs if r.name.startswith("finetune_init") or r.name.startswith("finetune_frozen")]
    assert all(r.needs == ["table1_micronet"] and r.config["init"].endswith("table1_micronet/best.safetensors") for r in tuned)
    assert all(r.config["iterations"] == 150 for r in runs if r.group == "finetune")
    # The fine-tuning target is validated on its own training images, never on the test split.
    assert all(r.config["val_split"] == r.config["train_split"] and "test" not in r.config["train_split"] for r in runs if r.group == "finetune")


def _result(f1: float, ed: float, lr: float = 0.01, diverged: list | None = None, evals=("crchisto_test",)) -> dict:
    pooled = {"precision": f1, "recall": f1, "f1": f1, "mean_distance": ed, "tp": 1, "fp": 1, "fn": 1}
    stat = {"mean": f1, "std": 0.01}
    ev = {"pooled": pooled, "per_image_mean_std": {"precision": stat, "recall": stat, "f1": stat, "mean_distance": {"mean": ed, "std": 0.1}},
          "best_f1": f1, "curve": [{"recall": 0.5, "precision": 0.6}, {"recall": 0.8, "precision": 0.5}]}
    return {"parameters": 1000, "gflop_500": 1.0, "train_seconds": 60.0, "config": {"lr": lr}, "diverged_at_lr": diverged or [],
            "evals": {k: ev for k in evals}, "machine": {"cpu": "test CPU", "isa": ["avx2"], "physical_cores": 2}}


def test_the_report_says_what_reproduces_from_the_numbers(paper, tmp_path, monkeypatch):
    _, report = paper
    monkeypatch.setattr(report, "DOC", tmp_path / "paper.md")
    monkeypatch.setattr(report, "PLOTS", tmp_path / "paper")
    both = ("crchisto_test", "monuseg_all", "monuseg_test")
    data = {
        "budget": 300, "complete": False, "seed_table1": {"micronet": (76.7, 87.8, 81.6, 3.49)},
        "study_options": {"unet": {"base": 16}, "micronet": {}}, "lambdas": (0.0, 5.0), "fractions": (0.1, 1.0),
        "freeze_blocks": 5, "gammas": (1.0,), "aux_fraction": 0.25, "monuseg_split": "benchmarks/paper/monuseg_split.csv",
        "monuseg_train_images": 7,
        "runs": {
            "table1_micronet": _result(0.70, 2.0, evals=both),
            "table1_unet": _result(0.75, 2.5, lr=0.001, diverged=[0.01], evals=both),
            "lambda_0": _result(0.60, 2.0),
        },
    }
    text = report.write_report(data).read_text()
    assert "| U-Net (lr 0.001, diverged at 0.01) | 0.00 M | 1.0 |" in text
    assert "this study does not reproduce it on CRCHisto test (F1 %: U-Net 75.0, MicroNet 70.0)" in text
    assert "this study reproduces it; MicroNet's ED is 2.00 px" in text
    assert "10 % (1 image)" in text and "100 % (7 images)" in text
    assert "**Not every run has finished yet**" in text and "| 0.1 |" not in text
    assert (tmp_path / "paper" / "lambda_pr.png").stat().st_size > 1000
