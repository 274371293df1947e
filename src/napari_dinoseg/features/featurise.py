"""The featurise functions: what callers with a config (or a featuriser already built) call.

``featurise(image, config) -> FeatureStack`` is a plane's features; :func:`featurise_pixels` the
features of chosen pixels, :func:`featurise_projected` with the ViT channels projected,
:func:`cached_featurise` / :func:`keyed_featurise` through a :class:`~.cache.FeatureCache`. Each
builds the kind's :class:`~.base.Featuriser` (:func:`~.featurisers.featuriser_for`), or takes
the one given in place of ``config``, prepares the image (checks, normalisation) and calls the
featuriser's method. The kinds themselves live in ``*_featuriser.py``; the caches in
:mod:`.cache`; the stack in :mod:`.stack`. Their names are re-exported here.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from ..config import FeatureConfig
from ..progress import ProgressCallback
from .base import MEMORY_FRACTION, Featuriser, resolve_device  # noqa: F401
from .cache import (CACHE_FRACTION, MIN_CACHE_BYTES, STORAGES, CompactStack, FeatureCache, Storage,  # noqa: F401
                    as_stack, default_cache_bytes, keeps_scaled, plane_storage, storage_note)
from .channels import vit_channel_groups, vit_channel_names  # noqa: F401
from .classical_featuriser import membrane_kernel_bytes  # noqa: F401
from .featurisers import FEATURISERS, described, featuriser_for, register  # noqa: F401
from .keys import cache_key
from .stack import COPY_ROWS, FeatureStack  # noqa: F401

#: What the functions below take as ``config``: a feature config, or a featuriser a job built.
ConfigLike = Union[FeatureConfig, Featuriser, None]


def featurise(
    image: np.ndarray,
    config: ConfigLike = None,
    progress: Optional[ProgressCallback] = None,
    normalised: bool = False,
) -> FeatureStack:
    """Turn an image into per-pixel features.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array
        Greyscale or multichannel image, any real dtype, normalised by ``config.normalise``
        (see :func:`napari_dinoseg.image.as_float_image`).
    config
        Feature configuration (``FeatureConfig()``, classical, when omitted), or the
        :class:`~.base.Featuriser` a job built from one.
    progress
        ``progress(done, total, message)`` after each step; raise
        :class:`napari_dinoseg.Cancelled` from it to stop.
    normalised
        The image is already normalised (float in [0, 1], e.g. a tile of an image passed
        through :func:`~napari_dinoseg.image.as_float_image` as a whole): used as it is, so
        that tiles of one image share its intensity scale.

    Returns
    -------
    FeatureStack
        ``.data`` is ``(H, W, F)`` float32 with ``F = n_features(config, C)``.
    """
    featuriser = featuriser_for(config)
    return featuriser.features(featuriser.prepare(image, normalised), progress)


def featurise_projected(
    image: np.ndarray,
    config: ConfigLike,
    projection: tuple[np.ndarray, np.ndarray],
    progress: Optional[ProgressCallback] = None,
    normalised: bool = False,
    cache: Optional[FeatureCache] = None,
) -> FeatureStack:
    """:func:`featurise` with the ViT channels replaced by a linear projection of them
    (:meth:`~.base.Featuriser.projected`; a ViT computes it on each view's token grid: the
    ``(H, W, G * D)`` ViT map is never built).

    Parameters
    ----------
    image, config, progress, normalised
        As for :func:`featurise`; the kind has ViT channels.
    projection : ``(weights (P, G * D), bias (P,))``
        The projection of the ViT channels (e.g. a classifier's logits on them,
        :func:`napari_dinoseg.logit_space.logit_space`).
    cache
        Keeps what does not depend on the projection: the classical channels and the ViT's
        token grids (:class:`~.cache.TokenStore`), not the ``(H, W, G * D)`` map.

    Returns
    -------
    FeatureStack
        ``.data`` is ``(H, W, F_c + P)`` float32: the classical channels (hybrid) as :func:`featurise`
        makes them, then ``P`` channels named ``projected_<i>`` equal, up to float rounding, to
        ``featurise(...).data[..., vit] @ weights.T + bias``.
    """
    featuriser = featuriser_for(config)
    if not featuriser.config.uses_vit:
        raise ValueError("a projection of the ViT channels needs ViT features: kind 'vit' or 'hybrid'")
    weights, bias = projection
    img = featuriser.prepare(image, normalised, projected=len(weights))
    key = None if cache is None else cache_key(image, featuriser.config)
    return featuriser.projected(img, weights, bias, progress, cache, key)


def featurise_pixels(
    image: np.ndarray,
    config: ConfigLike,
    pixels: tuple[np.ndarray, np.ndarray],
    progress: Optional[ProgressCallback] = None,
    normalised: bool = False,
    cache: Optional[FeatureCache] = None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """:func:`featurise` at ``N`` pixels only, for training (:meth:`~.base.Featuriser.at_pixels`:
    a ViT gathers them from the views' token grids, the ``(H, W, D)`` map never built; other
    kinds' whole stack is computed, through ``cache``, and indexed).

    Parameters
    ----------
    image, config, progress, normalised
        As for :func:`featurise` (any kind).
    pixels : ``(rows (N,), cols (N,))`` int arrays
    cache
        As for :func:`featurise_projected`: the classical channels and the ViT's token grids are
        kept, and a second call (other pixels, a projection) runs no forward pass.

    Returns
    -------
    ``(features (N, F) float32, channel names)``, equal to ``featurise(...).data[rows, cols]``
    up to float rounding.
    """
    rows, cols = (np.asarray(p, np.int64).ravel() for p in pixels)
    h, w = np.shape(image)[:2]
    if len(rows) != len(cols) or (len(rows) and (rows.min() < 0 or rows.max() >= h or cols.min() < 0
                                                 or cols.max() >= w)):
        raise ValueError(f"pixels must be rows and columns of equal length inside the {h}x{w} image")
    featuriser = featuriser_for(config)
    if not featuriser.gathers_pixels:  # the whole stack, as the cache holds it for predictions
        stack = cached_featurise(image, featuriser, progress, cache, normalised)
        return np.ascontiguousarray(stack.data[rows, cols]), stack.channel_names
    img = featuriser.prepare(image, normalised, projected=0)
    key = None if cache is None else cache_key(image, featuriser.config)
    data = featuriser.at_pixels(img, rows, cols, progress, cache, key)
    return data, featuriser.channel_names(img.shape[-1])


def feature_margin(config: ConfigLike) -> int:
    """Pixels of context a config's features read around a pixel (:attr:`~.base.Featuriser.margin`):
    the width to keep around a tile so that its core does not see the tile's border."""
    return featuriser_for(config).margin


def n_features(config: ConfigLike, n_channels: int = 1) -> int:
    """Number of feature channels ``featurise`` returns for an image with ``n_channels``."""
    featuriser = config if isinstance(config, Featuriser) else described(config)  # no device needed to count
    return featuriser.n_features(n_channels)


def estimate_memory(config: ConfigLike, shape: tuple[int, int], n_channels: int = 1, device=None,
                    projected: Optional[int] = None) -> int:
    """Peak host memory, in bytes, of :func:`featurise` on an ``(H, W)`` image of ``n_channels``
    (:meth:`~.base.Featuriser.working_bytes`): the normalised image, the outputs and the largest
    working set of the featurisers. Matches the peaks measured by ``benchmarks/memory.py`` within
    about 10 %.

    Parameters
    ----------
    config
        Feature configuration (unset stride / shifts / flips: the preset of ``device``), or a featuriser.
    shape
        ``(H, W)``.
    n_channels
        Channels of the image.
    device
        Torch device the ViT runs on (default: ``config.device`` resolved); only host memory
        is counted, so a GPU's activations are not.
    projected
        For :func:`featurise_projected`: the number of channels the ViT channels are projected to.
    """
    return featuriser_for(config, device).working_bytes(shape, n_channels, projected)


def check_memory(config: ConfigLike, shape: tuple[int, int], n_channels: int = 1, device=None,
                 available: Optional[int] = None, projected: Optional[int] = None) -> int:
    """Refuse, before allocating, features that would not fit in memory
    (:meth:`~.base.Featuriser.check_memory`); returns :func:`estimate_memory` in bytes."""
    return featuriser_for(config, device).check_memory(shape, n_channels, available, projected)


def cached_featurise(image: np.ndarray, config: ConfigLike, progress: Optional[ProgressCallback] = None,
                     cache: Optional[FeatureCache] = None, normalised: bool = False) -> FeatureStack:
    """:func:`featurise` through ``cache``: its stack when it holds one for this image and config,
    else computed and put there; plain :func:`featurise` when ``cache`` is ``None``."""
    return as_stack(keyed_featurise(image, config, progress, cache, normalised)[1])


def keyed_featurise(image: np.ndarray, config: ConfigLike, progress: Optional[ProgressCallback] = None,
                    cache: Optional[FeatureCache] = None, normalised: bool = False,
                    storage: Storage = "float32", keep: Optional[tuple[slice, slice]] = None,
                    ) -> tuple[Optional[str], Union[FeatureStack, CompactStack]]:
    """:func:`cached_featurise` and the stack's :func:`cache_key` (``None`` without a cache), the key
    for results derived from the stack (:meth:`FeatureCache.derived`).

    ``storage`` (:func:`plane_storage` of the plane the image is a window of) says how a stack
    computed here is kept: ``"float32"`` as it is; ``"float16"`` as a :class:`CompactStack`, which
    is returned (also on this first call, so that every call sees the same values; see
    :func:`as_stack`); ``"none"``: not kept (the cache's other entries are not evicted for a
    stack that would be evicted before its next use). A stack already held is returned as held.
    ``keep`` (``(rows, cols)`` of the image): the stack is looked up under the key of that part
    and, with ``"float16"``, only that part is kept (a large plane's window: its core and the
    smoothing's reach, all that is read of it); a stack computed here and not kept is whole.
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    featuriser = featuriser_for(config)
    if cache is None:
        return None, featurise(image, featuriser, progress, normalised=normalised)
    key = part_key(cache_key(image, featuriser.config), keep)
    stack = cache.get(key)
    if stack is None:
        stack = featurise(image, featuriser, progress, normalised=normalised)
        if storage == "float16":
            stack = CompactStack.encode(stack, keep)
        if storage != "none":
            cache.put(key, stack)
    return key, stack


def part_key(key: str, keep: Optional[tuple[slice, slice]]) -> str:
    """The cache key of a window's features kept in part (``keep``: ``(rows, cols)`` of the
    window), or ``key`` itself for the whole window."""
    return key if keep is None else key + "@" + ",".join(f"{s.start}:{s.stop}" for s in keep)
