"""Fitting a :class:`~napari_dinoseg.Segmenter` on volumes (``FeatureConfig(dims=3)``).

A volume is cut into blocks (the featuriser's ``volume_block()`` voxels, the last ones smaller);
only the blocks whose cores hold painted voxels are read, each with the featuriser's halo
(mirrored at the volume's border) and normalised with the whole volume's intensity bounds
(:class:`~napari_dinoseg.volume.NormalisedVolume`), so their features are the whole volume's
there. Training keeps of each block only its painted voxels' features and a grid sample (a
:class:`~napari_dinoseg.training.TrainingPart`): memory is bounded by one block, not the volume.
The labels may be numpy, zarr or dask; they are read a block at a time.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .features.classical_featuriser import VOLUME_BLOCK  # the bank's block; a featuriser's: volume_block()
from .distribution_shift import FeatureDistribution, TrainingStatistics, signal_quantiles
from .memory import check_volume_memory
from .pixel_classifier import check_labels
from .progress import ProgressCallback, report, within
from .volume import Spacing, check_volume_shape, checked_spacing


def volume_spacing(spacing: Optional[Sequence[float]]) -> Spacing:
    """The spacing the 3-D filters use: ``spacing`` checked, or isotropic voxels when unknown."""
    return checked_spacing(spacing) or (1.0, 1.0, 1.0)


def painted_blocks(labels, shape: tuple[int, int, int], block=VOLUME_BLOCK) -> list[tuple[tuple, np.ndarray]]:
    """``(core, labels of the core)`` of the painted parts of the block grid: in each block, every
    run of consecutive z-slices holding a painted voxel (strokes on a few slices are featurised on
    those slices only: the 3-D bank's valid-mode passes then cost a slice's worth, plus the halo
    read along z).

    ``labels`` is ``(Z, Y, X)`` integer (numpy, zarr, dask), read a block at a time and checked
    (:func:`~napari_dinoseg.pixel_classifier.check_labels`)."""
    from .features.classical3d import block_grid

    if tuple(np.shape(labels)) != tuple(shape):
        raise ValueError(f"labels of shape {tuple(np.shape(labels))} do not match the volume's shape {tuple(shape)}; "
                         "paint in a Labels layer with the volume's shape")
    blocks = []
    for core in block_grid(shape, block):
        crop = check_labels(np.asarray(labels[core]))
        painted = np.flatnonzero(crop.reshape(len(crop), -1).any(axis=1))
        for run in np.split(painted, np.flatnonzero(np.diff(painted) > 1) + 1) if len(painted) else []:
            z0, z1 = int(run[0]), int(run[-1]) + 1
            blocks.append(((slice(core[0].start + z0, core[0].start + z1), *core[1:]), crop[z0:z1]))
    return blocks


def fit_volumes(segmenter, volumes: list, labels: list, spacing: Optional[Sequence[float]],
                progress: Optional[ProgressCallback] = None, cache=None) -> None:
    """Fit ``segmenter`` (its feature config has ``dims == 3``) on ``(Z, Y, X)`` volumes and their
    brush labels, in place: the classifier, the channel names, the training spacing
    (:attr:`~napari_dinoseg.Segmenter.spacing`) and the training statistics.

    With a :class:`~napari_dinoseg.features.cache.FeatureCache` (the dock's), the volumes' bounds
    and the features of the painted runs of slices are kept and taken from it
    (:mod:`~napari_dinoseg.volume_regions`): strokes added to slices already painted featurise nothing.

    Raises
    ------
    ValueError
        A volume of another rank, labels of another shape, bad label values, a bad spacing, or
        fewer than two painted classes (from the classifier's training).
    """
    from .training import fit_scaling, grid_step, linear_channels, train_parts, training_part
    from .volume_regions import kept, normalised_volume, region_features, volume_identity

    spacing_given = checked_spacing(spacing)
    spacing = volume_spacing(spacing)
    featuriser = segmenter.featuriser
    config, training = featuriser.config, segmenter.training
    for volume in volumes:
        check_volume_shape(np.shape(volume))
    painted = [painted_blocks(lab, tuple(np.shape(vol)), featuriser.volume_block())
               for vol, lab in zip(volumes, labels)]
    if not any(painted):
        raise ValueError("no painted voxel in the labels: paint strokes of two or more classes first")
    halo = featuriser.halo(spacing)
    shapes = [tuple(s.stop - s.start for s in core) for blocks in painted for core, _ in blocks]
    check_volume_memory(featuriser, max(shapes, key=np.prod), spacing, what="training on the volume")
    step = grid_step(shapes)
    keeps_regions = kept(featuriser, [core for blocks in painted for core, _ in blocks], cache)
    parts, samples, counts_of = [], [], []
    done, total = 0, len(shapes)
    for volume, blocks in zip(volumes, painted):
        identity = None if cache is None else volume_identity(volume)
        normalised = normalised_volume(volume, config, cache, identity)
        for core, crop in blocks:
            sub = within(progress, 0.9 * done / total, 0.9 * (done + 1) / total)
            region = region_features(featuriser, normalised, core, halo, spacing, sub,
                                     cache if keeps_regions else None, identity)
            parts.append(training_part(region.features, crop, step))
            samples.append(region.signals)
            counts_of.append(crop[crop > 0])
            del region
            done += 1
    report(progress, 900, 1000, "training")
    names = featuriser.channel_names(1)
    linear = linear_channels(names, training)
    scaling = fit_scaling(parts, training.scaling, linear)
    classifier = train_parts(parts, training, channel_names=names, feature_config=config, scaling=scaling)
    segmenter.features, segmenter.classifier, segmenter.n_channels = config, classifier, 1
    segmenter.channel_names, segmenter.spacing = names, spacing_given
    report(progress, 950, 1000, "training statistics")
    grid = np.concatenate([p.grid for p in parts])
    distribution = None
    if len(grid) >= 2:
        from .classify import _pixel_proba

        confidence = float(_pixel_proba(classifier, grid).max(axis=0).mean())
        distribution = FeatureDistribution.fit(segmenter.shift_space(grid), None, confidence, training.seed)
    quantiles = signal_quantiles(np.concatenate(samples, axis=-1))
    statistics = TrainingStatistics.of([quantiles], [np.concatenate(counts_of)], classifier.classes)
    segmenter.statistics = TrainingStatistics(statistics.quantiles, statistics.class_fractions, distribution)
    report(progress, 1000, 1000, "trained")
