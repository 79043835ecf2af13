"""Checkpoint → ONNX, one small function per precision (the table below).

Every exported model takes ``uint8`` RGB images ``N×H×W×3`` (dynamic N, H, W) and
returns the proximity map ``N×1×H×W`` float32; the normalisation and layout change are
inside the graph, so callers send raw pixels. Batch norms are folded into the
convolutions first. The checkpoint's ``ModelInfo`` (threshold ξ, minimum distance, pixel
size, normalisation, architecture, provenance) goes into ``metadata_props`` under
``"micronet"``.

========= ============ ===== ===== ============================================
precision suffix       CPU   GPU   notes
========= ============ ===== ===== ============================================
fp32      .onnx        yes   yes   reference; parity with torch ≤ 1e-4
fp16      .fp16.onnx   slow  yes   fp16 compute, uint8 in / float32 out; what a
                                   strongly typed TensorRT build wants
int8      .int8.onnx   yes   no    static QDQ (u8 activations, s8 per-channel
                                   7-bit weights in [-64, 64], float head),
                                   min-max calibrated on training images
========= ============ ===== ===== ============================================

int8 weights use 7 bits (``reduce_range``) so that no CPU can saturate: x86 CPUs
without VNNI (AVX2-only, AVX-512 before Cascade Lake) multiply u8 activations by s8
weights with ``vpmaddubsw``, which adds each pair of products in 16-bit signed
arithmetic with saturation; with full 8-bit weights ``2 · 255 · 127 = 64770`` overflows
``32767`` and the map silently changes (3 F1 points on CRCHisto on such a CPU). With
``|w| ≤ 64``, ``2 · 255 · 64 = 32640`` always fits, so every instruction path (AVX2,
AVX-512, VNNI, AMX, ARM ``sdot``) computes the same integers.

Every export also carries reference results (:mod:`micronet.runtime.diagnostics.check`): the fp32
model's proximity map and detections on fixed images, computed here from the
checkpoint, that ``micronet check`` compares each backend against on the user's machine.

fp32 and int8 models hold two copies of the network behind an ``If`` on the input size
(:func:`combine_aligned_fast_path`): inputs whose sides are multiples of 8 (every full
Detector tile) run a graph without the per-level crop/pad of odd sizes, which ONNX
Runtime would otherwise execute as copies that also break its blocked-layout chains
(``python benchmarks/profile_ort.py`` shows the time per operator); other sizes run the
general graph. Both give the torch model's map. fp16 is one
graph: TensorRT removes no-op slices itself.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import torch
from micronet.runtime.diagnostics.check import REFERENCE_KEY, build_reference
from micronet.runtime.errors import InputError
from micronet.runtime.model_info import (
    CLASS_OUTPUT_NAME,
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    ModelInfo,
)
from micronet.trainer.models import map_output

from .fast_path import combine_aligned_fast_path  # re-exported
from torch import nn

if TYPE_CHECKING:
    import onnx

__all__ = [
    "FORMATS",
    "ExportFormat",
    "export_model",
    "export_onnx",
    "fold_batchnorm",
    "int8_weight_range",
    "reference_results",
    "DeployableModel",
    "INPUT_NAME",
    "OUTPUT_NAME",
]

log = logging.getLogger(__name__)

OPSET = 17


@dataclass(frozen=True)
class ExportFormat:
    precision: str
    suffix: str
    cpu: bool
    gpu: bool
    description: str


FORMATS: dict[str, ExportFormat] = {
    f.precision: f
    for f in (
        ExportFormat("fp32", ".onnx", True, True, "float32 reference"),
        ExportFormat("fp16", ".fp16.onnx", False, True, "float16 compute, uint8 in / float32 out"),
        ExportFormat("int8", ".int8.onnx", True, False, "static QDQ int8, calibrated"),
    )
}


class DeployableModel(nn.Module):
    """uint8 ``(N, H, W, 3)`` → float32 ``(N, 1, H, W)``: normalisation inside the graph.
    A network with a class head also returns its logits, float32 ``(N, K, H, W)`` (the
    runtime reads them at the peaks only, so no softmax runs over every pixel)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 1, 1, 3))
        self.register_buffer("inv_std", (1.0 / torch.tensor(std, dtype=torch.float32)).view(1, 1, 1, 3))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.float() - self.mean) * self.inv_std  # (N, H, W, 3)
        x = x.permute(0, 3, 1, 2).to(self.dtype)  # (N, 3, H, W)
        if has_class_head(self.model):
            proximity, logits = self.model.forward_all(x)
            return proximity.float(), logits.float()  # (N, 1, H, W), (N, K, H, W)
        # A pixel classifier's logits become probabilities here (the map is thresholded).
        return map_output(self.model, self.model(x)).float()  # (N, 1, H, W)


