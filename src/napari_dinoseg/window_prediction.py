"""A plane predicted window by window, for planes larger than memory: what
:meth:`~napari_dinoseg.Segmenter.predict_proba` and :meth:`~napari_dinoseg.Segmenter.segment` do
for an array-like that is not a numpy array (zarr, dask), or when given an ``out`` array.

:func:`predict_windows` walks the plane's tile windows (:func:`~napari_dinoseg.planes.plane_windows`,
the same windows as the in-memory path): each window is read with its margins and normalised with
the whole plane's intensity bounds (:class:`~napari_dinoseg.lazy_plane.LazyPlane`), featurised,
predicted, and its core written into ``out`` (probabilities, or label values), then dropped.
Memory is bounded by one window's features, never the plane: a 16384² plane of classical features
needs what a 1024² tile with its margins needs. Without a CRF a numpy plane gets exactly the
in-memory path's result; the dense CRF, which couples the whole plane in memory, refines each
window on its own here (its core away from the window's border: a CRF's reach is a few times its
kernel widths, well inside the margins).

What the shift report reads of the plane (a feature sample, the intensity and edge quantiles,
the class counts) is gathered on the way: :class:`PlaneFindings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .distribution_shift import sample_step, signal_quantiles, signal_samples, statistics_step
from .lazy_plane import LAZY_WORKING_WINDOWS, LazyPlane
from .plane_parts import _lattice_rows, check_finite, predict_part
from .planes import grid_windows, in_plane, label_dtype, plane_windows, window_origin
from .progress import ProgressCallback, report, within


@dataclass
class PlaneFindings:
    """What a window-by-window prediction saw of a plane, for the shift report.

    Attributes
    ----------
    sample : ((M, D) float32, float) or None
        The feature sample in the shift report's space and the classifier's mean top probability
        on it (:meth:`Segmenter._sample`).
    quantiles : (C, len(SIGNALS), len(LEVELS)) float64
        :func:`~napari_dinoseg.distribution_shift.image_statistics` of the plane.
    counts : (K,) int64
        Pixels of each class (largest probability).
    n_channels : int
    """

    sample: Optional[tuple]
    quantiles: np.ndarray
    counts: np.ndarray
    n_channels: int


class Discard:
    """An ``out`` that keeps nothing (a check that needs only the findings): ``out[region] = x``
    is dropped."""

    def __init__(self, shape: tuple, dtype) -> None:
        self.shape, self.dtype = shape, np.dtype(dtype)

    def __setitem__(self, key, value) -> None:
        pass


def output_shape(segmenter, shape: tuple[int, int], labels: bool) -> tuple:
    """``(H, W)`` for labels, ``(H, W, K)`` for probabilities."""
    return tuple(shape) if labels else (*shape, segmenter.classifier.n_classes)


def check_out(out, shape: tuple, dtype) -> None:
    """Refuse an ``out`` of another shape, or of a dtype that does not hold ``dtype``'s values."""
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, not {tuple(shape)}: give an array of the plane's "
                         "height and width (and, for probabilities, one column per class)")
    if not np.can_cast(dtype, out.dtype, "safe"):
        raise ValueError(f"out has dtype {np.dtype(out.dtype)}, which does not hold {np.dtype(dtype)} values: "
                         f"give an array of dtype {np.dtype(dtype)}")


