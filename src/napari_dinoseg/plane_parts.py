"""The pieces a :class:`~napari_dinoseg.segmenter.Segmenter` builds its windows' work from: a
training part of a window's features, the probabilities of a part of a window (of a full or
a compact stack), the shift report's lattice rows, and the small checks and conversions of its
inputs and outputs. Pure functions; the Segmenter and the live update share them.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .classify import PixelClassifier, predict, training_part
from .planes import Slices


def window_training_part(stack, core: Slices, labels: np.ndarray, step: int):
    """:func:`~napari_dinoseg.classify.training_part` of ``stack.data[core]`` and its ``labels``
    ``(h, w)``; of a :class:`~napari_dinoseg.features.featurise.CompactStack`, only the painted
    pixels and the grid sample are decoded."""
    from .classify import TrainingPart
    from .features.featurise import CompactStack

    if not isinstance(stack, CompactStack):
        return training_part(stack.data[core], labels, step)
    painted = np.nonzero(labels)
    x = stack.pixels(painted[0] + core[0].start, painted[1] + core[1].start)
    grid = stack.region(*(slice(c.start, c.stop, step) for c in core)).reshape(-1, stack.n_features)
    return TrainingPart(x=x, y=labels[painted].astype(np.int64), grid=grid)


def predict_part(classifier: PixelClassifier, stack, part: Slices, origin: tuple[int, int],
                 scaled: Optional[np.ndarray] = None) -> np.ndarray:
    """``predict(classifier, stack.data[part], scaled[:, part], origin)``: ``(h, w, K)`` float32
    probabilities of a rectangle ``part`` of a window's features at plane coordinates ``origin``.
    A :class:`~napari_dinoseg.features.featurise.CompactStack` decodes only what the classifier
    reads (:func:`~napari_dinoseg.classify.read_pixels` and the guide channels), into the same
    probabilities as its decoded stack; its ``scaled`` features (:meth:`Segmenter.scaled_features`)
    are those of the pixels read in the whole window."""
    from .classify import guide_images, predict_read, read_pixels
    from .features.featurise import CompactStack

    if not isinstance(stack, CompactStack):
        return predict(classifier, stack.data[part], None if scaled is None else scaled[(slice(None), *part)], origin)
    read = read_pixels(classifier, tuple(p.stop - p.start for p in part), origin)
    region = tuple(slice(p.start + r.start, p.stop, r.step) for p, r in zip(part, read))
    features = stack.region(*region)
    if scaled is not None:  # the window's lattice starts at its first pixel read
        start = tuple(o - p.start for o, p in zip(origin, part))  # the window's, in plane coordinates
        first = [r.start for r in read_pixels(classifier, stack.shape, start)]
        scaled = scaled[(slice(None), *(slice((g.start - f) // g.step, (g.start - f) // g.step + n)
                                        for g, f, n in zip(region, first, features.shape[:2])))]
    guide = second = None
    if classifier.guided_radius > 0 and classifier.guide:
        guide, second = guide_images(classifier, lambda channels: stack.region(*part, channels=channels))
    return predict_read(classifier, features, guide, origin, scaled, second)


def _grid_and_painted(crop: np.ndarray, core: Slices, step: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Window coordinates of a core's painted pixels (row-major, as ``data[labels > 0]``), then of
    its grid sample (every ``step``-th row and column); and the number of painted ones."""
    painted = np.nonzero(crop)
    grid = np.meshgrid(np.arange(core[0].start, core[0].stop, step), np.arange(core[1].start, core[1].stop, step),
                       indexing="ij")
    rows = np.concatenate([painted[0] + core[0].start, grid[0].ravel()])
    cols = np.concatenate([painted[1] + core[1].start, grid[1].ravel()])
    return rows, cols, len(painted[0])


def _up(x: int, step: int) -> int:
    """The smallest multiple of ``step`` not below ``x``."""
    return -(-x // step) * step


def _lattice_rows(stack, window: Slices, core: Slices, step: int) -> np.ndarray:
    """``(M, F)`` float32 rows of a window's features (a FeatureStack or CompactStack) at the core's
    pixels whose plane coordinates are multiples of ``step``: each tile's share of one plane-wide grid."""
    from .features.featurise import CompactStack

    part = tuple(slice(_up(w.start + k.start, step) - w.start, k.stop, step) for w, k in zip(window, core))
    data = stack.region(*part) if isinstance(stack, CompactStack) else stack.data[part]
    return np.asarray(data, np.float32).reshape(-1, data.shape[-1])


def tone_curve(normalised: np.ndarray, gamma: float) -> np.ndarray:
    """``sign(x) |x| ** gamma`` of a normalised float32 image (a monotone change of its tone curve)."""
    return (np.sign(normalised) * np.abs(normalised) ** np.float32(gamma)).astype(np.float32)


def check_finite(proba: np.ndarray) -> None:
    """Refuse probabilities with NaN or inf: nothing is ever written from them."""
    if not np.isfinite(proba).all():
        raise ValueError("the classifier gave non-finite probabilities (NaN or inf) on this image; "
                         "nothing is written from them: the classifier or the image is corrupt")


def _memo(cache, key: tuple, compute):
    """``compute()``, through ``cache.derived`` when there is a cache (``key`` then holds the
    cache keys of everything the result depends on)."""
    return compute() if cache is None else cache.derived(key, compute)


def _channels(image) -> int:
    shape = np.shape(image)
    return 1 if len(shape) == 2 else int(shape[-1])


def _as_lists(images, labels) -> tuple[list, list]:
    """One image and its labels, or sequences of them -> two equally long lists."""
    def one(x) -> bool:  # an array or an array-like (zarr, dask), not a sequence of them
        return isinstance(x, np.ndarray) or not isinstance(x, (list, tuple)) and (
            hasattr(x, "__array__") or hasattr(x, "shape") and hasattr(x, "dtype"))

    if one(images):
        images, labels = [images], [labels]
    images, labels = list(images), [labels] if one(labels) else list(labels)
    if not images:
        raise ValueError("no training images given")
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} label images; give one label image per image")
    return images, labels
