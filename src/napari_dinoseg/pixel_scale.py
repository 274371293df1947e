"""The physical pixel size of the training images against that of an image to segment: a pixel
size checked (:func:`checked_pixel_size`), written for people (:func:`format_pixel_sizes`),
the shift report's warning when they differ (:func:`pixel_size_warning`), and the zoom that
brings an image to the training pixel size (:func:`resample_factor`).

Pixel sizes are µm per pixel (``float``), ``None`` where unknown. Reading them from files is
:mod:`napari_dinoseg.pixel_size`'s; resampling a plane, :mod:`napari_dinoseg.resampling`'s.
"""

from __future__ import annotations

import math
from typing import Optional

#: Pixel sizes differing by more than this fraction (of the smaller) are named in the shift report.
MISMATCH_TOLERANCE = 0.10
#: Pixel sizes differing by no more than this fraction are not resampled (``--resample``).
RESAMPLE_TOLERANCE = 0.01
#: Sizes under this many µm are written in nm.
NM_BELOW_UM = 0.1


def checked_pixel_size(value, what: str = "pixel_size") -> Optional[float]:
    """``value`` as a positive finite ``float`` of µm per pixel, or ``None`` for ``None``.

    Raises
    ------
    ValueError
        Naming ``what``, for anything else (zero, negative, NaN, infinite, a string, not a number).
    """
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, (bool, str, bytes)) or not (math.isfinite(number) and number > 0):
        raise ValueError(f"{what} {value!r} is not a positive number of µm per pixel; give the images' pixel "
                         "size in µm, or None when it is unknown")
    return number


def format_pixel_sizes(*sizes: float) -> tuple[str, ...]:
    """Pixel sizes (µm) written with 3 significant digits in one unit: nm when the smallest is
    under :data:`NM_BELOW_UM` µm, else µm (``"20.0 nm/px"``, ``"0.250 µm/px"``)."""
    nm = min(sizes) < NM_BELOW_UM
    return tuple(f"{_three_digits(s * 1000 if nm else s)} {'nm' if nm else 'µm'}/px" for s in sizes)


def pixel_size_warning(trained: Optional[float], image: Optional[float]) -> list[str]:
    """The shift report's warning when an image's pixel size is not the training images'.

    Parameters
    ----------
    trained, image : float or None
        µm per pixel of the training images and of the image; ``None``: unknown.

    Returns
    -------
    list of str: one warning when both are known and differ by more than
    :data:`MISMATCH_TOLERANCE`, saying both sizes, the ratio and what to do; else empty.
    """
    if trained is None or image is None:
        return []
    ratio = max(trained, image) / min(trained, image)
    if ratio <= 1 + MISMATCH_TOLERANCE:
        return []
    was, now = format_pixel_sizes(trained, image)
    finer = image < trained
    times = _ratio(ratio)
    return [f"trained at {was}, this image is {now} ({times}× {'finer' if finer else 'coarser'}): its structures "
            f"are {times}× {'larger' if finer else 'smaller'} in pixels than the classifier learnt; resample it to "
            "the training pixel size (dinoseg apply --resample) or train on images at this pixel size"]


def common_pixel_size(sizes) -> Optional[float]:
    """The pixel size of a set of training images: the first, when every one is known and they
    agree within :data:`RESAMPLE_TOLERANCE`; else ``None`` (unknown, or images of several sizes)."""
    sizes = list(sizes)
    if not sizes or any(s is None for s in sizes) or max(sizes) > (1 + RESAMPLE_TOLERANCE) * min(sizes):
        return None
    return sizes[0]


def resample_factor(image: Optional[float], trained: Optional[float]) -> Optional[float]:
    """The zoom bringing an image of ``image`` µm per pixel to ``trained`` µm per pixel (``< 1``:
    fewer pixels), or ``None`` when either is unknown or they agree within :data:`RESAMPLE_TOLERANCE`."""
    if image is None or trained is None or abs(image / trained - 1) <= RESAMPLE_TOLERANCE:
        return None
    return image / trained


def _three_digits(value: float) -> str:
    """3 significant digits, trailing zeros kept (``20.0``, ``5.00``, ``0.250``); from 100, whole numbers."""
    return f"{value:.0f}" if value >= 99.95 else f"{value:#.3g}"


def _ratio(ratio: float) -> str:
    """``4.0``, ``12``, ``1.15``: the ratio of two pixel sizes, as it reads best."""
    return f"{ratio:.2f}" if ratio < 1.5 else f"{ratio:.1f}" if ratio < 10 else f"{ratio:.0f}"