def has_class_head(model: nn.Module) -> bool:
    """Whether ``model`` (a MicroNet) carries a class head."""
    return getattr(model, "class_head", None) is not None


def _output_names(wrapper: nn.Module) -> list[str]:
    return [OUTPUT_NAME, CLASS_OUTPUT_NAME] if has_class_head(wrapper.model) else [OUTPUT_NAME]


def _fold(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    """A convolution with the following eval-mode batch norm folded into it."""
    fused = copy.deepcopy(conv)
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    shift = bn.bias.detach() - bn.running_mean * scale
    w = fused.weight.detach()
    if isinstance(conv, nn.ConvTranspose2d):  # weight (C_in, C_out, k, k)
        w = w * scale.view(1, -1, 1, 1)
    else:  # weight (C_out, C_in, k, k)
        w = w * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach() * scale + shift if conv.bias is not None else shift
    fused.weight = nn.Parameter(w)
    fused.bias = nn.Parameter(bias)
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every Conv/ConvTranspose → BatchNorm pair inside
    an ``nn.Sequential`` folded into one convolution. Outputs are unchanged (to float
    rounding); graphs get smaller and quantise better."""
    model = copy.deepcopy(model).eval()

    def visit(module: nn.Module) -> None:
        for child in module.children():
            visit(child)
        if isinstance(module, nn.Sequential):
            items = list(module)
            out: list[nn.Module] = []
            i = 0
            while i < len(items):
                if (
                    i + 1 < len(items)
                    and isinstance(items[i], (nn.Conv2d, nn.ConvTranspose2d))
                    and isinstance(items[i + 1], nn.BatchNorm2d)
                ):
                    out.append(_fold(items[i], items[i + 1]))
                    i += 2
                else:
                    out.append(items[i])
                    i += 1
            for name in list(module._modules):
                del module._modules[name]
            for k, m in enumerate(out):
                module.add_module(str(k), m)

    visit(model)
    return model


def _torch_export(wrapper: nn.Module, path: Path, example_hw: tuple[int, int] = (96, 128)) -> None:
    example = torch.randint(0, 256, (1, *example_hw, 3), dtype=torch.uint8)
    with warnings.catch_warnings():
        # We choose the TorchScript exporter on purpose (dynamo=False): it traces MicroNet
        # to a clean graph with dynamic H and W and no shape guards, which the aligned
        # fast path, int8 quantisation and TensorRT's parser rely on. torch >= 2.9 warns
        # on every call that it is deprecated; the warning says nothing about our graph.
        warnings.simplefilter("ignore", DeprecationWarning)  # only around this call
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=_output_names(wrapper),
            dynamic_axes={INPUT_NAME: {0: "N", 1: "H", 2: "W"}, **{o: {0: "N", 2: "H", 3: "W"} for o in _output_names(wrapper)}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter: clean graph, dynamic H/W without guards
        )


def _aligned_export(wrapper: nn.Module, path: Path) -> None:
    """Exports ``wrapper`` traced for inputs whose sides are multiples of the network's
    total stride (8): every level's map then has exactly the size its skip connection
    expects, so the crop/pad of ``_fit`` is the identity and is left out of the graph."""
    aligned = copy.deepcopy(wrapper)
    aligned.model.aligned_inputs = True
    _torch_export(aligned, path, example_hw=(96, 128))


def _set_metadata(path: Path, info: ModelInfo, reference: dict | None = None) -> None:
    import json

    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    if reference is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = REFERENCE_KEY, json.dumps(reference, separators=(",", ":"))
    model.producer_name = "micronet-sdk"
    model.doc_string = "MicroNet nucleus detector: uint8 RGB N×H×W×3 → proximity map N×1×H×W"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _export_fp32_branches(model: nn.Module, info: ModelInfo, general: Path, aligned: Path) -> None:
    wrapper = DeployableModel(fold_batchnorm(model), info.mean, info.std)
    _torch_export(wrapper, general)
    _aligned_export(wrapper, aligned)


def _export_fp32(model: nn.Module, info: ModelInfo, path: Path, **_: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        general, aligned = Path(tmp) / "general.onnx", Path(tmp) / "aligned.onnx"
        _export_fp32_branches(model, info, general, aligned)
        combine_aligned_fast_path(general, aligned, path)


def _export_fp16(model: nn.Module, info: ModelInfo, path: Path, **_: object) -> None:
    # fp16 weights and compute; the uint8 input and float32 output stay as in fp32, so a
    # strongly typed TensorRT network builds in fp16 without builder flags.
    folded = fold_batchnorm(model).half()
    _torch_export(DeployableModel(folded, info.mean, info.std, dtype=torch.float16), path)


def _export_int8(
    model: nn.Module,
    info: ModelInfo,
    path: Path,
    calibration: Iterable[np.ndarray] | None = None,
    **_: object,
) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is None:
        raise InputError("int8 export needs calibration images (calibration_data=DIR of training images)")
    images = [np.ascontiguousarray(im[None]) for im in calibration]  # (1, H, W, 3) uint8 each
    if not images:
        raise InputError("int8 export: the calibration set is empty")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            nxt = next(self._it, None)
            return None if nxt is None else {INPUT_NAME: nxt}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _export_fp32_branches(model, info, tmp / "general.onnx", tmp / "aligned.onnx")
        # Each branch is quantised on its own, with the same calibration crops, then the
        # two are joined as in fp32.
        for name in ("general", "aligned"):
            quant_pre_process(str(tmp / f"{name}.onnx"), str(tmp / f"{name}.prep.onnx"), skip_symbolic_shape=True)
            quantize_static(
                str(tmp / f"{name}.prep.onnx"),
                str(tmp / f"{name}.int8.onnx"),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,  # u8 activations, s8 weights: the fast CPU path
                weight_type=QuantType.QInt8,
                # 7-bit weights, [-64, 64]: u8×s8 pair sums fit in 16 bits, so CPUs
                # without VNNI cannot saturate (see the module docstring).
                reduce_range=True,
                # The full calibrated range, not a percentile: the largest activations
                # sit at nucleus centres, the very maxima the detector looks for, and
                # clipping them flattens peaks (percentile 99.99 moved the map by up to
                # 1.06 against min-max's 0.10 on the fast-cpu model; `micronet check`).
                calibrate_method=CalibrationMethod.MinMax,
                # The head stays float: its output is the proximity map, whose maxima
                # are the detections; a single-channel convolution costs nothing in float
                # and keeps the map's full resolution.
                nodes_to_exclude=_head_nodes(tmp / f"{name}.prep.onnx"),
            )
        combine_aligned_fast_path(tmp / "general.int8.onnx", tmp / "aligned.int8.onnx", path)


def _head_nodes(path: Path) -> list[str]:
    """The convolution that writes the model's output (through casts, crops and
    reshapes): the head that ``int8`` export leaves in float."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    # A class head at 1/4 resolution stays float whole: its convolutions cost little at
    # 1/4, and quantising them changed the class of 3 % of the detections (1 % in float).
    quarter = any(n.op_type == "Resize" for n in graph.node)  # a head at 1/4 resizes its logits
    heads = [n.name for n in graph.node if quarter and n.op_type in ("Conv", "ConvTranspose") and "class_" in n.name]
    for output in graph.output:  # the proximity map, and the class logits where present
        name = output.name
        while name in producer:
            node = producer[name]
            if node.op_type in ("Conv", "ConvTranspose"):
                heads.append(node.name)
                break
            name = node.input[0]
        else:
            raise InputError(f"{path}: no convolution produces the output {output.name!r}")
    return heads


