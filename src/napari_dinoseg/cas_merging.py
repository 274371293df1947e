"""Merging the k-means clusters of unsupervised segmentation (CAS), features with attention.

Steps 3 and 4 of :mod:`napari_dinoseg.unsupervised`: the semantic distance (the modal
foreground-background centroid distance, :func:`semantic_distance`) and the complete-linkage
merging of the centroids closer than it (:func:`merge_centroids`).
"""

from __future__ import annotations

import numpy as np

from .descriptors import unit_rows

HIST_BINS = 20


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
