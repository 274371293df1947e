"""Voxel spacings ``(dz, dy, dx)`` in µm from a volume file's metadata: what an output of ``dinoseg
apply`` records, OME-XML ``PhysicalSizeZ/Y/X``, ImageJ's ``spacing`` and resolution, an OME-Zarr's
(NGFF 0.4, 0.5) scales; and ``--spacing DZ,DY,DX`` read from the command line. See
:func:`voxel_spacing_of`.

The three sizes of a spacing come from one metadata block, so that they agree with each other;
their units are converted by :mod:`napari_dinoseg.pixel_size`'s table (OME-XML, ImageJ) or
:mod:`napari_dinoseg.ngff`'s (NGFF units). A file that says nothing about z has no spacing:
its pixel size alone is :func:`napari_dinoseg.pixel_size.pixel_size_of`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .pixel_size import _length_um, _positive, ome_pixels
from .reading import TIFF_SUFFIXES
from .volume import Spacing, checked_spacing

#: Where a spacing came from (:attr:`VoxelSpacing.source`).
FROM_DINOSEG, FROM_OME, FROM_IMAGEJ, FROM_NGFF = ("dinoseg output metadata", "OME-XML", "ImageJ metadata",
                                                  "NGFF scale")


@dataclass(frozen=True)
class VoxelSpacing:
    """A voxel spacing read from a file's metadata.

    Attributes
    ----------
    zyx_um : (float, float, float)
        µm per voxel along z, y and x (positive, finite).
    source : str
        Where it was read: :data:`FROM_DINOSEG`, :data:`FROM_OME`, :data:`FROM_IMAGEJ` or
        :data:`FROM_NGFF` (with the level read, when not 0).
    """

    zyx_um: Spacing
    source: str


def voxel_spacing_of(path, level: int = 0) -> Optional[VoxelSpacing]:
    """The voxel spacing a volume file's metadata gives, in µm, with where it was found.

    Looked for in this order, the first that gives z, y and x wins:

    1. a TIFF written by ``dinoseg apply``: the ``spacing_um`` it records (the spacing its run used);
    2. OME-XML: the first image's ``PhysicalSizeZ``, ``PhysicalSizeY``, ``PhysicalSizeX`` in their
       units (µm when absent);
    3. ImageJ metadata: ``spacing`` (z) in ``zunit``, else ``unit``, and the YResolution /
       XResolution tags (pixels per ``unit``); no unit (or ``pixel``) is no size;
    4. an OME-Zarr directory: the ``z``, ``y``, ``x`` scales of resolution ``level`` (the
       dataset's times the multiscale's) in their axes' units.

    Parameters
    ----------
    path
        A TIFF file or an OME-Zarr directory (other files have no spacing).
    level : int
        The resolution level of an OME-Zarr (0: the finest); ignored for TIFFs.

    Returns
    -------
    :class:`VoxelSpacing`, or ``None`` when the metadata says nothing about z, or gives no
    length for one of the three axes (no unit, an unknown one, not a positive number).

    Raises
    ------
    OSError
        The file cannot be opened.
    """
    path = Path(path)
    if path.is_dir():
        return _ngff_spacing(path, level)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _tiff_spacing(path)
    return None


def parse_spacing(text: str, option: str = "--spacing") -> Spacing:
    """``"DZ,DY,DX"`` (µm, as given on the command line) as three positive floats.

    Raises
    ------
    ValueError
        Naming the option and the value: not three comma-separated numbers, or one that is not
        positive and finite.
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        return checked_spacing([float(p) for p in parts])
    except ValueError:
        raise ValueError(f"{option} {text}: give the voxel size as three positive numbers DZ,DY,DX in µm, "
                         "z first (e.g. 2,0.5,0.5)") from None


