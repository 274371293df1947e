"""The train dock's layers for a multiscale (pyramid) image layer (GUI thread).

A multiscale image is trained on and predicted at one *working level* (level 0 unless the user
chooses another). Its brush strokes live in a single-scale Labels layer of that level's shape whose
data is a zarr array on disk (chunks of 1024², fill 0: only painted chunks take disk; napari itself
holds the level's plane, one byte a pixel, to draw it, and the dock says how much), in a folder under the system's temporary folder (``DINOSEG_WORK`` overrides
it) that the dock names. The predictions of the views predicted accumulate in a labels pyramid on
disk beside it, shown as a multiscale Labels layer (napari reads only what is on screen). Each layer
sits over the image level it belongs to: the image's scale times the level's downsample factor
(napari puts pixel ``i`` of a level at level 0's pixel ``i * factor``; so do these layers).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
from napari.layers import Image, Labels

from ..memory_limits import gib
from ..pixel_scale import format_pixel_sizes
from ..planes import Slices
from ._layers import IMAGE_KEY, add_result, find_result, place_result, spatial_shape
from ._pyramid_job import region_in_level

#: Image-layer metadata key: the folder holding the on-disk layers made for it.
FOLDER_KEY = "dinoseg_folder"
#: Labels-layer metadata keys: the working level it is of, and the zarr store holding its data.
LEVEL_KEY = "dinoseg_level"
STORE_KEY = "dinoseg_store"
#: Environment variable naming the folder where strokes and predictions of multiscale images go.
WORK_ENV = "DINOSEG_WORK"
#: Chunk side of the on-disk strokes (px).
CHUNK = 1024
#: Role of the whole-image segmentation layer ("<image> segmentation (whole)").
WHOLE = "segmentation (whole)"


def is_pyramid(layer) -> bool:
    """Whether ``layer`` is a multiscale image layer."""
    return isinstance(layer, Image) and bool(layer.multiscale)


def pyramid_problem(image: Image) -> Optional[str]:
    """Why the train dock cannot use a multiscale image layer (``None``: it can): a stack of
    planes (a leading axis before rows and columns)."""
    if len(spatial_shape(image)) > 2:
        return (f"image layer {image.name!r} is a multiscale stack of shape {spatial_shape(image)}: the train dock "
                "takes multiscale images of one plane (rows, columns[, colour]); open one plane of each level, "
                f"e.g. viewer.add_image([lev[0] for lev in viewer.layers[{image.name!r}].data], multiscale=True)")
    return None


def level_shape(image: Image, level: int) -> tuple[int, int]:
    """``(H, W)`` of one level of a multiscale image layer."""
    return tuple(int(n) for n in image.data[level].shape[:2])


def level_factors(image: Image, level: int) -> np.ndarray:
    """``(rows, cols)`` downsample factor of ``level`` over level 0."""
    return np.asarray(image.downsample_factors[level], float)[-2:]


def level_geometry(image: Image, level: int) -> dict:
    """``{"scale": ..., "translate": ..., "units": ...}`` putting a layer of ``level``'s shape over
    that level (the image's units too: napari ignores every layer's units when they differ)."""
    return {"scale": np.asarray(image.scale[-2:], float) * level_factors(image, level),
            "translate": np.asarray(image.translate[-2:], float), "units": tuple(image.units)[-2:]}


def level_pixel_size(base: Optional[float], image: Image, level: int) -> Optional[float]:
    """µm per pixel of ``level`` from level 0's (``base``; ``None``: unknown), when its pixels are square."""
    fy, fx = level_factors(image, level)
    return None if base is None or not np.isclose(fy, fx) else float(base * fx)


def describe_level(image: Image, level: int, base: Optional[float]) -> str:
    """``"level 0: 16384×16384, 0.020 µm/px"`` (the size alone when the pixel size is unknown)."""
    h, w = level_shape(image, level)
    size = level_pixel_size(base, image, level)
    return f"level {level}: {h}×{w}" + (f", {format_pixel_sizes(size)[0]}" if size is not None else "")


def level_choices(image: Image, base: Optional[float]) -> list[tuple[str, int]]:
    """The resolution menu's ``(text, level)`` choices of a multiscale image layer."""
    return [(describe_level(image, k, base), k) for k in range(len(image.data))]


