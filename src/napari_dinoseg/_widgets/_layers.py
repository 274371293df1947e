"""Small helpers the dock widgets share for napari layers.

Every result layer (predictions, uncertainty, similarity, CAS labels, parts, ...) belongs to one
image layer: it is named ``"<image> <role>"``, carries ``(role, image name)`` in its metadata
under :data:`RESULT_KEY`, and each time it is written it is put directly above that image's
brush-labels layer (or the image) and shown; when layers of another image are drawn over that
image, the image comes to the top with its strokes and results. So a result is never written
where the user cannot see it, nor drawn over another image.

A result is written by updating the layer there in place, or replacing it by a new one when it
cannot hold the new data (:func:`fits`): :func:`set_result` (all of its data) and
:func:`result_layer` (a layer to write some slices into, the others kept).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from napari.layers import Image, Labels, Layer

#: Labels-layer metadata key naming the image layer the strokes were painted on.
IMAGE_KEY = "dinoseg_image"
#: Result-layer metadata key: ``(role, image layer name)``.
RESULT_KEY = "dinoseg_result"
#: Blending modes through which a layer below stays visible whatever the opacity.
SEE_THROUGH = {"additive", "minimum"}
#: A visible image layer above a result, over this opacity, hides it.
COVERING_OPACITY = 0.5


def spatial_shape(image: Image) -> tuple[int, ...]:
    """Shape of an image layer without its colour axis: ``(*lead, H, W)``."""
    shape = tuple(image.data.shape)
    return shape[:-1] if getattr(image, "rgb", False) else shape


def current_index(viewer, layer) -> tuple[int, ...]:
    """The plane of ``layer`` (Image or Labels, spatial shape ``(*lead, H, W)``) in view: one index
    per leading axis, clipped to it (``()`` for a 2-D layer). The viewer's point is taken into
    the layer's own data coordinates (its scale and translate), so a layer whose slices are 2 µm
    apart beside one whose slices are 1 µm apart gets its own slice, not the step count."""
    lead = spatial_shape(layer)[:-2]
    if not lead:
        return ()
    point = np.asarray(viewer.dims.point[-layer.ndim:], dtype=float)
    data = np.asarray(layer.world_to_data(point), dtype=float)
    return tuple(int(min(max(round(float(d)), 0), n - 1)) for d, n in zip(data[:len(lead)], lead))


def multiscale_refusal(name: str, dock: str = "this dock") -> str:
    """Why ``dock`` cannot use a multiscale (pyramid) layer yet, and what to do (the train dock can)."""
    return (f"layer {name!r} is multiscale (a pyramid): {dock} cannot use it yet (the train dock can); open "
            "its full-resolution level as a plain layer to use it here (e.g. in the console: "
            f"viewer.add_image(viewer.layers[{name!r}].data[0]))")


def refuse_multiscale_when_picked(widget, combos: list, dock: str) -> None:
    """Say in ``widget``'s status line, as soon as a multiscale layer is picked in one of the layer
    menus ``combos`` (and for the layers picked now), that ``dock`` cannot use it: before any click."""

    def check(*_args) -> None:
        picked = [combo.value for combo in combos]
        bad = next((lay for lay in picked if lay is not None and getattr(lay, "multiscale", False)), None)
        if bad is not None:
            widget._status.value = multiscale_refusal(bad.name, dock)

    for combo in combos:
        combo.changed.connect(check)
    check()


def geometry(layer: Layer, ndim: Optional[int] = None) -> dict:
    """``{"scale": ..., "translate": ...}`` of ``layer``'s last ``ndim`` axes (default: its spatial
    ones, :func:`spatial_shape`): the keyword arguments that put a new layer over it."""
    n = len(spatial_shape(layer)) if ndim is None else ndim
    return {"scale": layer.scale[-n:], "translate": layer.translate[-n:]}


def fits(layer: Optional[Layer], kind, shape: tuple[int, ...], dtype=None) -> bool:
    """Whether ``layer`` can be updated in place with data of ``shape`` (and ``dtype``, when
    given): it is a ``kind`` whose data has them."""
    return isinstance(layer, kind) and tuple(layer.data.shape) == tuple(shape) and \
        (dtype is None or layer.data.dtype == dtype)


def set_layer(viewer, name: str, kind, data: np.ndarray, kwargs: dict):
    """The layer ``name`` holding ``data``: updated in place when it :func:`fits`, else (re)made
    with ``kwargs``; returned."""
    layers = viewer.layers
    old = layers[name] if name in layers else None
    if fits(old, kind, np.shape(data)):
        old.data = data
        return old
    if old is not None:
        layers.remove(old)
    return viewer.add_layer(kind(data, name=name, **kwargs))


# ---- result layers ---------------------------------------------------------------------


def result_name(image_name: str, role: str) -> str:
    """The name of ``image_name``'s result layer ``role``: ``"<image> <role>"``."""
    return f"{image_name} {role}"


