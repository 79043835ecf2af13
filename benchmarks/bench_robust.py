"""Robustness to stain, brightness, focus and compression: each model's F1 on CRCHisto test
and MoNuSeg held-out under graded, deterministic perturbations, against its clean F1 and
against the classical detector under the same perturbation (issue 19, item 4).

    python benchmarks/bench_robust.py                                   # bundled default and fast-cpu
    python benchmarks/bench_robust.py --model default --label default --model runs/new.onnx --label new \\
        --normalize reinhard --normalize macenko [--grades middle,strongest] [--families darken,blur] [--limit N]

``--model`` takes an ``.onnx`` file or a bundled name (``micronet.runtime.bundled``);
``--label`` names the ``--model`` before it and ``--tta`` (``none``, ``flips``, ``dihedral``) sets its
test-time augmentation. Each model runs in
``Detector(path, device="cpu")`` at its own threshold ξ, with the Detector's default
normalisation and its ``--tta``, by default a bundled name's own test-time augmentation
(``accurate``: dihedral, 8 passes, as ``Detector("accurate")`` runs it); each ``--normalize METHOD`` (``none`` for ``None``) adds one row per model
with ``Detector(..., normalize=METHOD)``, when this checkout's Detector has that argument
(otherwise those rows are skipped and the results say so). The classical peer
(``benchmarks/classical.py``) runs at the parameters tuned on CRCHisto train + val,
``results/classical_params.json``.

Data and scoring, as ``bench_pareto.py``: CRCHisto test (20 images, 0.55 µm/px, radius
6 px) and MoNuSeg held-out (the 6 images of split ``test`` in ``paper/monuseg_split.csv``,
0.25 µm/px, passed as ``mpp`` so the Detector resamples; radius 16 px); pooled F1 of
``metrics.evaluate_images`` per data set.

Perturbations (:data:`FAMILIES` of ``_perturbations.py``), on the image's own uint8 RGB
pixels, each level graded ``mild`` / ``middle`` / ``strong`` / ``strongest``:

- **darken**: every value × 0.9, 0.7 (middle), 0.55, 0.4 (strongest).
- **gamma**: ``255 (v / 255)^γ``, γ 0.7 and 1.4 (middle), 0.5 and 2.0 (strongest).
- **hue**: rotation of RGB about the grey axis by ±0.03, ±0.06 (middle), ±0.1 (strongest) turn
  (positive: red toward green, blue toward red).
- **HED jitter**: per image, each stain's optical density (natural log, OD = −ln(v / 255),
  unmixed with scikit-image's Ruifrok–Johnston ``hed_from_rgb``) scaled by
  ``1 + σ a`` and shifted by ``σ b``, ``a, b ~ U(−1, 1)`` per stain (H, E, DAB), σ 0.05,
  0.1 (middle), 0.2 (strongest). The draws depend on ``--seed`` and the image's name only,
  so every strength pushes an image the same way, further.
- **blur**: Gaussian σ 0.5, 1 (middle), 1.5, 2 (strongest) pixels of the image (so
  weaker, in µm, on MoNuSeg's 0.25 µm/px than on CRCHisto's 0.55).
- **JPEG**: Pillow quality 90, 50 (middle), 30, 20 (strongest), its default 4:2:0 chroma.
- **camera**: a microscope-camera tile (the issue's tiles are darker, softer and more
  tinted), in the order light takes: blur, exposure × tint, gamma, JPEG. ``A`` (mild):
  σ 0.5, × 0.8, γ 1.1, q 85; ``B`` (middle): σ 0.75, × 0.7, warm tint (1, 0.93, 0.82),
  γ 1.15, q 80; ``C`` (strongest): σ 1, × 0.6, the issue's tint (1, 0.82, 0.97: its tiles'
  mean RGB over CRCHisto's, relative to red), γ 1.3, q 70, which takes CRCHisto's mean RGB
  (210, 174, 212) to about the issue's tiles' (105, 71, 103).

Targets (the issue's), checked for every network row on each data set: at each ``middle``
level ≥ 95 % of the row's clean F1; at each ``strongest`` level ≥ 85 % of it **and** above
the classical detector's F1 at that level. A pass/fail summary is printed and stored.

Writes ``results/robust.json`` (machine, command, perturbations, rows, every F1 with
precision, recall and % of clean, each perturbed set's mean RGB, the target checks),
``robust.md`` (tables and summary) and ``robust.png`` (F1 against strength, one panel per
family and data set, a line per row), each by a rename of a complete file. The machine is
named because the int8 model's numbers depend on the CPU's kernels. ``--limit N`` runs
the first N images of each set (a quick check, marked as such).
"""