def predict_windows(segmenter, image, out=None, labels: bool = False,
                    progress: Optional[ProgressCallback] = None, cache=None, plane: Optional[LazyPlane] = None,
                    grid: bool = False, tiles: Optional[Sequence[int]] = None, tile: Optional[int] = None,
                    on_tile: Optional[Callable[[int, "TileFindings"], None]] = None):
    """Predict one plane window by window into ``out``.

    Parameters
    ----------
    segmenter : Segmenter
        Fitted.
    image : (H, W) or (H, W, C) array-like
        ``shape``, ``dtype`` and ``image[rows, cols]`` (zarr, dask, numpy).
    out : array-like, optional
        Written region by region (``out[rows, cols] = ...``): ``(H, W, K)`` of a float dtype for
        probabilities, ``(H, W)`` of an integer dtype holding the label values for ``labels``
        (a zarr array: chunks are written whole where they align with the tiles, 1024 px).
        ``None``: a numpy array is allocated.
    labels
        Write label values (:meth:`Segmenter.to_labels`) rather than probabilities.
    progress, cache
        As for :meth:`Segmenter.predict_proba` (a cache keeps each window's features under a
        key of its values).
    plane
        The image's :class:`~napari_dinoseg.lazy_plane.LazyPlane` when already built (its
        intensity bounds read once for the jobs that share a plane).
    grid
        Cut the windows on the tile grid (:func:`~napari_dinoseg.planes.grid_windows`: each core
        whole chunks of an ``out`` chunked by the tile) rather than as the in-memory path cuts
        them (:func:`~napari_dinoseg.planes.plane_windows`: the in-memory result exactly).
    tiles
        Predict only these windows (indices into the list of windows); default all.
    tile
        The tile size (default: the segmenter's :attr:`~napari_dinoseg.Segmenter.tile`).
    on_tile
        ``on_tile(index, TileFindings)`` after each window's core is written (a record that it
        is done, for a run that is stopped to be finished).

    Returns
    -------
    (out, PlaneFindings) -- the findings of the windows predicted here.
    """
    from .classify import predict

    clf = segmenter._fitted()
    plane = plane if plane is not None else LazyPlane(image, segmenter.features, segmenter.n_channels, cache)
    shape = output_shape(segmenter, plane.shape, labels)
    dtype = label_dtype(clf.classes) if labels else np.float32
    if out is None:
        out = np.empty(shape, dtype)
    check_out(out, shape, dtype)
    featuriser = segmenter.featuriser
    windows = plane_tiles(segmenter, plane.shape, grid, tile)
    todo = list(range(len(windows))) if tiles is None else list(tiles)
    split = segmenter.logit_space()  # the ViT map never built: its logits from the token grids
    step, stats_step = sample_step(plane.shape), statistics_step(plane.shape)
    # a pass over more windows than a session's working set keeps none of them (each would evict
    # the windows in view and the painted ones, to be evicted itself before any use); those kept are used
    storage = "none" if cache is not None and len(todo) > LAZY_WORKING_WINDOWS else segmenter.feature_storage(
        plane.shape, plane.n_channels, cache, lazy=True)
    found, keep = [], None
    for i, n in enumerate(todo):
        window, core = windows[n]
        sub = within(progress, 0.97 * i / len(todo), 0.97 * (i + 1) / len(todo))
        norm = plane.read(window)
        origin = window_origin(window)
        if split is not None:
            from .features.featurise import featurise_projected

            stack = featurise_projected(norm, featuriser, split[1], sub, normalised=True, cache=cache)
            proba = predict(split[0], stack, origin=origin)
        else:
            from .features.featurise import keyed_featurise

            # a window a session reads again (the painted ones, those in view) is kept in part, as
            # the fit and the view keep it: its core and the smoothing's reach, all that is read of it
            keep = segmenter.kept_part(window, core) if storage != "float32" and segmenter.crf is None \
                and not grid else None  # (no cache: "float32")
            _, stack = keyed_featurise(norm, featuriser, sub, cache, normalised=True, storage=storage, keep=keep)
            part = keep or tuple(slice(0, k) for k in stack.shape)
            proba = predict_part(clf, stack, part, (origin[0] + part[0].start, origin[1] + part[1].start))
        rows = _lattice_rows(stack, window, core, step)
        del stack  # before the CRF and the next window's features
        if segmenter.crf is not None:
            from .crf import crf_refine

            proba = crf_refine(norm, proba, segmenter.crf, normalised=True)
        proba = proba[core] if split is not None or keep is None else \
            proba[tuple(slice(c.start - p.start, c.stop - p.start) for c, p in zip(core, part))]  # of the part
        check_finite(proba)
        tile = TileFindings(rows, signal_samples(norm, window, core, stats_step),
                            np.bincount(np.argmax(proba, axis=-1).ravel(), minlength=clf.n_classes))
        out[in_plane(window, core)] = segmenter.to_labels(proba) if labels else proba
        found.append(tile)
        if on_tile is not None:
            on_tile(n, tile)
    report(progress, 990, 1000, "shift report")
    findings = plane_findings(segmenter, found, plane.n_channels)
    report(progress, 1000, 1000, "predicted")
    return out, findings


def plane_tiles(segmenter, shape: tuple[int, int], grid: bool = False, tile: Optional[int] = None) -> list:
    """The ``(window, core)`` tiles :func:`predict_windows` walks for a plane of ``shape``."""
    cut = grid_windows if grid else plane_windows
    return cut(shape, segmenter.featuriser, segmenter.training, segmenter.tile if tile is None else tile)


@dataclass
class TileFindings:
    """What one window showed of the plane: ``rows`` ``(M, F)`` float32 its features on the
    shift report's grid, ``signals`` ``(C, len(SIGNALS), M')`` float32 its intensities and edge
    strengths on the statistics' grid, ``counts`` ``(K,)`` int64 its pixels per class."""

    rows: np.ndarray
    signals: np.ndarray
    counts: np.ndarray

    def to_arrays(self) -> dict:
        return {"rows": self.rows, "signals": self.signals, "counts": self.counts}


def plane_findings(segmenter, tiles: Sequence[TileFindings], n_channels: int,
                   projected: Optional[bool] = None) -> PlaneFindings:
    """The :class:`PlaneFindings` of a plane from its tiles' findings (in any order). ``projected``:
    whether the tiles' rows are the classifier's logit-space projection (``None``: whenever it has
    one, as the plane path computes them; the volume path's rows are the full features)."""
    sample = None
    if segmenter.statistics is not None and segmenter.statistics.features is not None:
        sample = segmenter._sample(np.concatenate([t.rows for t in tiles]),
                                   projected=segmenter.logit_space() is not None if projected is None else projected)
    counts = np.sum([t.counts for t in tiles], axis=0).astype(np.int64)
    return PlaneFindings(sample, signal_quantiles(np.concatenate([t.signals for t in tiles], axis=-1)), counts,
                         n_channels)
