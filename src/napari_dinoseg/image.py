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

Values beyond [0, 1] are kept up to ``MAX_NORMALISED`` (a million times the range) and clipped
there, so any finite image, however extreme its values or narrow its range, normalises to finite
values. Masked pixels of a ``numpy.ma`` array are left out of the statistics and given the
channel's minimum (see :func:`as_float_image`). Durations and dates (``timedelta64``,
``datetime64``) are refused: they are not intensities.
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
        or boolean dtype; C at most ``MAX_CHANNELS``. A masked array (``numpy.ma``): its masked
        pixels take no part in the intensity statistics (percentiles, minimum, maximum) and are
        given the channel's minimum, as NaN pixels are (with a warning saying how many); their
        features, and so their labels, are then those of a dark pixel: mask the output too.
    config : FeatureConfig, optional
        Its ``normalise`` / ``percentiles`` / ``intensity_range`` say how intensities are
        scaled (see the module docstring); ``FeatureConfig()``'s rule when omitted.

    Returns
    -------
    (H, W, C) float32 array, C >= 1: values in [0, 1] for the ``"legacy"`` rule, about [0, 1]
    (finite, possibly beyond, at most ``MAX_NORMALISED`` away) for the others. Any finite image
    gives finite values, however extreme its range (float64 values near 1e308, a range of 1e-300).
    Computed a block of rows at a time: no more memory than the output and a few MiB.

    Raises
    ------
    TypeError
        For non-numeric, complex, date or duration (``datetime64`` / ``timedelta64``) dtypes.
    ValueError
        For stacks, 1-D data, images with a side below ``MIN_SIDE`` or a channel with no finite
        (unmasked) value, and for a ``"fixed"`` rule without a range on a float image.
    """
    from .config import FeatureConfig, config_or_default

    config = config_or_default(config, FeatureConfig)
    arr, mask = _data_and_mask(image)
    check_dtype(arr.dtype)
    check_image_shape(arr.shape)
    if arr.ndim == 2:
        arr = arr[..., None]
        mask = None if mask is None else mask[..., None]
    out = np.empty(arr.shape, dtype=np.float32)
    for c in range(arr.shape[-1]):
        _normalise_channel(arr[..., c], c, config, None if mask is None else mask[..., c], out[..., c])
    return out


def check_dtype(dtype: np.dtype) -> None:
    """Refuse, with a ``TypeError`` saying what to do, a dtype that does not hold intensities."""
    dtype = np.dtype(dtype)
    if dtype.kind == "m":
        raise TypeError(f"image dtype {dtype} holds durations, not intensities; convert it to numbers first, "
                        "e.g. image / np.timedelta64(1, 's') for seconds")
    if dtype.kind == "M":
        raise TypeError(f"image dtype {dtype} holds dates, not intensities; pass a greyscale or multichannel "
                        "array of numbers")
    if dtype == object or not (np.issubdtype(dtype, np.number) or dtype == bool):
        raise TypeError(f"image dtype {dtype} is not numeric; pass a greyscale or multichannel array")
    if dtype.kind == "c":
        raise TypeError("image is complex-valued; pass its magnitude (np.abs) or real part")


def _data_and_mask(image) -> tuple[np.ndarray, "np.ndarray | None"]:
    """``(data, mask)`` of a masked array (``mask`` ``None`` when nothing is masked), ``(array, None)`` otherwise."""
    if np.ma.isMaskedArray(image):
        mask = np.ma.getmask(image)
        data = np.ma.getdata(image)
        if mask is np.ma.nomask or not mask.any():
            return data, None
        return data, np.broadcast_to(mask, data.shape)
    return np.asarray(image), None


def intensity_bounds(x: np.ndarray, config) -> tuple[float, float]:
    """The intensities ``(lo, hi)`` that ``config``'s rule maps to 0 and 1 for channel ``x``
    (finite values only; ``hi <= lo`` for a constant channel)."""
    x = x.view(np.uint8) if x.dtype == bool else x
    return _bounds(x, config, _statistics(x, None, config, 0))


#: Largest magnitude of a normalised intensity: an outlier further beyond [0, 1] (a million times
#: the percentile range away) is clipped to it, so that features of any finite image stay finite
#: in float32 (the Hessian's squares of 1e20 would overflow).
MAX_NORMALISED = 1e6
#: Values of a channel read at a time (a block of rows): the float64 temporaries stay a few MiB.
BLOCK_VALUES = 1 << 20


class _Stats:
    """A channel's statistics: the counts of its finite, non-finite and masked values, the
    minimum and maximum of its finite unmasked ones, and the percentile sample."""

    def __init__(self) -> None:
        self.valid = self.nonfinite = self.masked = 0
        self.lo = self.hi = None
        self.sample = None


def _blocks(x: np.ndarray) -> list[slice]:
    """Blocks of rows of ``x`` of about ``BLOCK_VALUES`` values, or of ``x.block_rows`` rows where it
    says (a chunked array read a row of chunks at a time: each chunk decoded once)."""
    rows = getattr(x, "block_rows", None) or max(1, BLOCK_VALUES // max(1, x.shape[1]))
    return [slice(r0, r0 + rows) for r0 in range(0, x.shape[0], rows)]


def _valid(block: np.ndarray, mask: "np.ndarray | None") -> "np.ndarray | None":
    """Where a block is finite and unmasked; ``None`` for all of it."""
    valid = None if block.dtype.kind in "biu" else np.isfinite(block)
    if mask is not None:
        valid = ~mask if valid is None else valid & ~mask
    return None if valid is None or valid.all() else valid


def _filled(block: np.ndarray, valid: "np.ndarray | None", stats: _Stats) -> np.ndarray:
    """A block as the work dtype (float64, or longdouble), its non-finite values replaced: +inf by
    the channel's maximum, NaN and -inf by its minimum (masked values too, where they are kept)."""
    work = block.astype(np.result_type(block.dtype, np.float64))
    if valid is not None:
        np.copyto(work, np.where(np.isposinf(work), stats.hi, stats.lo).astype(work.dtype), where=~valid)
    return work


