"""The "dinoseg: unsupervised" dock widget: class-agnostic segmentation with no labels.

Reads the image (the current slice, or the whole stack for co-segmentation: the choice is
shown for images with more than one plane), runs the CAS pipeline in a worker with the
features cache shared with the train widget, and writes the image's
``"<image> CAS labels"`` Labels layer, ``"<image> foreground"`` Labels layer and
``"<image> boxes"`` Shapes layer (the superbox in yellow), or in parts mode its
``"<image> parts"`` layer; each write puts them over that image and shows them, and hides the
other mode's layers of that image (``_layers.place_result``). "Use as labels" copies chosen CAS classes into a brush-labels
layer as training labels for the train widget.

For a single-channel ``(Z, Y, X)`` image layer the feature controls show '3-D features (volume)'
(the train dock's checkbox, :meth:`~._feature_controls.FeatureControls.allow_volume`): ticked, the
whole volume is segmented with 3-D classical features (:func:`run_volume_cas_job`, block by block,
the layer's scale as the voxel spacing) into ``(Z, Y, X)`` CAS labels and foreground layers at the
image's scale; volumes get no boxes.

Features default to DINOv2 when its weights can be had, else to classical features with a
note saying what DINOv2 would add and where its weights go; a DINOv2 or hybrid click with no
weights is refused in about a second, before any work starts.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, LineEdit, PushButton, SpinBox, create_widget
from napari.layers import Image, Labels, Shapes

from ..config import CASConfig, FeatureConfig
from ..feature_kinds import KINDS
from ..features.featurise import FeatureCache
from ..image import drop_alpha
from ..progress import report, within
from ..unsupervised import CASResult, segment_unsupervised
from ..unsupervised_volume import LEFT_OUT, VolumeCASResult, check_volume_config, segment_volume_unsupervised
from ._feature_controls import FeatureControls, check_weights, numbers
from ._jobs import featurise_planes, start_job
from ._layers import (add_result, current_index, find_result, geometry, multiscale_refusal,
                      refuse_multiscale_when_picked, remove_result, set_result, spatial_shape)
from ._sections import Section
from ._text import wrap
from ._train_volume import VOLUME_BOX, describe_spacing
from ._volume_controls import is_volume, layer_spacing
from ._worker_widget import WorkerWidget

if TYPE_CHECKING:
    import napari

CAS_LAYER, FOREGROUND_LAYER, BOXES_LAYER, PARTS_LAYER = "CAS labels", "foreground", "boxes", "parts"
MODE_CAS, MODE_PARTS = "classes (CAS)", "parts (co-segmentation)"
SCOPE_SLICE, SCOPE_STACK = "current slice", "whole stack (co-segmentation)"
#: What DINOv2 features add to CAS, for the note shown when its weights are missing.
DINOV2_ADDS = ("DINOv2 would add semantic features (regions that look alike in meaning, not only in grey level) "
               "and CLS attention, which finds the foreground and the object boxes")


def run_cas_job(planes: list, config: CASConfig, cache: FeatureCache, progress=None, announce=None) -> CASResult:
    """Featurise (or reuse) each plane, then segment them together; pure, runs in a worker."""
    featuriser = start_job(config.features, planes[0], announce)
    with warnings.catch_warnings(record=True) as featurising:  # NaN replaced, ...: shown by the GUI
        warnings.simplefilter("always")
        stacks = list(featurise_planes(featuriser, planes, progress, cache, span=(0.0, 0.7)))
    messages = [str(w.message) for w in featurising]
    report(progress, 700, 1000, "clustering")
    cfg = dataclasses.replace(config, features=featuriser.config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = segment_unsupervised(stacks if len(stacks) > 1 else stacks[0], cfg, images=planes,
                                      progress=lambda d, t, m: report(progress, 700 + int(0.3 * d), 1000, m))
    result.messages = list(dict.fromkeys(messages + result.messages + [str(w.message) for w in caught]))
    return result


def run_volume_cas_job(volume, config: CASConfig, spacing: Optional[tuple], progress=None,
                       announce=None) -> VolumeCASResult:
    """Segment a ``(Z, Y, X)`` volume (numpy, zarr, dask) with 3-D classical features, block by block
    (:func:`~napari_dinoseg.unsupervised_volume.segment_volume_unsupervised`); pure, runs in a worker.
    Warnings (NaN replaced, ...) go to the result's ``messages``."""
    if announce is not None:
        shape = " × ".join(str(n) for n in np.shape(volume))
        announce(f"3-D classical features of a {shape} volume, {describe_spacing(spacing)}, block by block")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = segment_volume_unsupervised(volume, config, spacing, progress)
    result.messages = list(dict.fromkeys(str(w.message) for w in caught))
    return result


