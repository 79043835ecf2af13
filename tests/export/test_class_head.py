"""A MicroNet with a class head: the ONNX model gets a second output, the class logits,
equal to the torch model's in fp32 and within the int8 tolerance in int8; a checkpoint
without a head still exports with one output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from micronet.export.onnx import export_model  # noqa: E402
from micronet.runtime.model_info import CLASS_OUTPUT_NAME, OUTPUT_NAME, ModelInfo  # noqa: E402
from micronet.trainer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from micronet.trainer.models import create_model  # noqa: E402

CLASSES = ("epithelial", "fibroblast", "inflammatory", "others")
MEAN, STD = [180.0, 130.0, 170.0], [40.0, 45.0, 35.0]


# The head at full resolution, and at 1/4 with its logits resized (pad, pool, Resize traced).
@pytest.fixture(scope="module", params=[{}, {"class_context": 4, "class_scale": 4}], ids=["full", "quarter"])
def classifier(tmp_path_factory, request) -> tuple[torch.nn.Module, ModelInfo, Path]:
    torch.manual_seed(0)
    model = create_model("micronet_tiny", classes=CLASSES, **request.param).eval()
    info = ModelInfo(architecture=model.config_dict(), mean=MEAN, std=STD, mpp=0.55, threshold=0.0)
    path = save_checkpoint(tmp_path_factory.mktemp("cls") / "cls.safetensors", model, info)
    return model, info, path


def torch_outputs(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = ((torch.from_numpy(images).float() - torch.tensor(MEAN)) / torch.tensor(STD)).permute(0, 3, 1, 2)
    with torch.no_grad():
        prox, logits = model.forward_all(x)
    return prox.numpy(), logits.numpy()


def test_checkpoint_round_trip_keeps_the_class_head(classifier):
    model, _, path = classifier
    loaded, info = load_checkpoint(path)
    assert tuple(info.architecture["classes"]) == CLASSES
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        for a, b in zip(loaded.forward_all(x), model.forward_all(x)):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        # forward is the proximity map alone, as for a detector without a head.
        np.testing.assert_array_equal(loaded(x).numpy(), model.forward_all(x)[0].numpy())


@pytest.mark.parametrize("size", [(64, 72), (61, 47)])  # the aligned branch, the general one
def test_fp32_onnx_has_class_logits_equal_to_torch(classifier, tmp_path, size):
    model, info, _ = classifier
    path = export_model(model, info, tmp_path / "cls.onnx", "fp32")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == [OUTPUT_NAME, CLASS_OUTPUT_NAME]
    images = np.random.default_rng(1).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    prox, logits = sess.run(None, {"image": images})
    want_prox, want_logits = torch_outputs(model, images)
    assert logits.shape == (2, len(CLASSES), *size)
    np.testing.assert_allclose(prox, want_prox, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=1e-4)


def test_int8_keeps_the_class_decision(classifier, tmp_path):
    model, info, _ = classifier
    rng = np.random.default_rng(2)
    calibration = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    path = export_model(model, info, tmp_path / "cls.int8.onnx", "int8", calibration=calibration)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    _, logits = sess.run(None, {"image": images})
    _, want = torch_outputs(model, images)
    agree = (logits.argmax(1) == want.argmax(1)).mean()
    assert agree > 0.9, agree
