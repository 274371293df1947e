"""Train / Predict on a ``(Z, Y, X)`` volume with 3-D features, as a pure job (no napari, no Qt).

The train dock copies what it needs from the layers into a :class:`VolumeJob` on the GUI thread:
the volume as it is (numpy, zarr, dask: read a z-slice or a block at a time), a copy of its brush
labels, the voxel spacing from the image layer's scale (:func:`spacing_from_scale`), the z-slices
to predict (the slice in view, or all of them) and the Segmenter to fit (its
``FeatureConfig(dims=3)`` from the controls) or a loaded one. :func:`run_volume_job` runs in a
worker thread: one ``Segmenter.fit(volume, labels, spacing=...)`` on every painted slice (the 3-D
filters read their halo around them), then
:func:`~napari_dinoseg.volume_prediction.predict_volume` of the wanted slices block by block (a
cancel point at each filter step), then the shift report. Its :class:`VolumeResult` is written
by the dock on the GUI thread as a plane job's is (:func:`._train_layers.write_result`: its
``predict_slices`` are ``[(slice(z0, z1),)]``, a slab of the predictions layer).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from ..classify import PixelClassifier, uncertainty
from ..config import FeatureConfig
from ..features.cache import FeatureCache
from ..planes import label_dtype
from ..progress import ProgressCallback, report, within
from ..segmenter import Segmenter
from ..volume import Spacing
from ._jobs import job_featuriser
from ._train_job import Source

#: The dock's checkbox, named in the refusals.
VOLUME_BOX = "3-D features (volume)"


def spacing_from_scale(scale: Sequence[float], units: Optional[Sequence] = None) -> Optional[Spacing]:
    """The voxel spacing ``(dz, dy, dx)`` of an image layer, from its scale.

    Parameters
    ----------
    scale
        napari's ``Layer.scale``; its last three values are the ``(z, y, x)`` steps.
    units
        napari's ``Layer.units`` (pint units), or ``None``. When the last three differ (z in µm,
        y and x in nm, say), each step is converted to µm, so that their ratios, which scale the
        3-D filters, are right; otherwise the steps are taken in the layer's unit as they are.

    Returns
    -------
    ``(dz, dy, dx)`` positive floats, or ``None`` (unknown: isotropic voxels) when every step is 1.
    """
    steps = tuple(abs(float(s)) for s in tuple(scale)[-3:])
    if len(steps) != 3:
        raise ValueError(f"a volume's scale has three steps (z, y, x), got {tuple(scale)!r}")
    names = [str(u) for u in tuple(units)[-3:]] if units is not None else []
    if len(set(names)) > 1:
        try:
            steps = tuple(float((s * u).to("micrometer").magnitude) for s, u in zip(steps, tuple(units)[-3:]))
        except Exception:  # noqa: BLE001 (pint's DimensionalityError, or units that are plain strings)
            pass
    return None if np.allclose(steps, 1.0) else steps  # type: ignore[return-value]


def planes_classifier_refusal(name: str) -> str:
    """Why a loaded classifier of 2-D features does not predict with :data:`VOLUME_BOX` ticked."""
    return (f"the loaded classifier {name} uses 2-D features (it predicts a stack slice by slice): untick "
            f"'{VOLUME_BOX}' to predict with it, or paint strokes to train a classifier of 3-D features")


def volume_classifier_refusal(name: str, image: str, shape: tuple) -> str:
    """Why a loaded classifier of 3-D features does not predict the image ``image`` of ``shape``."""
    return (f"the loaded classifier {name} uses 3-D features of (Z, Y, X) volumes, and {image!r} of shape "
            f"{tuple(shape)} is not one: pick a single-channel volume layer, or paint strokes on this image to "
            "train a classifier for it")


@dataclass
class VolumeJob:
    """Inputs of one Train / Predict click (or live update) with 3-D features.

    Attributes
    ----------
    name
        The image layer's name (said back to the user).
    volume : (Z, Y, X) array-like
        The layer's data (numpy, zarr, dask), read a block at a time.
    labels : (Z, Y, X) int array, or None
        A copy of the brush labels (0 = unpainted); ``None`` with ``use_loaded``.
    segmenter
        The pipeline to fit (``FeatureConfig(dims=3)``), or a loaded, fitted one.
    spacing
        ``(dz, dy, dx)`` of the volume's voxels (``None``: isotropic, unknown).
    planes
        The z-slices to predict (a slice of step 1): the slice in view, or all of them.
    use_loaded
        Predict with ``segmenter`` as it is, without fitting.
    want_uncertainty
        Also compute ``1 - max_k p_k`` of each predicted voxel.
    labels_name
        The Labels layer's name (said back to the user).
    pixel_size
        µm per pixel in the image plane (``None``: unknown), kept with the classifier.
    cache
        The dock's feature cache: the volume's bounds and the features of its painted slices and
        of the slice in view are kept between clicks (:mod:`napari_dinoseg.volume_regions`).
    others
        Other volumes with strokes, of the same voxel spacing ('train on: every image with
        labels'), as :class:`~._train_job.Source` s: trained on with this one, not predicted.
    """

    name: str
    volume: object
    labels: Optional[np.ndarray]
    segmenter: Segmenter
    spacing: Optional[Spacing]
    planes: slice
    use_loaded: bool = False
    want_uncertainty: bool = False
    labels_name: str = ""
    pixel_size: Optional[float] = None
    cache: Optional[FeatureCache] = None
    others: list = field(default_factory=list)

    def training(self) -> list[tuple[Source, list[int]]]:
        """``(source, painted z)`` of every volume with strokes, this one first; this one alone (to
        be refused for having none) when none has strokes."""
        this = Source(name=self.name, image=self.volume, labels=self.labels, rgb=False,
                      labels_name=self.labels_name, pixel_size=self.pixel_size)
        found = [(source, painted_slices(source.labels)) for source in (this, *self.others)]
        return [one for one in found if one[1]] or found[:1]


@dataclass
class VolumeResult:
    """What a :class:`VolumeJob` gives back: the labels of ``planes`` (``segmentations[0]``,
    ``(z1 - z0, Y, X)`` in the smallest unsigned dtype holding the classes), their uncertainties
    (``(z1 - z0, Y, X)`` float32, when wanted), who trained the classifier, the warnings."""

    segmenter: Segmenter
    plan: str
    planes: slice
    spacing: Optional[Spacing]
    segmentations: list
    uncertainties: Optional[list]
    trained_on: list
    messages: list = field(default_factory=list)
    seconds: tuple = (0.0, 0.0)  # (fit, predict)

    @property
    def predict_slices(self) -> list[tuple[slice]]:
        """Where the labels go in the ``(Z, Y, X)`` predictions layer (as a plane job's indices)."""
        return [(self.planes,)]

    @property
    def classifier(self) -> PixelClassifier:
        return self.segmenter.classifier

    @property
    def config(self) -> FeatureConfig:
        return self.segmenter.features


def run_volume_job(job: VolumeJob, progress: Optional[ProgressCallback] = None,
                   announce: Optional[Callable[[str], None]] = None) -> VolumeResult:
    """Fit the segmenter on the volume's painted slices (unless ``use_loaded``), predict the
    z-slices ``job.planes`` and check them (the shift report; a voxel spacing unlike the training
    one is named).

    Progress is reported on a 0..1000 scale; the callback may raise
    :class:`napari_dinoseg.Cancelled` at any filter step, and then nothing is returned (the dock
    writes nothing). Warnings (the shift report, NaN replaced, ...) are collected in ``messages``.
    """
    seg = job.segmenter
    featuriser = job_featuriser(seg, announce)
    z0, z1, _ = job.planes.indices(int(np.shape(job.volume)[0]))
    training = [] if job.use_loaded else job.training()
    painted = [z for _, zs in training for z in zs]
    plan = f"{featuriser.describe(tuple(np.shape(job.volume)[1:]), 1)}, in 3-D ({describe_spacing(job.spacing)})"
    if announce is not None:
        announce(plan)
    fit_share = len(painted) / (len(painted) + z1 - z0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        if training:
            seg.fit([source.image for source, _ in training], [source.labels for source, _ in training],
                    titled(within(progress, 0, fit_share), "training"), job.cache,
                    pixel_size=job.pixel_size, spacing=job.spacing)
        fitted = time.perf_counter()
        where = f"slice {z0}" if z1 - z0 == 1 else f"slices {z0}–{z1 - 1}"
        labels, unc, messages = predict_planes(seg, job, titled(within(progress, fit_share, 1), f"predicting {where}"))
    report(progress, 1000, 1000, "done")
    trained_on = [f"{source.name} (labels {source.labels_name!r}, {len(zs)} slice{'s' if len(zs) > 1 else ''}, 3-D)"
                  for source, zs in training]
    return VolumeResult(segmenter=seg, plan=plan, planes=slice(z0, z1), spacing=job.spacing, segmentations=[labels],
                        uncertainties=None if unc is None else [unc], trained_on=trained_on,
                        messages=list(dict.fromkeys([str(w.message) for w in caught] + messages)),
                        seconds=(fitted - start, time.perf_counter() - fitted))


def predict_planes(seg: Segmenter, job: VolumeJob, progress: Optional[ProgressCallback]
                   ) -> tuple[np.ndarray, Optional[np.ndarray], list[str]]:
    """``(labels, uncertainty or None, warnings)`` of ``job.planes`` of the volume: ``(z, Y, X)``
    label values and ``(z, Y, X)`` float32 uncertainties, written block by block (the ``(z, Y,
    X, K)`` probabilities are never held), and the shift report of what was predicted."""
    from ..volume_prediction import predict_volume

    z0, z1, _ = job.planes.indices(int(np.shape(job.volume)[0]))
    shape = (z1 - z0, *(int(n) for n in np.shape(job.volume)[1:]))
    out = LabelsAndUncertainty(seg, shape) if job.want_uncertainty else None
    out, findings = predict_volume(seg, job.volume, out, not job.want_uncertainty, job.spacing, progress,
                                   slice(z0, z1), job.cache)
    seg._keep_findings(out, findings)  # what check reads for an output it did not write itself
    messages = seg.check(job.volume, out, spacing=job.spacing)
    if job.want_uncertainty:
        return out.labels, out.uncertainty, messages
    return out, None, messages


class LabelsAndUncertainty:
    """An ``out`` for :func:`~napari_dinoseg.volume_prediction.predict_volume`'s ``(z, Y, X, K)``
    probabilities that keeps only their label values (``labels``, ``(z, Y, X)``) and
    uncertainties (``uncertainty``, ``(z, Y, X)`` float32), a block at a time."""

    def __init__(self, segmenter: Segmenter, shape: tuple[int, int, int]) -> None:
        self.segmenter = segmenter
        self.shape, self.dtype = (*shape, segmenter.classifier.n_classes), np.dtype(np.float32)
        self.labels = np.zeros(shape, label_dtype(segmenter.classes))
        self.uncertainty = np.zeros(shape, np.float32)

    def __setitem__(self, key: tuple, proba: np.ndarray) -> None:
        self.labels[key[:3]] = self.segmenter.to_labels(proba)
        self.uncertainty[key[:3]] = uncertainty(proba)


def painted_slices(labels) -> list[int]:
    """The z indices of the ``(Z, Y, X)`` labels' slices holding a painted voxel."""
    labels = np.asarray(labels)
    return [int(z) for z in np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))]


def describe_spacing(spacing: Optional[Spacing]) -> str:
    """``"voxels of (2, 1, 1) (dz, dy, dx)"``, or ``"isotropic voxels (scale 1)"`` when unknown."""
    if spacing is None:
        return "isotropic voxels (scale 1)"
    return "voxels of (" + ", ".join(f"{v:.3g}" for v in spacing) + ") (dz, dy, dx)"


def titled(progress: Optional[ProgressCallback], title: str) -> Optional[ProgressCallback]:
    """``progress`` with each message said as ``"<title>: <message>"``."""
    if progress is None:
        return None
    return lambda done, total, message: progress(done, total, f"{title}: {message}")
