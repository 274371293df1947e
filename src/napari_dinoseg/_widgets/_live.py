"""Live update: predict the part of a plane on screen first, then the rest (no napari, no Qt).

:func:`predict_view_first` stands in for :meth:`Segmenter.predict_proba` on one plane (it is
:func:`~napari_dinoseg._widgets._train_job.run_train_job`'s ``predict_plane`` for a live
update): it predicts the rectangle on screen, hands its labels to ``show``, then predicts the
rest of the plane, both a band of rows at a time with a progress report (a cancel point) after
each band. The rectangles are predicted through the Segmenter's window API
(:meth:`Segmenter.regions`, :class:`~napari_dinoseg.region_prediction.PlaneRegions`): the whole
plane's probabilities there, up to float rounding.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..progress import ProgressCallback, report, within
from ..region_prediction import predict_region, region_size  # noqa: F401  (predict_region: its old home)
from ..segmenter import Segmenter, Slices, check_finite

#: Pixels predicted between two progress reports, i.e. between two chances to cancel: about
#: 0.3 to 0.9 s with 65 classical features on a busy 2-core machine. Each band is predicted
#: with its smoothing context above and below (16 rows with the default guided filter), about
#: 6 % more pixels at 1024 px wide; smaller bands would cancel sooner and cost more.
BAND_PIXELS = 1 << 18
#: Share of a live prediction's progress given to features (nothing to do when they are cached).
FEATURE_SHARE = 0.3


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
    regions = segmenter.regions(plane, within(progress, 0, FEATURE_SHARE), cache)
    shape = regions.shape
    whole = (slice(0, shape[0]), slice(0, shape[1]))
    view = None if view is None or view == whole else view
    first = [] if view is None else bands(view, BAND_PIXELS)
    rest = [whole] if view is None else remainder(shape, view)
    todo = first + [band for part in rest for band in bands(part, BAND_PIXELS)]
    total = sum(int(np.prod(region_size(band))) for band in todo)
    out = np.empty((*shape, regions.n_classes), np.float32)
    done = 0
    for n, band in enumerate(todo):
        out[band] = proba = regions.proba(band)
        check_finite(proba)
        done += int(np.prod(region_size(band)))
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
