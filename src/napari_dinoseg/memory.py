"""Memory: what this process may still allocate, and what segmenting one plane takes at its peak.

Features are estimated tile by tile (:func:`napari_dinoseg.features.featurise.estimate_memory`);
around them a prediction holds buffers of the whole plane: its normalised copy (``4 C`` bytes per
pixel for ``C`` channels), the ``(H, W, K)`` float32 probabilities (``4 K``), the label image, the
dense CRF's lattice and messages, and what the shift report reads. :func:`plane_memory` adds
them up from the values a segmenter actually uses (its classes, channels, tile, smoothing, CRF)
and :func:`check_plane_memory` refuses, before anything of the plane is allocated, a plane whose
peak would not fit in :data:`PLANE_MEMORY_FRACTION` of :func:`available_memory`: saying the
estimate, what is available, and what to do (crop, downsample, a machine with more memory).
What this process may still allocate (:func:`available_memory`, :func:`gib`,
:class:`NotEnoughMemory`) lives in :mod:`napari_dinoseg.memory_limits`, re-exported here.

The constants below were measured (peak resident memory of a process, ``resource.getrusage``,
over what it held before the plane was made; ``benchmarks/memory.py`` measures features alone)
on planes of 512² to 4096² px, 1 and 3 channels, 2 to 32 classes, with and without the guided
filter and the CRF; the estimates are at or above every measured peak, by at most about 40 %
(the CRF's: up to 2.5 times, see :data:`CRF_PIXEL_BYTES`).
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .memory_limits import NotEnoughMemory, available_memory, gib

#: Fraction of :func:`available_memory` the estimated peak of one plane (or of reading a file)
#: may take; above it the plane is refused before anything of it is allocated.
PLANE_MEMORY_FRACTION = 0.8
#: Bytes per pixel and class the classifier's prediction of one tile holds besides the
#: probabilities of the plane: its own probabilities, the guided filter's fits (``a``, ``b``,
#: their box sums, upsampled from the lattice) and its output (measured: 24 bytes).
PREDICT_CLASS_BYTES = 28
#: Bytes per pixel of the same that do not grow with the classes (the guide, its box sums).
PREDICT_PIXEL_BYTES = 48
#: Bytes per pixel and class of the Gaussian smoothing of the probabilities (``smooth > 0``).
SMOOTH_CLASS_BYTES = 4
#: Factor on the sum of the estimated buffers, and bytes added to it: what the measured peaks
#: hold besides (the allocator's arenas of the worker threads, torch's caches, fragmentation).
PEAK_FACTOR, PEAK_OVERHEAD = 1.1, 96 << 20
#: The dense CRF (pydensecrf), bytes per pixel and per pixel and class, when every pixel is a point
#: of its own in its permutohedral lattices: small kernel widths, noisy colour images (measured at
#: 1024² px: 590 + 70 K bytes at widths 0.5 and below, 218 + 39 K with the default widths on a
#: noisy RGB image, 160 + 25 K on a noisy grey one).
CRF_PIXEL_BYTES, CRF_CLASS_BYTES = 600, 72
#: ... and when few pixels are (the default widths on a grey image, a measured 160 + 25 K).
CRF_FEW_PIXEL_BYTES, CRF_FEW_CLASS_BYTES = 200, 30
#: Bytes per pixel of the shift report (:meth:`napari_dinoseg.Segmenter.check`) besides the plane's
#: probabilities, labels and normalised copy: the gradient magnitude of a channel and its temporaries.
CHECK_PIXEL_BYTES = 12


@dataclass(frozen=True)
class PlaneEstimate:
    """The estimated peak of segmenting one plane, and what makes it up.

    Attributes
    ----------
    total : int
        Bytes at the peak, besides the image itself.
    parts : dict of str -> int
        The largest buffers of the phase of the peak, by name (for the message).
    shape : (H, W)
    channels, classes : int
    """

    total: int
    parts: dict = field(default_factory=dict)
    shape: tuple = (0, 0)
    channels: int = 1
    classes: int = 2

    def describe(self) -> str:
        """``"the probabilities of its 6000 classes 5.9 GiB, features of a tile 0.4 GiB, ..."``, largest first."""
        items = sorted(self.parts.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{name} {gib(n)}" for name, n in items if n >= 0.01 * self.total)


def plane_memory(segmenter, shape: tuple[int, int], n_channels: int, n_classes: Optional[int] = None,
                 features=None) -> PlaneEstimate:
    """Estimated peak bytes of segmenting one ``(H, W)`` plane of ``n_channels``, as
    :func:`napari_dinoseg.batch.process_file` does: :meth:`~napari_dinoseg.Segmenter.predict_proba`,
    the labels, :meth:`~napari_dinoseg.Segmenter.check`; the image itself not counted.

    Parameters
    ----------
    segmenter : Segmenter
        Its feature config, training config (smoothing), CRF config, tile size and classes
        (``n_classes`` before it is fitted).
    shape, n_channels
        The plane's.
    n_classes
        Classes of the probabilities (default: the segmenter's).
    features
        The feature config or featuriser (default: the segmenter's
        :attr:`~napari_dinoseg.Segmenter.featuriser`, resolved for the device it will run on).

    The peak is the largest of three phases: the tiles (the normalised plane, the plane's
    probabilities, and the larger of one tile's features at their peak and the tile's features
    with its prediction); the dense CRF (the normalised plane, the probabilities, the CRF); the
    shift report (the probabilities, the labels, the normalised plane again and its gradient).
    """
    from .classify import MAX_LABEL
    from .features.featurisers import featuriser_for
    from .planes import label_dtype, plane_windows

    clf = segmenter.classifier
    k = int(n_classes if n_classes is not None else (clf.n_classes if clf is not None else 2))
    h, w = (int(n) for n in shape[:2])
    pixels = h * w
    featuriser = segmenter.featuriser if features is None else featuriser_for(features)
    training = segmenter.training
    normalised = 4 * n_channels * pixels
    proba = 4 * k * pixels
    labels = label_dtype(clf.classes if clf is not None else np.array([min(k, MAX_LABEL)])).itemsize * pixels

    windows = plane_windows((h, w), featuriser, training, segmenter.tile)
    tile_pixels, tile_shape = max(((r.stop - r.start) * (c.stop - c.start), (r.stop - r.start, c.stop - c.start))
                                  for (r, c), _ in windows)
    split = segmenter.logit_space() if clf is not None else None
    projected = None if split is None else len(split[1][0])
    tile_features = featuriser.working_bytes(tile_shape, n_channels, projected=projected)
    if split is None:
        stack = 4 * tile_pixels * featuriser.n_features(n_channels)
    else:  # the channels other than the ViT's, then the projected ones
        stack = 4 * tile_pixels * (len(featuriser.layout(n_channels).classical) + projected)
    guided = clf.guided_radius > 0 and bool(clf.guide) if clf is not None else training.guided_radius > 0
    per_class = (PREDICT_CLASS_BYTES if guided else 8) + (SMOOTH_CLASS_BYTES if training.smooth > 0 else 0)
    predict = tile_pixels * (k * per_class + (PREDICT_PIXEL_BYTES if guided else 0))
    of_tile = " of a tile" if len(windows) > 1 else ""
    tile_parts = {f"features{of_tile}": tile_features} if tile_features >= stack + predict else \
        {f"features{of_tile}": stack, f"the prediction{of_tile} of its {k} classes": predict}
    phases = [
        (normalised + proba + sum(tile_parts.values()),
         {"the normalised plane": normalised, f"the probabilities of its {k} classes": proba, **tile_parts}),
        (proba + labels + normalised + CHECK_PIXEL_BYTES * pixels,
         {f"the probabilities of its {k} classes": proba, "the labels": labels, "the normalised plane": normalised,
          "the shift report": CHECK_PIXEL_BYTES * pixels}),
    ]
    if segmenter.crf is not None:
        crf = pixels * crf_pixel_bytes(segmenter.crf, n_channels, k)
        phases.append((normalised + proba + crf, {"the normalised plane": normalised,
                                                  f"the probabilities of its {k} classes": proba,
                                                  f"the dense CRF of {k} classes": crf}))
    total, parts = max(phases, key=lambda phase: phase[0])
    return PlaneEstimate(int(PEAK_FACTOR * total + PEAK_OVERHEAD), parts, (h, w), n_channels, k)


def crf_pixel_bytes(crf, n_channels: int, n_classes: int) -> float:
    """Bytes per pixel the dense CRF (:func:`napari_dinoseg.crf.crf_refine`) takes at its peak.

    Its bilateral lattice has a point for each cell of ``bilateral_sxy`` px and ``bilateral_srgb``
    intensity levels that some pixel falls in (a few points per pixel at most): about
    ``min(1, colours / bilateral_sxy²)`` of the pixels are points of their own, ``colours`` being
    the cells of intensity an image can fill (``256 / srgb`` for a grey image, which the CRF reads
    as three equal channels; the cube of that for colour). Widths below 1 make every pixel a point.
    An upper bound: a smooth image fills fewer cells than this assumes.
    """
    levels = 256 / crf.bilateral_srgb
    colours = levels if n_channels < 3 else levels**3
    share = 1.0 if min(crf.gaussian_sxy, crf.bilateral_sxy, crf.bilateral_srgb) < 1 \
        else min(1.0, colours / crf.bilateral_sxy**2)
    pixel = CRF_FEW_PIXEL_BYTES + share * (CRF_PIXEL_BYTES - CRF_FEW_PIXEL_BYTES)
    per_class = CRF_FEW_CLASS_BYTES + share * (CRF_CLASS_BYTES - CRF_FEW_CLASS_BYTES)
    return pixel + n_classes * per_class


def check_plane_memory(segmenter, shape: tuple[int, ...], available: Optional[int] = None,
                       extra: int = 0, what: str = "segmenting") -> int:
    """Refuse, before anything of it is allocated, a plane whose segmentation would not fit.

    Parameters
    ----------
    segmenter : Segmenter
    shape : (H, W) or (H, W, C)
        The plane's shape.
    available
        Bytes available (default: :func:`available_memory`).
    extra
        Bytes held besides (the rest of a file being segmented plane by plane).
    what
        What is done, for the message.

    Returns
    -------
    The estimate in bytes (:func:`plane_memory` plus ``extra``).

    Raises
    ------
    NotEnoughMemory
        (a ``ValueError`` and ``MemoryError``; never a kill by the kernel) when the estimate exceeds
        :data:`PLANE_MEMORY_FRACTION` of ``available``, saying the estimate, its largest parts,
        what is available and what to do.
    """
    from .image import check_image_shape

    h, w = check_image_shape(tuple(shape))
    n_channels = 1 if len(shape) == 2 else int(shape[-1])
    if segmenter.n_channels == 3 and n_channels == 4:  # alpha dropped
        n_channels = 3
    estimate = plane_memory(segmenter, (h, w), n_channels)
    total = estimate.total + extra
    available = available_memory() if available is None else available
    if total > PLANE_MEMORY_FRACTION * available:
        raise NotEnoughMemory(plane_refusal(estimate, total, available, what))
    return total


def check_window_memory(segmenter, shape: tuple[int, ...], out_bytes: int = 0, available: Optional[int] = None,
                        what: str = "segmenting") -> int:
    """:func:`check_plane_memory` of a plane predicted window by window
    (:func:`~napari_dinoseg.window_prediction.predict_windows`): the estimate of its largest tile
    window as a plane of its own, plus ``out_bytes`` (the output, where it is allocated in memory);
    the plane itself is never held. Returns the estimate in bytes; raises :class:`NotEnoughMemory`."""
    from .image import check_image_shape
    from .planes import plane_windows

    h, w = check_image_shape(tuple(shape))
    n_channels = 1 if len(shape) == 2 else int(shape[-1])
    if segmenter.n_channels == 3 and n_channels == 4:  # alpha dropped
        n_channels = 3
    windows = plane_windows((h, w), segmenter.featuriser, segmenter.training, segmenter.tile)
    largest = max(((r.stop - r.start) * (c.stop - c.start), (r.stop - r.start, c.stop - c.start))
                  for (r, c), _ in windows)[1]
    estimate = dataclasses.replace(plane_memory(segmenter, largest, n_channels), shape=(h, w))
    total = estimate.total + int(out_bytes)
    if out_bytes:
        estimate.parts["the output"] = int(out_bytes)
    available = available_memory() if available is None else available
    if total > PLANE_MEMORY_FRACTION * available:
        raise NotEnoughMemory(plane_refusal(estimate, total, available, what))
    return total


def plane_refusal(estimate: PlaneEstimate, total: int, available: int, what: str = "segmenting") -> str:
    """The message of a plane that does not fit: the estimate and its parts, what is available,
    and what to do (by what makes the estimate: the image's size or the classifier's classes)."""
    h, w = estimate.shape
    need_fraction = total / max(PLANE_MEMORY_FRACTION * available, 1)
    side = max(8, int(min(h, w) / need_fraction ** 0.5))
    classes = sum(n for name, n in estimate.parts.items() if "classes" in name)
    if classes > total / 2:
        fix = (f"the classifier's {estimate.classes} classes take most of it: use a classifier of fewer classes, "
               f"crop the image into pieces of about {side}x{side} px, or use a machine with more memory")
    else:
        fix = (f"crop the image into pieces of about {side}x{side} px or downsample it, or use a machine with "
               "more memory")
    return (f"{what} this {h}x{w} image ({estimate.channels} channel{'s' * (estimate.channels > 1)}) would need "
            f"about {gib(total)} at its peak ({estimate.describe()}), more than {PLANE_MEMORY_FRACTION:.0%} of the "
            f"{gib(available)} this process can still use; nothing was allocated for it. To segment it, {fix}")


def file_memory(segmenter, plane_shape: tuple, n_planes: int, probabilities: bool = False) -> int:
    """Bytes that segmenting a file's ``n_planes`` planes of ``plane_shape`` (``(H, W)`` or
    ``(H, W, C)``) takes besides its pixels, as :func:`napari_dinoseg.batch.process_file` does it: one
    plane's peak (:func:`plane_memory`) and the outputs of every plane, kept until they are
    written, then stacked (labels; with ``probabilities`` their ``(H, W, K)`` float32 too). For
    :func:`napari_dinoseg.reading.read_image`'s ``memory``."""
    from .planes import label_dtype

    h, w = (int(n) for n in plane_shape[:2])
    channels = 1 if len(plane_shape) == 2 else int(plane_shape[2])
    if segmenter.n_channels == 3 and channels == 4:  # alpha dropped
        channels = 3
    clf = segmenter.classifier
    k = clf.n_classes if clf is not None else 2
    label_bytes = label_dtype(clf.classes).itemsize if clf is not None else 1
    outputs = 2 * n_planes * h * w * (label_bytes + (4 * k if probabilities else 0))
    return plane_memory(segmenter, (h, w), channels).total + outputs


