"""``Detections``: the nucleus centres found in one image, and their writers.

Positions are ``(x, y)`` = (column, row) in the pixels of the image the caller passed,
0-based, as in the point CSVs of ``shared/data``. Writers:

- :meth:`Detections.to_csv`: header ``x,y,score``, one detection per row (the point CSV
  format of :mod:`micronet.runtime.evaluation.metrics` plus a score column);
- :meth:`Detections.to_geojson`: a GeoJSON ``FeatureCollection`` that QuPath imports
  as detection objects classified ``Nucleus`` with a ``score`` measurement;
- :meth:`Detections.to_overlay`: the image with a circle drawn around each detection,
  as PNG.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, InputTypeError

__all__ = ["Detections"]

# QuPath's class for the detections and the [r, g, b] colour it shows them in.
QUPATH_CLASS = "Nucleus"
QUPATH_COLOR = [0, 200, 0]


def _check_shape(image_shape: Any) -> tuple[int, int] | None:
    if image_shape is None:
        return None
    try:
        h, w = (int(v) for v in image_shape)
    except (TypeError, ValueError):
        raise InputError(f"image_shape: expected (H, W) or None, got {image_shape!r}") from None
    if h < 0 or w < 0:
        raise InputError(f"image_shape: expected non-negative (H, W), got {image_shape!r}")
    return (h, w)


def check_measure(name: str, value: Any) -> float | None:
    """A measure of the image (``colour_distance``, ``edge_blur_um``): ``None`` or a finite
    number >= 0, as float; anything else raises ``ValueError`` naming it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 <= value < math.inf):
        raise InputError(f"{name}: expected a finite number >= 0 or None, got {value!r}")
    return float(value)


