"""The k-means clustering of unsupervised segmentation (CAS).

With attention (step 1 of :mod:`napari_dinoseg.unsupervised`): k-means on a seeded subsample of
the unit features of all slices, every pixel assigned (:func:`kmeans_clusters`). Without
attention (steps 1-4 of the classical rule): k-means on the clipped, standardised smoothed
intensity of the calmer pixels, the number of classes chosen by the per-class silhouette, the
background first (:func:`classical_classes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .cas_foreground import background_class
from .config import CASConfig
from .descriptors import standardise, subsample, unit_rows

if TYPE_CHECKING:
    from .features.featurise import FeatureStack

#: Classical rule: the Gaussian-smoothed intensity channels up to this scale (px) are clustered.
SMOOTH_SIGMA_MAX = 4.0
#: Classical rule: each clustered channel is clipped to these percentiles first.
CLIP_PERCENTILES = (2.0, 98.0)
#: Classical rule: the most classes tried (fewer when ``k`` is smaller).
MAX_CLASSES = 6
#: Classical rule: k-means is fitted on the pixels whose gradient is below this quantile.
CALM_QUANTILE = 0.5
#: Classical rule: pixels of the subsample the silhouette is computed on.
SILHOUETTE_SAMPLE = 2000
#: Classical rule: one more class must raise the per-class silhouette by more than this.
SILHOUETTE_GAIN = 0.05


def kmeans_clusters(feats: list[np.ndarray], config: CASConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """k-means on a seeded subsample of all slices' pixels; returns per-slice cluster maps
    (0..k-1) and the L2-normalised centroids ``(k, F)``."""
    from sklearn.cluster import KMeans

    flat = [f.reshape(-1, f.shape[-1]) for f in feats]
    sample = subsample(flat, config.sample, config.seed)
    k = min(config.k, len(np.unique(sample.round(5), axis=0)))
    if k < 2:
        raise ValueError("the image is uniform: nothing to cluster")
    km = KMeans(n_clusters=k, n_init=1, random_state=config.seed).fit(sample)
    clusters = [km.predict(f).reshape(feats[i].shape[:-1]) for i, f in enumerate(flat)]
    return clusters, unit_rows(km.cluster_centers_)


def classical_classes(stacks: Sequence["FeatureStack"], config: CASConfig) -> tuple[np.ndarray, dict]:
    """Classes of features without attention, from their smoothed intensity channels.

    Parameters
    ----------
    stacks
        Feature stacks of one shape ``(H, W)``; the Gaussian channels up to
        ``SMOOTH_SIGMA_MAX`` px are used when there are any (all channels otherwise).
    config
        ``sample``, ``seed`` and ``k`` (at most ``min(k, MAX_CLASSES)`` classes) are used.

    Returns
    -------
    labels : (Z, H, W) int32
        Classes 1..M over all slices: 1 the background (:func:`background_class`), the
        others by decreasing area.
    silhouettes : dict
        Per-class silhouette of each number of classes tried (up to the first that did not
        raise it by more than ``SILHOUETTE_GAIN``).
    """
    channels, finest = smooth_channels(stacks[0].channel_names)
    feats = standardise([s.data[..., channels] for s in stacks], 4, clip=CLIP_PERCENTILES)
    flat = [f.reshape(-1, f.shape[-1]) for f in feats]
    sample = subsample(flat, config.sample, config.seed, rows=[_calm_pixels(f[..., finest]) for f in feats])
    fit, silhouettes, n = fit_classes(sample, config, "image")
    clusters = np.stack([fit.predict(f).reshape(feats[0].shape[:-1]) for f in flat])
    background = background_class(clusters + 1) - 1
    by_area = np.argsort(-np.bincount(clusters.ravel(), minlength=n), kind="stable")
    order = [background, *(c for c in by_area if c != background)]
    rank = np.empty(n, np.int32)
    rank[order] = np.arange(1, n + 1)
    return rank[clusters], silhouettes


def fit_classes(sample: np.ndarray, config, what: str = "image") -> tuple[object, dict, int]:
    """The classical rule's k-means on a ``(N, C)`` sample of calm pixels: one more class while it
    raises the silhouette clearly, at most ``min(config.k, MAX_CLASSES)``; returns ``(the chosen
    fit, the silhouettes of each number tried, the number chosen)``. ``ValueError`` naming
    ``what`` when the sample holds one value only."""
    from sklearn.cluster import KMeans

    top = min(config.k, MAX_CLASSES, len(np.unique(sample.round(5), axis=0)))
    if top < 2:
        raise ValueError(f"the {what} is uniform: nothing to cluster")
    rng = np.random.default_rng(config.seed)
    probe = sample[rng.choice(len(sample), min(SILHOUETTE_SAMPLE, len(sample)), replace=False)]
    fits, silhouettes = {}, {}
    for n in range(2, top + 1):  # one more class while it raises the silhouette clearly
        fits[n] = KMeans(n_clusters=n, n_init=1, random_state=config.seed).fit(sample)
        silhouettes[n] = class_silhouette(probe, fits[n].predict(probe))
        if n > 2 and silhouettes[n] <= silhouettes[n - 1] + SILHOUETTE_GAIN:
            break
    n = number_of_classes(silhouettes, SILHOUETTE_GAIN)
    return fits[n], silhouettes, n


def smooth_channels(names: Sequence[str]) -> tuple[list[int], list[int]]:
    """The channels the classical rule clusters, among classical channel names (``gaussian_s2``,
    or ``c0:gaussian_s2`` for multichannel images).

    Returns
    -------
    channels : list of int
        Indices of the Gaussian-smoothed intensity channels up to ``SMOOTH_SIGMA_MAX`` px (the
        finest Gaussian when all are coarser; every channel when there is no Gaussian).
    finest : list of int
        Positions, within ``channels``, of those at the finest scale (edges are found there).
    """
    from .features.channels import ChannelLayout

    sigma = ChannelLayout.of(names).gaussian_sigma
    if not sigma:
        return list(range(len(names))), list(range(len(names)))
    low = min(sigma.values())
    channels = [i for i, s in sigma.items() if s <= max(SMOOTH_SIGMA_MAX, low)]
    return channels, [j for j, i in enumerate(channels) if sigma[i] == low]


def number_of_classes(silhouettes: dict, gain: float) -> int:
    """Start at 2 classes and add one while that raises the silhouette by more than ``gain``
    (``silhouettes``: number of classes -> silhouette)."""
    n = 2
    while n + 1 in silhouettes and silhouettes[n + 1] > silhouettes[n] + gain:
        n += 1
    return n


def class_silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette of ``points (N, F)`` labelled ``labels (N,)``, averaged within each label,
    then over labels: a small class weighs as much as a large one. -1 for fewer than two labels."""
    from sklearn.metrics import silhouette_samples

    present = np.unique(labels)
    if len(present) < 2:
        return -1.0
    values = silhouette_samples(points, labels)
    return float(np.mean([values[labels == c].mean() for c in present]))


def _calm_pixels(feats: np.ndarray) -> np.ndarray:
    """Flat indices of the pixels of ``feats (H, W, F)`` whose gradient magnitude (summed over
    the channels) is at most its ``CALM_QUANTILE`` quantile: away from edges."""
    grad = np.zeros(feats.shape[:2], np.float64)
    for c in range(feats.shape[-1]):
        gy, gx = np.gradient(feats[..., c].astype(np.float64))
        grad += np.hypot(gy, gx)
    grad = grad.ravel()
    return np.flatnonzero(grad <= np.quantile(grad, CALM_QUANTILE))