def result_of(layer: Layer) -> Optional[tuple[str, str]]:
    """``(role, image name)`` of a result layer, ``None`` for any other layer."""
    value = layer.metadata.get(RESULT_KEY)
    return tuple(value) if isinstance(value, (tuple, list)) and len(value) == 2 else None


def find_result(viewer, image_name: str, role: str) -> Optional[Layer]:
    """``image_name``'s result layer ``role``, or ``None``."""
    return next((lay for lay in viewer.layers if result_of(lay) == (role, image_name)), None)


def results(viewer, role: Optional[str] = None) -> list[Layer]:
    """Every result layer (of ``role``, when given), bottom to top."""
    return [lay for lay in viewer.layers if result_of(lay) is not None and role in (None, result_of(lay)[0])]


def strokes_of(viewer, image: Image) -> Optional[Labels]:
    """The image's own brush-labels layer: the one whose metadata names it, else the one named
    ``"<image> labels"`` that names no other image; ``None`` when it has none."""
    own = [lay for lay in viewer.layers if isinstance(lay, Labels) and _owner(viewer, lay) == image.name]
    own.sort(key=lambda lab: IMAGE_KEY not in lab.metadata)  # tied by metadata first, then by name
    return own[0] if own else None


def add_result(viewer, image: Image, role: str, layer: Layer, above: Optional[Layer] = None) -> Layer:
    """Add ``layer`` as ``image``'s result ``role`` (named and tagged so), replacing the old one,
    and place it (:func:`place_result`)."""
    old = find_result(viewer, image.name, role)
    if old is not None:
        viewer.layers.remove(old)
    layer.name = result_name(image.name, role)
    layer.metadata[RESULT_KEY] = (role, image.name)
    viewer.add_layer(layer)
    place_result(viewer, image, layer, above)
    return layer


def set_result(viewer, image: Image, role: str, kind, data, kwargs: dict, above: Optional[Layer] = None) -> Layer:
    """``image``'s result layer ``role`` holding ``data``: updated in place when it :func:`fits`
    ``data``'s shape, else (re)made with ``kwargs``; placed (:func:`place_result`) and returned."""
    layer, kept = _update_or_add(viewer, image, role, kind, np.shape(data), None, lambda: kind(data, **kwargs), above)
    if kept:
        layer.data = data
    return layer


def result_layer(viewer, image: Image, role: str, kind, shape: tuple[int, ...], dtype, kwargs: dict,
                 above: Optional[Layer] = None) -> Layer:
    """``image``'s result layer ``role`` to write slices into: the one there, its data kept, when
    it :func:`fits` ``shape`` and ``dtype``, else a new one of zeros made with ``kwargs``; placed
    (:func:`place_result`) and returned."""
    return _update_or_add(viewer, image, role, kind, shape, dtype, lambda: kind(np.zeros(shape, dtype), **kwargs),
                          above)[0]


def _update_or_add(viewer, image: Image, role: str, kind, shape: tuple[int, ...], dtype, make,
                   above: Optional[Layer]) -> tuple[Layer, bool]:
    """``(layer, kept)``: ``image``'s result layer ``role`` when it :func:`fits` (kept, placed),
    else ``make()`` added in its place (:func:`add_result`)."""
    layer = find_result(viewer, image.name, role)
    if fits(layer, kind, shape, dtype):
        place_result(viewer, image, layer, above)
        return layer, True
    return add_result(viewer, image, role, make(), above), False


