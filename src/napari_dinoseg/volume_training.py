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
from .distribution_shift import FeatureDistribution, TrainingStatistics, signal_quantiles, signal_samples
from .memory import check_volume_memory
from .pixel_classifier import check_labels
from .progress import ProgressCallback, report, within
from .volume import NormalisedVolume, Spacing, check_volume_shape, checked_spacing

#: z-slices of each block the shift report's intensity and edge statistics sample.
STATISTICS_SLICES = 4


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
                progress: Optional[ProgressCallback] = None) -> None:
    """Fit ``segmenter`` (its feature config has ``dims == 3``) on ``(Z, Y, X)`` volumes and their
    brush labels, in place: the classifier, the channel names, the training spacing
    (:attr:`~napari_dinoseg.Segmenter.spacing`) and the training statistics.

    Raises
    ------
    ValueError
        A volume of another rank, labels of another shape, bad label values, a bad spacing, or
        fewer than two painted classes (from the classifier's training).
    """
    from .training import fit_scaling, grid_step, linear_channels, train_parts, training_part

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
    parts, samples, counts_of = [], [], []
    done, total = 0, len(shapes)
    for volume, blocks in zip(volumes, painted):
        normalised = NormalisedVolume(volume, config)
        for core, crop in blocks:
            sub = within(progress, 0.9 * done / total, 0.9 * (done + 1) / total)
            block = read_normalised(normalised, core, halo)
            features = featuriser.volume_features(block, spacing, halo, sub, place=(core, np.shape(volume)))
            parts.append(training_part(features, crop, step))
            samples.append(block_signals(block, core, halo))
            counts_of.append(crop[crop > 0])
            del features
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
