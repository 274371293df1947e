"""Results are written where the user sees them: each result layer belongs to one image, is named
after it, sits directly above that image's brush labels (or the image) each time it is written,
is shown, and comes to the top with its image when another image would cover it. Real viewer,
real workers, and a rendered screenshot to check what the canvas shows."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import iou

napari = pytest.importorskip("napari")

from napari_dinoseg._widgets._feature_controls import SHARED_CACHE  # noqa: E402
from napari_dinoseg._widgets._layers import results, strokes_of  # noqa: E402
from napari_dinoseg._widgets.train_widget import PREDICTIONS, TRAIN_ALL  # noqa: E402
from napari_dinoseg._widgets.unsupervised_widget import (  # noqa: E402
    CAS_LAYER, FOREGROUND_LAYER, MODE_PARTS, PARTS_LAYER,
)

TIMEOUT_MS = 120_000


def run(qtbot, widget):
    widget._run.native.click()
    if widget.worker is not None:
        qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def coloured_fraction(viewer) -> float:
    """Fraction of the rendered canvas in colour (the micrographs are grey; labels are coloured)."""
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    shot = viewer.screenshot(canvas_only=True, flash=False).astype(int)[..., :3]
    return float(np.mean(shot.max(axis=-1) - shot.min(axis=-1) > 40))


@pytest.fixture
def docked(make_napari_viewer):
    """``docked(image, name, dock) -> (viewer, widget, layer)``: a shown 1280x800 viewer holding
    ``image`` as layer ``name``, with the dock opened from the Plugins menu."""

    def make(image, name, dock):
        SHARED_CACHE.clear()
        viewer = make_napari_viewer(show=True)
        viewer.window.resize(1280, 800)
        layer = viewer.add_image(image, name=name)
        _, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", dock)
        return viewer, widget, layer

    return make


@pytest.fixture
def two_images(docked, phases):
    """A viewer with two opaque micrographs at the same place, the second opened on top, each
    painted in its own labels layer, and the train widget docked."""
    image, truth, scribbles = phases
    viewer, widget, first = docked(image, "first", "dinoseg: train")
    widget.new_labels_layer().data[:] = scribbles
    second = viewer.add_image(np.roll(image, 40, axis=1), name="second")
    widget._image.value = second
    widget.new_labels_layer().data[:] = np.roll(scribbles, 40, axis=1)
    viewer.layers.move(viewer.layers.index(second), len(viewer.layers))  # as opened: on top of everything
    widget._train_on.value = TRAIN_ALL
    return viewer, widget, first, second, truth


def test_each_image_gets_its_own_visible_predictions(two_images, qtbot):
    viewer, widget, first, second, truth = two_images
    assert coloured_fraction(viewer) < 0.01  # the second image covers everything: grey
    run(qtbot, widget)  # predict the image opened second
    pred = widget.predictions
    assert pred.name == "second predictions" and pred.visible
    layers = viewer.layers
    assert layers.index(pred) == layers.index(strokes_of(viewer, second)) + 1  # directly above its labels
    assert coloured_fraction(viewer) > 0.5, widget._status.value  # and the canvas shows it
    assert "of 'second'" in widget._status.value

    widget._image.value = first  # the first image lies under the second one: its results come up with it
    run(qtbot, widget)
    assert [lay.name for lay in results(viewer, PREDICTIONS)] == ["second predictions", "first predictions"]
    pred_first = widget.predictions
    assert pred_first.name == "first predictions"
    own = [first, strokes_of(viewer, first), pred_first]
    assert [layers.index(lay) for lay in own] == list(range(len(layers) - 3, len(layers)))  # together, on top
    assert iou(pred_first.data, truth, 3) > 0.8
    shot = coloured_fraction(viewer)
    assert shot > 0.5

    # a prediction moved away by the user comes back above its labels when written again
    layers.move(layers.index(pred_first), 0)
    run(qtbot, widget)
    assert layers.index(pred_first) == layers.index(strokes_of(viewer, first)) + 1 and pred_first.visible


def test_a_loaded_classifier_on_a_newly_opened_image_shows_its_prediction(two_images, qtbot, tmp_path):
    viewer, widget, first, second, truth = two_images
    widget._train_on.value = "this image"
    widget._image.value, widget._labels_layer.value = first, strokes_of(viewer, first)
    run(qtbot, widget)
    widget._bundle_file.value = str(tmp_path / "model")
    assert widget.save_classifier()
    new = viewer.add_image(np.asarray(first.data)[::-1], name="new")  # opened after: on top, no labels
    widget._bundle_file.value = str(tmp_path / "model")
    assert widget.load_classifier()
    widget._image.value = new  # the labels combo still shows the first image's strokes
    run(qtbot, widget)
    pred = widget.predictions
    assert widget.last_result.trained_on == [] and "using the loaded classifier" in widget._status.value
    assert pred.name == "new predictions" and viewer.layers.index(pred) > viewer.layers.index(new)
    assert iou(pred.data, truth[::-1], 1) > 0.8 and coloured_fraction(viewer) > 0.5


def test_find_similar_on_another_image_shows_its_map_over_that_image(docked, qtbot, phases):
    image, truth, _ = phases
    viewer, widget, _ = docked(image, "clicked", "dinoseg: find similar (click)")
    widget.features.use("classical")
    points = widget.add_points_layer()
    points.add(np.argwhere(truth == 3)[::400][:4].astype(float))
    searched = viewer.add_image(image[::-1], name="searched")  # on top
    widget._image.value, widget._clicked_on.value, widget._points.value = searched, viewer.layers["clicked"], points
    run(qtbot, widget)
    sim, mask = viewer.layers["searched similarity"], viewer.layers["searched similar"]
    layers = viewer.layers
    assert layers.index(searched) < layers.index(sim) < layers.index(mask) and sim.visible and mask.visible
    assert "clicked similarity" not in layers
    assert coloured_fraction(viewer) > 0.05


def test_parts_mode_hides_the_previous_cas_layers_of_that_image(docked, qtbot, phases):
    viewer, widget, layer = docked(phases[0], "img", "dinoseg: unsupervised")
    widget.features.use("classical")
    run(qtbot, widget)
    cas, fg = viewer.layers[f"img {CAS_LAYER}"], viewer.layers[f"img {FOREGROUND_LAYER}"]
    assert viewer.layers.index(layer) + 1 == viewer.layers.index(cas) < viewer.layers.index(fg)
    widget._mode.value = MODE_PARTS
    run(qtbot, widget)
    parts = viewer.layers[f"img {PARTS_LAYER}"]
    assert parts.visible and not cas.visible and not fg.visible, widget._status.value
    assert "hid 'img CAS labels', 'img foreground'" in widget._status.value
    widget._mode.value = "classes (CAS)"
    run(qtbot, widget)
    assert cas.visible and not parts.visible


def test_the_plane_in_view_is_each_layers_own_when_their_slices_are_spaced_differently(make_napari_viewer):
    from napari_dinoseg._widgets._layers import current_index

    viewer = make_napari_viewer()
    fine = viewer.add_image(np.zeros((10, 8, 8), np.uint8), name="1 µm slices")
    coarse = viewer.add_labels(np.zeros((5, 8, 8), np.uint8), name="2 µm slices", scale=(2, 1, 1))
    rgb = viewer.add_image(np.zeros((10, 8, 8, 3), np.uint8), name="colour", rgb=True)
    flat = viewer.add_image(np.zeros((8, 8), np.uint8), name="a plane")
    viewer.dims.set_point(0, 6)  # world z = 6 µm
    assert current_index(viewer, fine) == (6,)
    assert current_index(viewer, coarse) == (3,)
    assert current_index(viewer, rgb) == (6,)
    assert current_index(viewer, flat) == ()
    viewer.dims.set_point(0, 9)
    assert current_index(viewer, coarse) == (4,)  # clipped to the layer's last slice