# Recorded in an int8 model's provenance; the runtime warns about int8 models without it
# on CPUs without VNNI, where full 8-bit weights can saturate.
INT8_SCHEME = "qdq u8 activations, s8 per-channel 7-bit weights [-64, 64], float head"


def reference_results(model: nn.Module, info: ModelInfo) -> dict:
    """The fp32 model's map, detections and (with a class head) classes on the reference
    images (:func:`micronet.runtime.diagnostics.check.build_reference`), whatever the export
    precision: the known answers ``micronet check`` holds every backend to."""
    wrapper = DeployableModel(fold_batchnorm(model), info.mean, info.std).eval()

    def map_fn(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = wrapper(torch.from_numpy(np.array(batch)))
            return (torch.cat(out, 1) if isinstance(out, tuple) else out).numpy()  # (1, 1 [+ K class logits], H, W)

    return build_reference(map_fn, info.threshold, info.min_distance)


def int8_weight_range(path: str | Path) -> tuple[int, int]:
    """The smallest and largest int8 weight in a quantised model (its ``If`` branches
    included): ``(-64, 64)`` at most for our exports, so no CPU's u8×s8 kernel can
    saturate. ``(0, 0)`` for a model without int8 weights."""
    import onnx
    from onnx import numpy_helper

    lo = hi = 0

    def visit(graph: "onnx.GraphProto") -> None:
        nonlocal lo, hi
        for init in graph.initializer:
            if init.data_type == onnx.TensorProto.INT8:
                values = numpy_helper.to_array(init)
                if values.size:
                    lo, hi = min(lo, int(values.min())), max(hi, int(values.max()))
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)

    visit(onnx.load(str(path)).graph)
    return lo, hi


