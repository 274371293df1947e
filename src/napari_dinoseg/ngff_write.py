"""OME-Zarr (NGFF 0.5) images written level by level with zarr's v3 API: :func:`create_ngff`
(the group and an empty array per level, the caller fills level 0 window by window),
:func:`write_pyramid` (the lower levels one output chunk at a time: labels by taking every second
pixel, so a level holds only values of level 0; intensities and probabilities by the mean of
2 x 2 pixels; memory bounded by a few chunks, never the image), :func:`mark_complete` and
:func:`set_metadata` (``attrs["dinoseg"]``). Reading is :mod:`napari_dinoseg.ngff`.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from .ngff import (ATTRS_KEY, AXIS_TYPES, DOWNSAMPLING, KINDS, SMALLEST_LEVEL, WRITTEN_VERSION, NgffImage, PathLike,
                   _check_axes, _open)




def create_ngff(path: PathLike, shape: Sequence[int], dtype, *, axes: str = "yx",
                chunks: Union[int, Sequence[int]] = 1024,
                pixel_size_um: Union[None, float, Mapping[str, float]] = None,
                levels: Optional[int] = None, name: Optional[str] = None, metadata: Optional[dict] = None,
                kind: str = "labels", overwrite: bool = False) -> NgffImage:
    """Create an NGFF 0.5 image group (zarr v3) with empty arrays for every level.

    Level ``k`` has the shape of level 0 with ``y`` and ``x`` halved ``k`` times (rounded up);
    the other axes keep their size. The caller fills level 0 (``image.levels[0][...] = ...``,
    best a whole chunk at a time), then :func:`write_pyramid` and :func:`mark_complete`.

    Parameters
    ----------
    path
        The group's directory (``*.ome.zarr``); must not exist unless ``overwrite``.
    shape : tuple of int
        Level 0's shape, one size per axis.
    dtype
        Its numpy dtype (an unsigned int for labels; float32/float16 probabilities).
    axes : str
        A subsequence of ``"tczyx"`` ending in ``"yx"``: ``"yx"`` labels, ``"cyx"`` one
        probability per class (``c``: the ``"channel"`` type), ``"zyx"``, ...
    chunks : int or tuple of int
        An int: the chunk's ``y`` and ``x`` size (1 along the other axes, so that one plane,
        one class, is one chunk column); a tuple: a size per axis.
    pixel_size_um : float or mapping, optional
        µm per pixel at level 0: a float for ``y`` and ``x``, or ``{"z": ..., "y": ...,
        "x": ...}``. Space axes with a size get the unit ``"micrometer"``; without one the
        scales are in pixels and there is no unit.
    levels : int, optional
        How many levels; by default halved until the longest side is at most
        :data:`SMALLEST_LEVEL` (at least 1 level).
    name : str, optional
        The multiscale's name (the directory's name without ``.ome.zarr`` / ``.zarr`` by default).
    metadata : dict, optional
        JSON-able, stored in ``attrs["dinoseg"]`` (fingerprints, sources) beside ``"kind"`` and
        ``"complete": false``.
    kind : str
        ``"labels"`` (also written as NGFF ``image-label``; downsampled by nearest pixel) or
        ``"intensity"`` (images, probabilities; downsampled by the 2 x 2 mean).
    overwrite : bool
        Replace what is at ``path`` (else a ``ValueError`` and nothing is touched).

    Returns
    -------
    :class:`NgffImage` at level 0, its arrays writable.

    Raises
    ------
    ValueError
        Bad axes, shape, chunks, sizes, kind, or ``path`` exists.
    """
    import zarr

    path = Path(path)
    _check_axes(axes, written=True)
    shape = tuple(int(n) for n in shape)
    if len(shape) != len(axes) or min(shape, default=0) < 1:
        raise ValueError(f"shape {shape} does not fit the axes {axes!r}: give one size >= 1 per axis")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    chunk_shape = _chunk_shape(chunks, shape, axes)
    sizes = _space_sizes(pixel_size_um, axes)
    n_levels = default_levels(shape[-2:]) if levels is None else int(levels)
    if n_levels < 1:
        raise ValueError(f"levels={levels}: give at least 1")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise ValueError(f"{path} exists: remove it, write elsewhere, or pass overwrite=True")
    if name is None:
        name = path.name.removesuffix(".zarr").removesuffix(".ome")
    shapes = [level_shape(shape, axes, k) for k in range(n_levels)]
    datasets = [{"path": str(k), "coordinateTransformations": [
        {"type": "scale", "scale": [(sizes.get(a, 1.0) * 2.0 ** k if a in "yx" else sizes.get(a, 1.0))
                                    for a in axes]}]} for k in range(n_levels)]
    ome: dict = {"version": WRITTEN_VERSION, "multiscales": [{
        "name": name, "axes": [_axis_meta(a, a in sizes) for a in axes], "datasets": datasets,
        "type": DOWNSAMPLING[kind],
        "metadata": {"description": "levels 1.. made by napari_dinoseg.ngff_write.write_pyramid",
                     "method": DOWNSAMPLING[kind]}}]}
    if kind == "labels":
        ome["image-label"] = {"version": WRITTEN_VERSION}
    ours = {**(metadata or {}), "kind": kind, "complete": False}
    try:
        json.dumps(ours)
    except (TypeError, ValueError) as err:
        raise ValueError(f"metadata must be JSON-able (str, numbers, lists, dicts): {err}") from None
    group = zarr.open_group(path, mode="w" if overwrite else "w-", zarr_format=3)
    for k, level in enumerate(shapes):
        group.create_array(str(k), shape=level, dtype=dtype, dimension_names=list(axes),
                           chunks=tuple(min(c, n) for c, n in zip(chunk_shape, level)), fill_value=0)
    group.attrs.update({"ome": ome, ATTRS_KEY: ours})
    return _open(path, 0, None, mode="r+")


def default_levels(yx: Sequence[int], smallest: int = SMALLEST_LEVEL) -> int:
    """How many levels halve ``(H, W)`` until its longest side is at most ``smallest`` (>= 1)."""
    longest, n = max(int(v) for v in yx), 1
    while longest > smallest:
        longest, n = -(-longest // 2), n + 1
    return n


def level_shape(shape: Sequence[int], axes: str, level: int) -> tuple:
    """The shape of ``level`` of a pyramid whose level 0 is ``shape``: ``y`` and ``x`` halved
    ``level`` times, rounded up (what ``[::2]`` keeps); the other axes unchanged."""
    return tuple(-(-int(n) // 2 ** level) if a in "yx" else int(n) for n, a in zip(shape, axes))


def write_pyramid(target: Union[NgffImage, PathLike], kind: Optional[str] = None) -> None:
    """Fill levels 1.. of an image group from its level 0, one output chunk at a time.

    Each chunk of level ``k`` is made from the ``2 x 2`` block of level ``k - 1`` it covers
    (read at once: about four chunks) and written whole, so memory stays within a few chunks.
    Only ``y`` and ``x`` are halved.

    Parameters
    ----------
    target
        An :class:`NgffImage` or its group's path (opened again for writing).
    kind : str, optional
        ``"labels"``: every second pixel (``[::2, ::2]``), so every value of a level is a
        value of level 0; ``"intensity"``: the mean of the 2 x 2 pixels (those inside the
        image at an odd edge), rounded for integer dtypes. By default the kind recorded by
        :func:`create_ngff`.

    Raises
    ------
    ValueError
        An unknown kind, none given or recorded, or a level whose shape is not level 0's
        halved (:func:`level_shape`).
    """
    image = _open(target.path if isinstance(target, NgffImage) else Path(target), 0, None, mode="r+")
    kind = image.attrs.get("kind") if kind is None else kind
    if kind not in KINDS:
        raise ValueError(f"the pyramid's kind is {kind!r}: pass kind= one of {', '.join(KINDS)}")
    for k in range(1, len(image.levels)):
        source, out = image.levels[k - 1], image.levels[k]
        expected = level_shape(source.shape, image.axes, 1)
        if tuple(out.shape) != expected:
            raise ValueError(f"level {k} of {image.path} has the shape {tuple(out.shape)}, not {expected} "
                             "(level above halved): write the image again with create_ngff")
        _write_level(source, out, image.axes, kind)


def mark_complete(target: Union[NgffImage, PathLike]) -> None:
    """Record in ``attrs["dinoseg"]["complete"]`` that the group is fully written (call it
    last). zarr rewrites the group's ``zarr.json`` (atomically on a local store)."""
    import zarr

    path = target.path if isinstance(target, NgffImage) else Path(target)
    group = zarr.open_group(path, mode="r+")
    ours = dict(group.attrs.get(ATTRS_KEY) or {})
    ours["complete"] = True
    group.attrs[ATTRS_KEY] = ours


