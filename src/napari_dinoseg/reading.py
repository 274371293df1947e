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

:func:`read_pixel_size` / :func:`pixel_size_of` give the pixel size (µm) a file's metadata
states: OME-XML, ImageJ, TIFF resolution, PNG pHYs, or what an output of ``dinoseg apply``
records; writers' defaults (72 dpi, 1 pixel per unit, no unit) are ignored.
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

    with _open_pil(path) as im:
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


def _open_pil(path: Path):
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

#: Suffixes of the files brush labels are read from: lossless formats only (a JPEG's compression
#: changes the values along every stroke's edge).
LABEL_SUFFIXES = (".tif", ".tiff", ".png")
#: The most distinct colours (black and transparent aside) a colour label file may hold.
MAX_LABEL_COLOURS = 255
#: TIFF extra-sample kinds that are an alpha channel (associated, unassociated).
_ALPHA_SAMPLES = (1, 2)


@dataclass(frozen=True)
class LabelFile:
    """A brush-label file as :func:`read_label_file` reads it.

    Attributes
    ----------
    planes : list of (H, W) integer arrays
        Label values, 0 = unlabelled, 1..K = classes: one array per plane of the file (pages,
        slices, time points: its leading axes flattened in C order, as :attr:`ImageFile.planes`
        flattens an image's). The file's own integer dtype (a bool file: uint8); files of
        floats and colour files get the smallest unsigned dtype (uint8, uint16, uint32)
        holding their values.
    colours : tuple of (r, g, b) tuples, or None
        For a colour file (RGB / RGBA, not grey): ``colours[k - 1]`` is the colour of label
        value ``k`` (its distinct colours, black and transparent aside, in ascending
        ``(r, g, b)`` order); ``()`` when it holds only black. ``None`` for files of label
        values (greyscale, palette, one-channel TIFF).
    notes : tuple of str
        What was decided in reading it (a channel taken, pages read as planes, an RGB file
        read as grey), for the user.
    """

    planes: list
    colours: Optional[tuple] = None
    notes: tuple = ()


