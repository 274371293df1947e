"""The "dinoseg: match two images" dock widget: corresponding points between two images.

Choose two image layers and click Match: a worker featurises both (through the feature cache the
other widgets share) and finds salient best-buddy pairs of log-binned descriptors
(:func:`napari_dinoseg.correspondence.correspondences_from_features`). The pairs become two Points
layers, one over each image, pair ``i`` drawn in the same colour and numbered ``i`` in both; with
"side by side" the viewer's grid mode shows each image with its points next to the other, the view
refitted so that both are whole.
For stacks the current slice of each is matched.
"""

from __future__ import annotations

import colorsys
import dataclasses
import warnings
from typing import TYPE_CHECKING, Optional

import numpy as np
from magicgui.widgets import CheckBox, Label, SpinBox, create_widget
from napari.layers import Image, Points

from ..config import FeatureConfig
from ..features.featurise import FeatureCache
from ..image import drop_alpha
from ..progress import report
from ._feature_controls import FeatureControls, check_weights
from ._jobs import featurise_planes, plane_geometry, start_job
from ._layers import (current_index, geometry, multiscale_refusal, refuse_multiscale_when_picked, set_layer,
                      spatial_shape)
from ._text import wrap
from ._worker_widget import WorkerWidget

if TYPE_CHECKING:
    import napari


@dataclasses.dataclass
class MatchResult:
    """``pairs_a``, ``pairs_b``: ``(m, 2)`` int64 (row, col) of corresponding pixels, most salient first."""

    pairs_a: np.ndarray
    pairs_b: np.ndarray
    n: int
    messages: list = dataclasses.field(default_factory=list)


def run_match_job(plane_a: np.ndarray, plane_b: np.ndarray, config: FeatureConfig, n: int,
                  cache: Optional[FeatureCache], progress=None, announce=None) -> MatchResult:
    """Featurise (or reuse) both planes, then match them; pure, runs in a worker."""
    from ..correspondence import correspondences_from_features

    channels = [plane_geometry(p)[1] for p in (plane_a, plane_b)]
    if channels[0] != channels[1]:
        raise ValueError(f"the images have {channels[0]} and {channels[1]} channels: match images of one kind")
    featuriser = start_job(config, plane_a, announce)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stacks = list(featurise_planes(featuriser, (plane_a, plane_b), progress, cache, span=(0.0, 0.9)))
        report(progress, 900, 1000, "best buddies")
        pairs_a, pairs_b = correspondences_from_features(*stacks, n)
    report(progress, 1000, 1000, "done")
    return MatchResult(pairs_a, pairs_b, n, list(dict.fromkeys(str(w.message) for w in caught)))


def viewer_grid(viewer):
    """The viewer's grid-mode settings (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def pair_colours(m: int) -> np.ndarray:
    """``(m, 4)`` RGBA: ``m`` well-separated hues (golden-ratio steps), bright and opaque."""
    hues = (np.arange(m) * 0.618034) % 1.0
    return np.array([(*colorsys.hsv_to_rgb(h, 0.85, 1.0), 1.0) for h in hues], np.float32).reshape(m, 4)


class MatchWidget(WorkerWidget):
    """Dock widget: corresponding points of two images as two Points layers with matching colours."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer, "Match", "Choose two images, then Match.")
        self.result: Optional[MatchResult] = None
        self._matched: list = []  # (image layer, slice index) of A and B in the running job
        self._image_a = create_widget(annotation=Image, label="image A")
        self._image_b = create_widget(annotation=Image, label="image B")
        self._n = SpinBox(value=50, min=1, max=500, label="pairs (at most)")
        self._side_by_side = CheckBox(value=True, text="side by side (grid view)")
        self.features = FeatureControls(kind="vit")
        self.features.facet.value = "key"  # the paper's choice for correspondences: block 9's keys
        self.features.layer.value = 9
        self._weights_note = wrap(Label(value=""))
        self._image_a.tooltip = self._image_b.tooltip = "the two images to match (for stacks: the current slice)"
        self._n.tooltip = "the most pairs to show: salient best buddies, spread over the image by clustering"
        self._side_by_side.tooltip = "show each image with its points next to the other (napari's grid mode)"
        feature_widgets = list(self.features.widgets)
        feature_widgets.insert(feature_widgets.index(self.features.kind) + 1, self._weights_note)
        self.extend([self._image_a, self._image_b, self._n, *feature_widgets, self._side_by_side, *self.run_controls])
        self.features.prefer_classical_without_weights(
            self._weights_note, "DINOv2 keys would match parts alike in meaning, and rank them by saliency.")
        self.features.update_visibility()
        refuse_multiscale_when_picked(self, [self._image_a, self._image_b], "the match dock")
        if len(self._image_b.choices) > 1:  # two different images by default
            self._image_b.value = self._image_b.choices[1]

    def _prepare(self):
        config = self.features.config()
        check_weights(config)  # no weights: refuse now, not after a minute of retries
        a, b = self._image_a.value, self._image_b.value
        if a is None or b is None or a is b:
            raise ValueError("choose two different image layers as image A and image B (open a second image first)")
        for image in (a, b):
            if image.multiscale:
                raise ValueError(multiscale_refusal(image.name, "the match dock"))
        # the layers and slices matched: the points go there, whatever the viewer shows when they come
        self._matched = [(image, current_index(self._viewer, image)) for image in (a, b)]
        planes = [np.asarray(image.data[index]) for image, index in self._matched]
        planes = [drop_alpha(p) if image.rgb else p for p, image in zip(planes, (a, b))]
        return run_match_job, (*planes, config, int(self._n.value), self.cache)

    def _show_plan(self, plan: str) -> None:
        self.features.plan.value = self._status.value = plan

    def _on_result(self, result: MatchResult) -> None:
        self.result = result
        m = len(result.pairs_a)
        colours = pair_colours(m)
        layers = []
        for (image, index), pairs in zip(self._matched, (result.pairs_a, result.pairs_b)):
            shape = spatial_shape(image)
            lead = np.broadcast_to(np.asarray(index, float), (m, len(index)))
            data = np.column_stack([lead, pairs.astype(float)]) if m else np.empty((0, len(shape)))
            size = max(4.0, min(shape[-2:]) / 40)
            kwargs = {"ndim": len(shape), "size": size, "face_color": colours if m else "white",
                      "border_color": "black", "features": {"pair": np.arange(m)},
                      "text": {"string": "{pair}", "color": "white", "size": 9, "anchor": "upper_left"},
                      **geometry(image)}
            layers.append(set_layer(self._viewer, f"matches in {image.name}", Points, data, kwargs))
        if self._side_by_side.value:
            order = [self._matched[0][0], layers[0], self._matched[1][0], layers[1]]
            for layer in order:  # on top, in this order: the grid puts each image with its points
                self._viewer.layers.move(self._viewer.layers.index(layer), len(self._viewer.layers))
            grid = viewer_grid(self._viewer)
            grid.stride, grid.enabled = 2, True
            # each viewbox is now a fraction of the canvas: refit (the fit reads the grid's viewbox size)
            self._viewer.reset_view()
        note = "" if m == result.n else f" (asked for {result.n}: only {m} salient best buddies)"
        self._status.value = (f"{m} corresponding pairs{note}; pair i has the same colour and number in both"
                              if m else "no corresponding pairs found: try other features or images")
