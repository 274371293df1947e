"""What is kept between clicks: :class:`FeatureCache` (feature stacks and results derived from
them, least recently used first out, bounded in bytes), :class:`CompactStack` (a stack in half
its bytes), :class:`TokenStore` (a ViT's forward passes, for the sparse gather and the logit-space
projection) and the rule of how a plane's windows are kept (:func:`plane_storage`).

Torch is imported only when a compact stack or a token store is used.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Literal, Optional, Union

import numpy as np

from ..config import FeatureConfig
from .stack import COPY_ROWS, FeatureStack

#: Channels per task of :meth:`CompactStack._encode` (a few tasks per thread for 65 channels).
ENCODE_CHANNELS = 8

#: Fraction of the machine's memory a :class:`FeatureCache` holds by default (at least ``MIN_CACHE_BYTES``).
CACHE_FRACTION = 0.25
MIN_CACHE_BYTES = 2**30


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

    A stack may be kept in part (:meth:`encode`'s ``keep``: a window of a large plane, of which only
    its core and the smoothing's reach around it are ever read): :meth:`region` and :meth:`pixels`
    then take the whole window's coordinates, and refuse pixels outside the part kept.

    Attributes
    ----------
    codes : (F, h, w) float16
        The part kept (the whole stack: ``h, w = H, W``).
    centre, scale : (F,) float32
    config, channel_names, attention
        As for :class:`FeatureStack` (the attention, if any, kept as it is).
    offset : (2,) int
        Where the part kept starts in the stack (``(0, 0)``: the whole of it).
    full_shape : (H, W), optional
        The encoded stack's shape when only a part is kept.
    """

    codes: np.ndarray
    centre: np.ndarray
    scale: np.ndarray
    config: FeatureConfig
    channel_names: tuple[str, ...]
    attention: Optional[np.ndarray] = None
    offset: tuple[int, int] = (0, 0)
    full_shape: Optional[tuple[int, int]] = None

    #: Every ``SAMPLE_STEP``-th row and column gives a channel's centre.
    SAMPLE_STEP = 8
    #: The sample's largest deviation from the centre becomes a code of this (float16's largest
    #: finite value is 65504: values 64 times as far from the centre still fit).
    SAMPLE_RANGE = 2.0**10
    #: Codes of a channel scaled by its true extremes span at most this.
    CODE_RANGE = 2.0**14

    @classmethod
    def encode(cls, stack: FeatureStack, keep: Optional[tuple[slice, slice]] = None) -> "CompactStack":
        """The compact form of ``stack`` (``(H, W, F)`` float32), in one pass over it; of its part
        ``keep`` (``(rows, cols)`` slices of step 1) only, when given.

        Each channel's centre and scale come from a sample (every ``SAMPLE_STEP``-th row and
        column of what is kept): the sample's extremes become codes of ``SAMPLE_RANGE``; a channel
        with values beyond float16's range even so is encoded again with the scale of its true extremes.
        """
        import torch

        chw = np.moveaxis(stack.data, -1, 0)  # the featurisers' channels-first buffer, when it is one
        full_shape = offset = None
        if keep is not None:
            (r0, r1, _), (c0, c1, _) = (k.indices(n) for k, n in zip(keep, chw.shape[1:]))
            if (r0, r1, c0, c1) != (0, chw.shape[1], 0, chw.shape[2]):
                full_shape, offset = tuple(chw.shape[1:]), (r0, c0)
                chw = chw[:, r0:r1, c0:c1]
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
                   channel_names=stack.channel_names, attention=stack.attention, offset=offset or (0, 0),
                   full_shape=full_shape)

    @staticmethod
    def _encode(chw: np.ndarray, codes: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """``codes = float16((chw - centre) / scale)`` per channel, a block of rows at a time; returns
        each channel's largest ``|(chw - centre) / scale|`` (NaN where it has non-finite values).

        Groups of channels are encoded on threads of ours with torch's own at one, as the filter
        bank runs (:func:`~napari_dinoseg.features.classical._bank_threads`): a chain of small
        operations whose OpenMP threads meet at the end of each ran 4x slower when another process
        shared the two cores of the machine it was measured on."""
        import torch

        from .classical import _bank_threads

        peak = np.zeros(len(chw))

        def encode(channels: slice) -> None:
            x, out = torch.from_numpy(chw[channels]), torch.from_numpy(codes[channels])
            shift = torch.from_numpy(centre[channels].astype(np.float32))[:, None, None]
            inverse = torch.from_numpy((1 / scale[channels]).astype(np.float32))[:, None, None]
            top = torch.zeros(len(x))
            for r0 in range(0, chw.shape[1], COPY_ROWS):
                flat = (x[:, r0:r0 + COPY_ROWS] - shift).mul_(inverse)
                out[:, r0:r0 + COPY_ROWS].copy_(flat)
                flat = flat.reshape(len(x), -1)  # amin and amax: 5x faster than aminmax along a dim
                top = torch.maximum(top, torch.maximum(-flat.amin(dim=1), flat.amax(dim=1)))
            peak[channels] = top.numpy()

        with _bank_threads(torch.device("cpu")) as pool:
            groups = [slice(f, f + ENCODE_CHANNELS) for f in range(0, len(chw), ENCODE_CHANNELS)]
            if pool is None:
                for group in groups:
                    encode(group)
            else:
                for done in [pool.submit(encode, group) for group in groups]:
                    done.result()
        return peak

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the stack encoded (also when only a part of it is kept)."""
        return self.full_shape or self.codes.shape[1:]

    @property
    def partial(self) -> bool:
        """Whether only a part of the stack is kept (:meth:`encode`'s ``keep``)."""
        return self.full_shape is not None

    def _local(self, index: slice, axis: int) -> slice:
        """A slice of the stack along ``axis`` (0: rows) as a slice of the part kept; ``ValueError``
        when it reaches outside it."""
        start, stop, step = index.indices(self.shape[axis])
        kept = self.codes.shape[1 + axis]
        start, stop = start - self.offset[axis], stop - self.offset[axis]
        if stop > start and (start < 0 or stop > kept):
            raise ValueError(f"pixels {start + self.offset[axis]}..{stop + self.offset[axis]} along axis {axis} are "
                             f"outside the part kept of this window ({self.offset[axis]}.."
                             f"{self.offset[axis] + kept})")
        return slice(start, stop, step) if stop > start else slice(0, 0)

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
        if self.partial:
            raise ValueError("this window's features are kept in part (its core and the smoothing's reach): "
                             "they cannot be decoded whole")
        return FeatureStack(data=self.region(slice(None), slice(None)), config=self.config,
                            channel_names=self.channel_names, attention=self.attention)

    def region(self, rows: slice, cols: slice, channels: Optional[list[int]] = None) -> np.ndarray:
        """``(h, w, F)`` float32 features (``F = len(channels)`` when given) of the pixels ``rows``
        x ``cols`` (slices, steps allowed), as :meth:`decode` has them, without decoding the rest:
        a view of a channels-first buffer."""
        import torch

        index = slice(None) if channels is None else list(channels)
        if self.partial:
            rows, cols = self._local(rows, 0), self._local(cols, 1)
        codes = torch.from_numpy(self.codes)[index][:, rows, cols]
        out = np.empty(tuple(codes.shape), np.float32)
        self._decode(torch.from_numpy(out), codes, index)
        return np.moveaxis(out, 0, -1)

    def pixels(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``(N, F)`` float32 features of pixels ``(rows (N,), cols (N,))`` int arrays, as
        :meth:`decode` has them, without decoding the rest."""
        import torch

        if self.partial:
            rows, cols = np.asarray(rows) - self.offset[0], np.asarray(cols) - self.offset[1]
            if rows.size and (rows.min() < 0 or cols.min() < 0 or rows.max() >= self.codes.shape[1]
                              or cols.max() >= self.codes.shape[2]):
                raise ValueError("pixels outside the part kept of this window")
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
    :func:`~napari_dinoseg.features.featurise.keyed_featurise`'s ``storage``).
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
        their keys (:func:`~napari_dinoseg.features.featurise.keyed_featurise`) and whatever else
        the result depends on. Arrays among the results count in ``max_bytes``."""
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


class TokenStore:
    """The ViT's outputs for one image and config, forward pass by forward pass: what the
    upsampler, the sparse gather or the projection read again without running the model.

    Keyed by ``(channel group, tile, first view, views)``; tokens and attention kept on the CPU in
    the dtype the model gave them. A view's token grid is ``(H / s)²`` tokens for stride ``s``, so
    the store of the CPU preset (stride 14, 17 views) is about 9 times smaller than the
    ``(H, W, D)`` float32 map it stands for.
    """

    def __init__(self) -> None:
        self._passes: dict[tuple, tuple] = {}  # key -> (tokens, attention) torch tensors on the CPU
        self.hits = 0

    def __len__(self) -> int:
        """Forward passes held."""
        return len(self._passes)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self._passes.values() for t in pair)

    def run(self, key: tuple, forward, device) -> tuple:
        """``forward()``'s ``(tokens, attention)`` for ``key``, computed once."""
        if key in self._passes:
            self.hits += 1
            return tuple(t.to(device) for t in self._passes[key])
        tokens, attention = forward()
        self._passes[key] = (tokens.to("cpu"), attention.to("cpu"))
        return tokens, attention


def token_store(cache: Optional[FeatureCache], key: Optional[str]) -> Optional[TokenStore]:
    """The cache's :class:`TokenStore` for the ViT or hybrid features of cache key ``key`` (made
    empty on first use); ``None`` without a cache."""
    return None if cache is None else cache.derived(("tokens", key), TokenStore)


def charge(cache: Optional[FeatureCache], key: Optional[str]) -> None:
    """Count a token store's bytes, grown by a featurisation, in the cache's budget."""
    if cache is not None:
        cache.recount(("tokens", key))
