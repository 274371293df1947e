"""Unsupervised class-agnostic segmentation (CAS): clusters, foreground, merging, object boxes.

1. L2-normalised per-pixel features; k-means fitted on a seeded pixel subsample (over all
   images in stack mode, so class ids mean the same in every slice); every pixel assigned.
2. Attention density of a cluster: the mean CLS attention over its pixels; clusters above
   the mean density are foreground. Without attention (classical features) the largest
   cluster is background and the rest foreground, with a warning.
3. Semantic distance: the mode of the histogram (20 bins, right edge of the modal bin) of
   the cosine distances between foreground and background centroids, times ``granularity``.
4. Complete-linkage agglomerative merging of the centroids below that distance.
5. Optional dense CRF on the merged classes; foreground recomputed on the merged classes.
6. Boxes: one per connected component (above ``min_area``) of every foreground class, plus a
   superbox around the largest foreground component; of any pair with IoU > 0.8 one is dropped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from .config import CASConfig, config_or_default
from .progress import ProgressCallback, report

if TYPE_CHECKING:
    from .features.featurise import FeatureStack

#: Boxes overlapping more than this (IoU) are duplicates: the later one is dropped.
BOX_IOU = 0.8
HIST_BINS = 20


@dataclass
class CASResult:
    """Output of :func:`segment_unsupervised`.

    Attributes
    ----------
    labels : (H, W) or (Z, H, W) int32
        Merged classes 1..M (the same ids across slices in stack mode).
    foreground : same shape, bool
    boxes : list of (N_z, 4) int arrays, one per slice
        ``(row0, col0, row1, col1)``, end-exclusive.
    superbox : list of int or None, one per slice
        Index into that slice's boxes of the superbox.
    foreground_classes : (F,) int array
    threshold : float
        The semantic distance used for merging.
    n_clusters : int
        k-means clusters before merging.
    messages : list of str
    """

    labels: np.ndarray
    foreground: np.ndarray
    boxes: list
    superbox: list
    foreground_classes: np.ndarray
    threshold: float
    n_clusters: int
    messages: list


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
    from .features.featurise import FeatureStack, featurise

    config = config_or_default(config, CASConfig)
    stacked = isinstance(data, (list, tuple))
    items = list(data) if stacked else [data]
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
    messages: list[str] = []
    attention = [s.attention for s in stacks]
    if any(a is None for a in attention):
        attention = None
        messages.append("no attention in these features (classical?): the largest cluster is taken as background")
        warnings.warn(messages[-1], UserWarning, stacklevel=2)

    report(progress, 650, 1000, "k-means")
    feats = [s.data for s in stacks]
    if any(s.config.uses_classical for s in stacks):
        # classical channels have arbitrary scales and mostly positive values: without
        # standardising, every pixel's direction is nearly the same and cosine distances vanish
        feats = _standardise(feats)
    feats = [_normalise(f) for f in feats]
    clusters, centroids = _kmeans(feats, config)
    density = None if attention is None else _density(clusters, [a.mean(-1) for a in attention], len(centroids))
    sizes = np.bincount(np.concatenate([c.ravel() for c in clusters]), minlength=len(centroids))
    fg = _foreground_classes(density, sizes)

    report(progress, 800, 1000, "merging")
    threshold = semantic_distance(centroids, fg, config.granularity)
    merge = merge_centroids(centroids, threshold)  # cluster -> merged id 1..M
    labels = np.stack([merge[c] for c in clusters]).astype(np.int32)

    if config.crf:
        if any(r is None for r in raw):
            raise ValueError("crf=True with features needs the images: pass images=[...]")
        report(progress, 850, 1000, "dense CRF")
        labels = np.stack([_crf_labels(r, lab, config) for r, lab in zip(raw, labels)])

    m = int(labels.max())
    merged_sizes = np.bincount(labels.ravel(), minlength=m + 1)[1:]
    merged_density = None if attention is None else _density([lab - 1 for lab in labels], [a.mean(-1) for a in attention], m)
    fg_merged = _foreground_classes(merged_density, merged_sizes) + 1
    foreground = np.isin(labels, fg_merged)
    boxes, superbox = [], []
    min_area = config.min_area if config.min_area is not None else max(64, round(0.002 * labels[0].size))
    for lab, fgm in zip(labels, foreground):
        b, s = object_boxes(lab, fgm, fg_merged, min_area)
        boxes.append(b)
        superbox.append(s)
    report(progress, 1000, 1000, "done")
    if not stacked:
        labels, foreground = labels[0], foreground[0]
    return CASResult(labels=labels, foreground=foreground, boxes=boxes, superbox=superbox,
                     foreground_classes=fg_merged, threshold=threshold, n_clusters=len(centroids), messages=messages)


def _standardise(feats: list[np.ndarray]) -> list[np.ndarray]:
    """Channels to zero mean and unit variance over all slices (a regular grid of pixels)."""
    n = feats[0].shape[-1]
    sample = np.concatenate([f[::4, ::4].reshape(-1, n) for f in feats]).astype(np.float64)
    mean, std = sample.mean(0), sample.std(0)
    std[std < 1e-6] = 1.0
    return [((f - mean) / std).astype(np.float32) for f in feats]


def _normalise(data: np.ndarray) -> np.ndarray:
    flat = np.asarray(data, dtype=np.float32).reshape(-1, data.shape[-1])
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat / np.maximum(norm, 1e-12)).reshape(data.shape)


def _kmeans(feats: list[np.ndarray], config: CASConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """k-means on a seeded subsample of all slices' pixels; returns per-slice cluster maps
    (0..k-1) and the L2-normalised centroids ``(k, F)``."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(config.seed)
    flat = [f.reshape(-1, f.shape[-1]) for f in feats]
    per = max(1, config.sample // len(flat))
    sample = np.concatenate([f[rng.choice(len(f), min(per, len(f)), replace=False)] for f in flat])
    k = min(config.k, len(np.unique(sample.round(5), axis=0)))
    if k < 2:
        raise ValueError("the image is uniform: nothing to cluster")
    km = KMeans(n_clusters=k, n_init=1, random_state=config.seed).fit(sample)
    clusters = [km.predict(f).reshape(feats[i].shape[:-1]) for i, f in enumerate(flat)]
    return clusters, _normalise(km.cluster_centers_)


def _density(clusters: list[np.ndarray], attention: list[np.ndarray], k: int) -> np.ndarray:
    """Mean attention over each cluster's pixels, ``(k,)`` (NaN for empty clusters)."""
    idx = np.concatenate([c.ravel() for c in clusters])
    att = np.concatenate([a.ravel() for a in attention]).astype(np.float64)
    sums = np.bincount(idx, weights=att, minlength=k)
    counts = np.bincount(idx, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _foreground_classes(density: Optional[np.ndarray], sizes: np.ndarray) -> np.ndarray:
    """Indices of the foreground classes: density above the mean density of the non-empty
    classes; without attention, every class but the largest."""
    present = sizes > 0
    if density is None:
        fg = present.copy()
        fg[int(np.argmax(sizes))] = False
        return np.flatnonzero(fg)
    mean = np.nanmean(density[present])
    return np.flatnonzero(present & (density > mean))


def semantic_distance(centroids: np.ndarray, foreground: np.ndarray, granularity: float = 1.0) -> float:
    """Right edge of the modal bin of the foreground-background centroid cosine distances
    (20 bins), times ``granularity``. With no foreground or no background cluster, all
    pairwise distances are used instead."""
    c = _normalise(np.asarray(centroids, dtype=np.float64))
    fg = np.zeros(len(c), bool)
    fg[foreground] = True
    dist = 1.0 - c @ c.T
    pairs = dist[np.ix_(fg, ~fg)].ravel() if fg.any() and (~fg).any() else dist[np.triu_indices(len(c), 1)]
    counts, edges = np.histogram(pairs, bins=HIST_BINS)
    return float(edges[int(np.argmax(counts)) + 1] * granularity)


def merge_centroids(centroids: np.ndarray, threshold: float) -> np.ndarray:
    """Complete-linkage agglomerative clustering of centroids by cosine distance: groups whose
    members are all closer than ``threshold`` merge. Returns merged ids 1..M per centroid,
    numbered by first appearance."""
    from scipy.cluster.hierarchy import fcluster, linkage

    c = np.asarray(centroids, dtype=np.float64)
    if len(c) == 1:
        return np.ones(1, np.int32)
    tree = linkage(c, method="complete", metric="cosine")
    raw = fcluster(tree, t=threshold, criterion="distance")
    _, first = np.unique(raw, return_index=True)
    order = {r: i + 1 for i, r in enumerate(raw[np.sort(first)])}
    return np.array([order[r] for r in raw], np.int32)


def object_boxes(labels: np.ndarray, foreground: np.ndarray, classes: Sequence[int], min_area: int):
    """Boxes ``(N, 4)`` ``(row0, col0, row1, col1)`` of every connected component (area >=
    ``min_area``) of each foreground class, then the superbox around the largest connected
    component of ``foreground``; duplicates (IoU > 0.8 with an earlier box) dropped.
    Returns ``(boxes, index of the superbox or None)``."""
    from skimage.measure import label as connected, regionprops

    boxes = []
    for cls in classes:
        for region in regionprops(connected(labels == cls, connectivity=2)):
            if region.area >= min_area:
                boxes.append(region.bbox)
    super_index = None
    regions = regionprops(connected(foreground, connectivity=2))
    if regions:
        largest = max(regions, key=lambda r: r.area)
        if largest.area >= min_area:
            boxes.append(largest.bbox)
            super_index = len(boxes) - 1
    kept: list = []
    for i, box in enumerate(boxes):
        if all(box_iou(box, boxes[j]) <= BOX_IOU for j in kept):
            kept.append(i)
        elif i == super_index:  # the superbox duplicates an object box: that box is the superbox
            super_index = next(j for j in kept if box_iou(box, boxes[j]) > BOX_IOU)
    out = np.array([boxes[i] for i in kept], dtype=np.int64).reshape(-1, 4)
    return out, (None if super_index is None else kept.index(super_index))


def box_iou(a, b) -> float:
    """IoU of two ``(row0, col0, row1, col1)`` end-exclusive boxes."""
    r0, c0 = max(a[0], b[0]), max(a[1], b[1])
    r1, c1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, r1 - r0) * max(0, c1 - c0)
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    return inter / float(area(a) + area(b) - inter)


def _crf_labels(image: np.ndarray, labels: np.ndarray, config: CASConfig) -> np.ndarray:
    """CRF on a soft one-hot of the labels (0.9 on the label); returns relabelled 1..M."""
    from .crf import crf_refine

    m = int(labels.max())
    proba = np.full((*labels.shape, m), 0.1 / max(m - 1, 1), np.float32)
    np.put_along_axis(proba, (labels - 1)[..., None], 0.9, axis=-1)
    return (crf_refine(image, proba, config.crf_config, config.features).argmax(-1) + 1).astype(np.int32)
