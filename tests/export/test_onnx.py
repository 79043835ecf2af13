"""Checkpoint → ONNX: graph contract, metadata, BN folding, precisions, parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from micronet.export.onnx import export_onnx, fold_batchnorm, int8_weight_range  # noqa: E402
from micronet.runtime.evaluation.matching import evaluate_points  # noqa: E402
from micronet.runtime.model_info import ModelInfo  # noqa: E402
from micronet.runtime.peaks import find_peaks  # noqa: E402
from micronet.trainer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from micronet.trainer.models import create_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PRETRAINED = REPO / "trainer" / "pretrained" / "micronet_crchisto.safetensors"


def torch_map(checkpoint: Path, images: np.ndarray) -> np.ndarray:
    model, info = load_checkpoint(checkpoint)
    x = (torch.from_numpy(images).float() - torch.tensor(info.mean)) / torch.tensor(info.std)
    with torch.no_grad():
        return model(x.permute(0, 3, 1, 2)).numpy()


def branches(model) -> dict[str, "onnx.GraphProto"]:
    """The graphs an exported model runs: its ``If`` branches (fp32, int8) or itself (fp16)."""
    ifs = [n for n in model.graph.node if n.op_type == "If"]
    if not ifs:
        return {"main": model.graph}
    (node,) = ifs
    return {a.name: a.g for a in node.attribute}


def all_nodes(model) -> list:
    return [n for g in branches(model).values() for n in g.node]


def all_initializers(model) -> dict:
    return {i.name: i for g in branches(model).values() for i in g.initializer} | {i.name: i for i in model.graph.initializer}


def run(path: Path, images: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": images})[0]


def test_batchnorm_folding_keeps_outputs(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 61, 47)
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), atol=1e-5, rtol=1e-4)


def test_fp32_graph_contract_metadata_and_dynamic_shapes(tiny_checkpoint, tmp_path):
    out = export_onnx(tiny_checkpoint, tmp_path / "m.onnx")
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    (inp,), (outp,) = model.graph.input, model.graph.output
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[3] == 3 and all(isinstance(d, str) for d in dims[:3]), dims
    assert outp.name == "proximity" and outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = {p.key: p.value for p in model.metadata_props}
    info = ModelInfo.from_json(meta["micronet"])
    assert info.precision == "fp32" and info.mpp == pytest.approx(0.55) and info.architecture["name"] == "micronet"
    assert not any(n.op_type == "BatchNormalization" for n in all_nodes(model))
    rng = np.random.default_rng(0)
    # Aligned sizes take the fast branch, the others the general one: both equal torch.
    for shape in [(1, 64, 64, 3), (2, 96, 200, 3), (2, 75, 101, 3), (1, 333, 217, 3), (1, 9, 13, 3)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_allclose(run(out, images), torch_map(tiny_checkpoint, images), atol=1e-4)


def test_fp32_aligned_branch_has_no_crop_or_pad_and_is_taken_for_aligned_sizes(tiny_checkpoint, tmp_path):
    out = export_onnx(tiny_checkpoint, tmp_path / "m.onnx")
    model = onnx.load(str(out))
    graphs = branches(model)
    assert set(graphs) == {"then_branch", "else_branch"}
    aligned = [n.op_type for n in graphs["then_branch"].node]
    general = [n.op_type for n in graphs["else_branch"].node]
    assert "Slice" not in aligned and "Pad" not in aligned
    assert "Slice" in general and "Pad" not in general  # crops only: halving rounds up
    assert aligned.count("Conv") == general.count("Conv") and aligned.count("Elu") == general.count("Elu")
    # Which branch runs: ORT's profiler names the nodes it executed.
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "prof")
    sess = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    sess.run(None, {"image": np.zeros((1, 64, 96, 3), np.uint8)})
    trace = Path(sess.end_profiling()).read_text()
    assert "aligned/" in trace and "general/" not in trace
    sess = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    sess.run(None, {"image": np.zeros((1, 64, 100, 3), np.uint8)})
    trace = Path(sess.end_profiling()).read_text()
    assert "general/" in trace and "aligned/" not in trace


def test_relu_variant_exports_relu_and_matches_torch(tmp_path):
    torch.manual_seed(1)
    model = create_model("micronet_tiny", activation="relu").eval()
    info = ModelInfo(architecture=model.config_dict(), mean=[180.0, 130.0, 170.0], std=[40.0, 45.0, 35.0], mpp=0.55, threshold=0.5)
    ckpt = save_checkpoint(tmp_path / "relu.safetensors", model, info)
    out = export_onnx(ckpt, tmp_path / "relu.onnx")
    ops = [n.op_type for n in all_nodes(onnx.load(str(out)))]
    assert "Relu" in ops and "Elu" not in ops
    images = np.random.default_rng(3).integers(0, 256, (1, 88, 72, 3), dtype=np.uint8)
    np.testing.assert_allclose(run(out, images), torch_map(ckpt, images), atol=1e-4)


def test_fp16_keeps_uint8_in_float32_out_and_computes_in_half(tiny_checkpoint, tmp_path):
    out = export_onnx(tiny_checkpoint, tmp_path / "m.fp16.onnx", precision="fp16")
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    inits = {i.name: i for i in model.graph.initializer}
    assert conv_weights and all(inits[w].data_type == onnx.TensorProto.FLOAT16 for w in conv_weights if w in inits)
    images = np.random.default_rng(1).integers(0, 256, (1, 96, 96, 3), dtype=np.uint8)
    ref = torch_map(tiny_checkpoint, images)
    np.testing.assert_allclose(run(out, images), ref, atol=2e-2 * max(1.0, float(np.abs(ref).max())))


def test_int8_is_static_qdq_per_channel(tiny_checkpoint, tmp_path, shared_data):
    out = export_onnx(tiny_checkpoint, tmp_path / "m.int8.onnx", precision="int8", calibration_data=shared_data / "crchisto", calibration_count=4)
    model = onnx.load(str(out))
    for graph in branches(model).values():  # both the aligned and the general branch
        ops = [n.op_type for n in graph.node]
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
        # Per-channel weights: a weight DequantizeLinear with a 1-D scale (one per output channel).
        inits = {i.name: i for i in graph.initializer}
        scales = [inits[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits]
        assert any(len(s.dims) == 1 and s.dims[0] > 1 for s in scales)
        # The head (the convolution writing the map) stays float: no clipped maxima.
        producer = {o: n for n in graph.node for o in n.output}
        name = graph.output[0].name
        while producer[name].op_type not in ("Conv", "ConvTranspose"):
            name = producer[name].input[0]
        head = producer[name]
        assert head.input[1] in inits and inits[head.input[1]].data_type == onnx.TensorProto.FLOAT  # float weights, no DQ
    info = ModelInfo.from_json({p.key: p.value for p in model.metadata_props}["micronet"])
    assert info.precision == "int8" and "7-bit" in info.provenance["quantization"]
    images = np.random.default_rng(2).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    assert run(out, images).shape == (1, 1, 64, 64)


def test_int8_weights_are_7_bit_so_no_cpu_can_saturate(tiny_checkpoint, tmp_path, shared_data):
    # vpmaddubsw (x86 without VNNI) adds two u8×s8 products in saturating 16-bit
    # arithmetic: 2·255·64 = 32640 fits in 32767, 2·255·127 does not.
    out = export_onnx(tiny_checkpoint, tmp_path / "m.int8.onnx", precision="int8", calibration_data=shared_data / "crchisto", calibration_count=4)
    lo, hi = int8_weight_range(out)
    assert -64 <= lo < 0 < hi <= 64
    assert 2 * 255 * max(-lo, hi) <= 32767


def test_bad_export_requests_raise(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="valid: fp32, fp16, int8"):
        export_onnx(tiny_checkpoint, tmp_path / "m.onnx", precision="int4")
    with pytest.raises(ValueError, match="needs calibration"):
        export_onnx(tiny_checkpoint, tmp_path / "m.onnx", precision="int8")
    with pytest.raises(ValueError, match="int8 only"):
        export_onnx(tiny_checkpoint, tmp_path / "m.onnx", precision="fp16", calibration_data=tmp_path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a safetensors checkpoint"):
        export_onnx(junk, tmp_path / "m.onnx")


# --- the real model (trainer/pretrained) ---------------------------------------------

needs_pretrained = pytest.mark.skipif(not PRETRAINED.exists(), reason=f"no trained checkpoint at {PRETRAINED}")


def _detections(maps: np.ndarray, info: ModelInfo) -> list[np.ndarray]:
    return [find_peaks(m[0], info.threshold, info.min_distance)[0] for m in maps]


def _pooled_f1(preds: list[np.ndarray], refs: list[np.ndarray], radius: float) -> float:
    tp = fp = fn = 0
    for p, r in zip(preds, refs):
        m = evaluate_points(p, r, radius)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    return 2 * tp / max(1, 2 * tp + fp + fn)


@needs_pretrained
def test_real_model_fp32_matches_torch_and_fp16_matches_fp32(shared_data, tmp_path, detections_agree):
    from micronet.runtime.evaluation.datasets import load_point_folder

    data = load_point_folder(shared_data / "crchisto", "test")
    images = np.stack(data.images[:4])
    _, info = load_checkpoint(PRETRAINED)
    fp32 = export_onnx(PRETRAINED, tmp_path / "m.onnx")
    fp16 = export_onnx(PRETRAINED, tmp_path / "m.fp16.onnx", precision="fp16")
    ref = torch_map(PRETRAINED, images)
    maps32 = run(fp32, images)
    assert np.abs(maps32 - ref).max() <= 1e-4
    det_ref, det32 = _detections(ref, info), _detections(maps32, info)
    for a, b in zip(det_ref, det32):
        # Same peaks, up to near-ties another instruction set may break the other way.
        detections_agree(b, a, radius=0.0)
    det16 = _detections(run(fp16, images), info)
    assert _pooled_f1(det16, det32, radius=2.0) >= 0.99


@needs_pretrained
def test_real_model_int8_loses_at_most_001_f1_on_the_test_split(shared_data, tmp_path):
    from micronet.runtime.detector import Detector
    from micronet.runtime.evaluation.datasets import load_point_folder
    from micronet.runtime.evaluation.metrics import evaluate_images

    data = load_point_folder(shared_data / "crchisto", "test")
    lean = PRETRAINED.with_name("micronet_crchisto_relu.safetensors")  # fast-cpu's: the network shipped in int8
    fp32 = export_onnx(lean, tmp_path / "m.onnx")
    int8 = export_onnx(lean, tmp_path / "m.int8.onnx", "int8", calibration_data=shared_data / "crchisto", calibration_count=16)
    f1 = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        det = Detector(str(path))
        f1[name] = evaluate_images([det.detect(im).xy for im in data.images], data.points, 6.0).pooled.f1
    assert f1["fp32"] > 0.79
    assert f1["int8"] >= f1["fp32"] - 0.01, f1


def test_a_failed_export_leaves_no_file_and_a_good_one_no_partial(tiny_checkpoint, tmp_path):
    from micronet.export.onnx import export_model
    from micronet.trainer.checkpoint import load_checkpoint

    model, info = load_checkpoint(tiny_checkpoint)
    out = tmp_path / "m.int8.onnx"
    with pytest.raises(ValueError, match="calibration"):
        export_model(model, info, out, "int8", calibration=None)
    assert list(tmp_path.iterdir()) == []  # neither the model nor a partial file
    good = export_model(model, info, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"] and good.stat().st_size > 0
    assert info.precision == "fp32" and "quantization" not in info.provenance  # the caller's info is untouched
