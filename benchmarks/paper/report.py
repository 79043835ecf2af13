"""docs/paper.md and its plots (docs/paper/*.png) from benchmarks/results/paper.json,
which ``benchmarks/paper/run.py`` writes. Every number in the page comes from that file.

    python benchmarks/paper/run.py --report-only
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "paper.md"
PLOTS = REPO / "docs" / "paper"


def _f(v: Any, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _ms(stat: dict[str, Any], scale: float = 1.0, spec: str = ".1f") -> str:
    if stat["mean"] is None:
        return "–"
    std = "" if stat["std"] is None else f" ± {stat['std'] * scale:{spec}}"
    return f"{stat['mean'] * scale:{spec}}{std}"


def _pooled(ev: dict[str, Any]) -> str:
    p = ev["pooled"]
    return f"{p['precision'] * 100:.1f} | {p['recall'] * 100:.1f} | **{p['f1'] * 100:.1f}** | {_f(p['mean_distance'], '.2f')}"


def _lr_note(run: dict[str, Any]) -> str:
    """``" (lr 0.001, diverged at 0.01)"`` for a run restarted at a lower lr, else ``""``."""
    if not run.get("diverged_at_lr"):
        return ""
    return f" (lr {run['config']['lr']:g}, diverged at {run['diverged_at_lr'][0]:g})"


def _fraction_label(fraction: float, n_images: int | None) -> str:
    """``"10 % (1 image)"``: the trainer keeps max(1, round(f·n)) images, so small
    fractions of a small set can round to the same images (and the same run)."""
    if not n_images:
        return f"{round(fraction * 100)} %"
    k = max(1, round(fraction * n_images))
    return f"{round(fraction * 100)} % ({k} image{'s' if k > 1 else ''})"


def _machine_line(runs: dict[str, Any]) -> str:
    for r in runs.values():
        m = r.get("machine") or {}
        if m:
            flags = " ".join(m.get("isa", [])) if isinstance(m.get("isa"), list) else m.get("isa", "")
            return f"{m.get('cpu', m.get('cpu_model', '?'))} [{flags}], {m.get('physical_cores', '?')} cores"
    return "unknown"


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig: Any, ax: Any, path: Path, drawn: bool, legend_size: float | None = None) -> bool:
    """Grid, legend and layout; saves the figure when something was drawn, closes it."""
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=legend_size)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    fig.clf()
    _pyplot().close(fig)
    return drawn


def _plot_lambda(runs: dict[str, Any], lambdas: list[float], path: Path) -> bool:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    drawn = False
    for lam in lambdas:
        r = runs.get("table1_micronet" if lam == 5.0 else f"lambda_{lam:g}")
        if not r:
            continue
        curve = r["evals"]["crchisto_test"]["curve"]
        ax.plot([c["recall"] for c in curve], [c["precision"] for c in curve], label=f"λ = {lam:g}")
        drawn = True
    ax.set(xlabel="recall", ylabel="precision", title="MicroNet on CRCHisto test (r = 6 px), by λ of Eq. 2", xlim=(0, 1), ylim=(0, 1))
    return _finish(fig, ax, path, drawn)


def _plot_finetune(runs: dict[str, Any], fractions: list[float], path: Path) -> bool:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    drawn = False
    for kind, label in (("scratch", "from scratch"), ("init", "fine-tuned"), ("frozen", "fine-tuned, blocks 1-5 frozen")):
        xs, ys = [], []
        for f in fractions:
            r = runs.get(f"finetune_{kind}_{round(f * 100)}")
            if r:
                xs.append(f * 100)
                ys.append(r["evals"]["monuseg_test"]["pooled"]["f1"])
        if xs:
            ax.plot(xs, ys, marker="o", label=label)
            drawn = True
    ax.set(xlabel="% of the MoNuSeg training images", ylabel="F1 on the MoNuSeg test images (r = 16 px)", ylim=(0, 1))
    return _finish(fig, ax, path, drawn)


def _plot_aux(runs: dict[str, Any], gammas: list[float], path: Path) -> bool:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    base = runs.get("table1_micronet")
    xs, crc, mon = [], [], []
    for g in gammas:
        r = runs.get(f"aux_gamma_{g:g}")
        if r:
            xs.append(g)
            crc.append(r["evals"]["crchisto_test"]["pooled"]["f1"])
            mon.append(r["evals"]["monuseg_test"]["pooled"]["f1"])
    if not xs:
        plt.close(fig)
        return False
    ax.plot(xs, crc, marker="o", label="CRCHisto test (target, r = 6 px)")
    ax.plot(xs, mon, marker="s", label="MoNuSeg test (auxiliary organs, r = 16 px)")
    if base:
        ax.axhline(base["evals"]["crchisto_test"]["pooled"]["f1"], ls="--", color="C0", alpha=0.6, label="CRCHisto, no auxiliary data")
    ax.set(xscale="log", xlabel="γ (weight of the target-domain loss)", ylabel="F1")
    return _finish(fig, ax, path, True, legend_size=8)


def write_report(data: dict[str, Any]) -> Path:
    """Writes docs/paper.md (and the plots) from paper.json's content."""
    runs: dict[str, Any] = data["runs"]
    PLOTS.mkdir(parents=True, exist_ok=True)
    lines = _intro(data, runs) + _table1(data, runs)
    lines += _lambda_section(data, runs) + _finetune_section(data, runs) + _aux_section(data, runs)
    lines += ["", "## What reproduces and what does not", ""] + findings(data)
    DOC.write_text("\n".join(lines) + "\n")
    return DOC


