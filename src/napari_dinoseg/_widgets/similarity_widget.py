"""The "dinoseg: find similar (click)" dock widget: zero-shot "find more of this" from a few clicks.

Click a few points on an object in a Points layer, click Compute: a worker featurises the image
(through the feature cache the other widgets share, so more clicks reuse the features) and
writes an ``"<image> similarity"`` Image layer, the cosine similarity of every pixel to the
clicked points (:func:`napari_dinoseg.similarity.similarity_map`). The threshold slider turns it
into the ``"<image> similar"`` Labels layer at once, with no recomputation. Both belong to the
searched image: each write puts them over it and shows them (``_layers.place_result``). For a
stack every slice is mapped, the points' slices being the reference.
"""

from __future__ import annotations

import warnings
from functools import partial
from itertools import islice
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np
from magicgui.widgets import FloatSlider, Label, PushButton, create_widget
from napari.layers import Image, Labels, Points

from ..config import FeatureConfig
from ..features.featurise import FeatureCache, cache_key
from ..image import drop_alpha
from ..progress import report
from ..similarity import similar_mask, similarity_query
from ._feature_controls import FeatureControls, check_weights
from ._jobs import featurise_planes, start_job
from ._layers import find_result, geometry, multiscale_refusal, refuse_multiscale_when_picked, set_result, spatial_shape
from ._text import wrap
from ._worker_widget import WorkerWidget

if TYPE_CHECKING:
    import napari

SIMILARITY_LAYER, MASK_LAYER, POINTS_LAYER = "similarity", "similar", "clicks"
#: The threshold the slider starts at: on the planted-texture test (classical features) the
#: textured discs' median similarity is 0.57 and 99 % of the background is below 0.37.
DEFAULT_THRESHOLD = 0.4


@dataclass
class SimilarityResult:
    """What one Compute made: the maps, and how many slices were featurised or found in the cache.

    Attributes
    ----------
    maps : (*lead, H, W) float32
        Cosine similarity in [-1, 1] of every pixel of every slice.
    """

    maps: np.ndarray
    n_points: int
    featurised: int = 0
    reused: int = 0
    messages: list = field(default_factory=list)


def run_similarity_job(image, rgb: bool, points: np.ndarray, config: FeatureConfig, cache: Optional[FeatureCache],
                       progress=None, announce=None, reference=None) -> SimilarityResult:
    """Featurise (or reuse) every slice, the points' slices first, and map each; pure, runs in a worker.

    Parameters
    ----------
    image : (*lead, H, W) or (*lead, H, W, C) array
        The layer's data (``C`` when ``rgb``; RGBA drops its alpha); may be lazy (dask).
    points : (N, 3) int64
        ``(slice, row, col)`` of each click, ``slice`` the flat index into ``lead`` (0 for 2-D
        images) of the image clicked on.
    reference : ``(data, rgb)``, optional
        The image the points were clicked on, when it is another one: its clicked slices are
        the reference, and every slice of ``image`` is mapped.
    """
    lead = _lead(image, rgb)
    n = int(np.prod(lead, dtype=np.int64))
    clicked = (image, rgb) if reference is None else reference
    refs = [int(i) for i in np.unique(points[:, 0])]
    # (data, rgb, slice) to featurise, in order: the clicked slices first
    todo = [(*clicked, i) for i in refs]
    todo += [(image, rgb, i) for i in range(n) if reference is not None or i not in set(refs)]
    first = _plane(image, rgb, 0)
    featuriser = start_job(config, first, announce)
    result = SimilarityResult(maps=np.empty((n, *first.shape[:2]), np.float32), n_points=len(points))

    def planes():
        """Each slice of ``todo``, read when reached, counted as featurised or found in the cache."""
        for k, where in enumerate(todo):
            data = _plane(*where)
            hit = cache is not None and cache_key(data, featuriser.config) in cache
            result.reused, result.featurised = result.reused + hit, result.featurised + (not hit)
            report(progress, int(1000 * k / len(todo)), 1000,
                   f"slice {k + 1} of {len(todo)}: features" if len(todo) > 1 else "features")
            yield data

    stacks = featurise_planes(featuriser, planes(), progress, cache, count=len(todo))
    with warnings.catch_warnings(record=True) as caught:  # NaN replaced, ...: shown by the GUI
        warnings.simplefilter("always")
        clicked_stacks = list(islice(stacks, len(refs)))
        where = np.column_stack([np.searchsorted(refs, points[:, 0]), points[:, 1:]])
        query = similarity_query(clicked_stacks, where)
        if reference is None:
            for i, stack in zip(refs, clicked_stacks):
                result.maps[i] = query.map(stack)
        del clicked_stacks
        for (_, _, i), stack in zip(todo[len(refs):], stacks):
            result.maps[i] = query.map(stack)
    report(progress, 1000, 1000, "done")
    result.maps = result.maps.reshape(*lead, *first.shape[:2])
    result.messages = list(dict.fromkeys(str(w.message) for w in caught))
    return result


