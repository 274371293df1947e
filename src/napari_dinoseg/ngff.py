"""OME-Zarr (NGFF) images, read lazily and written level by level, with zarr's v3 API only.

Reading (:func:`open_ngff`): NGFF 0.5 image groups (zarr v3: ``zarr.json`` with
``attributes["ome"]``), NGFF 0.4 image groups (zarr v2: ``.zattrs`` with ``multiscales``), a
bioformats2raw layout (its first image, ``0/``), and a plain zarr array as a single level. Every
level is a lazy ``zarr.Array``: nothing is read until it is indexed. The segmentation core wants
``(H, W)`` or ``(H, W, C)`` planes; :class:`PlaneView` (and :class:`ChannelsLast`) present one
plane of an NGFF array (channels first, ``"cyx"``, ``"tczyx"``) that way, reading only what is
indexed, and :func:`planes` yields every plane of an image.

Writing is :mod:`napari_dinoseg.ngff_write` (:func:`~napari_dinoseg.ngff_write.create_ngff`,
``write_pyramid``, ``mark_complete``): an NGFF 0.5 image group whose level 0 the caller fills window by window, then the lower levels filled one output
chunk at a time (labels by taking every second pixel, so a level holds only values of level 0;
intensities and probabilities by the mean of 2 x 2 pixels). Memory is bounded by a few chunks,
never by the image. ``attrs["dinoseg"]`` holds the caller's metadata, the pyramid's kind, and
``complete``: true only once ``mark_complete`` has been called (:func:`is_complete`), so
that a partly written output is recognisable. The plane views are :mod:`napari_dinoseg.ngff_planes`
(re-exported here).

Imports nothing of the package (``pixel_size`` and ``inputs`` import it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from .ngff_planes import AXIS_ORDER, ChannelsLast, PlaneView, _check_axes, _subsequence  # noqa: F401

#: NGFF versions read; written: :data:`WRITTEN_VERSION`.
SUPPORTED_VERSIONS = ("0.4", "0.5")
WRITTEN_VERSION = "0.5"
#: µm per unit of the NGFF space units (UDUNITS-2 names, as the spec lists them), and the
#: abbreviations some writers use.
UNITS_UM = {"angstrom": 1e-4, "attometer": 1e-12, "centimeter": 1e4, "decimeter": 1e5, "exameter": 1e24,
            "femtometer": 1e-9, "foot": 304800.0, "gigameter": 1e15, "hectometer": 1e8, "inch": 25400.0,
            "kilometer": 1e9, "megameter": 1e12, "meter": 1e6, "micrometer": 1.0, "mile": 1609344e3,
            "millimeter": 1e3, "nanometer": 1e-3, "parsec": 3.0856775814913673e22, "petameter": 1e21,
            "picometer": 1e-6, "terameter": 1e18, "yard": 914400.0, "yoctometer": 1e-18, "yottameter": 1e30,
            "zeptometer": 1e-15, "zettameter": 1e27,
            "nm": 1e-3, "um": 1.0, "µm": 1.0, "\u03bcm": 1.0, "micron": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}
#: The axis type each axis name of a written image gets; ``"c"``: channels, or one probability
#: per class.
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
#: Kinds of pyramid: how a level is made from the one above.
KINDS = ("labels", "intensity")
#: The multiscale ``type`` written for each kind (the downsampling method).
DOWNSAMPLING = {"labels": "nearest", "intensity": "local_mean"}
#: The key of the project's attributes in a written group.
ATTRS_KEY = "dinoseg"
#: Default longest side (y or x) of a written pyramid's last level.
SMALLEST_LEVEL = 1024

PathLike = Union[str, Path]


# --- reading --------------------------------------------------------------------------------


def is_ome_zarr(path: PathLike) -> bool:
    """Whether ``path`` is a directory holding an NGFF image group: ``multiscales`` in its
    ``zarr.json``'s ``attributes["ome"]`` (NGFF 0.5) or in its ``.zattrs`` (NGFF 0.4 and
    older), or a bioformats2raw layout whose image ``0`` is one. Any version counts, also one
    :func:`open_ngff` refuses (so that it is reported, not passed over). Reads two small JSON
    files at most."""
    attrs = _group_attrs(Path(path))
    if attrs is None:
        return False
    if _multiscales_attrs(attrs) is not None:
        return True
    return "bioformats2raw.layout" in attrs and _multiscales_attrs(_group_attrs(Path(path) / "0") or {}) is not None


def is_zarr_image(path: PathLike) -> bool:
    """Whether ``path`` is an image :func:`open_ngff` may open: an NGFF image group
    (:func:`is_ome_zarr`) or a plain zarr array directory (``zarr.json`` of an array, or
    ``.zarray``)."""
    path = Path(path)
    return is_ome_zarr(path) or zarr_node_type(path) == "array"


def zarr_node_type(path: PathLike) -> Optional[str]:
    """``"group"``, ``"array"`` or ``None`` (not a zarr node) of a directory, from its metadata
    (v3's ``zarr.json``, v2's ``.zarray`` / ``.zgroup`` / ``.zattrs``)."""
    path = Path(path)
    meta = _read_json(path / "zarr.json")
    if meta is not None:
        return meta.get("node_type") if meta.get("node_type") in ("group", "array") else None
    if (path / ".zarray").is_file():
        return "array"
    if (path / ".zgroup").is_file() or (path / ".zattrs").is_file():
        return "group"
    return None


@dataclass(frozen=True)
class NgffImage:
    """An OME-Zarr image opened by :func:`open_ngff` (or created by :func:`~napari_dinoseg.ngff_write.create_ngff`).

    Attributes
    ----------
    path : Path
        The image group's directory (the array's, for a plain array).
    levels : tuple of zarr.Array
        Every resolution level, level 0 (the finest) first, lazy; each of ``len(axes)``
        dimensions.
    level : int
        The level :attr:`data` is.
    axes : str
        One letter per axis, in the arrays' order: ``"yx"``, ``"cyx"``, ``"tczyx"``; always
        ending in ``"yx"``.
    axis_types : tuple of str or None
        Each axis's NGFF type (``"space"``, ``"time"``, ``"channel"``, another or ``None``).
    units : tuple of str or None
        Each axis's unit as written (``"micrometer"``, ``"nanometer"``, ... or ``None``).
    scales : tuple of tuple of float
        Per level, per axis: the size of a pixel in the axis's unit (the dataset's ``scale``
        times the multiscale's, as NGFF combines them).
    translations : tuple of tuple of float
        Per level, per axis: where pixel 0 lies, in the axis's unit (0 when none is given).
    version : str or None
        ``"0.4"`` or ``"0.5"``; ``None`` for a plain zarr array.
    name : str or None
        The multiscale's ``name``.
    attrs : dict
        The group's :data:`ATTRS_KEY` attributes (this package's metadata) as they were when
        it was opened (:func:`is_complete` reads them again), ``{}`` if none.
    """

    path: Path
    levels: tuple
    level: int
    axes: str
    axis_types: tuple
    units: tuple
    scales: tuple
    translations: tuple
    version: Optional[str]
    name: Optional[str]
    attrs: dict

    @property
    def data(self):
        """The chosen level's lazy ``zarr.Array``."""
        return self.levels[self.level]

    @property
    def pixel_size_um(self) -> Optional[float]:
        """µm per pixel along x at the chosen level, or ``None`` (no unit, or not a length)."""
        return self.size_um("x")

    @property
    def pixel_size_y_um(self) -> Optional[float]:
        """µm per pixel along y at the chosen level, or ``None``."""
        return self.size_um("y")

    def size_um(self, axis: str, level: Optional[int] = None) -> Optional[float]:
        """µm per pixel along ``axis`` (one of :attr:`axes`) at ``level`` (the chosen one by
        default), or ``None`` when the axis has no unit or one that is not a length."""
        if axis not in self.axes:
            raise ValueError(f"the image has no axis {axis!r}; its axes are {self.axes!r}")
        i = self.axes.index(axis)
        factor = UNITS_UM.get(self.units[i].strip().lower()) if isinstance(self.units[i], str) else None
        size = self.scales[self.level if level is None else level][i]
        return None if factor is None or not (math.isfinite(size) and size > 0) else size * factor

    @property
    def channel_axis(self) -> Optional[int]:
        """The position of the ``"c"`` axis in :attr:`axes`, or ``None``."""
        return self.axes.index("c") if "c" in self.axes else None

    @property
    def lead_axes(self) -> str:
        """The axes other than ``c``, ``y`` and ``x`` (``"t"``, ``"z"``, ``"tz"``, or ``""``):
        one plane is segmented per index of them (:func:`planes`)."""
        return "".join(a for a in self.axes if a not in "cyx")

    @property
    def lead_shape(self) -> tuple:
        """The sizes of :attr:`lead_axes` at the chosen level (``()`` for a single plane)."""
        return tuple(int(self.data.shape[self.axes.index(a)]) for a in self.lead_axes)

    def plane(self, index: Sequence[int] = ()) -> "PlaneView":
        """The plane at ``index`` (one int per :attr:`lead_axes`) of the chosen level, as a
        lazy ``(H, W)`` or ``(H, W, C)`` :class:`PlaneView`."""
        return PlaneView(self.data, self.axes, index)


