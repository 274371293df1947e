"""What a new user meets in the first hour, in a real viewer with the docks opened from the
Plugins menu: three docks fit a 1280x800 window, long messages are never cut, the classifier
file field saves and loads as typed, a pyramid is refused before painting, and the DINOv2 plan
line follows the weights field."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari.utils.notifications import notification_manager  # noqa: E402
from qtpy.QtCore import QPoint  # noqa: E402

from napari_dinoseg._widgets._feature_controls import SHARED_CACHE  # noqa: E402
from napari_dinoseg._widgets._sections import Section, controls  # noqa: E402

THREE = ["dinoseg: train", "dinoseg: apply to folder", "dinoseg: unsupervised"]


@pytest.fixture
def viewer(make_napari_viewer):
    SHARED_CACHE.clear()
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1280, 800)
    return viewer


def open_dock(viewer, qtbot, name):
    dock, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", name)
    dock.show()
    qtbot.waitUntil(dock.isVisible, timeout=5000)
    return dock, widget


def test_train_apply_and_unsupervised_docked_at_once_fit_1280_by_800(viewer, qtbot):
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    docks = [open_dock(viewer, qtbot, name)[0] for name in THREE]
    # they share the height, each in proportion to its controls (napari alone leaves two at ~90 px)
    qtbot.waitUntil(lambda: min(d.height() for d in docks) >= 180, timeout=5000)
    window = viewer.window._qt_window
    assert window.minimumSizeHint().height() <= 800 and window.height() <= 800
    for dock in docks:
        assert dock.isVisible() and dock.height() >= 60
        assert dock.widget().minimumSizeHint().height() <= 150  # the dock scrolls instead of growing
        assert dock.geometry().bottom() <= window.height()


def test_three_docks_at_1280_by_800_need_no_sideways_scrolling(viewer, qtbot):
    """Every control of each dock fits the dock's width (the apply dock's measure option once made
    its buttons run off the right edge), and a two-line status shows whole, with no scroll bar."""
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    widgets = [open_dock(viewer, qtbot, name)[1] for name in THREE]
    qtbot.wait(100)
    for widget in widgets:
        inner = widget.native.widget() if hasattr(widget.native, "widget") else widget.native
        assert inner.minimumSizeHint().width() <= widget.native.viewport().width(), type(widget).__name__
        area = widget._status.native
        qtbot.waitUntil(lambda area=area: area.verticalScrollBar().maximum() == 0, timeout=2000)
        assert area.document().size().height() <= area.viewport().height()


def test_the_train_docks_everyday_controls_show_without_scrolling(viewer, qtbot):
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    dock, widget = open_dock(viewer, qtbot, "dinoseg: train")
    viewport = widget.native.viewport()
    for control in (widget._image, widget._new_labels, widget.features.kind, widget._run, widget._status):
        corner = control.native.mapTo(viewport, QPoint(0, control.native.height()))
        assert viewport.rect().contains(corner), control
    folded = [w for w in widget if isinstance(w, Section)]
    assert [s.fold.text() for s in folded] == ["feature details", "classifier details",
                                               "classifier file (save / load)"]
    assert not any(s.expanded for s in folded)
    assert widget._crf in list(controls(widget)) and widget._bundle_file in list(controls(widget))


def test_a_long_status_message_wraps_and_is_never_cut(viewer, qtbot):
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    _, widget = open_dock(viewer, qtbot, "dinoseg: train")
    message = ("cannot run: no dinov2_vits14 weights here, and offline. Put dinov2_vits14_pretrain.pth in "
               "~/.cache/napari-dinoseg/weights or type the path of a checkpoint file in the 'weights' field "
               "(under 'feature details'); super_spot1_0d_0.tif and super_spot2_0d_0.tif ") * 3
    widget._status.value = message
    qtbot.wait(50)
    area = widget._status.native
    assert area.isReadOnly() and area.toPlainText() == message  # all of it, underscores included
    assert area.horizontalScrollBar().maximum() == 0  # wrapped at the dock's width
    bar = area.verticalScrollBar()
    assert bar.maximum() > 0  # longer than the area: it scrolls, nothing is cut
    bar.setValue(bar.maximum())
    assert area.cursorForPosition(area.viewport().rect().bottomLeft()).block().isValid()


def test_save_refuses_an_empty_field_shows_the_path_written_and_load_takes_the_name_without_suffix(
        viewer, qtbot, phases, tmp_path):
    image, _, scribbles = phases
    viewer.add_image(image, name="img")
    _, widget = open_dock(viewer, qtbot, "dinoseg: train")
    widget.new_labels_layer().data[:] = scribbles
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    start = len(notification_manager.records)
    assert widget.save_classifier() is None  # the field's default: empty
    notes = [str(n.message) for n in notification_manager.records[start:]]
    assert any("no classifier file: type a file name" in n for n in notes), notes
    widget._bundle_file.value = tmp_path  # a folder
    assert widget.save_classifier() is None and "is a folder" in widget._status.value

    widget._bundle_file.value = tmp_path / "cells"
    written = widget.save_classifier()
    assert written == str(tmp_path / "cells.dinoseg") and (tmp_path / "cells.dinoseg").is_file()
    assert str(widget._bundle_file.value) == written  # the field shows the path written

    _, other = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: train", tabify=True)
    for typed in (tmp_path / "cells", tmp_path / "cells.dinoseg"):
        other._bundle_file.value = typed
        assert other.load_classifier(), other._status.value
        assert str(other._bundle_file.value) == written and other._loaded_name == "cells.dinoseg"
    other._bundle_file.line_edit.value = ""
    assert not other.load_classifier() and "no classifier file" in other._status.value


def test_the_dinov2_plan_line_follows_the_weights_field_as_typed(viewer, qtbot, no_weights, tmp_path):
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    _, widget = open_dock(viewer, qtbot, "dinoseg: train")
    widget.features.kind.value = "vit"
    assert widget.features.plan.value.startswith("cannot run")
    assert widget.features.details.expanded  # the weights field the plan points to is in view
    field = widget.features.weights.native
    qtbot.keyClicks(field, "random")  # typed, no Enter, focus kept
    qtbot.waitUntil(lambda: not widget.features.plan.value.startswith("cannot run"), timeout=3000)
    field.clear()
    qtbot.keyClicks(field, str(tmp_path / "missing.pth"))
    qtbot.waitUntil(lambda: widget.features.plan.value.startswith("cannot run"), timeout=3000)