def read_label_file(path, planes: Optional[int] = None) -> LabelFile:
    """Read a brush-label file as label values, not as an image: no channel to match, no
    normalisation.

    - Palette PNG / TIFF (the usual mask format): the palette indices are the label values
      (the palette's colours and transparency are ignored).
    - Greyscale PNG / TIFF, of any integer dtype, or of floats holding whole numbers (as Fiji
      saves labels): the values are the label values.
    - RGB / RGBA PNG / TIFF: each distinct colour is a class, black and fully transparent
      pixels unlabelled; the colours get label values 1..K in ascending ``(r, g, b)`` order
      (:attr:`LabelFile.colours`). An RGB file whose three channels are equal everywhere is
      read as greyscale values.
    - Grey + alpha: the grey values, 0 where fully transparent.
    - TIFF of several channels that are not RGB (2-channel, ``CYX``): read when that is not
      ambiguous, all channels equal (the first is taken) or only one channel holding any
      non-zero value (that one is taken), with a note saying which; refused otherwise.
    - Multi-page TIFF / stacks (``ZYX``, ``TZYX``, pages without metadata): one plane per
      page (leading axes flattened in C order), to match an image's planes one by one.
    - A TIFF of 3 or 4 samples stored as separate planes (``SYX``, as tifffile writes a
      ``(3, H, W)`` array): ``planes`` planes when ``planes`` (the image's plane count)
      equals their number, else an RGB(A) colour file, with a note.

    Parameters
    ----------
    path
        A ``.tif`` / ``.tiff`` / ``.png`` file (JPEG refused: lossy).
    planes
        The plane count of the image the file labels, deciding the ``SYX`` case above;
        ``None``: unknown (read as colours).

    Returns
    -------
    LabelFile, its :attr:`~LabelFile.planes` checked: whole numbers from 0 to 2**32 - 1.

    Raises
    ------
    ValueError
        Naming what is wrong, without the file's name (the caller adds it): missing, empty,
        unreadable or corrupt file, JPEG or other suffix, an unsupported colour mode,
        ambiguous channels, more than ``MAX_LABEL_COLOURS`` colours, a float colour file, or
        a value that cannot be a label value (negative, fraction, NaN, inf, above 2**32 - 1),
        with the value and where it is (row, column, plane).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        raise ValueError("brush labels cannot be read from a JPEG: its lossy compression changes the values "
                         "along every stroke's edge; save the labels as PNG or TIFF")
    if suffix not in LABEL_SUFFIXES:
        raise ValueError(f"not a label file (expected {', '.join(LABEL_SUFFIXES)})")
    if not path.is_file():
        raise ValueError("no such file")
    if path.stat().st_size == 0:
        raise ValueError("empty file")
    from PIL import Image

    try:
        data, axes, alpha, rgb, notes = _label_tiff(path) if suffix in TIFF_SUFFIXES else _label_pil(path)
    except PermissionError:
        raise ValueError("permission denied: this user cannot read the file") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"the file is too large to read as labels: {err}") from None
    except (ValueError, OSError, KeyError, IndexError, TypeError, SyntaxError, EOFError) as err:
        raise ValueError(f"cannot read the label file (corrupt or not what its name says): {err}") from None
    if data.size == 0 or data.ndim < 2:
        raise ValueError("no image data in the file (corrupt or truncated)")
    data, channel, more = _label_axes(data, axes, rgb, planes)
    notes += more
    if channel is None:
        return LabelFile(_label_planes(data), None, notes)
    painted = None
    if alpha and data.shape[-1] > 1:
        painted, data = data[..., -1] > 0, data[..., :-1]
    if data.shape[-1] == 1:
        data = data[..., 0]
    elif rgb and data.shape[-1] == 3:
        if (data[..., 0] == data[..., 1]).all() and (data[..., 1] == data[..., 2]).all():
            data, notes = data[..., 0], notes + ("its red, green and blue are equal at every pixel: read as grey "
                                                 "values, the label values",)
        else:
            colours, values = _colour_classes(data, painted)
            return LabelFile(_label_planes(values), colours, notes)
    else:
        data, note = _one_channel(data)
        notes += (note,)
    if painted is not None:
        data = np.where(painted, data, np.zeros((), data.dtype))
    return LabelFile(_label_planes(data), None, notes)


def _label_tiff(path: Path) -> tuple[np.ndarray, str, bool, bool, tuple]:
    """``(data, axes, alpha, rgb, notes)``: the first series, its axes, whether its last sample
    is alpha, whether its samples are RGB."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ValueError("no image series in the file")
        series = tif.series[0]
        data, axes = np.asarray(series.asarray()), series.axes
        page = tif.pages[0] if len(tif.pages) else None
        extra = tuple(int(e) for e in page.extrasamples) if page is not None else ()
        rgb = page is not None and int(page.photometric) == 2  # RGB
        others = len(tif.series) - 1
    notes = (f"the file holds {others + 1} image series; only the first, of shape {data.shape}, was read",) \
        if others else ()
    return data, axes, "S" in axes and bool(extra) and extra[-1] in _ALPHA_SAMPLES, rgb, notes


def _label_pil(path: Path) -> tuple[np.ndarray, str, bool, bool, tuple]:
    """``(data, axes, alpha, rgb, notes)`` of a PNG: palette indices for palette images."""
    from PIL import Image

    with Image.open(path) as im:
        mode = im.mode
        if mode in ("P", "L", "1", "I", "F") or mode.startswith("I;"):
            data = np.asarray(im)
            return (data.astype(np.uint8) if data.dtype == bool else data), "YX", False, False, ()
        if mode in ("PA", "LA", "La"):
            return np.asarray(im.convert("LA") if mode == "La" else im), "YXS", True, False, ()
        if mode in ("RGB", "RGBA", "RGBa"):
            return np.asarray(im.convert("RGBA") if mode == "RGBa" else im), "YXS", mode != "RGB", True, ()
    raise ValueError(f"its colour mode {mode} cannot hold brush labels; save them as greyscale, palette or RGB")


