"""The speed / accuracy front on the CPU: one row per model (and the classical peer), its
compute, its accuracy on two data sets and its end-to-end speed, all from one run.

    python benchmarks/bench_pareto.py                                  # bundled models (+ the previous default, if fetched)
    python benchmarks/bench_pareto.py --model default --label default --model fast-cpu --label fast-cpu \\
        --model runs/new.onnx --label "new (lean)" --tta --baseline default [--repeat 3] [--limit N]

The previous default, for the no-argument run (``runs/`` is not committed):

    mkdir -p runs/previous_models && git show b7c6066:runtime/models/micronet_crchisto.onnx > runs/previous_models/micronet_crchisto.onnx

``--model`` takes an ``.onnx`` file or a bundled name (``default``, ``fast-cpu``;
``micronet.runtime.bundled``); ``--label``, ``--tta`` (flip test-time augmentation,
4 passes) and ``--tta-dihedral`` (8 passes; the bundled ``accurate`` runs so unasked)
apply to the ``--model`` before them. ``--baseline LABEL`` names "today's
default" (default: the row of the bundled ``default``, else the first). Each model runs
in ``Detector(path, device="cpu")`` at its own threshold ξ; the classical peer
(``benchmarks/classical.py``: colour deconvolution, Gaussian blur, local maxima) at the
parameters tuned on CRCHisto train + val, cached in ``results/classical_params.json``.

Columns:

- **GFLOP / 500²**: of a 500² image at CRCHisto's 0.55 µm/px, as the model sees it: a
  model whose metadata gives another pixel size gets the image resampled
  (``runtime.resample.resampled_size``, as the Detector does) and counts that many
  pixels. Counted on the ONNX graph with ``onnx``: the branch of a top-level ``If`` that
  this input takes (its condition, a function of the input's shape, is evaluated by
  ``onnx.reference`` on the nodes it depends on), shapes by ``onnx.shape_inference`` at
  that size; 2 FLOPs per multiply-add of each Conv, ConvTranspose, QLinearConv, MatMul
  (output elements × weight elements per output channel; for ConvTranspose input
  elements × that), as torch's flop counter counts them; biases, activations and
  quantisation nodes are not counted. With ``--tta`` ×4 (four passes), with ``--tta-dihedral`` (and the bundled ``accurate``) ×8.
- **parameters**: weight and bias elements of those nodes (batch norm folded in).
- **F1 CRCHisto test**: pooled, the 20 test images (``split.csv``), radius 6 px.
- **F1 MoNuSeg held-out**: pooled, the 6 images of split ``test`` in
  ``paper/monuseg_split.csv`` (no bundled model trained on them), 0.25 µm/px (the
  Detector resamples), radius 16 px.
- **MP/s**: megapixels of input image per second end to end (PNG read, resampling,
  tiles, inference, peaks) over the CRCHisto test images; every model and the classical
  detector take turns, one pass over the images each per round, and each one's best
  round counts (``_common.interleaved_best``), so a change in a shared machine's load
  hits them alike. The detections of the timed passes are the ones scored. A pass that
  only reads the PNGs takes its turn too: its time is in every row, and is reported.
- **MP/s per 100 GFLOP/s**: divided by this run's float32 matmul peak (NumPy's BLAS and
  ONNX Runtime's MatMul, 2048³, measured before, between and after; the highest counts).
  The runtime has no int8 matmul yardstick, so no int8 peak is recorded.
- **× classical**, **× default**: speed ratios, same run.

Writes ``results/pareto.json`` (machine, command, rows), ``pareto.md`` (the table) and
``pareto.png`` (F1 on CRCHisto against MP/s, log x), each by a rename of a complete file.
``--limit N`` runs the first N images of each set (a quick check, marked as such).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classical  # noqa: E402
from _common import (  # noqa: E402
    DATA,
    REPO,
    RESULTS,
    interleaved_best,
    matmul_peaks,
    peak_text,
    per_peak,
    run_line,
    run_machine,
)

CRCHISTO_RADIUS = 6.0  # px at 0.55 µm/px, the published CRCHisto protocol
MONUSEG_RADIUS = 16.0  # px at 0.25 µm/px, the seed paper's
MONUSEG_SPLIT = f"test@{Path(__file__).resolve().parent / 'paper' / 'monuseg_split.csv'}"
FLOP_SIZE = 500  # the user's image side, at the CRCHisto pixel size
PREVIOUS = REPO / "runs" / "previous_models" / "micronet_crchisto.onnx"
PREVIOUS_LABEL = "previous default (wide)"
CLASSICAL = "classical"  # benchmarks/classical.py; the table's footnote says what it is
READ_ONLY = "(PNG read only)"  # timed with the rows: what every row spends reading its input
COMPUTE_OPS = ("Conv", "ConvTranspose", "QLinearConv", "MatMul")


@dataclass
class ModelSpec:
    """One ``--model`` with the ``--label`` and ``--tta`` that follow it."""

    model: str
    label: str | None = None
    tta: bool | str | None = None  # None: the model's own (bundled "accurate": dihedral)


class _SpecAction(argparse.Action):
    """``--model`` starts a spec; ``--label`` and ``--tta`` complete the last one."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any, option: str | None = None) -> None:
        specs: list[ModelSpec] = getattr(namespace, "specs", None) or []
        if option == "--model":
            specs.append(ModelSpec(value))
        elif not specs:
            parser.error(f"{option}: give it after the --model it belongs to")
        elif option == "--label":
            if specs[-1].label is not None:
                parser.error(f"--label: {specs[-1].model} already has the label {specs[-1].label!r}")
            specs[-1].label = value
        elif option == "--tta-dihedral":
            specs[-1].tta = "dihedral"
        else:
            specs[-1].tta = True
        namespace.specs = specs


