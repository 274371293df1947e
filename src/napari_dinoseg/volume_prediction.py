"""Predicting a volume block by block (``FeatureConfig(dims=3)``): :func:`predict_volume`.

Each block of the grid (the featuriser's ``volume_block()``) is read with the featuriser's halo,
normalised with the whole volume's bounds, featurised in 3-D, and classified a z-slice at a time: the smoothing (guided filter, Gaussian) and the optional dense CRF work in
the image plane, so the block's features are computed on its core grown in-plane by the reach of
the smoothing (clipped to the volume) and the slices cropped back to the core, which then
equals the whole volume's prediction (the CRF, a global model, is refined per slice of the grown
block). Only the output is volume-sized (an ``out`` on disk keeps even that off memory).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .memory import check_volume_memory
from .planes import label_dtype
from .plane_parts import check_finite
from .progress import ProgressCallback, report, within
from .volume import check_volume_shape
from .volume_regions import kept, normalised_volume, region_features, volume_identity
from .volume_training import volume_spacing
from .window_prediction import TileFindings, check_out, plane_findings

#: Voxels of a volume's feature sample for the shift report (a regular grid over all of it).
FEATURE_SAMPLE_VOXELS = 1 << 14


def predict_volume(segmenter, volume, out=None, labels: bool = False, spacing: Optional[Sequence[float]] = None,
                   progress: Optional[ProgressCallback] = None, planes: Optional[slice] = None, cache=None):
    """Predict a ``(Z, Y, X)`` volume block by block into ``out``.

    Parameters
    ----------
    segmenter : Segmenter
        Fitted on volumes.
    volume : (Z, Y, X) array-like
        numpy, zarr or dask (``shape``, ``dtype``, slicing); read a block at a time.
    out : array-like, optional
        ``(Z, Y, X)`` of an integer dtype holding the label values (``labels``), or
        ``(Z, Y, X, K)`` of a float dtype; ``None``: a numpy array is allocated.
    spacing
        ``(dz, dy, dx)`` of the volume's voxels; ``None``: isotropic.
    progress
        ``progress(done, total, message)``; may raise :class:`napari_dinoseg.Cancelled`.
    planes
        Predict only these z-slices (a slice of step 1; the output then has ``len`` of them along
        z): the slice in view costs the read of its halo along z, and the 3-D filters of one slice.
    cache : FeatureCache, optional
        The volume's bounds, and the features of its blocks when they take a small share of the
        cache (the slice in view, :func:`~napari_dinoseg.volume_regions.kept`), are kept and taken
        from it: a live update predicting the same slice again featurises nothing.

    Returns
    -------
    (out, PlaneFindings): the output, and what the prediction saw for the shift report.
    """
    from .classify import predict
    from .features.classical3d import block_grid

    clf = segmenter._fitted()
    shape = check_volume_shape(np.shape(volume))
    z0, z1, z_step = (planes or slice(None)).indices(shape[0])
    if z_step != 1 or z1 <= z0:
        raise ValueError(f"planes must be a non-empty slice of step 1 of the volume's {shape[0]} z-slices, got {planes}")
    spacing = volume_spacing(spacing)
    dtype = label_dtype(clf.classes) if labels else np.float32
    wanted = (z1 - z0, *shape[1:]) if labels else (z1 - z0, *shape[1:], clf.n_classes)
    featuriser = segmenter.featuriser
    cores = [(slice(max(c[0].start, z0), min(c[0].stop, z1)), *c[1:]) for c in block_grid(shape, featuriser.volume_block())
             if c[0].start < z1 and c[0].stop > z0]
    largest = max((tuple(s.stop - s.start for s in c) for c in cores), key=np.prod)
    check_volume_memory(featuriser, largest, spacing,  # before anything is read or allocated
                        0 if out is not None else int(np.prod(wanted)) * np.dtype(dtype).itemsize)
    if out is None:
        out = np.empty(wanted, dtype)
    check_out(out, wanted, dtype)
    halo, ring = featuriser.halo(spacing), clf.margin
    grown_cores = [(core[0], *(slice(max(0, c.start - ring), min(size, c.stop + ring))
                               for c, size in zip(core[1:], shape[1:]))) for core in cores]
    identity = volume_identity(volume) if cache is not None else None
    normalised = normalised_volume(volume, segmenter.features, cache, identity)
    regions_cache = cache if kept(featuriser, grown_cores, cache) else None  # else the bounds alone are kept
    step = max(1, int(np.ceil((np.prod(shape) / FEATURE_SAMPLE_VOXELS) ** (1 / 3))))
    found = []
    for n, (core, grown) in enumerate(zip(cores, grown_cores)):
        sub = within(progress, 0.97 * n / len(cores), 0.97 * (n + 1) / len(cores))
        region = region_features(featuriser, normalised, grown, halo, spacing, sub, regions_cache, identity)
        features = region.features
        inner = tuple(slice(c.start - g.start, c.stop - g.start) for c, g in zip(core[1:], grown[1:]))
        proba = np.empty((core[0].stop - core[0].start, *(s.stop - s.start for s in inner), clf.n_classes),
                         np.float32)
        origin = (grown[1].start, grown[2].start)
        for z in range(len(proba)):
            plane = predict(clf, features[z], origin=origin)
            if segmenter.crf is not None:
                from .crf import crf_refine

                plane = crf_refine(region.values[z][..., None], plane, segmenter.crf, normalised=True)
            proba[z] = plane[inner]
        check_finite(proba)
        rows = features[_lattice(core, step, grown)].reshape(-1, features.shape[-1])
        signals = region.signals
        del features, region  # before the next block's features are computed
        found.append(TileFindings(rows, signals,
                                  np.bincount(np.argmax(proba, axis=-1).ravel(), minlength=clf.n_classes)))
        out[(slice(core[0].start - z0, core[0].stop - z0), *core[1:])] = segmenter.to_labels(proba) if labels else proba
    report(progress, 990, 1000, "shift report")
    findings = plane_findings(segmenter, found, 1, projected=False)
    report(progress, 1000, 1000, "predicted")
    return out, findings


def _lattice(core: tuple, step: int, grown: tuple) -> tuple:
    """Index of a grown block's features at the voxels of ``core`` whose volume coordinates are
    multiples of ``step`` (the whole volume's regular grid)."""
    return tuple(slice(-(-c.start // step) * step - g.start, c.stop - g.start, step) for c, g in zip(core, grown))