def view_region(viewer, image: Image, level: int) -> Optional[Slices]:
    """Rows and columns of ``level`` on screen; ``None`` outside a 2-D view or when none of it is on
    screen. From the camera (its centre, zoom and the canvas's size: the rectangle on screen), else
    from the image layer's ``corner_pixels`` at the level napari displays (``data_level``), which
    napari 0.9 widens to whole chunks of that level."""
    if viewer.dims.ndisplay != 2:
        return None
    shape = level_shape(image, level)
    size = np.asarray(getattr(getattr(viewer, "canvas", None), "size", None) or (0, 0), float)[-2:]
    if np.all(size > 0) and viewer.scene.camera.zoom > 0:
        centre = np.asarray(viewer.scene.camera.center, float)[-2:]
        half = size / (2 * viewer.scene.camera.zoom)
        ends = np.array([image.world_to_data(centre + sign * half)[-2:] for sign in (-1, 1)], float)
        corners = np.array([np.floor(ends.min(axis=0) + 0.5), np.ceil(ends.max(axis=0) - 0.5)])  # pixels touched
        return region_in_level(corners, tuple(1 / level_factors(image, level)), shape)
    ratio = tuple(level_factors(image, image.data_level) / level_factors(image, level))
    return region_in_level(np.asarray(image.corner_pixels)[:, -2:], ratio, shape)


def work_folder(image: Image) -> Path:
    """The folder of ``image``'s on-disk layers (made on first use, kept in its metadata):
    ``$DINOSEG_WORK/<image>-XXXX`` or ``<temp>/dinoseg/<image>-XXXX``."""
    known = image.metadata.get(FOLDER_KEY)
    if known and Path(known).is_dir():
        return Path(known)
    root = Path(os.environ.get(WORK_ENV) or Path(tempfile.gettempdir()) / "dinoseg")
    root.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", image.name)[:40] or "image"
    folder = Path(tempfile.mkdtemp(prefix=f"{slug}-", dir=root))
    image.metadata[FOLDER_KEY] = str(folder)
    return folder


def add_strokes(viewer, image: Image, level: int) -> Labels:
    """Add an empty Labels layer for ``image``'s strokes at ``level``: a zarr array on disk
    (``<folder>/strokes-level<k>.zarr``, uint8, chunks of :data:`CHUNK`², fill 0)."""
    import zarr

    shape = level_shape(image, level)
    path = work_folder(image) / f"strokes-level{level}.zarr"
    data = zarr.create_array(str(path), shape=shape, dtype=np.uint8, chunks=tuple(min(CHUNK, n) for n in shape),
                             fill_value=0, overwrite=True)
    return viewer.add_labels(data, name=f"{image.name} labels", **level_geometry(image, level),
                             metadata={IMAGE_KEY: image.name, LEVEL_KEY: level, STORE_KEY: str(path)})


def strokes_note(image: Image, labels: Labels) -> str:
    """Where a multiscale image's strokes are kept, for the status line."""
    h, w = labels.data.shape[:2]
    store = labels.metadata.get(STORE_KEY)
    if store is None:
        return f"strokes of {image.name!r} are in {labels.name!r} ({h}×{w}, in memory)"
    shown = h * w * np.dtype(labels.data.dtype).itemsize  # napari holds a single-scale layer's plane to draw it
    return (f"strokes of {image.name!r} are kept on disk in {store} ({h}×{w}, only painted chunks are stored; "
            f"napari holds {gib(shown)} in memory to show them)")


def predictions_path(image: Image, level: int) -> Path:
    """Where the predictions of ``image``'s views at ``level`` accumulate (a labels pyramid)."""
    return work_folder(image) / f"predictions-level{level}.ome.zarr"


def whole_path(image: Image, level: int) -> Path:
    """A new directory for a whole-image segmentation of ``image`` at ``level`` (numbered: never
    one written before)."""
    folder = work_folder(image)
    n = 1
    while (folder / f"segmentation-level{level}-{n}.ome.zarr").exists():
        n += 1
    return folder / f"segmentation-level{level}-{n}.ome.zarr"


def show_pyramid(viewer, image: Image, role: str, level: int, path: Path, colours: Optional[Labels],
                 opacity: float = 0.6) -> Labels:
    """``image``'s result layer ``role``: the labels pyramid at ``path`` as a multiscale Labels layer
    over ``level``; the layer there refreshed when it shows that pyramid, else a new one. Placed
    above the image's strokes and shown (:func:`._layers.place_result`), in the strokes' colours."""
    from ..ngff import open_ngff

    layer = find_result(viewer, image.name, role)
    if layer is not None and layer.metadata.get(STORE_KEY) == str(path):
        layer.refresh()
        place_result(viewer, image, layer)
    else:
        levels = list(open_ngff(path).levels)
        layer = add_result(viewer, image, role, Labels(levels, multiscale=True, opacity=opacity,
                                                       metadata={STORE_KEY: str(path), LEVEL_KEY: level},
                                                       **level_geometry(image, level)))
    if colours is not None and layer.colormap is not colours.colormap:
        layer.colormap = colours.colormap
    return layer
