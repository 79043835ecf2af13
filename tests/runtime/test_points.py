"""Point CSV files (micronet.runtime.points)."""

from __future__ import annotations

import numpy as np
import pytest
from micronet.runtime.points import (
    read_points_csv,
    read_scored_points_csv,
    write_points_csv,
)


def test_csv_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        xy = (rng.uniform(0, 5000, (50, 2))).astype(dtype)
        write_points_csv(tmp_path / "p.csv", xy)
        assert (tmp_path / "p.csv").read_text().startswith("x,y\n")
        back = read_points_csv(tmp_path / "p.csv")
        # written with the fewest digits that read back to the same value in its dtype
        assert back.dtype == np.float64 and np.array_equal(back.astype(dtype), xy)
    scores = rng.random(50)
    write_points_csv(tmp_path / "s.csv", xy, scores)
    assert (tmp_path / "s.csv").read_text().startswith("x,y,score\n")
    assert np.array_equal(read_points_csv(tmp_path / "s.csv"), xy)


def test_csv_with_no_points(tmp_path):
    write_points_csv(tmp_path / "e.csv", np.empty((0, 2)))
    assert (tmp_path / "e.csv").read_text() == "x,y\n"
    assert read_points_csv(tmp_path / "e.csv").shape == (0, 2)
    write_points_csv(tmp_path / "e2.csv", [], scores=[])
    assert read_points_csv(tmp_path / "e2.csv").shape == (0, 2)


def test_csv_tolerates_a_bom_and_blank_lines(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"\xef\xbb\xbfx,y\r\n1.5,2\r\n\r\n3,4.25\r\n\r\n")
    assert read_points_csv(path).tolist() == [[1.5, 2.0], [3.0, 4.25]]
    header_only = tmp_path / "h.csv"
    header_only.write_bytes(b"\xef\xbb\xbfx,y,score\r\n")
    xy, scores = read_scored_points_csv(header_only)
    assert xy.shape == (0, 2) and scores is not None and scores.shape == (0,)


def test_slide_csv_of_micronet_detect_reads_its_pixel_columns_and_scores(tmp_path):
    # The first rows of `micronet detect CMU-1-Small-Region.svs`: x,y in level-0 pixels
    path = tmp_path / "CMU-1-Small-Region.csv"
    path.write_text("x,y,x_um,y_um,score\n972.2656,855.323,485.41,427.056,3.8235383\n1026.2776,978.7643,512.362,488.653,3.7978678\n")
    xy, scores = read_scored_points_csv(path)
    assert xy.tolist() == [[972.2656, 855.323], [1026.2776, 978.7643]]  # pixels, not µm
    assert scores.tolist() == [3.8235383, 3.7978678]
    assert np.array_equal(read_points_csv(path), xy)


def test_columns_in_any_order_with_extra_columns_passed_over(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("label, score ,y,x\nnucleus,0.9,2,1\n\"a, b\",0.25,4,3\n")
    xy, scores = read_scored_points_csv(path)
    assert xy.tolist() == [[1.0, 2.0], [3.0, 4.0]] and scores.tolist() == [0.9, 0.25]
    no_scores = tmp_path / "q.csv"
    no_scores.write_text("id,y,x\n7,2,1\n")
    xy, scores = read_scored_points_csv(no_scores)
    assert xy.tolist() == [[1.0, 2.0]] and scores is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("a,b\n1,2\n", r"expected a header naming an 'x' and a 'y' column .*, got 'a,b'"),
        ("1.0,2.0\n", r"expected a header naming an 'x' and a 'y' column"),
        ("x,score\n1,2\n", r"expected a header naming an 'x' and a 'y' column"),
        ("x,y,x\n1,2,3\n", r"repeated column 'x' in 'x,y,x'"),
        ("\n1,2\n", r"empty first line"),
        ("x,y\n1,2\n3\n", r"line 3: expected 2 comma-separated values, got 1"),
        ("x,y\n1,2,3\n", r"line 2: expected 2 comma-separated values, got 3"),
        ("x,y\n1,two\n", r"line 2: expected numbers, got '1,two'"),
        ("x,y\n1,nan\n", r"line 2: expected finite numbers"),
        ("x,y,score\n1,2\n", r"line 2: expected 3 comma-separated values"),
        ("x,y,score\n1,2,high\n", r"line 2: expected numbers, got '1,2,high'"),
        ("x,y,x_um,y_um,score\n1,2,0.5,1,0.9\n3,4,1.5\n", r"line 3: expected 5 comma-separated values, got 3"),
        ("x,y,x_um,y_um,score\n1,2,0.5,1,0.9\n3,inf,1.5,2,0.8\n", r"line 3: expected finite numbers"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_points_csv(path)
    assert "bad.csv" in str(info.value)


def test_write_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"xy: expected an \(N, 2\) array"):
        write_points_csv(tmp_path / "x.csv", [1, 2, 3])
    with pytest.raises(ValueError, match=r"scores: expected a \(2,\) array"):
        write_points_csv(tmp_path / "x.csv", [[1, 2], [3, 4]], scores=[1.0])
    with pytest.raises(ValueError, match="scores: expected finite"):
        write_points_csv(tmp_path / "x.csv", [[1, 2]], scores=[np.inf])
