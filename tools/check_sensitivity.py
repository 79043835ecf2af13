"""How much ``micronet check`` tolerates, and how small a change to a model it catches.

Two measurements, on the check's own reference images and comparisons
(:mod:`micronet.runtime.diagnostics.check`):

``spread``: per bundled model, (1) what its precision does: the artifact on ONNX Runtime
against the fp32 reference computed now from its checkpoint; (2) what another
instruction set could change on top: the same artifact run another way against its own
default run. For an int8 model the other way is the quantised graph computed in float
(``session.disable_quant_qdq``: ONNX Runtime dequantises instead of using its integer
kernels), which bounds what any integer kernel (AVX2 ``vpmaddubsw``, AVX-512 VNNI, AMX)
can change: with 7-bit weights they all compute the same integer sums, and only the
float steps around them (requantisation, the float head) may round differently. For
fp32 and fp16 the other way is ONNX Runtime without graph optimisations (no fusions, no
NCHWc blocking: another summation order, as another ISA's kernels have). TOLERANCES in
check.py are the sum of the two, rounded up.

``sweep``: one layer's weights (both branches of the exported graph; for int8, its
weight scale) times a factor: the CRCHisto test F1 (radius 6 px, the model's ξ) and
whether ``check_detector`` catches the change. One JSON line per (layer, factor).

    python tools/check_sensitivity.py spread
    python tools/check_sensitivity.py sweep fast-cpu --factors 0.7,1.3 [--layers model.block1.0.0,...]

Needs torch (the references come from the checkpoints in trainer/pretrained/) and the
CRCHisto data in ../shared/data for ``sweep``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "crchisto"
# Bundled name → (checkpoint in trainer/pretrained, artifact in runtime/models)
MODELS = {
    "default": ("micronet_crchisto", "micronet_crchisto.onnx"),
    "default-fp16": ("micronet_crchisto", "micronet_crchisto.fp16.onnx"),
    "fast-cpu": ("micronet_crchisto_relu", "micronet_crchisto_relu.int8.onnx"),
    "phenotypes": ("micronet_crchisto_phenotypes", "micronet_crchisto_phenotypes.int8.onnx"),
    "accurate": ("micronet_crchisto_accurate", "micronet_crchisto_accurate.onnx"),
}
METRICS = ("max_abs_map", "mean_abs_map", "count_change", "f1", "found_1px", "class_agreement")


def fp32_reference(name: str) -> dict[str, Any]:
    """The reference of a bundled model computed now from its checkpoint, as
    ``micronet export`` computes it."""
    from micronet.export.onnx import reference_results
    from micronet.trainer.checkpoint import load_checkpoint

    model, info = load_checkpoint(REPO / "trainer" / "pretrained" / f"{MODELS[name][0]}.safetensors")
    return reference_results(model, info)


def detector(path: Path, **session_options: Any) -> Any:
    """A CPU Detector on ``path``; with options, its ONNX Runtime session made with them
    (``level``: a GraphOptimizationLevel; others: session config entries)."""
    import onnxruntime as ort

    from micronet.runtime.detector import Detector

    det = Detector(path, device="cpu", threads=2)
    if session_options:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.graph_optimization_level = session_options.pop("level", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        for key, value in session_options.items():
            options.add_session_config_entry(key, value)
        det.backend._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return det


def own_reference(det: Any) -> dict[str, Any]:
    """The artifact's own answers on this machine's default path, as a reference."""
    from micronet.runtime.diagnostics.check import build_reference

    return build_reference(det.backend.infer, det.info.threshold, det.info.min_distance)


def row(result: Any) -> dict[str, Any]:
    return {k: (None if getattr(result, k) is None else round(float(getattr(result, k)), 5)) for k in METRICS} | {"status": result.status}


def spread(names: list[str]) -> None:
    import onnxruntime as ort

    from micronet.runtime.diagnostics.check import check_detector

    for name in names:
        path = REPO / "runtime" / "models" / MODELS[name][1]
        default = detector(path)
        quant = check_detector(default, repeats=1, reference=fp32_reference(name))
        other = {"session.disable_quant_qdq": "1"} if default.info.precision == "int8" else {"level": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        isa = check_detector(detector(path, **other), repeats=1, reference=own_reference(default))
        print(json.dumps({"model": name, "precision": default.info.precision, "vs fp32 reference": row(quant), "another kernel path": row(isa)}), flush=True)


def layers(path: Path) -> list[str]:
    """The exported graph's layers with weights, in graph order."""
    import onnx

    names: list[str] = []

    def visit(graph: Any) -> None:
        for init in graph.initializer:
            name = init.name.split("/", 1)[-1]
            if (name.endswith(".weight") and len(init.dims) == 4) or name.endswith(".weight_scale"):
                layer = name.rsplit(".weight", 1)[0]
                if layer not in names:
                    names.append(layer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)

    visit(onnx.load(str(path)).graph)
    return names