def _label_axes(data: np.ndarray, axes: str, rgb: bool,
                planes: Optional[int]) -> tuple[np.ndarray, Optional[str], tuple]:
    """``(*lead, H, W)`` or, with a channel axis of more than one sample, ``(*lead, H, W, C)``;
    that axis's letter (``None`` without); notes."""
    if len(axes) != data.ndim:
        raise ValueError(f"the file's axes {axes!r} do not match its shape {data.shape}")
    notes: tuple = ()
    named = [a for a in axes if a in "CS" and data.shape[axes.index(a)] > 1]
    if not named and set(axes) & UNKNOWN_AXES and data.ndim >= 3 and data.shape[-1] <= MAX_CHANNELS:
        axes = axes[:-3] + "YXC"  # tifffile's way with an (H, W, C) array of few channels
        named = ["C"] if data.shape[-1] > 1 else []
    if len(named) > 1:
        raise ValueError(f"the file has two channel axes ({axes!r}, shape {data.shape}); a label file holds one "
                         "value per pixel: save the labels as one channel")
    if named == ["S"] and axes.index("S") < axes.index("Y") and data.shape[axes.index("S")] in CHANNELS_FIRST_SIZES:
        n = data.shape[axes.index("S")]
        if planes == n:  # a (3, H, W) stack that tifffile stored as RGB
            axes = axes.replace("S", "Q")
            named = []
            notes = (f"its {n} samples stored as separate planes (as tifffile writes a ({n}, H, W) array) were read "
                     f"as {n} planes, one per plane of the image",)
        else:
            notes = (f"its {n} samples stored as separate planes were read as {'RGB' if n == 3 else 'RGBA'} colours; "
                     f"if they are {n} planes, save them as pages (tifffile.imwrite(..., photometric='minisblack'))",)
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"the file's axes {axes!r} have no Y and X (image plane)")
    channel = named[0] if named else None
    keep = [i for i, a in enumerate(axes) if not (a in "CS" and a != channel)]  # size-1 channel axes squeezed
    lead = [i for i in keep if axes[i] not in ("Y", "X", channel)]
    order = lead + [axes.index("Y"), axes.index("X")] + ([axes.index(channel)] if channel else [])
    squeezed = [i for i in range(data.ndim) if i not in order]
    data = np.transpose(data, order + squeezed).reshape([data.shape[i] for i in order])
    return data, channel, notes


def _one_channel(data: np.ndarray) -> tuple[np.ndarray, str]:
    """The one channel of ``(..., C)`` labels that carries them (all equal: the first; only one
    with any non-zero value: that one), and a note saying which; refused when ambiguous."""
    n = data.shape[-1]
    if all((data[..., c] == data[..., 0]).all() for c in range(1, n)):
        return data[..., 0], f"its {n} channels are equal: the first was read"
    used = [c for c in range(n) if data[..., c].any()]
    if len(used) == 1:
        return data[..., used[0]], (f"of its {n} channels only channel {used[0] + 1} holds labels "
                                    "(the others are 0 everywhere): that one was read")
    raise ValueError(f"a label file holds one label value per pixel, but this one has {n} channels "
                     f"(shape {data.shape}) and channels {', '.join(str(c + 1) for c in used)} hold different values; "
                     "save the labels as one channel (a greyscale or palette PNG, or a one-channel TIFF)")


