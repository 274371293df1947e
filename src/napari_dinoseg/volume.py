"""A ``(Z, Y, X)`` volume as the 3-D pipeline reads it (:class:`NormalisedVolume`): normalised as
one image, read a block at a time.

The intensity bounds are those of every voxel, by the feature config's rule, computed as
:func:`~napari_dinoseg.image.as_float_image` computes a plane's (the volume seen as its
``(Z * Y, X)`` rows, read a z-slice at a time: a zarr volume is never held whole), so a block
normalised here has the values the whole volume normalised at once would have there. The voxel
spacing is checked here too (:func:`checked_spacing`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .image import ChannelScaling, channel_scaling, check_dtype

#: A voxel spacing ``(dz, dy, dx)``: positive, finite, in any one unit (only ratios scale the filters).
Spacing = tuple[float, float, float]


def checked_spacing(spacing: Optional[Sequence[float]], what: str = "spacing") -> Optional[Spacing]:
    """``spacing`` as a tuple of three positive finite floats (``None`` kept: unknown).

    Raises
    ------
    ValueError
        Naming the value, for anything else.
    """
    if spacing is None:
        return None
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{what} must be three positive numbers (dz, dy, dx), got {spacing!r}")
    return values  # type: ignore[return-value]


def spacing_warning(trained: Optional[Sequence[float]], volume: Optional[Sequence[float]]) -> list[str]:
    """The shift report's warning when a volume's voxel spacing is not the training volumes'.

    Parameters
    ----------
    trained, volume : (dz, dy, dx) or None
        The spacings (one unit for both); ``None``: unknown.

    Returns
    -------
    list of str: one warning naming both spacings when both are known and an axis differs by more
    than :data:`~napari_dinoseg.pixel_scale.MISMATCH_TOLERANCE`; else empty. The 3-D filters
    scale their sigmas by the spacing, but a structure a classifier learnt at one voxel size is
    another number of voxels at another.
    """
    from .pixel_scale import MISMATCH_TOLERANCE

    if trained is None or volume is None:
        return []
    ratios = [max(a, b) / min(a, b) for a, b in zip(trained, volume)]
    if max(ratios) <= 1 + MISMATCH_TOLERANCE:
        return []
    shown = lambda s: "(" + ", ".join(f"{v:.3g}" for v in s) + ")"  # noqa: E731
    return [f"trained on voxels of {shown(trained)} (dz, dy, dx), this volume's are {shown(volume)}: its structures "
            "span other numbers of voxels than the classifier learnt; resample it to the training spacing or train "
            "on volumes of this spacing"]


def check_volume_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(Z, Y, X)`` of a volume's shape, or a ``ValueError`` saying what the 3-D pipeline takes."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        more = " (one channel: split a multichannel volume and train on one)" if len(shape) == 4 else ""
        raise ValueError(f"3-D features take a (Z, Y, X) volume{more}, got an array of shape {shape}; "
                         "a plane is segmented with dims=2")
    if min(shape) < 1:
        raise ValueError(f"the volume of shape {shape} is empty")
    return shape  # type: ignore[return-value]


class _SliceRows:
    """A ``(Z, Y, X)`` array-like seen as its ``(Z * Y, X)`` rows, read a z-slice at a time (what
    :func:`~napari_dinoseg.image.channel_scaling` reads; its blocks are of ``block_rows`` rows)."""

    def __init__(self, volume) -> None:
        z, y, x = check_volume_shape(volume.shape)
        self.volume, self.block_rows, self.ndim = volume, y, 2
        self.shape, self.size = (z * y, x), z * y * x
        self.dtype = np.dtype(np.uint8) if np.dtype(volume.dtype) == bool else np.dtype(volume.dtype)

    def __getitem__(self, rows: slice) -> np.ndarray:
        z = rows.start // self.block_rows
        block = np.asarray(self.volume[z])
        return block.view(np.uint8) if block.dtype == bool else block


class NormalisedVolume:
    """A ``(Z, Y, X)`` volume (numpy, zarr, dask: ``shape``, ``dtype`` and ``[z, y, x]`` slicing)
    normalised by a feature config's rule with the bounds of all its voxels.

    ``volume[region]`` (three slices) is the region's ``(z, y, x)`` float32 normalised values.

    Parameters
    ----------
    volume : (Z, Y, X) array-like
    config : FeatureConfig
        Its normalisation rule.
    scaling : ChannelScaling, optional
        The bounds, when already read (another block's job, a second pass): not read again.

    Raises
    ------
    ValueError, TypeError
        For a shape other than ``(Z, Y, X)``, an unsupported dtype, or no finite voxel.
    """

    def __init__(self, volume, config, scaling: Optional[ChannelScaling] = None) -> None:
        check_dtype(np.dtype(volume.dtype))
        self.shape = check_volume_shape(volume.shape)
        self.volume = volume
        self.scaling = channel_scaling(_SliceRows(volume), 0, config) if scaling is None else scaling
        self.dtype = np.dtype(np.float32)
        self.ndim = 3

    def __getitem__(self, region) -> np.ndarray:
        block = np.asarray(self.volume[region])
        return self.scaling.apply(block.view(np.uint8) if block.dtype == bool else block)
