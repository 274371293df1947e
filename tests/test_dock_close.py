"""Closing a dock (its ✕) or hiding it (its hide button) stops its running job, for every dock
widget; a dock only tabbed behind another keeps working. Real viewer, docks opened from the
Plugins menu, real worker threads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_dinoseg.progress import Cancelled  # noqa: E402

DOCKS = ["dinoseg: train", "dinoseg: unsupervised", "dinoseg: apply to folder", "dinoseg: find similar (click)",
         "dinoseg: match two images", "dinoseg: measure"]


class EndlessJob:
    """A job that reports progress every 10 ms for a minute, recording how it ended."""

    def __init__(self) -> None:
        self.started, self.cancelled, self.finished = threading.Event(), threading.Event(), threading.Event()

    def __call__(self, progress=None, announce=None):
        self.started.set()
        try:
            for i in range(6000):
                progress(i, 6000, "working")
                time.sleep(0.01)
        except Cancelled:
            self.cancelled.set()
            raise
        self.finished.set()
        return None


def start(viewer, name, qtbot):
    dock, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", name)
    dock.show()
    dock.raise_()
    qtbot.waitUntil(dock.isVisible, timeout=5000)
    job = EndlessJob()
    widget._prepare = lambda: (job, ())
    widget._on_result = lambda result: pytest.fail("a closed dock wrote a result")
    assert widget.run() is not None
    assert job.started.wait(10)
    return dock, widget, job


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1280, 800)
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    return viewer


@pytest.mark.parametrize("name", DOCKS)
def test_the_docks_close_button_stops_its_job(viewer, qtbot, name):
    dock, widget, job = start(viewer, name, qtbot)
    dock.title.close_button.click()
    assert name not in viewer.window._wrapped_dock_widgets
    qtbot.waitUntil(job.cancelled.is_set, timeout=5000)
    assert not job.finished.is_set()


@pytest.mark.parametrize("name", DOCKS)
def test_the_docks_hide_button_stops_its_job_and_the_dock_works_again(viewer, qtbot, name):
    dock, widget, job = start(viewer, name, qtbot)
    dock.title.hide_button.click()
    qtbot.waitUntil(job.cancelled.is_set, timeout=5000)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=5000)
    assert "the dock was hidden" in widget._status.value
    dock.show()  # shown again from the Window menu: Run works
    again = EndlessJob()
    widget._prepare = lambda: (again, ())
    assert widget.run() is not None and again.started.wait(10)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=5000)


def test_a_dock_tabbed_behind_another_keeps_its_job(viewer, qtbot):
    dock, widget, job = start(viewer, "dinoseg: train", qtbot)
    other, _ = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: unsupervised")
    viewer.window._qt_window.tabifyDockWidget(dock, other)
    other.raise_()  # the train dock is now behind the unsupervised one's tab
    qtbot.wait(300)
    assert not job.cancelled.is_set() and widget.worker is not None
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=5000)


def test_a_hidden_train_dock_starts_no_live_update(viewer, qtbot, phases):
    image, _, scribbles = phases
    viewer.layers["img"].data = image
    dock, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: train")
    dock.show()
    qtbot.waitUntil(dock.isVisible, timeout=5000)
    labels = widget.new_labels_layer()
    widget._live.value = True
    dock.title.hide_button.click()
    assert widget.hidden
    labels.data = scribbles  # strokes replaced while the dock is hidden
    qtbot.wait(400)  # the live update's delay has passed
    assert widget.worker is None and widget.predictions is None
    dock.show()
    assert not widget.hidden
    labels.data = scribbles.copy()  # shown again: strokes update the prediction
    qtbot.waitUntil(lambda: widget.predictions is not None and widget.worker is None, timeout=120_000)
