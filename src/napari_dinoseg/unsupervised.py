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
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from .config import CASConfig, config_or_default
from .descriptors import subsample, unit_descriptors, unit_rows
from .progress import ProgressCallback, report

if TYPE_CHECKING:
    from .features.featurise import FeatureStack

#: Boxes overlapping more than this (IoU) are duplicates: the later one is dropped.
BOX_IOU = 0.8
HIST_BINS = 20
#: Classical rule: the Gaussian-smoothed intensity channels up to this scale (px) are clustered.
SMOOTH_SIGMA_MAX = 4.0
#: Classical rule: each clustered channel is clipped to these percentiles first.
CLIP_PERCENTILES = (2.0, 98.0)
#: Classical rule: the most classes tried (fewer when ``k`` is smaller).
MAX_CLASSES = 6
#: Classical rule: k-means is fitted on the pixels whose gradient is below this quantile.
CALM_QUANTILE = 0.5
#: Classical rule: pixels of the subsample the silhouette is computed on.
SILHOUETTE_SAMPLE = 2000
#: Classical rule: one more class must raise the per-class silhouette by more than this.
SILHOUETTE_GAIN = 0.05
#: Boxes: hidden when the largest foreground region holds more than this share of the foreground
#: and touches two opposite borders of the image (a network spanning the image).
NETWORK_SHARE = 0.5
#: Boxes: hidden when the gaps between foreground regions are narrower than this times the regions
#: (mean distance of a background pixel to the foreground over the mean distance of a foreground
#: pixel to the background). Measured with classical CAS: NASA superalloy SEM 0.48-0.96 (18
#: images), ssTEM cells 0.83-1.08 (10 slices); random discs at 40 % cover 1.13-1.22, nuclei 3.4.
PACKED_GAP = 1.1
#: Boxes: the same, for irregular regions (area-weighted mean solidity below
#: :data:`CONVEX_SOLIDITY`): interlocking regions this close are a microstructure (the tldr
#: superalloy SEM: 1.21, solidity 0.81), while convex ones (packed beads, discs) stay objects.
#: Particles 2.4, nuclei 3.4; thresholded smoothed noise at 30 % cover 1.8.
PACKED_GAP_IRREGULAR = 1.5
#: Boxes: regions with an area-weighted mean solidity at least this are convex (discs 0.97,
#: particles 0.95; superalloy 0.71-0.83, ssTEM cells 0.74-0.79, nuclei with clumps 0.83).
CONVEX_SOLIDITY = 0.9
#: Boxes: hidden when the area-weighted mean solidity of the foreground regions is below this
#: (nuclei 0.83, particles 0.95; thresholded smoothed noise at 30 % cover 0.50-0.71).
IRREGULAR_SOLIDITY = 0.7
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

    m = int(labels.max())
    if attention is None:
        fg_merged = np.setdiff1d(np.unique(labels), [background_class(labels)])
    else:
        merged_sizes = np.bincount(labels.ravel(), minlength=m + 1)[1:]
        merged_density = _density([lab - 1 for lab in labels], [a.mean(-1) for a in attention], m)
        fg_merged = _foreground_classes(merged_density, merged_sizes) + 1
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
    clusters, centroids = _kmeans(feats, config)
    density = _density(clusters, [a.mean(-1) for a in attention], len(centroids))
    sizes = np.bincount(np.concatenate([c.ravel() for c in clusters]), minlength=len(centroids))
    fg = _foreground_classes(density, sizes)

    report(progress, 800, 1000, "merging")
    threshold = semantic_distance(centroids, fg, config.granularity)
    merge = merge_centroids(centroids, threshold)  # cluster -> merged id 1..M
    return np.stack([merge[c] for c in clusters]).astype(np.int32), threshold, len(centroids)


