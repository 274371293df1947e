"""Pixel sizes (µm) from an image file's metadata: OME-XML, ImageJ, TIFF resolution, PNG pHYs,
an OME-Zarr's coordinate transformations, or what an output of ``dinoseg apply`` records;
writers' defaults (72 dpi, 1 pixel per unit, no unit) are ignored. See :func:`pixel_size_of`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


from .reading import TIFF_SUFFIXES, open_pil

#: µm per unit of the length units found in OME-XML and ImageJ metadata (lower case; ``µ`` is
#: the micro sign, to which the Greek mu and ImageJ's ``\u00B5`` escape are turned first).
LENGTH_UNITS_UM = {"pm": 1e-6, "å": 1e-4, "angstrom": 1e-4, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
                   "µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
                   "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4,
                   "centimetre": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6, "in": 25400.0, "inch": 25400.0}
#: µm per TIFF ResolutionUnit (2 inch, 3 cm, and tifffile's 4 mm, 5 µm); 1 (none) says nothing.
RESOLUTION_UNITS_UM = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}
#: Resolutions (pixels per inch) that image software writes by default, whatever the image:
#: screen resolutions, ignored (in inches, and their equivalents per cm).
DEFAULT_DPI = (72.0, 96.0)
#: Where a pixel size came from (:attr:`PixelSize.source`).
FROM_OME, FROM_IMAGEJ, FROM_TIFF, FROM_PNG, FROM_DINOSEG = (
    "OME-XML PhysicalSizeX", "ImageJ metadata", "TIFF resolution", "PNG pHYs", "dinoseg output metadata")
FROM_NGFF = "OME-Zarr coordinateTransformations"


@dataclass(frozen=True)
class PixelSize:
    """A pixel size read from a file's metadata.

    Attributes
    ----------
    um : float
        µm per pixel along x (positive, finite).
    source : str
        Where it was read: :data:`FROM_OME`, :data:`FROM_IMAGEJ`, :data:`FROM_TIFF`,
        :data:`FROM_PNG`, :data:`FROM_NGFF`, or :data:`FROM_DINOSEG` followed by the source the output records
        (``"dinoseg output metadata (input: ImageJ metadata)"``).
    note : str
        What the user should know ("" when nothing): pixels that are not square (x used).
    """

    um: float
    source: str
    note: str = ""


def read_pixel_size(path) -> Optional[float]:
    """µm per pixel from an image file's metadata, or ``None`` (see :func:`pixel_size_of`)."""
    found = pixel_size_of(path)
    return None if found is None else found.um