def _lead(data, rgb: bool) -> tuple[int, ...]:
    """The leading (slice) axes of a layer's data."""
    return tuple(data.shape[:-3] if rgb else data.shape[:-2])


def _plane(data, rgb: bool, i: int) -> np.ndarray:
    """Slice ``i`` (flat index into the leading axes) of a layer's data, alpha dropped."""
    lead = _lead(data, rgb)
    plane = np.asarray(data[np.unravel_index(i, lead)] if lead else data)
    return drop_alpha(plane) if rgb else plane


class SimilarityWidget(WorkerWidget):
    """Dock widget: a similarity map of every pixel to a few clicked points, and a thresholded mask."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer, "Compute", "Click points on an object, then Compute.")
        self.result: Optional[SimilarityResult] = None
        self._job_image: Optional[Image] = None  # the image the running job searches
        self._result_image: Optional[Image] = None  # the image of the last result
        self._geometry: dict = {}
        self._summary = ""
        self._image = create_widget(annotation=Image, label="image")
        self._points = create_widget(annotation=Points, label="points")
        self._clicked_on = create_widget(annotation=Image, label="clicked on", options={"nullable": True})
        self._clicked_on.value = None
        self._add_points = PushButton(text="Add points layer")
        self.features = FeatureControls(kind="vit")
        self._weights_note = wrap(Label(value=""))
        self._threshold = FloatSlider(value=DEFAULT_THRESHOLD, min=0.0, max=1.0, step=0.01, label="threshold")
        self._image.tooltip = "the image to search (every slice of a stack)"
        self._points.tooltip = "the clicks: points on a few examples of the object to find"
        self._clicked_on.tooltip = ("the image the points were clicked on, when it is not the image searched: "
                                    "find in one image what was clicked in another (empty: the image searched)")
        self._add_points.tooltip = f"add an empty Points layer {POINTS_LAYER!r} in add mode (or select it)"
        self._threshold.tooltip = f"pixels at least this similar go into the {MASK_LAYER!r} layer (no recomputation)"
        feature_widgets = list(self.features.widgets)
        feature_widgets.insert(feature_widgets.index(self.features.kind) + 1, self._weights_note)
        self.extend([self._image, self._points, self._clicked_on, self._add_points, *feature_widgets, *self.run_controls,
                     self._threshold])
        self._add_points.changed.connect(self.add_points_layer)
        self._threshold.changed.connect(self.update_mask)
        self.features.prefer_classical_without_weights(
            self._weights_note, "DINOv2 would find objects alike in meaning, not only in texture.")
        self.features.update_visibility()
        refuse_multiscale_when_picked(self, [self._image, self._clicked_on], "the find-similar dock")

    def add_points_layer(self, *_args) -> Optional[Points]:
        """Select the ``clicks`` Points layer, made empty (over the image, same geometry) when missing; add mode."""
        image: Optional[Image] = self._image.value
        if image is None:
            self._fail("open an image first")
            return None
        ndim = len(spatial_shape(image))
        layer = self._viewer.layers[POINTS_LAYER] if POINTS_LAYER in self._viewer.layers else None
        if not isinstance(layer, Points) or layer.ndim != ndim:
            size = max(3.0, min(spatial_shape(image)[-2:]) / 60)
            layer = self._viewer.add_points(np.empty((0, ndim)), ndim=ndim, name=POINTS_LAYER, size=size,
                                            face_color="cyan", border_color="black", **geometry(image))
        self._points.reset_choices()
        self._points.value = layer
        self._viewer.layers.selection.active = layer
        layer.mode = "add"
        self._status.value = "click on a few examples of the object, then Compute"
        return layer

    # ---- the job --------------------------------------------------------------------

    def _prepare(self):
        config = self.features.config()
        check_weights(config)  # no weights: refuse now, not after a minute of retries
        image: Optional[Image] = self._image.value
        if image is None:
            raise ValueError("no image layer: open an image first")
        if image.multiscale:
            raise ValueError(multiscale_refusal(image.name, "the find-similar dock"))
        self._job_image = image
        clicked: Optional[Image] = self._clicked_on.value
        if clicked is None or clicked is image:
            return run_similarity_job, (image.data, bool(image.rgb), self._clicks(image), config, self.cache)
        if clicked.multiscale:
            raise ValueError(multiscale_refusal(clicked.name, "the find-similar dock"))
        if (3 if clicked.rgb else 1) != (3 if image.rgb else 1):
            raise ValueError(f"{clicked.name!r} and {image.name!r} differ in colour (RGB and greyscale): "
                             "search images of the kind that was clicked")
        return partial(run_similarity_job, reference=(clicked.data, bool(clicked.rgb))), (
            image.data, bool(image.rgb), self._clicks(clicked), config, self.cache)

    def _clicks(self, image: Image) -> np.ndarray:
        """The points as ``(N, 3)`` int64 ``(flat slice index, row, col)`` of the image's pixels."""
        layer: Optional[Points] = self._points.value
        if layer is None:
            raise ValueError("no points layer: click 'Add points layer', then click on the object to find")
        shape = spatial_shape(image)
        if layer.ndim != len(shape):
            raise ValueError(f"points layer {layer.name!r} has {layer.ndim} dimensions but image {image.name!r} has "
                             f"{len(shape)}: add the points with 'Add points layer'")
        if len(layer.data) == 0:
            raise ValueError(f"no points in {layer.name!r}: click on a few examples of the object to find")
        pixels = np.array([image.world_to_data(layer.data_to_world(p)) for p in layer.data])
        pixels = np.rint(pixels).astype(np.int64)
        outside = ~np.all((pixels >= 0) & (pixels < np.array(shape)), axis=1)
        if outside.any():
            raise ValueError(f"point {tuple(int(v) for v in pixels[np.argmax(outside)])} of {layer.name!r} is outside "
                             f"image {image.name!r} ({'x'.join(map(str, shape))} px): delete it or click inside")
        lead = shape[:-2]
        flat = np.ravel_multi_index(tuple(pixels[:, :-2].T), lead) if lead else np.zeros(len(pixels), np.int64)
        return np.column_stack([flat, pixels[:, -2:]])

    # ---- results --------------------------------------------------------------------

    def _show_plan(self, plan: str) -> None:
        self.features.plan.value = self._status.value = plan

    def _on_result(self, result: SimilarityResult) -> None:
        image: Optional[Image] = self._job_image
        if image is None or image not in self._viewer.layers:
            self._status.value = "the image was closed before its similarity map was ready; nothing was written"
            return
        self.result, self._result_image = result, image
        self._geometry = geometry(image, result.maps.ndim)
        layer = set_result(self._viewer, image, SIMILARITY_LAYER, Image, result.maps,
                           {**self._geometry, "colormap": "magma", "opacity": 0.7, "blending": "translucent"})
        layer.contrast_limits = (0.0, 1.0)
        slices = int(np.prod(result.maps.shape[:-2], dtype=np.int64))
        self._summary = (f"{slices} slice(s) from {result.n_points} point(s); features: {result.featurised} "
                         f"computed, {result.reused} from the cache")
        self.update_mask()
        points = self._points.value
        if points is not None and points in self._viewer.layers:  # the clicks stay on top, ready for more
            self._viewer.layers.move(self._viewer.layers.index(points), len(self._viewer.layers))
            self._viewer.layers.selection.active = points

    def update_mask(self, *_args) -> Optional[Labels]:
        """Threshold the last maps into the ``similar`` layer (made again if it was deleted); no
        features are computed. ``None`` before the first Compute."""
        image = self._result_image
        if self.result is None or image not in self._viewer.layers:
            return None
        threshold = float(self._threshold.value)
        mask = similar_mask(self.result.maps, threshold)
        above = find_result(self._viewer, image.name, SIMILARITY_LAYER)
        layer = set_result(self._viewer, image, MASK_LAYER, Labels, mask.astype(np.uint8),
                           {**self._geometry, "opacity": 0.5}, above=above)
        self._status.value = f"{self._summary}; {mask.mean():.1%} of the pixels at least {threshold:.2f} similar"
        return layer