# --- compute of an ONNX graph --------------------------------------------------------


def _ancestors(nodes: list[Any], names: set[str]) -> list[Any]:
    """The nodes that ``names`` depend on, in graph order."""
    needed, keep = set(names), []
    for node in reversed(nodes):
        if needed & set(node.output):
            keep.append(node)
            needed |= set(node.input)
    return keep[::-1]


def _taken_graph(model: Any, height: int, width: int) -> Any:
    """The model's graph for one ``(1, height, width, 3)`` input, each top-level ``If``
    replaced by the branch it takes there (its condition may depend only on shapes)."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    conditions = [n for n in graph.node if n.op_type == "If"]
    taken: dict[str, bool] = {}
    if conditions:
        prefix = _ancestors([n for n in graph.node if n.op_type != "If"], {n.input[0] for n in conditions})
        if any(n.op_type in COMPUTE_OPS for n in prefix):
            raise ValueError("an If whose condition depends on computed data, not on the input's shape: cannot tell its branch")
        outputs = [helper.make_tensor_value_info(n.input[0], onnx.TensorProto.BOOL, None) for n in conditions]
        probe = helper.make_model(helper.make_graph(prefix, "conditions", list(graph.input), outputs, list(graph.initializer)), opset_imports=model.opset_import)
        feed = {graph.input[0].name: np.zeros((1, height, width, 3), np.uint8)}
        values = ReferenceEvaluator(probe).run(None, feed)
        taken = {n.input[0]: bool(v) for n, v in zip(conditions, values)}
    nodes, initializers = [], list(graph.initializer)
    for node in graph.node:
        if node.op_type != "If":
            nodes.append(node)
            continue
        branches = {a.name: a.g for a in node.attribute}
        branch = branches["then_branch" if taken[node.input[0]] else "else_branch"]
        if any(n.op_type in ("If", "Loop", "Scan") for n in branch.node):
            raise ValueError("nested control flow inside an If branch: not counted")
        nodes += list(branch.node)
        initializers += list(branch.initializer)
        nodes += [helper.make_node("Identity", [b.name], [o]) for b, o in zip(branch.output, node.output)]
    image = helper.make_tensor_value_info(graph.input[0].name, graph.input[0].type.tensor_type.elem_type, [1, height, width, 3])
    flat = helper.make_model(helper.make_graph(nodes, "taken", [image], list(graph.output), initializers), opset_imports=model.opset_import)
    flat.ir_version = model.ir_version
    return flat


def onnx_cost(path: Path, height: int, width: int) -> tuple[float, int]:
    """``(FLOPs, parameters)`` of one pass of an ONNX model over a ``height × width``
    image: 2 per multiply-add of each :data:`COMPUTE_OPS` node, and the weight and bias
    elements of those nodes (see the module's docstring)."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    if len(model.graph.input) != 1:
        raise ValueError(f"{path.name}: expected one image input, got {[i.name for i in model.graph.input]}")
    inferred = shape_inference.infer_shapes(_taken_graph(model, height, width), data_prop=True)
    shapes: dict[str, list[int | None]] = {i.name: list(i.dims) for i in inferred.graph.initializer}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]

    def shape(name: str, node: Any) -> list[int]:
        dims = shapes.get(name)
        if not dims or any(d is None for d in dims):
            raise ValueError(f"{path.name}: no static shape for {name!r} ({node.op_type} {node.name!r}) at {height}×{width}")
        return dims  # type: ignore[return-value]

    # Weights: initializers, and what Constant or DequantizeLinear nodes make of them alone.
    weights = set(shapes.keys() & {i.name for i in inferred.graph.initializer})
    for node in inferred.graph.node:
        if node.op_type in ("Constant", "DequantizeLinear") and all(i in weights for i in node.input if i):
            weights.update(node.output)
    flops, params = 0, 0
    for node in inferred.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        w_at, b_at = (3, 8) if node.op_type == "QLinearConv" else (1, 2)
        weight = shape(node.input[w_at], node)
        if node.op_type == "MatMul":
            macs = int(np.prod(shape(node.output[0], node))) * shape(node.input[0], node)[-1]
        elif node.op_type == "ConvTranspose":
            macs = int(np.prod(shape(node.input[0], node))) * int(np.prod(weight[1:]))
        else:
            macs = int(np.prod(shape(node.output[0], node))) * int(np.prod(weight[1:]))
        flops += 2 * macs
        for name in (node.input[w_at], node.input[b_at] if len(node.input) > b_at else ""):
            params += int(np.prod(shape(name, node))) if name in weights else 0
    return float(flops), params


