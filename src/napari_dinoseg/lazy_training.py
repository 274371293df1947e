"""A training plane larger than memory: :class:`TrainingWindows`, what
:meth:`~napari_dinoseg.Segmenter.fit` reads of a lazy image (zarr, dask) and its labels.

Only the tile windows whose cores hold painted pixels are read, each with its margins and
normalised with the whole plane's intensity bounds (:class:`~napari_dinoseg.lazy_plane.LazyPlane`):
their features are those of the whole plane there, so the classifier is the one the in-memory
path would train on those windows. The labels are kept only where painted (a crop per painted
core). The grid sample (the classifier's scaling, the shift report's distribution) and the
training statistics come from the painted windows, not the whole plane.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .lazy_plane import LazyPlane, NormalisedPlane
from .pixel_classifier import check_labels
from .planes import Slices, in_plane, plane_windows


def _region_key(region: Slices) -> tuple:
    return tuple((s.start, s.stop) for s in region)


class PaintedLabels:
    """A lazy plane's brush labels, kept only in the cores that hold painted pixels:
    ``labels[region]`` of such a core is its ``(h, w)`` crop, of any other region zeros."""

    def __init__(self, crops: dict, shape: tuple[int, int], dtype) -> None:
        self.crops, self.shape, self.dtype = crops, shape, np.dtype(dtype)

    def __getitem__(self, region: Slices) -> np.ndarray:
        crop = self.crops.get(_region_key(region))
        return np.zeros(tuple(s.stop - s.start for s in region), self.dtype) if crop is None else crop

    def painted(self) -> np.ndarray:
        """``(M,)`` every painted crop's values, raveled (unpainted pixels included: zeros)."""
        return np.concatenate([c.ravel() for c in self.crops.values()])


#: Tile cores whose labels are read in one call (a strip of a row of cores): a zarr array's
#: chunks are then fetched together, not one call per core.
CORES_PER_READ = 8


def stored_chunk_files(array) -> Optional[dict[tuple[int, ...], Path]]:
    """The chunk files of a zarr v3 array on a local store (default chunk keys ``c/i/j``), by
    chunk index: a chunk never written is not stored (it reads as the fill value). ``None`` for
    anything else (numpy, dask, another store or key encoding): unknown."""
    root = getattr(getattr(array, "store", None), "root", None)
    encoding = getattr(getattr(array, "metadata", None), "chunk_key_encoding", None)
    if root is None or getattr(encoding, "name", None) != "default" or getattr(encoding, "separator", None) != "/":
        return None
    folder = Path(root) / getattr(array, "path", "") / "c"
    files = {}
    for file in (p for p in folder.rglob("*") if p.is_file()):
        try:
            files[tuple(int(part) for part in file.relative_to(folder).parts)] = file
        except ValueError:  # not a chunk
            continue
    return files


