"""Per-pixel descriptors shared by the clustering pipelines (CAS, part co-segmentation,
correspondences): unit-length descriptors, standardised channels, a seeded pixel sample and
the saliency map of CLS attention."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from .features.featurise import FeatureStack


def unit_descriptors(stacks: Sequence["FeatureStack"], step: int = 4) -> list[np.ndarray]:
    """Each stack's features as unit-length (L2) descriptors, ``(H, W, F)`` float32 each.

    When any stack holds classical channels they are first standardised over all stacks
    (:func:`standardise`, statistics on every ``step``-th row and column): classical channels
    have arbitrary scales and mostly positive values, so that without it every pixel's
    direction is nearly the same and cosine distances vanish.
    """
    from .features.channels import ChannelLayout

    feats = [s.data for s in stacks]
    if any(ChannelLayout.of(s.channel_names).classical for s in stacks):
        feats = standardise(feats, step)
    return [unit_rows(f) for f in feats]


def unit_rows(data: np.ndarray) -> np.ndarray:
    """``data (..., F)`` scaled to unit L2 norm along the last axis (all-zero rows stay zero), float32."""
    flat = np.asarray(data, dtype=np.float32).reshape(-1, data.shape[-1])
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat / np.maximum(norm, 1e-12)).reshape(data.shape)


def standardise(feats: list[np.ndarray], step: int = 4,
                clip: Optional[tuple[float, float]] = None) -> list[np.ndarray]:
    """Channels of ``feats`` (each ``(H, W, F)``) to zero mean and unit variance over all of them,
    the statistics taken on every ``step``-th row and column (a channel constant there is only
    centred); float32. ``clip``: ``(low, high)`` percentiles of that sample each channel is first
    clipped to (the statistics then are the clipped sample's)."""
    n = feats[0].shape[-1]
    sample = np.concatenate([f[::step, ::step].reshape(-1, n) for f in feats]).astype(np.float64)
    if clip is not None:
        low, high = np.percentile(sample, clip, axis=0)
        sample = np.clip(sample, low, high)
        feats = [np.clip(f, low, high) for f in feats]
    mean, std = sample.mean(0), sample.std(0)
    std[std < 1e-6] = 1.0
    return [((f - mean) / std).astype(np.float32) for f in feats]


def subsample(flat: list[np.ndarray], total: int, seed: int, rows: Optional[list[np.ndarray]] = None) -> np.ndarray:
    """About ``total`` seeded random rows, shared equally among the slices ``flat`` (each
    ``(N, F)``), drawn from ``rows`` (index arrays, one per slice) when given."""
    rng = np.random.default_rng(seed)
    per = max(1, total // len(flat))
    if rows is None:
        return np.concatenate([f[rng.choice(len(f), min(per, len(f)), replace=False)] for f in flat])
    return np.concatenate([f[rng.choice(r, min(per, len(r)), replace=False)] for f, r in zip(flat, rows)])


def saliency(attention: np.ndarray) -> np.ndarray:
    """Saliency map of CLS attention ``(H, W, heads)``: the mean over heads, min-max scaled to
    [0, 1] within the image (all ones when the attention is constant: nothing stands out, so
    nothing is background); ``(H, W)`` float32."""
    att = np.asarray(attention, dtype=np.float32)
    if att.ndim != 3:
        raise ValueError(f"attention must have shape (H, W, heads), got {att.shape}")
    mean = att.mean(-1)
    low, high = float(mean.min()), float(mean.max())
    if not high > low:
        return np.ones(mean.shape, np.float32)
    return ((mean - low) / (high - low)).astype(np.float32)
