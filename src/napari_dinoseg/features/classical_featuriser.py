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

#: Core ``(z, y, x)`` of a block of the 3-D bank: its 56 float32 channels take 470 MiB (with the
#: in-plane ring the smoothing reads when predicting, about 530 MiB), the halo'd block it is
#: computed from (17 and 65 voxels of context at the default sigmas) under 100 MiB.
VOLUME_BLOCK = (32, 256, 256)


class ClassicalFeaturiser(Featuriser):
    """Weka-style filters at each sigma of the config (Gaussian, gradient, Hessian, differences
    of Gaussians, optional membrane projections), per image channel, in torch."""

    kind = "classical"
    dims = (2, 3)

    def channel_names(self, n_channels: int) -> tuple[str, ...]:
        """The channels of a plane's bank, or with ``config.dims == 3`` of a volume's (no membrane
        projections: :mod:`.classical3d`)."""
        if self.config.dims == 3:
            from .classical3d import classical3d_channel_names as names
        else:
            from .classical import classical_channel_names as names

        return per_image_channel(names(self.config), n_channels)

    # ---- volumes (config.dims == 3) ----------------------------------------------------

    def halo(self, spacing) -> tuple[int, int, int]:
        """``(hz, hy, hx)`` voxels of context the 3-D bank reads around a block's core, for voxels
        ``spacing = (dz, dy, dx)`` apart (:func:`.classical3d.halo_3d`)."""
        from .classical3d import halo_3d

        return halo_3d(self.config, spacing)

    def volume_block(self) -> tuple[int, int, int]:
        """Core ``(z, y, x)`` of the blocks a volume is cut into (:data:`VOLUME_BLOCK`)."""
        return VOLUME_BLOCK

    def volume_features(self, block: np.ndarray, spacing, halo, progress: Optional[ProgressCallback] = None,
                        place=None, out: Optional[np.ndarray] = None) -> np.ndarray:
        """``(z, y, x, F)`` float32 3-D features of a block's core.

        ``block`` is ``(z + 2 hz, y + 2 hy, x + 2 hx)`` float32 normalised values, the core with
        ``halo`` (at least :meth:`halo`) voxels of context mirrored at the volume's border
        (:func:`.classical3d.read_block`); ``progress`` hears each sigma and may raise to cancel.
        ``place`` (where the block lies in the volume) is not needed: the bank's valid-mode passes
        on the mirrored block are the whole volume's. ``out``: a C-contiguous ``(z, y, x, F)``
        float32 array written and returned."""
        from .classical3d import classical_features_3d

        step = counted_steps(progress, len(self.config.sigmas) + 1, "3-D classical features")
        return classical_features_3d(block, self.config, spacing, halo, self.device, step, out=out)

    def volume_bytes(self, core: tuple[int, int, int], spacing) -> int:
        """Peak bytes of :meth:`volume_features` for a block of ``core`` voxels: its ``(z, y, x, F)``
        float32 output, the halo'd block and the bank's temporaries."""
        from .classical3d import working_bytes_3d

        halo = self.halo(spacing)
        block = int(np.prod([n + 2 * h for n, h in zip(core, halo)]))
        return 4 * int(np.prod(core)) * self.n_features(1) + 4 * block + working_bytes_3d(self.config, core, spacing)

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
        step = counted_steps(progress, n_classical_steps(self.config, n_channels), "classical features")
        chw = classical_features(img, self.config, self.device, step).cpu().numpy()
        data = np.moveaxis(chw, 0, -1) if out is None else copy_channels_last(chw, out)
        return FeatureStack(data=data, config=self.config, channel_names=self.channel_names(n_channels))


def counted_steps(progress: Optional[ProgressCallback], total: int, first: str):
    """``step(message)`` for the filter banks: reports ``progress`` one more of ``total`` units each
    call (after reporting 0 with ``first``)."""
    done = 0

    def step(message: str) -> None:
        nonlocal done
        done += 1
        report(progress, done, total, message)

    report(progress, 0, total, first)
    return step


def membrane_kernel_bytes(config) -> int:
    """Bytes the membrane projections' line kernels take while they are built: ``(16, size, size)``
    float32 grids of the orientations, about six at once (0 without membrane projections)."""
    if not config.membrane:
        return 0
    from .classical import MEMBRANE_ANGLES

    return 6 * 4 * MEMBRANE_ANGLES * config.membrane_size**2
