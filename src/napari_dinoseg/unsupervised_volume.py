"""Unsupervised segmentation (CAS) of a ``(Z, Y, X)`` volume with 3-D classical features.

The classical rule of :mod:`napari_dinoseg.unsupervised`, in 3-D and block by block
(:func:`segment_volume_unsupervised`):

1. The volume is normalised with all its voxels' bounds
   (:class:`~napari_dinoseg.volume.NormalisedVolume`) and read a block at a time
   (:data:`BLOCK`, with the 3-D bank's halo mirrored at its border). Of the 3-D bank
   (:mod:`napari_dinoseg.features.classical3d`) only the Gaussian-smoothed intensity at the scales
   up to ``SMOOTH_SIGMA_MAX`` voxels is kept (the sigmas above are not computed), sigmas scaled
   per axis by the voxel spacing.
2. First pass: the smoothed channels and the gradient magnitude of the finest one (central
   differences in units of the finest axis) at the voxels of a regular 3-D grid, gathered from
   every block (about ``GRID_PER_SAMPLE * config.sample`` voxels, in the volume's C order: blocks
   give the one-block result). Each channel is clipped to the grid's ``CLIP_PERCENTILES`` and
   standardised with the grid's statistics (the gradient is the unclipped channel's).
3. k-means on a seeded subsample (``config.sample``) of the calmer half of the grid (gradient at
   most its median, over the whole volume): 2..min(k, 6) classes, one more while it raises the
   per-class silhouette by more than ``SILHOUETTE_GAIN``.
4. Second pass: every voxel assigned, block by block (the last block's channels kept from the
   first pass). The background is the class with the largest 26-connected 3-D region
   (:func:`background_class_3d`), numbered 1; the others follow by decreasing volume and are the
   foreground.

Memory is bounded by a block's features (never the volume's); the labels ``(Z, Y, X)`` uint8,
the foreground ``(Z, Y, X)`` bool and the 3-D connected regions of one class (int32) are
volume-sized. Left out for volumes: CLS attention, merging by semantic distance, object boxes
(and whether they mean anything) and the dense CRF: they need ViT features or work on planes;
:attr:`VolumeCASResult.notes` says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from .cas_clusters import CALM_QUANTILE, CLIP_PERCENTILES, fit_classes, smooth_channels
from .config import CASConfig, config_or_default
from .descriptors import subsample
from .feature_kinds import KINDS
from .features.classical_featuriser import VOLUME_BLOCK
from .planes import label_dtype
from .progress import ProgressCallback, report, within
from .volume import NormalisedVolume, Spacing, check_volume_shape
from .volume_prediction import _lattice
from .volume_regions import read_normalised
from .volume_training import volume_spacing

if TYPE_CHECKING:
    from .features.base import Featuriser

__all__ = ["BLOCK", "GRID_PER_SAMPLE", "LEFT_OUT", "VolumeCASResult", "background_class_3d", "check_volume_config",
           "segment_volume_unsupervised"]

#: Core of a block, ``(z, y, x)`` voxels (the supervised path's block).
BLOCK = VOLUME_BLOCK
#: The first pass's grid holds about this many times ``CASConfig.sample`` voxels (k-means is then
#: fitted on ``sample`` of its calmer half).
GRID_PER_SAMPLE = 4
#: What the plane pipeline does and this one does not, said in every result's messages.
LEFT_OUT = ("volumes: no CLS attention, merging by semantic distance, object boxes or dense CRF (they need ViT "
            "features or work on planes); the class with the largest 3-D connected region is the background")


@dataclass
class VolumeCASResult:
    """Output of :func:`segment_volume_unsupervised`.

    Attributes
    ----------
    labels : (Z, Y, X) uint8
        Classes 1..M: 1 the background, the others by decreasing volume.
    foreground : (Z, Y, X) bool
        Every class but the background.
    n_classes : int
        M, chosen by silhouette.
    foreground_classes : (M - 1,) int array
    silhouettes : dict of int to float
        The per-class silhouette of each number of classes tried.
    spacing : (dz, dy, dx)
        The voxel spacing the filters were scaled by (isotropic when none was given).
    notes : list of str
        What is left out for volumes (:data:`LEFT_OUT`; the dense CRF when ``config.crf`` asked for it).
    messages : list of str
        Warnings a caller collected while it ran (the dock's job does); empty here.
    """

    labels: np.ndarray
    foreground: np.ndarray
    n_classes: int
    foreground_classes: np.ndarray
    silhouettes: dict
    spacing: Spacing
    notes: list = field(default_factory=list)
    messages: list = field(default_factory=list)


def segment_volume_unsupervised(volume, config: CASConfig, spacing: Optional[Sequence[float]] = None,
                                progress: Optional[ProgressCallback] = None) -> VolumeCASResult:
    """Segment a volume into class-agnostic regions with 3-D classical features, block by block.

    Parameters
    ----------
    volume : (Z, Y, X) array-like
        numpy, zarr or dask (``shape``, ``dtype``, slicing), one channel; read a block at a time.
    config
        ``features`` of the classical filter bank (:func:`check_volume_config`; its ``dims`` is
        taken as 3, its membrane projections, a 2-D filter, are dropped); ``k`` (at most ``min(k, 6)`` classes),
        ``sample`` and ``seed`` are used; ``crf``, ``granularity`` and ``min_area`` do not apply.
    spacing
        ``(dz, dy, dx)`` of the voxels (any unit: only ratios scale the filters); ``None``: isotropic.
    progress
        ``progress(done, total, message)``; may raise :class:`napari_dinoseg.Cancelled`.

    Returns
    -------
    VolumeCASResult

    Raises
    ------
    ValueError
        For features other than the classical filter bank (DINOv2, hybrid), an array that is not
        ``(Z, Y, X)``, a bad spacing, or a uniform volume.
    """
    config = check_volume_config(config)
    shape = tuple(np.shape(volume))
    if len(shape) != 3:
        raise ValueError(f"segment_volume_unsupervised takes a (Z, Y, X) volume of one channel, got an array of "
                         f"shape {shape}; a plane or an image with channels goes to segment_unsupervised")
    shape, spacing = check_volume_shape(shape), volume_spacing(spacing)
    normalised = NormalisedVolume(volume, config.features)
    smooth = _SmoothChannels.of(config, spacing)
    cores = smooth.cores(shape)
    report(progress, 0, 1000, "3-D features: sampling")
    sample, calm, kept = smooth.grid_sample(normalised, cores, config, within(progress, 0.0, 0.45))
    report(progress, 450, 1000, "k-means")
    fit, silhouettes, n = fit_classes(subsample([sample[calm]], config.sample, config.seed), config, "volume")
    labels = np.empty(shape, np.uint8)
    counts = np.zeros(n, np.int64)
    for i, core in enumerate(reversed(cores)):  # the last block first: its channels are kept
        sub = within(progress, 0.5 + 0.4 * i / len(cores), 0.5 + 0.4 * (i + 1) / len(cores))
        channels = kept if i == 0 else smooth.block(normalised, core, sub)[0]
        clusters = fit.predict(smooth.standardised(channels).reshape(-1, channels.shape[-1]))
        labels[core] = clusters.reshape(channels.shape[:-1])
        counts += np.bincount(clusters, minlength=n)
    report(progress, 900, 1000, "background: largest 3-D region")
    labels = _ordered(labels, counts)
    foreground = labels > 1
    report(progress, 1000, 1000, "done")
    return VolumeCASResult(
        labels=labels, foreground=foreground, n_classes=n, foreground_classes=np.arange(2, n + 1),
        silhouettes=silhouettes, spacing=spacing,
        notes=[LEFT_OUT] + (["crf=True: the dense CRF works on planes and was not applied"] if config.crf else []))


def check_volume_config(config: Optional[CASConfig]) -> CASConfig:
    """``config`` (``CASConfig()`` when ``None``) if :func:`segment_volume_unsupervised` can use its
    features: the classical filter bank, without a ViT (the classical rule clusters its
    smoothed intensity; attention and semantic merging have no 3-D counterpart here).

    Raises
    ------
    ValueError
        Naming the kind and what to do, for any other features.
    """
    config = config_or_default(config, CASConfig)
    traits = KINDS[config.features.kind]
    if traits.vit or not (traits.classical and traits.volumes):
        usable = ", ".join(sorted(k for k, t in KINDS.items() if t.classical and t.volumes and not t.vit))
        raise ValueError(f"a volume is segmented without labels with 3-D classical features only ({usable}), got "
                         f"kind={config.features.kind!r}: use CASConfig(features=FeatureConfig(kind='classical')), "
                         "or segment its planes one by one (or as a stack) with segment_unsupervised")
    return config


@dataclass
class _SmoothChannels:
    """The smoothed-intensity channels of the 3-D bank a volume is clustered on: the featuriser of
    the kept sigmas, their channels and the finest's (within them), the clipping and
    standardisation (set by :meth:`grid_sample`)."""

    featuriser: "Featuriser"
    spacing: Spacing
    channels: list
    finest: list
    low: Optional[np.ndarray] = None
    high: Optional[np.ndarray] = None
    mean: Optional[np.ndarray] = None
    std: Optional[np.ndarray] = None

    @classmethod
    def of(cls, config: CASConfig, spacing: Spacing) -> "_SmoothChannels":
        """The 3-D featuriser of ``config.features`` with only the sigmas whose Gaussian the rule
        clusters (:func:`~napari_dinoseg.cas_clusters.smooth_channels`): the others are not computed."""
        from .features.channels import ChannelLayout
        from .features.featurisers import featuriser_for

        features = dataclasses.replace(config.features, dims=3, membrane=False)
        names = featuriser_for(features).channel_names(1)
        sigma = ChannelLayout.of(names).gaussian_sigma
        kept = tuple(sorted({sigma[i] for i in smooth_channels(names)[0] if i in sigma})) or features.sigmas
        featuriser = featuriser_for(dataclasses.replace(features, sigmas=kept))
        channels, finest = smooth_channels(featuriser.channel_names(1))
        return cls(featuriser, spacing, channels, finest)

    def cores(self, shape: tuple) -> list:
        """The blocks' cores (:func:`~napari_dinoseg.features.classical3d.block_grid`, :data:`BLOCK`)."""
        from .features.classical3d import block_grid

        return block_grid(shape, BLOCK)

    def block(self, normalised: NormalisedVolume, core: tuple, progress: Optional[ProgressCallback]
              ) -> tuple[np.ndarray, np.ndarray]:
        """``(channels (z, y, x, C) float32, gradient (z, y, x) float64)`` of a core: the smoothed
        channels and the gradient magnitude of the finest, computed on the core grown by a voxel
        (within the volume) so that it has the whole volume's central differences."""
        shape = normalised.shape
        grown = tuple(slice(max(0, c.start - 1), min(n, c.stop + 1)) for c, n in zip(core, shape))
        halo = self.featuriser.halo(self.spacing)
        feats = self.featuriser.volume_features(read_normalised(normalised, grown, halo), self.spacing, halo, progress)
        feats = feats[..., self.channels]
        units = np.asarray(self.spacing) / min(self.spacing)
        grad = np.zeros(feats.shape[:3], np.float64)
        for c in self.finest:
            parts = [np.gradient(feats[..., c].astype(np.float64), units[a], axis=a) if feats.shape[a] > 1
                     else np.zeros(feats.shape[:3]) for a in range(3)]
            grad += np.sqrt(sum(p * p for p in parts))
        inner = tuple(slice(c.start - g.start, c.stop - g.start) for c, g in zip(core, grown))
        return np.ascontiguousarray(feats[inner]), grad[inner]

    def grid_sample(self, normalised: NormalisedVolume, cores: list, config: CASConfig,
                    progress: Optional[ProgressCallback]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first pass: ``(standardised channels (N, C) float32, calm (N,) bool, the last
        block's channels)`` at the voxels of a regular 3-D grid over the volume (its coordinates
        multiples of one step), read block by block; sets the clipping and standardisation."""
        step = max(1, int(np.ceil((np.prod(normalised.shape) / (GRID_PER_SAMPLE * config.sample)) ** (1 / 3))))
        rows, grads, where, channels = [], [], [], None
        for i, core in enumerate(cores):
            channels, grad = self.block(normalised, core, within(progress, i / len(cores), (i + 1) / len(cores)))
            at = _lattice(core, step, core)
            rows.append(channels[at].reshape(-1, channels.shape[-1]))
            grads.append(grad[at].ravel())
            axes = [np.arange(c.start + a.start, c.stop, step) for c, a in zip(core, at)]
            where.append(np.ravel_multi_index(np.meshgrid(*axes, indexing="ij"), normalised.shape).ravel())
        order = np.argsort(np.concatenate(where))  # the grid in the volume's C order, whatever the blocks
        sample, grad = np.concatenate(rows)[order].astype(np.float64), np.concatenate(grads)[order]
        self.low, self.high = np.percentile(sample, CLIP_PERCENTILES, axis=0)
        sample = np.clip(sample, self.low, self.high)
        self.mean, self.std = sample.mean(0), sample.std(0)
        self.std[self.std < 1e-6] = 1.0
        return self.standardised(sample), grad <= np.quantile(grad, CALM_QUANTILE), channels

    def standardised(self, channels: np.ndarray) -> np.ndarray:
        """``channels (..., C)`` clipped and standardised as the grid sample was, float32."""
        return ((np.clip(channels, self.low, self.high) - self.mean) / self.std).astype(np.float32)


def background_class_3d(labels: np.ndarray) -> int:
    """The class of ``labels`` (``(Z, Y, X)`` int, ids >= 0) with the largest 26-connected region
    (:func:`scipy.ndimage.label`): the matrix around the objects; ties go to the larger class. The
    3-D counterpart of :func:`~napari_dinoseg.cas_foreground.background_class`, whose regions are
    those of each slice."""
    from scipy import ndimage

    best, background = (-1, -1), 0
    sizes = np.bincount(labels.ravel())
    for cls in np.flatnonzero(sizes):
        regions, _ = ndimage.label(labels == cls, structure=np.ones((3, 3, 3), bool))
        region = int(np.bincount(regions.ravel())[1:].max(initial=0))
        del regions
        if (region, int(sizes[cls])) > best:
            best, background = (region, int(sizes[cls])), int(cls)
    return background


def _ordered(clusters: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``clusters (Z, Y, X)`` uint8 0..n-1 renumbered in place as classes 1..n: the background
    (:func:`background_class_3d`) 1, the others by decreasing ``counts`` (voxels per cluster)."""
    n = len(counts)
    background = background_class_3d(clusters)
    by_volume = np.argsort(-counts, kind="stable")
    rank = np.empty(n, label_dtype(np.arange(1, n + 1)))
    rank[[background, *(c for c in by_volume if c != background)]] = np.arange(1, n + 1)
    for z in range(len(clusters)):  # a slice at a time: no volume-sized temporary
        clusters[z] = rank[clusters[z]]
    return clusters