def classical_classes(stacks: Sequence["FeatureStack"], config: CASConfig) -> tuple[np.ndarray, dict]:
    """Classes of features without attention, from their smoothed intensity channels.

    Parameters
    ----------
    stacks
        Feature stacks of one shape ``(H, W)``; the Gaussian channels up to
        ``SMOOTH_SIGMA_MAX`` px are used when there are any (all channels otherwise).
    config
        ``sample``, ``seed`` and ``k`` (at most ``min(k, MAX_CLASSES)`` classes) are used.

    Returns
    -------
    labels : (Z, H, W) int32
        Classes 1..M over all slices: 1 the background (:func:`background_class`), the
        others by decreasing area.
    silhouettes : dict
        Per-class silhouette of each number of classes tried (up to the first that did not
        raise it by more than ``SILHOUETTE_GAIN``).
    """
    from sklearn.cluster import KMeans

    channels, finest = smooth_channels(stacks[0].channel_names)
    feats = _clip_standardise([s.data[..., channels] for s in stacks])
    flat = [f.reshape(-1, f.shape[-1]) for f in feats]
    sample = subsample(flat, config.sample, config.seed, rows=[_calm_pixels(f[..., finest]) for f in feats])
    top = min(config.k, MAX_CLASSES, len(np.unique(sample.round(5), axis=0)))
    if top < 2:
        raise ValueError("the image is uniform: nothing to cluster")
    rng = np.random.default_rng(config.seed)
    probe = sample[rng.choice(len(sample), min(SILHOUETTE_SAMPLE, len(sample)), replace=False)]
    fits, silhouettes = {}, {}
    for n in range(2, top + 1):  # one more class while it raises the silhouette clearly
        fits[n] = KMeans(n_clusters=n, n_init=1, random_state=config.seed).fit(sample)
        silhouettes[n] = class_silhouette(probe, fits[n].predict(probe))
        if n > 2 and silhouettes[n] <= silhouettes[n - 1] + SILHOUETTE_GAIN:
            break
    n = number_of_classes(silhouettes, SILHOUETTE_GAIN)
    clusters = np.stack([fits[n].predict(f).reshape(feats[0].shape[:-1]) for f in flat])
    background = background_class(clusters + 1) - 1
    by_area = np.argsort(-np.bincount(clusters.ravel(), minlength=n), kind="stable")
    order = [background, *(c for c in by_area if c != background)]
    rank = np.empty(n, np.int32)
    rank[order] = np.arange(1, n + 1)
    return rank[clusters], silhouettes


def background_class(labels: np.ndarray) -> int:
    """The class (of ``labels``, ``(H, W)`` or ``(Z, H, W)``, ids >= 1) with the largest
    8-connected region in any slice: the matrix around the objects; ties go to the larger class."""
    from skimage.measure import label as connected

    best, background = (-1, -1), 0
    sizes = np.bincount(labels.ravel())
    for cls in np.flatnonzero(sizes):
        region = max(int(np.bincount(connected(plane == cls, connectivity=2).ravel())[1:].max(initial=0))
                     for plane in labels.reshape(-1, *labels.shape[-2:]))
        if (region, sizes[cls]) > best:
            best, background = (region, sizes[cls]), int(cls)
    return background


def smooth_channels(names: Sequence[str]) -> tuple[list[int], list[int]]:
    """The channels the classical rule clusters, among classical channel names (``gaussian_s2``,
    or ``c0:gaussian_s2`` for multichannel images).

    Returns
    -------
    channels : list of int
        Indices of the Gaussian-smoothed intensity channels up to ``SMOOTH_SIGMA_MAX`` px (the
        finest Gaussian when all are coarser; every channel when there is no Gaussian).
    finest : list of int
        Positions, within ``channels``, of those at the finest scale (edges are found there).
    """
    from .features.channels import ChannelLayout

    sigma = ChannelLayout.of(names).gaussian_sigma
    if not sigma:
        return list(range(len(names))), list(range(len(names)))
    low = min(sigma.values())
    channels = [i for i, s in sigma.items() if s <= max(SMOOTH_SIGMA_MAX, low)]
    return channels, [j for j, i in enumerate(channels) if sigma[i] == low]


def number_of_classes(silhouettes: dict, gain: float) -> int:
    """Start at 2 classes and add one while that raises the silhouette by more than ``gain``
    (``silhouettes``: number of classes -> silhouette)."""
    n = 2
    while n + 1 in silhouettes and silhouettes[n + 1] > silhouettes[n] + gain:
        n += 1
    return n