from __future__ import annotations

import argparse
import inspect
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classical  # noqa: E402
from _common import DATA, REPO, RESULTS, run_line  # noqa: E402
from _perturbations import FAMILIES, GRADES, Perturbation, perturbations  # noqa: E402
from bench_pareto import CLASSICAL, CRCHISTO_RADIUS, MONUSEG_RADIUS, MONUSEG_SPLIT  # noqa: E402

TARGET_MIDDLE = 0.95  # of clean F1, at every middle level
TARGET_STRONGEST = 0.85  # of clean F1, at every strongest level, and above the classical F1
CLEAN = "clean"
UNSET = object()  # a row that leaves the Detector's normalize= at its default


# --- rows ------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the benchmark: a model with one normalisation, or the classical peer."""

    label: str
    model: str
    normalize: Any = UNSET
    run: Callable[[np.ndarray, float], np.ndarray] | None = None
    record: dict[str, Any] = field(default_factory=dict)
    tta: str | None = None  # --tta: "none", "flips", "dihedral"; None: a bundled name's own


class _ModelAction(argparse.Action):
    """``--model`` starts a row; ``--label`` and ``--tta`` set the last one's label and
    test-time augmentation."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any, option: str | None = None) -> None:
        models: list[list[str | None]] = getattr(namespace, "models", None) or []
        slot = {"--label": 1, "--tta": 2}.get(option or "")
        if slot is None:
            models.append([value, None, None])
        elif not models:
            parser.error(f"{option}: give it after the --model it belongs to")
        elif models[-1][slot] is not None:
            parser.error(f"{option}: {models[-1][0]} already has {option} {models[-1][slot]!r}")
        else:
            models[-1][slot] = value
        namespace.models = models


def _normalize_default() -> Any:
    """The default of ``Detector(normalize=...)``, or :data:`UNSET` when it has no such argument."""
    from micronet.runtime.detector import Detector

    param = inspect.signature(Detector).parameters.get("normalize")
    return UNSET if param is None else param.default


def model_rows(models: list[tuple[str, str, str | None]], methods: list[str], notes: list[str]) -> list[Row]:
    """One row per model, plus one per model and ``--normalize`` method when the Detector
    takes ``normalize=`` (else a note says which rows were skipped)."""
    default = _normalize_default()
    rows = []
    for model, label, tta in models:
        rows.append(Row(label, model, tta=tta))
        for method in methods:
            if default is UNSET:
                notes.append(f"{label} + normalize={method}: skipped, this checkout's Detector has no normalize= argument")
                continue
            rows.append(Row(f"{label} + {method}", model, None if method == "none" else method, tta=tta))
    return rows


def build_runners(rows: list[Row]) -> None:
    """Each model row's Detector on the CPU and its description, in place."""
    from micronet.runtime.bundled import bundled_tta, resolve_model
    from micronet.runtime.detector import Detector

    default = _normalize_default()
    for row in rows:
        path = resolve_model(row.model)
        tta = bundled_tta(row.model) if row.tta is None else (False if row.tta == "none" else row.tta)
        kwargs: dict[str, Any] = {"device": "cpu", "tta": tta}
        if row.normalize is not UNSET:
            kwargs["normalize"] = row.normalize
        try:
            det = Detector(str(path), **kwargs)
        except (ValueError, TypeError) as exc:
            raise SystemExit(f"--model {row.model} ({row.label}): {exc}") from exc
        row.run = lambda rgb, mpp, d=det: d.detect(rgb, mpp=mpp).xy
        in_effect = row.normalize if row.normalize is not UNSET else (None if default is UNSET else default)
        row.record = {
            "label": row.label,
            "model": row.model,
            "file": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
            "kind": "network",
            "normalize": in_effect,
            "normalize_supported": default is not UNSET,
            "precision": det.info.precision,
            "model_mpp": det.info.mpp,
            "threshold": det.info.threshold,
            "backend": det.backend_name,
            "tta": det.tta,
            "deblur": getattr(det, "deblur", None),
        }


def classical_row() -> Row:
    params = classical.load_params()
    record = {"label": CLASSICAL, "model": "benchmarks/classical.py", "kind": "classical", "params": asdict(params), "normalize": None}
    return Row(CLASSICAL, "benchmarks/classical.py", None, lambda rgb, mpp: classical.detect(rgb, mpp, params), record)


# --- the run ---------------------------------------------------------------------------


