"""Resampling a plane to the training images' pixel size and its results back to the plane's own
grid (``dinoseg apply --resample``): :func:`resample_plane`, :func:`resample_proba_back`,
:func:`resample_labels_back`. The zoom is :func:`napari_dinoseg.pixel_scale.resample_factor`'s.
"""

from __future__ import annotations

import numpy as np


def resampled_shape(shape: tuple, factor: float) -> tuple[int, int]:
    """``(H', W')``: the plane's height and width times ``factor``, rounded, at least 1."""
    return tuple(max(1, int(round(n * factor))) for n in shape[:2])


def resample_plane(plane: np.ndarray, factor: float, order: int = 1) -> np.ndarray:
    """A plane resampled by ``factor`` (``0.25``: a quarter of the pixels along each side).

    Parameters
    ----------
    plane : (H, W) or (H, W, C) array
        Any numeric dtype; channels last.
    factor : float
        Zoom, positive: the image's pixel size over the training one's
        (:func:`~napari_dinoseg.pixel_scale.resample_factor`).
    order : int
        Spline order (1: linear). Shrinking is anti-aliased (a Gaussian filter first).

    Returns
    -------
    (H', W') or (H', W', C) array of ``plane``'s dtype, ``(H', W') =``
    :func:`resampled_shape` ``(plane.shape, factor)``; values in the input's range (integers rounded).

    Raises
    ------
    ValueError
        For a ``factor`` that is not a positive finite number, or a plane that is not 2-D or 3-D.
    """
    from skimage.transform import resize

    plane = np.asarray(plane)
    if not (np.isfinite(factor) and factor > 0):
        raise ValueError(f"resampling factor {factor!r} is not a positive number")
    if plane.ndim not in (2, 3):
        raise ValueError(f"a plane of shape {plane.shape} is not (H, W) or (H, W, C); resample one plane at a time")
    shape = resampled_shape(plane.shape, factor) + plane.shape[2:]
    out = resize(plane.astype(np.float32) if plane.dtype.kind == "b" else plane, shape, order=order,
                 mode="reflect", anti_aliasing=factor < 1, preserve_range=True)
    return _as_dtype(out, plane.dtype)


def resample_proba_back(proba: np.ndarray, shape: tuple) -> np.ndarray:
    """Probabilities brought to another grid by linear interpolation: ``(H, W, K)`` float32 of
    ``shape[:2]``, each pixel's summing to 1 as the input's do (convex combinations; no anti-aliasing,
    so the classes' edges stay where they were)."""
    from skimage.transform import resize

    proba = np.asarray(proba)
    out = resize(proba, tuple(shape[:2]) + proba.shape[2:], order=1, mode="edge", anti_aliasing=False,
                 preserve_range=True)
    return np.clip(out, 0, 1).astype(np.float32, copy=False)


def resample_labels_back(labels: np.ndarray, shape: tuple) -> np.ndarray:
    """Labels brought to another grid, nearest neighbour: ``shape[:2]``, ``labels``' dtype, only
    values ``labels`` holds."""
    from skimage.transform import resize

    labels = np.asarray(labels)
    out = resize(labels, tuple(shape[:2]), order=0, mode="edge", anti_aliasing=False, preserve_range=True)
    return out.astype(labels.dtype, copy=False)


def _as_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Resampled ``values`` back in ``dtype`` (integers rounded and clipped to its range)."""
    if dtype.kind in "iub":
        info = np.iinfo(np.uint8 if dtype.kind == "b" else dtype)
        values = np.clip(np.rint(values), info.min, info.max)
        return (values > 0.5 if dtype.kind == "b" else values).astype(dtype)
    return values.astype(dtype, copy=False)
