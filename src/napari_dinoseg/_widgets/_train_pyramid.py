"""The train dock's controls and actions for a multiscale (pyramid) image layer (GUI thread).

:class:`PyramidControls` is a mixin of :class:`~.train_widget.TrainWidget`: the "resolution" menu
(the working level, shown only for a multiscale image), the "Predict whole image" button, and the
jobs they prepare (:mod:`._pyramid_job`): Train / Predict and the live update fit on the working
level's painted windows and predict the part in view at that level; the whole image is segmented
into an OME-Zarr on disk whose path the dock says.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from magicgui.widgets import ComboBox, PushButton
from napari.layers import Image, Labels
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer

from ..feature_kinds import KINDS
from ..progress import Cancelled
from ._feature_controls import check_weights
from ._layers import IMAGE_KEY, TRAIN_ALL, layer_pixel_size, strokes_of
from ._train_layers import take_result
from ._pyramid import (LEVEL_KEY, WHOLE, add_strokes, describe_level, is_pyramid, level_choices, level_pixel_size,
                       level_shape, predictions_path, pyramid_problem, show_pyramid, strokes_note, view_region,
                       whole_path)
from ._pyramid_job import (VIEW_BUDGET, PrefetchJob, PrefetchResult, ViewJob, ViewResult, WholeJob, WholeResult,
                           labels_digest, lazy_level, run_prefetch_job, run_view_job, run_whole_job, within_budget)

RESOLUTION_TIP = ("the level of the pyramid the classifier is trained and predicts at (level 0: the finest); its "
                  "pixel size is kept with the classifier. A coarser level predicts a larger view in the same time")
#: The view's features are computed ahead (:meth:`PyramidControls.prefetch`) this long after the
#: view last moved, the image or level was chosen (ms): not while the user pans or zooms.
PREFETCH_DELAY_MS = 500
#: The largest view (pixels of the working level) prepared ahead: three times a typical view of
#: 1500 × 1000 screen pixels at one image pixel each. A larger one (the whole of a 16384² image on
#: screen) is not where the user paints; its features would fill gigabytes for a click that may
#: never come (a click there computes them, within :data:`VIEW_BUDGET`).
PREFETCH_PIXELS = 4_500_000
#: What the status line says, after what it said before, while the view's features are computed
#: ahead, and once they are ready.
PREPARING = " · computing the features of the view ahead of Train / Predict…"
BOUNDS = " · reading the image's intensity range ahead of Train / Predict…"
READY = " · features of the view ready"
WHOLE_TIP = ("segment the whole image at the working level, window by window, into an OME-Zarr on disk (its path is "
             "shown), then show it as a multiscale labels layer; Cancel stops it and removes the partial output")


class PyramidControls:
    """Mixin of the train dock: its multiscale controls, jobs and results. Expects the
    :class:`~.train_widget.TrainWidget` attributes (``_viewer``, ``_image``, ``_labels_layer``,
    ``_status``, ``loaded``, ``segmenter``...)."""

    def _make_pyramid_controls(self) -> list:
        self._level_choices = [("level 0", 0)]  # a callable's: napari's reset_choices keeps them
        self._level = ComboBox(choices=lambda _widget: self._level_choices, label="resolution", visible=False)
        self._level.tooltip = RESOLUTION_TIP
        self._whole = PushButton(text="Predict whole image", visible=False)
        self._whole.tooltip = WHOLE_TIP
        self._whole_out = None  # the store a running whole-image job writes
        self._level.changed.connect(self._on_level_changed)
        self._whole.changed.connect(self.predict_whole)
        self._prefetch_timer = QTimer(self.native)
        self._prefetch_timer.setSingleShot(True)
        self._prefetch_timer.setInterval(PREFETCH_DELAY_MS)
        self._prefetch_timer.timeout.connect(self.prefetch)
        self._prefetched = None  # what the last preparation computed (image, level, region, features)
        self._viewer.scene.camera.events.center.connect(self._on_view_moved)
        self._viewer.scene.camera.events.zoom.connect(self._on_view_moved)
        return [self._level, self._whole]

    # ---- the image and its working level ---------------------------------------------------

    def _pyramid_picked(self, image: Optional[Image]) -> None:
        """The image menu changed: show the resolution menu and the whole-image button for a
        multiscale image (or say why it cannot be used, before any painting); hide them otherwise."""
        pyramid = is_pyramid(image)
        problem = pyramid_problem(image) if pyramid else None
        usable = pyramid and problem is None
        if usable:
            self._level_choices = level_choices(image, self._pixel_size_of(image))
            self._level.reset_choices()
            own = strokes_of(self._viewer, image)
            self._level.value = own.metadata.get(LEVEL_KEY, 0) if own is not None else 0
        self._level.visible = self._whole.visible = usable
        if problem is not None:
            self._status.value = problem
        elif usable:
            self._status.value = self._pyramid_intro(image)
            self._on_view_moved()

    def _pyramid_intro(self, image: Image) -> str:
        own = strokes_of(self._viewer, image)
        where = strokes_note(image, own) if own is not None else "click 'New labels layer for this image' to paint"
        return (f"{image.name!r} is multiscale ({len(image.data)} levels): trained and predicted at "
                f"{describe_level(image, self.working_level, self._pixel_size_of(image))}; Train / Predict predicts "
                f"the part in view; {where}")

    @property
    def working_level(self) -> int:
        """The pyramid level the classifier is trained and predicts at."""
        return int(self._level.value or 0)

    def view_in_level(self):
        """Rows and columns of the working level on screen (``None``: none, or not a 2-D view)."""
        image = self._image.value
        return view_region(self._viewer, image, self.working_level) if is_pyramid(image) else None

    def _on_level_changed(self, *_args) -> None:
        image = self._image.value
        if is_pyramid(image) and pyramid_problem(image) is None:
            self._status.value = self._pyramid_intro(image)
            own = strokes_of(self._viewer, image)
            if own is not None and own.metadata.get(LEVEL_KEY, 0) != self.working_level:
                self._status.value += (f"; note: its strokes were painted at level {own.metadata.get(LEVEL_KEY, 0)}: "
                                       "choose that level to train on them, or make a new labels layer")

    # ---- the view's features, computed while the user paints ------------------------------

    def _on_view_moved(self, *_args) -> None:
        """The view moved (or the image or level was chosen): prepare it once it has settled."""
        if not self._closed and is_pyramid(self._image.value):
            self._prefetch_timer.start()

    def prefetch(self) -> bool:
        """Compute the features of the view's windows at the working level into the feature cache
        (a background job, :func:`._pyramid_job.run_prefetch_job`), so that Train / Predict there
        starts from them: a click (or a live update) cancels it and runs at once; what it computed
        stays. Only for classical features (seconds; a ViT's forward passes on a CPU would hold the
        cores for minutes while the user paints), when nothing else runs and the view is not
        already prepared; of a view larger than :data:`PREFETCH_PIXELS`, only the level's
        intensity bounds (one read of the level, kept). Returns whether it started."""
        if self.worker is not None or self._waiting is not None:
            return False
        job = self._prefetch_job()
        if job is None:
            return False
        before = _without_prefetch_note(self._status.value)
        self._prefetched = _prepared(job)
        if self.run_in_background(lambda: (run_prefetch_job, (job, self.cache))) is None:
            return False
        # its reports move the progress bar only: a message said meanwhile (a new labels layer's) stays
        self._status.value = before + (PREPARING if job.region is not None else BOUNDS)
        return True

    def _prefetch_job(self) -> Optional[PrefetchJob]:
        """The preparation of the view now, or ``None`` when there is nothing to prepare."""
        image = self._image.value
        if self._closed or self.hidden or not is_pyramid(image) or pyramid_problem(image) is not None:
            return None
        region = self.view_in_level()
        if region is not None and np.prod([s.stop - s.start for s in region]) > PREFETCH_PIXELS:
            region = None  # the intensity bounds only
        try:
            segmenter = self.loaded if self.loaded is not None else self._new_segmenter(crf=False)
        except ValueError:  # the controls do not make a pipeline yet: the click will say why
            return None
        if KINDS[segmenter.features.kind].vit:
            return None
        level = self.working_level
        job = PrefetchJob(name=image.name, level=level, plane=lazy_level(image.data[level]),
                          region=None if region is None else within_budget(region), segmenter=segmenter)
        return None if self._prefetched == _prepared(job) else job

    def _on_prefetch_result(self, result: PrefetchResult) -> None:
        before = _without_prefetch_note(self._status.value)
        self._status.value = before if not result.windows else (  # none: all there already, or not kept
            f"{before}{READY} ({result.windows} window(s) of level {result.level} computed in {result.seconds:.1f} s): "
            "Train / Predict starts from them")

    def _pixel_size_of(self, image: Image) -> Optional[float]:
        return layer_pixel_size(image)

    def _new_pyramid_strokes(self, image: Image) -> Optional[Labels]:
        problem = pyramid_problem(image)
        if problem is not None:
            self._fail(problem)
            return None
        layer = add_strokes(self._viewer, image, self.working_level)
        self._status.value = strokes_note(image, layer)
        return layer

    # ---- Train / Predict and the live update ------------------------------------------------

    def _prepare_view(self, background: bool = False):
        """A Train / Predict click's (or live update's) job on a multiscale image: fit on the working
        level's strokes, predict the part in view (:func:`._pyramid_job.run_view_job`)."""
        image: Image = self._image.value
        problem = pyramid_problem(image)
        if problem is not None:
            raise ValueError(problem)
        if self._train_on.value == TRAIN_ALL:
            raise ValueError(f"'train on: every image with labels' does not take the multiscale image {image.name!r} "
                             "yet: choose 'this image'")
        level = self.working_level
        shape = level_shape(image, level)
        labels = self._pyramid_labels(image)
        use_loaded = self.loaded is not None and (labels is None or not self._painted_since_load_pyramid(labels))
        if labels is None and not use_loaded:
            raise ValueError("no labels layer: click 'New labels layer for this image' and paint strokes")
        if labels is not None and tuple(labels.data.shape[:2]) != shape:
            painted_at = labels.metadata.get(LEVEL_KEY, "?")
            raise ValueError(f"labels layer {labels.name!r} has shape {tuple(labels.data.shape)} but level {level} of "
                             f"{image.name!r} is {shape[0]}×{shape[1]}: choose level {painted_at} under 'resolution', "
                             "or click 'New labels layer for this image'")
        wanted = self.view_in_level() or (slice(0, shape[0]), slice(0, shape[1]))
        region = within_budget(wanted)
        base = self._pixel_size_of(image)
        if use_loaded:
            segmenter = self.loaded
        else:
            check_weights(self.feature_config())
            segmenter = self._new_segmenter(crf=False)
        notes = (["the dense CRF is not applied to a view of a multiscale image (it couples the whole plane)"]
                 if self._crf.value and not use_loaded else [])
        self._job_image = image
        job = ViewJob(name=image.name, level=level, plane=lazy_level(image.data[level]),
                      labels=None if use_loaded else labels.data, region=region, segmenter=segmenter,
                      pixel_size=level_pixel_size(base, image, level), out=predictions_path(image, level),
                      use_loaded=use_loaded, wanted=wanted, notes=notes)
        if background:
            self._live_token += 1
        return run_view_job, (job, self.cache)

    def _pyramid_labels(self, image: Image) -> Optional[Labels]:
        """The image's strokes: the selected labels layer when it belongs to the image, else its own."""
        labels = self._labels_layer.value
        if labels is not None and labels.metadata.get(IMAGE_KEY, image.name) == image.name:
            return labels
        return strokes_of(self._viewer, image)

    def _painted_since_load_pyramid(self, labels: Labels) -> bool:
        digest = labels_digest(labels.data)
        return digest is None or self._strokes_at_load.get(id(labels)) != digest

    def _on_view_result(self, result: ViewResult) -> None:
        from ._train_layers import PREDICTIONS, _colours

        image = take_result(self, result)
        if image is None:
            return
        show_pyramid(self._viewer, image, PREDICTIONS, result.level, result.out,
                     _colours(self._viewer, image, self._labels_layer.value))
        strokes = strokes_of(self._viewer, image)
        if strokes is not None:
            self._viewer.layers.selection.active = strokes
        if result.trained:
            self._state.value = f"trained here on {image.name!r} at level {result.level}"
            self.loaded = None
            source = "trained on its strokes"
        else:
            source = f"using the loaded classifier {self._loaded_name}"
        (r0, r1), (c0, c1) = [(s.start, s.stop) for s in result.region]
        budget = ""
        if result.wanted is not None and result.wanted != result.region:
            (w0, w1), (v0, v1) = [(s.start, s.stop) for s in result.wanted]
            budget = (f"; the view holds {(w1 - w0) * (v1 - v0) / 1e6:.0f} Mpx at this level, more than one click "
                      f"predicts ({VIEW_BUDGET / 2 ** 20:.0f} Mpx): predicted its centre; zoom in, or choose a coarser "
                      "level, to predict all of it")
        doubt = f"; {len(result.messages)} warning(s): {result.messages[-1]}" if result.messages else ""
        self._status.value = (
            f"predicted the view of {image.name!r} at level {result.level} (rows {r0}–{r1}, columns {c0}–{c1}, "
            f"{(r1 - r0) * (c1 - c0) / 1e6:.1f} Mpx) with {result.n_classes} classes, {source} "
            f"({_timing(result)}); predictions "
            f"accumulate on disk in {result.out}{budget}{doubt}")

    # ---- the whole image -----------------------------------------------------------------

    def predict_whole(self, *_args):
        """Segment the whole image at the working level into an OME-Zarr on disk (a job with
        progress and Cancel); returns the worker, or ``None`` when refused or waiting."""
        if self.worker is not None and not self._background:
            show_info("dinoseg: already running; wait or click Cancel")
            return None
        if self.worker is not None:
            self._after_current(self._prepare_whole, background=False)
            return None
        return self._start(self._prepare_whole, background=False)

    def _prepare_whole(self):
        image: Optional[Image] = self._image.value
        if not is_pyramid(image):
            raise ValueError("'Predict whole image' is for multiscale images: select one")
        problem = pyramid_problem(image)
        if problem is not None:
            raise ValueError(problem)
        segmenter = self.segmenter if self.segmenter is not None else self.loaded
        if segmenter is None or segmenter.classifier is None:
            raise ValueError("no classifier yet: click Train / Predict first (or load a classifier)")
        level = self.working_level
        out = whole_path(image, level)
        self._job_image, self._whole_out = image, out
        job = WholeJob(name=image.name, level=level, plane=lazy_level(image.data[level]), segmenter=segmenter,
                       pixel_size=level_pixel_size(self._pixel_size_of(image), image, level), out=out)
        return run_whole_job, (job, self.cache)

    def _on_whole_result(self, result: WholeResult) -> None:
        from ._train_layers import _colours

        self._whole_out = None
        image = self._job_image
        if image is None or image not in self._viewer.layers:
            self._status.value = f"the image was closed; its segmentation is on disk in {result.out}"
            return
        show_pyramid(self._viewer, image, WHOLE, result.level, result.out,
                     _colours(self._viewer, image, self._labels_layer.value), opacity=0.5)
        h, w = result.shape
        doubt = f"; {len(result.messages)} warning(s): {result.messages[-1]}" if result.messages else ""
        self._status.value = (f"segmented the whole of {image.name!r} at level {result.level} ({h}×{w}, "
                              f"{result.levels} levels): written to {result.out}{doubt}")

    def _on_destroyed(self, *_args) -> None:
        """As :class:`WorkerWidget`'s; the camera no longer calls a closed dock."""
        for event in (self._viewer.scene.camera.events.center, self._viewer.scene.camera.events.zoom):
            event.disconnect(self._on_view_moved)
        super()._on_destroyed(*_args)

    def _on_errored(self, err: BaseException) -> None:
        """As :class:`WorkerWidget`'s; a whole-image job's cancel says its partial output was removed."""
        if self._background:  # a preparation stopped (by a click, say) may not have finished
            self._prefetched = None
        super()._on_errored(err)
        out, self._whole_out = self._whole_out, None
        if out is not None and isinstance(err, Cancelled) and not self._closed:
            self._status.value = (f"cancelled: the whole-image segmentation stopped; its partial output {out} "
                                  "was removed")
        elif out is not None and not self._closed:
            self._status.value += f" (its partial output {out} was removed)"


def _without_prefetch_note(status: str) -> str:
    """The status line without what a preparation of the view added to it."""
    for note in (PREPARING, BOUNDS, READY):
        status = status.split(note)[0]
    return status


def _prepared(job: PrefetchJob) -> tuple:
    """What a preparation computes the features of: the image, level, view and pipeline (its
    features and the smoothing that sets the windows' margins)."""
    seg = job.segmenter
    return job.name, job.level, job.region, seg.features, seg.training


def _timing(result: ViewResult) -> str:
    fit, predict = result.seconds
    return (f"trained in {fit:.1f} s, " if result.trained else "") + f"predicted in {predict:.1f} s"