def open_ngff(path: PathLike, level: int = 0, axes: Optional[str] = None, writable: bool = False) -> NgffImage:
    """Open an OME-Zarr image (or a plain zarr array) lazily.

    Parameters
    ----------
    path
        An NGFF 0.5 or 0.4 image group's directory (``*.ome.zarr``), a bioformats2raw layout
        (its image ``0`` is opened), or a plain zarr array's directory.
    level : int
        The resolution level :attr:`NgffImage.data` is (0: the finest).
    axes : str, optional
        Only for a plain zarr array: its axes (``"yx"``, ``"cyx"``, ...). Without it, the
        array's zarr v3 ``dimension_names``, else ``"yx"`` for 2 dimensions.

    writable : bool
        Open the arrays for writing (an output being filled) rather than read-only.

    Returns
    -------
    :class:`NgffImage`, whose arrays are opened read-only unless ``writable``.

    Raises
    ------
    ValueError
        Not a zarr store; a group without ``multiscales``; an NGFF version other than
        :data:`SUPPORTED_VERSIONS`; axes that are not one-letter names ending in ``y``, ``x``;
        a level that does not exist; a dataset that is missing or has other dimensions than
        the axes; a plain array whose axes are not known.
    """
    return _open(Path(path), level, axes, mode="r+" if writable else "r")