def fit_memory(segmenter, images, labels, featuriser) -> PlaneEstimate:
    """Estimated peak bytes of :meth:`napari_dinoseg.Segmenter.fit` on ``images`` and their
    ``labels`` (checked lists) with the job's ``featuriser``; the images and labels
    themselves not counted.

    The normalised copy of every training image (and of each of its ``augment`` variants) is held
    throughout; beside them, the larger of one tile's features at their peak (with a contrast-
    inverted copy of the largest image, for the shift report) and the training set: the painted
    pixels' features, gathered then concatenated, and the pixels kept of them (at most
    ``max_pixels_per_class`` per class) scaled, in float64 for the solver, and for the trees.
    """
    from .features.featurisers import featuriser_for
    from .planes import plane_windows

    featuriser = featuriser_for(featuriser)  # a feature config is built into one
    training = segmenter.training
    shapes = [tuple(int(n) for n in np.shape(img)[:2]) for img in images]
    channels = 1 if np.ndim(images[0]) == 2 else int(np.shape(images[0])[-1])
    variants = 1 + len(training.augment)
    normalised = variants * sum(4 * channels * h * w for h, w in shapes)
    largest = max(4 * channels * h * w for h, w in shapes)
    windows = {(r.stop - r.start, c.stop - c.start) for shape in set(shapes)
               for (r, c), _ in plane_windows(shape, featuriser, training, segmenter.tile)}
    # a kind that gathers the painted pixels (featurise_pixels) builds no stack of a tile
    projected = 0 if featuriser.gathers_pixels else None
    tile_peak = max(featuriser.working_bytes(window, channels, projected=projected) for window in windows)
    n_feat = featuriser.n_features(channels)
    painted = sum(int(np.count_nonzero(lab)) for lab in labels) * variants
    top = max((int(np.max(lab)) for lab in labels if np.size(lab)), default=1)
    kept = min(painted, max(2, top) * training.max_pixels_per_class)
    gathered = 2 * painted * (4 * n_feat + 8)
    solver = kept * (3 * 4 + 8) * n_feat
    k = max(2, min(top, painted))
    phases = [(normalised + largest + tile_peak + painted * (4 * n_feat + 8) // 2,
               {"the normalised training images": normalised, "the features of a tile": tile_peak,
                "the painted pixels' features": painted * (4 * n_feat + 8) // 2}),
              (normalised + gathered + solver,
               {"the normalised training images": normalised, "the painted pixels' features": gathered,
                "the training set": solver})]
    total, parts = max(phases, key=lambda phase: phase[0])
    h, w = max(shapes, key=lambda s: s[0] * s[1])
    return PlaneEstimate(int(PEAK_FACTOR * total + PEAK_OVERHEAD), parts, (h, w), channels, k)


def check_fit_memory(segmenter, images, labels, featuriser, available: Optional[int] = None) -> int:
    """Refuse, before any image is normalised, a fit whose estimated peak (:func:`fit_memory`)
    would not fit in :data:`PLANE_MEMORY_FRACTION` of ``available`` bytes (default:
    :func:`available_memory`): :class:`NotEnoughMemory` saying the estimate, its parts, what is
    available and what to do. Returns the estimate."""
    estimate = fit_memory(segmenter, images, labels, featuriser)
    available = available_memory() if available is None else available
    if estimate.total > PLANE_MEMORY_FRACTION * available:
        n = len(images)
        what = "training on" if n == 1 else f"training on {n} images, the largest"
        fix = ("crop the images to the regions you painted, train on fewer images, lower max_pixels_per_class or "
               "augment, or use a machine with more memory")
        h, w = estimate.shape
        raise NotEnoughMemory(
            f"{what} {h}x{w} px would need about {gib(estimate.total)} at its peak ({estimate.describe()}), more "
            f"than {PLANE_MEMORY_FRACTION:.0%} of the {gib(available)} this process can still use; nothing was "
            f"allocated for it. To train, {fix}")
    return estimate.total


def check_volume_memory(featuriser, core: tuple, spacing, out_bytes: int = 0, available: Optional[int] = None,
                        what: str = "segmenting the volume") -> int:
    """Refuse a volume job whose peak would not fit, before anything is read: one block of ``core``
    voxels (:meth:`volume_bytes` of the featuriser: its features, the block read with its halo, the
    filters' temporaries) plus ``out_bytes`` (the output, where it is allocated in memory); the volume
    itself is read a block at a time. Returns the estimate in bytes; raises :class:`NotEnoughMemory`."""
    block = int(featuriser.volume_bytes(tuple(core), spacing))
    total = block + int(out_bytes)
    available = available_memory() if available is None else available
    if total > PLANE_MEMORY_FRACTION * available:
        raise NotEnoughMemory(
            f"{what} needs about {gib(total)} ({gib(block)} for a block of {tuple(core)} voxels' features, "
            f"{gib(out_bytes)} for the output) but this process can use about {gib(available)}; give an out= array "
            "on disk (a zarr array) for the output, or free memory")
    return total