def _statistics(x: np.ndarray, mask: "np.ndarray | None", config, channel: int) -> _Stats:
    """A channel's :class:`_Stats`, in one pass of blocks of rows (no copy of the channel: a chunked
    plane on disk is decoded once). The sample is that of earlier versions, ``x.ravel()[::step]``
    with ``step = max(1, n // PERCENTILE_SAMPLE)`` after NaN / inf are replaced, over the ``n``
    unmasked values (its NaN / inf replaced once the pass has the channel's extremes)."""
    stats = _Stats()
    stats.masked = 0 if mask is None else int(np.count_nonzero(mask))
    percentile = config.normalise == "percentile"
    step, seen, parts = max(1, (x.size - stats.masked) // PERCENTILE_SAMPLE), 0, []
    for rows in _blocks(x):
        block = x[rows]
        kept = None if mask is None else ~mask[rows]
        valid = _valid(block, None if kept is None else ~kept)
        if percentile:
            values = block.ravel() if kept is None else block[kept]
            parts.append(values[(-seen) % step::step].copy())  # a copy: the block is not kept
            seen += values.size
        if valid is None:
            n, lo, hi = block.size, block.min(), block.max()
        else:
            n = int(np.count_nonzero(valid))
            if not n:
                continue
            lo, hi = np.min(block, where=valid, initial=np.inf), np.max(block, where=valid, initial=-np.inf)
        stats.valid += n
        stats.lo = lo if stats.lo is None else min(stats.lo, lo)
        stats.hi = hi if stats.hi is None else max(stats.hi, hi)
    stats.nonfinite = x.size - stats.valid - stats.masked
    if not stats.valid:
        what = "NaN, inf or masked" if mask is not None else "NaN or inf"
        raise ValueError(f"channel {channel} of the image has no finite value (all {what})")
    if percentile:
        stats.sample = np.concatenate([_filled(values, _valid(values, None), stats) for values in parts])
    return stats


def _bounds(x: np.ndarray, config, stats: _Stats):
    """``(lo, hi)`` of ``config``'s rule for a channel of ``stats`` (numbers of the work dtype)."""
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
    lo, hi = _work(stats.lo), _work(stats.hi)
    if rule == "percentile":
        plo, phi = _percentiles(stats.sample, config.percentiles)
        if phi > plo:  # otherwise (mostly constant): the full range
            lo, hi = plo, phi
    return lo, hi


def _work(value):
    """A value as a float of at least float64 precision (longdouble kept)."""
    value = np.asarray(value)
    return value.astype(np.result_type(value.dtype, np.float64))[()]


def _percentiles(sample: np.ndarray, q) -> tuple:
    """Percentiles of a sample, finite for any finite values (numpy's interpolation overflows
    between values near +-1.8e308: they are taken of the sample scaled down then)."""
    sample = sample.astype(np.result_type(sample.dtype, np.float64), copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        plo, phi = np.percentile(sample, q)
    if np.isfinite(plo) and np.isfinite(phi):
        return plo, phi
    scale = np.max(np.abs(sample))
    plo, phi = np.percentile(sample / scale, q)
    return plo * scale, phi * scale


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


def _normalise_channel(x: np.ndarray, channel: int, config, mask: "np.ndarray | None", out: np.ndarray) -> None:
    """Write channel ``x`` (``(H, W)``) normalised by ``config``'s rule into ``out``, a block of rows
    at a time: NaN, -inf and masked pixels take the finite minimum, +inf the maximum (with a
    warning); values go to ``(x - lo) / (hi - lo)``, clipped to ``MAX_NORMALISED``."""
    x = x.view(np.uint8) if x.dtype == bool else x  # as uint8, as in earlier versions
    scaling = channel_scaling(x, channel, config, mask, stacklevel=6)
    for rows in _blocks(x):
        out[rows] = scaling.apply(x[rows], None if mask is None else mask[rows])


class ChannelScaling:
    """How one channel's intensities are normalised: the bounds ``config``'s rule gives and the
    finite minimum and maximum that replace its NaN / inf values. :meth:`apply` normalises any
    block of the channel as :func:`as_float_image` normalises the whole of it, bit for bit, so a
    plane read window by window (:mod:`napari_dinoseg.lazy_plane`) gets the whole plane's values."""

    def __init__(self, stats: "_Stats", lo, hi) -> None:
        self.stats, self.lo, self.hi = stats, lo, hi
        with np.errstate(over="ignore", divide="ignore"):
            self.span = hi - lo
            self.halves = not np.isfinite(self.span)  # a range beyond the largest float: computed in halves
            self.scale = None if self.halves else 1.0 / self.span

    def apply(self, block: np.ndarray, mask: "np.ndarray | None" = None) -> np.ndarray:
        """``(h, w)`` values of the channel (bool as uint8) -> ``(h, w)`` float32 normalised;
        ``mask``: its masked pixels, given the minimum."""
        lo, hi = self.lo, self.hi
        if not hi > lo:
            return np.zeros(block.shape, np.float32)
        work = _filled(block, _valid(block, mask), self.stats)
        if self.halves:
            work /= 2
            work -= lo / 2
            work /= hi / 2 - lo / 2
        elif np.isfinite(self.scale):  # as earlier versions, bit for bit
            work -= lo
            work *= self.scale
        else:  # 1 / span overflows: a range near the smallest floats
            work -= lo
            work /= self.span
        np.clip(work, -MAX_NORMALISED, MAX_NORMALISED, out=work)
        return work.astype(np.float32)


def channel_scaling(x, channel: int, config, mask: "np.ndarray | None" = None,
                    stacklevel: int = 4) -> ChannelScaling:
    """The :class:`ChannelScaling` of channel ``x`` (``(H, W)``, an array or anything whose
    ``x[rows]`` reads a block of rows: the statistics are read a block of rows at a time, of
    ``x.block_rows`` rows where it says), warning about NaN / inf and masked pixels."""
    stats = _statistics(x, mask, config, channel)
    what = [f"{stats.nonfinite} NaN/inf pixel(s) replaced by the finite minimum/maximum"] * bool(stats.nonfinite) \
        + [f"{stats.masked} masked pixel(s) given the minimum of the others (and left out of the intensity "
           "statistics)"] * bool(stats.masked)
    if what:
        warnings.warn(f"channel {channel}: {'; '.join(what)}", UserWarning, stacklevel=stacklevel)
    bounds = _bounds(x, config, stats)
    stats.sample = None  # read for the bounds only: a scaling sent to another process stays small
    return ChannelScaling(stats, *bounds)
