"""Regions of a volume read and featurised (``FeatureConfig(dims=3)``), and what is kept of them
between clicks in the dock's :class:`~napari_dinoseg.features.cache.FeatureCache`: the volume's
intensity bounds and the 3-D features of the regions a click featurises.

- :func:`read_normalised` reads a region with its halo, :func:`block_signals` samples it for the
  shift report;
- :func:`volume_identity` names a volume's voxels without keeping them: a lazy array's identity
  (a zarr store and the time its metadata was written, a dask graph's name), a numpy volume's
  content digest;
- :func:`normalised_volume` reads the bounds of every voxel once per volume and feature config;
- :func:`region_features` featurises a region with its halo, or takes it from the cache: a fit's
  painted runs of slices (new strokes on slices already painted featurise nothing) and the slice
  in view that a live update predicts again after every stroke.

Features do not depend on the strokes or the classifier, so what is taken from the cache is what
would have been computed: a fit or a prediction with a cache equals one without.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .distribution_shift import signal_samples
from .progress import ProgressCallback
from .volume import NormalisedVolume

#: A click's regions are kept when their features take at most this share of the cache's budget
#: (a fit's painted runs, the slice in view); a larger prediction (the whole volume) is computed
#: block by block and keeps nothing, so it cannot evict what the next click reads again.
KEPT_SHARE = 0.25
#: z-slices of each block the shift report's intensity and edge statistics sample.
STATISTICS_SLICES = 4


@dataclass(frozen=True)
class RegionFeatures:
    """A region of a volume featurised (:func:`region_features`).

    Attributes
    ----------
    features : (z, y, x, F) float32
        The region's 3-D features.
    signals : (1, S, M) float32
        The shift report's intensity and edge samples of the region
        (:func:`block_signals`).
    values : (z, y, x) float32
        The region's normalised intensities (the dense CRF's image).
    """

    features: np.ndarray
    signals: np.ndarray
    values: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes held (what a :class:`~napari_dinoseg.features.cache.FeatureCache` counts)."""
        return self.features.nbytes + self.signals.nbytes + self.values.nbytes


def volume_identity(volume) -> Optional[tuple]:
    """What names a ``(Z, Y, X)`` volume's voxels in a cache key: a lazy array's identity
    (:func:`~napari_dinoseg.lazy_plane.lazy_identity`), a numpy volume's content digest (its bytes
    read once per click); ``None`` for a lazy array without a lasting name (nothing is kept)."""
    from .features.keys import cache_key
    from .lazy_plane import is_lazy, lazy_identity

    if is_lazy(volume):
        return lazy_identity(volume)
    return ("numpy", cache_key(np.asarray(volume), None))


def normalised_volume(volume, config, cache=None, identity: Optional[tuple] = None) -> NormalisedVolume:
    """:class:`~napari_dinoseg.volume.NormalisedVolume` of ``volume`` by ``config``'s rule, its
    bounds taken from ``cache`` when this volume's were read under the same config."""
    if cache is None or identity is None:
        return NormalisedVolume(volume, config)
    scaling = cache.derived(("volume bounds", identity, config.to_json()),
                            lambda: NormalisedVolume(volume, config).scaling)
    return NormalisedVolume(volume, config, scaling)


def kept(featuriser, regions: Sequence[tuple], cache) -> bool:
    """Whether a click's ``regions`` (each three slices) are kept in ``cache``: their float32
    features take at most :data:`KEPT_SHARE` of its budget."""
    if cache is None:
        return False
    voxels = sum(int(np.prod([s.stop - s.start for s in region])) for region in regions)
    return 4 * voxels * featuriser.n_features(1) <= KEPT_SHARE * cache.max_bytes


def region_features(featuriser, normalised: NormalisedVolume, region: tuple, halo: Sequence[int],
                    spacing: Sequence[float], progress: Optional[ProgressCallback] = None, cache=None,
                    identity: Optional[tuple] = None) -> RegionFeatures:
    """The 3-D features of ``region`` (three slices of the volume) read with ``halo`` voxels of
    context, from ``cache`` when given (with the volume's ``identity``) and already computed.

    ``progress`` hears each filter step of a computation and may raise to cancel it (nothing is
    then kept)."""
    def compute() -> RegionFeatures:
        block = read_normalised(normalised, region, halo)
        features = featuriser.volume_features(block, spacing, halo, progress, place=(region, normalised.shape))
        inside = tuple(slice(h, h + s.stop - s.start) for h, s in zip(halo, region))
        return RegionFeatures(features, block_signals(block, region, halo), np.ascontiguousarray(block[inside]))

    if cache is None or identity is None:
        return compute()
    key = ("volume region", identity, tuple((s.start, s.stop) for s in region), tuple(halo),
           tuple(float(d) for d in spacing), featuriser.config.to_json())
    return cache.derived(key, compute)


def read_normalised(normalised: NormalisedVolume, core: tuple, halo: Sequence[int]) -> np.ndarray:
    """``(z + 2 hz, y + 2 hy, x + 2 hx)`` float32: a core of a normalised volume with ``halo``
    voxels of context, mirrored where they pass the volume's border."""
    from .features.classical3d import read_block

    return read_block(normalised, core, halo)


def block_signals(block: np.ndarray, core: tuple, halo: Sequence[int]) -> np.ndarray:
    """The shift report's intensity and edge samples of a block's core: up to
    :data:`STATISTICS_SLICES` of its z-slices, each as a plane window (the block's in-plane halo as
    the window's margin) on the statistics' grid of a plane of the core's size; ``(1, len(SIGNALS),
    M)`` float32. Training and prediction sample every block alike."""
    from .distribution_shift import statistics_step

    hz, hy, hx = halo
    rows, cols = core[1], core[2]
    window = (slice(rows.start - hy, rows.stop + hy), slice(cols.start - hx, cols.stop + hx))
    inside = (slice(hy, hy + rows.stop - rows.start), slice(hx, hx + cols.stop - cols.start))
    step = statistics_step((rows.stop - rows.start, cols.stop - cols.start))
    depth = block.shape[0] - 2 * hz
    slices = range(hz, hz + depth, max(1, -(-depth // STATISTICS_SLICES)))
    return np.concatenate([signal_samples(block[z][..., None], window, inside, step) for z in slices], axis=-1)
