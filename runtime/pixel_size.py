"""Pixel sizes: µm per pixel along x (columns) and y (rows), and where the value came from.

A :class:`PixelSize` is resolved once, where an input enters a run
(:func:`resolve_pixel_size`): the caller's (``mpp=``, ``--mpp``), else the one the file
records, else, for a plain image, the model's (assumed); what runs below takes the
resolved value and never reads the file's metadata again.

What a file records is read from its open header: :func:`tiff_pixel_size` (OME-XML
``PhysicalSizeX/Y``, an Aperio ``MPP``, ImageJ's calibration, the TIFF resolution tags)
and :func:`pillow_pixel_size` (PNG ``pHYs``, JPEG JFIF density) give ``(x, y)`` µm/px and
their source, and :func:`recorded_pixel_size` keeps them only within
:data:`PLAUSIBLE_MPP`: every screenshot and export carries a screen or print resolution
(72, 96, 300 dpi are 353, 265, 85 µm/px), which says nothing about the tissue.

>>> size = PixelSize(0.25, 0.26, "OME-XML PhysicalSizeX/Y")
>>> size.mean
0.255
"""

from __future__ import annotations

import logging
import math
import numbers
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from typing import Any

from .errors import InputError, InputTypeError

__all__ = [
    "PLAUSIBLE_MPP",
    "MPP_AGREEMENT",
    "PixelSize",
    "ImplausiblePixelSize",
    "check_mpp",
    "pillow_pixel_size",
    "recorded_pixel_size",
    "resolve_pixel_size",
    "tiff_pixel_size",
]

log = logging.getLogger(__name__)

# µm/px a file may record and be believed: a 100× oil objective images at about 0.06,
# a 1.25× overview at about 8; 72–1200 dpi (screens, printers) are 21–353.
PLAUSIBLE_MPP = (0.05, 20.0)
# A given pixel size further than this (relative) from the file's own is said in a warning;
# x and y further apart than this are named in an image's source (it runs at their mean).
MPP_AGREEMENT = 0.01


class ImplausiblePixelSize(InputError):
    """A recorded pixel size outside :data:`PLAUSIBLE_MPP`: a screen's or printer's
    resolution, not a microscope's."""


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{name}: expected a positive pixel size in µm/px, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PixelSize:
    """The size of a pixel in µm along x (columns) and y (rows), and where it came from.

    Attributes:
        x, y: µm/px, positive and finite (checked).
        source: where the values came from, in words (``"--mpp"``, ``"PNG pHYs"``,
            ``"Aperio ImageDescription MPP"``, ``"assumed: the model's"`` …).

    Raises:
        ValueError: a value that is not a positive finite number.
        TypeError: a source that is not a string.
    """

    x: float
    y: float
    source: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", _positive(self.x, "pixel size x"))
        object.__setattr__(self, "y", _positive(self.y, "pixel size y"))
        if not isinstance(self.source, str):
            raise InputTypeError(f"pixel size source: expected a string, got {type(self.source).__name__}")

    @classmethod
    def square(cls, mpp: Any, source: str, name: str = "mpp") -> PixelSize:
        """Square pixels of ``mpp`` µm/px; a ``ValueError`` naming ``name`` for a value
        that is not a positive number."""
        mpp = _positive(mpp, name)
        return cls(mpp, mpp, source)

    @classmethod
    def recorded(cls, x: float, y: float, source: str) -> PixelSize:
        """The pixel size a file records, believed only within :data:`PLAUSIBLE_MPP`.

        Raises:
            ImplausiblePixelSize: (a ``ValueError``) either value outside it, saying what
                the file gives.
        """
        lo, hi = PLAUSIBLE_MPP
        if not all(isinstance(v, numbers.Real) and math.isfinite(v) and lo <= v <= hi for v in (x, y)):
            raise ImplausiblePixelSize(
                f"its {source} give {x:.4g} µm/px, not a microscope's pixel size (expected {lo:g} to {hi:g} µm/px)"
            )
        return cls(x, y, source)

    @property
    def mean(self) -> float:
        """µm/px, the mean of x and y: what resamples both axes alike (the one place the
        two are averaged)."""
        return (self.x + self.y) / 2

    @property
    def xy(self) -> tuple[float, float]:
        """``(x, y)`` µm/px."""
        return (self.x, self.y)

    def as_square(self) -> PixelSize:
        """The square pixels a plain image runs at (the Detector resamples both axes by
        one ratio): x and y both their :attr:`mean` to 9 significant digits, the source
        naming them when they differ by more than :data:`MPP_AGREEMENT`."""
        if self.x == self.y:
            return self
        mean = float(f"{self.mean:.9g}")
        source = self.source
        if abs(self.x - self.y) > MPP_AGREEMENT * mean:
            source = f"{source} (x {self.x:g}, y {self.y:g} µm/px: their mean)"
        return PixelSize(mean, mean, source)

    def rounded(self, digits: int = 9) -> PixelSize:
        """x and y to ``digits`` significant digits: 25400 / 101600.00000000001 dpi is 0.25."""
        return replace(self, x=float(f"{self.x:.{digits}g}"), y=float(f"{self.y:.{digits}g}"))