def model_cost(path: Path, model_mpp: float, data_mpp: float, passes: int) -> tuple[float, int, list[int]]:
    """``(GFLOP, parameters, [h, w])`` of a ``FLOP_SIZE²`` image at ``data_mpp`` for a
    model at ``model_mpp``: the size it is resampled to, as the Detector does."""
    from micronet.runtime.resample import needs_resampling, resampled_size

    ratio = data_mpp / model_mpp
    h, w = resampled_size(FLOP_SIZE, FLOP_SIZE, ratio) if needs_resampling(ratio) else (FLOP_SIZE, FLOP_SIZE)
    flops, params = onnx_cost(path, h, w)
    return passes * flops / 1e9, params, [h, w]


# --- the run ---------------------------------------------------------------------------


def _specs(args: argparse.Namespace) -> list[ModelSpec]:
    """The rows asked for (labelled), or the bundled models and the previous default."""
    from micronet.runtime.bundled import BUNDLED_MODELS, resolve_model

    specs = getattr(args, "specs", None)
    if specs:
        specs = [ModelSpec(s.model, s.label or s.model, s.tta) for s in specs]
    else:
        specs = [ModelSpec(name, name) for name in BUNDLED_MODELS]
        if PREVIOUS.is_file():
            specs.append(ModelSpec(str(PREVIOUS), PREVIOUS_LABEL))
    for spec in specs:
        path = resolve_model(spec.model)
        if path.suffix.lower() != ".onnx" or not path.is_file():
            raise SystemExit(f"--model {spec.model}: expected an .onnx file or a bundled name ({', '.join(BUNDLED_MODELS)}); {path} is neither")
    return specs