def training_spacing(paths: Sequence) -> tuple[Optional[Spacing], str]:
    """``(spacing in µm, note)`` of training volumes from their metadata (:func:`voxel_spacing_of`):
    the first's when every one gives one and they agree within 1 %; ``None`` with a note when
    some give none.

    Raises
    ------
    ValueError
        When their spacings differ (one classifier's 3-D filters are scaled by one spacing).
    """
    found = [voxel_spacing_of(p) for p in paths]
    missing = [str(p) for p, f in zip(paths, found) if f is None]
    if missing:
        return None, (f"no voxel spacing recorded: the metadata of {', '.join(missing)} gives none; the voxels are "
                      "taken as isotropic (give --spacing DZ,DY,DX in µm if they are not)")
    first = found[0].zyx_um
    for path, other in zip(paths, found):
        if any(abs(a - b) > 0.01 * min(a, b) for a, b in zip(first, other.zyx_um)):
            shown = lambda s: ", ".join(f"{v:.4g}" for v in s)  # noqa: E731
            raise ValueError(f"the training volumes' voxel spacings differ: {paths[0]} has ({shown(first)}) µm, "
                             f"{path} ({shown(other.zyx_um)}) µm (dz, dy, dx); train on volumes of one spacing, or "
                             "give --spacing DZ,DY,DX to use one for all")
    return first, ""


def _tiff_spacing(path: Path) -> Optional[VoxelSpacing]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not len(tif.pages):
                return None
            found = _recorded(tif.shaped_metadata[0] if tif.shaped_metadata else {})
            if found is None and tif.is_ome:
                found = _ome_spacing(tif.ome_metadata)
            if found is None and tif.is_imagej:
                found = _imagej_spacing(tif.imagej_metadata or {}, tif.pages[0])
    except (tifffile.TiffFileError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None  # metadata that cannot be read says nothing
    return found


def recorded_spacing(meta) -> Optional[Spacing]:
    """``(dz, dy, dx)`` µm that an output of ``dinoseg apply`` records (``spacing_um`` of its
    record, a TIFF's description or an OME-Zarr's ``attrs["dinoseg"]``); ``None`` when it records
    none (a plane, a volume of unknown spacing) or is not such an output."""
    found = _recorded(meta)
    return None if found is None else found.zyx_um


def _recorded(meta) -> Optional[VoxelSpacing]:
    """The ``spacing_um`` an output of ``dinoseg apply`` records (with its ``spacing_from``)."""
    if not isinstance(meta, dict) or "dinoseg_bundle" not in meta:
        return None
    values = meta.get("spacing_um")
    sizes = [_positive(v) for v in values] if isinstance(values, list) and len(values) == 3 else [None]
    if None in sizes:
        return None
    source = meta.get("spacing_from")
    return VoxelSpacing(tuple(sizes), f"{FROM_DINOSEG} ({source})" if isinstance(source, str) and source
                        else FROM_DINOSEG)


def _ome_spacing(xml: Optional[str]) -> Optional[VoxelSpacing]:
    pixels = ome_pixels(xml)
    if pixels is None:
        return None
    sizes = [_length_um(pixels.get(f"PhysicalSize{a}"), pixels.get(f"PhysicalSize{a}Unit", "µm")) for a in "ZYX"]
    return None if None in sizes else VoxelSpacing(tuple(sizes), FROM_OME)


def _imagej_spacing(meta: dict, page) -> Optional[VoxelSpacing]:
    unit = meta.get("unit")
    if not isinstance(unit, str) or "XResolution" not in page.tags or "YResolution" not in page.tags:
        return None
    dz = _length_um(meta.get("spacing"), meta.get("zunit", unit))
    xres, yres = (float(r) for r in page.resolution)
    dy = _length_um(1 / yres if yres else None, meta.get("yunit", unit))
    dx = _length_um(1 / xres if xres else None, unit)
    return None if None in (dz, dy, dx) else VoxelSpacing((dz, dy, dx), FROM_IMAGEJ)


def _ngff_spacing(path: Path, level: int) -> Optional[VoxelSpacing]:
    """The ``z``, ``y``, ``x`` sizes of an OME-Zarr's ``level`` (:func:`napari_dinoseg.ngff.open_ngff`)."""
    from .ngff import is_zarr_image, open_ngff

    if not is_zarr_image(path):
        return None
    try:
        image = open_ngff(path, level)
    except (ValueError, OSError):
        return None  # metadata that cannot be read says nothing (or no such level: the reader says so)
    if "z" not in image.axes:
        return None
    sizes = [image.size_um(a) for a in "zyx"]
    if None in sizes:
        return None
    return VoxelSpacing(tuple(sizes), FROM_NGFF + (f", level {level}" if level else ""))
