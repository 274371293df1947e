"""Brush-label files -> label planes: greyscale or palette values, or colours, each colour a class.

What ``dinoseg train`` (and anyone giving strokes painted elsewhere) reads: lossless files only
(TIFF, PNG), one plane per image plane, label values 0 (unlabelled), 1..K; a colour file's
distinct colours become classes 1..K in a stated order. See :func:`read_label_file`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .image import MAX_CHANNELS
from .reading import CHANNELS_FIRST_SIZES, TIFF_SUFFIXES, UNKNOWN_AXES

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