def planes(image: NgffImage) -> Iterator[tuple[tuple, PlaneView]]:
    """Every plane of ``image``'s chosen level: ``(index, plane)`` for each index of its
    :attr:`~NgffImage.lead_axes` (``()`` once for a single plane), in C order; ``plane`` is
    a lazy ``(H, W)`` or ``(H, W, C)`` :class:`PlaneView`."""
    for index in np.ndindex(*image.lead_shape):
        yield tuple(int(i) for i in index), image.plane(index)


def metadata_of(path: PathLike) -> dict:
    """The group's ``attrs["dinoseg"]`` ({} where there is none, or it is not a group)."""
    ours = (_group_attrs(Path(path)) or {}).get(ATTRS_KEY)
    return dict(ours) if isinstance(ours, dict) else {}


def is_complete(path: PathLike) -> bool:
    """Whether the group at ``path`` was marked complete by :func:`~napari_dinoseg.ngff_write.mark_complete` (False for
    anything else: missing, not zarr, partly written, another writer's)."""
    attrs = _group_attrs(Path(path))
    ours = (attrs or {}).get(ATTRS_KEY)
    return isinstance(ours, dict) and ours.get("complete") is True


# --- helpers --------------------------------------------------------------------------------


def _read_json(path: Path) -> Optional[dict]:
    try:
        with open(path, "rb") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _group_attrs(path: Path) -> Optional[dict]:
    """The attributes of the zarr group at ``path`` (v3's ``zarr.json`` or v2's ``.zattrs``),
    or ``None`` when it is not a group."""
    meta = _read_json(path / "zarr.json")
    if meta is not None:
        attrs = meta.get("attributes") if meta.get("node_type") == "group" else None
        return attrs if isinstance(attrs, dict) else ({} if meta.get("node_type") == "group" else None)
    if (path / ".zarray").is_file():
        return None
    if (path / ".zgroup").is_file() or (path / ".zattrs").is_file():
        return _read_json(path / ".zattrs") or {}
    return None


