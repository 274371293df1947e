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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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


def read_image(path, channels: Optional[int] = None, axes: Optional[str] = None) -> ImageFile:
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

    Raises
    ------
    ValueError
        Not an image file, empty, unreadable, axes without a plane, a channel count other
        than ``channels`` (both counts named), or bad ``axes``.
    TypeError
        ``axes`` not a string.
    """
    axes = None if axes is None else check_axes(axes)
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise ValueError("empty file")
    try:
        data, found, alpha, notes = _read_tiff(path) if path.suffix.lower() in TIFF_SUFFIXES else _read_pil(path)
    except PermissionError:
        raise ValueError("permission denied: this user cannot read the file") from None
    except (ValueError, OSError, KeyError, IndexError, TypeError, SyntaxError, EOFError) as err:
        raise ValueError(f"cannot read the image (corrupt or not what its name says): {err}") from None
    if data.size == 0 or data.ndim < 2:
        raise ValueError("no image data in the file (corrupt or truncated)")
    given = (axes is not None and path.suffix.lower() in TIFF_SUFFIXES and len(axes) == data.ndim
             and (axes.index("Y"), axes.index("X")) == (found.find("Y"), found.find("X")))
    if given:
        alpha = alpha and "S" in axes
    image = _channels_last(data, axes if given else found, alpha, channels)
    image = _with_channels(image, channels) if channels is not None else image
    return dataclasses.replace(image, notes=notes + image.notes) if notes else image


def _read_tiff(path: Path) -> tuple[np.ndarray, str, bool, tuple]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ValueError("no image series in the file")
        series = tif.series[0]
        data, axes = np.asarray(series.asarray()), series.axes
        extra = tif.pages[0].extrasamples if len(tif.pages) else ()
        others = [s.shape for s in tif.series[1:]]
    notes = (f"the file holds {len(others) + 1} image series; only the first, of shape {data.shape}, was "
             f"segmented (the others: {', '.join(map(str, others[:3]))}{' …' if len(others) > 3 else ''})",) \
        if others else ()
    return data, axes, "S" in axes and len(extra) > 0, notes


def _read_pil(path: Path) -> tuple[np.ndarray, str, bool, tuple]:
    from PIL import Image

    with Image.open(path) as im:
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("L" if mode == "1" else "RGB")
        data = np.asarray(im)
        mode = im.mode
    alpha = mode in ("LA", "RGBA", "PA", "La", "RGBa")
    return data, "YX" if data.ndim == 2 else "YXS", alpha, ()


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