def _runners(specs: list[ModelSpec], threads: int | None, data_mpp: float) -> tuple[dict[str, Callable[[np.ndarray, float], np.ndarray]], list[dict[str, Any]]]:
    """Each row's ``(rgb, mpp) -> xy`` and its description (file, ξ, compute)."""
    from micronet.runtime.bundled import bundled_tta, resolve_model
    from micronet.runtime.detector import Detector
    from micronet.runtime.tta import check_tta, tta_passes

    runners, rows = {}, []
    for spec in tqdm(specs, desc="models"):
        path = resolve_model(spec.model)
        tta = bundled_tta(spec.model, spec.tta)
        det = Detector(str(path), device="cpu", threads=threads, tta=tta)
        gflop, params, size = model_cost(path, det.info.mpp, data_mpp, tta_passes(check_tta(tta)))
        runners[spec.label] = lambda rgb, mpp, d=det: d.detect(rgb, mpp=mpp).xy
        rows.append(
            {
                "label": spec.label,
                "model": spec.model,
                "file": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
                "kind": "network",
                "precision": det.info.precision,
                "architecture": det.info.architecture,
                "model_mpp": det.info.mpp,
                "threshold": det.info.threshold,
                "tta": det.tta,
                "backend": det.backend_name,
                "flop_input_hw": size,
                "gflop_per_500": gflop,
                "parameters": params,
            }
        )
    return runners, rows


def _classical(retune: bool) -> tuple[Callable[[np.ndarray, float], np.ndarray], dict[str, Any]]:
    params = classical.load_params(retune=retune)
    record = json.loads(classical.PARAMS_FILE.read_text())
    row = {
        "label": CLASSICAL,
        "model": "benchmarks/classical.py",
        "kind": "classical",
        "params": record["params"],
        "tuned_f1": record["f1"],
        "gflop_per_500": None,
        "parameters": None,
        "tta": False,
    }
    return (lambda rgb, mpp: classical.detect(rgb, mpp, params)), row


def _timed_passes(runners: dict[str, Callable[..., np.ndarray]], files: list[Path], mpp: float, repeat: int) -> tuple[dict[str, float], dict[str, list[np.ndarray]]]:
    """Each runner's best seconds for one pass over ``files`` (read, then run), in
    interleaved rounds after one untimed warm-up pass each; and its detections."""
    from micronet.runtime.images import read_image

    found: dict[str, list[np.ndarray]] = {}
    bar = tqdm(total=(repeat + 1) * len(runners), desc="timed passes")

    def one_pass(label: str) -> None:
        run = runners[label]
        found[label] = [run(read_image(f), mpp) for f in files]
        bar.update()

    best = interleaved_best({label: (lambda k=label: one_pass(k)) for label in runners}, repeat)
    bar.close()
    return best, found


def _score(runners: dict[str, Callable[..., np.ndarray]], found: dict[str, list[np.ndarray]], crc: Any, monuseg: Any) -> dict[str, dict[str, float]]:
    from micronet.runtime.evaluation.metrics import evaluate_images

    out = {}
    for label, run in tqdm(runners.items(), desc="MoNuSeg held-out"):
        on_monuseg = [run(im, monuseg.mpp) for im in monuseg.images]
        out[label] = {
            "f1_crchisto_test": evaluate_images(found[label], crc.points, CRCHISTO_RADIUS).pooled.f1,
            "f1_monuseg_heldout": evaluate_images(on_monuseg, monuseg.points, MONUSEG_RADIUS).pooled.f1,
        }
    return out


# --- outputs ---------------------------------------------------------------------------


