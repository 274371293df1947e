"""Live update: predict the part of a plane on screen first, then the rest (no napari, no Qt).

:func:`predict_view_first` stands in for :meth:`Segmenter.predict_proba` on one plane (it is
:func:`~napari_dinoseg._widgets._train_job.run_train_job`'s ``predict_plane`` for a live
update): it predicts the rectangle on screen, hands its labels to ``show``, then predicts the
rest of the plane, both a band of rows at a time with a progress report (a cancel point) after
each band. :func:`predict_region` predicts a rectangle from the features of the whole plane
(normalised as a whole, its cached feature tiles) with the context the probability smoothing
reads around it, so a rectangle gets the whole plane's probabilities there, up to float rounding.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np

from ..classify import PixelClassifier
from ..features.featurise import CompactStack, FeatureStack, featurise_projected, keyed_featurise
from ..progress import ProgressCallback, report, within
from ..segmenter import Segmenter, Slices, check_finite, in_plane, plane_windows, predict_part, window_origin

#: Pixels predicted between two progress reports, i.e. between two chances to cancel: about
#: 0.3 to 0.9 s with 65 classical features on a busy 2-core machine. Each band is predicted
#: with its smoothing context above and below (16 rows with the default guided filter), about
#: 6 % more pixels at 1024 px wide; smaller bands would cancel sooner and cost more.
BAND_PIXELS = 1 << 18
#: Share of a live prediction's progress given to features (nothing to do when they are cached).
FEATURE_SHARE = 0.3

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
    out = np.empty((*_size(region), classifier.n_classes), np.float32)
    for window, core in windows:
        owned = _overlap(in_plane(window, core), region)
        if owned is None:
            continue
        grown = tuple(slice(max(w.start, o.start - margin), min(w.stop, o.stop + margin)) for w, o in zip(window, owned))
        stack, scaled = features(window)
        proba = predict_part(classifier, stack, _relative(grown, window), (grown[0].start, grown[1].start), scaled)
        out[_relative(owned, region)] = proba[_relative(owned, grown)]
    return out


def predict_view_first(segmenter: Segmenter, plane: np.ndarray, progress: Optional[ProgressCallback] = None,
                       cache=None, *, view: Optional[Slices] = None,
                       show: Optional[Callable[[Slices, np.ndarray], None]] = None) -> np.ndarray:
    """``segmenter.predict_proba(plane)``, the rectangle ``view`` first.

    Parameters
    ----------
    segmenter
        A fitted segmenter.
    plane : (H, W) or (H, W, C) array
        One plane with the training images' channel count.
    progress, cache
        As for :meth:`Segmenter.predict_proba`; progress is reported after the view and after
        every band of about ``BAND_PIXELS`` (a cancel point).
    view
        ``(rows, cols)`` of the plane on screen; ``None`` (or the whole plane): no first pass.
    show
        ``show(view, labels)`` gets the ``(h, w)`` label values of ``view`` as soon as they are
        known (from the worker thread).

    Returns
    -------
    (H, W, K) float32 probabilities. With a CRF (which couples every pixel with every other)
    the plane is predicted by :meth:`Segmenter.predict_proba` in one go and ``show`` is not called.
    """
    if segmenter.crf is not None:
        return segmenter.predict_proba(plane, progress, cache)
    clf, config = segmenter.classifier, segmenter.features
    if clf is None:
        raise ValueError("the Segmenter is not fitted: train it on painted strokes first")
    norm = segmenter.normalise(plane, cache)
    shape = norm.shape[:2]
    windows = plane_windows(shape, config, segmenter.training, segmenter.tile)
    split = segmenter.logit_space()  # ViT channels: their logits from the cached token grids
    if split is not None:
        clf = split[0]
    features = _tile_features(segmenter, norm, within(progress, 0, FEATURE_SHARE), cache,
                              None if split is None else split[1])
    whole = (slice(0, shape[0]), slice(0, shape[1]))
    view = None if view is None or view == whole else view
    first = [] if view is None else bands(view, BAND_PIXELS)
    rest = [whole] if view is None else remainder(shape, view)
    todo = first + [band for part in rest for band in bands(part, BAND_PIXELS)]
    total = sum(int(np.prod(_size(band))) for band in todo)
    out = np.empty((*shape, clf.n_classes), np.float32)
    done = 0
    for n, band in enumerate(todo):
        out[band] = proba = predict_region(clf, windows, features, band)
        check_finite(proba)
        done += int(np.prod(_size(band)))
        if view is not None and n == len(first) - 1 and show is not None:
            show(view, segmenter.to_labels(out[view]))
        report(progress, int(1000 * (FEATURE_SHARE + (1 - FEATURE_SHARE) * done / total)), 1000,
               "predicting the view" if n < len(first) else "predicting the rest of the plane")
    return out


def bands(region: Slices, pixels: int = BAND_PIXELS) -> list[Slices]:
    """``region`` cut into bands of whole rows, each of at most about ``pixels`` (at least one row)."""
    rows, cols = region
    step = max(1, pixels // max(1, cols.stop - cols.start))
    return [(slice(r, min(r + step, rows.stop)), cols) for r in range(rows.start, rows.stop, step)]


def remainder(shape: tuple[int, int], region: Slices) -> list[Slices]:
    """The plane of ``shape`` less ``region``, as up to four rectangles: above, below, left, right."""
    h, w = shape
    (r0, r1), (c0, c1) = [(s.start, s.stop) for s in region]
    parts = [(slice(0, r0), slice(0, w)), (slice(r1, h), slice(0, w)),
             (slice(r0, r1), slice(0, c0)), (slice(r0, r1), slice(c1, w))]
    return [p for p in parts if all(s.stop > s.start for s in p)]


def visible_region(corners: np.ndarray, shape: tuple[int, int]) -> Optional[Slices]:
    """The rectangle of a plane on screen, from a layer's ``corner_pixels``.

    Parameters
    ----------
    corners : (2, D) int array
        Top-left and bottom-right pixels on screen (inclusive), the last two columns being the
        plane's rows and columns (napari's ``Layer.corner_pixels``).
    shape
        ``(H, W)`` of the plane.

    Returns
    -------
    ``(rows, cols)`` slices within the plane, or ``None`` when nothing of it is on screen.
    """
    corners = np.asarray(corners)
    if corners.shape[0] != 2 or corners.shape[1] < 2:
        return None
    region = tuple(slice(max(0, int(corners[0, a])), min(n, int(corners[1, a]) + 1))
                   for a, n in zip((-2, -1), shape))
    return region if all(s.stop > s.start for s in region) else None


def _tile_features(segmenter: Segmenter, norm: np.ndarray, progress, cache, projection=None) -> TileFeatures:
    """``features(window)`` through ``cache``, kept as :meth:`Segmenter.feature_storage` says for the
    plane; with a ``projection`` of the ViT channels (:meth:`Segmenter.logit_space`), the window's
    :func:`~napari_dinoseg.features.featurise.featurise_projected` features.

    Bands walk the tiles in order, a band meeting every tile of its row: the windows a cache
    keeps are held at hand once met (references to the cache's entries: no cache key hashed
    again per band); windows it does not keep, and projected ones (computed for this update
    only), only the last one (memory bounded by one window)."""
    met: dict = {}
    storage = segmenter.feature_storage(norm.shape[:2], norm.shape[-1], cache)
    keep_all = cache is not None and projection is None and storage != "none"
    scale = keep_all and segmenter.keeps_scaled(norm.shape[:2], norm.shape[-1], cache)

    def features(window: Slices) -> tuple[Union[FeatureStack, CompactStack], Optional[np.ndarray]]:
        where = tuple((s.start, s.stop) for s in window)
        if where not in met:
            if not keep_all:
                met.clear()
            if projection is not None:
                stack = featurise_projected(norm[window], segmenter.features, projection, progress, normalised=True,
                                            cache=cache)
                met[where] = stack, None
            else:
                key, stack = keyed_featurise(norm[window], segmenter.features, progress, cache, normalised=True,
                                             storage=storage)
                scaled = segmenter.scaled_features(stack, key, cache, window_origin(window)) if scale else None
                met[where] = stack, scaled
        return met[where]

    return features


def _size(region: Slices) -> tuple[int, int]:
    return tuple(s.stop - s.start for s in region)


def _overlap(a: Slices, b: Slices) -> Optional[Slices]:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return out if all(s.stop > s.start for s in out) else None


def _relative(inner: Slices, outer: Slices) -> Slices:
    """``inner`` (plane coordinates) relative to ``outer``'s origin."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))
