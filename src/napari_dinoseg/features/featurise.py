"""``featurise(image, config) -> FeatureStack``: every featuriser's features of a whole plane,
dispatched through ``FEATURISERS``. The variants (:func:`featurise_pixels` at chosen pixels,
:func:`featurise_projected` with the ViT channels projected, :func:`cached_featurise` /
:func:`keyed_featurise` through the cache) still write the classical / ViT split out themselves;
issue 26's featuriser objects give each kind these methods instead.

Also home of the feature cache (keyed by the image's content and the config, :mod:`.keys`) and of
the memory check made before anything large is allocated.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Literal, Optional, Union

import numpy as np

from ..config import FeatureConfig, config_or_default
from ..image import as_float_image, check_image_shape
from ..progress import ProgressCallback, report, within
from .channels import vit_channel_groups
from .keys import cache_key

#: Fraction of the available memory a feature stack may take before featurise refuses.
MEMORY_FRACTION = 0.5
#: Fraction of the machine's memory a :class:`FeatureCache` holds by default (at least ``MIN_CACHE_BYTES``).
CACHE_FRACTION = 0.25
MIN_CACHE_BYTES = 2**30


@dataclass(frozen=True)
class FeatureStack:
    """Per-pixel features of one 2-D image.

    Attributes
    ----------
    data : (H, W, F) float32 array
        Features, channels last (possibly a view of a channels-first buffer).
    config : FeatureConfig
        The configuration that made them.
    channel_names : tuple of str
        One name per feature channel (``F`` of them).
    attention : (H, W, heads) float32 array or None
        CLS attention of ViT featurisers; ``None`` for classical features.
    """

    data: np.ndarray
    config: FeatureConfig
    channel_names: tuple[str, ...]
    attention: Optional[np.ndarray] = None

    @property
    def shape(self) -> tuple[int, int]:
        """Spatial shape ``(H, W)``."""
        return self.data.shape[:2]

    @property
    def n_features(self) -> int:
        return self.data.shape[-1]

    @property
    def nbytes(self) -> int:
        extra = 0 if self.attention is None else self.attention.nbytes
        return self.data.nbytes + extra


def featurise(
    image: np.ndarray,
    config: Optional[FeatureConfig] = None,
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
        Feature configuration; ``FeatureConfig()`` (classical) when omitted.
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
    img, config, device = _prepared(image, config, normalised)
    featuriser = FEATURISERS[config.kind]
    return featuriser(img, config, device, progress)


def _prepared(image: np.ndarray, config: Optional[FeatureConfig], normalised: bool, projected: Optional[int] = None):
    """``(image (H, W, C) float32 normalised, resolved config, device)``, after the checks every
    featuriser shares: the image's shape, a ViT patch's size, the memory (``projected``: see
    :func:`estimate_memory`)."""
    config = config_or_default(config, FeatureConfig)
    shape = np.shape(image)
    check_image_shape(shape)
    n_channels = 1 if len(shape) == 2 else shape[-1]
    device = resolve_device(config.device)
    config = config.resolved(device.type)
    if config.uses_vit:
        from .registry import model_spec

        patch = model_spec(config.model).patch_size
        if min(shape[:2]) < patch:
            raise ValueError(
                f"image of {shape[0]}x{shape[1]} px is smaller than one {patch}x{patch} patch of {config.model}; "
                "use classical features, or upsample the image"
            )
    check_memory(config, shape[:2], n_channels, device, projected=projected)
    if normalised:
        img = np.asarray(image, dtype=np.float32)
        img = img[..., None] if img.ndim == 2 else img
    else:
        img = as_float_image(image, config)
    return img, config, device


def featurise_projected(
    image: np.ndarray,
    config: FeatureConfig,
    projection: tuple[np.ndarray, np.ndarray],
    progress: Optional[ProgressCallback] = None,
    normalised: bool = False,
    cache: Optional["FeatureCache"] = None,
) -> FeatureStack:
    """:func:`featurise` with the ViT channels replaced by a linear projection of them, which the
    ViT featuriser computes on each view's token grid: the ``(H, W, G * D)`` ViT map is never built.

    Parameters
    ----------
    image, config, progress, normalised
        As for :func:`featurise`; ``config.kind`` is ``"vit"`` or ``"hybrid"``.
    projection : ``(weights (P, G * D), bias (P,))``
        The projection of the ViT channels (e.g. a classifier's logits on them,
        :func:`napari_dinoseg.logit_space.logit_space`).
    cache
        Keeps what does not depend on the projection: the classical channels and the ViT's
        token grids (:class:`~napari_dinoseg.features.vit.TokenStore`), not the ``(H, W, G * D)`` map.

    Returns
    -------
    FeatureStack
        ``.data`` is ``(H, W, F_c + P)`` float32: the classical channels (hybrid) as :func:`featurise`
        makes them, then ``P`` channels named ``projected_<i>`` equal, up to float rounding, to
        ``featurise(...).data[..., vit] @ weights.T + bias``.
    """
    from .classical import classical_channel_names
    from .vit import vit_features

    if not config_or_default(config, FeatureConfig).uses_vit:
        raise ValueError("a projection of the ViT channels needs ViT features: kind 'vit' or 'hybrid'")
    n_projected = len(projection[0])
    img, config, device = _prepared(image, config, normalised, projected=n_projected)
    names: tuple[str, ...] = ()
    n_channels = img.shape[-1]
    n_classical = n_channels * len(classical_channel_names(config)) if config.uses_classical else 0
    data = np.empty((*img.shape[:2], n_classical + n_projected), dtype=np.float32)
    vit_progress = progress
    key = None if cache is None else cache_key(image, config)
    if config.uses_classical:
        names = _cached_classical(image, img, config, device, within(progress, 0.0, 0.1), cache,
                                  out=data[..., :n_classical]).channel_names
        vit_progress = within(progress, 0.1, 1.0)
    _, attention = vit_features(img, config, device, vit_progress, out=data[..., n_classical:], projection=projection,
                                store=_token_store(cache, key))
    _charge(cache, key)
    names += tuple(f"projected_{i}" for i in range(n_projected))
    return FeatureStack(data=data, config=config, channel_names=names, attention=attention)


def _token_store(cache: Optional["FeatureCache"], key: Optional[str]):
    """The cache's :class:`~napari_dinoseg.features.vit.TokenStore` for the ViT or hybrid features of
    cache key ``key`` (made empty on first use); ``None`` without a cache."""
    if cache is None:
        return None
    from .vit import TokenStore

    return cache.derived(("tokens", key), TokenStore)


def _charge(cache: Optional["FeatureCache"], key: Optional[str]) -> None:
    """Count a token store's bytes, grown by a featurisation, in the cache's budget."""
    if cache is not None:
        cache.recount(("tokens", key))


def _cached_classical(image: np.ndarray, img: np.ndarray, config: FeatureConfig, device, progress,
                      cache: Optional["FeatureCache"], out: Optional[np.ndarray] = None) -> FeatureStack:
    """The classical channels of a hybrid config (:func:`_classical`), through ``cache`` (keyed by
    ``image`` and the config with ``kind="classical"``), copied into ``out`` when given."""
    if cache is None:
        return _classical(img, config, device, progress, out=out)
    classical_config = dataclasses.replace(config, kind="classical")
    stack = cache.derived(("classical", cache_key(image, classical_config)),
                          lambda: _classical(img, classical_config, device, progress))
    if out is not None:
        _copy_channels_last(np.moveaxis(stack.data, -1, 0), out)
    return stack


def featurise_pixels(
    image: np.ndarray,
    config: FeatureConfig,
    pixels: tuple[np.ndarray, np.ndarray],
    progress: Optional[ProgressCallback] = None,
    normalised: bool = False,
    cache: Optional["FeatureCache"] = None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """:func:`featurise` at ``N`` pixels only, for training: the ViT channels are gathered from
    the views' token grids at those pixels (the ``(H, W, D)`` map is never built); classical
    channels are computed whole and indexed.

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
    from .vit import vit_features

    rows, cols = (np.asarray(p, np.int64).ravel() for p in pixels)
    h, w = np.shape(image)[:2]
    if len(rows) != len(cols) or (len(rows) and (rows.min() < 0 or rows.max() >= h or cols.min() < 0
                                                 or cols.max() >= w)):
        raise ValueError(f"pixels must be rows and columns of equal length inside the {h}x{w} image")
    if not config_or_default(config, FeatureConfig).uses_vit:
        stack = cached_featurise(image, config, progress, cache, normalised)
        return np.ascontiguousarray(stack.data[rows, cols]), stack.channel_names
    img, config, device = _prepared(image, config, normalised, projected=0)
    n_channels = img.shape[-1]
    parts, names, vit_progress = [], (), progress
    key = None if cache is None else cache_key(image, config)
    if config.uses_classical:
        classical = _cached_classical(image, img, config, device, within(progress, 0.0, 0.1), cache)
        parts.append(classical.data[rows, cols])
        names, vit_progress = classical.channel_names, within(progress, 0.1, 1.0)
        del classical
    data, _ = vit_features(img, config, device, vit_progress, pixels=(rows, cols), store=_token_store(cache, key))
    _charge(cache, key)
    parts.append(data)
    names += vit_channel_names(n_channels, data.shape[1])
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False), names


