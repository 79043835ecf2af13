"""Builds a point folder (the format of ``../shared/data``, ``runtime/evaluation/datasets.py``)
from the two annotated CryoNuSeg tiles that the CryoNuSeg repository itself holds: the
project's **held-out outside source** (issue 19). No model trains, tunes or distils on it.

Source: https://github.com/masih4/CryoNuSeg, commit
92a919236d6e24831890ef1f164b9520d5ddcf00, ``dataset/TCGA-DE-A4MA.zip`` and
``dataset/TCGA-S4-A8RO.zip`` (removed from the repository's later commits; the full set
of 30 tiles is on Kaggle only). Repository licence: MIT; the images are tiles of TCGA
frozen-section slides (public). Each zip holds a 512×512 RGB TIFF cut at 40× in QuPath
and an ImageJ ``RoiSet.zip`` of hand-drawn nucleus outlines (freehand ROIs); the centre
of a nucleus is its outline's polygon centroid. Frozen sections from another lab and
scanner: darker and more tinted than CRCHisto or MoNuSeg (mean RGB about (144, 104, 140)).

    git clone https://github.com/masih4/CryoNuSeg && git -C CryoNuSeg checkout 92a9192
    python tools/import_cryonuseg.py CryoNuSeg -o ../outside/cryonuseg

Writes ``images/<name>.png``, ``points/<name>.csv``, ``dataset.json`` (``mpp`` 0.25: 40×
TCGA scans, ≈0.25 µm/px) and ``split.csv`` (every tile ``test``), each file by a rename.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

COMMIT = "92a919236d6e24831890ef1f164b9520d5ddcf00"
TILES = ("TCGA-DE-A4MA", "TCGA-S4-A8RO")
MPP = 0.25
_POLYGON_TYPES = {0, 2, 3, 4, 7, 8}  # polygon, …, freehand, traced: an outline of points


def roi_outline(data: bytes) -> np.ndarray:
    """``(N, 2)`` float ``(x, y)`` vertices of one ImageJ ``.roi`` outline (ImageJ's
    RoiDecoder format: big-endian header of 64 bytes, then N int16 x and N int16 y
    relative to the bounding box, then, with the sub-pixel flag, N float32 x and y).

    Raises:
        ValueError: not an ImageJ ROI, or not an outline (a rectangle, line, …).
    """
    if len(data) < 64 or data[:4] != b"Iout":
        raise ValueError("not an ImageJ ROI (no 'Iout' magic)")
    roi_type = data[6]
    if roi_type not in _POLYGON_TYPES:
        raise ValueError(f"ROI type {roi_type} is not an outline")
    top, left = struct.unpack(">hh", data[8:12])
    n = struct.unpack(">H", data[16:18])[0]
    options = struct.unpack(">h", data[50:52])[0]
    ints = np.frombuffer(data, ">i2", count=2 * n, offset=64).astype(np.float64)
    if options & 128:  # SUB_PIXEL_RESOLUTION: float coordinates follow, absolute
        floats = np.frombuffer(data, ">f4", count=2 * n, offset=64 + 4 * n).astype(np.float64)
        return np.stack([floats[:n], floats[n:]], axis=1)
    return np.stack([ints[:n] + left, ints[n:] + top], axis=1)


def polygon_centroid(xy: np.ndarray) -> tuple[float, float]:
    """The area centroid of a closed polygon (the vertex mean when its area is ~0)."""
    x, y = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    area = cross.sum() / 2
    if abs(area) < 1e-9:
        return float(x.mean()), float(y.mean())
    return float(((x + x1) * cross).sum() / (6 * area)), float(((y + y1) * cross).sum() / (6 * area))


def tile(archive: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The RGB image and the ``(N, 2)`` centres of one tile's zip."""
    import tifffile

    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        tif = next(n for n in z.namelist() if n.lower().endswith(".tif"))
        image = tifffile.imread(io.BytesIO(z.read(tif)))
        with zipfile.ZipFile(io.BytesIO(z.read("RoiSet.zip"))) as rois:
            centres = [polygon_centroid(roi_outline(rois.read(n))) for n in sorted(rois.namelist())]
    if image.ndim != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
        raise ValueError(f"{tif}: expected an 8-bit RGB tile, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image[..., :3]), np.asarray(centres, np.float64)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repo", help="a clone of github.com/masih4/CryoNuSeg (any commit; the tiles are read from commit 92a9192)")
    p.add_argument("-o", "--out", required=True, help="the point folder to write (outside this repository)")
    args = p.parse_args(argv)
    from PIL import Image

    out = Path(args.out)
    for sub in ("images", "points"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name in TILES:
        archive = subprocess.run(["git", "-C", args.repo, "show", f"{COMMIT}:dataset/{name}.zip"], check=True, capture_output=True).stdout
        image, centres = tile(archive)
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        _write(out / "images" / f"{name}.png", png.getvalue())
        rows = "x,y\n" + "".join(f"{x:.3f},{y:.3f}\n" for x, y in centres)
        _write(out / "points" / f"{name}.csv", rows.encode())
        print(f"{name}: {image.shape[1]}×{image.shape[0]}, {len(centres)} nuclei, mean RGB {np.round(image.reshape(-1, 3).mean(0)).tolist()}")
    _write(out / "dataset.json", json.dumps({"mpp": MPP, "source": f"github.com/masih4/CryoNuSeg@{COMMIT}", "licence": "MIT"}).encode())
    _write(out / "split.csv", ("name,split\n" + "".join(f"{n},test\n" for n in TILES)).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
