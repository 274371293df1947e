"""What a feature kind is: :class:`Featuriser`, the file to copy when adding one.

A featuriser is built once per job (:meth:`Featuriser.build`, or
:func:`napari_dinoseg.features.featurisers.featuriser_for`) and carries what the job resolved:
the config with the device's presets filled in, and the torch device. Everything downstream
(training, prediction, the memory checks, the plan line, the caches) asks it, not the config:
nobody resolves the device or the presets again, and nobody branches on the kind.

A new kind subclasses :class:`Featuriser`, sets :attr:`~Featuriser.kind`, writes
:meth:`~Featuriser.channel_names` and :meth:`~Featuriser.features`, and registers the class
(:func:`napari_dinoseg.features.featurisers.register`). The other methods have defaults that are
right for any kind (each is exact, if not the fastest): a kind overrides them where it can do
better (the ViT gathers chosen pixels from its token grids instead of building the map).

Seams for the next kinds of input (written down here, filled in by the issues that need them):

- **Volumes.** :attr:`Featuriser.dims` says which spatial ranks a kind computes: ``(2,)`` today, a
  plane ``(H, W, C)``. A kind that computes 3-D filters adds ``3`` and accepts ``(Z, Y, X, C)``
  with ``spacing=(dz, dy, dx)`` (voxel size) in :meth:`~Featuriser.features`; its
  :attr:`~Featuriser.margin` is then per axis (``margin_for(spacing)``).
- **Lazy images.** A caller reads one window of a lazy (zarr / dask) image with
  :meth:`Featuriser.window`: the core's slices grown by the margin and clipped to the image;
  :meth:`~Featuriser.features` of that window equals the whole plane's features inside the core
  (the contract test checks it for every registered kind).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional, Sequence

import numpy as np

from ..config import FeatureConfig, config_or_default
from ..image import as_float_image, check_image_shape
from ..progress import ProgressCallback
from .cache import FeatureCache, as_stack
from .channels import ChannelLayout
from .stack import FeatureStack

#: Fraction of the available memory a feature stack may take before a featuriser refuses.
MEMORY_FRACTION = 0.5
#: The side of the smallest image, px, whose features tell what a feature config costs whatever
#: the image (:meth:`Featuriser.check_memory`'s message).
_SMALL = 64


class Featuriser:
    """Per-pixel features of one kind, with the config and device a job resolved.

    Parameters
    ----------
    config
        A resolved config (:meth:`build` resolves one); ``config.kind`` is :attr:`kind`.
    device
        The ``torch.device`` it runs on.

    Images passed to the feature methods are normalised planes: ``(H, W, C)`` float32 about
    [0, 1] (:meth:`prepare`). ``cache`` / ``key`` (a :class:`~.cache.FeatureCache` and the
    image's cache key under this config, :func:`~.keys.cache_key`) let a kind keep what it can
    reuse; both ``None``: nothing kept.
    """

    #: The name a :class:`~napari_dinoseg.config.FeatureConfig` gives this kind.
    kind: ClassVar[str] = ""
    #: Spatial ranks the kind computes: 2 (planes); see the module's note on volumes.
    dims: ClassVar[tuple[int, ...]] = (2,)
    #: :meth:`at_pixels` costs less than the whole map (training then gathers only the painted
    #: pixels of each window instead of featurising it whole).
    gathers_pixels: ClassVar[bool] = False

    def __init__(self, config: FeatureConfig, device) -> None:
        if config.kind != self.kind:
            raise ValueError(f"a {type(self).__name__} computes {self.kind!r} features, not {config.kind!r}")
        self.config = config
        self.device = device

    @classmethod
    def build(cls, config: Optional[FeatureConfig] = None, device=None) -> "Featuriser":
        """This kind's featuriser for ``config`` (default ``FeatureConfig(kind=cls.kind)``): the
        device resolved (``config.device``, unless ``device`` is given) and the config's presets
        for that device filled in (:meth:`FeatureConfig.resolved`), once."""
        config = FeatureConfig(kind=cls.kind) if config is None else config_or_default(config, FeatureConfig)
        device = resolve_device(config.device) if device is None else device
        return cls(config.resolved(device.type), device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.kind}, device={self.device})"

    # ---- what it makes ------------------------------------------------------------

    def channel_names(self, n_channels: int) -> tuple[str, ...]:
        """The ``F`` channel names of the features of an image of ``n_channels``."""
        raise NotImplementedError

    def layout(self, n_channels: int) -> ChannelLayout:
        """The roles of the channels (:class:`~.channels.ChannelLayout`): which are ViT channels,
        which Gaussian guides the smoothing, whether CLS attention comes with them."""
        return dataclasses.replace(ChannelLayout.of(self.channel_names(n_channels)), attention=self.has_attention)

    #: The features come with a CLS attention map (:attr:`FeatureStack.attention`).
    has_attention: ClassVar[bool] = False

    def n_features(self, n_channels: int) -> int:
        """``F``, the number of channels of the features of an image of ``n_channels``."""
        return len(self.channel_names(n_channels))

    @property
    def margin(self) -> int:
        """Pixels of context a pixel's features read on each side: a window grown by this much
        has, inside it, the whole plane's features."""
        return 0

    @property
    def alignment(self) -> int:
        """Tile windows start at multiples of this many px (a ViT's stride: its token lattice)."""
        return 1

    def working_bytes(self, shape: tuple[int, int], n_channels: int = 1, projected: Optional[int] = None) -> int:
        """Peak host bytes of :meth:`features` on an ``(H, W)`` image of ``n_channels``: the
        normalised image, the outputs and the kind's temporaries (``projected``: of
        :meth:`projected` with that many projected channels). The default counts the image and
        the output; a kind with temporaries adds them."""
        channels = self.n_features(n_channels) if projected is None else projected
        return 4 * int(shape[0]) * int(shape[1]) * (n_channels + channels)

    def describe(self, shape: tuple[int, int], n_channels: int = 1) -> str:
        """One line for the user on what featurising an ``(H, W)`` image will do."""
        return f"{self.kind} features on {self.device.type}"

    def check_weights(self, hint: str = "or pass the checkpoint file as weights") -> None:
        """Refuse now, with where to put them, when the kind needs weight files this machine
        lacks (nothing for kinds without weights)."""

    # ---- checks and preparation ---------------------------------------------------

    def check_shape(self, shape: Sequence[int]) -> None:
        """Refuse an image the kind cannot featurise (:func:`~napari_dinoseg.image.check_image_shape`;
        a ViT adds: not smaller than a patch)."""
        check_image_shape(tuple(shape))

    def check_memory(self, shape: tuple[int, int], n_channels: int = 1, available: Optional[int] = None,
                     projected: Optional[int] = None) -> int:
        """Refuse, before allocating, features that would not fit in memory.

        Returns :meth:`working_bytes` in bytes; raises
        :class:`~napari_dinoseg.memory_limits.NotEnoughMemory` (a ``ValueError``) naming the estimate
        and the fix when it exceeds ``MEMORY_FRACTION`` of ``available`` bytes (default:
        :func:`napari_dinoseg.memory_limits.available_memory`). Where even a 64 x 64 image's
        features would not fit, the message says the feature config is the cause, not the image.
        """
        from ..memory_limits import NotEnoughMemory, available_memory, gib

        estimate = self.working_bytes(shape, n_channels, projected)
        available = available_memory() if available is None else available
        if estimate <= MEMORY_FRACTION * available:
            return estimate
        h, w = shape
        small = self.working_bytes((_SMALL, _SMALL), n_channels, projected)
        what = (f"{self.kind} features of a {h}x{w} image ({self.n_features(n_channels)} channels) need about "
                f"{gib(estimate)} at their peak, more than {MEMORY_FRACTION:.0%} of the {gib(available)} this process "
                "can still use")
        if small > MEMORY_FRACTION * available:
            raise NotEnoughMemory(
                f"{what}; the feature config is the cause, not the image (a {_SMALL}x{_SMALL} image's would need "
                f"{gib(small)}): use a smaller model, fewer views or a larger stride, or a machine with more memory")
        raise NotEnoughMemory(
            f"{what}; crop or downsample the image, use fewer sigmas / no membrane projections, or use a machine "
            "with more memory")

    def prepare(self, image: np.ndarray, normalised: bool = False, projected: Optional[int] = None) -> np.ndarray:
        """``(H, W, C)`` float32 normalised plane, after the checks every kind shares: its shape
        (:meth:`check_shape`) and the memory (:meth:`check_memory`).

        ``normalised``: the image is a window of a plane normalised as a whole (tiles share its
        intensity scale), used as it is; else normalised by the config's rule.
        """
        shape = np.shape(image)
        self.check_shape(shape)
        self.check_memory(shape[:2], 1 if len(shape) == 2 else shape[-1], projected=projected)
        if not normalised:
            return as_float_image(image, self.config)
        img = np.asarray(image, dtype=np.float32)
        return img[..., None] if img.ndim == 2 else img

    def window(self, core: tuple[slice, slice], shape: tuple[int, int]) -> tuple[slice, slice]:
        """The slices to read for the features of ``core`` (slices of a plane of ``shape``): grown
        by :attr:`margin` on each side, the start moved back to a multiple of :attr:`alignment`,
        clipped to the plane."""
        def grown(c: slice, n: int) -> slice:
            start = max(0, c.start - self.margin)
            return slice(start - start % self.alignment, min(n, c.stop + self.margin))

        return tuple(grown(c, n) for c, n in zip(core, shape))

    # ---- computing ----------------------------------------------------------------

    def features(self, img: np.ndarray, progress: Optional[ProgressCallback] = None, out: Optional[np.ndarray] = None,
                 cache: Optional[FeatureCache] = None, key: Optional[str] = None) -> FeatureStack:
        """The features of a normalised ``(H, W, C)`` float32 plane: ``.data`` ``(H, W, F)`` float32,
        written into ``out`` (``(H, W, F)``, e.g. a slice of a larger stack) when given.
        ``progress(done, total, message)`` may raise :class:`napari_dinoseg.Cancelled`."""
        raise NotImplementedError

    def held(self, img: np.ndarray, progress: Optional[ProgressCallback] = None,
             cache: Optional[FeatureCache] = None, key: Optional[str] = None) -> FeatureStack:
        """:meth:`features` through ``cache`` under ``key``: the stack held there, else computed and
        put there (a held compact stack is decoded)."""
        if cache is None or key is None:
            return self.features(img, progress)
        stack = cache.get(key)
        if stack is None:
            stack = self.features(img, progress)
            cache.put(key, stack)
        return as_stack(stack)

    def at_pixels(self, img: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  progress: Optional[ProgressCallback] = None, cache: Optional[FeatureCache] = None,
                  key: Optional[str] = None) -> np.ndarray:
        """``(N, F)`` float32 features of pixels ``(rows (N,), cols (N,))`` of a normalised plane,
        equal to ``features(img).data[rows, cols]`` up to float rounding. Default: exactly that
        (through the cache's whole stack)."""
        return np.ascontiguousarray(self.held(img, progress, cache, key).data[rows, cols])

    def projected(self, img: np.ndarray, weights: np.ndarray, bias: np.ndarray,
                  progress: Optional[ProgressCallback] = None, cache: Optional[FeatureCache] = None,
                  key: Optional[str] = None) -> FeatureStack:
        """The features with the ViT channels replaced by ``vit @ weights.T + bias`` (weights
        ``(P, n_vit)``, bias ``(P,)``): ``(H, W, F_other + P)``, the other channels first, then ``P``
        channels named ``projected_<i>``. Default: from the whole stack; the ViT computes the
        projection on its token grids and never builds the ViT map."""
        stack = self.held(img, progress, cache, key)
        layout = self.layout(img.shape[-1])
        weights, bias = np.asarray(weights, np.float32), np.asarray(bias, np.float32)
        if weights.ndim != 2 or weights.shape[1] != len(layout.vit) or bias.shape != weights.shape[:1]:
            raise ValueError(f"the projection must be weights (P, {len(layout.vit)}) and bias (P,), "
                             f"got {weights.shape} and {bias.shape}")
        other = stack.data[..., list(layout.classical)]
        vit = stack.data[..., list(layout.vit)] @ weights.T + bias
        names = tuple(stack.channel_names[i] for i in layout.classical)
        return FeatureStack(data=np.concatenate([other, vit], axis=-1).astype(np.float32, copy=False),
                            config=self.config, channel_names=names + projected_names(len(weights)),
                            attention=stack.attention)


def projected_names(n: int) -> tuple[str, ...]:
    """Names of ``n`` projected channels: ``projected_<i>``."""
    return tuple(f"projected_{i}" for i in range(n))


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
