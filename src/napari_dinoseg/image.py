"""Checking and normalising input images, the same rule for every featuriser.

Intensities go to about [0, 1] by one of three rules (``FeatureConfig.normalise``), after
NaN and -inf are replaced by the channel's finite minimum and +inf by its maximum:

- ``"percentile"``: per image and channel, the ``percentiles`` (default 5 and 95 %) go to
  0 and 1, linearly; values beyond them are kept (not clipped), so bright or dark details
  keep their contrast. Brightness and contrast changes between the images of a folder cancel.
- ``"fixed"``: a fixed range ``intensity_range`` goes to [0, 1] linearly (the dtype's range for
  integer images when none is given): for calibrated data (CT numbers, EDS counts) whose
  absolute values mean something.
- ``"legacy"``: the rule of bundles before format 4: ``uint8`` divided by 255, every other
  dtype scaled by the channel's own minimum and maximum.
"""

from __future__ import annotations

import warnings
import numpy as np

#: Largest trailing axis that is read as channels; a longer one means a stack of slices.
MAX_CHANNELS = 16
#: Smallest side, in pixels, that any featuriser accepts.
MIN_SIDE = 8
#: Pixels (a regular grid) the percentiles of a channel are estimated from.
PERCENTILE_SAMPLE = 1 << 20


def as_float_image(image: np.ndarray, config=None) -> np.ndarray:
    """Check an image and return it as channels-last float32, normalised by ``config``'s rule.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array
        Greyscale or multichannel (RGB, RGBA, fluorescence channels) image of any real
        or boolean dtype; C at most ``MAX_CHANNELS``.
    config : FeatureConfig, optional
        Its ``normalise`` / ``percentiles`` / ``intensity_range`` say how intensities are
        scaled (see the module docstring); ``FeatureConfig()``'s rule when omitted.

    Returns
    -------
    (H, W, C) float32 array, C >= 1: values in [0, 1] for the ``"legacy"`` rule, about [0, 1]
    (finite, possibly beyond) for the others.

    Raises
    ------
    TypeError
        For non-numeric or complex dtypes.
    ValueError
        For stacks, 1-D data, images with a side below ``MIN_SIDE`` or with no finite value,
        and for a ``"fixed"`` rule without a range on a float image.
    """
    from .config import FeatureConfig, config_or_default

    config = config_or_default(config, FeatureConfig)
    arr = np.asarray(image)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"image dtype {arr.dtype} is not numeric; pass a greyscale or multichannel array")
    if np.iscomplexobj(arr):
        raise TypeError("image is complex-valued; pass its magnitude (np.abs) or real part")
    check_image_shape(arr.shape)
    if arr.ndim == 2:
        arr = arr[..., None]
    out = np.empty(arr.shape, dtype=np.float32)
    for c in range(arr.shape[-1]):
        out[..., c] = _normalise_channel(arr[..., c], c, config)
    return out


def intensity_bounds(x: np.ndarray, config) -> tuple[float, float]:
    """The intensities ``(lo, hi)`` that ``config``'s rule maps to 0 and 1 for channel ``x``
    (finite values only; ``hi <= lo`` for a constant channel)."""
    rule = config.normalise
    if rule == "fixed":
        if config.intensity_range is not None:
            return tuple(float(v) for v in config.intensity_range)
        if x.dtype == bool:
            return 0.0, 1.0
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(
                f"normalise='fixed' needs intensity_range=(low, high) for a {x.dtype} image "
                "(integer images default to their dtype's range)"
            )
        info = np.iinfo(x.dtype)
        return float(info.min), float(info.max)
    if rule == "legacy" and x.dtype == np.uint8:
        return 0.0, 255.0
    finite = x if x.dtype.kind in "biu" else x[np.isfinite(x)]
    lo, hi = float(finite.min()), float(finite.max())
    if rule == "percentile":
        sample = finite.ravel()[:: max(1, finite.size // PERCENTILE_SAMPLE)]
        plo, phi = np.percentile(sample, config.percentiles)
        if phi > plo:  # otherwise (mostly constant): the full range
            lo, hi = float(plo), float(phi)
    return lo, hi


def check_image_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """Return ``(H, W)`` of an ``(H, W)`` / ``(H, W, C)`` shape or raise a ``ValueError`` saying why not."""
    if len(shape) < 2:
        raise ValueError(f"image has shape {shape}; a 2-D image (H, W) or (H, W, C) is needed")
    if len(shape) > 3 or (len(shape) == 3 and shape[-1] > MAX_CHANNELS):
        raise ValueError(
            f"image has shape {shape}, which looks like a stack of 2-D slices; featurise one "
            f"(H, W) or (H, W, C) slice at a time (channels last, at most {MAX_CHANNELS})"
        )
    h, w = shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ValueError(
            f"image of {h}x{w} pixels is too small: each side needs at least {MIN_SIDE} pixels"
        )
    if len(shape) == 3 and shape[-1] == 0:
        raise ValueError(f"image has shape {shape}: no channels")
    return int(h), int(w)


def drop_alpha(image: np.ndarray) -> np.ndarray:
    """Drop the alpha channel of an ``(H, W, 4)`` RGBA image; other images are returned as they are."""
    if image.ndim == 3 and image.shape[-1] == 4:
        return image[..., :3]
    return image


def _normalise_channel(x: np.ndarray, channel: int, config) -> np.ndarray:
    x = x.astype(np.uint8) if x.dtype == bool else x
    if x.dtype.kind == "f":
        x = _finite(x, channel)
    lo, hi = intensity_bounds(x, config)
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float32)
    return ((x.astype(np.float64) - lo) * (1.0 / (hi - lo))).astype(np.float32)


def _finite(x: np.ndarray, channel: int) -> np.ndarray:
    """``x`` with NaN / -inf replaced by its finite minimum and +inf by its finite maximum (warns)."""
    finite = np.isfinite(x)
    n_bad = x.size - int(np.count_nonzero(finite))
    if n_bad == x.size:
        raise ValueError(f"channel {channel} of the image has no finite value (all NaN or inf)")
    if not n_bad:
        return x
    lo, hi = np.min(x, where=finite, initial=np.inf), np.max(x, where=finite, initial=-np.inf)
    warnings.warn(
        f"channel {channel}: {n_bad} NaN/inf pixel(s) replaced by the finite minimum/maximum",
        UserWarning,
        stacklevel=5,
    )
    return np.where(finite, x, np.where(np.isposinf(x), hi, lo))
