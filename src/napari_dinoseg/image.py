"""Checking and normalising input images, the same rule for every featuriser.

Intensities go to [0, 1]: ``uint8`` is divided by 255, every other dtype is scaled by the
channel's own finite minimum and maximum, after NaN and -inf are replaced by that minimum
and +inf by that maximum.
"""

from __future__ import annotations

import warnings

import numpy as np

#: Largest trailing axis that is read as channels; a longer one means a stack of slices.
MAX_CHANNELS = 16
#: Smallest side, in pixels, that any featuriser accepts.
MIN_SIDE = 8


def as_float_image(image: np.ndarray) -> np.ndarray:
    """Check an image and return it as channels-last float32 in [0, 1].

    Parameters
    ----------
    image : (H, W) or (H, W, C) array
        Greyscale or multichannel (RGB, RGBA, fluorescence channels) image of any real
        or boolean dtype; C at most ``MAX_CHANNELS``.

    Returns
    -------
    (H, W, C) float32 array, C >= 1, values in [0, 1].

    Raises
    ------
    TypeError
        For non-numeric or complex dtypes.
    ValueError
        For stacks, 1-D data, images with a side below ``MIN_SIDE`` or with no finite value.
    """
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
        out[..., c] = _normalise_channel(arr[..., c], channel=c)
    return out


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


def _normalise_channel(x: np.ndarray, channel: int) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    x = x.astype(np.float32) if x.dtype == bool else x
    finite = np.isfinite(x)
    n_bad = x.size - int(np.count_nonzero(finite))
    if n_bad == x.size:
        raise ValueError(f"channel {channel} of the image has no finite value (all NaN or inf)")
    if n_bad:
        lo, hi = np.min(x, where=finite, initial=np.inf), np.max(x, where=finite, initial=-np.inf)
        x = np.where(finite, x, np.where(np.isposinf(x), hi, lo))
        warnings.warn(
            f"channel {channel}: {n_bad} NaN/inf pixel(s) replaced by the finite minimum/maximum",
            UserWarning,
            stacklevel=4,
        )
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float32)
    return ((x.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