def set_metadata(target: Union[NgffImage, PathLike], metadata: dict) -> None:
    """Replace the group's ``attrs["dinoseg"]`` by ``metadata`` (JSON-able), keeping its ``kind``
    and ``complete`` entries."""
    import zarr

    path = target.path if isinstance(target, NgffImage) else Path(target)
    group = zarr.open_group(path, mode="r+")
    ours = dict(group.attrs.get(ATTRS_KEY) or {})
    group.attrs[ATTRS_KEY] = {**json.loads(json.dumps(metadata)),
                              **{k: ours[k] for k in ("kind", "complete") if k in ours}}


def _axis_meta(axis: str, has_size: bool) -> dict:
    meta = {"name": axis, "type": AXIS_TYPES[axis]}
    if has_size and AXIS_TYPES[axis] == "space":
        meta["unit"] = "micrometer"
    return meta


def _space_sizes(pixel_size_um, axes: str) -> dict:
    """``{axis: µm per pixel}`` of the space axes given a size (``y`` and ``x`` for a float)."""
    if pixel_size_um is None:
        return {}
    given = dict(pixel_size_um) if isinstance(pixel_size_um, Mapping) else {"y": pixel_size_um, "x": pixel_size_um}
    sizes = {}
    for axis, size in given.items():
        if axis not in axes or AXIS_TYPES.get(axis) != "space":
            raise ValueError(f"a pixel size for axis {axis!r}, which is not a space axis of {axes!r}: "
                             "give sizes for z, y, x only")
        try:
            size = float(size)
        except (TypeError, ValueError):
            size = math.nan
        if not (math.isfinite(size) and size > 0):
            raise ValueError(f"pixel size {given[axis]!r} µm along {axis}: give a positive number (or None)")
        sizes[axis] = size
    return sizes


