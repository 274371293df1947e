"""Probabilities of any rectangle of a plane, as the whole plane's prediction has them:
:class:`PlaneRegions`, made by :meth:`napari_dinoseg.Segmenter.regions` (the window API the
live update predicts through: the part on screen first, then the rest, band by band).

A rectangle is predicted from the features of the tile windows it meets (the plane normalised as
a whole, each window featurised once, through a cache), each grown by the reach of the
probability smoothing within its window, so a rectangle gets the whole plane's probabilities
there, up to float rounding (tested against :meth:`~napari_dinoseg.Segmenter.predict_proba`).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np

from .features.cache import CompactStack
from .features.stack import FeatureStack
from .lazy_plane import LAZY_WORKING_WINDOWS, LazyPlane, NormalisedPlane, is_lazy
from .pixel_classifier import PixelClassifier
from .plane_parts import predict_part
from .planes import Slices, in_plane, plane_windows, window_origin

#: ``features(window) -> (stack, scaled)`` of one tile window of the plane: a FeatureStack (or a
#: CompactStack, as a feature cache keeps the windows of a large plane) and its
#: :meth:`Segmenter.scaled_features` (or ``None``).
TileFeatures = Callable[[Slices], tuple[Union[FeatureStack, CompactStack], Optional[np.ndarray]]]


def predict_region(classifier: PixelClassifier, windows: list[tuple[Slices, Slices]], features: TileFeatures,
                   region: Slices) -> np.ndarray:
    """Probabilities of one rectangle of a plane, as the whole plane's prediction has them.

    Each tile core that meets ``region`` is predicted on its overlap with ``region`` grown by
    ``classifier.margin`` (the reach of the probability smoothing) within the tile's window:
    the smoothing of a pixel then reads exactly what it reads in the whole window.

    Parameters
    ----------
    classifier
        A fitted classifier (smoothing included; no CRF: that couples the whole plane).
    windows
        ``(window, core)`` tiles of the plane from :func:`napari_dinoseg.segmenter.plane_windows`.
    features
        The feature stack of one window, ``(h_window, w_window, F)`` (or its
        :class:`~napari_dinoseg.features.featurise.CompactStack`: only what the classifier reads is
        decoded), and its :meth:`Segmenter.scaled_features` (``(F, h_window, w_window)``, of a
        CompactStack only the pixels the classifier reads) or ``None``.
    region
        ``(rows, cols)`` slices with explicit ``start < stop`` inside the plane.

    Returns
    -------
    (h, w, K) float32 probabilities of ``region``.
    """
    margin = classifier.margin
    out = np.empty((*region_size(region), classifier.n_classes), np.float32)
    for window, core in windows:
        owned = _overlap(in_plane(window, core), region)
        if owned is None:
            continue
        grown = tuple(slice(max(w.start, o.start - margin), min(w.stop, o.stop + margin)) for w, o in zip(window, owned))
        stack, scaled = features(window)
        proba = predict_part(classifier, stack, _relative(grown, window), (grown[0].start, grown[1].start), scaled)
        out[_relative(owned, region)] = proba[_relative(owned, grown)]
    return out


class PlaneRegions:
    """One plane of a fitted :class:`~napari_dinoseg.Segmenter`, ready to predict any rectangle of it
    (no CRF: that couples the whole plane).

    Parameters
    ----------
    segmenter
        A fitted segmenter.
    plane : (H, W) or (H, W, C) array or array-like
        One plane with the training images' channel count; an array-like that is not a numpy
        array (zarr, dask) is read a window at a time, as it is met (its intensity bounds read
        first, a row of chunks at a time).
    progress, cache
        As for :meth:`~napari_dinoseg.Segmenter.predict_proba`; progress is reported while
        windows are featurised.

    Attributes
    ----------
    shape : (H, W)
    classifier : PixelClassifier
        The classifier that reads the windows' features (its logit-space reduction where the
        ViT channels are projected).
    """

    def __init__(self, segmenter, plane: np.ndarray, progress=None, cache=None) -> None:
        clf = segmenter._fitted()
        if is_lazy(plane):  # a zarr or dask plane (a multiscale layer's level): read window by window
            norm = LazyPlane(plane, segmenter.features, segmenter.n_channels, cache).normalised()
        else:
            norm = segmenter.normalise(plane, cache)
        self.shape = norm.shape[:2]
        self.windows = plane_windows(self.shape, segmenter.featuriser, segmenter.training, segmenter.tile)
        split = segmenter.logit_space()  # ViT channels: their logits from the cached token grids
        self.classifier = clf if split is None else split[0]
        self._features = _tile_features(segmenter, norm, self.windows, progress, cache,
                                        None if split is None else split[1])

    @property
    def n_classes(self) -> int:
        return self.classifier.n_classes

    def proba(self, region: Slices) -> np.ndarray:
        """``(h, w, K)`` float32 probabilities of ``region`` (``(rows, cols)`` slices with explicit
        ``start < stop`` inside the plane)."""
        return predict_region(self.classifier, self.windows, self._features, region)


def _tile_features(segmenter, norm: np.ndarray, windows: list, progress, cache, projection=None) -> TileFeatures:
    """``features(window)`` through ``cache``, kept as :meth:`Segmenter.feature_storage` says for the
    plane (a lazy plane's ``windows``, its ``(window, core)`` tiles, in part:
    :meth:`Segmenter.kept_part`); with a ``projection`` of the ViT channels (:meth:`Segmenter.logit_space`), the window's
    :func:`~napari_dinoseg.features.featurise.featurise_projected` features.

    Bands walk the tiles in order, a band meeting every tile of its row: the windows a cache
    keeps are held at hand once met (references to the cache's entries: no cache key hashed
    again per band; of a lazy plane, the last ``LAZY_WORKING_WINDOWS`` met); windows it does not
    keep, and projected ones (computed for this update only), only the last one (memory bounded
    by one window)."""
    from .features.featurise import featurise_projected, keyed_featurise

    met: dict = {}
    lazy = isinstance(norm, NormalisedPlane)  # kept as its working set of windows, not the whole plane
    storage = segmenter.feature_storage(norm.shape[:2], norm.shape[-1], cache, lazy=lazy)
    kept = {tuple((s.start, s.stop) for s in w): segmenter.kept_part(w, c)  # a lazy plane's windows: in part
            for w, c in windows} if lazy and storage != "float32" else {}  # (no cache: "float32")
    keep_all = cache is not None and projection is None and storage != "none"
    scale = keep_all and segmenter.keeps_scaled(norm.shape[:2], norm.shape[-1], cache, lazy=lazy)
    held = LAZY_WORKING_WINDOWS if lazy else None  # a lazy plane's windows at hand: its working set at most

    def features(window: Slices) -> tuple[Union[FeatureStack, CompactStack], Optional[np.ndarray]]:
        where = tuple((s.start, s.stop) for s in window)
        if where not in met:
            if not keep_all:
                met.clear()
            elif held is not None and len(met) >= held:
                met.pop(next(iter(met)))  # the oldest met
            if projection is not None:
                stack = featurise_projected(norm[window], segmenter.featuriser, projection, progress, normalised=True,
                                            cache=cache)
                met[where] = stack, None
            else:
                key, stack = keyed_featurise(norm[window], segmenter.featuriser, progress, cache, normalised=True,
                                             storage=storage, keep=kept.get(where))
                scaled = segmenter.scaled_features(stack, key, cache, window_origin(window)) if scale else None
                met[where] = stack, scaled
        return met[where]

    return features


def region_size(region: Slices) -> tuple[int, int]:
    """``(h, w)`` of a ``(rows, cols)`` rectangle of explicit slices."""
    return tuple(s.stop - s.start for s in region)


def _overlap(a: Slices, b: Slices) -> Optional[Slices]:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return out if all(s.stop > s.start for s in out) else None


def _relative(inner: Slices, outer: Slices) -> Slices:
    """``inner`` (plane coordinates) relative to ``outer``'s origin."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))