def _multiscales_attrs(attrs: dict) -> Optional[dict]:
    """The attributes that hold ``multiscales``: ``attrs["ome"]`` (0.5), else ``attrs`` (0.4)."""
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome
    return attrs if "multiscales" in attrs else None


def _open(path: Path, level: int, axes: Optional[str], mode: str) -> NgffImage:
    import zarr

    if not path.is_dir():
        raise ValueError(f"{path} is not a zarr store (not a directory): give an OME-Zarr directory")
    node = zarr_node_type(path)
    if node is None:
        raise ValueError(f"{path} is not a zarr store (no zarr.json, .zgroup, .zattrs or .zarray in it): "
                         "give an OME-Zarr image directory")
    if node == "array":
        return _open_plain(path, zarr.open_array(path, mode=mode), level, axes)
    if axes is not None:
        raise ValueError(f"axes={axes!r} is only for a plain zarr array; {path} is a group whose "
                         "multiscales name its axes: leave axes out")
    attrs = _group_attrs(path) or {}
    if _multiscales_attrs(attrs) is None and "bioformats2raw.layout" in attrs:
        path = path / "0"  # the layout's first image
        attrs = _group_attrs(path) or {}
    meta = _multiscales_attrs(attrs)
    if meta is None:
        raise ValueError(f"{path} is a zarr group without 'multiscales': not an OME-Zarr image (a plate, "
                         "a collection?); give the directory of one image")
    multiscales = meta["multiscales"]
    if not (isinstance(multiscales, list) and multiscales and isinstance(multiscales[0], dict)):
        raise ValueError(f"{path}: 'multiscales' is not a list of multiscale images")
    first = multiscales[0]  # the spec's default image when there are several
    version = meta.get("version") if meta is not attrs else first.get("version")  # 0.5, else 0.4's place
    version = str(version) if version is not None else None
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"{path} is OME-Zarr version {version}; versions {' and '.join(SUPPORTED_VERSIONS)} "
                         "are supported: convert it (e.g. with ome2024-ngff-challenge or bioformats2raw)")
    group = zarr.open_group(path, mode=mode)
    names, types, units = _axes_of(first.get("axes"), path)
    datasets = first.get("datasets")
    if not (isinstance(datasets, list) and datasets):
        raise ValueError(f"{path}: its multiscale has no datasets (levels)")
    outer_scale, outer_shift = _transforms(first.get("coordinateTransformations"), len(names), path, "multiscale")
    levels, scales, shifts = [], [], []
    for k, dataset in enumerate(datasets):
        where = dataset.get("path") if isinstance(dataset, dict) else None
        if not isinstance(where, str):
            raise ValueError(f"{path}: dataset {k} has no path")
        try:
            array = group[where]
        except KeyError:
            raise ValueError(f"{path}: level {k}'s array {where!r} is missing (a partial copy?)") from None
        if not isinstance(array, zarr.Array) or array.ndim != len(names):
            raise ValueError(f"{path}: level {k} ({where!r}) is not an array of {len(names)} dimensions "
                             f"(axes {names!r})")
        scale, shift = _transforms(dataset.get("coordinateTransformations"), len(names), path, f"dataset {k}")
        levels.append(array)
        scales.append(tuple(s * o for s, o in zip(scale, outer_scale)))  # dataset first, then multiscale
        shifts.append(tuple(t * o + u for t, o, u in zip(shift, outer_scale, outer_shift)))
    level = _check_level(level, len(levels))
    ours = attrs.get(ATTRS_KEY)
    name = first.get("name")
    return NgffImage(path=path, levels=tuple(levels), level=level, axes=names, axis_types=types, units=units,
                     scales=tuple(scales), translations=tuple(shifts), version=version,
                     name=name if isinstance(name, str) else None, attrs=dict(ours) if isinstance(ours, dict) else {})