def load_sets(limit: int | None) -> dict[str, Any]:
    """``{"crchisto": PointDataset, "monuseg": PointDataset}``: CRCHisto test, MoNuSeg held-out."""
    from micronet.runtime.evaluation.datasets import load_point_folder

    sets = {"crchisto": load_point_folder(DATA / "crchisto", "test"), "monuseg": load_point_folder(DATA / "monuseg", MONUSEG_SPLIT)}
    if limit:
        sets = {k: d.subset(list(range(min(limit, len(d))))) for k, d in sets.items()}
    return sets


RADIUS = {"crchisto": CRCHISTO_RADIUS, "monuseg": MONUSEG_RADIUS}
SET_NAMES = {"crchisto": "CRCHisto test", "monuseg": "MoNuSeg held-out"}


def run(rows: list[Row], sets: dict[str, Any], levels: list[Perturbation], seed: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, list[float]]]]:
    """Every row on every set under every level (and clean): flat score records, and each
    perturbed set's mean RGB. Each image is perturbed once per level, for all rows."""
    from micronet.runtime.evaluation.metrics import evaluate_images

    scores, mean_rgb = [], {name: {} for name in sets}
    bar = tqdm(total=(len(levels) + 1) * len(rows) * len(sets), desc="levels × rows × sets")
    for level in [None, *levels]:
        key = CLEAN if level is None else level.label
        for name, data in sets.items():
            images = data.images if level is None else [level(im, seed, f"{name}/{n}") for im, n in zip(data.images, data.names)]
            mean_rgb[name][key] = [round(float(v), 1) for v in np.mean([im.reshape(-1, 3).mean(0) for im in images], axis=0)]
            for row in rows:
                bar.set_postfix_str(f"{key} · {name} · {row.label}")
                pooled = evaluate_images([row.run(im, data.mpp) for im in images], data.points, RADIUS[name]).pooled
                where = {"row": row.label, "set": name, "perturbation": key, "family": level and level.family, "grade": level and level.grade}
                scores.append({**where, "f1": pooled.f1, "precision": pooled.precision, "recall": pooled.recall})
                bar.update()
    bar.close()
    clean = {(s["row"], s["set"]): s["f1"] for s in scores if s["perturbation"] == CLEAN}
    for s in scores:
        base = clean[(s["row"], s["set"])]
        s["pct_of_clean"] = 100.0 * s["f1"] / base if base > 0 else None
    return scores, mean_rgb


