"""The train widget's layers: the image / brush-labels pairs it reads into a job's
:class:`~._train_job.Source` s, and the predictions and uncertainty layers it writes a
:class:`~._train_job.TrainResult` to (GUI thread; each result layer belongs to its image, see
:mod:`._layers`)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from napari.layers import Image, Labels

from ..image import MAX_CHANNELS
from ._layers import geometry, multiscale_refusal, result_layer, result_of, spatial_shape, strokes_of
from ._train_job import Source, TrainResult

#: Roles of the result layers, named "<image> <role>" (see ``_layers``).
PREDICTIONS = "predictions"
UNCERTAINTY = "uncertainty (0 = sure, 1 = undecided)"


# ---- reading -----------------------------------------------------------------------


def image_label_pairs(viewer) -> list[tuple[Image, Labels]]:
    """Every image layer with its own Labels layer: the one whose metadata names it (made by
    'New labels layer for this image'), else the one named '<image> labels'."""
    images = [lay for lay in viewer.layers if isinstance(lay, Image) and result_of(lay) is None]
    return [(img, own) for img in images if (own := strokes_of(viewer, img)) is not None]


def all_sources(viewer, image: Image) -> list[Source]:
    """The selected image (with its own labels, or none) first, then every other image with
    strokes in its own Labels layer."""
    pairs = image_label_pairs(viewer)
    own = next((lab for img, lab in pairs if img is image), None)
    if own is not None:
        current = source_of(image, own)
    else:  # predicted, not trained on
        current = Source(name=image.name, image=image.data, labels=np.zeros(spatial_shape(image), np.uint8),
                         rgb=bool(image.rgb))
    others = [source_of(img, lab) for img, lab in pairs if img is not image]
    return [current] + [src for src in others if src.painted_slices]


def source_of(image: Image, labels: Labels) -> Source:
    """Check one image / labels pair and copy it for the worker (the image's data as it is, a
    copy of the strokes)."""
    if image.multiscale:
        raise ValueError(multiscale_refusal(image.name, "'train on: every image with labels'"))
    shape = spatial_shape(image)
    if not image.rgb and len(shape) == 3 and shape[-1] <= MAX_CHANNELS < min(shape[:2]):
        raise ValueError(
            f"image layer {image.name!r} of shape {image.data.shape} looks like (H, W, C) channels shown "
            "as a stack; open it with channel_axis=-1 (one layer per channel) or as RGB"
        )
    if tuple(labels.data.shape) != shape:
        raise ValueError(
            f"labels layer {labels.name!r} has shape {tuple(labels.data.shape)} but image {image.name!r} "
            f"has {shape}; click 'New labels layer for this image' to get a matching one"
        )
    return Source(name=image.name, image=image.data, labels=np.array(labels.data, copy=True),
                  rgb=bool(image.rgb), labels_name=labels.name)


# ---- writing -----------------------------------------------------------------------


def write_result(viewer, image: Image, result: TrainResult, selected: Optional[Labels]) -> None:
    """Write ``result``'s slices into ``image``'s predictions layer (and uncertainty layer, when it
    has uncertainties), the other slices kept; then select the image's brush labels, ready for
    the next stroke. ``selected``: the widget's brush-labels layer (the predictions' colours)."""
    pred = predictions_layer(viewer, image, result.segmentations[0].dtype, selected)
    for index, seg in zip(result.predict_slices, result.segmentations):
        pred.data[index] = seg
    pred.refresh()
    if result.uncertainties is not None:
        _write_uncertainty(viewer, image, result, pred)
    strokes = strokes_of(viewer, image)
    if strokes is not None:
        viewer.layers.selection.active = strokes


def predictions_layer(viewer, image: Image, dtype, selected: Optional[Labels]) -> Labels:
    """``image``'s predictions layer of its shape and ``dtype``, in the strokes' colours: made
    when missing, remade when of another shape or dtype; placed directly above the image's
    brush labels (or the image) and shown each time (``_layers.place_result``)."""
    pred = result_layer(viewer, image, PREDICTIONS, Labels, spatial_shape(image), dtype,
                        {"opacity": 0.6, **geometry(image)})
    colours = _colours(viewer, image, selected)
    if colours is not None and pred.colormap is not colours.colormap:  # setting it redraws the layer
        pred.colormap = colours.colormap
    return pred


def _colours(viewer, image: Image, selected: Optional[Labels]) -> Optional[Labels]:
    """The Labels layer whose colours the predictions take: ``selected`` (the widget's brush
    labels), else the image's own, else any image's (``None``: none)."""
    if selected is not None and selected in viewer.layers and result_of(selected) is None:
        return selected
    own = strokes_of(viewer, image)
    return own if own is not None else next((lab for _, lab in image_label_pairs(viewer)), None)


def _write_uncertainty(viewer, image: Image, result: TrainResult, pred: Labels) -> None:
    """Write ``result``'s uncertainties, scaled to [0, 1] (1: every class as likely), into
    ``image``'s float32 uncertainty layer, directly above ``pred``."""
    layer = result_layer(viewer, image, UNCERTAINTY, Image, spatial_shape(image), np.float32,
                         {"colormap": "viridis", "opacity": 0.7, "blending": "translucent",
                          "contrast_limits": (0.0, 1.0), **geometry(image)}, above=pred)
    top = 1.0 - 1.0 / result.classifier.n_classes  # 1 - max probability when every class is as likely
    for index, unc in zip(result.predict_slices, result.uncertainties):
        layer.data[index] = np.clip(unc / top, 0.0, 1.0)
    layer.contrast_limits = (0.0, 1.0)
    layer.refresh()


def take_result(dock, result):
    """Keep a job's result and its classifier on the train ``dock``; the image layer it was for, or
    ``None`` (said on the dock's status line) when that image was closed meanwhile (GUI thread)."""
    dock.last_result = result
    dock.segmenter = result.segmenter
    image = dock._job_image
    if image is None or image not in dock._viewer.layers:
        dock._status.value = "the image was closed before its prediction was ready; nothing was written"
        return None
    return image
