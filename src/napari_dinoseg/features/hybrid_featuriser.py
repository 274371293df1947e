"""Classical and ViT channels side by side: :class:`HybridFeaturiser`."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from ..progress import ProgressCallback, within
from .base import Featuriser
from .cache import FeatureCache
from .classical_featuriser import ClassicalFeaturiser
from .stack import FeatureStack, copy_channels_last
from .vit_featuriser import ViTFeaturiser

#: Share of a hybrid featurisation's progress the classical channels take (the ViT the rest).
CLASSICAL_SHARE = 0.1


class HybridFeaturiser(Featuriser):
    """The classical bank's channels, then the ViT's (with its attention), in one ``(H, W, F)``
    stack each part writes its slice of: no second copy. The ViT part gathers pixels and projects
    as :class:`~.vit_featuriser.ViTFeaturiser` does; the classical part is kept in a cache under
    the image's key, so a second gather or projection recomputes nothing."""

    kind = "hybrid"
    dims = (2, 3)
    gathers_pixels = True
    has_attention = True

    def __init__(self, config, device) -> None:
        super().__init__(config, device)
        self.classical = ClassicalFeaturiser(dataclasses.replace(config, kind="classical"), device)
        self.vit = ViTFeaturiser(dataclasses.replace(config, kind="vit"), device)

    def channel_names(self, n_channels: int) -> tuple[str, ...]:
        return self.classical.channel_names(n_channels) + self.vit.channel_names(n_channels)

    # ---- volumes (config.dims == 3): the 3-D bank's channels, then the ViT's of planes ----------

    def halo(self, spacing) -> tuple[int, int, int]:
        """Per axis the larger of the 3-D bank's halo and the ViT's."""
        return tuple(max(c, v) for c, v in zip(self.classical.halo(spacing), self.vit.halo(spacing)))

    def volume_block(self) -> tuple[int, int, int]:
        """The ViT's block rule for the hybrid's channel count (:func:`.vit_volume.vit_volume_block`)."""
        from .vit_volume import vit_volume_block

        return vit_volume_block(self.n_features(1), self.config.volume_planes)

    def volume_features(self, block: np.ndarray, spacing, halo, progress: Optional[ProgressCallback] = None,
                        place=None) -> np.ndarray:
        """``(z, y, x, F)`` float32: the 3-D bank's channels of the core, then the ViT's (arguments
        as :meth:`.vit_featuriser.ViTFeaturiser.volume_features`'); ``halo`` at least :meth:`halo`."""
        classical = self.classical.volume_features(block, spacing, halo, within(progress, 0.0, CLASSICAL_SHARE))
        n_classical = classical.shape[-1]
        data = np.empty((*classical.shape[:3], self.n_features(1)), np.float32)
        data[..., :n_classical] = classical
        del classical
        self.vit.volume_features(block, spacing, halo, within(progress, CLASSICAL_SHARE, 1.0), place,
                                 out=data[..., n_classical:])
        return data

    def volume_bytes(self, core: tuple[int, int, int], spacing) -> int:
        """The hybrid stack, plus the larger of the bank's peak and the ViT's (the halo'd block and
        a plane's working set)."""
        from .vit_volume import vit_volume_bytes

        voxels = int(np.prod(core))
        vit = vit_volume_bytes(self.vit, core, self.halo(spacing), self.config.volume_planes)
        vit -= 4 * voxels * self.vit.n_features(1)
        return 4 * voxels * self.n_features(1) + max(self.classical.volume_bytes(core, spacing), vit)

    @property
    def margin(self) -> int:
        return max(self.classical.margin, self.vit.margin)

    @property
    def alignment(self) -> int:
        return self.vit.alignment

    def working_bytes(self, shape: tuple[int, int], n_channels: int = 1, projected: Optional[int] = None) -> int:
        """The image, then the largest of: the classical phase (the stack not yet made), the
        stack with the classical buffer being copied into it, the stack with the ViT at work."""
        image = 4 * int(shape[0]) * int(shape[1]) * n_channels
        classical_out = self.classical.output_bytes(shape, n_channels)
        out = classical_out + self.vit.output_bytes(shape, n_channels, projected)
        return image + max(classical_out + self.classical.temporary_bytes(shape), out + classical_out,
                           out + self.vit.temporary_bytes(shape))

    def describe(self, shape: tuple[int, int], n_channels: int = 1) -> str:
        return self.vit.describe(shape, n_channels)

    def check_weights(self, hint: str = "or pass the checkpoint file as weights") -> None:
        self.vit.check_weights(hint)

    def check_shape(self, shape: Sequence[int]) -> None:
        self.vit.check_shape(shape)

    def features(self, img: np.ndarray, progress: Optional[ProgressCallback] = None, out: Optional[np.ndarray] = None,
                 cache: Optional[FeatureCache] = None, key: Optional[str] = None) -> FeatureStack:
        n_classical = self.classical.n_features(img.shape[-1])
        data = np.empty((*img.shape[:2], self.n_features(img.shape[-1])), np.float32) if out is None else out
        classical = self.classical.features(img, within(progress, 0.0, CLASSICAL_SHARE), out=data[..., :n_classical])
        vit = self.vit.features(img, within(progress, CLASSICAL_SHARE, 1.0), out=data[..., n_classical:])
        return FeatureStack(data=data, config=self.config, channel_names=classical.channel_names + vit.channel_names,
                            attention=vit.attention)

    def _classical_part(self, img: np.ndarray, progress, cache: Optional[FeatureCache], key: Optional[str],
                        out: Optional[np.ndarray] = None) -> FeatureStack:
        """The classical channels, through ``cache`` (under ``("classical", key)``), copied into
        ``out`` when given."""
        if cache is None or key is None:
            return self.classical.features(img, progress, out=out)
        stack = cache.derived(("classical", key), lambda: self.classical.features(img, progress))
        if out is not None:
            copy_channels_last(np.moveaxis(stack.data, -1, 0), out)
        return stack

    def at_pixels(self, img: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  progress: Optional[ProgressCallback] = None, cache: Optional[FeatureCache] = None,
                  key: Optional[str] = None) -> np.ndarray:
        classical = self._classical_part(img, within(progress, 0.0, CLASSICAL_SHARE), cache, key)
        part = classical.data[rows, cols]
        del classical
        vit = self.vit.at_pixels(img, rows, cols, within(progress, CLASSICAL_SHARE, 1.0), cache, key)
        return np.concatenate([part, vit], axis=1).astype(np.float32, copy=False)

    def projected(self, img: np.ndarray, weights: np.ndarray, bias: np.ndarray,
                  progress: Optional[ProgressCallback] = None, cache: Optional[FeatureCache] = None,
                  key: Optional[str] = None) -> FeatureStack:
        n_classical = self.classical.n_features(img.shape[-1])
        data = np.empty((*img.shape[:2], n_classical + len(weights)), np.float32)
        classical = self._classical_part(img, within(progress, 0.0, CLASSICAL_SHARE), cache, key,
                                         out=data[..., :n_classical])
        vit = self.vit.projected(img, weights, bias, within(progress, CLASSICAL_SHARE, 1.0), cache, key,
                                 out=data[..., n_classical:])
        return FeatureStack(data=data, config=self.config, channel_names=classical.channel_names + vit.channel_names,
                            attention=vit.attention)
