"""Part co-segmentation of a set of images, after Amir et al., "Deep ViT Features as Dense
Visual Descriptors" (2022).

1. Every pixel's features as a unit-length descriptor (classical channels standardised first
   over the whole set).
2. The foreground, one of:

   - ``"saliency"`` (the paper's votes): k-means of all images' descriptors together into
     ``n_clusters`` clusters (more than the parts); a cluster is salient in an image when its
     pixels there have a mean saliency (CLS attention, mean over heads, min-max scaled per
     image) above ``min_saliency``, and foreground when it is salient in at least a fraction
     ``votes`` of the images;
   - ``"all"``: every pixel;
   - one boolean mask per image.

3. Parts: k-means of the foreground descriptors of all images together into ``n_parts``
   clusters; ids 1..n_parts are shared by the set, numbered by decreasing total area; 0 is
   the background.
4. Optionally, a dense CRF on each image's labels.

k-means is fitted on a seeded sample of about ``sample`` pixels shared equally among the
images, and every pixel is assigned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from .config import CRFConfig, FeatureConfig, config_or_default
from .descriptors import saliency, subsample, unit_descriptors
from .progress import ProgressCallback, report, within

if TYPE_CHECKING:
    from .features.featurise import FeatureStack

#: A cluster is salient in an image when its mean saliency there exceeds this (the paper's value).
MIN_SALIENCY = 0.065
#: A cluster is foreground when it is salient in at least this fraction of the images (the paper's).
VOTES = 0.75
#: Pixels, over all images, that k-means is fitted on.
SAMPLE = 20000
#: k-means restarts (the best fit is kept).
KMEANS_INITS = 4
#: Clusters of the saliency stage at the least (``2 * n_parts`` when more).
MIN_CLUSTERS = 10

Foreground = Union[str, Sequence[np.ndarray]]


def segment_parts(
    images: Sequence[Union[np.ndarray, "FeatureStack"]],
    config: Optional[FeatureConfig] = None,
    n_parts: int = 4,
    *,
    foreground: Foreground = "saliency",
    n_clusters: Optional[int] = None,
    votes: float = VOTES,
    min_saliency: float = MIN_SALIENCY,
    crf: Union[bool, CRFConfig] = False,
    crf_images: Optional[Sequence[np.ndarray]] = None,
    sample: int = SAMPLE,
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
) -> list[np.ndarray]:
    """Segment a set of images into common parts, with part ids shared across the set.

    Parameters
    ----------
    images
        Images ``(H, W)`` / ``(H, W, C)`` (sizes may differ, channel counts may not), or their
        ``FeatureStack``\\ s (made with one config), or a mix.
    config
        Feature configuration passed to :func:`~napari_dinoseg.featurise` unchanged for the
        images; ``FeatureConfig(kind="vit", facet="key")`` (the last block's keys, the paper's
        choice) when omitted. Not used for feature stacks.
    n_parts
        Number of parts (k-means clusters of the foreground).
    foreground
        ``"saliency"`` (needs features with attention: ``"vit"`` or ``"hybrid"``), ``"all"``, or a
        sequence of one boolean mask ``(H, W)`` per image.
    n_clusters
        Clusters of the ``"saliency"`` stage; default ``max(MIN_CLUSTERS, 2 * n_parts)``.
    votes
        Fraction of the images, in (0, 1], in which a cluster must be salient to be foreground.
    min_saliency
        A cluster is salient in an image when its pixels' mean saliency there (in [0, 1])
        exceeds this.
    crf
        ``True`` or a ``CRFConfig``: refine each image's labels with the dense CRF (needs the
        images: ``images`` themselves, or ``crf_images`` when ``images`` holds feature stacks).
    crf_images
        The images of ``images``' feature stacks, one per item, for the CRF.
    sample
        Pixels, over all images, that each k-means is fitted on.
    seed
        Seed of the sample and of k-means.
    progress
        ``progress(done, total, message)``; may raise ``Cancelled``.

    Returns
    -------
    list of (H, W) uint8 arrays (uint16 for more than 255 parts), one per image
        0 the background, 1..n_parts the parts by decreasing total area over the set.
    """
    from .features.featurise import FeatureStack, featurise

    items = _check_items(images)
    _check_parameters(n_parts, n_clusters, votes, sample)
    crf_config, crf_sources = _crf_config(crf, items, crf_images)
    config = FeatureConfig(kind="vit", facet="key") if config is None else config_or_default(config, FeatureConfig)
    stacks = []
    for i, item in enumerate(items):
        sub = within(progress, 0.7 * i / len(items), 0.7 * (i + 1) / len(items))
        stacks.append(item if isinstance(item, FeatureStack) else featurise(item, config, sub))
    if len({s.channel_names for s in stacks}) > 1:
        raise ValueError("the images' features differ (other channels): featurise every image with one config")
    masks = _foreground_masks(foreground, stacks)

    descriptors = [d.reshape(-1, d.shape[-1]) for d in unit_descriptors(stacks)]
    if masks is None:
        report(progress, 750, 1000, "salient clusters")
        n_clusters = max(MIN_CLUSTERS, 2 * n_parts) if n_clusters is None else n_clusters
        masks = salient_foreground(descriptors, [s.attention for s in stacks], [s.shape for s in stacks],
                                   n_clusters, votes, min_saliency, sample, seed)
    report(progress, 850, 1000, "parts")
    labels = _parts(descriptors, masks, n_parts, sample, seed)
    if crf_config is not None:
        from .crf import refine_labels

        report(progress, 900, 1000, "dense CRF")
        labels = [refine_labels(im, lab, n_parts + 1, crf_config, s.config)
                  for im, lab, s in zip(crf_sources, labels, stacks)]
    report(progress, 1000, 1000, "done")
    dtype = np.uint8 if n_parts <= np.iinfo(np.uint8).max else np.uint16
    return [lab.astype(dtype) for lab in labels]


def salient_foreground(descriptors: list[np.ndarray], attention: list[np.ndarray], shapes: list[tuple[int, int]],
                       n_clusters: int, votes: float = VOTES, min_saliency: float = MIN_SALIENCY,
                       sample: int = SAMPLE, seed: int = 0) -> list[np.ndarray]:
    """The foreground by saliency votes (step 2 of the module's description).

    Parameters
    ----------
    descriptors : list of (H * W, F) float32 arrays
        Unit descriptors of each image's pixels.
    attention : list of (H, W, heads) arrays
        Each image's CLS attention.
    shapes : list of (H, W)
    n_clusters, votes, min_saliency, sample, seed
        As for :func:`segment_parts`.

    Returns
    -------
    list of (H, W) bool arrays
        Pixels of the clusters salient in at least ``votes`` of the images.
    """
    km = _kmeans(subsample(descriptors, sample, seed), n_clusters, seed, exact=False)
    k = km.n_clusters
    clusters = [km.predict(d) for d in descriptors]
    ballot = np.zeros(k, np.int64)
    for c, att in zip(clusters, attention):
        counts = np.bincount(c, minlength=k)
        sums = np.bincount(c, weights=saliency(att).ravel(), minlength=k)
        ballot += (counts > 0) & (sums > min_saliency * counts)
    chosen = np.flatnonzero(ballot >= votes * len(descriptors))
    return [np.isin(c, chosen).reshape(shape) for c, shape in zip(clusters, shapes)]


def _parts(descriptors: list[np.ndarray], masks: list[np.ndarray], n_parts: int, sample: int,
           seed: int) -> list[np.ndarray]:
    """Step 3: ``(H, W)`` int32 labels per image, 0 background, parts 1..n_parts by decreasing area."""
    rows = [np.flatnonzero(m.ravel()) for m in masks]
    if not any(len(r) for r in rows):
        raise ValueError("the foreground is empty in every image: with foreground='saliency', lower votes or "
                         "min_saliency, or pass foreground='all' or one boolean mask per image")
    km = _kmeans(subsample(descriptors, sample, seed, rows=rows), n_parts, seed, exact=True)
    assigned = [km.predict(d[r]) for d, r in zip(descriptors, rows)]
    area = np.bincount(np.concatenate(assigned), minlength=n_parts)
    rank = np.empty(n_parts, np.int32)
    rank[np.argsort(-area, kind="stable")] = np.arange(1, n_parts + 1)
    labels = []
    for m, r, a in zip(masks, rows, assigned):
        lab = np.zeros(m.size, np.int32)
        lab[r] = rank[a]
        labels.append(lab.reshape(m.shape))
    return labels


def _kmeans(sample: np.ndarray, k: int, seed: int, exact: bool):
    """k-means of ``sample (N, F)`` fitted into ``k`` clusters, or, unless ``exact``, into as
    many as it has distinct rows when fewer."""
    from sklearn.cluster import KMeans

    distinct = len(np.unique(sample.round(5), axis=0))
    if distinct < k:
        if exact:
            raise ValueError(f"the foreground has {distinct} distinct descriptors, fewer than the {k} parts "
                             "asked for: ask for fewer parts, or use richer features")
        k = distinct
    if k < 1:
        raise ValueError("no pixels to cluster")
    return KMeans(n_clusters=k, n_init=KMEANS_INITS, random_state=seed).fit(sample)


def _foreground_masks(foreground: Foreground, stacks: list) -> Optional[list[np.ndarray]]:
    """Masks of ``foreground`` (``None`` for ``"saliency"``, after checking there is attention)."""
    if isinstance(foreground, str):
        if foreground == "all":
            return [np.ones(s.shape, bool) for s in stacks]
        if foreground != "saliency":
            raise ValueError(f"foreground must be 'saliency', 'all' or one boolean mask per image, got {foreground!r}")
        if any(s.attention is None for s in stacks):
            raise ValueError("foreground='saliency' needs features with attention (kind 'vit' or 'hybrid'): pass "
                             "foreground='all' or one boolean mask per image")
        return None
    masks = list(foreground)
    if len(masks) != len(stacks):
        raise ValueError(f"foreground holds {len(masks)} masks for {len(stacks)} images: give one per image")
    out = []
    for i, (m, s) in enumerate(zip(masks, stacks)):
        m = np.asarray(m)
        if m.shape != s.shape:
            raise ValueError(f"foreground mask {i} has shape {m.shape}, its image {s.shape}")
        if m.dtype != bool and not np.isin(m, (0, 1)).all():
            raise ValueError(f"foreground mask {i} must be boolean (or 0 / 1), got values {np.unique(m)[:5]}...")
        out.append(m.astype(bool))
    return out


def _check_items(images) -> list:
    """The images as a list, checked: a non-empty sequence, of one channel count."""
    from .features.featurise import FeatureStack

    if isinstance(images, (np.ndarray, FeatureStack)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a list of images or feature stacks, got {type(images).__name__}")
    items = list(images)
    if not items:
        raise ValueError("no images given: pass a list of at least one image")
    channels = {1 if np.ndim(im) == 2 else np.shape(im)[-1] for im in items if not isinstance(im, FeatureStack)}
    if len(channels) > 1:
        raise ValueError(f"the images have different numbers of channels ({sorted(channels)}): convert them all to "
                         "greyscale or all to RGB")
    return items


def _check_parameters(n_parts: int, n_clusters: Optional[int], votes: float, sample: int) -> None:
    def integer(x) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if not integer(n_parts) or not 1 <= n_parts <= np.iinfo(np.uint16).max:
        raise ValueError(f"n_parts must be an integer in 1..65535, got {n_parts!r}")
    if n_clusters is not None and (not integer(n_clusters) or n_clusters < 2):
        raise ValueError(f"n_clusters must be an integer >= 2 (or None), got {n_clusters!r}")
    if not 0 < votes <= 1:
        raise ValueError(f"votes must be a fraction of the images in (0, 1], got {votes!r}")
    if not integer(sample) or sample < 1:
        raise ValueError(f"sample must be a positive integer, got {sample!r}")


def _crf_config(crf: Union[bool, CRFConfig], items: list,
                crf_images: Optional[Sequence[np.ndarray]]) -> tuple[Optional[CRFConfig], list]:
    """The CRF's config (``None`` for no CRF) and the images it refines; the CRF needs the images
    themselves."""
    from .features.featurise import FeatureStack

    if crf is False or crf is None:
        return None, []
    config = CRFConfig() if crf is True else config_or_default(crf, CRFConfig, "crf")
    if crf_images is not None:
        if len(crf_images) != len(items):
            raise ValueError(f"crf_images holds {len(crf_images)} images for {len(items)} items: give one per item")
        return config, list(crf_images)
    if any(isinstance(item, FeatureStack) for item in items):
        raise ValueError("crf needs the images: pass the images rather than their feature stacks, or crf_images=")
    return config, items
