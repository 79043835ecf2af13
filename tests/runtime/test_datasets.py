"""Data set splits: the folder's own split.csv, or a split file kept elsewhere."""

from __future__ import annotations

import pytest
from micronet.runtime.errors import InputError
from micronet.runtime.evaluation.datasets import load_point_folder, read_split


def test_a_split_file_outside_the_data_set_selects_its_images(shared_data, tmp_path):
    split = tmp_path / "mine.csv"
    split.write_text("name,split\nTCGA-21-5784-01Z-00-DX1,a\nTCGA-NH-A8F7-01A-01-TS1,b\nTCGA-B0-5698-01Z-00-DX1,a\n")
    assert read_split(shared_data / "monuseg", f"a@{split}") == ["TCGA-21-5784-01Z-00-DX1", "TCGA-B0-5698-01Z-00-DX1"]
    data = load_point_folder(shared_data / "monuseg", f"b@{split}")
    assert data.names == ["TCGA-NH-A8F7-01A-01-TS1"] and data.mpp == pytest.approx(0.25)
    with pytest.raises(InputError, match="not in .*valid: a, b"):
        read_split(shared_data / "monuseg", f"c@{split}")
    with pytest.raises(InputError, match="no .*missing.csv"):
        read_split(shared_data / "monuseg", f"a@{tmp_path / 'missing.csv'}")
    with pytest.raises(InputError, match="no .*split.csv"):
        read_split(shared_data / "monuseg", "train")  # MoNuSeg ships no split.csv


def test_the_studys_monuseg_split_keeps_every_organ_in_test(shared_data):
    from pathlib import Path

    split = Path(__file__).resolve().parents[2] / "benchmarks" / "paper" / "monuseg_split.csv"
    train = load_point_folder(shared_data / "monuseg", f"train@{split}")
    test = load_point_folder(shared_data / "monuseg", f"test@{split}")
    assert not set(train.names) & set(test.names) and len(train) + len(test) == 13
    assert {test.meta[n]["organ"] for n in test.names} == {"liver", "breast", "kidney", "prostate", "colon"}
