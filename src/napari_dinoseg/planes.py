"""A plane's windows and its labels' dtype: the low-level geometry the segmenter and the memory
estimates share.

:func:`plane_windows` cuts a plane into ``(window, core)`` tiles (windows of :data:`TILE` px
plus the context margins the features and the probability smoothing read); :func:`in_plane` and
:func:`window_origin` place a tile in the plane; :func:`label_dtype` is the dtype of the labels
made from a set of classes. :mod:`napari_dinoseg.segmenter` re-exports these names.
"""

from __future__ import annotations

import numpy as np

from .config import TrainConfig

#: Planes with a side longer than this (px) are featurised and predicted tile by tile.
TILE = 1024

Slices = tuple[slice, slice]


def plane_windows(shape: tuple[int, int], config, training: TrainConfig,
                  tile: int = TILE) -> list[tuple[Slices, Slices]]:
    """Tiles of a plane: ``(window, core)`` slice pairs, the core relative to the window.

    A plane with no side above ``tile`` is one window. Larger planes get windows of ``tile``
    px plus, on each side, the context the features (the featuriser's ``margin``) and the
    probability smoothing read, so that each core's result does not see its window's border;
    windows start on the featuriser's ``alignment`` (a ViT's token lattice). ``config``: the
    job's :class:`~napari_dinoseg.features.base.Featuriser`, or a feature config (built into one).
    """
    from .features.featurisers import featuriser_for
    from .features.tiling import tiles
    from .smoothing import reach

    h, w = shape
    if max(h, w) <= tile:
        whole = (slice(0, h), slice(0, w))
        return [(whole, whole)]
    featuriser = featuriser_for(config)
    margin = featuriser.margin + reach(training.guided_radius, training.smooth, training.predict_step)
    out = []
    for (r0, r1, cr0, cr1), (c0, c1, cc0, cc1) in tiles(shape, tile + 2 * margin, margin, featuriser.alignment):
        out.append(((slice(r0, r1), slice(c0, c1)), (slice(cr0 - r0, cr1 - r0), slice(cc0 - c0, cc1 - c0))))
    return out


def grid_windows(shape: tuple[int, int], config, training: TrainConfig,
                 tile: int = TILE) -> list[tuple[Slices, Slices]]:
    """Tiles of a plane whose cores are the blocks of a grid of ``tile`` px (the last of a row
    or column shorter): ``(window, core)`` as :func:`plane_windows` gives them, each window its
    core grown by the same margins (clipped at the plane's border) and starting on the
    featuriser's ``alignment``. An output chunked by ``tile`` (or a divisor of it) then gets each
    of its chunks from one window, written whole: windows written by different processes never
    share a chunk, and a run that stopped can be finished tile by tile. A plane with no side
    above ``tile`` is one window, as with :func:`plane_windows`."""
    from .features.featurisers import featuriser_for
    from .smoothing import reach

    h, w = shape
    if max(h, w) <= tile:
        return plane_windows(shape, config, training, tile)
    featuriser = featuriser_for(config)
    margin = featuriser.margin + reach(training.guided_radius, training.smooth, training.predict_step)
    align = featuriser.alignment

    def axis(n: int) -> list[tuple[int, int, int, int]]:
        out = []
        for c0 in range(0, n, tile):
            c1 = min(n, c0 + tile)
            w0, w1 = (max(0, c0 - margin) // align) * align, min(n, c1 + margin)
            out.append((w0, w1, c0, c1))
        return out

    return [((slice(r0, r1), slice(c0, c1)), (slice(cr0 - r0, cr1 - r0), slice(cc0 - c0, cc1 - c0)))
            for r0, r1, cr0, cr1 in axis(h) for c0, c1, cc0, cc1 in axis(w)]


def in_plane(window: Slices, core: Slices) -> Slices:
    """A core relative to its window -> the same region in plane coordinates."""
    return tuple(slice(w.start + c.start, w.start + c.stop) for w, c in zip(window, core))


def window_origin(window: Slices) -> tuple[int, int]:
    """Plane coordinates of a window's first pixel."""
    return window[0].start or 0, window[1].start or 0


def label_dtype(classes: np.ndarray) -> np.dtype:
    """The smallest unsigned dtype (uint8, uint16, uint32) holding every label value in ``classes``."""
    top = int(np.max(classes)) if len(classes) else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"label value {top} does not fit in uint32; use label values below {2**32}")
