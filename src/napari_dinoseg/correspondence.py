"""Sparse point correspondences between two images, after Amir et al., "Deep ViT Features as
Dense Visual Descriptors" (2022).

1. Both images' features are averaged over square cells (by default the ViT's stride, larger
   when an image would have more than ``MAX_CELLS`` cells), unit-normalised, and log-binned
   (:func:`log_bin`): each cell's descriptor is its own with its 8 neighbours' at distance 1,
   then the 8 means of 3 x 3 cells at distance 3, and so on, so that it describes a growing
   context at a falling resolution.
2. Best buddies: pairs of cells, one per image, each the other's nearest neighbour under
   cosine similarity.
3. Saliency: each cell's CLS attention (mean over heads, min-max scaled per image); pairs
   below ``min_saliency`` in either image are dropped.
4. Spread: the remaining pairs are clustered by k-means on their two descriptors into ``n``
   clusters, and the most salient pair of each cluster is kept.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Optional

import numpy as np

from .config import FeatureConfig, config_or_default
from .descriptors import saliency, unit_descriptors, unit_rows
from .progress import ProgressCallback, report, within

if TYPE_CHECKING:
    from .features.featurise import FeatureStack

#: Features when none are given: the keys of block 9 of 12, the paper's choice for correspondences.
DEFAULT_CONFIG = FeatureConfig(kind="vit", facet="key", layer=9)
#: Cell size in pixels for features without a ViT stride (classical).
DEFAULT_CELL = 8
#: The default cell grows until each image has at most this many cells.
MAX_CELLS = 2500
#: An explicit ``cell`` may give at most this many cells per image (the similarity matrix
#: holds the product of the two images' counts).
MAX_EXPLICIT_CELLS = 10000
#: Pairs whose saliency (in [0, 1]) is below this in either image are dropped (the paper's value).
MIN_SALIENCY = 0.05
#: Log-binning levels: 2 gives 17 bins (the cell and 8 neighbours, 8 means of 3 x 3 cells).
LEVELS = 2


def correspondences(
    image_a: np.ndarray,
    image_b: np.ndarray,
    config: Optional[FeatureConfig] = None,
    n: int = 50,
    *,
    cell: Optional[int] = None,
    min_saliency: float = MIN_SALIENCY,
    levels: int = LEVELS,
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Corresponding points of two images: salient, spread-out best buddies of log-binned features.

    Parameters
    ----------
    image_a, image_b : (H, W) or (H, W, C) arrays
        The two images; their sizes may differ, their channel counts may not.
    config
        Feature configuration passed to :func:`~napari_dinoseg.featurise` unchanged;
        ``FeatureConfig(kind="vit", facet="key", layer=9)`` when omitted (the paper's keys of the
        tenth of twelve blocks).
    n
        The most pairs returned.
    cell, min_saliency, levels, seed
        As for :func:`correspondences_from_features`.
    progress
        ``progress(done, total, message)``; may raise ``Cancelled``.

    Returns
    -------
    pairs_a, pairs_b : (m, 2) int64 arrays
        ``(row, col)`` pixel coordinates (cell centres), ``pairs_a[i]`` in ``image_a``
        corresponding to ``pairs_b[i]`` in ``image_b``, by decreasing saliency; ``m <= n``
        (see :func:`correspondences_from_features`).
    """
    from .features.featurise import featurise

    _check_n(n)
    channels = [1 if np.ndim(im) == 2 else np.shape(im)[-1] for im in (image_a, image_b)]
    if channels[0] != channels[1]:
        raise ValueError(f"the images have {channels[0]} and {channels[1]} channels: correspondences need "
                         "images of one kind (convert both to greyscale or to RGB)")
    config = DEFAULT_CONFIG if config is None else config_or_default(config, FeatureConfig)
    features_a = featurise(image_a, config, within(progress, 0.0, 0.45))
    features_b = featurise(image_b, config, within(progress, 0.45, 0.9))
    report(progress, 900, 1000, "best buddies")
    pairs = correspondences_from_features(features_a, features_b, n, cell=cell, min_saliency=min_saliency,
                                          levels=levels, seed=seed)
    report(progress, 1000, 1000, "done")
    return pairs


