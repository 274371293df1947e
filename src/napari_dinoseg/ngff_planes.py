"""One plane of an NGFF array as the segmentation core reads it: :class:`PlaneView` (and
:class:`ChannelsLast`), lazy ``(H, W)`` or ``(H, W, C)`` views of channels-first arrays with their
leading axes fixed; the axis names they accept. Imports nothing of the package.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: The axes NGFF allows, in the order it requires (an image's axes: any subset ending in ``"yx"``).
AXIS_ORDER = "tczyx"


class PlaneView:
    """One plane of an NGFF array as the segmentation core reads it: ``(H, W)``, or
    ``(H, W, C)`` for an array with a ``c`` axis, lazy.

    Indexing reads only the indexed region of the array (``array[...]`` of the corresponding
    region, the leading axes fixed) and returns a numpy array with channels last. Keys: up to
    three ints or slices (steps > 0 allowed) for ``(y, x, c)`` and an ``Ellipsis``; arrays of
    indices are refused (``TypeError``).

    Parameters
    ----------
    array : zarr.Array or array-like
        ``shape``, ``dtype``, ``array[tuple of ints and slices]`` -> numpy; ``len(axes)``
        dimensions.
    axes : str
        The array's axes (:attr:`NgffImage.axes`), ending in ``"yx"``.
    index : sequence of int
        One index per leading axis (axes other than ``c``, ``y``, ``x``, in order).

    Attributes
    ----------
    shape : (H, W) or (H, W, C)
    dtype : numpy.dtype
    ndim : int
    chunks : tuple of int
        The array's chunk sizes along ``(y, x[, c])`` (``None`` when it has none).
    """

    def __init__(self, array, axes: str, index: Sequence[int] = ()) -> None:
        _check_axes(axes)
        if len(array.shape) != len(axes):
            raise ValueError(f"an array of {len(array.shape)} dimensions cannot have the axes {axes!r}")
        lead = [i for i, a in enumerate(axes) if a not in "cyx"]
        index = tuple(int(i) for i in index)
        if len(index) != len(lead):
            raise ValueError(f"the axes {axes!r} need {len(lead)} plane index(es), got {len(index)}")
        for i, at in zip(index, lead):
            if not 0 <= i < array.shape[at]:
                raise IndexError(f"plane index {i} of axis {axes[at]!r} is out of range 0..{array.shape[at] - 1}")
        self.array, self.axes, self.index = array, axes, index
        self._lead = dict(zip(lead, index))
        self._order = [axes.index(a) for a in "yxc" if a in axes]  # array axes of (y, x[, c])
        self.shape = tuple(int(array.shape[i]) for i in self._order)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        chunks = getattr(array, "chunksize", None) or getattr(array, "chunks", None)  # dask's, zarr's
        regular = chunks and all(isinstance(c, (int, np.integer)) for c in chunks)
        self.chunks = tuple(int(chunks[i]) for i in self._order) if regular else None

    def __getitem__(self, key) -> np.ndarray:
        keys = _plane_key(key, self.ndim)
        source: list = [None] * len(self.axes)
        for at, i in self._lead.items():
            source[at] = i
        for at, k in zip(self._order, keys):
            source[at] = k
        block = np.asarray(self.array[tuple(source)])
        kept = [at for at, k in zip(self._order, keys) if not isinstance(k, int)]  # view order
        in_array_order = sorted(kept)
        return np.transpose(block, [in_array_order.index(at) for at in kept]) if block.ndim > 1 else block

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        block = self[...]
        return block if dtype is None else block.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, axes={self.axes!r}, index={self.index})"


class ChannelsLast(PlaneView):
    """A ``(C, Y, X)`` array presented as ``(Y, X, C)``, lazy (see :class:`PlaneView`)."""

    def __init__(self, array) -> None:
        super().__init__(array, "cyx")


def _check_axes(axes: str, written: bool = False) -> None:
    if not isinstance(axes, str) or len(set(axes)) != len(axes) or not axes.endswith("yx") or \
            (written and not _subsequence(axes, AXIS_ORDER)):
        allowed = "a subsequence of 'tczyx'" if written else "one letter each, no repeats,"
        raise ValueError(f"axes {axes!r} are not supported: give {allowed} ending in 'yx' ('yx', 'cyx', 'tczyx')")


def _subsequence(axes: str, order: str) -> bool:
    it = iter(order)
    return all(a in it for a in axes)


def _plane_key(key, ndim: int) -> tuple:
    """A :class:`PlaneView` key as one int or slice per dimension."""
    key = key if isinstance(key, tuple) else (key,)
    at = [i for i, k in enumerate(key) if k is Ellipsis]
    if len(at) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if at:
        at = at[0]
        key = key[:at] + (slice(None),) * (ndim - len(key) + 1) + key[at + 1:]
    if len(key) > ndim:
        raise IndexError(f"too many indices for a plane of {ndim} dimensions: {len(key)}")
    out = []
    for k in key + (slice(None),) * (ndim - len(key)):
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            out.append(int(k))
        elif isinstance(k, slice):
            out.append(k)
        else:
            raise TypeError(f"a plane is indexed by ints and slices, not {type(k).__name__}")
    return tuple(out)