def scale_initializers(src: Path, dst: Path, factor: float, select: Any) -> int:
    """Writes ``src`` to ``dst`` with the float initializers that ``select(graph)`` names
    times ``factor``, in the main graph and every subgraph (both branches of the aligned
    fast path's ``If``); the metadata (and so the reference results) unchanged. Returns
    how many initializers changed. ``select`` takes a ``GraphProto`` and returns the
    names of its initializers to scale."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    touched = 0

    def visit(graph: Any) -> None:
        nonlocal touched
        chosen = set(select(graph))
        for init in graph.initializer:
            if init.name in chosen:
                values = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array((values.astype(np.float32) * factor).astype(values.dtype), init.name))
                touched += 1
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)

    visit(model.graph)
    onnx.save(model, str(dst))
    return touched


def layer_weights(layer: str) -> Any:
    """A ``select`` for :func:`scale_initializers`: ``layer``'s float weights (an int8
    layer: its weight scale)."""
    import onnx

    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    wanted = (f"{layer}.weight", f"{layer}.weight_scale")
    return lambda graph: [i.name for i in graph.initializer if i.name.split("/", 1)[-1] in wanted and i.data_type in floats]


def perturb(src: Path, dst: Path, layer: str, factor: float) -> Path:
    """``src`` with ``layer``'s float weights (an int8 layer: its weight scale) times
    ``factor`` in every branch; metadata (and so the reference) unchanged."""
    if not scale_initializers(src, dst, factor, layer_weights(layer)):
        dst.unlink(missing_ok=True)
        raise SystemExit(f"no float weights of layer {layer!r} in {src.name}")
    return dst


def test_f1(path: Path) -> float:
    """Pooled CRCHisto test F1 (radius 6 px) of a model file at its own ξ."""
    from micronet.runtime.detector import Detector, read_image
    from micronet.runtime.evaluation.matching import evaluate_points
    from micronet.runtime.points import read_points_csv

    det = Detector(path, device="cpu", threads=2)
    with open(DATA / "split.csv", newline="") as f:
        names = [r["name"] for r in csv.DictReader(f) if r["split"] == "test"]
    tp = fp = fn = 0
    for name in names:
        found = det.detect(read_image(DATA / "images" / f"{name}.png")[..., :3].copy(), mpp=det.info.mpp)
        m = evaluate_points(found.xy, read_points_csv(DATA / "points" / f"{name}.csv"), 6.0)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    return 2 * tp / (2 * tp + fp + fn)


def sweep(name: str, factors: list[float], only: list[str] | None) -> None:
    from micronet.runtime.diagnostics.check import check_detector

    path = REPO / "runtime" / "models" / MODELS[name][1]
    reference = fp32_reference(name)
    base = test_f1(path)
    print(json.dumps({"model": name, "test_f1": round(base, 4)}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for layer in only or layers(path):
            for factor in factors:
                bad = perturb(path, Path(tmp) / f"perturbed{path.suffix}", layer, factor)
                result = check_detector(detector(bad), repeats=1, reference=reference)
                delta = test_f1(bad) - base
                print(json.dumps({"model": name, "layer": layer, "factor": factor, "test_f1_change": round(delta, 4), **row(result)}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("spread", help="what each precision and another kernel path change")
    s.add_argument("models", nargs="*", metavar="MODEL", help=f"of {', '.join(MODELS)} (default: all)")
    w = sub.add_parser("sweep", help="one layer's weights times a factor: test F1 and the check's verdict")
    w.add_argument("model", choices=list(MODELS))
    w.add_argument("--factors", default="0.7,1.3", help="comma-separated (default 0.7,1.3)")
    w.add_argument("--layers", help="comma-separated layer names (default: every layer)")
    args = parser.parse_args(argv)
    if args.what == "spread":
        unknown = [m for m in args.models if m not in MODELS]
        if unknown:
            parser.error(f"unknown models {unknown}; expected of {', '.join(MODELS)}")
        spread(args.models or list(MODELS))
    else:
        sweep(args.model, [float(f) for f in args.factors.split(",")], args.layers.split(",") if args.layers else None)


if __name__ == "__main__":
    sys.exit(main())
