"""What each feature channel is for: :class:`ChannelLayout`, read from the channel names.

The featurisers name their channels (:func:`.classical.classical_channel_names` for the filter
bank, :func:`vit_channel_names` for the ViT, classical before ViT in a hybrid stack,
``c<i>:`` before each name when an image has several channels fed apart). This module is the one
place that reads those names back into roles, so code outside ``features/`` asks the layout
("which channels are ViT?", "which Gaussian guides the smoothing?") instead of parsing names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

#: Between the image channel's prefix and the channel's own name: ``c1:gaussian_s2``.
CHANNEL_SEPARATOR = ":"
#: Start of every ViT channel's own name: ``vit_0`` ... ``vit_<D-1>``.
VIT_PREFIX = "vit_"
#: Start of every Gaussian-smoothed intensity channel's own name, followed by its sigma: ``gaussian_s2``.
GAUSSIAN_PREFIX = "gaussian_s"
#: Start of every Hessian-trace (Laplacian of the Gaussian) channel's own name, followed by its sigma.
LAPLACIAN_PREFIX = "hessian_trace_s"


def vit_channel_groups(n_channels: int) -> list[list[int]]:
    """Image channels fed to the ViT together: RGB(A) as one colour image (alpha dropped),
    anything else one greyscale channel at a time (replicated to three)."""
    if n_channels in (3, 4):
        return [[0, 1, 2]]
    return [[c, c, c] for c in range(n_channels)]


def _own_name(name: str) -> str:
    """The channel's name without its image channel's prefix: ``c1:gaussian_s2`` -> ``gaussian_s2``."""
    return name.split(CHANNEL_SEPARATOR)[-1]


def _gaussian_sigma(name: str, prefix: str = GAUSSIAN_PREFIX) -> Optional[float]:
    """The sigma of a Gaussian channel's name (of a ``prefix`` channel), ``None`` for any other channel."""
    own = _own_name(name)
    if not own.startswith(prefix):
        return None
    try:
        return float(own[len(prefix):])
    except ValueError:
        return None


@dataclass(frozen=True)
class ChannelLayout:
    """The roles of the ``F`` channels of a feature stack, made from their names by :meth:`of`.

    :meth:`napari_dinoseg.features.base.Featuriser.layout` returns one; its consumers (training,
    the logit-space split, the shift report, similarity, the unsupervised rule) read roles from
    here, not from names.

    Attributes
    ----------
    names : (F,) tuple of str
        The channel names, in channel order.
    vit : tuple of int
        Indices of the ViT channels (``vit_<i>``, ``c<g>:vit_<i>``), ascending.
    classical : tuple of int
        Indices of the other channels (the classical filter bank's), ascending.
    gaussian : tuple of int
        Indices of the Gaussian-smoothed intensity channels (``gaussian_s<sigma>``), ascending.
    sigmas : tuple of float
        The sigma, in pixels, of each channel of ``gaussian`` (same order).
    guide : tuple of int
        Indices of the Gaussian channels of the smallest sigma, one per image channel: the guide
        of the guided-filter smoothing of probabilities. ``()`` without Gaussian channels.
    attention : bool
        The features come with a CLS attention map (ViT kinds); names cannot tell, so
        :meth:`of` leaves it ``False`` and a featuriser's ``layout()`` sets it.
    laplacian : tuple of int
        Indices of the Hessian-trace channels (``hessian_trace_s<sigma>``) of the guide's sigma,
        one per image channel: the second guide of a 3-D classifier's smoothing. ``()`` without.
    """

    names: tuple[str, ...]
    vit: tuple[int, ...]
    classical: tuple[int, ...]
    gaussian: tuple[int, ...]
    sigmas: tuple[float, ...]
    guide: tuple[int, ...]
    attention: bool = False
    laplacian: tuple[int, ...] = ()

    @classmethod
    def of(cls, names: Sequence[str]) -> ChannelLayout:
        """The layout of channels named ``names`` (as a featuriser of this package names them).

        Parameters
        ----------
        names : (F,) sequence of str
            Channel names, e.g. a :class:`~napari_dinoseg.features.featurise.FeatureStack`'s
            ``channel_names``.

        Returns
        -------
        ChannelLayout
        """
        names = tuple(names)
        vit = tuple(i for i, name in enumerate(names) if _own_name(name).startswith(VIT_PREFIX))
        classical = tuple(sorted(set(range(len(names))) - set(vit)))
        sigma = {i: s for i, s in ((i, _gaussian_sigma(name)) for i, name in enumerate(names)) if s is not None}
        finest = min(sigma.values(), default=None)
        laplacian = tuple(i for i, name in enumerate(names)
                          if finest is not None and _gaussian_sigma(name, LAPLACIAN_PREFIX) == finest)
        return cls(names=names, vit=vit, classical=classical, gaussian=tuple(sigma), sigmas=tuple(sigma.values()),
                   guide=tuple(i for i, s in sigma.items() if s == finest), laplacian=laplacian)

    @property
    def n_channels(self) -> int:
        """``F``, the number of channels."""
        return len(self.names)

    @property
    def gaussian_sigma(self) -> dict[int, float]:
        """``{channel index: sigma}`` of the Gaussian channels, in channel order."""
        return dict(zip(self.gaussian, self.sigmas))


def vit_channel_names(n_channels: int, n_features: int) -> tuple[str, ...]:
    """Names of the ``n_features`` ViT channels of an image of ``n_channels``: ``vit_<i>``, prefixed
    ``c<first channel>:`` per channel group when there are several."""
    groups = vit_channel_groups(n_channels)
    prefix = [""] if len(groups) == 1 else [f"c{g[0]}:" for g in groups]
    return tuple(f"{p}{VIT_PREFIX}{i}" for p in prefix for i in range(n_features // len(groups)))


def per_image_channel(names: Sequence[str], n_channels: int) -> tuple[str, ...]:
    """A bank's channel names for an image of ``n_channels``: as they are for one, else each
    prefixed ``c<i>:`` once per image channel (channel-major)."""
    names = tuple(names)
    if n_channels == 1:
        return names
    return tuple(f"c{c}{CHANNEL_SEPARATOR}{n}" for c in range(n_channels) for n in names)