@dataclass(frozen=True, eq=False)
class Detections:
    """Nucleus centres found in one image.

    Attributes:
        xy: ``(N, 2)`` float32 ``(x, y)`` = (column, row) pixel positions in the
            caller's image, 0-based; pixel ``(x, y)`` covers ``[x, x+1) × [y, y+1)``.
        scores: ``(N,)`` float32 proximity-map values at the detections (higher is more
            confident; the detector keeps those above its threshold ξ).
        image_shape: ``(H, W)`` of the image the positions refer to, or ``None`` when
            not known (e.g. after :meth:`offset`).
        mpp: pixel size of the positions in µm/px, when the caller gave it.
        class_probabilities: ``(N, K)`` float32 phenotype probabilities (rows sum to 1)
            when the model has a class head, else ``None``.
        class_names: the ``K`` class names (empty without a class head).
        colour_distance: how far the colours of the image (of a slide's tissue) lie
            from the model's training data's, in stops
            (:func:`micronet.runtime.stain.colour_distance`); above
            :data:`~micronet.runtime.stain.OOD_THRESHOLD` detections may be missed.
            ``None`` when not measured.
        edge_blur_um: how blurred the image's edges are, in µm (the σ of a Gaussian
            blur; :func:`micronet.runtime.focus.edge_blur_um`, at the model's pixel
            size); above :data:`~micronet.runtime.focus.BLUR_THRESHOLD_UM` the image is
            out of focus and detections may be missed. A slide's is measured on
            windows of its tissue. ``None`` when not measured: a stream's fields, an
            image given ``colour_stats`` (a field of a larger whole), an image with too
            few edges.

    Arrays are converted to float32 on construction; ``len(d)`` is ``N``.
    """

    xy: np.ndarray
    scores: np.ndarray
    image_shape: tuple[int, int] | None = None
    mpp: float | None = None
    colour_distance: float | None = None
    class_probabilities: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    edge_blur_um: float | None = None

    def __post_init__(self) -> None:
        xy = np.asarray(self.xy)
        if xy.size == 0:
            xy = xy.reshape(0, 2)
        if xy.ndim != 2 or xy.shape[1] != 2 or not np.issubdtype(xy.dtype, np.number):
            raise InputError(f"xy: expected an (N, 2) array of numbers, got shape {xy.shape} dtype {xy.dtype}")
        scores = np.asarray(self.scores)
        if scores.shape != (len(xy),) or not np.issubdtype(scores.dtype, np.number):
            raise InputError(f"scores: expected a ({len(xy)},) array of numbers, got shape {scores.shape} dtype {scores.dtype}")
        mpp = self.mpp
        if mpp is not None:
            if isinstance(mpp, bool) or not isinstance(mpp, numbers.Real) or not math.isfinite(mpp) or mpp <= 0:
                raise InputError(f"mpp: expected a positive number of µm per pixel or None, got {mpp!r}")
            mpp = float(mpp)
        object.__setattr__(self, "xy", np.ascontiguousarray(xy, dtype=np.float32))
        object.__setattr__(self, "scores", np.ascontiguousarray(scores, dtype=np.float32))
        object.__setattr__(self, "image_shape", _check_shape(self.image_shape))
        object.__setattr__(self, "mpp", mpp)
        for name in ("colour_distance", "edge_blur_um"):
            object.__setattr__(self, name, check_measure(name, getattr(self, name)))
        names = tuple(str(n) for n in self.class_names)
        probs = self.class_probabilities
        if probs is not None:
            probs = np.asarray(probs, dtype=np.float32)
            if probs.ndim != 2 or probs.shape != (len(xy), len(names)) or not names:
                raise InputError(
                    f"class_probabilities: expected a ({len(xy)}, {len(names)}) array for classes {list(names)}, got shape {probs.shape}"
                )
            probs = np.ascontiguousarray(probs)
        elif names:
            raise InputError("class_names given without class_probabilities")
        object.__setattr__(self, "class_probabilities", probs)
        object.__setattr__(self, "class_names", names)

    @property
    def classes(self) -> np.ndarray:
        """``(N,)`` int64 index into :attr:`class_names` of each detection's most probable
        class; all ``-1`` when the model has no class head."""
        if self.class_probabilities is None:
            return np.full(len(self.xy), -1, np.int64)
        return self.class_probabilities.argmax(axis=1).astype(np.int64) if len(self.xy) else np.zeros(0, np.int64)

    def class_counts(self) -> dict[str, int]:
        """Detections per class name (empty without a class head)."""
        if not self.class_names:
            return {}
        counts = np.bincount(self.classes, minlength=len(self.class_names))
        return {n: int(c) for n, c in zip(self.class_names, counts)}

    def _with(self, xy: np.ndarray, scores: np.ndarray, image_shape: tuple[int, int] | None, probs: np.ndarray | None) -> "Detections":
        return Detections(xy, scores, image_shape, self.mpp, self.colour_distance, probs, self.class_names, self.edge_blur_um)

    def __len__(self) -> int:
        return len(self.xy)

    def __repr__(self) -> str:
        return f"Detections(n={len(self)}, image_shape={self.image_shape}, mpp={self.mpp})"

    @classmethod
    def empty(cls, image_shape: tuple[int, int] | None = None, mpp: float | None = None, class_names: Sequence[str] = ()) -> "Detections":
        """No detections (of a model with the phenotypes ``class_names``, if any)."""
        names = tuple(class_names)
        probs = np.zeros((0, len(names)), np.float32) if names else None
        return cls(np.zeros((0, 2), np.float32), np.zeros((0,), np.float32), image_shape, mpp, None, probs, names)

    # --- combining ---------------------------------------------------------------------

    def offset(self, dx: float, dy: float, image_shape: tuple[int, int] | None = None) -> "Detections":
        """The detections moved by ``(dx, dy)`` pixels, e.g. from a region's to a slide's
        coordinates.

        Args:
            dx, dy: added to every ``x`` and ``y``.
            image_shape: ``(H, W)`` of the frame the moved positions refer to; ``None``
                (the default) because the region's shape no longer applies.
        """
        for name, value in (("dx", dx), ("dy", dy)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise InputTypeError(f"{name}: expected a finite number, got {value!r}")
        moved = self.xy + np.asarray([dx, dy], dtype=np.float64)
        probs = None if self.class_probabilities is None else self.class_probabilities.copy()
        return self._with(moved.astype(np.float32), self.scores.copy(), image_shape, probs)

    @staticmethod
    def concat(items: Sequence["Detections"], image_shape: tuple[int, int] | None = None) -> "Detections":
        """Joins detections in one frame (e.g. regions already moved by :meth:`offset`).

        Args:
            items: the detections to join, in order.
            image_shape: ``(H, W)`` of the joined frame; default: the shared
                ``image_shape`` of the items when they all have the same, else ``None``.

        The joined ``colour_distance`` and ``edge_blur_um`` are the items' shared ones,
        else ``None``.

        Raises:
            TypeError: an item is not ``Detections``.
            ValueError: the items have different ``mpp`` (other pixel sizes cannot share
                one frame).
        """
        items = list(items)
        for i, d in enumerate(items):
            if not isinstance(d, Detections):
                raise InputTypeError(f"items[{i}]: expected Detections, got {type(d).__name__}")
        mpps = {d.mpp for d in items}
        if len(mpps) > 1:
            raise InputError(f"cannot concatenate detections at different pixel sizes: mpp {sorted(mpps, key=str)}")
        if image_shape is None:
            shapes = {d.image_shape for d in items}
            image_shape = shapes.pop() if len(shapes) == 1 else None
        if not items:
            return Detections.empty(image_shape)
        distances = {d.colour_distance for d in items}
        blurs = {d.edge_blur_um for d in items}
        names = {d.class_names for d in items}
        if len(names) > 1:
            raise InputError(f"cannot concatenate detections with different classes: {sorted(names)}")
        class_names = names.pop()
        probs = np.concatenate([d.class_probabilities for d in items]) if class_names else None
        return Detections(
            np.concatenate([d.xy for d in items]),
            np.concatenate([d.scores for d in items]),
            image_shape,
            mpps.pop(),
            distances.pop() if len(distances) == 1 else None,
            probs,
            class_names,
            blurs.pop() if len(blurs) == 1 else None,
        )

    # --- writers ----------------------------------------------------------------------

    def to_csv(self, path: str | PathLike[str]) -> Path:
        """Writes ``x,y,score`` CSV (one detection per row, 0-based pixels), and with a
        class head ``class`` (the name) and one ``p_<name>`` probability column per class;
        returns the path. :func:`micronet.runtime.points.read_points_csv` reads it back
        (positions), :meth:`from_csv` with the scores."""
        from .points import write_points_csv

        path = Path(path)
        write_points_csv(path, self.xy, self.scores, self.class_columns())
        return path

    def class_columns(self) -> dict[str, list[str]]:
        """The CSV columns of the classes: ``class`` and ``p_<name>`` (empty without a
        class head)."""
        if not self.class_names:
            return {}
        columns = {"class": [self.class_names[c] for c in self.classes]}
        for k, name in enumerate(self.class_names):
            columns[f"p_{name}"] = [f"{v:.4f}" for v in self.class_probabilities[:, k].tolist()]
        return columns

    @classmethod
    def from_csv(cls, path: str | PathLike[str], image_shape: tuple[int, int] | None = None, mpp: float | None = None) -> "Detections":
        """Reads a point CSV with ``x`` and ``y`` columns, in any order, other columns
        ignored (what ``micronet detect`` writes: ``x,y,score`` for images,
        ``x,y,x_um,y_um,score`` for slides); scores default to 1 without a ``score``."""
        from .points import read_scored_points_csv

        xy, scores = read_scored_points_csv(path)  # validates header, fields and values
        if scores is None:
            scores = np.ones(len(xy))
        return cls(xy, scores, image_shape, mpp)

    def to_geojson(self, path: str | PathLike[str] | None = None) -> dict[str, Any]:
        """The detections as a GeoJSON ``FeatureCollection`` of ``Point`` features that
        QuPath (0.4+, *File › Import objects*) imports as detection objects.

        Each feature has ``properties``: ``objectType: "detection"``, ``classification:
        {"name": "Nucleus", "color": [r, g, b]}``, ``measurements: {"score": s}``.
        Coordinates follow QuPath: continuous pixel units with ``(0, 0)`` at the top-left
        *corner* of the image, so a detection at pixel ``(x, y)`` is written at its
        centre ``(x + 0.5, y + 0.5)``.

        Args:
            path: when given, the collection is also written there (UTF-8 JSON).

        Returns:
            The ``FeatureCollection`` as a dict.
        """
        from .classes import class_colour

        centres = self.xy.astype(np.float64) + 0.5
        if self.class_names:
            # QuPath colours and counts each class on import; the probabilities become
            # measurements a user can threshold on.
            palette = [{"name": n, "color": list(class_colour(n, k))} for k, n in enumerate(self.class_names)]
            kinds = [palette[c] for c in self.classes]
            extra = [{f"p_{n}": float(v) for n, v in zip(self.class_names, row)} for row in self.class_probabilities.tolist()]
        else:
            kinds = [{"name": QUPATH_CLASS, "color": list(QUPATH_COLOR)}] * len(self.xy)
            extra = [{}] * len(self.xy)
        features = [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [float(x), float(y)]},
                "properties": {
                    "objectType": "detection",
                    "classification": dict(kind),
                    "measurements": {"score": float(s), **more},
                },
            }
            for (x, y), s, kind, more in zip(centres.tolist(), self.scores.tolist(), kinds, extra)
        ]
        collection = {"type": "FeatureCollection", "features": features}
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(collection, f, separators=(",", ":"), allow_nan=False)
        return collection

    def to_overlay(self, image: Any, path: str | PathLike[str] | None = None, radius: int = 4, color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
        """Draws a circle around each detection on a copy of the image.

        Args:
            image: the ``(H, W, 3)`` uint8 RGB image the detections were found in (its
                shape must equal ``image_shape`` when that is known).
            path: when given, the overlay is also written there as PNG.
            radius: circle radius in pixels.
            color: RGB outline colour.

        Returns:
            The ``(H, W, 3)`` uint8 RGB overlay.
        """
        from PIL import Image, ImageDraw

        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise InputError(f"image: expected an (H, W, 3) uint8 RGB array, got shape {arr.shape} dtype {arr.dtype}")
        if self.image_shape is not None and arr.shape[:2] != self.image_shape:
            raise InputError(f"image: expected the shape the detections were found in, {self.image_shape}, got {arr.shape[:2]}")
        canvas = Image.fromarray(np.ascontiguousarray(arr))
        draw = ImageDraw.Draw(canvas)
        r = int(radius)
        width = max(1, r // 3)
        if self.class_names:  # one colour per class, and a legend in the top-left corner
            from .classes import class_colour

            colours = [class_colour(n, k) for k, n in enumerate(self.class_names)]
            for (x, y), c in zip(self.xy.tolist(), self.classes.tolist()):
                draw.ellipse((x - r, y - r, x + r, y + r), outline=colours[c], width=width)
            for k, (name, count) in enumerate(self.class_counts().items()):
                top = 4 + 14 * k
                draw.rectangle((4, top, 14, top + 10), fill=colours[k])
                draw.text((18, top - 1), f"{name} ({count})", fill=(0, 0, 0))
        else:
            for x, y in self.xy.tolist():
                draw.ellipse((x - r, y - r, x + r, y + r), outline=tuple(color), width=width)
        if path is not None:
            canvas.save(Path(path), format="PNG")
        return np.asarray(canvas)
