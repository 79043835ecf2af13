"""Image files in (micronet.runtime.images): damaged, empty and oversized files give one
line naming the file and the problem; the pixel size a file records is read, and
screen resolutions are not taken for one."""

from __future__ import annotations

import logging
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from micronet.runtime.errors import InputError
from micronet.runtime.images import PLAUSIBLE_MPP, image_pixel_size, read_image

OS1_MPP = 0.227  # OS-1-detail.ome.tif: PhysicalSizeX/Y 0.2271 / 0.2271 µm


def _rgb(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width × height`` RGB pixels but whose data holds a
    few hundred bytes: what a decompression bomb (or a cut-off download) looks like."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 300)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    return path


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# --- damaged files ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_a_truncated_file_is_one_line_naming_the_file(tmp_path, suffix):
    import tifffile

    path = tmp_path / f"cut{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, _rgb(300, 400), compression="zlib", rowsperstrip=16)
    else:
        Image.fromarray(_rgb(300, 400)).save(path)
    _truncate(path)
    with pytest.raises(InputError) as info:
        read_image(path)  # Pillow decodes lazily: the truncation must surface here
    message = str(info.value)
    assert "cut.tif" in message or "cut" + suffix in message
    assert "\n" not in message
    assert ("cut short" in message) or ("damaged" in message)


def test_empty_folder_and_junk_files_are_named(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png: an empty file \(0 bytes\)"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(InputError, match=r"dir\.png: a folder"):
        read_image(tmp_path / "dir.png")
    (tmp_path / "junk.tif").write_bytes(b"II*\0garbage")
    with pytest.raises(InputError, match=r"junk\.tif: not a readable TIFF"):
        read_image(tmp_path / "junk.tif")
    with pytest.raises(FileNotFoundError, match="image not found"):
        read_image(tmp_path / "missing.png")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_named(tmp_path):
    path = tmp_path / "locked.png"
    Image.fromarray(_rgb()).save(path)
    path.chmod(0)
    try:
        with pytest.raises(InputError, match=r"locked\.png: cannot be read"):
            read_image(path)
    finally:
        path.chmod(0o644)


def test_decompression_bomb_is_refused_from_its_header_with_how_to_raise_the_limit(tmp_path):
    # 30 000² declared pixels in a 400-byte file: refused before any decoding, by this
    # SDK's own limit, which the message says how to raise.
    bomb = _png_header_only(tmp_path / "bomb.png", 30_000, 30_000)
    with pytest.raises(InputError) as info:
        read_image(bomb)
    message = str(info.value)
    assert "bomb.png: 30000×30000 pixels (900 MP)" in message and "decompression bombs" in message
    assert "max_megapixels" in message and "\n" not in message
    # A lower limit is the caller's to set; a TIFF is held to it too.
    Image.fromarray(_rgb(200, 300)).save(tmp_path / "small.png")
    with pytest.raises(InputError, match="more than the 0.05 MP"):
        read_image(tmp_path / "small.png", max_megapixels=0.05)
    import tifffile

    tifffile.imwrite(tmp_path / "small.tif", _rgb(200, 300))
    with pytest.raises(InputError, match=r"small\.tif: 300×200 pixels"):
        read_image(tmp_path / "small.tif", max_megapixels=0.05)
    assert read_image(tmp_path / "small.tif", max_megapixels=0.1).shape == (200, 300, 3)


def test_pillows_global_bomb_limit_is_replaced_by_the_sdks(tmp_path):
    # 100 MP declared: above Pillow's warning threshold (89 MP), within ours (256 MP).
    # No DecompressionBombWarning: the data, cut short, is what fails, with the file's name.
    path = _png_header_only(tmp_path / "big.png", 10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(InputError, match=r"big\.png: the image data is damaged or cut short"):
            read_image(path)
    with pytest.raises(InputError, match="more than the 50 MP"):
        read_image(path, max_megapixels=50)


def test_detector_reports_a_truncated_file_in_one_line(blur_onnx, tmp_path):
    from micronet.runtime.detector import Detector

    path = tmp_path / "cut.png"
    Image.fromarray(_rgb(300, 400)).save(path)
    _truncate(path)
    det = Detector(blur_onnx, device="cpu", threads=1, tile_margin=8)
    with pytest.raises(ValueError, match=r"cut\.png: the image data is damaged or cut short \(OSError: image file is truncated"):
        det.detect(path)


# --- pixel size from the file ---------------------------------------------------------------


def test_png_phys_gives_the_pixel_size(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_rgb()).save(path, dpi=(25400 / 0.25, 25400 / 0.25))  # pHYs: 4 000 000 px/m
    assert image_pixel_size(path) == (0.25, "PNG pHYs")


@pytest.mark.parametrize("dpi", [72, 96, 300, 1200])
def test_screen_and_print_resolutions_are_no_pixel_size(tmp_path, dpi):
    png, jpg = tmp_path / "a.png", tmp_path / "a.jpg"
    Image.fromarray(_rgb()).save(png, dpi=(dpi, dpi))
    Image.fromarray(_rgb()).save(jpg, dpi=(dpi, dpi))
    assert image_pixel_size(png) is None and image_pixel_size(jpg) is None
    assert 25400 / dpi > PLAUSIBLE_MPP[1]


def test_files_without_a_resolution_have_no_pixel_size(tmp_path):
    import tifffile

    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", _rgb())
    tifffile.imwrite(tmp_path / "none.tif", _rgb(), resolution=(4.0, 4.0), resolutionunit=tifffile.RESUNIT.NONE)
    assert image_pixel_size(tmp_path / "a.png") is None
    assert image_pixel_size(tmp_path / "a.tif") is None
    assert image_pixel_size(tmp_path / "none.tif") is None  # per pixel-unit, not per centimetre


def test_jpeg_jfif_density_gives_the_pixel_size(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(_rgb()).save(path, dpi=(50800, 50800))
    assert image_pixel_size(path) == (pytest.approx(0.5), "JPEG JFIF density")


def test_tiff_resolution_tags_per_inch_and_imagej_microns(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "inch.tif", _rgb(), resolution=(25400 / 0.5, 25400 / 0.5), resolutionunit=tifffile.RESUNIT.INCH)
    mpp, source = image_pixel_size(tmp_path / "inch.tif")
    assert mpp == pytest.approx(0.5, rel=1e-6) and source == "TIFF resolution tags"
    tifffile.imwrite(tmp_path / "ij.tif", _rgb(), imagej=True, resolution=(1 / 0.325, 1 / 0.325), metadata={"unit": "micron"})
    mpp, source = image_pixel_size(tmp_path / "ij.tif")
    assert mpp == pytest.approx(0.325, rel=1e-6) and source.startswith("ImageJ")


def test_os1_as_ome_and_as_a_plain_tiff_reads_0227(shared_data, tmp_path):
    import tifffile

    ome = shared_data / "slides" / "OS-1-detail.ome.tif"
    if not ome.exists():
        pytest.skip(f"{ome} not found")
    mpp, source = image_pixel_size(ome)
    assert mpp == pytest.approx(OS1_MPP, abs=5e-4) and source == "OME-XML PhysicalSizeX/Y"
    plain = tmp_path / "os1.tif"
    tifffile.imwrite(plain, read_image(ome), resolution=(1e4 / OS1_MPP, 1e4 / OS1_MPP), resolutionunit=tifffile.RESUNIT.CENTIMETER)
    mpp, source = image_pixel_size(plain)
    assert mpp == pytest.approx(OS1_MPP, rel=1e-6) and source == "TIFF resolution tags"


def test_anisotropic_pixels_give_the_mean_and_say_so(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", _rgb(), resolution=(1e4 / 0.25, 1e4 / 0.30), resolutionunit=tifffile.RESUNIT.CENTIMETER)
    mpp, source = image_pixel_size(tmp_path / "a.tif")
    assert mpp == pytest.approx(0.275, rel=1e-6) and "x 0.25, y 0.3" in source


# --- the detector uses it -------------------------------------------------------------------


def _monuseg_image(shared_data: Path) -> np.ndarray:
    files = sorted((shared_data / "monuseg" / "images").glob("*.png"))
    if not files:
        pytest.skip("no MoNuSeg images")
    with Image.open(files[0]) as im:
        return np.asarray(im.convert("RGB"))


def test_a_png_with_phys_detects_as_with_mpp_given(shared_data, tmp_path, caplog):
    from micronet.runtime.detector import Detector

    image = _monuseg_image(shared_data)  # 0.25 µm/px, a PNG without pHYs
    tagged = tmp_path / "monuseg_025.png"
    Image.fromarray(image).save(tagged, dpi=(25400 / 0.25, 25400 / 0.25))
    det = Detector(device="cpu", threads=2)
    with caplog.at_level(logging.WARNING, logger="micronet.runtime.detector"):
        from_file = det.detect(tagged)
    expected = det.detect(image, mpp=0.25)
    assert len(expected) > 100 and from_file.mpp == 0.25
    np.testing.assert_array_equal(from_file.xy, expected.xy)
    np.testing.assert_array_equal(from_file.scores, expected.scores)
    assert "without a pixel size" not in caplog.text  # the file said which
    # The caller's mpp wins over the file's.
    assert det.detect(tagged, mpp=det.info.mpp).mpp == det.info.mpp


def test_a_detector_says_once_which_pixel_size_it_assumed(blur_onnx, tmp_path, caplog):
    from micronet.runtime.detector import Detector

    Image.fromarray(_rgb()).save(tmp_path / "plain.png")
    det = Detector(blur_onnx, device="cpu", threads=1, tile_margin=8)
    with caplog.at_level(logging.WARNING, logger="micronet.runtime.detector"):
        det.detect(tmp_path / "plain.png")
        det.detect(_rgb())
        det.detect_batch([_rgb(), _rgb(seed=1)])
    said = [r for r in caplog.records if "without a pixel size" in r.getMessage()]
    assert len(said) == 1 and "0.55 µm/px" in said[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="micronet.runtime.detector"):
        Detector(blur_onnx, device="cpu", threads=1, tile_margin=8).detect(_rgb(), mpp=0.55)
    assert "without a pixel size" not in caplog.text  # given: nothing to say


def test_an_implausible_file_pixel_size_is_refused_naming_the_file(blur_onnx, tmp_path):
    import tifffile

    from micronet.runtime.detector import Detector

    # 10 µm/px is a plausible record (a low-power overview) but 18× the model's 0.55.
    tifffile.imwrite(tmp_path / "overview.tif", _rgb(), resolution=(1e3, 1e3), resolutionunit=tifffile.RESUNIT.CENTIMETER)
    det = Detector(blur_onnx, device="cpu", threads=1, tile_margin=8)
    with pytest.raises(ValueError, match=r"overview\.tif \(pixel size from its TIFF resolution tags; pass mpp= to override\): 10 µm/px"):
        det.detect(tmp_path / "overview.tif")
    assert det.detect(tmp_path / "overview.tif", mpp=0.55).mpp == 0.55
