"""The "dinoseg: measure" dock widget: phase fractions, objects and their sizes of a Labels layer.

Reads a Labels layer (by default the newest predictions layer of the train dock) and, under
"options", an image layer for each object's mean intensity, a minimum object size and whether
to split touching objects; runs :func:`napari_dinoseg.measure.measure` in a worker. A layer
with several planes (a stack) is measured in the plane in view, or, for a 3-D layer of cubic
voxels, as one volume (3-D objects) when chosen. The pixel size is the field's, filled in from
the layer's scale and unit when they give one (the note under it says where it came from).

The results, on the GUI thread: the status line (what was measured, objects, unit); tables in
tabs, "summary" (per label value: fraction, objects, and the median size of those inside the
image, with its unit), "fractions" and "objects" (measure()'s tables, headers with units,
sortable; a click on an object row centres the viewer on the object, in world coordinates, and
zooms to it); the two plots of :mod:`napari_dinoseg.measure_plots` in tabs below; "Export CSV…"
(fractions, objects and summary files); and an objects Labels layer, each object its own id
(the table's ``id``) and ``features`` the objects table with napari's ``index`` column (the id
of each row), so that napari's own tools and other plugins read it. The objects layer of a
predictions layer is its image's result layer ``"<image> predictions objects"``, put directly
above it; that of any other Labels layer is ``"<labels> objects"``, above it; both are updated
in place when measured again.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Label, LineEdit, PushButton, SpinBox, create_widget
from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFileDialog, QSizePolicy, QSplitter, QTabWidget

from ..measure import joined
from ..measure_plots import fractions_figure, sizes_figure
from ._measure_job import MeasureJob, MeasureResult, report_line, run_measure_job, summary_frame
from ._layers import (current_index, multiscale_refusal, refuse_multiscale_when_picked, result_of, results, set_layer,
                      set_result, spatial_shape)
from ._sections import Section
from ._tables import PANEL_HEIGHT, PLOT_HEIGHT, canvas, scrolling, table
from ._text import wrap
from ._worker_widget import WorkerWidget
from .train_widget import PREDICTIONS

if TYPE_CHECKING:
    import napari

#: Suffix of the objects layer's name and role: ``"<labels layer> objects"``.
OBJECTS = "objects"
SCOPE_PLANE, SCOPE_VOLUME = "plane in view", "whole volume (3-D objects)"
#: Clicking an object row zooms so that the canvas's shorter side spans this many times the
#: object's largest diameter, and at least ``MIN_VIEW_PX`` of the layer's pixels.
ZOOM_SPAN, MIN_VIEW_PX = 6.0, 48.0
TOOLTIPS = {
    "_labels_layer": "the Labels layer to measure: each label value a class (the train dock's predictions, or any)",
    "_image": "optional: the image whose mean intensity each object gets (the one the labels were made from)",
    "_pixel_size": "µm per pixel (square pixels); empty: sizes in pixels. Filled in from the layer's scale",
    "_min_size": "objects of fewer pixels are left out of the objects table (not out of the fractions)",
    "_split": "separate touching round objects (a watershed of the distance transform)",
    "_scope": "a stack: measure the plane in view, or the whole 3-D volume (objects connected across planes)",
    "_export": "write the fractions, objects and summary tables as CSV files",
    "_run": "measure in the background; the viewer stays usable",
}


def pixel_size_of(layer: Optional[Labels]) -> tuple[Optional[float], str]:
    """The pixel size (µm) a Labels layer's scale and unit give, and a note saying where it came
    from or why there is none."""
    if layer is None:
        return None, ""
    scale = np.asarray(layer.scale[-2:], float)
    units = layer.units[-2:]
    if not np.isclose(scale[0], scale[1], rtol=1e-6) or units[0] != units[1]:
        return None, (f"the layer's pixels are not square (scale {scale[0]:g} × {scale[1]:g}): sizes in px "
                      "unless you type µm per pixel")
    unit = units[-1]
    if str(unit) == "pixel":
        if np.isclose(scale[-1], 1.0):
            return None, "no pixel size in the layer: sizes in px"
        return float(scale[-1]), f"from the layer's scale ({scale[-1]:g}; it has no unit: taken as µm)"
    try:
        um = float((scale[-1] * unit).to("micrometer").magnitude)
    except Exception:  # noqa: BLE001 (pint's DimensionalityError: a unit that is not a length)
        return None, f"the layer's unit is {unit}, not a length: sizes in px unless you type µm per pixel"
    return um, f"from the layer's scale: {scale[-1]:g} {unit} = {um:g} µm"


def class_names(layer: Optional[Labels]) -> dict[int, str]:
    """``{label value: name}`` from a Labels layer's ``features`` (a ``name`` column, rows given by
    napari's ``index`` column or in label order); empty when it has none."""
    features = getattr(layer, "features", None)
    if features is None or "name" not in features.columns:
        return {}
    values = features["index"] if "index" in features.columns else range(len(features))
    return {int(v): str(n) for v, n in zip(values, features["name"]) if isinstance(n, str) and n}