def _intro(data: dict[str, Any], runs: dict[str, Any]) -> list[str]:
    """The title, how this study differs from the paper, and Table 1's heading."""
    budget = data["budget"]
    return [
        "# The seed paper's study, at an equal budget",
        "",
        "Generated by `python benchmarks/paper/run.py --budget "
        f"{budget}` from `benchmarks/results/paper.json` (regenerate the page alone with `--report-only`). "
        f"Machine: {_machine_line(runs)}. "
        + ("All runs finished." if data.get("complete") else "**Not every run has finished yet**: missing rows are marked –."),
        "",
        "## How this differs from the paper",
        "",
        f"- **Budget.** Every run here has {budget} iterations (fine-tuning runs {max(1, budget // 2)}), batch 4 of 200² crops; the paper "
        "trains for 10⁵ iterations. Everything is trained on a 2-core CPU, so these are short-schedule results: they rank "
        "methods at an equal, small budget and say nothing about where each would converge.",
        "- **Schedule.** One schedule for all: SGD with Nesterov momentum 0.9, lr 0.01 (a run whose loss or map diverges "
        "starts again at lr 0.001, and its row says so), ÷10 at 60 % and 85 % of the budget, "
        "weight decay 1e-6; the checkpoint with the best validation F1 is kept with its threshold ξ (validation: CRCHisto's "
        "10 validation images; for fine-tuning, the target training images used). Same seed, so every run of a data set "
        "draws the same crops and augmentation.",
        "- **Data.** The paper's Table 1 pools 23 organs at 40× matched within 16 px. Here: CRCHistoPhenotypes (colorectal, "
        "20×, 0.55 µm/px, published split, matched within 6 px) for training and Table 1, and the 13 MoNuSeg images "
        "(five organs, 40×, matched within 16 px) as unseen organs. The seed's numbers are beside ours for orientation, "
        "not as a like-for-like comparison.",
        "- **Baselines.** FCN-8s (VGG-16 layout), U-Net, FCRN-A/B and FRCN follow their papers' topology "
        "(`trainer/baselines.py`), with batch norm after every convolution so that one optimiser and learning rate suit "
        "all; FCN and U-Net are pixel classifiers of a nucleus disk (radius 6 px, binary cross-entropy), FCRN-A/B regress "
        "Gaussian density maps (σ = 3 px, ×100, MSE), FRCN and MicroNet regress Eq. 1's proximity map with Eq. 2. Every "
        "model's detections are the local maxima of its map above its own validation ξ (min distance 3 px).",
        "- **Widths.** " + ", ".join(
            f"{MODEL_LABEL.get(k, k)} {('base ' + str(v['base'])) if 'base' in v else ('lean 16-32-64-64 (the paper’s and, since issue 13, the bundled default’s: 32-64-128-128)' if k == 'micronet' else 'paper widths')}"
            for k, v in data["study_options"].items()
        ) + ". GFLOP per 500² and parameters are in the table, because widths differ.",
        "",
        "## Table 1: CRCHisto test (20 images, r = 6 px) and the MoNuSeg images (13, r = 16 px)",
        "",
        "P, R, F1 in %, ED (mean distance of matched pairs) in pixels. Mean ± std over the test images, as the paper reports, "
        "then pooled over all nuclei.",
        "",
        "| model | params | GFLOP / 500² | P | R | F1 | ED | pooled P | pooled R | pooled F1 | pooled ED | MoNuSeg F1 (pooled) | "
        "seed paper P / R / F1 / ED |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]


def _table1(data: dict[str, Any], runs: dict[str, Any]) -> list[str]:
    """Table 1's rows, one per model (– for a run not finished), and the training times."""
    lines = []
    for model in data["study_options"]:
        r = runs.get(f"table1_{model}")
        seed = data["seed_table1"].get(model)
        seed_text = " / ".join(f"{v:g}" for v in seed) if seed else "–"
        if not r:
            lines.append(f"| {MODEL_LABEL.get(model, model)} | – | – | – | – | – | – | – | – | – | – | – | {seed_text} |")
            continue
        ev = r["evals"]["crchisto_test"]
        s = ev["per_image_mean_std"]
        mon = r["evals"]["monuseg_all"]["pooled"]["f1"]
        label = MODEL_LABEL.get(model, model) + _lr_note(r)
        lines.append(
            f"| {label} | {r['parameters'] / 1e6:.2f} M | {r['gflop_500']:.1f} | "
            f"{_ms(s['precision'], 100)} | {_ms(s['recall'], 100)} | {_ms(s['f1'], 100)} | {_ms(s['mean_distance'], 1, '.2f')} | "
            f"{_pooled(ev)} | {mon * 100:.1f} | {seed_text} |"
        )
    lines += ["", "Training wall time per run (one torch thread; the CPU was shared with other jobs, so read these as rough "
        "proportions, and the GFLOP column as the cost): " + ", ".join(
        f"{MODEL_LABEL.get(m, m)} {runs[f'table1_{m}']['train_seconds'] / 60:.0f} min"
        for m in data["study_options"] if f"table1_{m}" in runs and runs[f"table1_{m}"].get("train_seconds")
    ) + ".", ""]
    return lines


def _lambda_section(data: dict[str, Any], runs: dict[str, Any]) -> list[str]:
    """λ of Eq. 2 (Fig. 9): one row per λ, and the PR curves' plot."""
    lines = ["## λ of Eq. 2 (Fig. 9)", "", "MicroNet on CRCHisto test (r = 6 px), at each run's validation ξ and at the best ξ "
             "on the test set itself (the curve's best point).", "",
             "| λ | P | R | F1 | ED | best F1 on the curve |", "|---|---|---|---|---|---|"]
    for lam in data["lambdas"]:
        r = runs.get("table1_micronet" if lam == 5.0 else f"lambda_{lam:g}")
        if r:
            ev = r["evals"]["crchisto_test"]
            note = _lr_note(r)
            lines.append(f"| {lam:g}{note} | {_pooled(ev)} | {ev['best_f1'] * 100:.1f} |")
        else:
            lines.append(f"| {lam:g} | – | – | – | – | – |")
    if _plot_lambda(runs, data["lambdas"], PLOTS / "lambda_pr.png"):
        lines += ["", "![PR curves by λ](paper/lambda_pr.png)"]
    return lines


def _finetune_section(data: dict[str, Any], runs: dict[str, Any]) -> list[str]:
    """Fine-tuning against training from scratch (Fig. 5): F1 per target fraction, and its plot."""
    lines = ["", "## Fine-tuning against training from scratch (Fig. 5)", "",
             f"Target: MoNuSeg, split by image (`{data['monuseg_split']}`: 7 training images, 6 test images with every organ "
             "and the only colon image). Source: Table 1's MicroNet (CRCHisto). From scratch runs at the source's pixel size "
             f"(0.55 µm/px), so only the start differs. Frozen: blocks 1–{data['freeze_blocks']} (input transition and the "
             "downsampling path). F1 (pooled, %) on the 6 MoNuSeg test images, r = 16 px.", "",
             "| target images used | " + " | ".join(_fraction_label(f, data.get("monuseg_train_images")) for f in data["fractions"]) + " |",
             "|---|" + "---|" * len(data["fractions"])]
    for kind, label in (("scratch", "from scratch"), ("init", "fine-tuned"), ("frozen", "fine-tuned, frozen")):
        cells = []
        for f in data["fractions"]:
            r = runs.get(f"finetune_{kind}_{round(f * 100)}")
            cells.append(f"{r['evals']['monuseg_test']['pooled']['f1'] * 100:.1f}" if r else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if _plot_finetune(runs, data["fractions"], PLOTS / "finetune.png"):
        lines += ["", "![fine-tuning](paper/finetune.png)"]
    return lines


def _aux_section(data: dict[str, Any], runs: dict[str, Any]) -> list[str]:
    """Auxiliary data weighted by γ (Figs. 6–8): one row per γ after the baseline, and its plot."""
    lines = ["", "## Auxiliary data weighted by γ (Figs. 6–8)", "",
             f"Target CRCHisto; auxiliary MoNuSeg's 7 training images, {data['aux_fraction']:.0%} of every batch; loss "
             "γ·L_target + L_aux (Eq. 2 each). F1 pooled, %.", "",
             "| γ | CRCHisto test P | R | F1 | ED | MoNuSeg test F1 (r = 16 px) |", "|---|---|---|---|---|---|"]
    base = runs.get("table1_micronet")
    if base:
        mt = base["evals"].get("monuseg_test")
        lines.append(f"| no auxiliary data | {_pooled(base['evals']['crchisto_test'])} | "
                     f"{(mt['pooled']['f1'] * 100) if mt else float('nan'):.1f} |")
    for g in data["gammas"]:
        r = runs.get(f"aux_gamma_{g:g}")
        if r:
            note = _lr_note(r)
            lines.append(f"| {g:g}{note} | {_pooled(r['evals']['crchisto_test'])} | {r['evals']['monuseg_test']['pooled']['f1'] * 100:.1f} |")
        else:
            lines.append(f"| {g:g} | – | – | – | – | – |")
    if _plot_aux(runs, data["gammas"], PLOTS / "aux_gamma.png"):
        lines += ["", "![auxiliary data](paper/aux_gamma.png)"]
    return lines


MODEL_LABEL = {"fcn": "FCN-8s", "unet": "U-Net", "fcrn_a": "FCRN-A", "fcrn_b": "FCRN-B", "frcn": "FRCN", "micronet": "MicroNet"}


def findings(data: dict[str, Any]) -> list[str]:
    """The paper's claims, each checked against this study's numbers (sentences built
    from paper.json, so they change when the numbers do)."""
    runs = data["runs"]
    out = _table1_findings(data, runs) + _lambda_findings(data, runs) + _finetune_findings(data, runs) + _aux_findings(data, runs)
    if not out:
        out.append("- No finished runs yet.")
    out += ["", "Short budgets favour models that learn fast; a claim this study does not reproduce at "
            f"{data['budget']} iterations may still hold at the paper's 10⁵. Raise `--budget` (a new study folder) to test that."]
    return out


def _table1_findings(data: dict[str, Any], runs: dict[str, Any]) -> list[str]:
    """Table 1's claims: best F1, lowest ED, and the best model on unseen organs."""
    out: list[str] = []
    table = {m: runs[f"table1_{m}"] for m in data["study_options"] if f"table1_{m}" in runs}
    if "micronet" in table and len(table) > 1:
        f1 = {m: r["evals"]["crchisto_test"]["pooled"]["f1"] for m, r in table.items()}
        ed = {m: r["evals"]["crchisto_test"]["pooled"]["mean_distance"] for m, r in table.items()}
        best = max(f1, key=f1.get)
        order = ", ".join(f"{MODEL_LABEL[m]} {f1[m] * 100:.1f}" for m in sorted(f1, key=f1.get, reverse=True))
        verdict = "reproduces" if best == "micronet" else "does not reproduce"
        out.append(f"- **MicroNet has the best F1 (Table 1)**: this study {verdict} it on CRCHisto test (F1 %: {order}).")
        best_ed = min(ed, key=lambda m: ed[m] if ed[m] is not None else 1e9)
        verdict = "reproduces it" if best_ed == "micronet" else f"does not reproduce (lowest: {MODEL_LABEL[best_ed]}, {ed[best_ed]:.2f} px)"
        out.append(f"- **MicroNet localises best (lowest ED)**: this study {verdict}; MicroNet's ED is {ed['micronet']:.2f} px.")
        mon = {m: r["evals"]["monuseg_all"]["pooled"]["f1"] for m, r in table.items()}
        best_mon = max(mon, key=mon.get)
        tail = "" if best_mon == "micronet" else f"; MicroNet {mon['micronet'] * 100:.1f}"
        out.append(f"- **On unseen organs** (MoNuSeg, 13 images) the best F1 is {MODEL_LABEL[best_mon]}'s "
                   f"({mon[best_mon] * 100:.1f}{tail}).")
    return out


def _lambda_findings(data: dict[str, Any], runs: dict[str, Any]) -> list[str]:
    """Fig. 9's claim: a weighted loss beats λ = 0, an intermediate λ is best."""
    out: list[str] = []
    lam = {l: runs.get("table1_micronet" if l == 5.0 else f"lambda_{l:g}") for l in data["lambdas"]}
    lam = {k: v["evals"]["crchisto_test"]["pooled"]["f1"] for k, v in lam.items() if v}
    if len(lam) > 2:
        best = max(lam, key=lam.get)
        out.append(f"- **λ (Fig. 9)**: the best F1 here is at λ = {best:g} ({lam[best] * 100:.1f}); λ = 0 gives "
                   f"{_f(lam.get(0.0) and lam[0.0] * 100, '.1f')} (the paper finds a weighted loss better than λ = 0 "
                   "and an intermediate λ best).")
    return out


def _finetune_findings(data: dict[str, Any], runs: dict[str, Any]) -> list[str]:
    """Fig. 5's claims: fine-tuning beats training from scratch; freezing the first blocks."""
    out: list[str] = []
    ft = {}
    for kind in ("scratch", "init", "frozen"):
        ft[kind] = {f: runs[f"finetune_{kind}_{round(f * 100)}"]["evals"]["monuseg_test"]["pooled"]["f1"]
                    for f in data["fractions"] if f"finetune_{kind}_{round(f * 100)}" in runs}
    common = sorted(set(ft["scratch"]) & set(ft["init"]))
    if common:
        wins = sum(ft["init"][f] > ft["scratch"][f] for f in common)
        out.append(f"- **Fine-tuning beats training from scratch (Fig. 5)**: at {wins} of {len(common)} target fractions "
                   f"here (smallest fraction: {ft['init'][common[0]] * 100:.1f} against {ft['scratch'][common[0]] * 100:.1f}).")
        frozen_common = sorted(set(ft["frozen"]) & set(ft["init"]))
        if frozen_common:
            fw = sum(ft["frozen"][f] >= ft["init"][f] for f in frozen_common)
            out.append(f"- **Freezing the first blocks** matches or beats fine-tuning everything at {fw} of {len(frozen_common)} fractions.")
    return out


def _aux_findings(data: dict[str, Any], runs: dict[str, Any]) -> list[str]:
    """Figs. 6–8's claim: auxiliary data helps the target."""
    out: list[str] = []
    base = runs.get("table1_micronet")
    aux = {g: runs[f"aux_gamma_{g:g}"] for g in data["gammas"] if f"aux_gamma_{g:g}" in runs}
    if base and aux:
        b = base["evals"]["crchisto_test"]["pooled"]["f1"]
        best = max(aux, key=lambda g: aux[g]["evals"]["crchisto_test"]["pooled"]["f1"])
        bf = aux[best]["evals"]["crchisto_test"]["pooled"]["f1"]
        verdict = "helps" if bf > b else "does not help"
        text = (f"- **Auxiliary data (Figs. 6–8)** {verdict} the target here: best γ = {best:g} gives CRCHisto F1 "
                f"{bf * 100:.1f} against {b * 100:.1f} without")
        mt = base["evals"].get("monuseg_test")
        if mt:
            am = aux[best]["evals"]["monuseg_test"]["pooled"]["f1"]
            text += f"; on the auxiliary organs' held-out images it gives {am * 100:.1f} against {mt['pooled']['f1'] * 100:.1f}"
        slow = [f"{g:g}" for g, r in aux.items() if r.get("diverged_at_lr")]
        if slow:
            text += f" (γ = {', '.join(slow)} diverged at lr 0.01 and trained at lr 0.001: not the same schedule as the others)"
        out.append(text + ".")
    return out