def feature_margin(config: FeatureConfig) -> int:
    """Pixels of context a (resolved) config's features read around a pixel: the width to
    keep around a tile so that its core does not see the tile's border."""
    margin = 0
    if config.uses_classical:
        from .classical import support_radius

        margin = support_radius(config)
    if config.uses_vit:
        from .vit import tile_margin

        margin = max(margin, tile_margin(config))
    return margin


def n_features(config: FeatureConfig, n_channels: int = 1) -> int:
    """Number of feature channels ``featurise`` returns for an image with ``n_channels``."""
    total = 0
    if config.uses_classical:
        from .classical import classical_channel_names

        total += n_channels * len(classical_channel_names(config))
    if config.uses_vit:
        from .registry import model_spec

        total += len(vit_channel_groups(n_channels)) * model_spec(config.model).embed_dim
    return total


def estimate_memory(config: FeatureConfig, shape: tuple[int, int], n_channels: int = 1, device=None,
                    projected: Optional[int] = None) -> int:
    """Peak host memory, in bytes, of :func:`featurise` on an ``(H, W)`` image of ``n_channels``.

    The normalised image, the outputs (features and, for ViT kinds, the attention) and the
    largest working set of the featurisers: the classical bank's temporaries; the ViT's
    weights, activations, gathers and tile buffers
    (:func:`napari_dinoseg.features.vit.vit_working_bytes`); for ``"hybrid"``, the classical
    buffer while it is copied into its slice of the stack. Matches the peaks measured by
    ``benchmarks/memory.py`` within about 10 %.

    Parameters
    ----------
    config
        Feature configuration (unset stride / shifts / flips: the preset of ``device``).
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
    h, w = shape
    plane = 4 * int(h) * int(w)
    image = n_channels * plane
    classical_out = classical_work = 0
    if config.uses_classical:
        from .classical import classical_channel_names, working_bytes

        classical_work = working_bytes(config, shape) + membrane_kernel_bytes(config)
        classical_out = n_channels * len(classical_channel_names(config)) * plane
    if config.kind == "classical":
        return image + classical_out + classical_work
    from .registry import model_spec
    from .vit import vit_working_bytes

    device = resolve_device(config.device) if device is None else device
    config = config.resolved(device.type)
    channels = n_features(config, n_channels) if projected is None else classical_out // plane + projected
    out = (channels + model_spec(config.model).num_heads) * plane
    vit_work = vit_working_bytes(config, shape, device)
    if config.kind == "vit":
        return image + out + vit_work
    classical_phase = classical_out + classical_work  # the stack not yet written
    return image + max(classical_phase, out + classical_out, out + vit_work)


def membrane_kernel_bytes(config: FeatureConfig) -> int:
    """Bytes the membrane projections' line kernels take while they are built: ``(16, size, size)``
    float32 grids of the orientations, about six at once (0 without membrane projections)."""
    if not config.membrane:
        return 0
    from .classical import MEMBRANE_ANGLES

    return 6 * 4 * MEMBRANE_ANGLES * config.membrane_size**2


#: The side of the smallest image, px, whose features tell what a feature config costs whatever
#: the image (:func:`check_memory`'s message).
_SMALL = 64


def check_memory(config: FeatureConfig, shape: tuple[int, int], n_channels: int = 1, device=None,
                 available: Optional[int] = None, projected: Optional[int] = None) -> int:
    """Refuse, before allocating, features that would not fit in memory.

    Returns :func:`estimate_memory` in bytes; raises
    :class:`~napari_dinoseg.memory_limits.NotEnoughMemory` (a ``ValueError``) naming the estimate
    and the fix when it exceeds ``MEMORY_FRACTION`` of ``available`` bytes (default:
    :func:`napari_dinoseg.memory_limits.available_memory`, which sees container and ``ulimit``
    limits too). Where even a 64 x 64 image's features would not fit, the message says the
    feature config is the cause, not the image's size.
    """
    from ..memory_limits import NotEnoughMemory, available_memory, gib

    estimate = estimate_memory(config, shape, n_channels, device, projected)
    if available is None:
        available = available_memory()
    if estimate > MEMORY_FRACTION * available:
        h, w = shape
        small = estimate_memory(config, (_SMALL, _SMALL), n_channels, device, projected)
        what = (f"{config.kind} features of a {h}x{w} image ({n_features(config, n_channels)} channels) need about "
                f"{gib(estimate)} at their peak, more than {MEMORY_FRACTION:.0%} of the {gib(available)} this process "
                "can still use")
        if small > MEMORY_FRACTION * available:
            raise NotEnoughMemory(
                f"{what}; the feature config is the cause, not the image (a {_SMALL}x{_SMALL} image's would need "
                f"{gib(small)}): use a smaller model, fewer views or a larger stride, or a machine with more memory")
        raise NotEnoughMemory(
            f"{what}; crop or downsample the image, use fewer sigmas / no membrane projections, or use a machine "
            "with more memory"
        )
    return estimate


def resolve_device(name: str):
    """The torch device for ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``, checking it exists."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch sees no CUDA GPU; use device='auto' or 'cpu'")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device='mps' was asked for but MPS is not available; use device='auto' or 'cpu'")
    return torch.device(name)