def _chunk_shape(chunks, shape: tuple, axes: str) -> tuple:
    if isinstance(chunks, (int, np.integer)) and not isinstance(chunks, bool):
        chunks = tuple(int(chunks) if a in "yx" else 1 for a in axes)
    else:
        chunks = tuple(int(c) for c in chunks)
    if len(chunks) != len(shape) or min(chunks) < 1:
        raise ValueError(f"chunks {chunks} do not fit the axes {axes!r}: give an int (y, x) or one size >= 1 per axis")
    return chunks


def _write_level(source, out, axes: str, kind: str) -> None:
    """Fill ``out`` from ``source`` (the level above) one of ``out``'s chunks at a time."""
    ry, rx = axes.index("y"), axes.index("x")
    grid = [range(0, n, c) for n, c in zip(out.shape, out.chunks)]
    for corner in itertools.product(*grid):
        region = tuple(slice(s, min(s + c, n)) for s, c, n in zip(corner, out.chunks, out.shape))
        above = list(region)
        for r in (ry, rx):  # the pixels of the level above that this chunk covers
            above[r] = slice(2 * region[r].start, min(2 * region[r].stop, source.shape[r]))
        block = np.asarray(source[tuple(above)])
        out[region] = block[..., ::2, ::2] if kind == "labels" else _mean_2x2(block)


def _mean_2x2(block: np.ndarray) -> np.ndarray:
    """The mean of each 2 x 2 pixels of the last two axes (of those inside ``block`` at an odd
    edge), in ``block``'s dtype (rounded for integers; bool: the majority, ties true)."""
    h, w = block.shape[-2:]
    wide = np.float64 if block.dtype.itemsize > 2 and block.dtype.kind in "iuf" else np.float32
    total = np.zeros(block.shape[:-2] + (-(-h // 2), -(-w // 2)), wide)
    count = np.zeros(total.shape[-2:], wide)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        part = block[..., dy::2, dx::2]
        ph, pw = part.shape[-2:]
        total[..., :ph, :pw] += part
        count[:ph, :pw] += 1
    total /= count
    if block.dtype == bool:
        return total >= 0.5
    if block.dtype.kind in "iu":  # in place: one float block at a time
        info = np.iinfo(block.dtype)
        np.clip(np.rint(total, out=total), info.min, info.max, out=total)
    return total.astype(block.dtype, copy=False)