class MeasureWidget(WorkerWidget):
    """Dock widget: measure a Labels layer; tables, plots, an objects layer, CSV files."""

    WARM_UP = False  # measuring needs scikit-image and pandas only

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer, "Measure", "Choose a Labels layer (the predictions, say) and click Measure.")
        self.result: Optional[MeasureResult] = None
        self.objects_layer: Optional[Labels] = None
        self._job_layer: Optional[Labels] = None  # the labels layer the running job measures
        self._job_names: dict[int, str] = {}  # its class names
        self._names: dict[int, str] = {}  # the class names of ``result``
        self._measured: Optional[Labels] = None  # the labels layer of ``result``
        self._seen: set = set()  # unique ids of the predictions layers already offered as the default
        self._labels_layer = create_widget(annotation=Labels, label="labels")
        self._image = create_widget(annotation=Image, label="image", options={"nullable": True})
        self._image.value = None
        self._pixel_size = LineEdit(value="", label="pixel size (µm)")
        self._pixel_size.native.setPlaceholderText("empty: sizes in px")
        self._pixel_note = wrap(Label(value=""))
        self._min_size = SpinBox(value=0, min=0, max=1_000_000_000, label="min size (px)")
        self._split = CheckBox(value=False, text="split touching objects")
        self._scope = ComboBox(choices=[SCOPE_PLANE, SCOPE_VOLUME], value=SCOPE_PLANE, label="measure")
        self._export = PushButton(text="Export CSV…", enabled=False)
        self.summary_view, self.summary_model, _ = table(sortable=False)
        self.fractions_view, self.fractions_model, self._fractions_proxy = table()
        self.objects_view, self.objects_model, self._objects_proxy = table()
        self.tables = QTabWidget()
        self.tables.addTab(self.summary_view, "summary")
        self.tables.addTab(self.fractions_view, "fractions")
        self.tables.addTab(self.objects_view, "objects")
        self.tables.setCornerWidget(self._export.native)
        self.fractions_canvas, self.sizes_canvas = canvas(), canvas()
        self.plots = QTabWidget()
        self.plots.addTab(self.fractions_canvas, "fractions plot")
        self.plots.addTab(scrolling(self.sizes_canvas), "sizes plot")
        for name, tip in TOOLTIPS.items():
            getattr(self, name).tooltip = tip
        for menu in (self._labels_layer, self._image):  # a long layer name is elided, never widens the dock
            menu.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            menu.native.setMinimumContentsLength(8)
        self.objects_view.setToolTip("one row per object; click a row to centre the viewer on it")
        self.option_section = Section("options", [self._image, self._min_size, self._split, self._scope],
                               tooltip="intensity image, minimum object size, splitting touching objects")
        self.extend([self._labels_layer, self._pixel_size, self._pixel_note, self.option_section, *self.run_controls])
        self.results = QSplitter(Qt.Orientation.Vertical)  # the dock's spare height; the user moves the split
        self.results.addWidget(self.tables)
        self.results.addWidget(self.plots)
        self.results.setChildrenCollapsible(False)
        self.results.setStretchFactor(0, 2)
        self.results.setStretchFactor(1, 3)
        self.results.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Expanding)
        layout = self.native.widget().layout()
        layout.insertWidget(layout.count() - 1, self.results)  # full width, below the controls
        # no empty tables and blank plots before the first measurement: until then the stretch
        # below keeps the controls at the top; then the results take the dock's spare height
        self.results.setVisible(False)
        self._labels_layer.changed.connect(self._on_labels_changed)
        self._export.changed.connect(self.export_dialog)
        self.objects_view.selectionModel().currentRowChanged.connect(self._on_object_row)
        self.objects_view.clicked.connect(lambda index: self.show_object(self._objects_proxy.mapToSource(index).row()))
        self._offer_new_predictions()
        self._on_labels_changed()
        refuse_multiscale_when_picked(self, [self._labels_layer, self._image], "the measure dock")

    # ---- inputs ------------------------------------------------------------------

    def reset_choices(self, *args) -> None:
        """Refresh the layer menus (napari calls this as layers come and go); a predictions layer
        not offered before becomes the labels to measure."""
        super().reset_choices(*args)
        self._offer_new_predictions()

    def _offer_new_predictions(self) -> None:
        """Choose the topmost predictions layer not offered before, if there is one."""
        new = [lay for lay in results(self._viewer, PREDICTIONS)
               if isinstance(lay, Labels) and lay.unique_id not in self._seen]
        self._seen.update(lay.unique_id for lay in new)
        if new and new[-1] in self._labels_layer.choices:
            self._labels_layer.value = new[-1]

    def _on_labels_changed(self, *_args) -> None:
        """Fill the pixel size in from the new layer's scale and unit, with a note saying where it came
        from (and, for a stack, which plane is measured); the volume choice for a 3-D layer."""
        layer: Optional[Labels] = self._labels_layer.value
        size, note = pixel_size_of(layer)
        self._pixel_size.value = "" if size is None else f"{size:.6g}"
        if layer is not None and layer.ndim > 2:
            note += ("; a stack: the plane in view is measured" +
                     (" (or the whole volume: options)" if self._volume_possible(layer) else ""))
        self._pixel_note.value = note
        self._pixel_note.visible = bool(note)
        self._scope.visible = self._volume_possible(layer)

    @staticmethod
    def _volume_possible(layer: Optional[Labels]) -> bool:
        """A 3-D layer of more than one plane can be measured as a volume."""
        return layer is not None and layer.ndim == 3 and layer.data.shape[0] > 1

    def _parse_pixel_size(self) -> Optional[float]:
        text = str(self._pixel_size.value).strip()
        if not text:
            return None
        try:
            value = float(text.replace(",", "."))
        except ValueError:
            value = float("nan")
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"pixel size {text!r} is not a positive number of µm per pixel: type e.g. 0.0125, "
                             "or leave it empty to measure in px")
        return value

    def _prepare(self):
        layer: Optional[Labels] = self._labels_layer.value
        if layer is None or layer not in self._viewer.layers:
            raise ValueError("no Labels layer to measure: predict with the train dock, or open a label image")
        if layer.multiscale:
            raise ValueError(multiscale_refusal(layer.name, "the measure dock"))
        pixel_size = self._parse_pixel_size()
        volume = self._volume_possible(layer) and self._scope.value == SCOPE_VOLUME
        if volume and not np.allclose(layer.scale[-3:], layer.scale[-1], rtol=1e-6):
            raise ValueError(f"{layer.name!r} has voxels that are not cubes (scale {tuple(layer.scale[-3:])}): "
                             "measure the plane in view, or resample the volume first")
        index = () if layer.ndim == 2 or volume else current_index(self._viewer, layer)
        labels = layer.data[index] if index else layer.data
        if isinstance(labels, np.ndarray):
            labels = labels.copy()  # what was on screen at the click, even if painted on meanwhile
        image = self._image_plane(layer, index)
        self._job_layer, self._job_names = layer, class_names(layer)
        job = MeasureJob(labels, image, pixel_size, int(self._min_size.value), bool(self._split.value), index)
        return run_measure_job, (job,)

    def _image_plane(self, labels: Labels, index: tuple):
        """The image layer's pixels under the labels measured (``None`` without an image layer)."""
        image: Optional[Image] = self._image.value
        if image is None:
            return None
        if image not in self._viewer.layers:
            raise ValueError(f"the image layer {image.name!r} is gone: choose another, or none")
        if image.multiscale:
            raise ValueError(multiscale_refusal(image.name, "the measure dock"))
        if spatial_shape(image) != tuple(labels.data.shape):
            raise ValueError(f"the image layer {image.name!r} has shape {spatial_shape(image)}, the labels "
                             f"{tuple(labels.data.shape)}: choose the image the labels were made from, or none")
        plane = image.data[index] if index else image.data
        return plane.copy() if isinstance(plane, np.ndarray) else plane

    # ---- results -----------------------------------------------------------------

    def _on_result(self, result: MeasureResult) -> None:
        layer = self._measured = self._job_layer
        self._names, self.result = self._job_names, result
        self.results.setVisible(True)
        self._fill_with_last()
        m = result.measurements
        for view, model, frame in ((self.fractions_view, self.fractions_model, m.fractions),
                                   (self.objects_view, self.objects_model, m.objects),
                                   (self.summary_view, self.summary_model, summary_frame(result, self._names))):
            model.set_frame(frame)
            view.resizeColumnsToContents()
        self._export.enabled = True
        fractions_figure(m.fractions, names=self._names, figure=self.fractions_canvas.figure)
        sizes_figure(m.objects, names=self._names, figure=self.sizes_canvas.figure)
        panels = len(self.sizes_canvas.figure.axes)
        self.sizes_canvas.setMinimumHeight(max(PLOT_HEIGHT, PANEL_HEIGHT * panels + 30))
        self.fractions_canvas.draw_idle()
        self.sizes_canvas.draw_idle()
        if layer is not None and layer in self._viewer.layers:
            self.objects_layer = self._write_objects(layer, result)
        self._status.value = report_line(result, layer.name if layer is not None else "the labels")
        self.native.ensureWidgetVisible(self.results, 0, 0)  # the dock scrolls to the results

    def _write_objects(self, labels: Labels, result: MeasureResult) -> Labels:
        """The labels layer's objects layer: each object its id, ``features`` the objects table
        with napari's ``index`` column; in the measured plane only, for a plane of a stack."""
        m = result.measurements
        ids = m.object_ids
        if len(m.objects) == 0 or int(m.objects["id"].max()) < 2**16:
            ids = ids.astype(np.uint16)  # napari draws uint16 labels straight; int32 costs a pass over the image
        lead = len(result.index)
        data = ids.reshape((1,) * lead + ids.shape) if lead else ids
        scale = np.asarray(labels.scale, float)
        translate = np.asarray(labels.translate, float).copy()
        translate[:lead] += np.asarray(result.index, float) * scale[:lead]  # the plane's place in the stack
        kwargs = {"scale": scale, "translate": translate, "opacity": 0.6}
        owner = result_of(labels)
        image = None if owner is None else next(
            (lay for lay in self._viewer.layers if isinstance(lay, Image) and lay.name == owner[1]), None)
        if image is not None:  # a result of an image (its predictions): the image's result layer
            layer = set_result(self._viewer, image, f"{owner[0]} {OBJECTS}", Labels, data, kwargs, above=labels)
        else:
            layer = set_layer(self._viewer, f"{labels.name} {OBJECTS}", Labels, data, kwargs)
            layers = self._viewer.layers
            layers.move(layers.index(layer), layers.index(labels) + 1)
        if not np.array_equal(layer.scale, scale):  # updated in place: each change redraws the layer
            layer.scale = scale
        if not np.array_equal(layer.translate, translate):
            layer.translate = translate
        layer.features = m.objects.assign(index=m.objects["id"].to_numpy())
        layer.visible = True
        return layer

    def _on_object_row(self, current, _previous=None) -> None:
        if current.isValid():
            self.show_object(self._objects_proxy.mapToSource(current).row())

    def show_object(self, row: int) -> None:
        """Centre the viewer on the object of the objects table's ``row`` (the table's own order),
        in world coordinates, show its plane, zoom to it and select it in the objects layer."""
        if self.result is None or self._measured is None or not 0 <= row < len(self.result.measurements.objects):
            return
        obj = self.result.measurements.objects.iloc[row]
        layer = self._measured
        if layer not in self._viewer.layers:
            self._status.value = f"the layer {layer.name!r} measured is gone: measure again"
            return
        centroid = [float(obj[c]) for c in ("centroid_z", "centroid_y", "centroid_x") if c in obj.index]
        point = np.asarray(layer.data_to_world([*self.result.index, *centroid]), float)  # plane index, then y, x
        dims = self._viewer.dims
        first = dims.ndim - layer.ndim  # the layer's axes are the viewer's last ones
        for axis, value in enumerate(point):
            if first + axis not in dims.displayed:
                dims.set_point(first + axis, value)
        shown = [point[a - first] for a in dims.displayed if a >= first]
        self._viewer.scene.camera.center = tuple(shown)
        diameter = float(obj.get("feret_max_px", obj["equivalent_diameter_px"]))
        pixel = float(np.mean(np.abs(layer.scale[-2:])))
        span = max(ZOOM_SPAN * diameter, MIN_VIEW_PX) * pixel
        self._viewer.scene.camera.zoom = float(min(self._viewer.canvas.size)) / span
        if self.objects_layer is not None and self.objects_layer in self._viewer.layers:
            self.objects_layer.selected_label = int(obj["id"])

    # ---- export ------------------------------------------------------------------

    def export_dialog(self, *_args) -> list[Path]:
        """Ask for a file name, then :meth:`export_csv`; returns the files written."""
        if self.result is None:
            self._fail("nothing measured yet: click Measure first")
            return []
        name = self._measured.name if self._measured is not None else "measurements"
        path, _ = QFileDialog.getSaveFileName(self.native, "Export the measurements as CSV files",
                                              str(Path.cwd() / f"{name}.csv"), "CSV files (*.csv)")
        return self.export_csv(path) if path else []

    def export_csv(self, path) -> list[Path]:
        """Write ``<stem>_fractions.csv``, ``<stem>_objects.csv`` and ``<stem>_summary.csv`` beside
        ``path`` (its ``.csv`` suffix dropped): the long tables of
        :func:`~napari_dinoseg.measure.joined` (an ``image`` column, the labels layer's name,
        first) and :func:`~napari_dinoseg.measure.summary_table`. Returns the paths written."""
        from ..atomic import write_atomic

        if self.result is None:
            self._fail("nothing measured yet: click Measure first")
            return []
        path = Path(path)
        stem = path.name[:-4] if path.name.lower().endswith(".csv") else path.name
        name = self._measured.name if self._measured is not None else "image"
        if self.result.index:
            name += f" plane {','.join(map(str, self.result.index))}"
        fractions, objects = joined([self.result.measurements], [name])
        written = []
        try:
            for kind, table in (("fractions", fractions), ("objects", objects), ("summary", self.result.summary)):
                target = path.with_name(f"{stem}_{kind}.csv")
                written.append(write_atomic(target, lambda tmp, t=table: t.to_csv(tmp, index=False)))
        except OSError as err:
            self._fail(f"cannot write {path.parent}: {err}; choose another folder")
            return written
        self._status.value = f"wrote {', '.join(p.name for p in written)} in {path.parent}"
        return written
