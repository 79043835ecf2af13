"""Whole slides: pyramidal TIFF reading, tissue detection and the plan of a slide's tiles.
Running a slide into an output folder is :mod:`micronet.runtime.runs.slide_run`'s.

>>> from micronet import Detector                                    # doctest: +SKIP
>>> found = Detector().detect_slide("slide.svs", out_dir="results")  # doctest: +SKIP

The parts, in the order a run uses them:

============  ===========================================================================
module        holds
============  ===========================================================================
``reader``    :func:`open_slide` and :class:`Slide`: Aperio SVS, OME-TIFF, NDPI and tiled
              pyramidal TIFF read with tifffile; the pyramid's :class:`Level` s, the
              pixel size from the file's own metadata, windows
              (:meth:`Slide.read_region`) and :class:`Thumbnail` s, in bounded memory.
``openslide_reader``  :class:`OpenSlideSlide`: the same interface over OpenSlide, for
              the vendor formats tifffile does not read (``reader="openslide"``, or
              ``"auto"`` by suffix).
``tissue``    :func:`tissue_mask` (Otsu on HSV saturation) and the choice of the tiles
              whose core touches tissue.
``plan``      :func:`plan_slide`: the level read, the region at the model's pixel size
              (:class:`ModelGrid`) and the tiles to run (:class:`SlidePlan`).
============  ===========================================================================

Resampling to the model's pixel size is :mod:`micronet.runtime.resample`'s, tiling
:mod:`micronet.runtime.tiling`'s: a slide gives the same detections as
``detector.detect`` on the whole region. Positions are level-0 pixels, ``(x, y)`` =
(column, row).
"""

from __future__ import annotations

from .plan import ModelGrid, SlidePlan, plan_slide
from .reader import (
    READERS,
    SLIDE_SUFFIXES,
    THUMBNAIL_SIZE,
    Level,
    Slide,
    SlideBase,
    Thumbnail,
    open_slide,
)
from .tissue import tissue_mask

__all__ = [
    "open_slide",
    "READERS",
    "Slide",
    "SlideBase",
    "Level",
    "Thumbnail",
    "tissue_mask",
    "plan_slide",
    "SlidePlan",
    "ModelGrid",
    "SLIDE_SUFFIXES",
    "THUMBNAIL_SIZE",
]
