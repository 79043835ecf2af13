"""ONNX graphs run by torch, node by node: what the torch backend executes.

The runtime never imports the trainer, so the torch backend cannot rebuild the network
from a checkpoint; it runs the same ``.onnx`` export every other backend runs (and that
carries the known answers ``micronet check`` compares against). :class:`TorchGraph`
turns each node into one torch call when the model is loaded, so an operator or an
attribute it does not support fails then, naming it, never halfway through a slide.

Two kinds of values flow through a graph and are kept apart:

- *data* (the image, activations, weights): float tensors on the backend's device, in
  one compute dtype (float16 on a GPU, float32 on the CPU). Every cast of data to a
  float type casts to the compute dtype, so an fp32 export runs in fp16 on the GPU (its
  weights are cast once, at load) and an fp16 export runs in fp32 on the CPU.
- *shapes* (``Shape``, ``Gather``, ``Slice`` bounds, the ``If`` of the aligned fast
  path): integer tensors on the host, so reading them never waits for the GPU.

torch is passed in by the caller (the torch backend imports it lazily); this module
imports neither torch nor onnx itself.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import InputError

__all__ = ["SUPPORTED_OPS", "TorchGraph"]

_FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}  # ONNX TensorProto codes
_INT_TYPES = {2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool"}


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


class TorchGraph:
    """An ONNX graph as a list of torch calls.

    Args:
        graph: an ``onnx.GraphProto``.
        torch: the ``torch`` module.
        device: the ``torch.device`` data lives on.
        dtype: the compute dtype of data (``torch.float16`` or ``torch.float32``).
        outer: names an enclosing graph provides (the branches of an ``If``).

    Raises:
        ValueError: an operator or attribute not in :data:`SUPPORTED_OPS`' reach, naming
            the node.
    """

    def __init__(self, graph: Any, torch: Any, device: Any, dtype: Any, outer: frozenset[str] = frozenset()) -> None:
        from onnx import numpy_helper

        self.torch, self.device, self.dtype = torch, device, dtype
        self.inputs = [i.name for i in graph.input]
        self.outputs = [o.name for o in graph.output]
        self._consts = {t.name: self.constant(numpy_helper.to_array(t)) for t in graph.initializer}
        known = set(outer) | set(self.inputs) | set(self._consts)
        self._steps: list[tuple[list[str], list[str], Callable[..., Any], bool]] = []
        reads: list[set[str]] = []  # what each step reads, a branch's captured names included
        for node in graph.node:
            build = SUPPORTED_OPS.get(node.op_type)
            if build is None:
                raise InputError(
                    f"node {node.name or node.op_type!r}: the torch backend does not run ONNX {node.op_type!r} "
                    f"(it runs {', '.join(sorted(SUPPORTED_OPS))}); use the onnxruntime backend for this model"
                )
            fn = build(_attrs(node), self, frozenset(known))
            self._steps.append((list(node.input), list(node.output), fn, node.op_type == "If"))
            reads.append({n for n in node.input if n} | getattr(fn, "captures", set()))
            known.update(node.output)
        self._plan_release(reads)

    def _plan_release(self, reads: list[set[str]]) -> None:
        """Which values each step reads last, to drop them then: a graph's activations
        would otherwise all live until its end. ``captures``: the names this graph reads
        from an enclosing one (an ``If`` branch's)."""
        made = set(self.inputs) | set(self._consts)
        last: dict[str, int] = {}
        self.captures: set[str] = set()
        for k, (names, (_, outputs, _, _)) in enumerate(zip(reads, self._steps)):
            for name in names:
                last[name] = k
                if name not in made:
                    self.captures.add(name)
            made.update(outputs)
        keep = set(self.outputs) | self.captures
        self._release = [[n for n, k in last.items() if k == step and n not in keep] for step in range(len(self._steps))]

    def constant(self, array: np.ndarray) -> Any:
        """A constant as the graph keeps it: float data on the device in the compute
        dtype (4-D weights channels-last on a GPU, for cuDNN's tensor-core kernels);
        integers and booleans on the host."""
        t = self.torch.from_numpy(np.array(array, copy=True))
        if not t.is_floating_point():
            return t
        t = t.to(self.device, self.dtype)
        if t.ndim == 4 and self.device.type == "cuda":
            t = t.contiguous(memory_format=self.torch.channels_last)
        return t

    def run(self, env: dict[str, Any]) -> list[Any]:
        """The graph's outputs, given its inputs (and, for a branch, the enclosing
        graph's values) by name."""
        env = {**env, **self._consts}
        for (inputs, outputs, fn, wants_env), release in zip(self._steps, self._release):
            args = [env[name] if name else None for name in inputs]
            result = fn(env, *args) if wants_env else fn(*args)
            del args
            if len(outputs) == 1:
                env[outputs[0]] = result
            else:
                env.update(zip(outputs, result))
            for name in release:  # read for the last time: free its memory now
                env.pop(name, None)
        return [env[name] for name in self.outputs]


# --- the operators: each builder takes (attributes, graph, known names) → a callable ------


def _ints(t: Any) -> list[int]:
    """A host integer tensor (a shape, indices, bounds) as a list."""
    return [int(v) for v in t.reshape(-1).tolist()]


def _cast(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
    to = int(a["to"])
    torch = g.torch
    if to in _FLOAT_TYPES:
        exact = getattr(torch, _FLOAT_TYPES[to])
        # Data (floats, the uint8 image) goes to the compute dtype; shape arithmetic stays exact.
        return lambda x: x.to(g.dtype) if (x.is_floating_point() or x.dtype == torch.uint8) else x.to(exact)
    if to in _INT_TYPES:
        dtype = getattr(torch, _INT_TYPES[to])
        return lambda x: x.to(dtype)
    raise InputError(f"Cast to ONNX type {to}: the torch backend casts to float, integer and bool types only")


def _constant(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
    from onnx import numpy_helper

    if "value" in a:
        value = g.constant(numpy_helper.to_array(a["value"]))
    elif "value_float" in a or "value_floats" in a:
        value = g.constant(np.asarray(a.get("value_float", a.get("value_floats")), np.float32))
    elif "value_int" in a or "value_ints" in a:
        value = g.constant(np.asarray(a.get("value_int", a.get("value_ints")), np.int64))
    else:
        raise InputError(f"Constant with attributes {sorted(a)}: the torch backend reads value, value_float(s), value_int(s)")
    return lambda: value


def _constant_of_shape(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
    """A tensor of the given shape filled with one value (0.0 float by default): data on
    the device, or integers on the host (pads and bounds computed from shapes)."""
    from onnx import numpy_helper

    fill = numpy_helper.to_array(a["value"]).reshape(-1) if "value" in a else np.zeros(1, np.float32)
    one = g.constant(fill[:1])
    return lambda shape: one.reshape(()).expand(*_ints(shape)).clone()


def _pairs(a: dict[str, Any], what: str) -> tuple[list[int], list[int], list[int], list[int]]:
    """2-D ``strides, dilations, pads (top, left, bottom, right), kernel_shape``."""
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise InputError(f"{what} with auto_pad={a['auto_pad']!r}: the torch backend takes explicit pads only")
    kernel = list(a.get("kernel_shape", [1, 1]))
    if len(kernel) != 2:
        raise InputError(f"{what} over {len(kernel)} spatial axes: the torch backend runs 2-D ones")
    return list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1])), list(a.get("pads", [0, 0, 0, 0])), kernel


def _conv(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
    F = g.torch.nn.functional
    strides, dilations, pads, _ = _pairs(a, "Conv")
    group = int(a.get("group", 1))
    if pads[:2] == pads[2:]:
        return lambda x, w, b=None: F.conv2d(x, w, b, strides, pads[:2], dilations, group)
    torch_pads = (pads[1], pads[3], pads[0], pads[2])  # (left, right, top, bottom)
    return lambda x, w, b=None: F.conv2d(F.pad(x, torch_pads), w, b, strides, 0, dilations, group)


def _conv_transpose(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
    F = g.torch.nn.functional
    strides, dilations, pads, _ = _pairs(a, "ConvTranspose")
    if "output_shape" in a:
        raise InputError("ConvTranspose with output_shape: the torch backend takes pads and output_padding")
    extra = list(a.get("output_padding", [0, 0]))
    group = int(a.get("group", 1))
    top, left, bottom, right = pads

    def run(x: Any, w: Any, b: Any = None) -> Any:
        y = F.conv_transpose2d(x, w, b, strides, 0, extra, group, dilations)
        return y[:, :, top : y.shape[2] - bottom, left : y.shape[3] - right]  # ONNX pads crop the output

    return run


def _pool(kind: str) -> Callable[..., Callable[..., Any]]:
    def build(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
        F = g.torch.nn.functional
        strides, dilations, pads, kernel = _pairs(a, kind)
        if pads[:2] != pads[2:]:
            raise InputError(f"{kind} with asymmetric pads {pads}: not supported by the torch backend")
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "MaxPool":
            return lambda x: F.max_pool2d(x, kernel, strides, pads[:2], dilations, ceil)
        include = bool(a.get("count_include_pad", 0))
        return lambda x: F.avg_pool2d(x, kernel, strides, pads[:2], ceil, include)

    return build


def _gather(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
    axis = int(a.get("axis", 0))

    def run(data: Any, indices: Any) -> Any:
        ax = axis % data.ndim
        flat = indices.reshape(-1).long()
        flat = g.torch.where(flat < 0, flat + data.shape[ax], flat).to(data.device)
        out = g.torch.index_select(data, ax, flat)
        return out.reshape(tuple(data.shape[:ax]) + tuple(indices.shape) + tuple(data.shape[ax + 1 :]))

    return run


def _slice(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
    if "starts" in a:
        raise InputError("Slice with starts/ends attributes (opset < 10): re-export the model with opset >= 13")

    def run(data: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
        s, e = _ints(starts), _ints(ends)
        ax = _ints(axes) if axes is not None else list(range(len(s)))
        st = _ints(steps) if steps is not None else [1] * len(s)
        index = [slice(None)] * data.ndim
        for lo, hi, axis, step in zip(s, e, ax, st):
            if step < 1:
                raise InputError(f"Slice with step {step}: the torch backend takes positive steps only")
            index[axis % data.ndim] = slice(lo, hi, step)  # Python clamps like ONNX
        return data[tuple(index)]

    return run


def _axes(a: dict[str, Any], given: Any) -> list[int] | None:
    if given is not None:
        return _ints(given)
    return list(a["axes"]) if "axes" in a else None


def _unsqueeze(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
    def run(x: Any, axes: Any = None) -> Any:
        wanted = _axes(a, axes) or []
        rank = x.ndim + len(wanted)
        for axis in sorted(v % rank for v in wanted):
            x = x.unsqueeze(axis)
        return x

    return run


def _squeeze(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
    def run(x: Any, axes: Any = None) -> Any:
        wanted = _axes(a, axes)
        if wanted is None:
            return x.squeeze()
        for axis in sorted((v % x.ndim for v in wanted), reverse=True):
            x = x.squeeze(axis)
        return x

    return run


def _reduce(kind: str) -> Callable[..., Callable[..., Any]]:
    def build(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
        keep = bool(a.get("keepdims", 1))
        fn = {"ReduceMax": g.torch.amax, "ReduceMin": g.torch.amin, "ReduceSum": g.torch.sum, "ReduceMean": g.torch.mean}[kind]

        def run(x: Any, axes: Any = None) -> Any:
            dims = _axes(a, axes)
            if not dims:
                if a.get("noop_with_empty_axes", 0):
                    return x
                dims = list(range(x.ndim))
            return fn(x, dim=dims, keepdim=keep)

        return run

    return build


def _shape(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
    start, end = a.get("start", 0), a.get("end")
    return lambda x: g.torch.tensor(list(x.shape)[start:end], dtype=g.torch.int64)  # on the host


def _reshape(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
    allow_zero = bool(a.get("allowzero", 0))

    def run(x: Any, shape: Any) -> Any:
        dims = [x.shape[i] if (d == 0 and not allow_zero) else d for i, d in enumerate(_ints(shape))]
        return x.reshape(dims)

    return run


def _pad(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
    F = g.torch.nn.functional
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(a.get("mode", "constant"))
    if mode is None:
        raise InputError(f"Pad mode {a.get('mode')!r}: the torch backend pads with constant, reflect or edge")

    def run(x: Any, pads: Any, value: Any = None, axes: Any = None) -> Any:
        p = _ints(pads)
        ax = _ints(axes) if axes is not None else list(range(x.ndim))
        n = len(ax)
        order = sorted(range(n), key=lambda i: ax[i] % x.ndim, reverse=True)  # torch pads the last axis first
        torch_pads = [v for i in order for v in (p[i], p[i + n])]
        fill = float(value.reshape(-1)[0]) if (value is not None and mode == "constant") else 0.0
        return F.pad(x, torch_pads, mode=mode, value=fill) if mode == "constant" else F.pad(x, torch_pads, mode=mode)

    return run


def _resize(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
    """Resize of the two spatial axes of an NCHW map: ``linear`` with ``half_pixel`` (or
    ``pytorch_half_pixel``) or ``align_corners`` coordinates, ``nearest`` with
    ``asymmetric`` coordinates rounding down (what torch's ``interpolate`` exports)."""
    F = g.torch.nn.functional
    mode, coords = a.get("mode", "nearest"), a.get("coordinate_transformation_mode", "half_pixel")
    linear = mode == "linear" and coords in ("half_pixel", "pytorch_half_pixel", "align_corners")
    nearest = mode == "nearest" and coords == "asymmetric" and a.get("nearest_mode", "round_prefer_floor") == "floor"
    if not (linear or nearest) or a.get("antialias", 0) or a.get("axes") is not None:
        raise InputError(f"Resize mode {mode!r} with {coords!r} coordinates: the torch backend resizes linear (half-pixel or "
                         "align-corners) or nearest (asymmetric, floor) over the spatial axes")
    align = coords == "align_corners"

    def run(x: Any, roi: Any = None, scales: Any = None, sizes: Any = None) -> Any:
        if x.ndim != 4:
            raise InputError(f"Resize of a {x.ndim}-D tensor: the torch backend resizes NCHW maps")
        kind = "bilinear" if linear else "nearest"
        corners = align if linear else None
        if sizes is not None and sizes.numel():
            n, c, h, w = _ints(sizes)
            if (n, c) != tuple(x.shape[:2]):
                raise InputError("Resize of the batch or channel axis: the torch backend resizes the spatial axes")
            return F.interpolate(x, size=(h, w), mode=kind, align_corners=corners)
        factors = [float(v) for v in scales.reshape(-1).tolist()]
        if factors[:2] != [1.0, 1.0]:
            raise InputError("Resize of the batch or channel axis: the torch backend resizes the spatial axes")
        return F.interpolate(x, scale_factor=tuple(factors[2:]), mode=kind, align_corners=corners, recompute_scale_factor=False)

    return run


def _if(a: dict[str, Any], g: TorchGraph, known: frozenset[str]) -> Callable[..., Any]:
    branches = {flag: TorchGraph(a[key], g.torch, g.device, g.dtype, known) for flag, key in ((True, "then_branch"), (False, "else_branch"))}

    def run(env: dict[str, Any], cond: Any) -> Any:
        outs = branches[bool(cond.reshape(-1)[0])].run(env)  # a host tensor: no wait for the GPU
        return outs[0] if len(outs) == 1 else outs

    run.captures = branches[True].captures | branches[False].captures  # type: ignore[attr-defined]
    return run


def _simple(fn: Callable[[Any, dict[str, Any]], Callable[..., Any]]) -> Callable[..., Callable[..., Any]]:
    return lambda a, g, known: fn(g.torch, a)


def _int_div(torch: Any, a: dict[str, Any]) -> Callable[..., Any]:
    return lambda x, y: x / y if (x.is_floating_point() or y.is_floating_point()) else torch.div(x, y, rounding_mode="trunc")


def _clip(torch: Any, a: dict[str, Any]) -> Callable[..., Any]:
    return lambda x, lo=None, hi=None: torch.clamp(x, lo, hi)


def _batch_norm(torch: Any, a: dict[str, Any]) -> Callable[..., Any]:
    eps = float(a.get("epsilon", 1e-5))
    return lambda x, scale, bias, mean, var: torch.nn.functional.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)


SUPPORTED_OPS: dict[str, Callable[..., Callable[..., Any]]] = {
    "Identity": _simple(lambda t, a: lambda x: x),
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Cast": _cast,
    "Add": _simple(lambda t, a: t.add),
    "Sub": _simple(lambda t, a: t.sub),
    "Mul": _simple(lambda t, a: t.mul),
    "Div": _simple(_int_div),
    "Mod": _simple(lambda t, a: t.fmod if a.get("fmod", 0) else t.remainder),
    "Equal": _simple(lambda t, a: t.eq),
    "Greater": _simple(lambda t, a: t.gt),
    "Less": _simple(lambda t, a: t.lt),
    "Not": _simple(lambda t, a: t.logical_not),
    "And": _simple(lambda t, a: t.logical_and),
    "Or": _simple(lambda t, a: t.logical_or),
    "Where": _simple(lambda t, a: t.where),
    "Relu": _simple(lambda t, a: t.relu),
    "Elu": _simple(lambda t, a: lambda x: t.nn.functional.elu(x, float(a.get("alpha", 1.0)))),
    "LeakyRelu": _simple(lambda t, a: lambda x: t.nn.functional.leaky_relu(x, float(a.get("alpha", 0.01)))),
    "Sigmoid": _simple(lambda t, a: t.sigmoid),
    "Tanh": _simple(lambda t, a: t.tanh),
    "Exp": _simple(lambda t, a: t.exp),
    "Sqrt": _simple(lambda t, a: t.sqrt),
    "Neg": _simple(lambda t, a: t.neg),
    "Abs": _simple(lambda t, a: t.abs),
    "Clip": _simple(_clip),
    "Softmax": _simple(lambda t, a: lambda x: t.softmax(x, int(a.get("axis", -1)))),
    "BatchNormalization": _simple(_batch_norm),
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MaxPool": _pool("MaxPool"),
    "AveragePool": _pool("AveragePool"),
    "GlobalAveragePool": _simple(lambda t, a: lambda x: x.mean((2, 3), keepdim=True)),
    "Concat": _simple(lambda t, a: lambda *xs: t.cat(xs, int(a["axis"]))),
    "Transpose": _simple(lambda t, a: lambda x: x.permute(*(a.get("perm") or reversed(range(x.ndim))))),
    "Reshape": _reshape,
    "Flatten": _simple(lambda t, a: lambda x: x.reshape(int(np.prod(x.shape[: int(a.get("axis", 1))])), -1)),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Shape": _shape,
    "Gather": _gather,
    "Slice": _slice,
    "Pad": _pad,
    "Resize": _resize,
    "ReduceMax": _reduce("ReduceMax"),
    "ReduceMin": _reduce("ReduceMin"),
    "ReduceSum": _reduce("ReduceSum"),
    "ReduceMean": _reduce("ReduceMean"),
    "If": _if,
}