def _cell(value: Any, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _row_label(row: dict[str, Any]) -> str:
    name = "dihedral tta" if row["tta"] == "dihedral" else "tta"
    return row["label"] + (f" ({name})" if row["tta"] and "tta" not in row["label"].lower() else "")


def table(rows: list[dict[str, Any]], payload: dict[str, Any]) -> str:
    machine, baseline = payload["machine"], payload["baseline"]
    limit = payload["limit"]
    lines = [
        f"Speed / accuracy on the CPU ({payload['threads']} threads), one run. MP/s: megapixels of input per second end to end "
        f"(PNG read, resampling, tiles, inference, peaks) over {payload['images']['crchisto_test']} CRCHisto test image(s), "
        f"models interleaved, best of {payload['repeat']} round(s). F1: CRCHisto test (radius {CRCHISTO_RADIUS:g} px), MoNuSeg held-out "
        f"{payload['images']['monuseg_heldout']} image(s) (radius {MONUSEG_RADIUS:g} px at 0.25 µm/px), each model at its own ξ. "
        f"GFLOP of a {FLOP_SIZE}² image at 0.55 µm/px as the model sees it. × default: against `{baseline}`. "
        f"Reading the PNGs alone takes {payload['png_read_ms_per_image']:.1f} ms per image (timed with the rows, included in each). "
        f"Per 100 GFLOP/s: {peak_text(machine)}.",
    ]
    if limit:
        lines += ["", f"**A check on the first {limit} image(s) of each set, not a result.**"]
    lines += [
        "",
        "| model | GFLOP / 500² | parameters | F1 CRCHisto test | F1 MoNuSeg held-out | MP/s | MP/s per 100 GFLOP/s | × classical | × default |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        label = _row_label(r)
        params = "3 settings" if r["kind"] == "classical" else f"{r['parameters'] / 1e6:.2f} M"
        lines.append(
            f"| {label} | {_cell(r['gflop_per_500'], '.1f')} | {params} | {r['f1_crchisto_test']:.4f} | {r['f1_monuseg_heldout']:.4f} | "
            f"{r['megapixels_per_s']:.2f} | {r['megapixels_per_s_per_100_gflops']:.3f} | {r['x_classical']:.3f}× | {_cell(r['x_default'], '.2f', '×')} |"
        )
    c = next(r for r in rows if r["kind"] == "classical")
    p = c["params"]
    lines += [
        "",
        f"`{CLASSICAL}`: the classical peer (`benchmarks/classical.py`), hematoxylin of `skimage.color.rgb2hed`, Gaussian σ {p['sigma_um']:g} µm, maxima ≥ {p['min_distance_um']:g} µm apart "
        f"above {p['threshold']:g}, tuned on CRCHisto train + val (F1 {', '.join(f'{k} {v:.4f}' for k, v in c['tuned_f1'].items())}; "
        "`benchmarks/results/classical_params.json`).",
    ]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    # One colour and marker per row, named in the legend: labels beside points that sit close
    # together (a model and its previous file) could be read as the other's.
    markers = "ovD^<>ph*"
    for k, r in enumerate(rows):
        is_classical = r["kind"] == "classical"
        text = _row_label(r) + ("" if r["gflop_per_500"] is None else f" ({r['gflop_per_500']:.0f} GFLOP)")
        style = {"marker": "s", "color": "0.45"} if is_classical else {"marker": markers[k % len(markers)], "color": f"C{k % 10}"}
        ax.scatter([r["megapixels_per_s"]], [r["f1_crchisto_test"]], s=55, zorder=3, label=text, **style)
    ax.legend(fontsize=7, loc="lower left", framealpha=0.9)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end speed, MP/s of input (log)")
    ax.set_ylabel(f"F1, CRCHisto test (radius {CRCHISTO_RADIUS:g} px)")
    note = f" — check on {payload['limit']} image(s)" if payload["limit"] else ""
    ax.set_title(f"Speed / accuracy on {payload['machine']['cpu']}, {payload['threads']} threads{note}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.25, y=0.12)
    fig.tight_layout()
    from micronet.runtime.files import replace_atomically

    replace_atomically(path, lambda tmp: (fig.savefig(tmp, format="png", dpi=120), tmp.chmod(0o644)))
    plt.close(fig)


def write_outputs(name: str, payload: dict[str, Any], text: str) -> None:
    """``<name>.json`` and ``<name>.md`` (the machine line first, as ``_common.write_results``)
    and ``<name>.png`` in ``benchmarks/results``, each written whole then renamed."""
    from micronet.runtime.files import replace_atomically

    RESULTS.mkdir(parents=True, exist_ok=True)
    classical.write_json_atomically(RESULTS / f"{name}.json", payload)
    md = f"Machine: {run_line(payload['machine'])}.\n\n{text}\n"
    replace_atomically(RESULTS / f"{name}.md", lambda tmp: (tmp.write_text(md), tmp.chmod(0o644)))
    plot(payload["rows"], payload, RESULTS / f"{name}.png")
    print(md)


def _parse_args() -> tuple[argparse.Namespace, list[ModelSpec], str]:
    """The options, the rows asked for and the baseline's label, checked."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action=_SpecAction, help="an .onnx file or bundled name (repeatable)")
    parser.add_argument("--label", action=_SpecAction, help="the row label of the --model before it (default: the argument)")
    parser.add_argument("--tta", action=_SpecAction, nargs=0, help="run the --model before it with flip test-time augmentation")
    parser.add_argument("--tta-dihedral", action=_SpecAction, nargs=0, help="... with dihedral test-time augmentation (8 passes)")
    parser.add_argument("--baseline", help="label of today's default (default: the bundled 'default' row, else the first)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds, best counts (default 3)")
    parser.add_argument("--limit", type=int, help="only the first N images of each set (a quick check)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: physical cores)")
    parser.add_argument("--retune-classical", action="store_true", help="rerun the classical detector's grid search first")
    parser.add_argument("--name", default="pareto", help="results/<name>.json/.md/.png (default pareto)")
    args = parser.parse_args()
    if args.repeat < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--repeat and --limit: expected integers >= 1")
    specs = _specs(args)
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels) or {CLASSICAL, READ_ONLY} & set(labels):
        parser.error(f"--label: expected distinct labels, neither {CLASSICAL!r} nor {READ_ONLY!r}; got {labels}")
    baseline = args.baseline or next((s.label for s in specs if s.model == "default" and not s.tta), labels[0])
    if baseline not in labels:
        parser.error(f"--baseline: expected one of the labels {labels}, got {baseline!r}")
    return args, specs, baseline


def _fill_speeds(rows: list[dict[str, Any]], seconds: dict[str, float], megapixels: float, peak: float, baseline: str) -> None:
    """Each row's MP/s, MP/s per 100 GFLOP/s of ``peak`` and speed ratios, in place."""
    for r in rows:
        t = seconds[r["label"]]
        r.update(seconds_per_pass=t, megapixels_per_s=megapixels / t)
        r["megapixels_per_s_per_100_gflops"] = per_peak(r["megapixels_per_s"], peak)
        r["x_classical"] = seconds[CLASSICAL] / t
        r["x_default"] = seconds[baseline] / t


def main() -> None:
    args, specs, baseline = _parse_args()
    from micronet.runtime.machine import physical_cores
    from micronet.runtime.evaluation.datasets import load_point_folder

    threads = args.threads or physical_cores()
    crc = load_point_folder(DATA / "crchisto", "test")
    monuseg = load_point_folder(DATA / "monuseg", MONUSEG_SPLIT)
    if args.limit:
        crc, monuseg = (d.subset(list(range(min(args.limit, len(d))))) for d in (crc, monuseg))
    runners, rows = _runners(specs, threads, crc.mpp)
    runners[CLASSICAL], classical_row = _classical(args.retune_classical)
    rows.append(classical_row)

    files = [next((DATA / "crchisto" / "images").glob(f"{name}.*")) for name in crc.names]
    peaks = [matmul_peaks()]
    seconds, found = _timed_passes({**runners, READ_ONLY: lambda rgb, mpp: rgb[:0, :0]}, files, crc.mpp, args.repeat)
    read_seconds = seconds.pop(READ_ONLY)
    peaks.append(matmul_peaks())
    scores = _score(runners, found, crc, monuseg)
    for r in rows:
        r.update(scores[r["label"]])
    peaks.append(matmul_peaks())
    machine = run_machine(peaks)
    machine["int8_matmul_peak_gflops"] = None  # micronet.runtime has no int8 yardstick to measure it
    _fill_speeds(rows, seconds, sum(im.shape[0] * im.shape[1] for im in crc.images) / 1e6, machine["matmul_peak_gflops"], baseline)
    payload = {
        "machine": machine,
        "command": shlex.join(["python", "benchmarks/bench_pareto.py", *sys.argv[1:]]),
        "threads": threads,
        "baseline": baseline,
        "repeat": args.repeat,
        "limit": args.limit,
        "images": {"crchisto_test": len(crc), "monuseg_heldout": len(monuseg)},
        "png_read_ms_per_image": 1e3 * read_seconds / len(files),
        "radius_px": {"crchisto": CRCHISTO_RADIUS, "monuseg": MONUSEG_RADIUS},
        "flops": f"2 per multiply-add of the ONNX graph's {', '.join(COMPUTE_OPS)} nodes, on the branch a {FLOP_SIZE}² image at {crc.mpp} µm/px takes after resampling to the model's pixel size; x4 with flip tta, x8 with dihedral tta",
        "rows": rows,
    }
    write_outputs(args.name, payload, table(rows, payload))


if __name__ == "__main__":
    main()