def _colour_classes(rgb: np.ndarray, painted: Optional[np.ndarray]) -> tuple[tuple, np.ndarray]:
    """``(..., 3)`` integer colours -> (distinct colours other than black in ascending order,
    ``(...)`` label values: 1 + the colour's index, 0 for black and unpainted pixels)."""
    if not np.issubdtype(rgb.dtype, np.integer) or rgb.dtype == bool:
        raise ValueError(f"a colour label file must hold integer colours, this one holds {rgb.dtype} values; save "
                         "the labels as an 8-bit RGB or palette image, or as label values")
    c = rgb.astype(np.int64)
    codes = (c[..., 0] << 32) | (c[..., 1] << 16) | c[..., 2]
    if painted is not None:
        codes[~painted] = 0
    colours = np.unique(codes)
    colours = colours[colours != 0]
    if len(colours) > MAX_LABEL_COLOURS:
        raise ValueError(f"it holds {len(colours)} distinct colours besides black; a colour label file holds one "
                         f"colour per class (at most {MAX_LABEL_COLOURS}): antialiased painting or lossy compression "
                         "blurs the colours of stroke edges; paint without antialiasing, or save the labels as "
                         "greyscale or palette values (0 = unlabelled, 1..K = classes)")
    values = np.searchsorted(colours, codes).astype(np.uint8) + np.uint8(1)
    values[codes == 0] = 0
    table = tuple((int(v >> 32), int((v >> 16) & 0xFFFF), int(v & 0xFFFF)) for v in colours)
    return table, values


def _label_planes(data: np.ndarray) -> list:
    """``(*lead, H, W)`` label values -> checked ``(H, W)`` integer planes (see :class:`LabelFile`)."""
    from .classify import MAX_LABEL

    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise ValueError(f"label values must be numbers, the file holds {data.dtype}")
    if data.size:
        floating = np.issubdtype(data.dtype, np.floating)
        whole = "label values are whole numbers, 0 = unlabelled and 1..K = classes"
        if floating:
            bad = ~np.isfinite(data)
            if bad.any():
                raise ValueError(f"it holds the value {_first(data, bad)}: {whole}; it holds fractions, NaN or inf: "
                                 "save the brush labels as an integer image")
            bad = data != np.round(data)
            if bad.any():
                raise ValueError(f"it holds the fraction {_first(data, bad)}: {whole}; it holds fractions, NaN or "
                                 "inf: save the brush labels as an integer image")
        if data.min() < 0:
            raise ValueError(f"it holds the negative value {_first(data, data < 0)}: {whole}")
        if data.max() > MAX_LABEL:
            raise ValueError(f"it holds the value {_first(data, data > MAX_LABEL)}, too large for a class id: label "
                             f"values must be at most {MAX_LABEL} (label images are written as uint32 at most); "
                             "renumber the classes")
        if floating:
            top = data.max()
            data = data.astype(next(t for t in (np.uint8, np.uint16, np.uint32) if top <= np.iinfo(t).max))
    return list(data.reshape(-1, *data.shape[-2:]))


def _first(data: np.ndarray, bad: np.ndarray) -> str:
    """The first flagged value and where it is: ``"1e+20 at row 3, column 5 (plane 2)"``."""
    index = np.unravel_index(int(np.argmax(bad)), data.shape)
    value = str(data[index])  # numpy's shortest repr: 1e+20 for a float32, not 1.0000000200408773e+20
    where = f"at row {index[-2]}, column {index[-1]}"
    if data.ndim > 2:
        where += f" (plane {int(np.ravel_multi_index(index[:-2], data.shape[:-2])) + 1} of " \
                 f"{int(np.prod(data.shape[:-2]))})"
    return f"{value} {where}"


# ---- pixel sizes from the file's metadata -------------------------------------------------------

#: µm per unit of the length units found in OME-XML and ImageJ metadata (lower case; ``µ`` is
#: the micro sign, to which the Greek mu and ImageJ's ``\u00B5`` escape are turned first).
LENGTH_UNITS_UM = {"pm": 1e-6, "å": 1e-4, "angstrom": 1e-4, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
                   "µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
                   "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4,
                   "centimetre": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6, "in": 25400.0, "inch": 25400.0}
