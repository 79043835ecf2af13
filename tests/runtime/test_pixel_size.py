"""The pixel size as one value (``micronet.runtime.pixel_size``): x and y apart, where it
came from, implausible values refused, resolved once (the caller's, the file's, the
model's), and what the readers expose."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from micronet.runtime.errors import InputError
from micronet.runtime.pixel_size import (
    PLAUSIBLE_MPP,
    ImplausiblePixelSize,
    PixelSize,
    recorded_pixel_size,
    resolve_pixel_size,
)


def test_x_and_y_stay_apart_and_their_mean_is_one_property():
    size = PixelSize(0.25, 0.30, "OME-XML PhysicalSizeX/Y")
    assert (size.x, size.y, size.xy) == (0.25, 0.30, (0.25, 0.30))
    assert size.mean == pytest.approx(0.275)
    assert size.source == "OME-XML PhysicalSizeX/Y"
    assert PixelSize.square(0.5, "--mpp") == PixelSize(0.5, 0.5, "--mpp")


def test_an_image_runs_at_square_pixels_and_its_source_says_when_x_and_y_differ():
    aniso = PixelSize(0.25, 0.30, "TIFF resolution tags").as_square()
    assert aniso.x == aniso.y == 0.275 and aniso.source == "TIFF resolution tags (x 0.25, y 0.3 µm/px: their mean)"
    close = PixelSize(0.25, 0.2501, "PNG pHYs").as_square()
    assert close.x == close.y == 0.25005 and close.source == "PNG pHYs"  # within 1%: not worth a word
    square = PixelSize(0.499, 0.499, "PNG pHYs")
    assert square.as_square() is square


def test_rounding_drops_the_noise_of_a_resolution_in_dpi():
    noisy = PixelSize(25400 / 101600.00000000001, 25400 / 101600.00000000001, "PNG pHYs")
    assert noisy.x != 0.25 and noisy.rounded().xy == (0.25, 0.25)


@pytest.mark.parametrize("bad", [0, -0.5, math.nan, math.inf, True, "0.5", None])
def test_a_pixel_size_that_is_no_positive_number_is_refused(bad):
    with pytest.raises((ValueError, TypeError), match="expected a positive pixel size in µm/px"):
        PixelSize(bad, 0.5, "x")
    with pytest.raises((ValueError, TypeError), match=r"mpp: expected a positive pixel size"):
        PixelSize.square(bad, "--mpp")


def test_a_frozen_value():
    size = PixelSize(0.5, 0.5, "--mpp")
    with pytest.raises(AttributeError):
        size.x = 0.25  # type: ignore[misc]


@pytest.mark.parametrize("dpi", [72, 96, 300])
def test_implausible_recorded_values_are_refused_with_what_the_file_gives(dpi):
    mpp = 25400 / dpi
    with pytest.raises(ImplausiblePixelSize, match=rf"its TIFF resolution tags give {mpp:.4g} µm/px, not a microscope's pixel size \(expected 0.05 to 20 µm/px\)"):
        PixelSize.recorded(mpp, mpp, "TIFF resolution tags")
    assert issubclass(ImplausiblePixelSize, ValueError)
    found, why = recorded_pixel_size((mpp, mpp), "TIFF resolution tags")
    assert found is None and "not a microscope's pixel size" in why
    lo, hi = PLAUSIBLE_MPP
    assert PixelSize.recorded(lo, hi, "edges") == PixelSize(lo, hi, "edges")


def test_nothing_recorded_keeps_the_reason():
    assert recorded_pixel_size(None, "no TIFF resolution tags") == (None, "no TIFF resolution tags")


def test_resolved_once_the_callers_then_the_files_then_the_assumed(caplog):
    recorded = PixelSize(0.25, 0.25, "PNG pHYs")
    assumed = PixelSize(0.55, 0.55, "assumed: the model's")
    given = resolve_pixel_size(0.5, recorded, name="a.png", given_source="--mpp", assumed=assumed)
    assert given == PixelSize(0.5, 0.5, "--mpp")
    assert "a.png: using 0.5 µm/px (--mpp), not the 0.25 µm/px its PNG pHYs records" in caplog.text
    assert resolve_pixel_size(None, recorded, name="a.png", given_source="--mpp", assumed=assumed) is recorded
    assert resolve_pixel_size(None, None, name="a.png", given_source="--mpp", assumed=assumed) is assumed
    assert resolve_pixel_size(given, None, name="a.png", given_source="--mpp") is given  # resolved already: passed down
    with pytest.raises(InputError, match=r"s.svs: the file records no pixel size \(no TIFF resolution tags\); pass mpp="):
        resolve_pixel_size(None, None, name="s.svs", given_source="mpp= / --mpp", missing="no TIFF resolution tags")
    with pytest.raises(InputError, match=r"mpp: expected a positive pixel size"):
        resolve_pixel_size(-1.0, recorded, name="a.png", given_source="--mpp")


def test_an_anisotropic_slide_keeps_x_and_y_and_its_plan_carries_them(tmp_path: Path):
    tifffile = pytest.importorskip("tifffile")
    from micronet.runtime.slide import open_slide

    image = np.full((300, 400, 3), 200, np.uint8)
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.26})
    with open_slide(path) as slide:
        assert slide.pixel_size == PixelSize(0.25, 0.26, "OME-XML PhysicalSizeX/Y")
        assert slide.mpp_xy == (0.25, 0.26) and slide.mpp == slide.pixel_size.mean
        assert slide.mpp_source == "OME-XML PhysicalSizeX/Y"


def test_a_slide_with_a_screen_resolution_has_no_pixel_size_and_says_why(tmp_path: Path):
    tifffile = pytest.importorskip("tifffile")
    from micronet.runtime.slide import open_slide

    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(path, np.full((64, 64, 3), 200, np.uint8), tile=(64, 64), photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 352.8, "PhysicalSizeY": 352.8})
    with open_slide(path) as slide:
        assert slide.pixel_size is None and slide.mpp is None and slide.mpp_xy is None
        assert "give 352.8 µm/px, not a microscope's pixel size" in slide.mpp_source


def test_an_image_file_gives_its_header_and_pixels_from_one_open(tmp_path: Path, monkeypatch):
    tifffile = pytest.importorskip("tifffile")
    from micronet.runtime.images import ImageFile, as_rgb_image

    image = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, image, photometric="rgb", resolution=(1e4 / 0.25, 1e4 / 0.30), resolutionunit="CENTIMETER")
    opened = []
    real = tifffile.TiffFile
    monkeypatch.setattr(tifffile, "TiffFile", lambda *a, **k: opened.append(a) or real(*a, **k))
    with ImageFile(path) as f:
        assert f.shape == (40, 60) and f.orientation == 1
        assert f.pixel_size == PixelSize(0.275, 0.275, "TIFF resolution tags (x 0.25, y 0.3 µm/px: their mean)")
        assert (as_rgb_image(f) == image).all()
    assert len(opened) == 1
