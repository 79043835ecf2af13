"""Detections: validation, CSV round trip, QuPath GeoJSON, overlay, offset and concat
(micronet.runtime.detections)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from micronet.runtime.detections import Detections
from micronet.runtime.points import read_points_csv


@pytest.fixture
def found() -> Detections:
    rng = np.random.default_rng(0)
    xy = np.column_stack([rng.integers(0, 120, 40), rng.integers(0, 80, 40)]).astype(np.float32)
    xy[0] = (10.25, 3.5)  # sub-pixel values survive too
    scores = rng.uniform(0.2, 5.0, 40).astype(np.float32)
    return Detections(xy, scores, image_shape=(80, 120), mpp=0.5)


def test_fields_are_float32_and_len_counts(found):
    assert len(found) == 40 and found.xy.dtype == np.float32 and found.scores.dtype == np.float32
    d = Detections([[1, 2], [3, 4]], [0.5, 0.25])
    assert d.xy.dtype == np.float32 and d.image_shape is None and d.mpp is None
    assert len(Detections.empty((5, 6))) == 0
    assert "n=40" in repr(found)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"xy": np.zeros((3, 3)), "scores": np.zeros(3)}, r"\(N, 2\)"),
        ({"xy": np.zeros((3, 2)), "scores": np.zeros(2)}, r"\(3,\) array"),
        ({"xy": np.zeros((1, 2)), "scores": [1.0], "mpp": 0}, "mpp"),
        ({"xy": np.zeros((1, 2)), "scores": [1.0], "image_shape": (5,)}, "image_shape"),
    ],
)
def test_bad_fields_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Detections(**kwargs)


def test_csv_round_trip(found, tmp_path):
    path = found.to_csv(tmp_path / "img.csv")
    assert path.read_text().splitlines()[0] == "x,y,score"
    back = Detections.from_csv(path, image_shape=(80, 120), mpp=0.5)
    np.testing.assert_array_equal(back.xy, found.xy)
    np.testing.assert_array_equal(back.scores, found.scores)
    # The evaluation tools read the same file as points.
    np.testing.assert_array_equal(read_points_csv(path), found.xy.astype(np.float64))


def test_empty_csv_round_trip(tmp_path):
    path = Detections.empty().to_csv(tmp_path / "none.csv")
    assert path.read_text() == "x,y,score\n"
    assert len(Detections.from_csv(path)) == 0


def test_csv_of_annotations_reads_with_unit_scores(tmp_path):
    (tmp_path / "truth.csv").write_text("x,y\n1.5,2\n3,4\n")
    d = Detections.from_csv(tmp_path / "truth.csv")
    np.testing.assert_array_equal(d.xy, [[1.5, 2], [3, 4]])
    np.testing.assert_array_equal(d.scores, [1, 1])


def test_geojson_is_a_qupath_detection_collection(found, tmp_path):
    collection = found.to_geojson(tmp_path / "img.geojson")
    assert json.loads((tmp_path / "img.geojson").read_text()) == collection
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == len(found)
    for feature, (x, y), s in zip(collection["features"], found.xy.tolist(), found.scores.tolist()):
        assert feature["type"] == "Feature"
        assert feature["geometry"] == {"type": "Point", "coordinates": [x + 0.5, y + 0.5]}  # pixel centre
        props = feature["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"]["name"] == "Nucleus"
        assert props["measurements"] == {"score": pytest.approx(s)}


def test_overlay_draws_on_a_copy(found, tmp_path):
    from PIL import Image

    image = np.full((80, 120, 3), 255, np.uint8)
    overlay = found.to_overlay(image, tmp_path / "img.png")
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    assert (image == 255).all()  # untouched
    assert (overlay != 255).any()
    with Image.open(tmp_path / "img.png") as im:
        assert im.format == "PNG" and im.size == (120, 80)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), overlay)
    with pytest.raises(ValueError, match=r"\(80, 120\)"):
        found.to_overlay(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        found.to_overlay(np.zeros((80, 120), np.uint8))


def test_offset_and_concat_assemble_regions(found):
    left = Detections([[1, 2]], [0.9], image_shape=(10, 10), mpp=0.5)
    right = Detections([[3, 4], [5, 6]], [0.8, 0.7], image_shape=(10, 10), mpp=0.5)
    whole = Detections.concat([left, right.offset(10, 0)], image_shape=(10, 20))
    np.testing.assert_array_equal(whole.xy, [[1, 2], [13, 4], [15, 6]])
    np.testing.assert_array_equal(whole.scores, np.float32([0.9, 0.8, 0.7]))
    assert whole.image_shape == (10, 20) and whole.mpp == 0.5
    assert right.offset(1, 1).image_shape is None
    assert Detections.concat([left, left]).image_shape == (10, 10)
    assert len(Detections.concat([])) == 0
    with pytest.raises(ValueError, match="different pixel sizes"):
        Detections.concat([left, Detections([[0, 0]], [1.0], mpp=0.25)])
    with pytest.raises(TypeError, match="expected Detections"):
        Detections.concat([left, "x"])
    with pytest.raises(TypeError, match="dx"):
        found.offset(float("nan"), 0)


def test_detections_are_frozen(found):
    with pytest.raises(AttributeError):
        found.mpp = 1.0


def test_from_csv_reads_the_slide_layout_with_its_scores(tmp_path):
    # What detect_slide writes: level-0 pixels, micrometres, score.
    path = tmp_path / "slide.csv"
    path.write_text("x,y,x_um,y_um,score\n10.5,20.25,5.24,10.1,3.5\n1,2,0.5,1,2.25\n", encoding="utf-8")
    found = Detections.from_csv(path)
    np.testing.assert_array_equal(found.xy, np.array([[10.5, 20.25], [1, 2]], np.float32))
    np.testing.assert_array_equal(found.scores, np.array([3.5, 2.25], np.float32))