@dataclasses.dataclass
class PartsResult:
    """``labels``: one ``(H, W)`` part-label image per plane, 0 the background, ids shared."""

    labels: list
    n_parts: int
    foreground: str
    messages: list = dataclasses.field(default_factory=list)


def run_parts_job(planes: list, features: FeatureConfig, n_parts: int, crf: bool, cache: FeatureCache,
                  progress=None, announce=None) -> PartsResult:
    """Featurise (or reuse) each plane, then co-segment them into parts (:func:`~napari_dinoseg.parts.segment_parts`):
    the foreground by saliency votes where the features come with CLS attention, else every pixel; runs in a
    worker."""
    from ..parts import segment_parts

    featuriser = start_job(features, planes[0], announce)
    foreground = "saliency" if featuriser.has_attention else "all"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stacks = list(featurise_planes(featuriser, planes, progress, cache, span=(0.0, 0.7)))
        labels = segment_parts(stacks, n_parts=n_parts, foreground=foreground, crf=crf,
                               crf_images=planes if crf else None, progress=within(progress, 0.7, 1.0))
    return PartsResult(labels, n_parts, foreground, list(dict.fromkeys(str(w.message) for w in caught)))


class UnsupervisedWidget(WorkerWidget):
    """Dock widget: CAS labels, foreground and object boxes from an image with no labels."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer, "Segment", "No labels needed: choose features and click Segment.")
        self.result: Optional[Union[CASResult, VolumeCASResult]] = None
        self._job_image: Optional[Image] = None  # the image the running job segments
        self._image = create_widget(annotation=Image, label="image")
        self.features = FeatureControls(kind="vit", volumes=True)
        self._weights_note = wrap(Label(value=""))
        self._mode = ComboBox(choices=[MODE_CAS, MODE_PARTS], value=MODE_CAS, label="mode")
        self._mode.tooltip = ("classes: class-agnostic regions, foreground and object boxes (CAS). parts: the "
                              "parts common to a set of images (the whole stack), ids shared across it")
        self._n_parts = SpinBox(value=4, min=1, max=64, label="parts")
        self._n_parts.tooltip = "how many parts to split the foreground into (ids 1..parts, 0 the background)"
        self._k = SpinBox(value=80, min=2, max=1000, label="k (clusters)")
        self._k.tooltip = ("DINOv2 / hybrid: k-means clusters before merging. Classical: the most classes "
                           "(at most 6; their number is chosen by silhouette)")
        self._granularity = FloatSpinBox(value=1.0, min=0.5, max=2.0, step=0.01, label="granularity")
        self._granularity.tooltip = "x the merging distance of DINOv2 / hybrid clusters: above 1 merges more"
        self._crf = CheckBox(value=False, text="refine with a dense CRF")
        self._scope = ComboBox(choices=[SCOPE_SLICE, SCOPE_STACK], value=SCOPE_SLICE, label="segment")
        self._classes = LineEdit(value="", label="CAS classes")
        self._classes.native.setPlaceholderText("e.g. 3, 7 (empty: the class selected in 'CAS labels')")
        self._as_label = SpinBox(value=1, min=1, max=255, label="as brush label")
        self._target = create_widget(annotation=Labels, label="into labels layer", options={"nullable": True})
        self._use = PushButton(text="Use as labels")
        feature_widgets = list(self.features.widgets)
        feature_widgets.insert(feature_widgets.index(self.features.kind) + 1, self._weights_note)
        self.clustering = Section("clustering details", [self._k, self._granularity, self._crf],
                                  tooltip="k-means clusters, merging granularity, dense CRF")
        self.as_labels = Section("use as training labels", [self._classes, self._as_label, self._target, self._use],
                                 tooltip="copy chosen CAS classes into a brush-labels layer for the train widget")
        self.extend([  # the everyday controls in view; details fold away
            self._image, self._mode, *feature_widgets, self._n_parts, self.clustering, self._scope,
            *self.run_controls, self.as_labels,
        ])
        self._use.changed.connect(self.use_as_labels)
        self._image.changed.connect(self._on_image)
        self.features.kind.changed.connect(self._update_controls)
        for control in (self.features.kind, self.features.volume):  # 3-D features segment the whole volume
            control.changed.connect(self._update_scope)
        self._mode.changed.connect(self._update_controls)
        self.features.prefer_classical_without_weights(
            self._weights_note, "DINOv2 would add semantic features, and CLS attention for the foreground and boxes.",
            tooltip=DINOV2_ADDS)
        self._update_controls()
        self._on_image()  # the feature controls shown for the kind (update_visibility), the 3-D box for a volume
        refuse_multiscale_when_picked(self, [self._image], "the unsupervised dock")

    def config(self) -> CASConfig:
        return CASConfig(features=self.features.config(), k=int(self._k.value),
                         granularity=float(self._granularity.value), crf=bool(self._crf.value))

    def _prepare(self):
        config = self.config()
        if config.features.dims == 3:
            return self._volume_job(config)
        check_weights(config.features)  # no weights: refuse now, not after a minute of retries
        planes, self._index = self._planes()
        self._job_image = self._image.value
        if self._mode.value == MODE_PARTS:
            return run_parts_job, (planes, config.features, int(self._n_parts.value), bool(self._crf.value), self.cache)
        return run_cas_job, (planes, config, self.cache)

    def _volume_job(self, config: CASConfig) -> tuple:
        """``(run_volume_cas_job, args)`` for the volume picked, '3-D features (volume)' ticked;
        ``ValueError`` in parts mode or for features other than the classical filters."""
        if self._mode.value == MODE_PARTS:
            raise ValueError(f"parts mode co-segments planes: untick '{VOLUME_BOX}' to find the parts of the "
                             "slices, or choose the classes (CAS) mode to segment the volume in 3-D")
        check_volume_config(config)
        image: Image = self._image.value
        self._job_image, self._index = image, None
        return run_volume_cas_job, (image.data, config, layer_spacing(image))

    def _update_controls(self, *_args) -> None:
        """Granularity scales the merging distance, which only features with attention have; the
        CAS controls in classes mode, the number of parts in parts mode."""
        parts = self._mode.value == MODE_PARTS
        self._granularity.visible = KINDS[self.features.kind.value].vit and not parts
        self._k.visible = not parts
        self._n_parts.visible = parts
        self.as_labels.visible = not parts
        if parts:
            self.features.facet.value = "key"  # the paper's descriptor for parts

    def _on_image(self, *_args) -> None:
        """Another image picked: the '3-D features (volume)' checkbox only for a volume, and its scope."""
        self.features.allow_volume(is_volume(self._image.value))
        self._update_scope()

    def _update_scope(self, *_args) -> None:
        """The slice / stack choice only for images with more than one plane, unless 3-D features
        segment the whole volume."""
        image: Optional[Image] = self._image.value
        shape = () if image is None else (image.data.shape[:-1] if image.rgb else image.data.shape)
        self._scope.visible = int(np.prod(shape[:-2], dtype=np.int64)) > 1 and not self.features.volume_active

    def use_as_labels(self, *_args) -> Optional[Labels]:
        """Copy the chosen CAS classes into the brush-labels layer (unlabelled pixels only)."""
        image: Optional[Image] = self._image.value
        cas = None if image is None else find_result(self._viewer, image.name, CAS_LAYER)
        if cas is None:
            name = "this image" if image is None else repr(image.name)
            self._fail(f"run Segment on {name} first: it has no '{CAS_LAYER}' layer")
            return None
        try:
            classes = numbers(self._classes.value, "CAS classes", "3, 7", int) or (int(cas.selected_label),)
        except ValueError as err:
            self._fail(str(err))
            return None
        target = self._target.value
        if target is None or target.data.shape != cas.data.shape:
            target = self._viewer.add_labels(np.zeros(cas.data.shape, np.uint8), name=f"{self._image.value.name} labels",
                                             scale=cas.scale, translate=cas.translate)
            self._target.reset_choices()
            self._target.value = target
        fill = np.isin(cas.data, classes) & (target.data == 0)
        target.data[fill] = int(self._as_label.value)
        target.refresh()
        self._status.value = f"CAS classes {list(classes)} -> brush label {self._as_label.value} ({int(fill.sum())} px)"
        return target

    # ---- inputs and outputs --------------------------------------------------------

    def _planes(self) -> tuple[list, Optional[tuple]]:
        image: Optional[Image] = self._image.value
        if image is None:
            raise ValueError("no image layer: open an image first")
        if image.multiscale:
            raise ValueError(multiscale_refusal(image.name, "the unsupervised dock"))
        shape = image.data.shape[:-1] if image.rgb else image.data.shape
        lead = shape[:-2]
        prep = (lambda p: drop_alpha(p)) if image.rgb else (lambda p: p)
        if not lead:
            return [prep(np.asarray(image.data))], None
        if self._scope.value == SCOPE_STACK:
            return [prep(np.asarray(image.data[i])) for i in np.ndindex(*lead)], ()
        index = current_index(self._viewer, image)
        return [prep(np.asarray(image.data[index]))], index

    def _write_parts(self, result: PartsResult, image: Image) -> None:
        """The image's ``parts`` Labels layer: the slice segmented, or every slice of the stack."""
        shape = spatial_shape(image)
        if self._index is None:
            data = result.labels[0]
        elif self._index == ():
            data = np.stack(result.labels).reshape(shape)
        else:
            data = np.zeros(shape, result.labels[0].dtype)
            data[self._index] = result.labels[0]
        set_result(self._viewer, image, PARTS_LAYER, Labels, data, geometry(image))
        hidden = self._hide(image, (CAS_LAYER, FOREGROUND_LAYER, BOXES_LAYER))
        found = int(data.max())
        how = ("foreground by saliency votes across the images" if result.foreground == "saliency"
               else "every pixel is foreground (classical features have no attention to vote with)")
        planes = len(result.labels)
        self._status.value = (f"{found} of {result.n_parts} parts over {planes} plane(s), ids shared; {how}; "
                              f"{(data > 0).mean():.0%} of the pixels in a part{hidden}")

    def _hide(self, image: Image, roles: tuple) -> str:
        """Hide ``image``'s result layers of the other mode; the status note saying so ("" if none)."""
        shown = [lay for lay in (find_result(self._viewer, image.name, r) for r in roles) if lay is not None and lay.visible]
        for layer in shown:
            layer.visible = False
        return f"; hid {', '.join(repr(lay.name) for lay in shown)} (tick them in the layer list to compare)" if shown \
            else ""

    def _write_layers(self, result: CASResult, image: Image) -> None:
        shape, where = spatial_shape(image), geometry(image)
        labels, foreground = result.labels, result.foreground.astype(np.uint8)
        if self._index is not None and self._index != ():  # one slice of a stack
            full_l, full_f = np.zeros(shape, np.int32), np.zeros(shape, np.uint8)
            full_l[self._index], full_f[self._index] = labels, foreground
            labels, foreground = full_l, full_f
        elif self._index == ():
            labels, foreground = labels.reshape(shape), foreground.reshape(shape)
        fg = self._write_classes(image, labels, foreground)
        rects, colours = [], []
        slices = [()] * len(result.boxes) if self._index is None else (
            list(np.ndindex(*shape[:-2])) if self._index == () else [self._index])
        for index, boxes, sup in zip(slices, result.boxes, result.superbox):
            for i, (r0, c0, r1, c1) in enumerate(boxes):
                corners = [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]
                rects.append(np.array([[*index, r, c] for r, c in corners], float))
                colours.append("yellow" if i == sup else "cyan")
        remove_result(self._viewer, image.name, BOXES_LAYER)
        if rects and result.boxes_shown:  # on a continuous microstructure boxes are clutter: none, say why
            add_result(self._viewer, image, BOXES_LAYER, Shapes(
                rects, shape_type="rectangle", edge_color=colours, face_color="transparent", edge_width=2, **where),
                above=fg)

    def _write_classes(self, image: Image, labels: np.ndarray, foreground: np.ndarray) -> Labels:
        """The image's CAS labels and foreground layers (of its spatial shape), at its scale; returns
        the foreground layer."""
        where = geometry(image)
        cas = set_result(self._viewer, image, CAS_LAYER, Labels, labels, where)
        return set_result(self._viewer, image, FOREGROUND_LAYER, Labels, foreground, {**where, "opacity": 0.4},
                          above=cas)

    def _write_volume(self, result: VolumeCASResult, image: Image) -> None:
        """A volume's ``(Z, Y, X)`` CAS labels and foreground; no boxes (an old boxes layer removed)."""
        self._write_classes(image, result.labels, result.foreground.astype(np.uint8))
        remove_result(self._viewer, image.name, BOXES_LAYER)
        hidden = self._hide(image, (PARTS_LAYER,))
        more = "".join(f"; {note}" for note in result.notes if note != LEFT_OUT)  # the CRF not applied
        self._status.value = (f"{result.n_classes} classes in 3-D ({describe_spacing(result.spacing)}; classical "
                              f"features, their number chosen by silhouette); no boxes for volumes{more}{hidden}")

    def _show_plan(self, plan: str) -> None:
        self.features.plan.value = self._status.value = plan

    def _on_result(self, result) -> None:
        image: Optional[Image] = self._job_image
        if image is None or image not in self._viewer.layers:
            self._status.value = "the image was closed before its segmentation was ready; nothing was written"
            return
        if isinstance(result, PartsResult):
            self._write_parts(result, image)
            return
        self.result = result
        if isinstance(result, VolumeCASResult):
            self._write_volume(result, image)
            return
        self._write_layers(result, image)
        hidden = self._hide(image, (PARTS_LAYER,))
        boxes = f"{sum(len(b) for b in result.boxes)} boxes" if result.boxes_shown else result.boxes_note
        if result.silhouettes:  # classical: no clusters merged
            how = "(classical features, their number chosen by silhouette)"
        else:
            how = f"from {result.n_clusters} clusters (distance {result.threshold:.3f})"
        self._status.value = f"{int(result.labels.max())} classes {how}; {boxes}{hidden}"
