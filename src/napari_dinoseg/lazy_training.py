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

import copy
from typing import Optional

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
        for window, core in plane_windows(self.plane.shape, featuriser, training, tile):
            region = in_plane(window, core)
            crop = check_labels(np.asarray(labels[region]))
            if crop.any():
                crops[_region_key(region)] = crop
                self.windows.append((window, core))
        self.labels = PaintedLabels(crops, self.plane.shape, labels.dtype)

    def first_window(self) -> "TrainingWindows":
        """This plane reading only its first painted tile (the others skipped)."""
        out = copy.copy(self)
        out.windows = self.windows[:1]
        key = _region_key(in_plane(*out.windows[0]))
        out.labels = PaintedLabels({key: self.labels.crops[key]}, self.labels.shape, self.labels.dtype)
        return out

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
