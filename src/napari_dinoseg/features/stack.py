"""What a featuriser returns: :class:`FeatureStack`, per-pixel features of one plane, and the
channels-first to channels-last copy the featurisers and the cache share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config import FeatureConfig


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


#: Rows of a channels-first buffer copied to a channels-last one at a time (cache-friendly blocks).
COPY_ROWS = 64


def copy_channels_last(chw: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Copy ``chw (F, H, W)`` into ``out (H, W, F)`` a block of rows at a time; return ``out``."""
    if out.shape != (*chw.shape[1:], chw.shape[0]) or out.dtype != np.float32:
        raise ValueError(f"out must be a float32 array of shape {(*chw.shape[1:], chw.shape[0])}, "
                         f"got {out.dtype} {out.shape}")
    for r0 in range(0, chw.shape[1], COPY_ROWS):
        out[r0:r0 + COPY_ROWS] = np.moveaxis(chw[:, r0:r0 + COPY_ROWS], 0, -1)
    return out