#: µm per TIFF ResolutionUnit (2 inch, 3 cm, and tifffile's 4 mm, 5 µm); 1 (none) says nothing.
RESOLUTION_UNITS_UM = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}
#: Resolutions (pixels per inch) that image software writes by default, whatever the image:
#: screen resolutions, ignored (in inches, and their equivalents per cm).
DEFAULT_DPI = (72.0, 96.0)
#: Where a pixel size came from (:attr:`PixelSize.source`).
FROM_OME, FROM_IMAGEJ, FROM_TIFF, FROM_PNG, FROM_DINOSEG = (
    "OME-XML PhysicalSizeX", "ImageJ metadata", "TIFF resolution", "PNG pHYs", "dinoseg output metadata")


@dataclass(frozen=True)
class PixelSize:
    """A pixel size read from a file's metadata.

    Attributes
    ----------
    um : float
        µm per pixel along x (positive, finite).
    source : str
        Where it was read: :data:`FROM_OME`, :data:`FROM_IMAGEJ`, :data:`FROM_TIFF`,
        :data:`FROM_PNG`, or :data:`FROM_DINOSEG` followed by the source the output records
        (``"dinoseg output metadata (input: ImageJ metadata)"``).
    note : str
        What the user should know ("" when nothing): pixels that are not square (x used).
    """

    um: float
    source: str
    note: str = ""


def read_pixel_size(path) -> Optional[float]:
    """µm per pixel from an image file's metadata, or ``None`` (see :func:`pixel_size_of`)."""
    found = pixel_size_of(path)
    return None if found is None else found.um


