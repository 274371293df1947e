"""Train / Predict on one level of a multiscale (pyramid) image, as pure jobs (no napari, no Qt).

The train dock copies what it needs from the layers into a :class:`ViewJob` (fit on the working
level's painted windows, predict the rectangle in view) or a :class:`WholeJob` (segment the whole
level into an OME-Zarr on disk) on the GUI thread; :func:`run_view_job` / :func:`run_whole_job`
run in a worker thread. Every plane here is read window by window (a zarr or dask level as it is,
an in-memory level through :class:`InMemoryLevel`), so memory is bounded by a window, not the level.

The predictions of successive views accumulate in a labels pyramid on disk (:func:`open_predictions`,
:func:`write_region`): level 0 is the working level, each next level every second pixel of the
one above (as :func:`napari_dinoseg.ngff_write.write_pyramid` makes labels), so napari shows it as a
multiscale Labels layer reading only what is on screen.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..lazy_training import stored_chunk_files
from ..pixel_scale import pixel_size_warning
from ..planes import Slices, label_dtype
from ..progress import ProgressCallback, report, within
from ..segmenter import Segmenter
from ._jobs import announce_plan, job_featuriser
from ._live import BAND_PIXELS, bands

#: The most pixels of the working level one Train / Predict predicts: a larger view is predicted
#: around its centre up to this many, and the dock says so (a multi-minute job is never silent).
VIEW_BUDGET = 16 * 2 ** 20
#: Share of a view job's progress given to the fit.
FIT_SHARE = 0.5


class InMemoryLevel:
    """An in-memory ``(H, W)`` or ``(H, W, C)`` level seen as a lazy array-like (``shape``,
    ``dtype``, ``[rows, cols]``), so that fitting reads only its painted windows and predicting
    only the windows that meet a region, as for a zarr level."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape, self.dtype, self.ndim = tuple(array.shape), array.dtype, array.ndim

    def __getitem__(self, key) -> np.ndarray:
        return self.array[key]


def lazy_level(array):
    """``array`` as the jobs read it: a numpy level wrapped (:class:`InMemoryLevel`), any other
    array-like (zarr, dask) as it is."""
    return InMemoryLevel(array) if isinstance(array, np.ndarray) else array


def within_budget(region: Slices, budget: int = VIEW_BUDGET) -> Slices:
    """The part of ``region`` (``(rows, cols)``) around its centre of at most about ``budget``
    pixels, with its aspect ratio; ``region`` itself when it holds no more."""
    (r0, r1), (c0, c1) = [(s.start, s.stop) for s in region]
    h, w = r1 - r0, c1 - c0
    if h * w <= budget:
        return region
    shrink = math.sqrt(budget / (h * w))
    nh, nw = max(1, int(h * shrink)), max(1, int(w * shrink))
    top, left = r0 + (h - nh) // 2, c0 + (w - nw) // 2
    return slice(top, top + nh), slice(left, left + nw)


def region_in_level(corners: np.ndarray, ratio: tuple[float, float], shape: tuple[int, int]) -> Optional[Slices]:
    """The rectangle of the working level shown on screen.

    Parameters
    ----------
    corners : (2, 2) int array
        Top-left and bottom-right pixels on screen (inclusive) at the level napari displays,
        rows and columns (the last two columns of napari's ``Layer.corner_pixels``).
    ratio
        ``(rows, cols)`` downsample factor of the displayed level over the working level's.
    shape
        ``(H, W)`` of the working level.

    Returns
    -------
    ``(rows, cols)`` slices of the working level, clipped to it; ``None`` when nothing is on screen.
    """
    corners = np.asarray(corners, float)
    region = tuple(slice(max(0, int(math.floor(corners[0, a] * ratio[a]))),
                         min(n, int(math.ceil((corners[1, a] + 1) * ratio[a])))) for a, n in enumerate(shape))
    return region if all(s.stop > s.start for s in region) else None


# ---- the predictions pyramid --------------------------------------------------------------


def open_predictions(path: Path, shape: tuple[int, int], dtype, pixel_size_um: Optional[float] = None) -> list:
    """The levels (zarr arrays, level 0 of ``shape``) of the labels pyramid at ``path``: opened
    when it is one of ``shape`` and ``dtype``, else created empty (zeros: nothing predicted)."""
    from ..ngff import open_ngff
    from ..ngff_write import create_ngff

    if path.exists():
        try:
            levels = list(open_ngff(path, writable=True).levels)
            if tuple(levels[0].shape) == tuple(shape) and levels[0].dtype == np.dtype(dtype):
                return levels
        except ValueError:
            pass
    made = create_ngff(path, shape, dtype, chunks=1024, pixel_size_um=pixel_size_um, levels=pyramid_levels(shape),
                       kind="labels", overwrite=True,
                       metadata={"made by": "napari-dinoseg train dock: the predictions of the views predicted"})
    return list(made.levels)


