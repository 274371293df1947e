"""A plane read window by window: any array-like (a zarr or dask array, a tifffile zarr store,
a numpy array) that is larger than memory, or treated as if it were.

:class:`LazyPlane` checks the plane as :func:`~napari_dinoseg.image.as_float_image` does (dtype,
shape, channels), reads each channel once, a row of chunks at a time, for its intensity bounds
(:func:`~napari_dinoseg.image.channel_scaling`: the same statistics, so the same bounds, as the
whole plane in memory gets), then normalises any window on request (:meth:`LazyPlane.read`):
a window's values equal the whole plane's normalised values there, bit for bit. Nothing of the
size of the plane is allocated.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import numpy as np

from .image import MAX_CHANNELS, channel_scaling, check_dtype, check_image_shape
from .planes import Slices

#: Rows read at a time for the statistics where the array has no chunks to follow.
DEFAULT_BLOCK_ROWS = 1024
#: Windows of a lazy plane a feature cache is sized for
#: (:meth:`~napari_dinoseg.segmenter_windows.WindowFeatures.feature_bytes`): those in view (a 2000²
#: view meets 9 windows of 1024 px) and those painted, not the whole plane.
LAZY_WORKING_WINDOWS = 10


def is_lazy(image) -> bool:
    """Whether ``image`` is an array-like that is not a numpy array (zarr, dask, a store view):
    read window by window rather than as a whole."""
    return not isinstance(image, np.ndarray) and hasattr(image, "shape") and hasattr(image, "dtype") \
        and hasattr(image, "__getitem__")


def lazy_identity(image) -> Optional[tuple]:
    """What names a lazy array's pixels without reading them, for a cache key: a zarr array's
    store, path, shape, dtype and the modification time of its metadata (rewritten with the
    array); a dask array's name (a token of its graph); an OME-Zarr plane view's array and index.
    ``None`` for anything else (nothing is kept for it)."""
    import os

    inner = getattr(image, "array", None)
    if inner is not None and hasattr(image, "index") and hasattr(image, "axes"):  # ngff.PlaneView
        found = lazy_identity(inner)
        return None if found is None else ("plane", found, tuple(image.index), image.axes)
    store_path = getattr(image, "store_path", None)
    if store_path is not None:  # zarr.Array
        where = str(store_path)
        if where.startswith("memory://"):
            return None  # a store in memory has no name that outlives it
        stamp = None
        if where.startswith("file://"):
            try:
                stamp = os.stat(os.path.join(where[len("file://"):], "zarr.json")).st_mtime_ns
            except OSError:
                stamp = None
        return ("zarr", where, tuple(image.shape), str(image.dtype), stamp)
    name = getattr(image, "name", None)
    if isinstance(name, str) and hasattr(image, "dask"):  # dask.array
        return ("dask", name)
    return None


class WindowedArray:
    """A numpy plane handed to the Segmenter as an array-like, so that it is read window by window
    like a zarr plane: trained on its painted windows, predicted without a normalised float copy of
    the whole plane (the train dock does this for planes whose features no cache could keep).
    ``shape``, ``dtype``, ``ndim`` and ``self[key]`` are the array's."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim

    def __getitem__(self, key) -> np.ndarray:
        return self.array[key]


def chunk_rows(image) -> int:
    """Rows of one chunk of a chunked array (zarr's ``chunks``, dask's ``chunksize``), else
    :data:`DEFAULT_BLOCK_ROWS`."""
    chunks = getattr(image, "chunksize", None) or getattr(image, "chunks", None)
    if chunks and isinstance(chunks[0], (int, np.integer)):
        return int(chunks[0])
    return DEFAULT_BLOCK_ROWS


class _ChannelRows:
    """One channel of an ``(H, W)`` / ``(H, W, C)`` array-like, read a block of rows at a time
    (what :func:`~napari_dinoseg.image.channel_scaling` reads); bool read as uint8."""

    def __init__(self, image, channel: Optional[int]) -> None:
        self.image, self.channel = image, channel
        self.shape = tuple(int(n) for n in image.shape[:2])
        self.dtype = np.dtype(np.uint8) if np.dtype(image.dtype) == bool else np.dtype(image.dtype)
        self.size = self.shape[0] * self.shape[1]
        self.ndim = 2
        self.block_rows = chunk_rows(image)

    def __getitem__(self, rows) -> np.ndarray:
        block = np.asarray(self.image[rows] if self.channel is None else self.image[rows, :, self.channel])
        return block.view(np.uint8) if block.dtype == bool else block


