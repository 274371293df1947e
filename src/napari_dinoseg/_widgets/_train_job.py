"""The work behind one Train / Predict click, as a pure function (no napari, no Qt).

The widget copies what it needs from the layers into a :class:`TrainJob` on the GUI
thread, runs :func:`run_train_job` in a worker thread, and writes the
:class:`TrainResult` back to layers on the GUI thread. The job starts as every dock's job does
(:mod:`._jobs`), with its Segmenter's featuriser.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..classify import PixelClassifier, uncertainty
from ..lazy_plane import WindowedArray, is_lazy
from ..config import FeatureConfig
from ..features.featurise import FeatureCache, FeatureStack
from ..image import drop_alpha
from ..pixel_scale import common_pixel_size
from ..progress import ProgressCallback, report, within
from ..segmenter import Segmenter
from ._jobs import announce_plan, job_featuriser, plane_geometry

Index = tuple[int, ...]


#: Planes of more pixels are trained on and predicted window by window, as a zarr plane is: at 65
#: classical channels their float16 feature windows (6000²: about 5 GiB) no longer fit the feature
#: cache's default budget, so nothing is lost; the whole-plane normalised float copy is saved, and
#: training featurises only the painted windows.
WINDOWED_PIXELS = 6000 * 6000


@dataclass
class Source:
    """One image layer and its own brush labels, copied from the layers.

    Attributes
    ----------
    name
        The image layer's name (said back to the user).
    image : (*lead, H, W) or (*lead, H, W, C) array
        The layer's data (``C`` only when ``rgb``); may be lazy (dask).
    labels : (*lead, H, W) int array
        A copy of the brush labels painted on this image.
    rgb
        Whether the last image axis holds colour channels (RGBA drops its alpha).
    labels_name
        The Labels layer's name.
    pixel_size
        µm per pixel, from the image layer's scale (``None``: unknown): the training pixel size
        the classifier keeps, and the one its shift report compares.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    rgb: bool
    labels_name: str = ""
    pixel_size: Optional[float] = None

    @property
    def painted_slices(self) -> list[Index]:
        """Leading indices of the slices holding at least one painted pixel."""
        lead = self.labels.shape[:-2]
        if not lead:
            return [()] if np.any(self.labels) else []
        painted = np.any(self.labels.reshape(*lead, -1), axis=-1)
        return [tuple(int(i) for i in idx) for idx in np.argwhere(painted)]

    def plane(self, index: Index) -> np.ndarray:
        """One plane: a numpy array, or, of a zarr / dask layer larger than one tile, the lazy
        array itself, read window by window by the Segmenter (only the painted windows to train,
        the windows of the plane to predict: never the plane whole, nor a float copy of it); a
        numpy plane of more than :data:`WINDOWED_PIXELS` the same way (:class:`WindowedArray`)."""
        plane = self.image if not index else self.image[index]
        if is_lazy(plane) and not self.rgb and max(plane.shape[:2]) > Segmenter.tile:
            return plane
        plane = np.asarray(plane)
        plane = drop_alpha(plane) if self.rgb else plane
        return WindowedArray(plane) if plane.shape[0] * plane.shape[1] > WINDOWED_PIXELS else plane


@dataclass
class TrainJob:
    """Inputs of one click, copied from the layers.

    Attributes
    ----------
    sources
        The image to predict with its labels first, then any other painted images to train on.
    predict_slices
        Leading indices of the first source's slices to predict (``[()]`` for a 2-D image).
    segmenter
        The pipeline to fit (its configs set by the controls), or a loaded, fitted one.
    use_loaded
        Predict with ``segmenter`` as it is, without fitting (a loaded classifier, nothing painted).
    """

    sources: list[Source]
    predict_slices: list[Index]
    segmenter: Segmenter
    use_loaded: bool = False
    want_uncertainty: bool = False

    @property
    def training_planes(self) -> list[tuple[Source, Index]]:
        """Every painted slice of every source."""
        return [(src, i) for src in self.sources for i in src.painted_slices]


@dataclass
class TrainResult:
    segmenter: Segmenter
    plan: str
    predict_slices: list[Index]
    segmentations: list[np.ndarray]
    uncertainties: Optional[list[np.ndarray]]
    trained_on: list[str]
    featurised: int
    reused: int
    messages: list[str]

    @property
    def classifier(self) -> PixelClassifier:
        return self.segmenter.classifier

    @property
    def config(self) -> FeatureConfig:
        return self.segmenter.features


#: ``predict_plane(segmenter, plane, progress, cache) -> (H, W, K) probabilities``: how a job
#: predicts one plane (:meth:`Segmenter.predict_proba`, or a live update's view-first order).
PlanePredictor = Callable[[Segmenter, np.ndarray, Optional[ProgressCallback], object], np.ndarray]