def pixel_size_of(path) -> Optional[PixelSize]:
    """The pixel size an image file's metadata gives, in µm, with where it was found.

    Looked for in this order, the first that gives a size wins:

    1. an output of ``dinoseg apply``: the ``pixel_size_um`` it records (the size its run used);
    2. OME-XML: the first image's ``PhysicalSizeX`` in its ``PhysicalSizeXUnit`` (µm when
       absent; nm, mm, Å, ... converted);
    3. ImageJ metadata: its ``unit`` (micron, µm, nm, mm, cm, inch, ...) and the XResolution
       tag (pixels per unit); no unit, or ``pixel``, is no size;
    4. the TIFF XResolution tag in its ResolutionUnit (inch, cm; tifffile's mm and µm too);
    5. a PNG's pHYs chunk in pixels per metre (as PIL reports it).

    Ignored, as they say nothing of the image: a resolution without a unit (ResolutionUnit
    none, tifffile's default), a resolution of 1 pixel per unit (the default of many writers),
    72 and 96 pixels per inch (screen resolutions that image software writes by default, also
    when given per cm or per metre), and JPEG densities (almost always such a default).
    Pixels that are not square: the x size, with a note.

    Parameters
    ----------
    path
        A TIFF, PNG or JPEG file.

    Returns
    -------
    :class:`PixelSize`, or ``None`` when the metadata gives no size (or a meaningless one: not
    a positive finite number, an unknown unit, malformed OME-XML).

    Raises
    ------
    OSError
        The file cannot be opened.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _tiff_pixel_size(path)
    if suffix == ".png":
        return _png_pixel_size(path)
    return None


def _tiff_pixel_size(path: Path) -> Optional[PixelSize]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not len(tif.pages):
                return None
            page = tif.pages[0]
            found = _dinoseg_pixel_size(tif)
            if found is None and tif.is_ome:
                found = _ome_pixel_size(tif.ome_metadata)
            if found is None and tif.is_imagej:
                found = _imagej_pixel_size(tif.imagej_metadata or {}, page)
            if found is None:
                found = _resolution_pixel_size(page)
    except (tifffile.TiffFileError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None  # metadata that cannot be read says nothing
    return found


def _dinoseg_pixel_size(tif) -> Optional[PixelSize]:
    """The ``pixel_size_um`` and ``pixel_size_from`` an output of ``dinoseg apply`` records."""
    meta = tif.shaped_metadata[0] if tif.shaped_metadata else {}
    if not isinstance(meta, dict) or "dinoseg_bundle" not in meta:
        return None
    size = _positive(meta.get("pixel_size_um"))
    source = meta.get("pixel_size_from")
    if size is None:
        return None
    return PixelSize(size, f"{FROM_DINOSEG} ({source})" if isinstance(source, str) and source else FROM_DINOSEG)


def _ome_pixel_size(xml: Optional[str]) -> Optional[PixelSize]:
    from xml.etree import ElementTree

    if not xml:
        return None
    try:
        pixels = ElementTree.fromstring(xml).find(".//{*}Image/{*}Pixels")
    except ElementTree.ParseError:
        return None
    if pixels is None:
        return None
    x = _length_um(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit", "µm"))
    y = _length_um(pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeYUnit", "µm"))
    return None if x is None else PixelSize(x, FROM_OME, _anisotropy(x, y))


def _imagej_pixel_size(meta: dict, page) -> Optional[PixelSize]:
    unit = meta.get("unit")
    if not isinstance(unit, str) or "XResolution" not in page.tags:
        return None
    xres, yres = page.resolution
    x = _length_um(1 / xres if xres else None, unit)
    y = _length_um(1 / yres if yres else None, unit)
    return None if x is None else PixelSize(x, FROM_IMAGEJ, _anisotropy(x, y))


def _resolution_pixel_size(page) -> Optional[PixelSize]:
    per_unit = RESOLUTION_UNITS_UM.get(int(page.resolutionunit))
    if per_unit is None or "XResolution" not in page.tags:
        return None
    xres, yres = (float(r) for r in page.resolution)
    if not (_positive(xres) and _positive(yres)) or _default_resolution(xres, per_unit):
        return None
    x, y = per_unit / xres, per_unit / yres
    return PixelSize(x, FROM_TIFF, _anisotropy(x, y))


def _png_pixel_size(path: Path) -> Optional[PixelSize]:
    from PIL import Image

    try:
        with _open_pil(path) as im:
            dpi = im.info.get("dpi")  # PIL gives it for a pHYs chunk in pixels per metre only
    except (ValueError, SyntaxError, Image.UnidentifiedImageError):
        return None
    if not (isinstance(dpi, tuple) and len(dpi) == 2 and _positive(dpi[0]) and _positive(dpi[1])):
        return None
    if _default_resolution(float(dpi[0]), 25400.0):
        return None
    x, y = 25400.0 / float(dpi[0]), 25400.0 / float(dpi[1])
    return PixelSize(x, FROM_PNG, _anisotropy(x, y))


def _default_resolution(per_unit: float, unit_um: float) -> bool:
    """Whether ``per_unit`` pixels per unit of ``unit_um`` µm is a writer's default: 1 per unit,
    or 72 / 96 per inch (to 0.1 %: PNG stores them as whole pixels per metre)."""
    dpi = per_unit * 25400.0 / unit_um
    return math.isclose(per_unit, 1.0) or any(math.isclose(dpi, d, rel_tol=1e-3) for d in DEFAULT_DPI)


def _length_um(value, unit) -> Optional[float]:
    """``value`` in ``unit`` as µm, or ``None`` (no value, not positive, an unknown unit)."""
    size = _positive(value)
    if size is None or not isinstance(unit, str):
        return None
    key = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").replace("\u03bc", "µ").lower()
    factor = LENGTH_UNITS_UM.get(key)
    return None if factor is None else _positive(size * factor)


def _positive(value) -> Optional[float]:
    """``value`` as a positive finite float, else ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _anisotropy(x: float, y: Optional[float]) -> str:
    if y is None or math.isclose(x, y, rel_tol=1e-6):
        return ""
    return f"its pixels are not square ({x:.6g} µm wide, {y:.6g} µm high): the width was used"