def check_mpp(mpp: Any, name: str = "mpp") -> float | None:
    """A caller's pixel size in µm/px as a float, or ``None``; a ``ValueError`` naming
    ``name`` for anything but a positive number."""
    if mpp is None:
        return None
    if isinstance(mpp, bool) or not isinstance(mpp, numbers.Real) or not math.isfinite(mpp) or mpp <= 0:
        raise InputError(f"{name}: expected a positive pixel size in µm/px or None, got {mpp!r}")
    return float(mpp)


def recorded_pixel_size(xy: tuple[float, float] | None, source: str) -> tuple[PixelSize | None, str]:
    """What a header parser found (``(x, y)`` µm/px or ``None``, and its source or why
    not) as ``(PixelSize, source)``, or ``(None, why not)`` when there is none or it is
    implausible (:meth:`PixelSize.recorded`)."""
    if xy is None:
        return None, source
    try:
        found = PixelSize.recorded(xy[0], xy[1], source)
    except ImplausiblePixelSize as exc:
        return None, str(exc)
    return found, source


def resolve_pixel_size(
    given: float | PixelSize | None,
    recorded: PixelSize | None,
    *,
    name: str,
    given_source: str,
    assumed: PixelSize | None = None,
    missing: str = "",
) -> PixelSize:
    """The pixel size an input runs at, resolved once: ``given`` (the caller's, as
    ``given_source``; a warning when it differs from the file's by more than
    :data:`MPP_AGREEMENT`), else ``recorded`` (the file's own), else ``assumed``.

    Args:
        given: the caller's µm/px (or a :class:`PixelSize` already resolved), or ``None``.
        recorded: the plausible pixel size the input's file records, or ``None``.
        name: the input, for the messages.
        given_source: the source of ``given`` (``"--mpp"``, ``"mpp= / --mpp"``).
        assumed: what to use when neither says (an image: the model's), or ``None``.
        missing: why the file records none, for the error when nothing is assumed.

    Raises:
        ValueError: ``given`` is not a positive number; or nothing gives a pixel size
            and nothing is assumed (the message says to pass ``mpp=`` / ``--mpp``).
    """
    if isinstance(given, PixelSize):
        return given
    mpp = check_mpp(given)
    if mpp is not None:
        if recorded is not None and abs(mpp / recorded.mean - 1) > MPP_AGREEMENT:
            log.warning("%s: using %.4g µm/px (%s), not the %.4g µm/px its %s records", name, mpp, given_source, recorded.mean, recorded.source)
        return PixelSize.square(mpp, given_source)
    if recorded is not None:
        return recorded
    if assumed is not None:
        return assumed
    raise InputError(
        f"{name}: the file records no pixel size ({missing}); pass mpp= with the level-0 pixel size in µm/px (about 0.25 at "
        "40×, 0.5 at 20×), --mpp on the command line"
    )


# --- what files record -----------------------------------------------------------------------


