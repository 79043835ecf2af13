"""The aligned fast path of fp32 and int8 exports: two copies of the network behind an
``If`` on the input size (:func:`combine_aligned_fast_path`). Inputs whose sides are
multiples of 8 (every full Detector tile) run a graph without the per-level crop/pad of
odd sizes, which ONNX Runtime would otherwise execute as copies that also break its
blocked-layout chains; other sizes run the general graph. Both give the torch model's map.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from micronet.runtime.model_info import INPUT_NAME

if TYPE_CHECKING:
    import onnx

__all__ = ["combine_aligned_fast_path"]


def _prefixed_branch(model: "onnx.ModelProto", prefix: str, keep: set[str]) -> "onnx.GraphProto":
    """The model's graph as an ``If`` branch: no inputs (the image comes from the outer
    scope), every other name prefixed so two branches can sit in one model."""
    import onnx

    graph = model.graph

    def rename(name: str) -> str:
        return name if not name or name in keep else prefix + name

    def renamed(protos, kind):  # copies with the name prefixed
        out = []
        for proto in protos:
            copy_ = kind()
            copy_.CopyFrom(proto)
            copy_.name = rename(copy_.name)
            out.append(copy_)
        return out

    nodes = renamed(graph.node, onnx.NodeProto)
    for n in nodes:
        n.input[:] = [rename(i) for i in n.input]
        n.output[:] = [rename(o) for o in n.output]
    inits = renamed(graph.initializer, onnx.TensorProto)
    outputs = renamed(graph.output, onnx.ValueInfoProto)
    return onnx.helper.make_graph(nodes, prefix.strip("/"), [], outputs, initializer=inits)


def combine_aligned_fast_path(general: Path, aligned: Path, output: Path, multiple: int = 8) -> None:
    """One model that runs ``aligned`` when both sides of the input are multiples of
    ``multiple`` and ``general`` otherwise (an ONNX ``If`` on the input's shape).

    For aligned inputs the two graphs compute the same map; the aligned one skips the
    per-level crop and pad that ONNX Runtime would otherwise run as copies, and that
    break its blocked-layout chains. The Detector's tiles start on the 8-pixel grid, so
    every full-size tile takes the fast branch; image borders and small odd-sized images
    take the general one, with the exact semantics of the torch model.
    """
    import onnx
    from onnx import TensorProto, helper

    g = onnx.load(str(general))
    a = onnx.load(str(aligned))
    outer = {INPUT_NAME}
    then_branch = _prefixed_branch(a, "aligned/", outer)
    else_branch = _prefixed_branch(g, "general/", outer)
    const = lambda name, values: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
    )
    nodes = [
        const("fast_path/hw_index", [1, 2]),
        const("fast_path/multiple", [multiple]),
        helper.make_node("Shape", [INPUT_NAME], ["fast_path/shape"]),
        helper.make_node("Gather", ["fast_path/shape", "fast_path/hw_index"], ["fast_path/hw"], axis=0),
        helper.make_node("Mod", ["fast_path/hw", "fast_path/multiple"], ["fast_path/rest"]),
        helper.make_node("ReduceMax", ["fast_path/rest"], ["fast_path/max_rest"], keepdims=0),
        helper.make_node("Cast", ["fast_path/max_rest"], ["fast_path/unaligned"], to=TensorProto.BOOL),
        helper.make_node("Not", ["fast_path/unaligned"], ["fast_path/aligned"]),
        helper.make_node(
            "If", ["fast_path/aligned"], [o.name for o in g.graph.output], then_branch=then_branch, else_branch=else_branch,
            name="fast_path",
        ),
    ]
    graph = helper.make_graph(nodes, g.graph.name, list(g.graph.input), list(g.graph.output))
    model = helper.make_model(graph, opset_imports=list(g.opset_import), producer_name="micronet-sdk")
    model.ir_version = g.ir_version
    onnx.checker.check_model(model)
    onnx.save(model, str(output))