_EXPORTERS: dict[str, Callable[..., None]] = {"fp32": _export_fp32, "fp16": _export_fp16, "int8": _export_int8}


def calibration_crops(folder: str | Path, count: int = 32, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Random ``size × size`` uint8 crops from the images of a point-annotated folder (its
    ``train`` split when it has a split.csv) or a plain folder of images, for int8
    calibration."""
    from PIL import Image

    folder = Path(folder)
    files = sorted(p for ext in ("png", "jpg", "jpeg", "tif", "tiff") for p in (folder / "images" if (folder / "images").is_dir() else folder).glob(f"*.{ext}"))
    split_file = folder / "split.csv"
    if split_file.is_file():
        # A point-annotated folder: calibrate on the training split only, never on the
        # images the model will be evaluated on.
        import csv

        with split_file.open() as f:
            train = {row["name"] for row in csv.DictReader(f) if row.get("split") == "train"}
        files = [p for p in files if p.stem in train]
    if not files:
        raise InputError(f"{folder}: no calibration images (png/jpg/tif) found")
    rng = np.random.default_rng(seed)
    crops = []
    for k in range(count):
        with Image.open(files[k % len(files)]) as im:
            arr = np.asarray(im.convert("RGB"))
        h, w = arr.shape[:2]
        y = int(rng.integers(0, max(1, h - size + 1)))
        x = int(rng.integers(0, max(1, w - size + 1)))
        crops.append(np.ascontiguousarray(arr[y : y + size, x : x + size]))
    return crops


def export_onnx(
    checkpoint: str | Path,
    output: str | Path,
    precision: str = "fp32",
    calibration_data: str | Path | None = None,
    calibration_count: int = 32,
) -> Path:
    """Exports a checkpoint to ONNX.

    Args:
        checkpoint: a ``.safetensors`` MicroNet checkpoint.
        output: the ``.onnx`` file to write.
        precision: ``fp32``, ``fp16`` or ``int8`` (see the module table).
        calibration_data: for int8, a folder of training images (``images/`` inside or
            plain image files).
        calibration_count: number of random 256×256 calibration crops.

    Returns:
        The written path; ``onnx.checker`` has passed on it.
    """
    from micronet.trainer.checkpoint import load_checkpoint

    if precision not in FORMATS:
        raise InputError(f"precision {precision!r} is not supported; valid: {', '.join(FORMATS)}")
    if precision != "int8" and calibration_data is not None:
        raise InputError(f"calibration_data applies to int8 only, not {precision}")
    model, info = load_checkpoint(checkpoint)
    calibration = calibration_crops(calibration_data, calibration_count) if calibration_data is not None else None
    return export_model(model, info, output, precision, calibration=calibration)


def export_model(
    model: nn.Module,
    info: ModelInfo,
    output: str | Path,
    precision: str = "fp32",
    calibration: Sequence[np.ndarray] | None = None,
) -> Path:
    """Exports a model in memory (what :func:`export_onnx` does after loading the
    checkpoint): the graph of ``precision``, reference results, metadata. The file is
    written under a temporary name and renamed when complete, so a crash never leaves
    a model that looks whole.

    Args:
        model: a MicroNet ``nn.Module`` (eval mode is set on a copy).
        info: its metadata; ``precision`` (and for int8 the quantisation scheme) is
            recorded in a copy.
        output: the ``.onnx`` file to write.
        precision: ``fp32``, ``fp16`` or ``int8``.
        calibration: for int8, ``(H, W, 3)`` uint8 training crops
            (:func:`calibration_crops`).
    """
    if precision not in FORMATS:
        raise InputError(f"precision {precision!r} is not supported; valid: {', '.join(FORMATS)}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    info = ModelInfo.from_json(info.to_json())
    info.precision = precision
    if precision == "int8":
        info.provenance = {**info.provenance, "quantization": INT8_SCHEME}
    model = copy.deepcopy(model).eval()
    partial = output.with_name(output.name + ".partial")
    try:
        with torch.no_grad():
            _EXPORTERS[precision](model, info, partial, calibration=calibration)
            reference = reference_results(model, info)
        _set_metadata(partial, info, reference)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    log.info("wrote %s (%s, %.1f MB)", output, precision, output.stat().st_size / 1e6)
    return output
