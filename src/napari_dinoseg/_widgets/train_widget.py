"""The "dinoseg: train" dock widget: paint brush labels, click Train / Predict.

Thin by design: it reads the layers into a :class:`TrainJob` on the GUI thread, runs
:func:`run_train_job` in a napari thread worker (progress bar, Cancel button), and
writes the result to a ``predictions`` Labels layer (and optionally an ``uncertainty``
Image layer) from the worker's ``returned`` signal, on the GUI thread. The image / labels
pairs it reads and the layers it writes are :mod:`._train_layers`'.

"train on: every image with labels" pairs each image layer with its own Labels layer (the
one made by "New labels layer for this image", or named "<image> labels") and fits one
:class:`~napari_dinoseg.Segmenter` on all of them; the status line names the pairs used.

"live update" retrains and predicts the current slice when a brush stroke ends (napari's
``Labels.events.paint``, emitted once per stroke), ``LIVE_DELAY_MS`` after the last one: the
part of the slice on screen first (written as soon as it is known), then the rest. It runs as
a background job of :class:`WorkerWidget`: a newer stroke cancels a running update.
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, SpinBox, create_widget
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from superqt.utils import ensure_main_thread

from ..config import CRFConfig, FeatureConfig, TrainConfig
from ..feature_kinds import KINDS
from ..segmenter import Segmenter
from ._feature_controls import FeatureControls, check_weights
from ._layers import (IMAGE_KEY, TRAIN_ALL, TRAIN_THIS, current_index, find_result, geometry,  # noqa: F401
                      layer_pixel_size, result_of, spatial_shape, strokes_of)  # (layer_pixel_size re-exported)
from ._live import predict_view_first, visible_region
from ._pyramid import is_pyramid
from ._pyramid_job import PrefetchResult, ViewResult, WholeResult, labels_digest
from ._sections import Section
from ._text import wrap
from ._train_job import Source, TrainJob, TrainResult, run_train_job
from ._train_layers import (PREDICTIONS, all_sources, image_label_pairs, predictions_layer, source_of, take_result,
                            write_result)
from ._train_layers import UNCERTAINTY  # noqa: F401 (the roles of the widget's layers, named from here too)
from ._train_pyramid import PyramidControls
from ._train_volume import VolumeResult
from ._volume_controls import VolumeControls
from ._worker_widget import WorkerWidget

if TYPE_CHECKING:
    import napari

SCOPE_SLICE, SCOPE_STACK = "current slice", "whole stack"
SCOPES = [(SCOPE_SLICE, SCOPE_SLICE), ("whole stack / volume", SCOPE_STACK)]  # (shown, value) of the 'predict' menu
#: (label, TrainConfig.classifier) choices of the classifier menu.
CLASSIFIERS = [("logistic regression + trees", "logistic+trees"), ("logistic regression (fastest)", "logistic")]
NO_CLASSIFIER = "none yet: paint strokes of two or more classes, or load a classifier"
#: A live update starts this long after the last stroke ends: strokes in quick succession
#: (clicks of the fill bucket, a dotted line) make one update. napari emits ``paint`` when a
#: stroke ends, not while it is drawn, so the delay need not cover a stroke.
LIVE_DELAY_MS = 60
TOOLTIPS = {
    "_image": "the image to predict (and to train on, with its own labels layer). Its layer's scale is its pixel "
              "size, kept with the classifier and compared with that of images it predicts (a scale without a "
              "unit is taken as µm; a scale of 1 says nothing)",
    "_labels_layer": "the Labels layer holding this image's brush strokes (0 = unlabelled, 1..K = classes)",
    "_new_labels": "add an empty Labels layer tied to the selected image, ready to paint",
    "_classifier": "logistic regression + extra trees (best), or logistic regression alone (fastest)",
    "_edge_smoothing": "smooth the class probabilities, keeping the image's edges (guided filter)",
    "_pca": "reduce the ViT channels to this many principal components before training (0 = off)",
    "_crf": "refine the prediction with a fully connected CRF (slower; sharper boundaries)",
    "_scope": "predict the slice on screen, or every slice of the stack (of a volume with 3-D features: all of it)",
    "_want_uncertainty": "add a layer showing how unsure the classifier is at each pixel (0 = sure, 1 = unsure)",
    "_live": "retrain and predict the current slice whenever a brush stroke ends: the part on screen first, "
             "then the rest (Train / Predict still works)",
    "_bundle_file": "the .dinoseg file to save the classifier to, or to load one from",
    "_save": "save the last classifier (features, classifier, smoothing, CRF) to the classifier file",
    "_load": "load a classifier: Train / Predict then predicts with it until you paint on this image's labels",
    "_state": "which classifier Train / Predict uses",
}


class TrainWidget(VolumeControls, PyramidControls, WorkerWidget):
    """Dock widget: features -> logistic regression on brush labels -> predictions layer (for a
    multiscale image: at its working level, the part in view; :class:`._train_pyramid.PyramidControls`;
    for a volume with 3-D features: :class:`._volume_controls.VolumeControls`)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer, "Train / Predict", "Paint strokes of two or more classes, then click Train / Predict.")
        self.segmenter: Optional[Segmenter] = None
        self.last_result: Optional[TrainResult] = None

        self._image = create_widget(annotation=Image, label="image")
        self._labels_layer = create_widget(annotation=Labels, label="brush labels")
        self._new_labels = PushButton(text="New labels layer for this image")
        self._train_on = ComboBox(choices=[TRAIN_THIS, TRAIN_ALL], value=TRAIN_THIS, label="train on")
        self._train_on.tooltip = ("'every image with labels': each image layer with strokes in its own Labels "
                                  "layer ('<image> labels') trains one classifier")
        self.features = FeatureControls(volumes=True)
        self._classifier = ComboBox(choices=CLASSIFIERS, value="logistic+trees", label="classifier")
        self._edge_smoothing = CheckBox(value=True, text="edge-aware smoothing")  # "guided filter": the tooltip
        self._pca = SpinBox(value=0, min=0, max=1536, label="PCA of ViT channels (0 = off)")
        self._crf = CheckBox(value=False, text="refine with a dense CRF")
        self._scope = ComboBox(choices=SCOPES, value=SCOPE_SLICE, label="predict")
        self._want_uncertainty = CheckBox(value=False, text="uncertainty layer")
        self._bundle_file = FileEdit(mode="w", filter="*.dinoseg", label="classifier file")
        self._save = PushButton(text="Save classifier")
        self._load = PushButton(text="Load classifier")
        self._state = wrap(Label(value=NO_CLASSIFIER, label="classifier in use"))
        self.loaded: Optional[Segmenter] = None  # read from a bundle
        self._loaded_name = ""
        self._claimed = ""  # a labels layer this click tied to the image
        self._strokes_at_load: dict = {}  # labels layer id -> digest of its strokes when the bundle was loaded
        self._live = CheckBox(value=False, text="live update (after every stroke)")
        self._live_timer = QTimer(self.native)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self._live_update)
        self._live_token = 0  # the newest live update: views shown by older ones are dropped
        self._job_image: Optional[Image] = None  # the image the running job predicts
        self.classifier_details = Section(
            "classifier details", [self._classifier, self._edge_smoothing, self._pca, self._crf, self._want_uncertainty],
            tooltip="the classifier, smoothing, PCA of ViT channels, CRF, uncertainty layer")
        self.files = Section("classifier file (save / load)", [
            self._bundle_file, Container(widgets=[self._save, self._load], layout="horizontal", labels=False)],
            tooltip="save the classifier to a .dinoseg file, or load one")
        pyramid = self._make_pyramid_controls()  # the resolution menu, 'Predict whole image': multiscale only
        self.extend([  # the everyday controls in view; details and files fold away
            self._image, pyramid[0], self._labels_layer, self._new_labels, self._train_on, *self.features.widgets,
            self.classifier_details, self._scope, self._live, pyramid[1], *self.run_controls, self._state, self.files,
        ])
        for widget, tip in TOOLTIPS.items():
            getattr(self, widget).tooltip = tip
        self._save.changed.connect(self.save_classifier)
        self._load.changed.connect(self.load_classifier)
        self._new_labels.changed.connect(self.new_labels_layer)
        self.features.update_visibility()
        self._image.changed.connect(self._update_scope)
        self.features.kind.changed.connect(self._update_pca)
        self._live.changed.connect(self._on_live_changed)
        self._viewer.layers.events.inserted.connect(self._on_layer_inserted)
        for layer in self._viewer.layers:
            self._watch_strokes(layer)
        self._update_scope()
        self._update_pca()

    # ---- actions -------------------------------------------------------------------

    def feature_config(self) -> FeatureConfig:
        """The FeatureConfig the widget's controls describe (see :class:`FeatureControls`)."""
        return self.features.config()

    def save_classifier(self, *_args) -> Optional[str]:
        """Save the last trained classifier and its feature config as a bundle; the file field then
        shows the path written (``.dinoseg`` added when missing)."""
        if self.segmenter is None:
            self._fail("nothing to save: train a classifier first")
            return None
        try:
            path = bundle_path(self._bundle_file.value)
        except ValueError as err:
            self._fail(str(err))
            return None
        if path.suffix != ".dinoseg":
            path = path.with_name(path.name + ".dinoseg")
        try:
            self.segmenter.save(path)
        except (ValueError, OSError) as err:
            self._fail(f"could not save the classifier: {err}")
            return None
        self._bundle_file.value = path
        self._status.value = f"saved the classifier to {path}"
        show_info(f"dinoseg: saved {path.name}")
        return str(path)

    def load_classifier(self, *_args) -> bool:
        """Load a bundle (the name given with or without ``.dinoseg``): Train / Predict then
        predicts with it while nothing is painted."""
        try:
            path = bundle_path(self._bundle_file.value)
            if not path.exists() and path.suffix != ".dinoseg" and path.with_name(path.name + ".dinoseg").exists():
                path = path.with_name(path.name + ".dinoseg")
            self.loaded = Segmenter.load(str(path))
        except ValueError as err:
            self._fail(str(err))
            return False
        self._bundle_file.value = path
        seg = self.loaded
        self._loaded_name = path.name
        self._strokes_at_load = {id(lay): _digest(lay.data) for lay in self._viewer.layers
                                 if isinstance(lay, Labels) and result_of(lay) is None}
        self._state.value = (f"loaded from {self._loaded_name} ({seg.classifier.n_classes} classes, "
                             f"{seg.features.kind} features): Train / Predict predicts with it until you paint on "
                             "this image's labels")
        self._status.value = f"loaded {self._loaded_name}"
        self._volume_loaded()
        return True

    def new_labels_layer(self, *_args) -> Optional[Labels]:
        """Add an empty Labels layer matching the selected image and select it for painting."""
        image = self._image.value
        if image is None:
            show_error("dinoseg: select an image layer first")
            return None
        if is_pyramid(image):  # on disk, at the working level (a multiscale stack refused, before any painting)
            layer = self._new_pyramid_strokes(image)
            if layer is None:
                return None
        else:
            layer = self._viewer.add_labels(np.zeros(spatial_shape(image), dtype=np.uint8),
                                            name=f"{image.name} labels", metadata={IMAGE_KEY: image.name},
                                            **geometry(image))
        self._labels_layer.reset_choices()
        self._labels_layer.value = layer
        layer.mode = "paint"
        layer.selected_label = 1
        self._viewer.layers.selection.active = layer
        return layer

    # ---- live update ---------------------------------------------------------------

    def _on_layer_inserted(self, event) -> None:
        self._watch_strokes(event.value)

    def _watch_strokes(self, layer) -> None:
        if isinstance(layer, Labels):
            layer.events.paint.connect(self._on_stroke)  # once per stroke, fill or polygon, when it ends
            layer.events.data.connect(self._on_stroke)  # the strokes replaced

    def _on_stroke(self, event) -> None:
        """A stroke ended (GUI thread): (re)start the live update's short delay."""
        if self._closed or not self._live.value or not self._trains_on(event.source):
            return
        self._live_timer.start()

    def _trains_on(self, layer) -> bool:
        """Whether strokes in ``layer`` train the classifier the widget would fit now."""
        if result_of(layer) is not None or not isinstance(layer, Labels):
            return False
        if layer is self._labels_layer.value:
            return True
        return self._train_on.value == TRAIN_ALL and any(lab is layer for _, lab in self.image_label_pairs())

    def _live_update(self) -> None:
        """Retrain and predict now, or when the running job has stopped (a running update is cancelled)."""
        if not self._closed and self._live.value:
            self.run_in_background(self._prepare_live)

    def _on_live_changed(self, on: bool) -> None:
        if on:
            self._status.value = "live update on: each stroke retrains and predicts the slice on screen"
        else:
            self._live_timer.stop()
            self.stop_background()
            self._status.value = "live update off"

    def _prepare_live(self):
        """A live update's job: train, then predict the current slice, the part on screen first (of a
        multiscale image: the part on screen alone)."""
        self._claimed = ""
        if is_pyramid(self._image.value):
            return self._prepare_view(background=True)
        job = self._make_job(current_slice=True)
        if (volume := self._volume_job(job)) is not None:  # 3-D features: the slice in view, whole
            return volume
        self._live_token += 1
        show = partial(self._show_view, self._live_token, self._job_image, job.predict_slices[0])
        view = self.visible_region()
        predict_plane = partial(predict_view_first, view=view, show=show)
        return partial(run_train_job, predict_plane=predict_plane), (job, self.cache)

    def visible_region(self) -> Optional[tuple[slice, slice]]:
        """Rows and columns of the selected image's current slice on screen, from the image layer's
        ``corner_pixels`` (napari updates them when it draws); ``None`` outside a 2-D view of the
        last two axes, or when nothing of the image is on screen."""
        image: Optional[Image] = self._image.value
        dims = self._viewer.dims
        if image is None or dims.ndisplay != 2 or sorted(dims.displayed) != [dims.ndim - 2, dims.ndim - 1]:
            return None
        return visible_region(image.corner_pixels, spatial_shape(image)[-2:])

    @ensure_main_thread
    def _show_view(self, token: int, image: Image, index: tuple, region: tuple, labels: np.ndarray) -> None:
        """Write a live update's first pass, the labels of the part on screen (GUI thread)."""
        if self._closed or token != self._live_token or self.worker is None or self.worker.abort_requested \
                or image not in self._viewer.layers:
            return  # an update that a newer stroke replaced, or an image closed meanwhile
        pred = predictions_layer(self._viewer, image, labels.dtype, self._labels_layer.value)
        pred.data[tuple(index) + tuple(region)] = labels
        pred.refresh()

    # ---- reading the layers ------------------------------------------------------

    def _prepare(self):
        self._claimed = ""
        if is_pyramid(self._image.value):
            return self._prepare_view()
        job = self._make_job()
        return self._volume_job(job) or (run_train_job, (job, self.cache))

    def _make_job(self, current_slice: bool = False) -> TrainJob:
        """The click's inputs, copied from the layers; ``current_slice``: predict the slice on screen
        whatever the 'predict' choice (a live update)."""
        image: Optional[Image] = self._image.value
        labels: Optional[Labels] = self._labels_layer.value
        if image is None:
            raise ValueError("no image layer: open an image first")
        self._job_image = image
        if self._train_on.value == TRAIN_ALL:
            sources = all_sources(self._viewer, image)
        else:
            owner = None if labels is None else labels.metadata.get(IMAGE_KEY, image.name)
            if owner is not None and owner != image.name:  # another image's strokes: this image's own
                own = strokes_of(self._viewer, image)
                if own is None and self.loaded is None:
                    raise ValueError(f"labels layer {labels.name!r} belongs to image {owner!r}, not {image.name!r}; "
                                     "select that image, or click 'New labels layer for this image'")
                labels = own
            if labels is None and self.loaded is not None:
                labels = self.new_labels_layer()
            if labels is None:
                raise ValueError("no labels layer: click 'New labels layer for this image' and paint strokes")
            owner = labels.metadata.get(IMAGE_KEY)
            if owner is not None and owner != image.name:
                raise ValueError(f"labels layer {labels.name!r} belongs to image {owner!r}, not {image.name!r}; "
                                 "select that image, or click 'New labels layer for this image'")
            sources = [source_of(image, labels)]
            if owner is None and labels.data.any():  # from now on these strokes belong to this image
                labels.metadata[IMAGE_KEY] = image.name
                self._claimed = labels.name
        use_loaded = self.loaded is not None and not self._painted_since_load(sources)
        cfg = self.feature_config()
        if not use_loaded:
            check_weights(cfg)  # no weights: refuse now, not after a minute of retries
        shape = spatial_shape(image)
        lead = shape[:-2]
        if not lead or (self._scope.value == SCOPE_STACK and not current_slice):
            predict_slices = [tuple(int(i) for i in idx) for idx in np.ndindex(*lead)]
        else:
            predict_slices = [current_index(self._viewer, image)]
        segmenter = self.loaded if use_loaded else self._new_segmenter()
        layers = {lay.name: lay for lay in self._viewer.layers if isinstance(lay, Image)}
        for src in sources:
            src.pixel_size = layer_pixel_size(layers.get(src.name))
        return TrainJob(sources=sources, predict_slices=predict_slices, segmenter=segmenter, use_loaded=use_loaded,
                        want_uncertainty=bool(self._want_uncertainty.value))

    def _new_segmenter(self, crf: bool = True) -> Segmenter:
        """A Segmenter of the controls' feature, training and (when ``crf`` and ticked) CRF configs."""
        cfg = self.feature_config()
        training = TrainConfig(classifier=self._classifier.value,
                               guided_radius=TrainConfig.guided_radius if self._edge_smoothing.value else 0,
                               pca_dim=(int(self._pca.value) or None) if KINDS[cfg.kind].vit else None)
        return Segmenter(cfg, training, CRFConfig() if crf and self._crf.value else None)

    def _painted_since_load(self, sources: list[Source]) -> bool:
        """Strokes painted (or changed) on these sources' labels since the classifier was loaded."""
        layers = {lay.name: lay for lay in self._viewer.layers if isinstance(lay, Labels)}
        for src in sources:
            layer = layers.get(src.labels_name)
            if src.painted_slices and (layer is None or self._strokes_at_load.get(id(layer)) != _digest(src.labels)):
                return True
        return False

    def image_label_pairs(self) -> list[tuple[Image, Labels]]:
        """Every image layer with its own Labels layer (:func:`._train_layers.image_label_pairs`)."""
        return image_label_pairs(self._viewer)

    # ---- worker callbacks (GUI thread) -------------------------------------------

    def _show_plan(self, plan: str) -> None:
        self.features.plan.value = self._status.value = plan

    def _on_result(self, result: TrainResult) -> None:
        if isinstance(result, ViewResult):  # a multiscale image's view, or its whole image
            return self._on_view_result(result)
        if isinstance(result, WholeResult):
            return self._on_whole_result(result)
        if isinstance(result, PrefetchResult):
            return self._on_prefetch_result(result)
        if isinstance(result, VolumeResult):
            return self._on_volume_result(result)
        image = take_result(self, result)
        if image is None:
            return
        write_result(self._viewer, image, result, self._labels_layer.value)
        reused = f", {result.reused} reused from cache" if result.reused else ""
        if result.trained_on:
            source = f"trained on {len(result.trained_on)} image(s): {'; '.join(result.trained_on)}"
            set_aside = (f"; the loaded {self._loaded_name} is set aside (you painted)" if self.loaded is not None
                         else "")
            self._state.value = f"trained here on {'; '.join(result.trained_on)}{set_aside}"
            self.loaded = None
        else:
            source = f"using the loaded classifier {self._loaded_name}"
        claimed = f"; labels layer {self._claimed!r} now belongs to this image" if self._claimed else ""
        doubt = f"; {len(result.messages)} warning(s): {result.messages[-1]}" if result.messages else ""
        self._status.value = (
            f"predicted {len(result.predict_slices)} slice(s) of {image.name!r} with {result.classifier.n_classes} classes, "
            f"{source} ({result.featurised} featurised{reused}){claimed}{doubt}"
        )

    @property
    def classifier(self):
        """The last fitted (or loaded and used) pixel classifier, ``None`` before."""
        return None if self.segmenter is None else self.segmenter.classifier

    @property
    def predictions(self) -> Optional[Labels]:
        """The selected image's predictions layer (``"<image> predictions"``), ``None`` before."""
        image = self._image.value
        return None if image is None else find_result(self._viewer, image.name, PREDICTIONS)

    # ---- controls that follow the choices ------------------------------------------

    def _update_pca(self, *_args) -> None:
        self._pca.visible = KINDS[self.features.kind.value].vit

    def _update_scope(self, *_args) -> None:
        image = self._image.value
        own = None if image is None else strokes_of(self._viewer, image)
        if own is not None and self._labels_layer.value is not own:  # an image chosen: its own strokes too
            self._labels_layer.value = own
        self._scope.visible = image is not None and len(spatial_shape(image)) > 2 and not is_pyramid(image)
        self._volume_picked(image)  # the 3-D checkbox for a volume
        self._pyramid_picked(image)  # said when it is chosen, before any painting


def bundle_path(value) -> Path:
    """The classifier file named in the file field; ``ValueError`` when it names none (empty, or a folder)."""
    text = str(value or "").strip()
    path = Path(text).expanduser()
    if text in ("", ".") or not path.name:
        raise ValueError("no classifier file: type a file name in 'classifier file' (e.g. cells.dinoseg), "
                         "or choose one with its button")
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder: add a file name (e.g. {str(path / 'cells.dinoseg')!r})")
    return path


def _digest(labels) -> Optional[str]:
    if not isinstance(labels, np.ndarray):  # on disk (a multiscale image's strokes): its stored chunks
        return labels_digest(labels)
    return hashlib.blake2b(np.ascontiguousarray(labels).tobytes(), digest_size=16).hexdigest()
