"""The work behind one Train / Predict click, as a pure function (no napari, no Qt).

The widget copies what it needs from the layers into a :class:`TrainJob` on the GUI
thread, runs :func:`run_train_job` in a worker thread, and writes the
:class:`TrainResult` back to layers on the GUI thread.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..classify import PixelClassifier, predict, train, uncertainty
from ..config import CRFConfig, FeatureConfig, TrainConfig
from ..features.featurise import FeatureCache, FeatureStack, cache_key, featurise, resolve_device
from ..image import drop_alpha
from ..progress import ProgressCallback, report

Index = tuple[int, ...]

_IMPORT_LOCK = threading.Lock()


def import_compute_libraries() -> None:
    """Import torch, timm and scikit-learn, one thread at a time.

    Called by the widget's background warm-up and at the start of every job: loading these
    C extensions from two threads at once can crash the process (seen with triton, which
    torchvision pulls in).
    """
    with _IMPORT_LOCK:
        import sklearn.linear_model  # noqa: F401
        import timm  # noqa: F401
        import torch  # noqa: F401


def describe_plan(config: FeatureConfig, shape: tuple[int, int], n_channels: int, device) -> str:
    """One line on what featurisation will do: kind, resolved upsampler, time estimate."""
    if not config.uses_vit:
        return f"{config.kind} features on {device.type}"
    from ..features.upsample import make_transforms
    from ..features.vit import estimate_seconds

    views = len(make_transforms(config.shifts, config.flips))
    seconds = estimate_seconds(config, shape, device, n_channels)
    return (f"{config.model} on {device.type}: stride {config.stride}, shifts {config.shifts}, "
            f"flips {config.flips} ({views} views), about {seconds:.0f} s per slice")


def cached_features(cache: FeatureCache, plane: np.ndarray, config: FeatureConfig,
                    progress: Optional[ProgressCallback], messages: list) -> tuple[FeatureStack, bool]:
    """Features of ``plane`` from ``cache``, or computed and cached; returns ``(stack, reused)``.

    Warnings raised while featurising (NaN replaced, ...) are appended to ``messages`` for
    the GUI to show, instead of going to the console.
    """
    key = cache_key(plane, config)
    stack = cache.get(key)
    if stack is not None:
        return stack, True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stack = featurise(plane, config, progress)
    messages.extend(str(w.message) for w in caught)
    cache.put(key, stack)
    return stack, False


@dataclass
class TrainJob:
    """Inputs of one click, copied from the layers.

    Attributes
    ----------
    image : (*lead, H, W) or (*lead, H, W, C) array
        The image layer's data (``C`` only when ``rgb``); may be lazy (dask).
    labels : (*lead, H, W) int array
        A copy of the brush labels.
    rgb
        Whether the last image axis holds colour channels (RGBA drops its alpha).
    predict_slices
        Leading indices of the slices to predict (``[()]`` for a 2-D image).
    """

    image: np.ndarray
    labels: np.ndarray
    rgb: bool
    predict_slices: list[Index]
    feature_config: FeatureConfig
    train_config: TrainConfig = field(default_factory=TrainConfig)
    want_uncertainty: bool = False
    crf: Optional[CRFConfig] = None
    classifier: Optional[PixelClassifier] = None  # a loaded classifier: used when nothing is painted

    @property
    def train_slices(self) -> list[Index]:
        """Leading indices of the slices holding at least one painted pixel."""
        lead = self.labels.shape[:-2]
        if not lead:
            return [()] if np.any(self.labels) else []
        painted = np.any(self.labels.reshape(*lead, -1), axis=-1)
        return [tuple(int(i) for i in idx) for idx in np.argwhere(painted)]

    def slice_image(self, index: Index) -> np.ndarray:
        plane = np.asarray(self.image[index])
        return drop_alpha(plane) if self.rgb else plane


@dataclass
class TrainResult:
    config: FeatureConfig
    plan: str
    classifier: PixelClassifier
    predict_slices: list[Index]
    segmentations: list[np.ndarray]
    uncertainties: Optional[list[np.ndarray]]
    featurised: int
    reused: int
    messages: list[str]


def run_train_job(
    job: TrainJob,
    cache: FeatureCache,
    progress: Optional[ProgressCallback] = None,
    announce: Optional[Callable[[str], None]] = None,
) -> TrainResult:
    """Featurise (or reuse cached features of) the needed slices, train, and predict.

    Features of the painted slices are held for training; the slices to predict are
    then featurised and predicted one at a time, so a whole stack never sits in memory
    beyond what the cache keeps. Device presets are resolved here, and ``announce`` gets a
    line describing the plan (with a time estimate for ViT features) before featurisation
    starts. Progress is reported on a 0..1000 scale; a progress callback may raise
    :class:`napari_dinoseg.Cancelled` to stop between steps.
    """
    train_slices = job.train_slices
    if not train_slices and job.classifier is None:
        raise ValueError("no labelled pixels: paint at least one stroke for each of two classes")
    import_compute_libraries()
    device = resolve_device(job.feature_config.device)
    config = job.feature_config.resolved(device.type)
    first = job.slice_image((train_slices or job.predict_slices)[0])
    plan = describe_plan(config, first.shape[:2], first.shape[2] if first.ndim == 3 else 1, device)
    if announce is not None:
        announce(plan)
    order = list(dict.fromkeys([*train_slices, *job.predict_slices]))
    scale = 1000
    counts = {"featurised": 0, "reused": 0}
    messages: list[str] = []

    def features(index: Index) -> FeatureStack:
        n = order.index(index)
        where = f"slice {index}: " if index else ""

        def sub(done: int, total: int, message: str) -> None:
            frac = (n + done / max(total, 1)) / len(order)
            report(progress, int(0.95 * scale * frac), scale, where + message)

        stack, reused = cached_features(cache, job.slice_image(index), config, sub, messages)
        counts["reused" if reused else "featurised"] += 1
        report(progress, int(0.95 * scale * (n + 1) / len(order)), scale, "features ready")
        return stack

    train_stacks = {i: features(i) for i in train_slices}
    if train_slices:
        report(progress, int(0.95 * scale * len(train_slices) / len(order)), scale, "training")
        clf = train(list(train_stacks.values()), [job.labels[i] for i in train_slices], job.train_config)
    else:  # nothing painted: predict with the loaded classifier
        clf = job.classifier
    segs, uncs = [], []
    for index in job.predict_slices:
        stack = train_stacks.get(index) or features(index)
        proba = predict(clf, stack)
        if job.crf is not None:
            from ..crf import crf_refine

            proba = crf_refine(job.slice_image(index), proba, job.crf)
        segs.append(clf.to_labels(proba))
        if job.want_uncertainty:
            uncs.append(uncertainty(proba))
    report(progress, scale, scale, "done")
    return TrainResult(
        config=config,
        plan=plan,
        classifier=clf,
        predict_slices=list(job.predict_slices),
        segmentations=segs,
        uncertainties=uncs if job.want_uncertainty else None,
        featurised=counts["featurised"],
        reused=counts["reused"],
        messages=list(dict.fromkeys(messages)),
    )
