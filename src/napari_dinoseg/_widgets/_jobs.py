"""The start every dock widget's job shares, pure (no napari, no Qt): the compute libraries
imported, the job's :class:`~napari_dinoseg.features.base.Featuriser` built once, its plan line
announced, and the planes featurised through the feature cache the docks share.

A job runs in a worker thread: ``featuriser = start_job(config, planes[0], announce)``, then
``featurise_planes(featuriser, planes, progress, cache)``. The featuriser carries the device
and the config's presets resolved for it: no job resolves them itself. A Train / Predict click
takes its Segmenter's featuriser (:attr:`~napari_dinoseg.segmenter.Segmenter.featuriser`), the
one the Segmenter's fit and predict use.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, Union

import numpy as np

from ..progress import ProgressCallback, within

if TYPE_CHECKING:
    from ..config import FeatureConfig
    from ..features.base import Featuriser
    from ..features.cache import FeatureCache
    from ..features.stack import FeatureStack
    from ..segmenter import Segmenter

#: ``announce(line)``: where a job says what it does (the dock's plan line), or ``None``.
Announce = Optional[Callable[[str], None]]
#: What a job's features come from: a feature config, a featuriser built from one, or a Segmenter.
FeatureSource = Union["FeatureConfig", "Featuriser", "Segmenter"]

_IMPORT_LOCK = threading.Lock()


def import_compute_libraries(vit: bool = True, announce: Announce = None) -> None:
    """Import torch and scikit-learn, and timm (with torchvision) when ``vit``, one thread at a time.

    Called by the widgets' background warm-up and at the start of every job: loading these
    C extensions from two threads at once can crash the process (seen with triton, which
    torchvision pulls in). The two groups take the lock separately, so a classical job never
    waits for the warm-up's timm import (about 3 s of the first click's 28 s on a busy
    machine; ``python -X importtime``: scikit-learn 2.4 s, torch 2.9 s, timm's torchvision
    and torch._dynamo 3.9 s more). ``announce`` hears what is being loaded, if anything.
    """
    import sys

    wanted = ["sklearn.linear_model", "torch"] + (["timm"] if vit else [])
    missing = [name for name in wanted if not _loaded(sys.modules.get(name))]
    if missing and announce is not None:
        announce(f"loading {', '.join(m.split('.')[0] for m in missing)} (first run of the session only)…")
    if any(name in missing for name in wanted[:2]):  # the lock only to import: a job whose libraries
        with _IMPORT_LOCK:  # are loaded does not wait while the warm-up imports timm
            import sklearn.linear_model  # noqa: F401
            import torch  # noqa: F401
    if vit and "timm" in missing:
        with _IMPORT_LOCK:
            import timm  # noqa: F401


def _loaded(module) -> bool:
    """Whether a module of ``sys.modules`` has finished importing (another thread may be running it)."""
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


def job_featuriser(source: FeatureSource, announce: Announce = None) -> "Featuriser":
    """The featuriser a job uses, after importing the compute libraries its kind needs.

    ``source``: a Segmenter (its own :attr:`~napari_dinoseg.segmenter.Segmenter.featuriser`),
    a feature config (its featuriser, built here: the device and the presets resolved once), or a
    featuriser already built (used as it is).
    """
    from ..feature_kinds import KINDS
    from ..features.featurisers import featuriser_for
    from ..segmenter import Segmenter

    segmenter = source if isinstance(source, Segmenter) else None
    config = source if segmenter is None else segmenter.features
    import_compute_libraries(KINDS[config.kind].vit, announce)
    return featuriser_for(config) if segmenter is None else segmenter.featuriser


def plane_geometry(plane) -> tuple[tuple[int, int], int]:
    """``((H, W), C)`` of an ``(H, W)`` or ``(H, W, C)`` plane (``C`` is 1 for ``(H, W)``)."""
    shape = np.shape(plane)
    return (int(shape[0]), int(shape[1])), int(shape[2]) if len(shape) == 3 else 1


def announce_plan(featuriser: "Featuriser", first, announce: Announce = None, note: str = "") -> str:
    """The job's plan line, said to ``announce`` and returned: what featurising its first plane
    ``first`` (``(H, W)`` or ``(H, W, C)``) will do (:meth:`~napari_dinoseg.features.base.Featuriser.describe`),
    then ``"; <note>"`` when there is a note."""
    plan = featuriser.describe(*plane_geometry(first)) + (f"; {note}" if note else "")
    if announce is not None:
        announce(plan)
    return plan


def start_job(source: FeatureSource, first, announce: Announce = None) -> "Featuriser":
    """A job's start: the compute libraries imported, the featuriser of ``source`` taken or built
    once (:func:`job_featuriser`), and its plan line for the first plane ``first`` (``(H, W)`` or
    ``(H, W, C)``) announced (:func:`announce_plan`). Returns the featuriser."""
    featuriser = job_featuriser(source, announce)
    announce_plan(featuriser, first, announce)
    return featuriser


def featurise_planes(featuriser: "Featuriser", planes: Iterable, progress: Optional[ProgressCallback] = None,
                     cache: Optional["FeatureCache"] = None, span: tuple[float, float] = (0.0, 1.0),
                     count: Optional[int] = None) -> Iterator["FeatureStack"]:
    """Each plane's features, in order, one at a time (a generator: a caller may drop each
    stack before the next is computed).

    Parameters
    ----------
    featuriser
        The job's featuriser (:func:`start_job`).
    planes
        ``(H, W)`` or ``(H, W, C)`` arrays, read when reached (a generator may read them lazily).
    progress
        Plane ``i`` of ``n`` reports on its ``n``-th share of ``span`` (fractions of the job).
    cache
        The features are taken from it when held, else computed and kept there
        (:func:`~napari_dinoseg.features.featurise.cached_featurise`); ``None``: computed.
    count
        ``n``, the number of planes (default ``len(planes)``).

    Yields
    ------
    FeatureStack
        ``.data`` ``(H, W, F)`` float32 of each plane.
    """
    from ..features.featurise import cached_featurise

    n = len(planes) if count is None else count
    start, stop = span
    step = (stop - start) / max(n, 1)
    for i, plane in enumerate(planes):
        yield cached_featurise(plane, featuriser, within(progress, start + i * step, start + (i + 1) * step), cache)
