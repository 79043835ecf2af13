"""Point-annotated image folders, the format of ``../shared/data`` (see its README)::

    <root>/images/<name>.png     RGB 8-bit
    <root>/points/<name>.csv     header "x,y", one centre per row (x = column, y = row)
    <root>/split.csv             optional: name,split (train / val / test)
    <root>/meta.csv              optional: name,organ,...
    <root>/dataset.json          optional: {"mpp": 0.5} pixel size in µm/px

Point files are read by :func:`micronet.runtime.points.read_points_csv`. Used by
evaluation (runtime, no torch) and by the trainer.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingFileError
from ..points import read_points_csv

__all__ = ["PointDataset", "load_point_folder", "read_split", "KNOWN_MPP"]

# Pixel sizes of the data sets in ../shared/data (its README), used when a folder has no
# dataset.json. Keyed by folder name.
KNOWN_MPP = {"crchisto": 0.55, "monuseg": 0.25}


@dataclass
class PointDataset:
    """Images (``(H, W, 3)`` uint8 RGB) with ``(N, 2)`` float64 ``(x, y)`` centres."""

    root: Path
    names: list[str]
    images: list[np.ndarray]
    points: list[np.ndarray]
    mpp: float
    meta: dict[str, dict[str, str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices: list[int] | np.ndarray) -> "PointDataset":
        idx = [int(i) for i in indices]
        return PointDataset(
            self.root,
            [self.names[i] for i in idx],
            [self.images[i] for i in idx],
            [self.points[i] for i in idx],
            self.mpp,
            {self.names[i]: self.meta[self.names[i]] for i in idx if self.names[i] in self.meta},
        )


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _folder_mpp(root: Path, mpp: float | None) -> float:
    if mpp is not None:
        return float(mpp)
    info = root / "dataset.json"
    if info.is_file():
        return float(json.loads(info.read_text())["mpp"])
    if root.name in KNOWN_MPP:
        return KNOWN_MPP[root.name]
    raise InputError(
        f"{root}: unknown pixel size; add dataset.json with {{\"mpp\": ...}} or pass mpp= (µm/px)"
    )


def read_split(root: str | Path, split: str) -> list[str]:
    """The image names that a split file (columns ``name,split``) puts in ``split``, in
    the file's order.

    ``split`` is either a split's name, read from ``<root>/split.csv``, or
    ``"<name>@<file.csv>"``, read from that file: a split of a data set that ships none
    (MoNuSeg), kept beside the code that uses it instead of inside the shared data.

    Raises:
        InputError: no split file, no such split (the valid ones are listed), or a file
            without the ``name`` and ``split`` columns.
    """
    name, sep, file = split.partition("@")
    split_file = Path(file) if sep else Path(root) / "split.csv"
    if not split_file.is_file():
        raise InputError(f"{root}: split {split!r} requested but there is no {split_file}")
    with split_file.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if not {"name", "split"} <= set(reader.fieldnames or ()):
            raise InputError(f"{split_file}: expected the columns 'name,split', got {','.join(reader.fieldnames or ())!r}")
        split_of = {row["name"]: row["split"] for row in reader}
    valid = sorted(set(split_of.values()))
    if name not in valid:
        raise InputError(f"split {name!r} not in {split_file}; valid: {', '.join(valid)}")
    return [n for n, s in split_of.items() if s == name]


def load_point_folder(root: str | Path, split: str | None = None, mpp: float | None = None) -> PointDataset:
    """Loads a point-annotated folder (all images, or those of one split)."""
    root = Path(root)
    if not (root / "images").is_dir() or not (root / "points").is_dir():
        raise MissingFileError(f"{root}: expected images/ and points/ folders inside")
    names = sorted(p.stem for p in (root / "points").glob("*.csv"))
    if split is not None:
        chosen = set(read_split(root, split))
        names = [n for n in names if n in chosen]
    meta: dict[str, dict[str, str]] = {}
    if (root / "meta.csv").is_file():
        with (root / "meta.csv").open() as f:
            meta = {row["name"]: row for row in csv.DictReader(f)}
    images, points = [], []
    for name in names:
        candidates = [p for p in (root / "images").glob(f"{name}.*")]
        if not candidates:
            raise MissingFileError(f"{root / 'images'}: no image for annotation {name}.csv")
        images.append(_read_rgb(candidates[0]))
        points.append(read_points_csv(root / "points" / f"{name}.csv"))
    return PointDataset(root, names, images, points, _folder_mpp(root, mpp), meta)
