"""Image files -> planes, with their axes read from the file, not guessed from the shape.

A TIFF's axes come from tifffile's series (OME-XML, ImageJ or tifffile's own metadata, the
photometric tag): ``C`` and ``S`` are channels, ``Y`` ``X`` the plane, every other axis (``T``,
``Z``, ...) a leading axis whose planes are segmented one by one and kept in the output's shape.
The caller may give the axes of TIFFs with as many dimensions and the plane on the same axes
(``axes="ZYX"``); they replace the file's. Where a TIFF says nothing (axes ``Q`` / ``I``):

- a last axis of at most ``MAX_CHANNELS`` is read as channels, the rule the widgets use for arrays;
- an axis of 3 or 4 just before the plane (``(3, H, W)``: an RGB image saved channels first, or
  three slices?) is never decided in silence. A classifier of that many channels decides (there
  is no other reading it can segment); otherwise it is read as channels, or for a greyscale
  classifier as planes, with a note that says so and how to give the axes.

PNG / JPEG channels come from the PIL mode (grey, grey + alpha, RGB, RGBA, palette). Alpha is
dropped; any other channel-count mismatch is refused, naming both counts.

Brush-label files are read by :mod:`napari_dinoseg.label_files`, pixel sizes by
:mod:`napari_dinoseg.pixel_size`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .image import MAX_CHANNELS

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
ALPHA_NOTE = "its alpha channel was left out"
#: tifffile's letters for axes its metadata did not name.
UNKNOWN_AXES = set("QI")
#: Sizes of an unnamed axis before the plane that may be channels first (RGB, RGBA) or slices.
CHANNELS_FIRST_SIZES = (3, 4)


@dataclass(frozen=True)
class ImageFile:
    """An image file's pixels with channels last and its leading axes named.

    Attributes
    ----------
    data : (*lead, H, W) or (*lead, H, W, C) array
        In the file's dtype; ``C`` only when there are several channels.
    lead_axes : str
        One letter per leading axis (``"TZ"``, ``"Q"`` where the file does not say).
    channels : int
    notes : tuple of str
        What was left out (an alpha channel, further image series), for the summary.
    """

    data: np.ndarray
    lead_axes: str
    channels: int
    notes: tuple = ()

    @property
    def lead_shape(self) -> tuple[int, ...]:
        return self.data.shape[: len(self.lead_axes)]

    @property
    def planes(self) -> list[np.ndarray]:
        """Every ``(H, W)`` / ``(H, W, C)`` plane, leading axes flattened in C order."""
        plane_ndim = self.data.ndim - len(self.lead_axes)
        return list(self.data.reshape(-1, *self.data.shape[-plane_ndim:]))


def read_image(path, channels: Optional[int] = None, axes: Optional[str] = None,
               memory: Optional[Callable[[tuple, int], int]] = None) -> ImageFile:
    """Read an image file and check its channel count.

    Parameters
    ----------
    path
        A TIFF (OME / ImageJ / tifffile metadata honoured), PNG or JPEG file.
    channels
        The channel count the caller needs (a bundle's); ``None``: whatever the file has.
        Also decides an unnamed axis of 3 or 4 before the plane (see the module docstring).
    axes
        The axes of a TIFF, one letter per dimension (``"ZYX"``, ``"CYX"``, ``"TZCYX"``; see
        :func:`check_axes`), replacing the file's where its image plane is on the same axes
        (``"ZYX"`` makes a ``(3, H, W)`` file three slices, and leaves an ``(H, W, 3)`` RGB
        file RGB); TIFFs with another number of dimensions or their plane elsewhere keep
        theirs, PNG / JPEG files are not concerned. ``None``: the file's.
    memory
        ``memory(plane_shape, n_planes)``: the bytes that processing the file's ``n_planes``
        planes of ``(H, W)`` / ``(H, W, C)`` will take besides its pixels (e.g.
        :func:`napari_dinoseg.memory.file_memory`); ``None``: the pixels alone are counted.

    Before anything is decoded, the shape and dtype the file declares (a small file may declare
    a huge image) are read, interpreted as above, and the bytes that decoding them (with the
    copies made in reordering their axes, dropping alpha, converting a palette) and ``memory``
    would take are compared with :func:`napari_dinoseg.memory.available_memory`: a file that would
    not fit is refused with the estimate, nothing decoded. A channel count other than
    ``channels`` is refused then too.

    Raises
    ------
    ValueError
        Not an image file, empty, unreadable, axes without a plane, a channel count other
        than ``channels`` (both counts named), or bad ``axes``;
        :class:`~napari_dinoseg.memory.NotEnoughMemory` (a ValueError) for a file that would not fit.
    TypeError
        ``axes`` not a string.
    """
    axes = None if axes is None else check_axes(axes)
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise ValueError("empty file")
    tiff = path.suffix.lower() in TIFF_SUFFIXES

    def interpret(data: np.ndarray, found: str, alpha: bool) -> ImageFile:
        given = (axes is not None and tiff and len(axes) == data.ndim
                 and (axes.index("Y"), axes.index("X")) == (found.find("Y"), found.find("X")))
        if given:
            alpha = alpha and "S" in axes
        image = _channels_last(data, axes if given else found, alpha, channels)
        return _with_channels(image, channels) if channels is not None else image

    def fits(shape: tuple, dtype: np.dtype, found: str, alpha: bool, copies: int) -> None:
        """Refuse, before decoding, a declared image that would not fit (or has other channels)."""
        if math.prod(shape) == 0 or len(shape) < 2:
            return  # reported once read
        try:
            image = interpret(np.broadcast_to(np.zeros((), dtype), shape), found, alpha)  # no pixels
        except ValueError as err:
            raise _Refused(err) from None
        _check_declared(path, shape, np.dtype(dtype), image, copies + (image.data.ndim >= 3) + alpha, memory)

    try:
        data, found, alpha, notes = _read_tiff(path, fits) if tiff else _read_pil(path, fits)
    except _Refused as refused:
        raise refused.error from None
    except PermissionError:
        raise ValueError("permission denied: this user cannot read the file") from None
    except MemoryError:
        from .memory import NotEnoughMemory

        raise NotEnoughMemory("decoding the image ran out of memory; crop or downsample it, or use a machine with "
                              "more memory") from None
    except (ValueError, OSError, KeyError, IndexError, TypeError, SyntaxError, EOFError) as err:
        raise ValueError(f"cannot read the image (corrupt or not what its name says): {err}") from None
    if data.size == 0 or data.ndim < 2:
        raise ValueError("no image data in the file (corrupt or truncated)")
    image = interpret(data, found, alpha)
    return dataclasses.replace(image, notes=notes + image.notes) if notes else image


class _Refused(Exception):
    """A refusal made before decoding (``error``, raised as it is by :func:`read_image`)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _check_declared(path: Path, shape: tuple, dtype: np.dtype, image: ImageFile, copies: int,
                    memory: Optional[Callable[[tuple, int], int]]) -> None:
    """Raise :class:`_Refused` (:class:`~napari_dinoseg.memory.NotEnoughMemory`) when ``copies`` of the
    declared pixels and ``memory(plane shape, planes)`` would not fit in the memory available."""
    from .atomic import format_bytes
    from .memory import PLANE_MEMORY_FRACTION, NotEnoughMemory, available_memory, gib

    pixels = math.prod(shape) * dtype.itemsize
    plane_shape = image.data.shape[len(image.lead_axes):]
    n_planes = math.prod(image.lead_shape)
    total = copies * pixels + (memory(plane_shape, n_planes) if memory is not None else 0)
    available = available_memory()
    if total <= PLANE_MEMORY_FRACTION * available:
        return
    h, w = plane_shape[:2]
    planes = f"{n_planes} planes of " if n_planes > 1 else ""
    side = max(8, int(min(h, w) / (total / (PLANE_MEMORY_FRACTION * available)) ** 0.5))
    channels = "" if len(plane_shape) == 2 else f" of {plane_shape[2]} channels"
    raise _Refused(NotEnoughMemory(
        f"the file declares {planes}a {h}x{w} {dtype} image{channels} "
        f"({gib(pixels)} of pixels, in a file of {format_bytes(path.stat().st_size)}); reading "
        f"{'and segmenting ' if memory is not None else ''}it would need about {gib(total)}, more than "
        f"{PLANE_MEMORY_FRACTION:.0%} of the {gib(available)} this process can still use; nothing was decoded. "
        f"Crop it into pieces of about {side}x{side} px or downsample it, or use a machine with more memory"))


def _read_tiff(path: Path, fits: Callable) -> tuple[np.ndarray, str, bool, tuple]:
    """``(data, axes, alpha, notes)`` of a TIFF's first series; ``fits(shape, dtype, axes, alpha,
    copies)`` is called with what the file declares before anything is decoded."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ValueError("no image series in the file")
        series = tif.series[0]
        axes = series.axes
        extra = tif.pages[0].extrasamples if len(tif.pages) else ()
        fits(tuple(series.shape), series.dtype, axes, "S" in axes and len(extra) > 0, 1)
        data = np.asarray(series.asarray())
        others = [s.shape for s in tif.series[1:]]
    notes = (f"the file holds {len(others) + 1} image series; only the first, of shape {data.shape}, was "
             f"segmented (the others: {', '.join(map(str, others[:3]))}{' …' if len(others) > 3 else ''})",) \
        if others else ()
    return data, axes, "S" in axes and len(extra) > 0, notes


def _read_pil(path: Path, fits: Callable) -> tuple[np.ndarray, str, bool, tuple]:
    """``(data, axes, alpha, notes)`` of a PNG / JPEG; ``fits`` as for :func:`_read_tiff`, called with
    the size and mode the header declares (PIL's own decompression-bomb limit gives way to it)."""
    from PIL import ImageMode

    with open_pil(path) as im:
        mode = im.mode
        target = ("RGBA" if "transparency" in im.info else "RGB") if mode == "P" else \
            ("L" if mode == "1" else "RGB") if mode in ("1", "CMYK", "YCbCr", "LAB", "HSV") else mode
        bands = len(ImageMode.getmode(target).bands)
        dtype = np.dtype(ImageMode.getmode(target).typestr)
        shape = (im.size[1], im.size[0]) + ((bands,) if bands > 1 else ())
        # PIL's decoded image, a converted one, the bytes numpy copies
        fits(shape, dtype, "YX" if bands == 1 else "YXS", target in _PIL_ALPHA, 3 + (target != mode))
        if target != mode:
            im = im.convert(target)
        data = np.asarray(im)
        mode = im.mode
    alpha = mode in _PIL_ALPHA
    return data, "YX" if data.ndim == 2 else "YXS", alpha, ()


_PIL_ALPHA = ("LA", "RGBA", "PA", "La", "RGBa")
_PIL_LOCK = threading.Lock()


def open_pil(path: Path):
    """``PIL.Image.open`` without its decompression-bomb limit (:func:`read_image` checks the
    declared size against the memory available instead, and refuses what would not fit)."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombError:
            with _PIL_LOCK:
                limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    return Image.open(path)
                finally:
                    Image.MAX_IMAGE_PIXELS = limit


def check_axes(axes: str) -> str:
    """``axes`` if it can name an image's axes: upper-case letters as tifffile uses them (``T``
    time, ``Z`` depth, ``C`` / ``S`` channels, ``Y`` ``X`` the plane, ``Q`` unnamed), ``Y``
    and ``X`` once each, one channel axis at most, no letter twice but ``Q``.

    Raises
    ------
    TypeError
        Not a string.
    ValueError
        Naming what is wrong and giving examples.
    """
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a string of axis letters such as 'ZYX' or 'CYX', got {type(axes).__name__}")
    examples = "e.g. 'ZYX' for slices, 'CYX' for channels first, 'TZCYX'"
    if not axes or not (axes.isascii() and axes.isalpha() and axes.isupper()):
        raise ValueError(f"axes {axes!r}: give one upper-case letter per dimension of the file ({examples})")
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"axes {axes!r} have no Y and X (the image plane); {examples}")
    twice = sorted({a for a in axes if axes.count(a) > 1 and a != "Q"})
    if twice:
        raise ValueError(f"axes {axes!r} name {', '.join(twice)} twice; one letter per axis ({examples})")
    if "C" in axes and "S" in axes:
        raise ValueError(f"axes {axes!r} have two channel axes (C and S); name one, {examples}")
    return axes


def _channels_last(data: np.ndarray, axes: str, alpha: bool, channels: Optional[int] = None) -> ImageFile:
    """Reorder to (*lead, Y, X[, C]) from the file's axes string; ``channels`` (the caller's
    count, or ``None``) decides an unnamed axis of 3 or 4 before the plane."""
    if len(axes) != data.ndim:
        raise ValueError(f"the file's axes {axes!r} do not match its shape {data.shape}")
    named = [a for a in axes if a in "CS" and data.shape[axes.index(a)] > 1]
    notes: tuple = ()
    if not named and set(axes) & UNKNOWN_AXES and data.ndim >= 3 and data.shape[-1] <= MAX_CHANNELS:
        # unnamed axes: the widgets' rule, a short last axis is channels
        axes = "".join("Q" if a not in UNKNOWN_AXES else a for a in axes[:-3]) + "YXC"
        named = ["C"] if data.shape[-1] > 1 else []
    elif not named and _channels_first(data.shape, axes):
        axes, notes = _decide_channels_first(data.shape, axes, channels)
        named = ["C"] if "C" in axes else []
    if len(named) > 1:
        raise ValueError(f"the file has two channel axes ({axes!r}, shape {data.shape}); save one channel axis")
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"the file's axes {axes!r} have no Y and X (image plane)")
    channel = named[0] if named else None
    # size-1 channel axes are squeezed; everything else but Y, X and the channel axis leads
    keep = [i for i, a in enumerate(axes) if not (a in "CS" and a != channel)]
    lead = [i for i in keep if axes[i] not in ("Y", "X", channel)]
    order = lead + [axes.index("Y"), axes.index("X")] + ([axes.index(channel)] if channel else [])
    squeezed = [i for i, a in enumerate(axes) if i not in order]
    data = np.transpose(data, order + squeezed).reshape([data.shape[i] for i in order])
    lead_axes = "".join(axes[i] for i in lead)
    if alpha and channel == "S":
        image = _drop_alpha(data, lead_axes)
        return dataclasses.replace(image, notes=notes + image.notes)
    return ImageFile(data, lead_axes, data.shape[-1] if channel else 1, notes)


def _channels_first(shape: tuple, axes: str) -> bool:
    """An unnamed axis of 3 or 4 just before the plane (``...QYX``): channels first or slices?"""
    return (len(axes) >= 3 and axes[-2:] == "YX" and axes[-3] in UNKNOWN_AXES
            and shape[-3] in CHANNELS_FIRST_SIZES)


def _decide_channels_first(shape: tuple, axes: str, channels: Optional[int]) -> tuple[str, tuple]:
    """The axes with the ambiguous axis named ``C`` (channels) or kept (planes), and the note
    that says which and how to give the axes; no note when ``channels`` equals its size (a
    classifier of that many channels can segment no other reading)."""
    n = shape[-3]
    lead = axes[:-3]
    hint = ("T" if lead else "") + "Q" * max(len(lead) - 1, 0)  # the leading axes, in the axes to suggest
    as_channels, as_planes = hint + "CYX", hint + "ZYX"
    unknown = (f"the file does not say whether its axis of {n} before the image plane holds {n} channels "
               f"(an {'RGB' if n == 3 else 'RGBA'} image saved channels first) or {n} slices")
    how = "or save the file with its axes (ImageJ hyperstack or OME-TIFF)"
    if channels == n:
        return lead + "CYX", ()
    if channels is None or channels > 1:
        return lead + "CYX", (f"read as {n} channels: {unknown}; if they are slices, give the axes (--axes "
                             f"{as_planes} on the command line, axes={as_planes!r} in Python), {how}",)
    return axes, (f"read as {n} planes, for a greyscale classifier: {unknown}; if they are channels, give the axes "
                  f"(--axes {as_channels} on the command line, axes={as_channels!r} in Python) and use a classifier "
                  f"trained on {n}-channel images, {how}",)


def _drop_alpha(data: np.ndarray, lead_axes: str) -> ImageFile:
    """Grey + alpha -> grey; RGB + alpha -> RGB (the alpha channel is last)."""
    data = data[..., :-1]
    if data.shape[-1] == 1:
        data = data[..., 0]
    return ImageFile(data, lead_axes, 1 if data.ndim == len(lead_axes) + 2 else data.shape[-1], (ALPHA_NOTE,))


def _with_channels(image: ImageFile, channels: int) -> ImageFile:
    if image.channels == channels:
        return image
    if image.channels == 4 and channels == 3:  # RGBA written without an alpha tag
        return ImageFile(image.data[..., :3], image.lead_axes, 3, (ALPHA_NOTE,))
    have = "greyscale" if image.channels == 1 else f"{image.channels} channels"
    want = "greyscale (1 channel)" if channels == 1 else f"{channels} channels"
    raise ValueError(f"the image has {have} but the classifier was trained on {want}; "
                     "convert the image, or train a classifier on images like it")


# ---- brush-label files ------------------------------------------------------------------
