"""Phenotypes: probabilities read at peaks, and the SC-CNN classification scores
against scikit-learn-style reference values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from micronet.runtime.classes import class_colour, class_probabilities
from micronet.runtime.evaluation.class_metrics import classification_scores


def test_probabilities_are_the_softmax_at_each_peak():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 30, 40)).astype(np.float32)
    xy = np.array([[3, 7], [39, 29], [0, 0], [12.4, 5.6]])
    probs = class_probabilities(logits, xy)
    assert probs.shape == (4, 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    for (x, y), row in zip(np.rint(xy).astype(int), probs):
        e = np.exp(logits[:, y, x] - logits[:, y, x].max())
        np.testing.assert_allclose(row, e / e.sum(), rtol=1e-5)
    assert class_probabilities(logits, np.zeros((0, 2))).shape == (0, 4)


def test_scores_ignore_unlabelled_truth_and_weight_by_support():
    true = np.array([0, 0, 0, 1, 1, 2, -1, -1])
    pred = np.array([0, 0, 1, 1, 0, 2, 2, 0])
    s = classification_scores(true, pred, ["a", "b", "c"])
    assert s.support == [3, 2, 1]
    assert s.confusion == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    # a: P 2/3 R 2/3; b: P 1/2 R 1/2; c: P 1 R 1
    np.testing.assert_allclose(s.f1, [2 / 3, 0.5, 1.0])
    np.testing.assert_allclose(s.weighted_f1, (3 * 2 / 3 + 2 * 0.5 + 1.0) / 6)
    assert s.accuracy == pytest.approx(4 / 6)
    assert "| **weighted** |" in s.table()


def test_scores_refuse_out_of_range_classes():
    with pytest.raises(ValueError, match="0..1"):
        classification_scores(np.array([0, 2]), np.array([0, 1]), ["a", "b"])


def test_known_classes_have_conventional_colours():
    assert class_colour("epithelial") == (200, 0, 0)
    assert len(class_colour("something else", 3)) == 3


@pytest.fixture(scope="module", params=[{}, {"class_context": 4, "class_scale": 4}], ids=["full", "quarter"])
def class_model(tmp_path_factory, request):
    """A random micronet_tiny with a class head (at full resolution, and at 1/4 with its
    logits resized), exported to fp32 ONNX."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from micronet.export.onnx import export_model
    from micronet.runtime.model_info import ModelInfo
    from micronet.trainer.models import create_model

    torch.manual_seed(0)
    model = create_model("micronet_tiny", classes=("epithelial", "fibroblast", "inflammatory", "others"), **request.param).eval()
    image = np.random.default_rng(0).integers(0, 256, (1, 200, 200, 3), dtype=np.uint8)
    x = (torch.from_numpy(image).float() - 150.0) / 40.0
    with torch.no_grad():
        threshold = float(np.quantile(model(x.permute(0, 3, 1, 2)).numpy(), 0.95))
    info = ModelInfo(architecture=model.config_dict(), mean=[150.0] * 3, std=[40.0] * 3, mpp=0.55, threshold=threshold)
    return export_model(model, info, tmp_path_factory.mktemp("classes") / "cls.onnx", "fp32")


def test_detector_classifies_the_same_whole_and_tiled(class_model, tmp_path):
    from micronet import Detector

    image = np.random.default_rng(1).integers(0, 256, (300, 340, 3), dtype=np.uint8)
    whole = Detector(class_model, device="cpu", tile_size=512).detect(image, mpp=0.55)
    tiled = Detector(class_model, device="cpu", tile_size=192).detect(image, mpp=0.55)
    assert len(whole) > 10 and whole.class_names == ("epithelial", "fibroblast", "inflammatory", "others")
    np.testing.assert_array_equal(tiled.xy, whole.xy)
    np.testing.assert_allclose(tiled.class_probabilities, whole.class_probabilities, atol=1e-5)
    np.testing.assert_allclose(whole.class_probabilities.sum(1), 1.0, rtol=1e-5)
    # Outputs: CSV columns, QuPath classifications, a coloured overlay.
    whole.to_csv(tmp_path / "d.csv")
    header = (tmp_path / "d.csv").read_text().splitlines()[0]
    assert header == "x,y,score,class,p_epithelial,p_fibroblast,p_inflammatory,p_others"
    feature = whole.to_geojson()["features"][0]
    name = whole.class_names[whole.classes[0]]
    assert feature["properties"]["classification"]["name"] == name
    assert len(feature["properties"]["classification"]["color"]) == 3
    assert sum(whole.class_counts().values()) == len(whole)
    assert whole.to_overlay(image).shape == image.shape


def test_offset_and_concat_keep_the_classes(class_model):
    from micronet.runtime.detections import Detections

    from micronet import Detector

    image = np.random.default_rng(2).integers(0, 256, (120, 130, 3), dtype=np.uint8)
    found = Detector(class_model, device="cpu").detect(image, mpp=0.55)
    both = Detections.concat([found, found.offset(500, 0)])
    assert both.class_names == found.class_names
    np.testing.assert_array_equal(both.classes, np.concatenate([found.classes, found.classes]))


def test_class_labels_are_read_by_position_and_unlabelled_centres_stay_minus_one(tmp_path):
    from micronet.runtime.evaluation.class_metrics import read_class_labels

    (tmp_path / "classes").mkdir()
    (tmp_path / "classes" / "a.csv").write_text("x,y,class\n10.5,20,inflammatory\n3,4,epithelial\n")
    points = np.array([[3.0, 4.0], [7.0, 7.0], [10.5, 20.0]])
    labels = read_class_labels(tmp_path, "a", points, ("epithelial", "fibroblast", "inflammatory", "others"))
    assert labels.tolist() == [0, -1, 2]
    with pytest.raises(ValueError, match="not the model's"):
        read_class_labels(tmp_path, "a", points, ("epithelial",))
