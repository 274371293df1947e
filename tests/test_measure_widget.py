"""The "dinoseg: measure" widget in a real viewer, opened from the Plugins menu: tables equal
measure()'s, a row click goes to its object in world coordinates, the objects layer carries the
table as napari features, CSV export round-trips, re-measuring updates in place, stacks are
measured plane by plane, and the dock's ✕ mid-run stops cleanly."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

napari = pytest.importorskip("napari")

from napari.layers import Labels  # noqa: E402
from napari.utils.notifications import notification_manager  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402

from napari_dinoseg._widgets import _measure_job  # noqa: E402
from napari_dinoseg._widgets._layers import add_result  # noqa: E402
from napari_dinoseg._widgets.measure_widget import (MIN_VIEW_PX, SCOPE_VOLUME, ZOOM_SPAN, MeasureWidget,  # noqa: E402
                                                    pixel_size_of)
from napari_dinoseg.measure import joined, measure, summary_table  # noqa: E402
from napari_dinoseg.progress import Cancelled  # noqa: E402


def known_objects() -> np.ndarray:
    """(96, 128) uint8: matrix 1 (one object, touching the border); discs 2 of radius 6, 9 and 4
    (the last cut by the top edge); a 10 x 30 bar 3; an isolated pixel of 2 (gone with min_size 2)."""
    yy, xx = np.mgrid[:96, :128]
    labels = np.ones((96, 128), np.uint8)
    for (cy, cx), r in (((30, 30), 6), ((60, 90), 9), ((1, 70), 4)):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
    labels[70:80, 10:40] = 3
    labels[85, 120] = 2
    return labels


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1280, 800)
    return viewer


def open_measure(viewer, qtbot) -> tuple:
    dock, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: measure")
    dock.show()
    qtbot.waitUntil(dock.isVisible, timeout=5000)
    assert isinstance(widget, MeasureWidget)
    return dock, widget


def measure_and_wait(widget, qtbot) -> None:
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert not widget._status.value.startswith("error"), widget._status.value


def click_row(qtbot, view, row: int) -> None:
    index = view.model().index(row, 0)
    view.scrollTo(index)
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=view.visualRect(index).center())


def test_tables_objects_layer_and_plots_equal_measure(viewer, qtbot):
    labels = known_objects()
    image = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    viewer.add_image(image, name="raw", scale=(0.5, 0.5))
    layer = viewer.add_labels(labels, name="mask", scale=(0.5, 0.5))
    _, widget = open_measure(viewer, qtbot)
    widget._labels_layer.value = layer
    assert widget._pixel_size.value == "0.5" and "scale" in widget._pixel_note.value
    widget._image.value = viewer.layers["raw"]
    measure_and_wait(widget, qtbot)

    expected = measure(labels, image=image, pixel_size=0.5)
    pd.testing.assert_frame_equal(widget.objects_model.frame, expected.objects)
    pd.testing.assert_frame_equal(widget.fractions_model.frame, expected.fractions)
    assert widget.objects_view.model().rowCount() == len(expected.objects) == 6
    assert widget.fractions_view.model().rowCount() == 3
    headers = [widget.objects_model.headerData(c, Qt.Orientation.Horizontal)
               for c in range(widget.objects_model.columnCount())]
    assert "equivalent diameter (µm)" in headers and "area (px²)" in headers and "area (µm²)" in headers
    # the summary: per class, its fraction, objects and median size inside the image, in µm
    assert "6 objects of 3 label values, 0.5 µm per pixel" in widget._status.value
    summary = widget.summary_model.frame.set_index("class")
    inside = expected.objects[(expected.objects["label"] == 2) & ~expected.objects["touches_border"]]
    assert summary.loc["label 2", "objects"] == 4 and summary.loc["label 2", "objects_inside"] == len(inside) == 3
    assert summary.loc["label 2", "median_equivalent_diameter_um"] == inside["equivalent_diameter_um"].median()
    np.testing.assert_allclose(summary["fraction"], expected.fractions["fraction"])
    headers = [widget.summary_model.headerData(c, Qt.Orientation.Horizontal)
               for c in range(widget.summary_model.columnCount())]
    assert headers == ["class", "area fraction", "objects", "inside", "median diam. (µm)"]

    # the objects layer: each object its id, the table as napari features (index = id)
    objects = viewer.layers["mask objects"]
    assert widget.objects_layer == objects  # the widget holds napari's proxy of the plugin's viewer's layer
    assert objects.data.shape == labels.shape, objects.data.shape
    np.testing.assert_array_equal(objects.scale, layer.scale)
    features = objects.features
    np.testing.assert_array_equal(features["index"], expected.objects["id"])
    pd.testing.assert_frame_equal(features.drop(columns="index"), expected.objects)
    for row in expected.objects.itertuples():
        assert (objects.data == row.id).sum() == row.area_px
    assert objects._label_index == {int(i): k for k, i in enumerate(expected.objects["id"])}
    assert viewer.layers.index(objects) == viewer.layers.index(layer) + 1

    # the plots: one fractions axes, a sizes panel per label value with objects
    assert len(widget.fractions_canvas.figure.axes) == 1
    assert len(widget.sizes_canvas.figure.axes) == 3  # labels 1 (the matrix, cut by the border), 2 and 3


def test_clicking_an_object_row_centres_the_viewer_on_it_in_world_coordinates(viewer, qtbot):
    labels = known_objects()
    layer = viewer.add_labels(labels, name="mask", scale=(2.0, 2.0), translate=(100.0, -50.0))
    _, widget = open_measure(viewer, qtbot)
    widget._labels_layer.value = layer
    widget._pixel_size.value = ""  # sizes in px: the centre is still in world coordinates
    measure_and_wait(widget, qtbot)
    table = widget.objects_model.frame
    big = int(table["area_px"].idxmax())
    click_row(qtbot, widget.objects_view, big)
    row = table.iloc[big]
    world = np.array([100.0, -50.0]) + 2.0 * np.array([row.centroid_y, row.centroid_x])
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], world)
    span = max(ZOOM_SPAN * row.feret_max_px, MIN_VIEW_PX) * 2.0
    assert viewer.scene.camera.zoom == pytest.approx(min(viewer.canvas.size) / span)
    assert widget.objects_layer.selected_label == row.id
    # sorted by area (a header click): the first row shown is the smallest object
    column = list(table.columns).index("area_px")
    widget.objects_view.horizontalHeader().sectionClicked.emit(column)
    widget.objects_view.sortByColumn(column, Qt.SortOrder.AscendingOrder)
    click_row(qtbot, widget.objects_view, 0)
    small = table.iloc[int(table["area_px"].idxmin())]
    np.testing.assert_allclose(viewer.scene.camera.center[-2:],
                               np.array([100.0, -50.0]) + 2.0 * np.array([small.centroid_y, small.centroid_x]))


def test_export_writes_csvs_that_pandas_reads_back_equal(viewer, qtbot, tmp_path):
    layer = viewer.add_labels(known_objects(), name="mask")
    _, widget = open_measure(viewer, qtbot)
    widget._labels_layer.value = layer
    widget._pixel_size.value = "0.25"
    measure_and_wait(widget, qtbot)
    written = widget.export_csv(tmp_path / "run.csv")
    assert [p.name for p in written] == ["run_fractions.csv", "run_objects.csv", "run_summary.csv"]
    fractions, objects = joined([measure(known_objects(), pixel_size=0.25)], ["mask"])
    pd.testing.assert_frame_equal(pd.read_csv(written[0]), fractions)
    pd.testing.assert_frame_equal(pd.read_csv(written[1]), objects)
    pd.testing.assert_frame_equal(pd.read_csv(written[2]), summary_table(fractions, objects))
    assert "run_summary.csv" in widget._status.value


def test_a_second_measure_updates_the_layers_in_place(viewer, qtbot):
    layer = viewer.add_labels(known_objects(), name="mask")
    _, widget = open_measure(viewer, qtbot)
    widget._labels_layer.value = layer
    measure_and_wait(widget, qtbot)
    first = viewer.layers["mask objects"]
    count = len(viewer.layers)
    widget._min_size.value = 2  # the one-pixel object goes
    measure_and_wait(widget, qtbot)
    assert len(viewer.layers) == count and viewer.layers["mask objects"] is first
    expected = measure(known_objects(), min_size=2).objects
    assert len(first.features) == len(expected) == 5
    np.testing.assert_array_equal(first.features["index"], expected["id"])
    np.testing.assert_array_equal(first.data, measure(known_objects(), min_size=2).object_ids)


def test_the_newest_predictions_layer_is_measured_and_gets_its_objects_result_layer(viewer, qtbot):
    labels = known_objects()
    image = viewer.add_image(np.zeros(labels.shape, np.uint8), name="img")
    viewer.add_labels(np.zeros(labels.shape, np.uint8), name="img labels")  # brush strokes: not the default
    predictions = add_result(viewer, image, "predictions", Labels(labels))
    _, widget = open_measure(viewer, qtbot)
    assert widget._labels_layer.value is predictions
    measure_and_wait(widget, qtbot)
    objects = viewer.layers["img predictions objects"]
    assert viewer.layers.index(objects) == viewer.layers.index(predictions) + 1
    widget._labels_layer.value = viewer.layers["img labels"]  # the user's choice stays while layers come and go
    other = viewer.add_image(np.zeros(labels.shape, np.uint8), name="other")
    assert widget._labels_layer.value is viewer.layers["img labels"]
    later = add_result(viewer, other, "predictions", Labels(labels[::-1].copy()))
    assert widget._labels_layer.value is later  # until a new predictions layer comes: the one to measure


def test_a_stack_is_measured_in_the_plane_in_view_and_a_row_click_goes_to_that_plane(viewer, qtbot):
    planes = np.stack([np.ones((96, 128), np.uint8), known_objects(), known_objects()[::-1].copy()])
    layer = viewer.add_labels(planes, name="stack", scale=(3.0, 1.0, 1.0))
    _, widget = open_measure(viewer, qtbot)
    widget._labels_layer.value = layer
    assert "the plane in view is measured" in widget._pixel_note.value
    viewer.dims.set_point(0, 6.0)  # world z 6 = plane 2
    measure_and_wait(widget, qtbot)
    expected = measure(planes[2]).objects
    pd.testing.assert_frame_equal(widget.objects_model.frame, expected)
    assert "plane 2 of the stack" in widget._status.value
    objects = viewer.layers["stack objects"]
    assert objects.data.shape == (1, 96, 128) and objects.translate[0] == 6.0
    viewer.dims.set_point(0, 0.0)
    click_row(qtbot, widget.objects_view, 0)
    assert viewer.dims.point[0] == 6.0
    centroid = expected.loc[0, ["centroid_y", "centroid_x"]].to_numpy(float)
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], centroid)
    # the whole volume: refused for voxels that are not cubes, measured as 3-D objects otherwise
    widget._scope.value = SCOPE_VOLUME
    widget._run.native.click()
    assert widget.worker is None and "not cubes" in widget._status.value
    layer.scale = (1.0, 1.0, 1.0)
    measure_and_wait(widget, qtbot)
    pd.testing.assert_frame_equal(widget.objects_model.frame, measure(planes).objects)
    assert viewer.layers["stack objects"].data.shape == planes.shape


def test_pixel_size_from_the_layers_scale_and_unit_and_refusals(viewer, qtbot):
    data = np.ones((8, 8), np.uint8)
    assert pixel_size_of(Labels(data, scale=(5, 5), units=("nm", "nm")))[0] == pytest.approx(0.005)
    size, note = pixel_size_of(Labels(data))
    assert size is None and "px" in note
    size, note = pixel_size_of(Labels(data, scale=(1, 2)))
    assert size is None and "not square" in note
    size, note = pixel_size_of(Labels(data, scale=(2, 2), units=("s", "s")))
    assert size is None and "second" in note and "not a length" in note
    layer = viewer.add_labels(known_objects(), name="mask")
    _, widget = open_measure(viewer, qtbot)
    widget._labels_layer.value = layer
    assert widget._pixel_size.value == ""
    widget._pixel_size.value = "abc"
    widget._run.native.click()
    assert widget.worker is None and "'abc' is not a positive number" in widget._status.value
    widget._pixel_size.value = ""
    viewer.add_image(np.zeros((10, 10), np.uint8), name="small")
    widget._image.value = viewer.layers["small"]
    widget._run.native.click()
    assert widget.worker is None and "choose the image the labels were made from" in widget._status.value


def test_the_docks_close_button_mid_run_stops_cleanly(viewer, qtbot, monkeypatch):
    gate, threads = threading.Event(), []
    real = _measure_job.measure

    def slow_measure(*args, **kwargs):
        threads.append(threading.current_thread())
        assert gate.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(_measure_job, "measure", slow_measure)
    viewer.add_labels(known_objects(), name="mask")
    dock, widget = open_measure(viewer, qtbot)
    widget._labels_layer.value = viewer.layers["mask"]
    before = len(notification_manager.records)
    worker = widget.run()
    errors = []
    worker.errored.connect(errors.append)
    qtbot.waitUntil(lambda: bool(threads), timeout=10_000)
    assert threads[0] is not threading.main_thread()  # measured in a worker: the GUI goes on
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        dock.title.close_button.click()
        gate.set()
    assert [type(e) for e in errors] == [Cancelled]
    assert "mask objects" not in viewer.layers and widget.result is None
    assert not [n for n in notification_manager.records[before:] if "error" in str(n.severity).lower()]


def test_a_fresh_dock_beside_an_image_alone_names_its_fields_and_shows_no_empty_results(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QLabel

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.uint8), name="img")  # no Labels layer yet: an empty layer menu
    _, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: measure")
    shown = {label.text() for label in widget.native.findChildren(QLabel) if not label.isHidden()}
    assert {"labels", "pixel size (µm)"} <= shown
    assert widget.results.isHidden()
    viewer.add_labels(known_objects(), name="mask")
    widget._labels_layer.value = viewer.layers["mask"]
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert not widget.results.isHidden() and widget.objects_model.rowCount() > 0