def check_targets(scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets for each network row at each middle and strongest level."""
    f1 = {(s["row"], s["set"], s["perturbation"]): s for s in scores}
    checks = []
    for s in scores:
        if s["row"] == CLASSICAL or s["grade"] not in ("middle", "strongest"):
            continue
        need = TARGET_MIDDLE if s["grade"] == "middle" else TARGET_STRONGEST
        ratio = (s["pct_of_clean"] or 0.0) / 100.0
        check = {k: s[k] for k in ("row", "set", "perturbation", "grade", "f1", "pct_of_clean")}
        check["need_pct_of_clean"] = 100.0 * need
        failures = [] if ratio >= need else [f"{100 * ratio:.1f} % of clean < {100 * need:.0f} %"]
        if s["grade"] == "strongest":
            peer = f1[(CLASSICAL, s["set"], s["perturbation"])]["f1"]
            check["classical_f1"] = peer
            if not s["f1"] > peer:
                failures.append(f"F1 {s['f1']:.4f} not above classical {peer:.4f}")
        check.update(passed=not failures, failures=failures)
        checks.append(check)
    return checks


def summary(checks: list[dict[str, Any]], rows: list[Row]) -> list[str]:
    """One line per network row (counts of passed checks) and one per failure."""
    lines = []
    for row in rows:
        if row.label == CLASSICAL:
            continue
        mine = [c for c in checks if c["row"] == row.label]
        verdict = "PASS" if mine and all(c["passed"] for c in mine) else ("no middle/strongest level run" if not mine else "FAIL")
        parts = []
        for grade in ("middle", "strongest"):
            of = [c for c in mine if c["grade"] == grade]
            if of:
                parts.append(f"{grade} {sum(c['passed'] for c in of)}/{len(of)}")
        lines.append(f"- **{row.label}**: {verdict} ({', '.join(parts) or 'none'} checks passed)")
        lines += [f"  - {SET_NAMES[c['set']]}, {c['perturbation']}: {'; '.join(c['failures'])}" for c in mine if not c["passed"]]
    return lines


# --- outputs ---------------------------------------------------------------------------


def _cell(s: dict[str, Any], failed: set[tuple[str, str, str]]) -> str:
    if s["perturbation"] == CLEAN:
        return f"{s['f1']:.4f}"
    pct = "–" if s["pct_of_clean"] is None else f"{s['pct_of_clean']:.1f} %"
    mark = " ✗" if (s["row"], s["set"], s["perturbation"]) in failed else ""
    return f"{s['f1']:.4f} ({pct}){mark}"


def table(payload: dict[str, Any]) -> str:
    """The markdown: caption, one table per data set, notes, the target summary."""
    labels = [r["label"] for r in payload["rows"]]
    by = {(s["row"], s["set"], s["perturbation"]): s for s in payload["scores"]}
    failed = {(c["row"], c["set"], c["perturbation"]) for c in payload["targets"]["checks"] if not c["passed"]}
    lines = [
        "Robustness: pooled F1 under each perturbation (and % of the row's own clean F1), each network at its own ξ on the CPU. "
        f"Targets: middle ≥ {100 * TARGET_MIDDLE:.0f} % of clean; strongest ≥ {100 * TARGET_STRONGEST:.0f} % of clean and above `{CLASSICAL}`; "
        "✗ marks a miss. Perturbations: `benchmarks/bench_robust.py` (its docstring); seed "
        f"{payload['seed']}.",
    ]
    if payload["limit"]:
        lines += ["", f"**A check on the first {payload['limit']} image(s) of each set, not a result.**"]
    for name, n in payload["images"].items():
        lines += ["", f"**{SET_NAMES[name]}** ({n} images, radius {RADIUS[name]:g} px)", ""]
        lines += ["| perturbation | grade | mean RGB | " + " | ".join(labels) + " |", "|---|---|---|" + "---:|" * len(labels)]
        for key, grade in [(CLEAN, ""), *((p["key"], p["grade"]) for p in payload["perturbations"])]:
            rgb = ", ".join(f"{v:.0f}" for v in payload["mean_rgb"][name][key])
            cells = " | ".join(_cell(by[(label, name, key)], failed) for label in labels)
            lines.append(f"| {key} | {grade} | ({rgb}) | {cells} |")
    p = next(r for r in payload["rows"] if r["kind"] == "classical")["params"]
    lines += [
        "",
        f"`{CLASSICAL}`: `benchmarks/classical.py`, hematoxylin of `rgb2hed`, Gaussian σ {p['sigma_um']:g} µm, maxima ≥ {p['min_distance_um']:g} µm apart "
        f"above {p['threshold']:g}, tuned on CRCHisto train + val. The issue's camera tiles have mean RGB about (105, 71, 103).",
        *(f"Note: {n}" for n in payload["notes"]),
        "",
        "Targets:",
        "",
        *payload["targets"]["summary"],
    ]
    return "\n".join(lines)


def _x_positions(family: str, keys: list[str]) -> tuple[list[str], list[int]]:
    """Tick labels with ``clean`` at its place among the levels run, and each one's x."""
    ordered = [label for label, _, _ in FAMILIES[family].levels]
    ordered.insert(FAMILIES[family].clean_at, CLEAN)
    run_labels = [o for o in ordered if o == CLEAN or o in keys]
    return run_labels, list(range(len(run_labels)))


def plot(payload: dict[str, Any], path: Path) -> None:
    """F1 against strength: a panel per (data set, family), a line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(p["family"] for p in payload["perturbations"]))
    sets = list(payload["images"])
    fig, axes = plt.subplots(len(sets), len(families), figsize=(2.9 * len(families), 3.0 * len(sets)), squeeze=False, sharey="row")
    by = {(s["row"], s["set"], s["perturbation"]): s["f1"] for s in payload["scores"]}
    keys = [p["key"] for p in payload["perturbations"]]
    for i, name in enumerate(sets):
        for j, family in enumerate(families):
            ax = axes[i][j]
            ticks, xs = _x_positions(family, keys)
            for k, r in enumerate(payload["rows"]):
                is_classical = r["kind"] == "classical"
                ys = [by[(r["label"], name, t)] for t in ticks]
                style = {"color": "0.4", "marker": "s", "linestyle": "--"} if is_classical else {"color": f"C{k}", "marker": "o"}
                ax.plot(xs, ys, label=r["label"], markersize=4, linewidth=1.3, **style)
            ax.set_xticks(xs, ticks, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{FAMILIES[family].title} · {SET_NAMES[name]}", fontsize=8)
            ax.grid(True, alpha=0.3)
        axes[i][0].set_ylabel(f"F1 (radius {RADIUS[name]:g} px)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    note = f" — check on {payload['limit']} image(s) per set" if payload["limit"] else ""
    fig.suptitle(f"F1 under perturbation, {payload['machine']['cpu']}{note}", fontsize=9)
    fig.tight_layout()
    from micronet.runtime.files import replace_atomically

    replace_atomically(path, lambda tmp: (fig.savefig(tmp, format="png", dpi=110), tmp.chmod(0o644)))
    plt.close(fig)


def write_outputs(name: str, payload: dict[str, Any]) -> None:
    """``<name>.json``, ``<name>.md`` (machine line first) and ``<name>.png`` in
    ``benchmarks/results``, each written whole then renamed."""
    from micronet.runtime.files import replace_atomically

    RESULTS.mkdir(parents=True, exist_ok=True)
    classical.write_json_atomically(RESULTS / f"{name}.json", payload)
    md = f"Machine: {run_line(payload['machine'])}.\n\n{table(payload)}\n"
    replace_atomically(RESULTS / f"{name}.md", lambda tmp: (tmp.write_text(md), tmp.chmod(0o644)))
    plot(payload, RESULTS / f"{name}.png")
    print(md)


def _names(valid: Sequence[str], what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        wrong = [n for n in names if n not in valid]
        if not names or wrong:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} among {', '.join(valid)}; got {text!r}")
        return names

    return parse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action=_ModelAction, help="an .onnx file or bundled name (repeatable; default: default, fast-cpu)")
    parser.add_argument("--label", action=_ModelAction, help="the row label of the --model before it (default: the argument)")
    parser.add_argument(
        "--tta", action=_ModelAction, choices=["none", "flips", "dihedral"], help="test-time augmentation of the --model before it (default: a bundled name's own, else none)"
    )
    parser.add_argument(
        "--normalize", action="append", default=[], metavar="METHOD", help="also run each model with Detector(normalize=METHOD); 'none' for None (repeatable)"
    )
    parser.add_argument("--families", type=_names(list(FAMILIES), "families"), default=list(FAMILIES), help=f"default: all ({','.join(FAMILIES)})")
    parser.add_argument("--grades", type=_names(GRADES, "grades"), default=list(GRADES), help=f"levels to run (default: all, {','.join(GRADES)})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the HED jitter draws (default 0)")
    parser.add_argument("--limit", type=int, help="only the first N images of each set (a quick check)")
    parser.add_argument("--name", default="robust", help="results/<name>.json/.md/.png (default robust)")
    args = parser.parse_args()
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit: expected an integer >= 1, got {args.limit}")
    from micronet.runtime.bundled import BUNDLED_MODELS, resolve_model

    args.models = [(m, label or m, tta) for m, label, tta in getattr(args, "models", None) or [[n, None, None] for n in ("default", "fast-cpu")]]
    for model, _, _ in args.models:
        path = resolve_model(model)
        if path.suffix.lower() != ".onnx" or not path.is_file():
            parser.error(f"--model {model}: expected an .onnx file or a bundled name ({', '.join(BUNDLED_MODELS)}); {path} is neither")
    labels = [label for _, label, _ in args.models]
    if len(set(labels)) != len(labels) or CLASSICAL in labels:
        parser.error(f"--label: expected distinct labels, not {CLASSICAL!r}; got {labels}")
    return args


def main() -> None:
    args = parse_args()
    from micronet.runtime.machine import describe_machine

    notes: list[str] = []
    rows = model_rows(args.models, args.normalize, notes)
    build_runners(rows)
    rows.append(classical_row())
    levels = perturbations(args.families, args.grades)
    sets = load_sets(args.limit)
    scores, mean_rgb = run(rows, sets, levels, args.seed)
    checks = check_targets(scores)
    payload = {
        "machine": describe_machine(measure_peak=False),  # F1 only: no speed yardstick needed
        "command": shlex.join(["python", "benchmarks/bench_robust.py", *sys.argv[1:]]),
        "limit": args.limit,
        "seed": args.seed,
        "families": args.families,
        "grades": args.grades,
        "images": {name: len(d) for name, d in sets.items()},
        "mpp": {name: d.mpp for name, d in sets.items()},
        "radius_px": RADIUS,
        "perturbations": [{"key": p.label, "family": p.family, "label": p.label, "grade": p.grade, "params": p.params} for p in levels],
        "rows": [r.record for r in rows],
        "notes": notes,
        "mean_rgb": mean_rgb,
        "scores": scores,
        "targets": {
            "middle_pct_of_clean": 100 * TARGET_MIDDLE,
            "strongest_pct_of_clean": 100 * TARGET_STRONGEST,
            "strongest_above": CLASSICAL,
            "checks": checks,
            "summary": summary(checks, rows),
        },
    }
    write_outputs(args.name, payload)


if __name__ == "__main__":
    main()
