"""The foreground rule of unsupervised segmentation (CAS): which classes are foreground.

With attention (step 2 of :mod:`napari_dinoseg.unsupervised`): the classes whose mean CLS
attention is above the mean over the classes. Without attention (step 4 of the classical rule):
every class but the background, the class with the largest connected region.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def foreground_classes(labels: np.ndarray, attention: Optional[list]) -> np.ndarray:
    """The foreground classes ``(F,)`` int of merged classes ``labels (Z, H, W)`` int 1..M: with
    ``attention`` (the CLS attention of each slice, ``(H, W, heads)``), those denser than the mean
    (:func:`attention_density`, :func:`dense_classes`); without (``None``), every class but
    :func:`background_class`."""
    m = int(labels.max())
    if attention is None:
        return np.setdiff1d(np.unique(labels), [background_class(labels)])
    merged_sizes = np.bincount(labels.ravel(), minlength=m + 1)[1:]
    merged_density = attention_density([lab - 1 for lab in labels], [a.mean(-1) for a in attention], m)
    return dense_classes(merged_density, merged_sizes) + 1


def background_class(labels: np.ndarray) -> int:
    """The class (of ``labels``, ``(H, W)`` or ``(Z, H, W)``, ids >= 1) with the largest
    8-connected region in any slice: the matrix around the objects; ties go to the larger class."""
    from skimage.measure import label as connected

    best, background = (-1, -1), 0
    sizes = np.bincount(labels.ravel())
    for cls in np.flatnonzero(sizes):
        region = max(int(np.bincount(connected(plane == cls, connectivity=2).ravel())[1:].max(initial=0))
                     for plane in labels.reshape(-1, *labels.shape[-2:]))
        if (region, sizes[cls]) > best:
            best, background = (region, sizes[cls]), int(cls)
    return background


def attention_density(clusters: list[np.ndarray], attention: list[np.ndarray], k: int) -> np.ndarray:
    """Mean attention over each cluster's pixels, ``(k,)`` (NaN for empty clusters)."""
    idx = np.concatenate([c.ravel() for c in clusters])
    att = np.concatenate([a.ravel() for a in attention]).astype(np.float64)
    sums = np.bincount(idx, weights=att, minlength=k)
    counts = np.bincount(idx, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def dense_classes(density: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Indices of the foreground classes: density above the mean density of the non-empty classes."""
    present = sizes > 0
    mean = np.nanmean(density[present])
    return np.flatnonzero(present & (density > mean))
