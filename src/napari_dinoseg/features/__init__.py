"""Featurisers: image ``(H, W[, C])`` -> per-pixel features ``(H, W, F)``."""

from .featurise import FeatureCache, FeatureStack, cache_key, featurise, n_features

__all__ = ["FeatureCache", "FeatureStack", "cache_key", "featurise", "n_features"]