def pyramid_levels(shape: tuple[int, int]) -> int:
    """Levels of a labels pyramid of level-0 ``shape``: halved until its longest side is at most
    1024 (:func:`napari_dinoseg.ngff_write.default_levels`), at least 2 (napari shows it as multiscale)."""
    from ..ngff_write import default_levels

    return max(2, default_levels(shape))


def write_region(levels: list, region: Slices, labels: np.ndarray) -> None:
    """Write ``labels`` (``(h, w)``) into ``region`` of a labels pyramid's level 0 and the pixels
    they give every coarser level: level ``k``'s pixel ``i`` is level 0's pixel ``i * 2**k``."""
    (r0, r1), (c0, c1) = [(s.start, s.stop) for s in region]
    for k, level in enumerate(levels):
        f = 2 ** k
        i0, i1, j0, j1 = -(-r0 // f), -(-r1 // f), -(-c0 // f), -(-c1 // f)
        if i1 > i0 and j1 > j0:
            level[i0:i1, j0:j1] = labels[i0 * f - r0::f, j0 * f - c0::f][:i1 - i0, :j1 - j0]


def labels_digest(labels) -> Optional[str]:
    """A digest of brush labels that changes when they do: of a numpy array's bytes; of a zarr
    array on a local store, its stored chunk files (only painted chunks are stored); ``None``
    for anything else (unknown: treated as changed)."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(labels, np.ndarray):
        digest.update(np.ascontiguousarray(labels).tobytes())
        return digest.hexdigest()
    files = stored_chunk_files(labels)
    if files is None:
        return None
    for index, chunk in sorted(files.items()):
        digest.update(str(index).encode())
        digest.update(chunk.read_bytes())
    return digest.hexdigest()


# ---- Train / Predict the view -------------------------------------------------------------


@dataclass
class ViewJob:
    """Inputs of one Train / Predict click (or live update) on a multiscale image.

    Attributes
    ----------
    name
        The image layer's name (said back to the user).
    level
        The working level (0: the finest).
    plane : (H, W) or (H, W, C) array-like
        The working level (:func:`lazy_level`), read window by window.
    labels : (H, W) int array-like, or None
        The brush labels at the working level (a zarr array: only painted windows are read);
        ``None`` with ``use_loaded``.
    region
        ``(rows, cols)`` of the working level to predict (the view, :func:`within_budget`).
    segmenter
        The pipeline to fit, or a loaded, fitted one (``use_loaded``).
    pixel_size
        µm per pixel of the working level (``None``: unknown): what the classifier keeps.
    out
        The predictions pyramid's directory (:func:`open_predictions`).
    """

    name: str
    level: int
    plane: object
    labels: object
    region: Slices
    segmenter: Segmenter
    pixel_size: Optional[float]
    out: Path
    use_loaded: bool = False
    wanted: Optional[Slices] = None  # the view before the budget: said back when larger than region
    notes: list = field(default_factory=list)  # said with the result's warnings


@dataclass
class ViewResult:
    segmenter: Segmenter
    plan: str
    level: int
    region: Slices
    wanted: Optional[Slices]
    out: Path
    trained: bool
    messages: list = field(default_factory=list)
    n_classes: int = 0
    seconds: tuple = (0.0, 0.0)  # (fit, predict)


def run_view_job(job: ViewJob, cache, progress: Optional[ProgressCallback] = None,
                 announce: Optional[Callable[[str], None]] = None) -> ViewResult:
    """Fit the segmenter on the working level's painted windows (unless ``use_loaded``), then
    predict ``job.region`` a band of rows at a time (a cancel point after each) and write its
    labels into the predictions pyramid ``job.out``. Progress on a 0..1000 scale; the progress
    callback may raise :class:`napari_dinoseg.Cancelled` (then nothing is written)."""
    seg = job.segmenter
    featuriser = job_featuriser(seg, announce)
    h, w = (s.stop - s.start for s in job.region)
    shape_only = np.broadcast_to(np.zeros((), np.uint8), (h, w, *tuple(job.plane.shape)[2:]))
    plan = announce_plan(featuriser, shape_only, announce)
    fit_share = 0.0 if job.use_loaded else FIT_SHARE
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        if not job.use_loaded:
            seg.fit(job.plane, job.labels, within(progress, 0, fit_share), cache, pixel_size=job.pixel_size)
        fitted = time.perf_counter()
        regions = seg.regions(job.plane, within(progress, fit_share, fit_share + 0.1), cache)
        labels = np.empty((h, w), label_dtype(seg.classes))
        todo = bands(job.region, BAND_PIXELS)
        r0 = job.region[0].start
        for n, band in enumerate(todo):
            proba = regions.proba(band)
            labels[band[0].start - r0:band[0].stop - r0] = seg.to_labels(proba)
            report(progress, int(1000 * (fit_share + 0.1 + (0.9 - fit_share) * (n + 1) / len(todo))), 1000,
                   f"predicting the view ({n + 1}/{len(todo)})")
    seconds = (fitted - start, time.perf_counter() - fitted)
    messages = [str(w.message) for w in caught] + list(job.notes)
    if job.use_loaded:
        messages += pixel_size_warning(seg.pixel_size, job.pixel_size)
    levels = open_predictions(job.out, (int(job.plane.shape[0]), int(job.plane.shape[1])), labels.dtype,
                              job.pixel_size)
    write_region(levels, job.region, labels)
    report(progress, 1000, 1000, "done")
    return ViewResult(segmenter=seg, plan=plan, level=job.level, region=job.region, wanted=job.wanted, out=job.out,
                      trained=not job.use_loaded, messages=list(dict.fromkeys(messages)),
                      n_classes=seg.classifier.n_classes, seconds=seconds)


# ---- the view's features, while the user paints -------------------------------------------


@dataclass
class PrefetchJob:
    """Inputs of the dock's background preparation of a view: the features of the working
    level's windows that meet ``region`` (the view), computed into the feature cache with the
    Segmenter's feature config before the user clicks Train / Predict
    (:meth:`~napari_dinoseg.Segmenter.cache_view`); with ``region=None``, only the level's
    intensity bounds (a view too large to prepare)."""

    name: str
    level: int
    plane: object
    region: Optional[Slices]
    segmenter: Segmenter


@dataclass
class PrefetchResult:
    name: str
    level: int
    region: Optional[Slices]
    windows: int  # computed (those already in the cache not counted)
    seconds: float
    messages: list = field(default_factory=list)  # none: the click says what the plane's reading warns


def run_prefetch_job(job: PrefetchJob, cache, progress: Optional[ProgressCallback] = None,
                     announce: Optional[Callable[[str], None]] = None) -> PrefetchResult:
    """Compute the features of ``job.region``'s windows (and the level's intensity bounds) into
    ``cache``, a window at a time; the progress callback may raise
    :class:`napari_dinoseg.Cancelled` between windows (what was computed stays cached). Its reports
    carry no message (the dock's status line keeps what it says)."""
    job_featuriser(job.segmenter)
    start = time.perf_counter()

    def quiet(done: int, total: int, _message: str) -> None:  # the dock's progress bar, not its status line
        report(progress, done, total, "")

    with warnings.catch_warnings():  # what reading the plane warns is said by the click that uses it
        warnings.simplefilter("ignore")
        windows = job.segmenter.cache_view(job.plane, job.region, quiet if progress is not None else None, cache)
    return PrefetchResult(name=job.name, level=job.level, region=job.region, windows=windows,
                          seconds=time.perf_counter() - start)


# ---- the whole image ----------------------------------------------------------------------


@dataclass
class WholeJob:
    """Inputs of a 'Predict whole image' click: a fitted ``segmenter``, the working ``level``'s
    ``plane`` (array-like), and ``out``, the OME-Zarr directory to write (must not exist)."""

    name: str
    level: int
    plane: object
    segmenter: Segmenter
    pixel_size: Optional[float]
    out: Path


@dataclass
class WholeResult:
    out: Path
    level: int
    shape: tuple
    levels: int
    messages: list = field(default_factory=list)


def run_whole_job(job: WholeJob, cache, progress: Optional[ProgressCallback] = None,
                  announce: Optional[Callable[[str], None]] = None) -> WholeResult:
    """Segment the whole working level window by window into an OME-Zarr labels pyramid at
    ``job.out`` (memory bounded by a window), then its coarser levels, then mark it complete.
    A cancel (the progress callback raising :class:`napari_dinoseg.Cancelled`) removes the
    partly written store and re-raises."""
    from ..ngff_write import create_ngff, mark_complete, write_pyramid

    seg = job.segmenter
    shape = (int(job.plane.shape[0]), int(job.plane.shape[1]))
    if announce is not None:
        announce(f"segmenting the whole of {job.name!r} at level {job.level} ({shape[0]}×{shape[1]}) into {job.out}")
    made = create_ngff(job.out, shape, label_dtype(seg.classes), chunks=1024, pixel_size_um=job.pixel_size,
                       levels=pyramid_levels(shape), kind="labels",
                       metadata={"made by": "napari-dinoseg train dock: Predict whole image", "image": job.name,
                                 "level": job.level})
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seg.segment(job.plane, within(progress, 0, 0.95), cache, out=made.levels[0])
            report(progress, 950, 1000, "writing the coarser levels")
            write_pyramid(made)
            report(progress, 1000, 1000, "done")
        mark_complete(made)
    except Exception:  # a cancel (Cancelled) or a failure: no partial store is left behind
        shutil.rmtree(job.out, ignore_errors=True)
        raise
    messages = [str(w.message) for w in caught] + pixel_size_warning(seg.pixel_size, job.pixel_size)
    return WholeResult(out=job.out, level=job.level, shape=shape, levels=len(made.levels),
                       messages=list(dict.fromkeys(messages)))