def _open_plain(path: Path, array, level: int, axes: Optional[str]) -> NgffImage:
    if axes is None:
        dims = getattr(array.metadata, "dimension_names", None)
        if dims and all(isinstance(d, str) and len(d) == 1 for d in dims):
            axes = "".join(dims).lower()
        elif array.ndim == 2:
            axes = "yx"
        else:
            raise ValueError(f"{path} is a plain zarr array of {array.ndim} dimensions without axis names: "
                             "give its axes (axes='cyx', 'zyx', ...)")
    _check_axes(axes)
    if len(axes) != array.ndim:
        raise ValueError(f"{path} has {array.ndim} dimensions; the axes {axes!r} name {len(axes)}")
    level = _check_level(level, 1)
    n = len(axes)
    return NgffImage(path=path, levels=(array,), level=level, axes=axes,
                     axis_types=tuple(AXIS_TYPES.get(a) for a in axes), units=(None,) * n,
                     scales=((1.0,) * n,), translations=((0.0,) * n,), version=None, name=path.name, attrs={})


def _check_level(level, n: int) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level < n:
        which = "level 0" if n == 1 else f"levels 0..{n - 1}"
        raise ValueError(f"there is no level {level!r}: the image has {which}; ask for one of them")
    return int(level)


def _axes_of(axes, path: Path) -> tuple[str, tuple, tuple]:
    """``(names, types, units)`` of a multiscale's ``axes`` (0.4/0.5: a list of dicts)."""
    if not (isinstance(axes, list) and axes and all(isinstance(a, dict) and "name" in a for a in axes)):
        raise ValueError(f"{path}: its multiscale's 'axes' is not a list of named axes")
    names = []
    for axis in axes:
        name = str(axis["name"]).lower()
        if len(name) != 1:  # "channel", "time": the letter of their type
            name = {"channel": "c", "time": "t"}.get(axis.get("type"), name)
        names.append(name)
    names = "".join(names)
    _check_axes(names)
    return names, tuple(a.get("type") for a in axes), tuple(a.get("unit") for a in axes)


def _transforms(transforms, n: int, path: Path, where: str) -> tuple[tuple, tuple]:
    """``(scale, translation)`` of a ``coordinateTransformations`` list (ones and zeros when
    absent)."""
    scale, shift = (1.0,) * n, (0.0,) * n
    for transform in transforms or []:
        kind = transform.get("type") if isinstance(transform, dict) else None
        if kind not in ("scale", "translation", "identity"):
            raise ValueError(f"{path}: {where} has a transformation of type {kind!r}; "
                             "only scale and translation are read")
        if kind == "identity":
            continue
        values = transform.get(kind)
        if values is None and "path" in transform:
            raise ValueError(f"{path}: {where}'s {kind} is stored in a file ({transform['path']!r}); "
                             "only values written in the metadata are read")
        try:
            values = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {where}'s {kind} is not a list of numbers: {values!r}") from None
        if len(values) != n:
            raise ValueError(f"{path}: {where}'s {kind} has {len(values)} values for {n} axes")
        if kind == "scale":
            scale = values
        else:
            shift = values
    return scale, shift