def class_silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette of ``points (N, F)`` labelled ``labels (N,)``, averaged within each label,
    then over labels: a small class weighs as much as a large one. -1 for fewer than two labels."""
    from sklearn.metrics import silhouette_samples

    present = np.unique(labels)
    if len(present) < 2:
        return -1.0
    values = silhouette_samples(points, labels)
    return float(np.mean([values[labels == c].mean() for c in present]))


def _calm_pixels(feats: np.ndarray) -> np.ndarray:
    """Flat indices of the pixels of ``feats (H, W, F)`` whose gradient magnitude (summed over
    the channels) is at most its ``CALM_QUANTILE`` quantile: away from edges."""
    grad = np.zeros(feats.shape[:2], np.float64)
    for c in range(feats.shape[-1]):
        gy, gx = np.gradient(feats[..., c].astype(np.float64))
        grad += np.hypot(gy, gx)
    grad = grad.ravel()
    return np.flatnonzero(grad <= np.quantile(grad, CALM_QUANTILE))


def _clip_standardise(feats: list[np.ndarray]) -> list[np.ndarray]:
    """Channels clipped to ``CLIP_PERCENTILES`` and standardised, both over all slices (a
    regular grid of pixels)."""
    n = feats[0].shape[-1]
    grid = np.concatenate([f[::4, ::4].reshape(-1, n) for f in feats]).astype(np.float64)
    low, high = np.percentile(grid, CLIP_PERCENTILES, axis=0)
    grid = np.clip(grid, low, high)
    mean, std = grid.mean(0), grid.std(0)
    std[std < 1e-6] = 1.0
    return [((np.clip(f, low, high) - mean) / std).astype(np.float32) for f in feats]


def _kmeans(feats: list[np.ndarray], config: CASConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """k-means on a seeded subsample of all slices' pixels; returns per-slice cluster maps
    (0..k-1) and the L2-normalised centroids ``(k, F)``."""
    from sklearn.cluster import KMeans

    flat = [f.reshape(-1, f.shape[-1]) for f in feats]
    sample = subsample(flat, config.sample, config.seed)
    k = min(config.k, len(np.unique(sample.round(5), axis=0)))
    if k < 2:
        raise ValueError("the image is uniform: nothing to cluster")
    km = KMeans(n_clusters=k, n_init=1, random_state=config.seed).fit(sample)
    clusters = [km.predict(f).reshape(feats[i].shape[:-1]) for i, f in enumerate(flat)]
    return clusters, unit_rows(km.cluster_centers_)


def _density(clusters: list[np.ndarray], attention: list[np.ndarray], k: int) -> np.ndarray:
    """Mean attention over each cluster's pixels, ``(k,)`` (NaN for empty clusters)."""
    idx = np.concatenate([c.ravel() for c in clusters])
    att = np.concatenate([a.ravel() for a in attention]).astype(np.float64)
    sums = np.bincount(idx, weights=att, minlength=k)
    counts = np.bincount(idx, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _foreground_classes(density: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Indices of the foreground classes: density above the mean density of the non-empty classes."""
    present = sizes > 0
    mean = np.nanmean(density[present])
    return np.flatnonzero(present & (density > mean))


def semantic_distance(centroids: np.ndarray, foreground: np.ndarray, granularity: float = 1.0) -> float:
    """Right edge of the modal bin of the foreground-background centroid cosine distances
    (20 bins), times ``granularity``. With no foreground or no background cluster, all
    pairwise distances are used instead."""
    c = unit_rows(np.asarray(centroids, dtype=np.float64))
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


def boxes_are_meaningful(foreground: np.ndarray, min_area: int = 64) -> tuple[bool, str]:
    """Whether object boxes describe the foreground: separate, compact objects on a background.

    On a continuous microstructure the boxes are clutter (dozens of overlapping rectangles that
    say nothing the foreground layer does not). A slice's boxes are hidden, for the first of
    these that holds:

    1. *network*: the largest foreground region (8-connected) holds more than
       :data:`NETWORK_SHARE` of the foreground and touches two opposite borders of the image;
    2. *packed*: the gaps between foreground regions are narrower than :data:`PACKED_GAP` times
       the regions themselves (the mean distance of a background pixel to the foreground over
       the mean distance of a foreground pixel to the background; for two phases sharing their
       boundaries this is about the ratio of their mean widths), or than
       :data:`PACKED_GAP_IRREGULAR` times when the regions are not convex (their area-weighted
       mean solidity below :data:`CONVEX_SOLIDITY`): grains or cells separated by thin
       boundaries, as in a superalloy or ssTEM of tissue;
    3. *irregular*: the solidity (area / convex hull area) of the regions of ``min_area`` px or
       more, averaged with their areas as weights, is below :data:`IRREGULAR_SOLIDITY`.

    Parameters
    ----------
    foreground : (H, W) or (Z, H, W) bool
        The foreground mask of one image, or of each slice of a stack.
    min_area : int
        Regions smaller than this (px) get no box and do not count for the solidity.

    Returns
    -------
    shown : bool
        For a stack, True when the boxes are meaningful in at least half of the slices.
    note : str
        In plain words why, e.g. ``"boxes hidden: the foreground is one connected network
        touching opposite borders of the image, not separate objects"``; for a stack, the most
        common reason and in how many slices it held.
    """
    foreground = np.asarray(foreground, bool)
    if foreground.ndim == 2:
        return _slice_boxes_verdict(foreground, min_area)
    if foreground.ndim != 3:
        raise ValueError(f"foreground must be (H, W) or (Z, H, W); got shape {foreground.shape}")
    verdicts = [_slice_boxes_verdict(f, min_area) for f in foreground]
    hidden = [note for shown, note in verdicts if not shown]
    n = len(verdicts)
    if 2 * len(hidden) <= n:
        return True, f"boxes shown: separate objects in {n - len(hidden)} of {n} slices"
    reason = max(dict.fromkeys(hidden), key=hidden.count)  # the most common; ties: the first slice's
    return False, f"{reason} (in {len(hidden)} of {n} slices)"


def _slice_boxes_verdict(foreground: np.ndarray, min_area: int) -> tuple[bool, str]:
    """:func:`boxes_are_meaningful` for one ``(H, W)`` bool slice; the notes of hidden boxes carry no
    numbers, so that a stack's slices can be counted by reason."""
    from scipy.ndimage import distance_transform_edt
    from skimage.measure import label as connected, regionprops

    total = int(foreground.sum())
    if total == 0:
        return True, "boxes shown: no foreground, no boxes"
    if total == foreground.size:
        return False, "boxes hidden: the whole image is foreground, there are no separate objects"
    regions = regionprops(connected(foreground, connectivity=2))
    largest = max(regions, key=lambda r: r.area)
    r0, c0, r1, c1 = largest.bbox
    h, w = foreground.shape
    if largest.area > NETWORK_SHARE * total and ((r0 == 0 and r1 == h) or (c0 == 0 and c1 == w)):
        return False, ("boxes hidden: the foreground is one connected network touching opposite borders of the "
                       "image, not separate objects")
    objects = [r for r in regions if r.area >= min_area]
    if not objects:
        return True, f"boxes shown: no foreground region of {min_area} px or more, no boxes"
    solidity = float(np.average([r.solidity for r in objects], weights=[r.area for r in objects]))
    gap = distance_transform_edt(~foreground)[~foreground].mean()
    width = distance_transform_edt(foreground)[foreground].mean()
    if gap < (PACKED_GAP if solidity >= CONVEX_SOLIDITY else PACKED_GAP_IRREGULAR) * width:
        return False, ("boxes hidden: the foreground regions are packed close together, the gaps between them "
                       "hardly wider than the regions (grains or cells of a continuous microstructure), not "
                       "separate objects on a background")
    if solidity < IRREGULAR_SOLIDITY:
        return False, ("boxes hidden: the foreground regions are irregular, branching shapes, not compact "
                       "objects")
    return True, "boxes shown: the foreground is separate, compact objects"


def _crf_labels(image: np.ndarray, labels: np.ndarray, config: CASConfig) -> np.ndarray:
    """CRF on a soft one-hot of the labels (0.9 on the label); returns relabelled 1..M."""
    from .crf import refine_labels

    return refine_labels(image, labels - 1, int(labels.max()), config.crf_config, config.features) + 1
