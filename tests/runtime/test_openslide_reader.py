"""OpenSlide as the second slide reader (micronet.runtime.slide.openslide_reader):
the same pixels and detections as tifffile on a real Aperio slide, vendor formats routed
to it, and one-line errors for what neither reads."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from micronet.runtime.errors import InputError, MissingPackageError
from micronet.runtime.slide import open_slide

pytest.importorskip("openslide", reason="OpenSlide not installed (pip install 'micronet-sdk[slides]')")


@pytest.fixture(scope="module")
def cmu1(shared_data: Path) -> Path:
    return shared_data / "slides" / "CMU-1-Small-Region.svs"


def test_both_readers_see_the_same_slide(cmu1):
    with open_slide(cmu1, reader="tifffile") as a, open_slide(cmu1, reader="openslide") as b:
        assert (a.reader, b.reader) == ("tifffile", "openslide")
        assert a.shape == b.shape == (2967, 2220) and len(a.levels) == len(b.levels)
        assert a.mpp == pytest.approx(0.499) and b.mpp == pytest.approx(0.499)
        assert "openslide.mpp" in b.mpp_source
        for x, y, w, h in [(0, 0, 240, 240), (100, 200, 300, 250), (2000, 2700, 220, 267)]:
            pa, pb = a.read_region(0, x, y, w, h), b.read_region(0, x, y, w, h)
            assert pa.shape == pb.shape == (h, w, 3) and pb.dtype == np.uint8
            # Two JPEG decoders: allow a rounding step, no more.
            assert np.abs(pa.astype(int) - pb).max() <= 2
        assert b.read_thumbnail(300).image.shape == a.read_thumbnail(300).image.shape


@pytest.mark.slow
def test_both_readers_give_the_same_detections_on_cmu1(cmu1):
    from micronet.runtime.detector import Detector
    from micronet.runtime.evaluation.matching import match_points

    det = Detector("fast-cpu", device="cpu")
    found = {}
    for reader in ("tifffile", "openslide"):
        with open_slide(cmu1, reader=reader) as slide:
            h, w = slide.shape
            found[reader] = det.detect(slide.read_region(0, 0, 0, w, h), mpp=slide.mpp).xy
    a, b = found["tifffile"], found["openslide"]
    assert len(a) > 1000
    assert abs(len(a) - len(b)) <= 0.005 * len(a)
    pred_idx, _ = match_points(b, a, 1.0)
    assert len(pred_idx) >= 0.995 * len(a)


def test_auto_reads_tiff_family_with_tifffile(cmu1, shared_data):
    with open_slide(cmu1) as s:
        assert s.reader == "tifffile"
    with open_slide(shared_data / "slides" / "OS-1-detail.ome.tif") as s:
        assert s.reader == "tifffile" and s.format == "ome-tiff"


def test_a_file_neither_reader_reads_gets_one_line_naming_both_and_its_signature(tmp_path):
    bad = tmp_path / "scan.mrxs"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(InputError, match=r"OpenSlide cannot read it and tifffile does not read \.mrxs files.*a PNG image"):
        open_slide(bad)
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"II*\x00")  # a TIFF header and nothing else: tifffile cannot parse it
    with pytest.raises(InputError, match=r"neither tifffile \(.*\) nor OpenSlide \(.*\) reads it; the file is a little-endian TIFF"):
        open_slide(broken)
    with pytest.raises(InputError, match="reader: expected one of auto, tifffile, openslide"):
        open_slide(broken, reader="bioformats")


def test_without_openslide_a_vendor_format_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openslide", None)  # as if not installed
    scan = tmp_path / "scan.scn"
    scan.write_bytes(b"II*\x00" + b"\0" * 64)
    with pytest.raises(MissingPackageError, match=r"needs OpenSlide: pip install 'micronet-sdk\[slides\]'"):
        open_slide(scan)


@pytest.mark.slow
def test_detect_slide_through_either_reader_gives_the_same_detections(cmu1, tmp_path):
    from micronet.runtime.detector import Detector
    from micronet.runtime.evaluation.matching import match_points

    det = Detector("fast-cpu", device="cpu")
    found = {r: det.detect_slide(cmu1, reader=r, progress=False) for r in ("tifffile", "openslide")}
    a, b = found["tifffile"].xy, found["openslide"].xy
    assert len(a) > 1000 and abs(len(a) - len(b)) <= 0.005 * len(a)
    pred_idx, _ = match_points(b, a, 1.0)
    assert len(pred_idx) >= 0.995 * len(a)