def remove_result(viewer, image_name: str, role: str) -> None:
    """Remove ``image_name``'s result layer ``role``, if there is one."""
    layer = find_result(viewer, image_name, role)
    if layer is not None:
        viewer.layers.remove(layer)


def place_result(viewer, image: Image, layer: Layer, above: Optional[Layer] = None) -> None:
    """Put ``layer`` directly above ``above`` (default: the image's brush labels, else the image)
    and show it. When a layer of another image (that image, its strokes or its results) is drawn
    over this image, raise this image with its strokes and results to the top, in their order,
    so that the canvas shows the image with its own result. Brush labels found under their own
    image are first put directly above it, where they can be seen."""
    layers = viewer.layers
    strokes = strokes_of(viewer, image)
    if strokes is not None and image in layers and layers.index(strokes) < layers.index(image):
        layers.move(layers.index(strokes), layers.index(image) + 1)
    if above is None or above not in layers:
        above = strokes or image
    if above in layers and layer in layers:
        layers.move(layers.index(layer), layers.index(above) + 1)
    layer.visible = True
    if image in layers and _covered(viewer, image):
        own = [i for i, lay in enumerate(layers) if _owner(viewer, lay) == image.name or lay is layer]
        layers.move_multiple(own, len(layers))


def _owner(viewer, layer: Layer) -> Optional[str]:
    """The name of the image a layer belongs to: an image layer its own, brush labels the image
    they were painted on, a result its image; ``None`` for any other layer."""
    if result_of(layer) is not None:
        return result_of(layer)[1]
    if isinstance(layer, Image):
        return layer.name
    if isinstance(layer, Labels):
        owner = layer.metadata.get(IMAGE_KEY)
        if owner is None and layer.name.endswith(" labels") and layer.name[:-len(" labels")] in viewer.layers:
            owner = layer.name[:-len(" labels")]
        return owner
    return None


def _covered(viewer, image: Image) -> bool:
    """Whether a visible layer of another image is drawn over ``image`` where they overlap (an
    image layer only when opaque enough to hide it)."""
    layers = list(viewer.layers)
    lo, hi = _bounds(image)
    for other in layers[layers.index(image) + 1:]:
        owner = _owner(viewer, other)
        if owner is None or owner == image.name or not other.visible:
            continue
        if isinstance(other, Image) and (other.opacity < COVERING_OPACITY or str(other.blending) in SEE_THROUGH):
            continue
        olo, ohi = _bounds(other)
        if np.all(np.maximum(lo, olo) < np.minimum(hi, ohi)):
            return True
    return False


def _bounds(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """World bounds of a layer's last two (displayed) axes."""
    extent = np.asarray(layer.extent.world, float)
    return extent[0, -2:], extent[1, -2:]


#: The train dock's "train on" choices.
TRAIN_THIS, TRAIN_ALL = "this image", "every image with labels"


def layer_pixel_size(layer: Optional[Image]) -> Optional[float]:
    """µm per pixel of an image layer, from its scale in its units (napari's ``Layer.units``,
    pint units; without them, or in ``pixel``, the scale is taken as µm). ``None`` (unknown):
    no layer, a scale of 1 in pixels (napari's default), pixels that are not square, a unit
    that is not a length."""
    if layer is None:
        return None
    scale = np.abs(np.asarray(layer.scale[-2:], float))
    units = tuple(getattr(layer, "units", ("pixel", "pixel")))[-2:]
    if not np.isclose(scale[0], scale[1], rtol=1e-6) or str(units[0]) != str(units[1]) or not scale[-1] > 0:
        return None
    if str(units[-1]) == "pixel":
        return None if np.isclose(scale[-1], 1.0) else float(scale[-1])
    try:
        return float((scale[-1] * units[-1]).to("micrometer").magnitude)
    except Exception:  # noqa: BLE001 (pint's DimensionalityError: a unit that is not a length)
        return None
