"""Small helpers the dock widgets share for napari layers."""

from __future__ import annotations

import numpy as np
from napari.layers import Image


def spatial_shape(image: Image) -> tuple[int, ...]:
    """Shape of an image layer without its colour axis: ``(*lead, H, W)``."""
    shape = tuple(image.data.shape)
    return shape[:-1] if image.rgb else shape


def current_index(viewer, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The viewer's current slice of a layer of spatial ``shape`` ``(*lead, H, W)``: one index per
    leading axis, clipped to it (``()`` for a 2-D layer)."""
    lead = shape[:-2]
    step = viewer.dims.current_step[viewer.dims.ndim - len(shape):][:len(lead)]
    return tuple(int(min(max(s, 0), n - 1)) for s, n in zip(step, lead))


def set_layer(viewer, name: str, kind, data: np.ndarray, kwargs: dict):
    """The layer ``name`` holding ``data``: updated in place when it is a ``kind`` of that shape,
    else (re)made with ``kwargs``; returned."""
    layers = viewer.layers
    if name in layers and isinstance(layers[name], kind) and layers[name].data.shape == data.shape:
        layers[name].data = data
        return layers[name]
    if name in layers:
        layers.remove(name)
    return viewer.add_layer(kind(data, name=name, **kwargs))