def run_train_job(
    job: TrainJob,
    cache: FeatureCache,
    progress: Optional[ProgressCallback] = None,
    announce: Optional[Callable[[str], None]] = None,
    *,
    predict_plane: Optional[PlanePredictor] = None,
) -> TrainResult:
    """Fit the segmenter on every painted slice of every source (features from ``cache`` where it
    has them), then predict and check the first source's ``predict_slices``.

    The job's featuriser is its Segmenter's (:attr:`Segmenter.featuriser`: the device and the
    presets resolved once, for the plan line, the fit and the predictions), and ``announce`` gets
    a line describing the plan (with a time estimate for ViT features) before featurisation
    starts. Progress is reported on a 0..1000 scale; a progress callback may raise
    :class:`napari_dinoseg.Cancelled` to stop between steps. Warnings (NaN replaced, images
    unlike the training images, a collapsed prediction) are collected in ``messages``.
    ``predict_plane`` predicts each slice (``None``: :meth:`Segmenter.predict_proba`, or for a plane
    read window by window without an uncertainty layer, :meth:`Segmenter.segment`).
    """
    planes = job.training_planes
    if not planes and not job.use_loaded:
        raise ValueError("no labelled pixels: paint at least one stroke for each of two classes")
    featuriser = job_featuriser(job.segmenter, announce)
    first = job.sources[0].plane(job.predict_slices[0])
    kept = feature_note(job.segmenter, featuriser, first, cache)
    plan = announce_plan(featuriser, first, announce, kept)
    cache = _Recording(cache)
    fit_share = 0.0 if job.use_loaded else len(planes) / (len(planes) + len(job.predict_slices))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained_on = []
        if not job.use_loaded:
            job.segmenter.fit([src.plane(i) for src, i in planes], [src.labels[i] for src, i in planes],
                              within(progress, 0, fit_share), cache,
                              pixel_size=common_pixel_size(src.pixel_size for src, _ in planes))
            trained_on = list(dict.fromkeys(_describe(src, planes) for src, _ in planes))
        segs, uncs, messages = _predict(job, predict_plane, within(progress, fit_share, 1), cache)
    messages = [str(w.message) for w in caught] + messages
    if kept.startswith("features cannot be kept"):  # the status line ends with it
        messages.append(kept)
    report(progress, 1000, 1000, "done")
    return TrainResult(
        segmenter=job.segmenter,
        plan=plan,
        predict_slices=list(job.predict_slices),
        segmentations=segs,
        uncertainties=uncs if job.want_uncertainty else None,
        trained_on=trained_on,
        featurised=len(cache.computed),
        reused=len(cache.used - cache.computed),
        messages=list(dict.fromkeys(messages)),
    )


def feature_note(segmenter: Segmenter, featuriser, first: np.ndarray, cache: FeatureCache) -> str:
    """How ``cache`` keeps the features of ``first``, the ``(H, W)`` or ``(H, W, C)`` slice a job
    predicts first, for the plan line: ``""`` when as they are; that they are kept as float16
    (with the classifier's scaled features, when they fit too); or that they cannot be kept
    (their size and the cache's budget; see :func:`~napari_dinoseg.features.featurise.storage_note`).
    ``featuriser`` is the job's (:attr:`Segmenter.featuriser`); one that gathers pixels (ViT and
    hybrid features, kept as token grids) gets ``""``."""
    from ..features.featurise import storage_note

    if featuriser.gathers_pixels:
        return ""
    shape, n_channels = plane_geometry(first)
    lazy = is_lazy(first)  # a zarr / dask plane: its working set of windows is what is kept
    nbytes = segmenter.feature_bytes(shape, n_channels, featuriser, lazy)
    storage = segmenter.feature_storage(shape, n_channels, cache, featuriser, lazy)
    scaled = int(nbytes * segmenter.read_fraction()) if storage == "float16" and segmenter.keeps_scaled(
        shape, n_channels, cache, featuriser, lazy) else 0
    return storage_note(storage, nbytes, cache.max_bytes, scaled)


def _predict(job: TrainJob, predict_plane: PlanePredictor, progress: Optional[ProgressCallback],
             cache) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Labels, uncertainties (when wanted) and warnings of the first source's ``predict_slices``."""
    seg, source = job.segmenter, job.sources[0]
    segs, uncs, messages = [], [], []
    share = 1 / len(job.predict_slices)
    for n, index in enumerate(job.predict_slices):
        plane = source.plane(index)
        sub = within(progress, n * share, (n + 1) * share)
        where = f"{source.name}{' slice ' + str(index) if index else ''}: "
        if is_lazy(plane) and not job.want_uncertainty and predict_plane is None:
            # a plane read window by window: its labels written window by window, no (H, W, K) floats
            labels = seg.segment(plane, sub, cache)
            messages += [where + message for message in seg.check(plane, labels, cache, pixel_size=source.pixel_size)]
            segs.append(labels)
            continue
        proba = (predict_plane or Segmenter.predict_proba)(seg, plane, sub, cache)
        # through the cache: a live update's probabilities (predicted view first) carry no feature
        # sample, so the check reads one from the cached windows instead of featurising the plane again
        messages += [where + message for message in seg.check(plane, proba, cache, pixel_size=source.pixel_size)]
        segs.append(seg.to_labels(proba))
        if job.want_uncertainty:
            uncs.append(uncertainty(proba))
    return segs, uncs, messages


class _Recording:
    """A feature cache seen through one job: which windows it computed, which it used."""

    def __init__(self, cache: FeatureCache) -> None:
        self.cache, self.used, self.computed = cache, set(), set()

    def get(self, key: str) -> Optional[FeatureStack]:
        self.used.add(key)
        stack = self.cache.get(key)
        if stack is None:
            self.computed.add(key)
        return stack

    def put(self, key: str, stack: FeatureStack) -> None:
        self.cache.put(key, stack)

    def derived(self, key: tuple, compute):
        value = self.cache.derived(key, compute)
        if key[0] == "tokens":  # a window's ViT features: its forward passes (none yet: to compute)
            self.used.add(key)
            if not len(value):
                self.computed.add(key)
        return value

    def recount(self, key: tuple) -> None:
        self.cache.recount(key)

    @property
    def max_bytes(self) -> int:
        return self.cache.max_bytes


def _describe(source: Source, planes: list) -> str:
    """``"image (labels 'image labels', 2 slices)"``: what one source gave to training."""
    n = sum(1 for src, _ in planes if src is source)
    slices = f", {n} slice{'s' if n > 1 else ''}" if source.painted_slices != [()] else ""
    return f"{source.name} (labels {source.labels_name!r}{slices})"
