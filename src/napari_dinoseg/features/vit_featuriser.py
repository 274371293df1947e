"""A ViT backbone as a featuriser: :class:`ViTFeaturiser` (the runner is :mod:`.vit`'s, its plan
and costs :mod:`.vit_plan`'s)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..progress import ProgressCallback
from .base import Featuriser, projected_names
from .cache import FeatureCache, charge, token_store
from .channels import vit_channel_groups, vit_channel_names
from .registry import model_spec
from .stack import FeatureStack


class ViTFeaturiser(Featuriser):
    """A ViT's patch tokens brought to pixel resolution by the shift / flip-and-average upsampler,
    one block of ``D`` channels per channel group (:func:`~.channels.vit_channel_groups`), with
    the CLS attention. Its token grids are kept in a cache's :class:`~.cache.TokenStore`, so
    pixels can be gathered and the channels projected without running the model again."""

    kind = "vit"
    dims = (2, 3)
    gathers_pixels = True
    has_attention = True

    @property
    def spec(self):
        """The model's :class:`~napari_dinoseg.models.ModelSpec`."""
        return model_spec(self.config.model)

    def channel_names(self, n_channels: int) -> tuple[str, ...]:
        return vit_channel_names(n_channels, len(vit_channel_groups(n_channels)) * self.spec.embed_dim)

    # ---- volumes (config.dims == 3): 2-D features of planes through a block (:mod:`.vit_volume`) ----

    def halo(self, spacing) -> tuple[int, int, int]:
        """``(hz, hy, hx)`` voxels of context a block's core needs (:func:`.vit_volume.vit_halo`):
        the 2-D margin in the planes of ``config.volume_planes``; ``spacing`` is not used."""
        from .vit_volume import vit_halo

        return vit_halo(self, self.config.volume_planes)

    def volume_block(self) -> tuple[int, int, int]:
        """Core ``(z, y, x)`` of the blocks a volume is cut into: their features at most
        :data:`.vit_volume.BLOCK_FEATURE_BYTES` (:func:`.vit_volume.vit_volume_block`)."""
        from .vit_volume import vit_volume_block

        return vit_volume_block(self.n_features(1), self.config.volume_planes)

    def volume_features(self, block: np.ndarray, spacing, halo, progress: Optional[ProgressCallback] = None,
                        place=None, out: Optional[np.ndarray] = None) -> np.ndarray:
        """``(z, y, x, D)`` float32 ViT features of a block's core, from its planes
        (:func:`.vit_volume.vit_volume_features`, which documents ``block``, ``halo``, ``place``
        and ``out``); ``spacing`` is not used: the ViT sees voxels as they are."""
        from .vit_volume import vit_volume_features

        return vit_volume_features(self, block, halo, self.config.volume_planes, progress, place, out)

    def volume_bytes(self, core: tuple[int, int, int], spacing) -> int:
        """Peak bytes of :meth:`volume_features` for a block of ``core`` voxels."""
        from .vit_volume import vit_volume_bytes

        return vit_volume_bytes(self, core, self.halo(spacing), self.config.volume_planes)

    @property
    def margin(self) -> int:
        from .vit_plan import tile_margin

        return tile_margin(self.config)

    @property
    def alignment(self) -> int:
        return self.config.stride

    def working_bytes(self, shape: tuple[int, int], n_channels: int = 1, projected: Optional[int] = None) -> int:
        """The normalised image, the outputs (channels or ``projected`` ones, and the attention)
        and the runner's working set (:func:`~.vit_plan.vit_working_bytes`: weights, activations,
        views, the upsampler's sums, tile buffers)."""
        return 4 * int(shape[0]) * int(shape[1]) * n_channels + self.output_bytes(shape, n_channels, projected) \
            + self.temporary_bytes(shape)

    def output_bytes(self, shape: tuple[int, int], n_channels: int = 1, projected: Optional[int] = None) -> int:
        """Bytes of the ``(H, W, F or P)`` channels and the ``(H, W, heads)`` attention."""
        channels = self.n_features(n_channels) if projected is None else projected
        return 4 * int(shape[0]) * int(shape[1]) * (channels + self.spec.num_heads)

    def temporary_bytes(self, shape: tuple[int, int]) -> int:
        from .vit_plan import vit_working_bytes

        return vit_working_bytes(self.config, shape, self.device)

    def describe(self, shape: tuple[int, int], n_channels: int = 1) -> str:
        """Model, device, the upsampler's resolved settings and a time estimate per slice."""
        from .upsample import make_transforms
        from .vit_plan import estimate_seconds

        config = self.config
        views = len(make_transforms(config.shifts, config.flips))
        seconds = estimate_seconds(config, shape, self.device, n_channels)
        return (f"{config.model} on {self.device.type}: stride {config.stride}, shifts {config.shifts}, "
                f"flips {config.flips} ({views} views), about {seconds:.0f} s per slice")

    def check_weights(self, hint: str = "or pass the checkpoint file as weights") -> None:
        from .registry import weights_for

        weights_for(self.config, hint)

    def check_shape(self, shape: Sequence[int]) -> None:
        super().check_shape(shape)
        patch = self.spec.patch_size
        if min(shape[:2]) < patch:
            raise ValueError(
                f"image of {shape[0]}x{shape[1]} px is smaller than one {patch}x{patch} patch of {self.config.model}; "
                "use classical features, or upsample the image")

    def features(self, img: np.ndarray, progress: Optional[ProgressCallback] = None, out: Optional[np.ndarray] = None,
                 cache: Optional[FeatureCache] = None, key: Optional[str] = None) -> FeatureStack:
        """The ViT channels, written into ``out`` (``(H, W, G * D)``) when given."""
        from .vit import vit_features

        data, attention = vit_features(img, self.config, self.device, progress, out=out)
        return FeatureStack(data=data, config=self.config, channel_names=self.channel_names(img.shape[-1]),
                            attention=attention)

    def at_pixels(self, img: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  progress: Optional[ProgressCallback] = None, cache: Optional[FeatureCache] = None,
                  key: Optional[str] = None) -> np.ndarray:
        """Gathered from the views' token grids at those pixels (kept in ``cache``'s token store):
        the ``(H, W, D)`` map is never built."""
        from .vit import vit_features

        data, _ = vit_features(img, self.config, self.device, progress, pixels=(rows, cols),
                               store=token_store(cache, key))
        charge(cache, key)
        return data

    def projected(self, img: np.ndarray, weights: np.ndarray, bias: np.ndarray,
                  progress: Optional[ProgressCallback] = None, cache: Optional[FeatureCache] = None,
                  key: Optional[str] = None, out: Optional[np.ndarray] = None) -> FeatureStack:
        """Computed on each view's token grid before the views are averaged (the average is
        linear): the ``(H, W, G * D)`` map is never built. ``out``: ``(H, W, P)`` to write into."""
        from .vit import vit_features

        if out is None:
            out = np.empty((*img.shape[:2], len(weights)), np.float32)
        _, attention = vit_features(img, self.config, self.device, progress, out=out, projection=(weights, bias),
                                    store=token_store(cache, key))
        charge(cache, key)
        return FeatureStack(data=out, config=self.config, channel_names=projected_names(len(weights)),
                            attention=attention)