class LazyPlane:
    """One ``(H, W)`` or ``(H, W, C)`` plane, normalised window by window.

    Parameters
    ----------
    image : array-like
        ``shape``, ``dtype`` and ``image[rows, cols]`` reading a numpy block (zarr, dask, numpy).
    config : FeatureConfig
        Its normalisation rule.
    n_channels : int, optional
        The classifier's channel count: checked, and an RGBA plane's alpha left out for 3.
    cache : FeatureCache, optional
        Keeps the intensity bounds of an array it can name (:func:`lazy_identity`): a second
        click or live update on the same zarr / dask plane does not read it whole again.

    Attributes
    ----------
    shape : (H, W)
    n_channels : int
    scalings : list of :class:`~napari_dinoseg.image.ChannelScaling`, one per channel.

    Raises
    ------
    TypeError, ValueError
        As :func:`~napari_dinoseg.image.as_float_image`, and for a channel count other than the
        classifier's, before anything is read.
    """

    def __init__(self, image, config, n_channels: Optional[int] = None, cache=None) -> None:
        shape = tuple(int(n) for n in image.shape)
        check_dtype(image.dtype)
        self.shape = check_image_shape(shape)
        channels = 1 if len(shape) == 2 else shape[-1]
        if n_channels == 3 and channels == 4:  # alpha dropped
            channels = 3
        if n_channels is not None and channels != n_channels:
            raise ValueError(f"the image has {channels} channel(s) but the classifier was trained on "
                             f"{n_channels}; give it images of the kind it was trained on")
        assert channels <= MAX_CHANNELS  # check_image_shape refuses more
        self.image, self.n_channels, self.flat = image, channels, len(shape) == 2

        def scalings() -> list:
            return [channel_scaling(_ChannelRows(image, None if self.flat else c), c, config, stacklevel=4)
                    for c in range(channels)]

        identity = None if cache is None else lazy_identity(image)
        rule = (config.normalise, tuple(config.percentiles), config.intensity_range)
        self.scalings = scalings() if identity is None else cache.derived(
            ("intensity bounds", identity, channels, rule), scalings)

    @classmethod
    def from_scalings(cls, image, scalings: list) -> "LazyPlane":
        """The plane of ``image`` with the :attr:`scalings` another process read of it (a job
        of one image's tiles on a dask worker: the intensity bounds read once for all)."""
        plane = object.__new__(cls)
        shape = tuple(int(n) for n in image.shape)
        plane.image, plane.shape, plane.flat = image, shape[:2], len(shape) == 2
        plane.n_channels, plane.scalings = len(scalings), list(scalings)
        return plane

    def read(self, window: Slices) -> np.ndarray:
        """``(h, w, C)`` float32 normalised values of a ``(rows, cols)`` window of the plane."""
        block = np.asarray(self.image[window] if self.flat else self.image[(*window, slice(0, self.n_channels))])
        block = block[..., None] if self.flat else block
        block = block.view(np.uint8) if block.dtype == bool else block
        out = np.empty(block.shape, np.float32)
        for c, scaling in enumerate(self.scalings):
            out[..., c] = scaling.apply(block[..., c])
        return out

    def normalised(self) -> "NormalisedPlane":
        """The plane's normalised values as an array-like of windows (:class:`NormalisedPlane`)."""
        return NormalisedPlane(self)


class NormalisedPlane:
    """A :class:`LazyPlane`'s normalised values where the in-memory path holds a ``(H, W, C)``
    float32 plane: ``self[window]`` reads and normalises a ``(rows, cols)`` window
    (:meth:`LazyPlane.read`), with a transform applied where :meth:`mapped` asks.

    Attributes
    ----------
    shape : (H, W, C)
    plane : LazyPlane
    """

    def __init__(self, plane: LazyPlane, transform: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> None:
        self.plane, self.transform = plane, transform
        self.shape = (*plane.shape, plane.n_channels)

    def __getitem__(self, window: Slices) -> np.ndarray:
        values = self.plane.read(window)
        return values if self.transform is None else self.transform(values)

    def mapped(self, transform: Callable[[np.ndarray], np.ndarray]) -> "NormalisedPlane":
        """The same plane with ``transform`` applied to every window read (after this one's)."""
        out = copy.copy(self)
        first = self.transform
        out.transform = transform if first is None else (lambda x: transform(first(x)))
        return out
