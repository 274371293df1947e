"""Content keys of images, for the feature cache.

:func:`cache_key` is a digest of an array's bytes (and of the config that featurises it): two
arrays of equal content get the same key, a changed pixel a new one. Reading the bytes costs
about 0.17 s for the 16 windows of a 4096² float32 plane, at every click and live update.

A plane that cannot change -- the normalised copy of an image that the cache itself keeps
(:meth:`napari_dinoseg.Segmenter.normalise` with a cache) -- is made read-only and known by a
key (:func:`frozen`). A view of it (a tile window) is then keyed by that key and its place in
it (offset, shape, strides), without reading its pixels: the same content, the same key, as
long as that plane lives; when the cache has dropped it, the plane made again from the same
image has the same key, and so have its windows.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Optional

import numpy as np

#: id of a frozen array -> (weak reference to it, its key).
_FROZEN: dict[int, tuple[weakref.ref, str]] = {}


def cache_key(image: np.ndarray, config) -> str:
    """A key that changes when the image's content, shape or dtype, or the config, changes.

    Parameters
    ----------
    image : array of any shape and dtype
        A plane, a window of one, or any array; a view of a :func:`frozen` array is keyed
        without reading its bytes.
    config
        Anything with a ``to_json()`` (a :class:`~napari_dinoseg.config.FeatureConfig`), or ``None``.

    Returns
    -------
    32 hexadecimal digits.
    """
    arr = np.asarray(image)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{arr.shape}|{arr.dtype.str}|".encode())
    known = _frozen_base(arr)
    if known is None:
        digest.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
    else:
        base, key = known
        offset = arr.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        digest.update(f"view of {key} at {offset} with strides {arr.strides}".encode())
    digest.update(b"" if config is None else config.to_json().encode())
    return digest.hexdigest()


def frozen(array: np.ndarray, key: str) -> np.ndarray:
    """``array`` (copied when it does not own its memory) made read-only and known by ``key``.

    ``key`` must change whenever the content would (e.g. :func:`cache_key` of the image and
    config it was computed from): views of the returned array are keyed by it
    (:func:`cache_key`). Returns the read-only array.
    """
    if not array.flags.owndata:
        array = array.copy()
    array.flags.writeable = False
    ident = id(array)

    def forget(ref: weakref.ref) -> None:
        if _FROZEN.get(ident, (None,))[0] is ref:
            del _FROZEN[ident]

    _FROZEN[ident] = (weakref.ref(array, forget), key)
    return array


def _frozen_base(arr: np.ndarray) -> Optional[tuple[np.ndarray, str]]:
    """The frozen array ``arr`` is (or is a view of) and its key; ``None`` when there is none."""
    base = arr
    while isinstance(base, np.ndarray):
        entry = _FROZEN.get(id(base))
        if entry is not None and entry[0]() is base:
            return base, entry[1]
        base = base.base
    return None