def _meets_stored(region: Slices, chunks: tuple[int, ...], stored: set) -> bool:
    """Whether ``region`` (``(rows, cols)``) meets a stored chunk (of ``chunks`` pixels)."""
    (r0, r1), (c0, c1) = [(s.start, s.stop) for s in region]
    return any((i, j) in stored for i in range(r0 // chunks[0], -(-r1 // chunks[0]))
               for j in range(c0 // chunks[1], -(-c1 // chunks[1])))


def _core_crops(labels, windows: list) -> Iterator[tuple[tuple[Slices, Slices], np.ndarray]]:
    """Yield ``((window, core), crop)`` for the tiles of ``windows`` (row-major, as
    :func:`~napari_dinoseg.planes.plane_windows` gives them) that may hold painted pixels:
    ``crop`` the ``(h, w)`` labels of the core, checked (:func:`~napari_dinoseg.pixel_classifier.check_labels`),
    read a strip of up to :data:`CORES_PER_READ` cores of a row at a time. Of a zarr array on a
    local store, only the cores that meet a stored chunk (:func:`stored_chunk_files`) are read:
    the strokes of a 16384² plane are found without reading its 256 tiles."""
    files = stored_chunk_files(labels)
    if files is not None and not np.any(labels.fill_value):  # an unstored chunk reads as 0: unpainted
        stored = {index[:2] for index in files}
        grid = tuple(getattr(labels, "shards", None) or labels.chunks)  # a stored object is a shard
        windows = [tile for tile in windows if _meets_stored(in_plane(*tile), grid, stored)]
    for group in _strips(windows):
        first, last = in_plane(*group[0]), in_plane(*group[-1])
        strip = check_labels(np.asarray(labels[first[0], first[1].start:last[1].stop]))
        for tile in group:
            cols = in_plane(*tile)[1]
            yield tile, strip[:, cols.start - first[1].start:cols.stop - first[1].start]


def _strips(windows: list) -> Iterator[list]:
    """``windows`` (row-major) in runs of at most :data:`CORES_PER_READ` tiles whose cores are
    side by side in one row: each run's labels are one rectangle."""
    run: list = []
    for tile in windows:
        if run:
            (rows, cols), (last_rows, last_cols) = in_plane(*tile), in_plane(*run[-1])
            if rows != last_rows or cols.start != last_cols.stop or len(run) == CORES_PER_READ:
                yield run
                run = []
        run.append(tile)
    if run:
        yield run


class TrainingWindows(NormalisedPlane):
    """A lazy training plane as :meth:`~napari_dinoseg.Segmenter.fit` reads it: a
    :class:`~napari_dinoseg.lazy_plane.NormalisedPlane` (``self[window]`` the window's ``(h, w, C)``
    float32 normalised values) whose tiles without painted pixels are skipped
    (``skip(window, core)``), with its labels kept where painted.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array-like
    labels : (H, W) integer array-like
        Brush labels (numpy, zarr, dask): read a core at a time, checked as
        :func:`~napari_dinoseg.pixel_classifier.check_labels` checks them.
    config, featuriser, training, tile
        The fit's feature config, featuriser, training config and tile size (the windows).
    n_channels, cache
        As for :class:`~napari_dinoseg.lazy_plane.LazyPlane` (the cache keeps the intensity bounds).

    Attributes
    ----------
    shape : (H, W, C)
    labels : PaintedLabels
    windows : list of (window, core), the painted tiles
    """

    def __init__(self, image, labels, config, featuriser, training, tile: int,
                 n_channels: Optional[int] = None, cache=None) -> None:
        if tuple(np.shape(labels)) != tuple(np.shape(image))[:2]:
            raise ValueError(f"labels of shape {tuple(np.shape(labels))} do not match the image's shape "
                             f"{tuple(np.shape(image))[:2]}; paint in a Labels layer with the image's shape")
        super().__init__(LazyPlane(image, config, n_channels, cache))
        crops, self.windows = {}, []
        for (window, core), crop in _core_crops(labels, plane_windows(self.plane.shape, featuriser, training, tile)):
            if crop.any():
                crops[_region_key(in_plane(window, core))] = crop.copy()  # not a view of the strip
                self.windows.append((window, core))
        self.labels = PaintedLabels(crops, self.plane.shape, labels.dtype)

    def skip(self, window: Slices, core: Slices) -> bool:
        """Whether the tile ``(window, core)`` holds no painted pixel (not read)."""
        return _region_key(in_plane(window, core)) not in self.labels.crops

    def signal_quantiles(self) -> np.ndarray:
        """:func:`~napari_dinoseg.distribution_shift.image_statistics` of the painted windows' cores."""
        from .distribution_shift import signal_quantiles, signal_samples, statistics_step

        step = statistics_step(self.plane.shape)
        return signal_quantiles(np.concatenate([signal_samples(self[window], window, core, step)
                                                for window, core in self.windows], axis=-1))


def skips(norm, window: Slices, core: Slices) -> bool:
    """Whether a tile of ``norm`` (a normalised plane, or :class:`TrainingWindows`) is not read."""
    skip = getattr(norm, "skip", None)
    return skip is not None and skip(window, core)