def pillow_pixel_size(im: Any) -> tuple[tuple[float, float] | None, str]:
    """``((x, y) µm/px, source)`` from a Pillow image's header (PNG ``pHYs``, JPEG JFIF
    density), or ``(None, why)``; not yet checked for plausibility."""
    if im.format == "PNG":
        dpi = im.info.get("dpi")  # Pillow's reading of pHYs in pixels per metre
        if not dpi:
            return None, "no PNG pHYs chunk in metres"
        return _per_unit(25400.0, dpi), "PNG pHYs"
    if im.format == "JPEG":
        unit, density = im.info.get("jfif_unit"), im.info.get("jfif_density")
        if unit not in (1, 2) or not density:
            return None, "no JFIF density in inches or centimetres"
        return _per_unit(25400.0 if unit == 1 else 10000.0, density), "JPEG JFIF density"
    return None, f"{im.format} files carry no pixel size this SDK reads"


def _per_unit(um_per_unit: float, per_unit: Any) -> tuple[float, float] | None:
    """µm/px from pixels per unit ``(x, y)``; ``None`` for zero or unreadable values."""
    try:
        rx, ry = (float(v[0]) / float(v[1]) if isinstance(v, tuple) else float(v) for v in per_unit)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not (rx > 0 and ry > 0):
        return None
    return um_per_unit / rx, um_per_unit / ry


# OME-XML length units, in µm.
_OME_UNITS = {"µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6}


def tiff_pixel_size(tif: Any) -> tuple[tuple[float, float] | None, str]:
    """``((x, y) µm/px, source)`` recorded in an open ``tifffile.TiffFile`` (its first
    page), or ``(None, why not)``; not yet checked for plausibility.

    Sources in order: OME-XML ``PhysicalSizeX/Y``, an Aperio ImageDescription ``MPP``,
    ImageJ's calibration in microns, the resolution tags per centimetre or inch (inch
    when ``ResolutionUnit`` is absent, as the TIFF standard says).
    """
    page = tif.pages[0]
    if tif.is_ome:
        mpp_xy, why = _ome_pixel_size(tif.ome_metadata or "")
        if mpp_xy is not None:
            return mpp_xy, "OME-XML PhysicalSizeX/Y"
    if tif.is_svs:
        for field in (page.description or "").split("|"):
            key, _, value = field.partition("=")
            if key.strip() == "MPP":
                try:
                    mpp = float(value)
                except ValueError:
                    break
                return (mpp, mpp), "Aperio ImageDescription MPP"
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    if xres is None or yres is None:
        return None, "no TIFF resolution tags"
    unit = page.tags.get("ResolutionUnit")
    unit_value = int(unit.value) if unit is not None else 2  # the TIFF standard's default: inch
    per = (xres.value, yres.value)
    if unit_value == 1 and tif.is_imagej:
        # ImageJ stores pixels per calibration unit with no TIFF unit.
        calibration = str((tif.imagej_metadata or {}).get("unit", "")).replace("\\u00B5", "µ")
        if calibration in ("micron", "µm", "μm", "um"):
            return _per_unit(1.0, per), "ImageJ calibration (micron)"
        return None, f"ImageJ calibration in {calibration or 'pixels'!r}, not microns"
    if unit_value not in (2, 3):
        return None, "TIFF resolution tags without a physical unit"
    return _per_unit(25400.0 if unit_value == 2 else 10000.0, per), "TIFF resolution tags"


def _ome_pixel_size(xml: str) -> tuple[tuple[float, float] | None, str]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        return None, f"OME-XML not well-formed ({exc})"
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None, "OME-XML without PhysicalSizeX"
    sizes = []
    for axis in ("X", "Y"):
        value = pixels.get(f"PhysicalSize{axis}", pixels.get("PhysicalSizeX"))
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")  # the OME schema's default
        if unit not in _OME_UNITS:
            return None, f"OME-XML PhysicalSize{axis} in an unknown unit {unit!r}"
        try:
            sizes.append(float(value) * _OME_UNITS[unit])
        except (TypeError, ValueError):
            return None, f"OME-XML PhysicalSize{axis} unreadable: {value!r}"
    return (sizes[0], sizes[1]), "OME-XML PhysicalSizeX/Y"