def correspondences_from_features(
    features_a: "FeatureStack",
    features_b: "FeatureStack",
    n: int = 50,
    *,
    cell: Optional[int] = None,
    min_saliency: float = MIN_SALIENCY,
    levels: int = LEVELS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`correspondences` of two images' feature stacks.

    Parameters
    ----------
    features_a, features_b : FeatureStack
        Features of the two images, with the same channels (one config).
    n
        The most pairs returned. When fewer than ``n`` best buddies pass ``min_saliency`` all
        of them are returned; when their descriptors hold fewer than ``n`` distinct values, one
        pair per distinct value at most. Never padded.
    cell
        Cell size in pixels (the features are averaged over ``cell x cell`` squares; rows and
        columns beyond the last whole cell are left out). Default: the ViT's stride, or
        ``DEFAULT_CELL`` without a ViT, grown until each image has at most ``MAX_CELLS`` cells.
    min_saliency
        Pairs whose saliency (CLS attention, min-max scaled to [0, 1] per image) is below this
        in either image are dropped. Features without attention (classical) have a uniform
        saliency of 1: every best buddy passes, and ties are broken by similarity.
    levels
        Log-binning levels (:func:`log_bin`).
    seed
        Seed of the k-means that spreads the pairs.

    Returns
    -------
    pairs_a, pairs_b : (m, 2) int64 arrays, ``m <= n``
        ``(row, col)`` of the cells' centre pixels (``index * cell + cell // 2``), by decreasing
        saliency (the mean of the two), then similarity.
    """
    from .features.featurise import FeatureStack

    _check_n(n)
    for name, f in (("features_a", features_a), ("features_b", features_b)):
        if not isinstance(f, FeatureStack):
            raise TypeError(f"{name} must be a FeatureStack (from featurise), got {type(f).__name__}")
    _check_same_features(features_a, features_b)
    if not isinstance(levels, (int, np.integer)) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    cell = _cell_size(features_a, features_b, cell)

    pooled = [_pooled(f, cell) for f in (features_a, features_b)]
    grids = unit_descriptors(pooled, step=1)
    desc = [unit_rows(log_bin(g, levels)).reshape(-1, g.shape[-1] * (1 + 8 * levels)) for g in grids]
    sal = [np.ones(p.shape, np.float32) if p.attention is None else saliency(p.attention) for p in pooled]
    similarity = desc[0] @ desc[1].T
    ia, ib = best_buddies(similarity)
    keep = (sal[0].ravel()[ia] >= min_saliency) & (sal[1].ravel()[ib] >= min_saliency)
    ia, ib = ia[keep], ib[keep]
    score = (sal[0].ravel()[ia] + sal[1].ravel()[ib]) / 2
    chosen = _spread(np.concatenate([desc[0][ia], desc[1][ib]], axis=1), score, similarity[ia, ib], n, seed)
    return tuple(_centres(idx[chosen], p.shape[1], cell) for idx, p in zip((ia, ib), pooled))


def log_bin(grid: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """Log-binned descriptors of a grid of descriptors.

    Parameters
    ----------
    grid : (h, w, D) float array
    levels
        Level 0 takes the cell and its 8 neighbours; level ``k >= 1`` takes the 8 means of
        ``3**k x 3**k`` squares centred ``3**k`` cells away (up, down, left, right and the
        diagonals). Positions outside the grid take the nearest cell's value.

    Returns
    -------
    (h, w, (1 + 8 * levels) * D) float32
    """
    from scipy.ndimage import uniform_filter

    grid = np.asarray(grid, dtype=np.float32)
    if grid.ndim != 3:
        raise ValueError(f"grid must have shape (h, w, D), got {grid.shape}")
    h, w, _ = grid.shape
    rows, cols = np.arange(h), np.arange(w)
    bins = []
    for level in range(levels):
        size = 3**level
        means = grid if size == 1 else uniform_filter(grid, size=(size, size, 1), mode="nearest")
        for dy in (-size, 0, size):
            for dx in (-size, 0, size):
                if level and dy == dx == 0:
                    continue  # the centre is level 0's
                r, c = np.clip(rows + dy, 0, h - 1), np.clip(cols + dx, 0, w - 1)
                bins.append(means[r[:, None], c[None, :]])
    return np.concatenate(bins, axis=-1)


def best_buddies(similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours of a similarity matrix ``(N_a, N_b)``: ``(ia, ib)``, int arrays
    with ``similarity[ia[i]].argmax() == ib[i]`` and ``similarity[:, ib[i]].argmax() == ia[i]``,
    by increasing ``ia``."""
    nn_ab = similarity.argmax(1)
    nn_ba = similarity.argmax(0)
    ia = np.flatnonzero(nn_ba[nn_ab] == np.arange(len(nn_ab)))
    return ia, nn_ab[ia]


def _spread(descriptors: np.ndarray, score: np.ndarray, similarity: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of at most ``n`` candidate pairs, by decreasing ``score`` then ``similarity``: all
    when there are at most ``n``, else the best of each of ``n`` k-means clusters of ``descriptors``."""
    order = np.lexsort((-similarity, -score))  # best first
    if len(order) <= n:
        return order
    from sklearn.cluster import KMeans

    k = min(n, len(np.unique(descriptors, axis=0)))
    clusters = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(descriptors)
    _, first = np.unique(clusters[order], return_index=True)  # each cluster's best pair
    return order[np.sort(first)]


def _centres(index: np.ndarray, width: int, cell: int) -> np.ndarray:
    """``(m, 2)`` int64 ``(row, col)`` centre pixels of flat cell indices of a grid ``width`` cells wide."""
    rows, cols = np.divmod(index.astype(np.int64), width)
    return np.stack([rows, cols], axis=-1) * cell + cell // 2


def _pooled(features: "FeatureStack", cell: int) -> "FeatureStack":
    """``features`` (and its attention) averaged over ``cell x cell`` squares: a stack of shape
    ``(H // cell, W // cell)``."""
    def pool(a: Optional[np.ndarray]) -> Optional[np.ndarray]:
        if a is None:
            return None
        h, w = a.shape[0] // cell, a.shape[1] // cell
        blocks = np.asarray(a[: h * cell, : w * cell], dtype=np.float32).reshape(h, cell, w, cell, -1)
        return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)

    return dataclasses.replace(features, data=pool(features.data), attention=pool(features.attention))


def _cell_size(features_a: "FeatureStack", features_b: "FeatureStack", cell: Optional[int]) -> int:
    """The cell size in pixels (see :func:`correspondences_from_features`), checked against both images."""
    shapes = [features_a.shape, features_b.shape]
    if cell is None:  # a ViT's token cell (its stride, the tile alignment), else the default
        from .features.featurisers import described

        alignment = described(features_a.config).alignment or 1
        cell = alignment if alignment > 1 else DEFAULT_CELL
        cell = max(cell, math.ceil(math.sqrt(max(h * w for h, w in shapes) / MAX_CELLS)))
    elif not isinstance(cell, (int, np.integer)) or isinstance(cell, bool) or cell < 1:
        raise ValueError(f"cell must be a positive integer (pixels), got {cell!r}")
    for h, w in shapes:
        if min(h, w) < cell:
            raise ValueError(f"an image of {h}x{w} px is smaller than one cell of {cell} px: use a smaller cell "
                             "or a larger image")
        if (h // cell) * (w // cell) > MAX_EXPLICIT_CELLS:
            raise ValueError(f"cells of {cell} px make {(h // cell) * (w // cell)} cells of a {h}x{w} image, more "
                             f"than {MAX_EXPLICIT_CELLS}: use larger cells (or leave cell=None)")
    return int(cell)


def _check_same_features(features_a: "FeatureStack", features_b: "FeatureStack") -> None:
    """Features of the two images must be comparable: the same channels of the same model."""
    if features_a.channel_names != features_b.channel_names:
        raise ValueError(f"the features differ ({features_a.n_features} and {features_b.n_features} channels, "
                         "or other channel names): featurise both images with one config, from images with "
                         "the same number of channels")
    from .features.channels import ChannelLayout

    ca, cb = features_a.config, features_b.config
    if ChannelLayout.of(features_a.channel_names).vit and (ca.model, ca.weights) != (cb.model, cb.weights):
        raise ValueError(f"the features come from different ViTs ({ca.model}, weights {ca.weights!r} and "
                         f"{cb.model}, weights {cb.weights!r}): featurise both images with one config")


def _check_n(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
        raise TypeError(f"n must be an integer, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