def pixel_size_of(path) -> Optional[PixelSize]:
    """The pixel size an image file's metadata gives, in µm, with where it was found.

    Looked for in this order, the first that gives a size wins:

    1. an output of ``dinoseg apply``: the ``pixel_size_um`` it records (the size its run used);
    2. OME-XML: the first image's ``PhysicalSizeX`` in its ``PhysicalSizeXUnit`` (µm when
       absent; nm, mm, Å, ... converted);
    3. ImageJ metadata: its ``unit`` (micron, µm, nm, mm, cm, inch, ...) and the XResolution
       tag (pixels per unit); no unit, or ``pixel``, is no size;
    4. the TIFF XResolution tag in its ResolutionUnit (inch, cm; tifffile's mm and µm too);
    5. a PNG's pHYs chunk in pixels per metre (as PIL reports it);
    6. an OME-Zarr directory (NGFF 0.4, 0.5): the ``x`` axis's scale at level 0 (the dataset's
       times the multiscale's) in the axis's unit (``micrometer``, ``nanometer``, ...); no
       unit is no size. One written by ``dinoseg apply`` gives what it records first (1.).

    Ignored, as they say nothing of the image: a resolution without a unit (ResolutionUnit
    none, tifffile's default), a resolution of 1 pixel per unit (the default of many writers),
    72 and 96 pixels per inch (screen resolutions that image software writes by default, also
    when given per cm or per metre), and JPEG densities (almost always such a default).
    Pixels that are not square: the x size, with a note.

    Parameters
    ----------
    path
        A TIFF, PNG or JPEG file, or an OME-Zarr directory.

    Returns
    -------
    :class:`PixelSize`, or ``None`` when the metadata gives no size (or a meaningless one: not
    a positive finite number, an unknown unit, malformed OME-XML).

    Raises
    ------
    OSError
        The file cannot be opened.
    """
    path = Path(path)
    if path.is_dir():
        return _ngff_pixel_size(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _tiff_pixel_size(path)
    if suffix == ".png":
        return _png_pixel_size(path)
    return None


def _tiff_pixel_size(path: Path) -> Optional[PixelSize]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not len(tif.pages):
                return None
            page = tif.pages[0]
            found = _dinoseg_pixel_size(tif)
            if found is None and tif.is_ome:
                found = _ome_pixel_size(tif.ome_metadata)
            if found is None and tif.is_imagej:
                found = _imagej_pixel_size(tif.imagej_metadata or {}, page)
            if found is None:
                found = _resolution_pixel_size(page)
    except (tifffile.TiffFileError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None  # metadata that cannot be read says nothing
    return found


def _ngff_pixel_size(path: Path) -> Optional[PixelSize]:
    """The pixel size of an OME-Zarr directory's level 0 (:func:`napari_dinoseg.ngff.open_ngff`),
    or what the ``attrs["dinoseg"]`` of an output of ``dinoseg apply`` records."""
    from .ngff import is_zarr_image, open_ngff

    if not is_zarr_image(path):
        return None
    try:
        image = open_ngff(path)
    except (ValueError, OSError):
        return None  # metadata that cannot be read says nothing
    found = _dinoseg_record(image.attrs)
    if found is not None:
        return found
    x, y = image.pixel_size_um, image.pixel_size_y_um
    return None if x is None else PixelSize(x, FROM_NGFF, _anisotropy(x, y))


def _dinoseg_pixel_size(tif) -> Optional[PixelSize]:
    """The ``pixel_size_um`` and ``pixel_size_from`` an output of ``dinoseg apply`` records."""
    return _dinoseg_record(tif.shaped_metadata[0] if tif.shaped_metadata else {})


def _dinoseg_record(meta) -> Optional[PixelSize]:
    """The pixel size in the metadata of an output of ``dinoseg apply`` (a TIFF's, or an
    OME-Zarr's ``attrs["dinoseg"]``): its ``pixel_size_um`` and ``pixel_size_from``."""
    if not isinstance(meta, dict) or "dinoseg_bundle" not in meta:
        return None
    size = _positive(meta.get("pixel_size_um"))
    source = meta.get("pixel_size_from")
    if size is None:
        return None
    return PixelSize(size, f"{FROM_DINOSEG} ({source})" if isinstance(source, str) and source else FROM_DINOSEG)


def ome_pixels(xml: Optional[str]):
    """The first image's ``Pixels`` element of an OME-XML document (``None``: none, or not XML)."""
    from xml.etree import ElementTree

    if not xml:
        return None
    try:
        return ElementTree.fromstring(xml).find(".//{*}Image/{*}Pixels")
    except ElementTree.ParseError:
        return None


def _ome_pixel_size(xml: Optional[str]) -> Optional[PixelSize]:
    pixels = ome_pixels(xml)
    if pixels is None:
        return None
    x = _length_um(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit", "µm"))
    y = _length_um(pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeYUnit", "µm"))
    return None if x is None else PixelSize(x, FROM_OME, _anisotropy(x, y))


def _imagej_pixel_size(meta: dict, page) -> Optional[PixelSize]:
    unit = meta.get("unit")
    if not isinstance(unit, str) or "XResolution" not in page.tags:
        return None
    xres, yres = page.resolution
    x = _length_um(1 / xres if xres else None, unit)
    y = _length_um(1 / yres if yres else None, unit)
    return None if x is None else PixelSize(x, FROM_IMAGEJ, _anisotropy(x, y))


def _resolution_pixel_size(page) -> Optional[PixelSize]:
    per_unit = RESOLUTION_UNITS_UM.get(int(page.resolutionunit))
    if per_unit is None or "XResolution" not in page.tags:
        return None
    xres, yres = (float(r) for r in page.resolution)
    if not (_positive(xres) and _positive(yres)) or _default_resolution(xres, per_unit):
        return None
    x, y = per_unit / xres, per_unit / yres
    return PixelSize(x, FROM_TIFF, _anisotropy(x, y))


def _png_pixel_size(path: Path) -> Optional[PixelSize]:
    from PIL import Image

    try:
        with open_pil(path) as im:
            dpi = im.info.get("dpi")  # PIL gives it for a pHYs chunk in pixels per metre only
    except (ValueError, SyntaxError, Image.UnidentifiedImageError):
        return None
    if not (isinstance(dpi, tuple) and len(dpi) == 2 and _positive(dpi[0]) and _positive(dpi[1])):
        return None
    if _default_resolution(float(dpi[0]), 25400.0):
        return None
    x, y = 25400.0 / float(dpi[0]), 25400.0 / float(dpi[1])
    return PixelSize(x, FROM_PNG, _anisotropy(x, y))


def _default_resolution(per_unit: float, unit_um: float) -> bool:
    """Whether ``per_unit`` pixels per unit of ``unit_um`` µm is a writer's default: 1 per unit,
    or 72 / 96 per inch (to 0.1 %: PNG stores them as whole pixels per metre)."""
    dpi = per_unit * 25400.0 / unit_um
    return math.isclose(per_unit, 1.0) or any(math.isclose(dpi, d, rel_tol=1e-3) for d in DEFAULT_DPI)


def _length_um(value, unit) -> Optional[float]:
    """``value`` in ``unit`` as µm, or ``None`` (no value, not positive, an unknown unit)."""
    size = _positive(value)
    if size is None or not isinstance(unit, str):
        return None
    key = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").replace("\u03bc", "µ").lower()
    factor = LENGTH_UNITS_UM.get(key)
    return None if factor is None else _positive(size * factor)


def _positive(value) -> Optional[float]:
    """``value`` as a positive finite float, else ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _anisotropy(x: float, y: Optional[float]) -> str:
    if y is None or math.isclose(x, y, rel_tol=1e-6):
        return ""
    return f"its pixels are not square ({x:.6g} µm wide, {y:.6g} µm high): the width was used"