def _classical(img: np.ndarray, config: FeatureConfig, device, progress: Optional[ProgressCallback],
               out: Optional[np.ndarray] = None) -> FeatureStack:
    """Classical channels: a view of the filter bank's channels-first buffer, or copied into
    ``out`` (``(H, W, C * F)``, e.g. a slice of a hybrid stack) and the buffer freed."""
    from .classical import classical_channel_names, classical_features, n_classical_steps

    n_channels = img.shape[-1]
    total = n_classical_steps(config, n_channels)
    done = 0

    def step(message: str) -> None:
        nonlocal done
        done += 1
        report(progress, done, total, message)

    report(progress, 0, total, "classical features")
    chw = classical_features(img, config, device, step).cpu().numpy()
    if out is None:
        data = np.moveaxis(chw, 0, -1)
    else:
        data = _copy_channels_last(chw, out)
    base = classical_channel_names(config)
    names = base if n_channels == 1 else [f"c{c}:{n}" for c in range(n_channels) for n in base]
    return FeatureStack(data=data, config=config, channel_names=tuple(names))


#: Rows of a channels-first buffer copied to a channels-last one at a time (cache-friendly blocks).
COPY_ROWS = 64


def _copy_channels_last(chw: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Copy ``chw (F, H, W)`` into ``out (H, W, F)`` a block of rows at a time; return ``out``."""
    if out.shape != (*chw.shape[1:], chw.shape[0]) or out.dtype != np.float32:
        raise ValueError(f"out must be a float32 array of shape {(*chw.shape[1:], chw.shape[0])}, "
                         f"got {out.dtype} {out.shape}")
    for r0 in range(0, chw.shape[1], COPY_ROWS):
        out[r0:r0 + COPY_ROWS] = np.moveaxis(chw[:, r0:r0 + COPY_ROWS], 0, -1)
    return out


def _vit(img: np.ndarray, config: FeatureConfig, device, progress: Optional[ProgressCallback],
         out: Optional[np.ndarray] = None) -> FeatureStack:
    """ViT channels, written into ``out`` (``(H, W, G * D)``) when given."""
    from .vit import vit_features

    data, attention = vit_features(img, config, device, progress, out=out)
    names = vit_channel_names(img.shape[-1], data.shape[-1])
    return FeatureStack(data=data, config=config, channel_names=names, attention=attention)


def vit_channel_names(n_channels: int, n_features: int) -> tuple[str, ...]:
    """Names of the ``n_features`` ViT channels of an image of ``n_channels``: ``vit_<i>``, prefixed
    ``c<first channel>:`` per channel group when there are several."""
    groups = vit_channel_groups(n_channels)
    prefix = [""] if len(groups) == 1 else [f"c{g[0]}:" for g in groups]
    return tuple(f"{p}vit_{i}" for p in prefix for i in range(n_features // len(groups)))


def _hybrid(img: np.ndarray, config: FeatureConfig, device, progress: Optional[ProgressCallback]) -> FeatureStack:
    """Classical and ViT channels side by side (classical first), each featuriser writing its
    slice of one ``(H, W, F)`` array: no second copy of the stack. Progress spans both."""
    from .classical import classical_channel_names

    n_channels = img.shape[-1]
    n_classical = n_channels * len(classical_channel_names(config))
    data = np.empty((*img.shape[:2], n_features(config, n_channels)), dtype=np.float32)
    classical = _classical(img, config, device, within(progress, 0.0, 0.1), out=data[..., :n_classical])
    vit = _vit(img, config, device, within(progress, 0.1, 1.0), out=data[..., n_classical:])
    return FeatureStack(data=data, config=config, channel_names=classical.channel_names + vit.channel_names,
                        attention=vit.attention)


#: Feature kind -> featuriser ``(image (H, W, C) float32, config, device, progress) -> FeatureStack``.
FEATURISERS: dict[str, Callable[..., FeatureStack]] = {"classical": _classical, "vit": _vit, "hybrid": _hybrid}


def cached_featurise(image: np.ndarray, config: FeatureConfig, progress: Optional[ProgressCallback] = None,
                     cache: Optional["FeatureCache"] = None, normalised: bool = False) -> FeatureStack:
    """:func:`featurise` through ``cache``: its stack when it holds one for this image and config,
    else computed and put there; plain :func:`featurise` when ``cache`` is ``None``."""
    return as_stack(keyed_featurise(image, config, progress, cache, normalised)[1])


def keyed_featurise(image: np.ndarray, config: FeatureConfig, progress: Optional[ProgressCallback] = None,
                    cache: Optional["FeatureCache"] = None, normalised: bool = False,
                    storage: "Storage" = "float32") -> tuple[Optional[str], Union[FeatureStack, "CompactStack"]]:
    """:func:`cached_featurise` and the stack's :func:`cache_key` (``None`` without a cache), the key
    for results derived from the stack (:meth:`FeatureCache.derived`).

    ``storage`` (:func:`plane_storage` of the plane the image is a window of) says how a stack
    computed here is kept: ``"float32"`` as it is; ``"float16"`` as a :class:`CompactStack`, which
    is returned (also on this first call, so that every call sees the same values; see
    :func:`as_stack`); ``"none"``: not kept (the cache's other entries are not evicted for a
    stack that would be evicted before its next use). A stack already held is returned as held.
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if cache is None:
        return None, featurise(image, config, progress, normalised=normalised)
    key = cache_key(image, config)
    stack = cache.get(key)
    if stack is None:
        stack = featurise(image, config, progress, normalised=normalised)
        if storage == "float16":
            stack = CompactStack.encode(stack)
        if storage != "none":
            cache.put(key, stack)
    return key, stack


#: How a plane's feature windows are kept in a cache (:func:`plane_storage`).
Storage = Literal["float32", "float16", "none"]
STORAGES = ("float32", "float16", "none")


def plane_storage(float32_bytes: int, budget: int) -> Storage:
    """How the feature windows of one plane are kept in a cache of ``budget`` bytes.

    Parameters
    ----------
    float32_bytes
        Bytes of all the plane's feature windows as float32 (``sum(h * w) * F * 4``).
    budget
        The cache's ``max_bytes``.

    Returns
    -------
    ``"float32"`` when the windows and their scaled features (as many bytes again,
    :meth:`napari_dinoseg.Segmenter.scaled_features`) fit; else ``"float16"`` when the windows fit
    as :class:`CompactStack` s (half the bytes, no scaled features kept); else ``"none"``: every
    use recomputes them (a least-recently-used cache walked window by window would evict each
    window before its next use, and everything else with it).
    """
    if 2 * float32_bytes <= budget:
        return "float32"
    if float32_bytes // 2 <= budget:
        return "float16"
    return "none"


def keeps_scaled(storage: Storage, float32_bytes: int, budget: int, read_fraction: float = 1.0) -> bool:
    """Whether a cache of ``budget`` bytes also keeps the classifier's scaled features of a plane
    (:meth:`napari_dinoseg.Segmenter.scaled_features`: the signed log, the most expensive step of
    a prediction from cached features, then done once per set of training images).

    Parameters
    ----------
    storage, float32_bytes, budget
        As for :func:`plane_storage` (``storage`` its answer).
    read_fraction
        The share of the pixels the classifier reads (``1 / predict_step²`` with the guided
        filter's lattice): for ``"float16"`` windows only those are kept, as float32.

    Returns
    -------
    ``True`` for ``"float32"`` windows (:func:`plane_storage` counted their scaled features);
    for ``"float16"`` ones when the scaled lattice fits beside them; ``False`` for ``"none"``.
    """
    if storage == "float32":
        return True
    return storage == "float16" and float32_bytes // 2 + int(read_fraction * float32_bytes) <= budget


def storage_note(storage: Storage, float32_bytes: int, budget: int, scaled_bytes: int = 0) -> str:
    """A line for the user on how a plane's features are kept (``""`` when kept as they are).

    Parameters
    ----------
    storage, float32_bytes, budget
        As for :func:`plane_storage`.
    scaled_bytes
        Bytes of the scaled features kept beside ``"float16"`` windows (:func:`keeps_scaled`), or 0.
    """
    if storage == "float16":
        scaled = " with the classifier's scaled features at the pixels it reads" if scaled_bytes else ""
        return (f"features kept as float16{scaled} ({_size(float32_bytes // 2 + scaled_bytes)} of the "
                f"{_size(budget)} feature cache): later clicks reuse them")
    if storage == "none":
        share = f" ({CACHE_FRACTION:.0%} of this machine's memory)" if budget == default_cache_bytes() else ""
        return (f"features cannot be kept: {_size(float32_bytes // 2)} even as float16, over the "
                f"{_size(budget)} feature cache{share}; "
                "every click and live update recomputes them: crop the image to the region you are painting "
                "for interactive speed")
    return ""


def _size(nbytes: int) -> str:
    """``"4.4 GiB"``, or ``"12 MiB"`` below a tenth of a GiB."""
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 0.1 * 2**30 else f"{nbytes / 2**20:.0f} MiB"


def default_cache_bytes(total: Optional[int] = None) -> int:
    """The default budget of a :class:`FeatureCache`: ``CACHE_FRACTION`` of ``total`` bytes (default:
    this machine's physical memory), at least ``MIN_CACHE_BYTES``."""
    if total is None:
        import psutil

        total = psutil.virtual_memory().total
    return max(MIN_CACHE_BYTES, int(CACHE_FRACTION * total))


@dataclass(frozen=True)
class CompactStack:
    """A :class:`FeatureStack` kept in half its bytes: each channel centred and scaled, stored as float16.

    Channel ``f`` is kept as ``codes[f] = float16((x_f - centre[f]) / scale[f])``, centred on its
    median so that a channel with a small spread around a large value (a wide Gaussian blur) or
    with tiny values (a Hessian determinant at a large sigma) keeps float16's relative precision
    (about ``2**-11``) of its deviations: raw float16 would lose them.

    Attributes
    ----------
    codes : (F, H, W) float16
    centre, scale : (F,) float32
    config, channel_names, attention
        As for :class:`FeatureStack` (the attention, if any, kept as it is).
    """

    codes: np.ndarray
    centre: np.ndarray
    scale: np.ndarray
    config: FeatureConfig
    channel_names: tuple[str, ...]
    attention: Optional[np.ndarray] = None

    #: Every ``SAMPLE_STEP``-th row and column gives a channel's centre.
    SAMPLE_STEP = 8
    #: The sample's largest deviation from the centre becomes a code of this (float16's largest
    #: finite value is 65504: values 64 times as far from the centre still fit).
    SAMPLE_RANGE = 2.0**10
    #: Codes of a channel scaled by its true extremes span at most this.
    CODE_RANGE = 2.0**14

    @classmethod
    def encode(cls, stack: FeatureStack) -> "CompactStack":
        """The compact form of ``stack`` (``(H, W, F)`` float32), in one pass over it.

        Each channel's centre and scale come from a sample (every ``SAMPLE_STEP``-th row and
        column): the sample's extremes become codes of ``SAMPLE_RANGE``; a channel with values
        beyond float16's range even so is encoded again with the scale of its true extremes.
        """
        import torch

        chw = np.moveaxis(stack.data, -1, 0)  # the featurisers' channels-first buffer, when it is one
        sample = chw[:, ::cls.SAMPLE_STEP, ::cls.SAMPLE_STEP].reshape(len(chw), -1).astype(np.float64)
        sample[~np.isfinite(sample)] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN samples
            centre = np.nan_to_num(np.nanmedian(sample, axis=1))
            reach = np.nan_to_num(np.nanmax(np.abs(sample - centre[:, None]), axis=1))
        scale = np.where(reach > 0, reach / cls.SAMPLE_RANGE, 1.0)
        codes = np.empty(chw.shape, np.float16)
        peak = cls._encode(chw, codes, centre, scale)
        for f in np.flatnonzero(peak > np.finfo(np.float16).max):  # beyond the sample's range: the true extremes
            low, high = float(torch.min(torch.from_numpy(chw[f]))), float(torch.max(torch.from_numpy(chw[f])))
            scale[f] = max(abs(high - centre[f]), abs(low - centre[f])) / cls.CODE_RANGE
            cls._encode(chw[f:f + 1], codes[f:f + 1], centre[f:f + 1], scale[f:f + 1])
        return cls(codes=codes, centre=centre.astype(np.float32), scale=scale.astype(np.float32), config=stack.config,
                   channel_names=stack.channel_names, attention=stack.attention)

    @staticmethod
    def _encode(chw: np.ndarray, codes: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """``codes = float16((chw - centre) / scale)`` per channel, a block of rows at a time; returns
        each channel's largest ``|(chw - centre) / scale|`` (NaN where it has non-finite values)."""
        import torch

        x, out = torch.from_numpy(chw), torch.from_numpy(codes)
        shift = torch.from_numpy(centre.astype(np.float32))[:, None, None]
        inverse = torch.from_numpy((1 / scale).astype(np.float32))[:, None, None]
        peak = torch.zeros(len(chw))
        for r0 in range(0, chw.shape[1], COPY_ROWS):
            block = (x[:, r0:r0 + COPY_ROWS] - shift).mul_(inverse)
            low, high = torch.aminmax(block.reshape(len(chw), -1), dim=1)
            peak = torch.maximum(peak, torch.maximum(-low, high))
            out[:, r0:r0 + COPY_ROWS].copy_(block)
        return peak.numpy().astype(np.float64)

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape[1:]

    @property
    def n_features(self) -> int:
        return self.codes.shape[0]

    @property
    def nbytes(self) -> int:
        extra = 0 if self.attention is None else self.attention.nbytes
        return self.codes.nbytes + self.centre.nbytes + self.scale.nbytes + extra

    def decode(self) -> FeatureStack:
        """The float32 stack: ``.data`` ``(H, W, F)``, a view of a channels-first buffer (as the
        featurisers make it), equal to the encoded stack within float16 rounding of each channel's
        deviation from its centre."""
        return FeatureStack(data=self.region(slice(None), slice(None)), config=self.config,
                            channel_names=self.channel_names, attention=self.attention)

    def region(self, rows: slice, cols: slice, channels: Optional[list[int]] = None) -> np.ndarray:
        """``(h, w, F)`` float32 features (``F = len(channels)`` when given) of the pixels ``rows``
        x ``cols`` (slices, steps allowed), as :meth:`decode` has them, without decoding the rest:
        a view of a channels-first buffer."""
        import torch

        index = slice(None) if channels is None else list(channels)
        codes = torch.from_numpy(self.codes)[index][:, rows, cols]
        out = np.empty(tuple(codes.shape), np.float32)
        self._decode(torch.from_numpy(out), codes, index)
        return np.moveaxis(out, 0, -1)

    def pixels(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``(N, F)`` float32 features of pixels ``(rows (N,), cols (N,))`` int arrays, as
        :meth:`decode` has them, without decoding the rest."""
        import torch

        picked = torch.from_numpy(self.codes[:, rows, cols])
        out = np.empty(tuple(picked.shape), np.float32)
        self._decode(torch.from_numpy(out), picked, slice(None))
        return out.T.copy()

    def _decode(self, out, codes, channels) -> None:
        """``out = float32(codes) * scale + centre``, channel by channel (the first axis): torch
        tensors, ``channels`` the channels ``codes`` holds."""
        import torch

        shape = (-1,) + (1,) * (codes.dim() - 1)
        out.copy_(codes)
        out.mul_(torch.from_numpy(self.scale[channels]).reshape(shape))
        out.add_(torch.from_numpy(self.centre[channels]).reshape(shape))


def as_stack(held: Union[FeatureStack, CompactStack]) -> FeatureStack:
    """A cached entry as a float32 :class:`FeatureStack` (a :class:`CompactStack` decoded)."""
    return held.decode() if isinstance(held, CompactStack) else held


class FeatureCache:
    """Least-recently-used cache of feature stacks and of results derived from them, bounded in bytes.

    Parameters
    ----------
    max_bytes
        Entries are evicted, oldest use first, while the total exceeds this (the most recent
        one is always kept). Default: :func:`default_cache_bytes`, a quarter of this machine's
        memory (6 GiB on a 24 GiB machine).

    A stack is held as given: a :class:`FeatureStack`, or a :class:`CompactStack` (see
    :func:`keyed_featurise`'s ``storage``).
    """

    #: Derived results (:meth:`derived`) kept at most, least recently used dropped first.
    MAX_DERIVED = 64

    def __init__(self, max_bytes: Optional[int] = None) -> None:
        self.max_bytes = default_cache_bytes() if max_bytes is None else int(max_bytes)
        # stacks under str keys, derived results under tuple keys, in order of last use
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        """The number of stacks held."""
        return sum(isinstance(k, str) for k in self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(v) for v in self._items.values())

    def get(self, key: str) -> Optional[FeatureStack]:
        stack = self._items.get(key)
        if stack is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return stack

    def put(self, key: str, stack: FeatureStack) -> None:
        self._store(key, stack)

    def derived(self, key: tuple, compute: Callable[[], object]) -> object:
        """``compute()``, once per ``key``, for results that depend only on cached stacks (the
        feature scaling of a set of training images, an image's scaled features): ``key`` holds
        their keys (:func:`keyed_featurise`) and whatever else the result depends on. Arrays
        among the results count in ``max_bytes``."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = compute()
        self._store(key, value)
        return value

    def recount(self, key: tuple) -> None:
        """Count again the bytes of derived result ``key`` (a store that has grown), evicting the
        least recently used entries over the budget; nothing when it is not held."""
        if key in self._items:
            self._store(key, self._items[key])

    def _store(self, key: Hashable, value: object) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        derived = [k for k in self._items if isinstance(k, tuple)]
        for old in derived[: max(0, len(derived) - self.MAX_DERIVED)]:
            del self._items[old]
        while len(self._items) > 1 and self.nbytes > self.max_bytes:
            self._items.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry and reset the hit / miss counters."""
        self._items.clear()
        self.hits = self.misses = 0


def _nbytes(value: object) -> int:
    """Bytes held by a cached value: a FeatureStack, an array, or a tuple of them (0 for anything else)."""
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    return int(getattr(value, "nbytes", 0))
