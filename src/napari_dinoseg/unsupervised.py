"""Unsupervised class-agnostic segmentation (CAS): clusters, foreground, merging, object boxes.

With attention (DINOv2 or hybrid features):

1. L2-normalised per-pixel features; k-means fitted on a seeded pixel subsample (over all
   images in stack mode, so class ids mean the same in every slice); every pixel assigned.
2. Attention density of a cluster: the mean CLS attention over its pixels; clusters above
   the mean density are foreground.
3. Semantic distance: the mode of the histogram (20 bins, right edge of the modal bin) of
   the cosine distances between foreground and background centroids, times ``granularity``.
4. Complete-linkage agglomerative merging of the centroids below that distance.

Without attention (classical features), a rule of its own, since there is neither
attention nor a semantic distance to merge by:

1. A few smooth channels: the Gaussian-smoothed intensity at scales up to 4 px, each clipped
   to its 2nd..98th percentile (a scratch or a dust particle does not become a class) and
   standardised.
2. k-means fitted on a seeded subsample of the calmer half of the pixels (gradient of the
   finest channel below its median): edges, blurred into rims of intermediate grey, would
   otherwise pose as a phase of their own.
3. The number of classes: start at 2 and add one while that raises the silhouette, averaged
   per class (a small phase counts as much as the matrix), by more than 0.05; at most
   min(k, 6).
4. The background is the class with the largest connected component (the matrix that
   surrounds the objects; it need not be the largest class); it is class 1, the others
   follow by decreasing area. Every other class is foreground, and an object is a connected
   region of the foreground as a whole (so the rim of intermediate grey that blurring leaves
   around a bright object belongs to that object's box).

Then, for both:

5. Optional dense CRF on the classes; foreground recomputed on them (attention density, or
   the background rule of step 4).
6. Boxes: one per connected component (above ``min_area``) of every foreground class (without
   attention: of the foreground), plus a superbox around the largest foreground component; of
   any pair with IoU > 0.8 one is dropped.
7. Whether the boxes describe objects (:func:`boxes_are_meaningful`): on a continuous
   microstructure (a network spanning the image, grains or cells packed closer than their own
   width, irregular branching regions) they are clutter; ``boxes_shown`` says so and
   ``boxes_note`` says why. The boxes are computed either way.

This module is the pipeline's public face: :func:`segment_unsupervised` and :class:`CASResult`.
The steps live in :mod:`~napari_dinoseg.cas_clusters` (k-means, and the classical rule's
classes), :mod:`~napari_dinoseg.cas_foreground` (which classes are foreground),
:mod:`~napari_dinoseg.cas_merging` (semantic distance, merging) and
:mod:`~napari_dinoseg.cas_boxes` (boxes, whether they describe objects); their names are
importable from here too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from .cas_boxes import (BOX_IOU, CONVEX_SOLIDITY, IRREGULAR_SOLIDITY, NETWORK_SHARE, PACKED_GAP,
                        PACKED_GAP_IRREGULAR, box_iou, boxes_are_meaningful, object_boxes)
from .cas_clusters import (CALM_QUANTILE, CLIP_PERCENTILES, MAX_CLASSES, SILHOUETTE_GAIN, SILHOUETTE_SAMPLE,
                           SMOOTH_SIGMA_MAX, class_silhouette, classical_classes, kmeans_clusters,
                           number_of_classes, smooth_channels)
from .cas_foreground import attention_density, background_class, dense_classes, foreground_classes
from .cas_merging import HIST_BINS, merge_centroids, semantic_distance
from .config import CASConfig, config_or_default
from .descriptors import unit_descriptors
from .progress import ProgressCallback, report

if TYPE_CHECKING:
    from .features.featurise import FeatureStack

_kmeans = kmeans_clusters  # its name here before the split: benchmarks/cas_quality.py imports it

__all__ = ["BOX_IOU", "CALM_QUANTILE", "CLIP_PERCENTILES", "CONVEX_SOLIDITY", "HIST_BINS", "IRREGULAR_SOLIDITY",
           "MAX_CLASSES", "NETWORK_SHARE", "NO_ATTENTION", "PACKED_GAP", "PACKED_GAP_IRREGULAR", "SILHOUETTE_GAIN",
           "SILHOUETTE_SAMPLE", "SMOOTH_SIGMA_MAX", "CASResult", "attention_density", "background_class",
           "box_iou", "boxes_are_meaningful", "class_silhouette", "classical_classes", "dense_classes",
           "foreground_classes", "kmeans_clusters", "merge_centroids", "number_of_classes", "object_boxes",
           "segment_unsupervised", "semantic_distance", "smooth_channels"]

NO_ATTENTION = ("no attention in these features (classical?): the class with the largest connected region is "
                "taken as background")


@dataclass
class CASResult:
    """Output of :func:`segment_unsupervised`.

    Attributes
    ----------
    labels : (H, W) or (Z, H, W) int32
        Merged classes 1..M (the same ids across slices in stack mode); without attention,
        1 is the background and the others follow by decreasing area.
    foreground : same shape, bool
    boxes : list of (N_z, 4) int arrays, one per slice
        ``(row0, col0, row1, col1)``, end-exclusive.
    superbox : list of int or None, one per slice
        Index into that slice's boxes of the superbox.
    foreground_classes : (F,) int array
    threshold : float
        The semantic distance used for merging (NaN without attention: nothing is merged).
    n_clusters : int
        k-means clusters before merging (without attention: the classes chosen).
    messages : list of str
    silhouettes : dict of int to float
        Without attention: the per-class silhouette of each number of classes tried; empty otherwise.
    boxes_shown : bool
        Whether the boxes describe separate objects (:func:`boxes_are_meaningful`); on a continuous
        microstructure they are clutter, and the widget does not draw them. ``boxes`` holds them
        either way.
    boxes_note : str
        In plain words, why the boxes are shown or hidden.
    """

    labels: np.ndarray
    foreground: np.ndarray
    boxes: list
    superbox: list
    foreground_classes: np.ndarray
    threshold: float
    n_clusters: int
    messages: list
    silhouettes: dict = field(default_factory=dict)
    boxes_shown: bool = True
    boxes_note: str = ""


def segment_unsupervised(
    data: Union[np.ndarray, "FeatureStack", Sequence],
    config: Optional[CASConfig] = None,
    progress: Optional[ProgressCallback] = None,
    images: Optional[Sequence[np.ndarray]] = None,
) -> CASResult:
    """Segment one image, or a stack together, into class-agnostic regions.

    Parameters
    ----------
    data
        An image ``(H, W)`` / ``(H, W, C)``, a ``FeatureStack``, or a sequence of either
        (stack mode: one clustering for all, class ids shared across slices).
    config
        ``CASConfig()`` when omitted (DINOv2 features, k = 80).
    progress
        ``progress(done, total, message)``; may raise ``Cancelled``.
    images
        The images behind feature stacks, for the CRF (needed when ``config.crf`` and
        ``data`` holds features).

    Returns
    -------
    CASResult
    """
    config = config_or_default(config, CASConfig)
    stacked = isinstance(data, (list, tuple))
    stacks, raw = _feature_stacks(list(data) if stacked else [data], config, progress, images)
    attention = [s.attention for s in stacks]
    if any(a is None for a in attention):
        report(progress, 650, 1000, "k-means")
        labels, silhouettes = classical_classes(stacks, config)
        threshold, n_clusters, attention = float("nan"), int(labels.max()), None
        messages = [f"{NO_ATTENTION}; {n_clusters} classes of the smoothed intensity, chosen by silhouette"]
        warnings.warn(messages[-1], UserWarning, stacklevel=2)
    else:
        labels, threshold, n_clusters = _attention_classes(stacks, attention, config, progress)
        silhouettes, messages = {}, []

    if config.crf:
        if any(r is None for r in raw):
            raise ValueError("crf=True with features needs the images: pass images=[...]")
        report(progress, 850, 1000, "dense CRF")
        labels = np.stack([_crf_labels(r, lab, config) for r, lab in zip(raw, labels)])

    fg_merged = foreground_classes(labels, attention)
    foreground = np.isin(labels, fg_merged)
    boxes, superbox = [], []
    min_area = config.min_area if config.min_area is not None else max(64, round(0.002 * labels[0].size))
    for lab, fgm in zip(labels, foreground):
        # without attention, a foreground object is a connected region of the foreground as a
        # whole: the rim of intermediate grey around a bright object is part of that object
        b, s = object_boxes(lab, fgm, fg_merged, min_area) if attention is not None else \
            object_boxes(fgm.astype(np.int32), fgm, [1], min_area)
        boxes.append(b)
        superbox.append(s)
    shown, note = boxes_are_meaningful(foreground if stacked else foreground[0], min_area)
    report(progress, 1000, 1000, "done")
    if not stacked:
        labels, foreground = labels[0], foreground[0]
    return CASResult(labels=labels, foreground=foreground, boxes=boxes, superbox=superbox,
                     foreground_classes=fg_merged, threshold=threshold, n_clusters=n_clusters, messages=messages,
                     silhouettes=silhouettes, boxes_shown=shown, boxes_note=note)


def _feature_stacks(items: list, config: CASConfig, progress: Optional[ProgressCallback],
                    images: Optional[Sequence[np.ndarray]]) -> tuple[list, list]:
    """Feature stacks of the items (featurising images with ``config.features``) and the
    images behind them (``None`` where unknown); all of one shape."""
    from .features.featurise import FeatureStack, featurise

    if not items:
        raise ValueError("no images given")
    n = len(items)
    stacks, raw = [], []
    for i, item in enumerate(items):
        if isinstance(item, FeatureStack):
            stacks.append(item)
            raw.append(None if images is None else images[i])
        else:
            sub = (lambda d, t, m, i=i: report(progress, int(600 * (i + d / max(t, 1)) / n), 1000, m))
            stacks.append(featurise(item, config.features, sub))
            raw.append(item)
    shapes = {s.shape for s in stacks}
    if len(shapes) > 1:
        raise ValueError(f"stack mode needs slices of one shape, got {sorted(shapes)}")
    return stacks, raw


def _attention_classes(stacks: list, attention: list, config: CASConfig,
                       progress: Optional[ProgressCallback]) -> tuple[np.ndarray, float, int]:
    """Steps 1-4 with attention: ``(labels (Z, H, W) int32 1..M, merging distance, k)``."""
    report(progress, 650, 1000, "k-means")
    feats = unit_descriptors(stacks)
    clusters, centroids = kmeans_clusters(feats, config)
    density = attention_density(clusters, [a.mean(-1) for a in attention], len(centroids))
    sizes = np.bincount(np.concatenate([c.ravel() for c in clusters]), minlength=len(centroids))
    fg = dense_classes(density, sizes)

    report(progress, 800, 1000, "merging")
    threshold = semantic_distance(centroids, fg, config.granularity)
    merge = merge_centroids(centroids, threshold)  # cluster -> merged id 1..M
    return np.stack([merge[c] for c in clusters]).astype(np.int32), threshold, len(centroids)


def _crf_labels(image: np.ndarray, labels: np.ndarray, config: CASConfig) -> np.ndarray:
    """CRF on a soft one-hot of the labels (0.9 on the label); returns relabelled 1..M."""
    from .crf import refine_labels

    return refine_labels(image, labels - 1, int(labels.max()), config.crf_config, config.features) + 1
