"""The classical filter bank as a featuriser: :class:`ClassicalFeaturiser` (the bank itself is
:mod:`.classical`'s)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..progress import ProgressCallback, report
from .base import Featuriser
from .cache import FeatureCache
from .channels import per_image_channel
from .stack import FeatureStack, copy_channels_last


class ClassicalFeaturiser(Featuriser):
    """Weka-style filters at each sigma of the config (Gaussian, gradient, Hessian, differences
    of Gaussians, optional membrane projections), per image channel, in torch."""

    kind = "classical"

    def channel_names(self, n_channels: int) -> tuple[str, ...]:
        from .classical import classical_channel_names

        return per_image_channel(classical_channel_names(self.config), n_channels)

    @property
    def margin(self) -> int:
        from .classical import support_radius

        return support_radius(self.config)

    def working_bytes(self, shape: tuple[int, int], n_channels: int = 1, projected: Optional[int] = None) -> int:
        """The normalised image, the channels and the bank's temporaries (``projected`` is
        ignored: the bank has no ViT channels to project)."""
        plane = 4 * int(shape[0]) * int(shape[1])
        return n_channels * plane + self.output_bytes(shape, n_channels) + self.temporary_bytes(shape)

    def output_bytes(self, shape: tuple[int, int], n_channels: int = 1) -> int:
        """Bytes of the ``(H, W, F)`` float32 channels."""
        return 4 * int(shape[0]) * int(shape[1]) * self.n_features(n_channels)

    def temporary_bytes(self, shape: tuple[int, int]) -> int:
        """Bytes the bank holds besides its output: its per-sigma temporaries and, while they are
        built, the membrane projections' line kernels."""
        from .classical import working_bytes

        return working_bytes(self.config, shape) + membrane_kernel_bytes(self.config)

    def features(self, img: np.ndarray, progress: Optional[ProgressCallback] = None, out: Optional[np.ndarray] = None,
                 cache: Optional[FeatureCache] = None, key: Optional[str] = None) -> FeatureStack:
        """The bank's channels: a view of its channels-first buffer, or copied into ``out``
        (``(H, W, F)``, e.g. a slice of a hybrid stack) and the buffer freed."""
        from .classical import classical_features, n_classical_steps

        n_channels = img.shape[-1]
        total = n_classical_steps(self.config, n_channels)
        done = 0

        def step(message: str) -> None:
            nonlocal done
            done += 1
            report(progress, done, total, message)

        report(progress, 0, total, "classical features")
        chw = classical_features(img, self.config, self.device, step).cpu().numpy()
        data = np.moveaxis(chw, 0, -1) if out is None else copy_channels_last(chw, out)
        return FeatureStack(data=data, config=self.config, channel_names=self.channel_names(n_channels))


def membrane_kernel_bytes(config) -> int:
    """Bytes the membrane projections' line kernels take while they are built: ``(16, size, size)``
    float32 grids of the orientations, about six at once (0 without membrane projections)."""
    if not config.membrane:
        return 0
    from .classical import MEMBRANE_ANGLES

    return 6 * 4 * MEMBRANE_ANGLES * config.membrane_size**2
