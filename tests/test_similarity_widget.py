"""The "find similar (click)" widget in a real napari viewer (run under Xvfb), classical features.

Every test runs as on a machine without DINOv2 weights and offline, so the widget opens on
classical features.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import planted_texture, roc_auc

napari = pytest.importorskip("napari")

from napari.layers import Points  # noqa: E402
from napari.utils.notifications import notification_manager  # noqa: E402

from napari_dinoseg._widgets._feature_controls import SHARED_CACHE
from napari_dinoseg._widgets._sections import controls  # noqa: E402
from napari_dinoseg._widgets.similarity_widget import (  # noqa: E402
    DEFAULT_THRESHOLD, MASK_LAYER, POINTS_LAYER, SIMILARITY_LAYER, SimilarityWidget,
)
from napari_dinoseg.similarity import similar_mask  # noqa: E402

DISPLAY_NAME = "dinoseg: find similar (click)"
pytestmark = pytest.mark.usefixtures("no_weights")
CENTRES_A = [(30, 30), (30, 96), (96, 40), (100, 100)]
CENTRES_B = [(20, 60), (70, 25), (90, 95)]


@pytest.fixture
def notes():
    start = len(notification_manager.records)
    return lambda: [str(n.message) for n in notification_manager.records[start:]]


@pytest.fixture
def dock(make_napari_viewer):
    """``dock(image, **image_kwargs) -> (viewer, widget)``: the widget opened as the Plugins menu opens it."""

    def make(image, **kwargs):
        SHARED_CACHE.clear()
        viewer = make_napari_viewer()
        viewer.add_image(image, name="img", **kwargs)
        _, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", DISPLAY_NAME)
        assert isinstance(widget, SimilarityWidget)
        return viewer, widget

    return make


def compute(qtbot, widget):
    widget._run.native.click()
    if widget.worker is not None:
        qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)


def test_click_compute_threshold_and_click_again(dock, qtbot):
    image, discs = planted_texture(0, 128, CENTRES_A, 14)
    viewer, widget = dock(image)
    assert widget.features.kind.value == "classical" and not widget._weights_note.native.isHidden()
    assert "dinov2_vits14_pretrain.pth" in widget._weights_note.value
    assert widget.add_points_layer().name == POINTS_LAYER
    clicks = viewer.layers[POINTS_LAYER]  # the widget sees the viewer through napari's plugin proxy
    assert clicks.mode == "add" and clicks.ndim == 2 and len(clicks.data) == 0
    assert widget._points.value is clicks and viewer.layers.selection.active is clicks
    widget.add_points_layer()
    assert len(viewer.layers) == 2 and widget._points.value is clicks  # selected again, not added twice
    clicks.add([30, 30])

    compute(qtbot, widget)
    sim = viewer.layers[f"img {SIMILARITY_LAYER}"]
    assert sim.data.shape == image.shape and sim.data.dtype == np.float32, widget._status.value
    assert sim.colormap.name == "magma" and tuple(sim.contrast_limits) == (0.0, 1.0)
    keep = np.ones_like(discs)
    keep[:48, :48] = False  # the clicked disc's quadrant
    assert roc_auc(sim.data[keep], discs[keep]) > 0.92
    assert sim.data[30, 30] == pytest.approx(1.0, abs=1e-5)
    mask = viewer.layers[f"img {MASK_LAYER}"]
    np.testing.assert_array_equal(mask.data, similar_mask(sim.data, DEFAULT_THRESHOLD))
    assert viewer.layers[-1] is clicks  # the clicks stay on top, ready for more
    assert widget.result.featurised == 1 and SHARED_CACHE.misses == 1

    before, calls = mask.data.copy(), (SHARED_CACHE.hits, SHARED_CACHE.misses)
    widget._threshold.value = 0.6  # the slider: the mask at once, no worker, no features
    assert widget.worker is None and (SHARED_CACHE.hits, SHARED_CACHE.misses) == calls
    assert viewer.layers[f"img {MASK_LAYER}"].data.sum() < before.sum()
    np.testing.assert_array_equal(viewer.layers[f"img {MASK_LAYER}"].data, sim.data >= 0.6)
    assert "at least 0.60 similar" in widget._status.value

    clicks.add([[96, 40], [100, 100]])  # more clicks: the features come from the cache
    compute(qtbot, widget)
    assert widget.result.n_points == 3 and widget.result.featurised == 0 and widget.result.reused == 1
    assert SHARED_CACHE.misses == 1 and viewer.layers[f"img {SIMILARITY_LAYER}"] is sim
    assert not np.allclose(sim.data, before)
    assert "1 from the cache" in widget._status.value


def test_stack_gets_a_map_per_slice_from_points_on_one_slice(dock, qtbot):
    a, discs_a = planted_texture(0, 128, CENTRES_A, 14)
    b, discs_b = planted_texture(1, 128, CENTRES_B, 12)
    viewer, widget = dock(np.stack([a, b]), scale=(1, 0.5, 0.5))
    # a points layer of the viewer's own (scale 1), as napari's "new points" button makes it:
    # world (1, 10, 30) is slice 1, pixel (20, 60) of the image, the centre of a disc of b
    clicks = viewer.add_points(np.array([[1.0, 10.0, 30.0]]), name="mine")
    widget._points.value = clicks
    compute(qtbot, widget)
    maps = viewer.layers[f"img {SIMILARITY_LAYER}"].data
    assert maps.shape == (2, 128, 128) and widget.result.featurised == 2, widget._status.value
    assert maps[1, 20, 60] == pytest.approx(1.0, abs=1e-5)
    assert roc_auc(maps[0], discs_a) > 0.9 and roc_auc(maps[1], discs_b) > 0.9
    assert tuple(viewer.layers[f"img {SIMILARITY_LAYER}"].scale) == (1, 0.5, 0.5)
    assert viewer.layers[f"img {MASK_LAYER}"].data.shape == (2, 128, 128)
    assert "2 slice(s) from 1 point(s)" in widget._status.value


def test_bad_clicks_are_refused_with_a_message(dock, qtbot, notes):
    image, _ = planted_texture(0, 128, CENTRES_A, 14)
    viewer, widget = dock(image)
    assert widget._points.value is None
    compute(qtbot, widget)
    assert any("no points layer" in n for n in notes())
    widget.add_points_layer()
    clicks = viewer.layers[POINTS_LAYER]
    compute(qtbot, widget)
    assert any("no points in 'clicks'" in n for n in notes())
    clicks.add([200, 10])
    compute(qtbot, widget)
    assert any("point (200, 10) of 'clicks' is outside image 'img' (128x128 px)" in n for n in notes())
    wrong = viewer.add_points(np.array([[0, 5, 5]]), name="3d")
    widget._points.value = wrong
    compute(qtbot, widget)
    assert any("has 3 dimensions but image 'img' has 2" in n for n in notes())
    assert f"img {SIMILARITY_LAYER}" not in viewer.layers and widget.result is None and SHARED_CACHE.misses == 0
    assert widget.update_mask() is None  # the slider before any Compute: nothing happens


def test_every_control_has_a_tooltip(dock):
    from magicgui.widgets.bases import ButtonWidget

    _, widget = dock(np.zeros((64, 64), np.uint8))
    for control in controls(widget):
        if not control.native.isHidden():
            assert control.tooltip, control
            text = control.text if isinstance(control, ButtonWidget) else control.label
            assert text or control in (widget._status, widget._weights_note, widget.features.plan), control


def test_points_layer_choice_follows_the_viewer(dock):
    viewer, widget = dock(np.zeros((64, 64), np.uint8))
    layer = viewer.add_points(np.empty((0, 2)), name="p")
    assert isinstance(widget._points.value, Points) and widget._points.value is layer


def test_with_weights_dinov2_is_the_default(make_napari_viewer, no_weights):
    (no_weights / "dinov2_vits14_pretrain.pth").write_bytes(b"")  # found, not loaded
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", DISPLAY_NAME)
    assert widget.features.kind.value == "vit" and widget._weights_note.native.isHidden()


def test_random_weights_vit_mechanics(dock, qtbot):
    """The ViT path end to end with RANDOM weights: shapes and range only, not DINOv2's quality."""
    image, _ = planted_texture(0, 126, CENTRES_A, 14)
    viewer, widget = dock(image)
    widget.features.use("vit", weights="random", views="one view", stride=14, device="cpu")
    widget.add_points_layer()
    viewer.layers[POINTS_LAYER].add([30, 30])
    compute(qtbot, widget)
    maps = viewer.layers[f"img {SIMILARITY_LAYER}"].data
    assert maps.shape == image.shape and maps.dtype == np.float32, widget._status.value
    assert np.all(np.isfinite(maps)) and -1 <= maps.min() and maps.max() <= 1
    assert maps[30, 30] == pytest.approx(1.0, abs=1e-5)


def test_points_clicked_on_one_image_find_the_texture_in_another(dock, qtbot):
    """"clicked on" A, search B: the clicked slice of A is the reference and B is mapped."""
    image_a, _ = planted_texture(0, 128, CENTRES_A, 14)
    image_b, discs_b = planted_texture(1, 128, CENTRES_B, 14)
    viewer, widget = dock(image_a)
    layer_b = viewer.add_image(image_b, name="second")
    clicks = widget.add_points_layer()
    viewer.layers[POINTS_LAYER].add([[30, 30], [96, 40]])
    widget._image.value = viewer.layers["second"]
    widget._clicked_on.value = viewer.layers["img"]
    compute(qtbot, widget)
    assert f"img {SIMILARITY_LAYER}" not in viewer.layers  # the map is the searched image's
    sim_layer = viewer.layers[f"second {SIMILARITY_LAYER}"]
    assert viewer.layers.index(sim_layer) > viewer.layers.index(layer_b) and sim_layer.visible  # over it, shown
    sim = sim_layer.data
    assert sim.shape == image_b.shape, widget._status.value
    assert roc_auc(sim, discs_b) > 0.9
    assert widget.result.featurised == 2 and widget.result.n_points == 2  # A's clicked slice, then B
    assert clicks is not None and layer_b.name == "second"

    rgb = viewer.add_image(np.stack([image_b] * 3, axis=-1), name="rgb", rgb=True)
    widget._image.value = rgb  # a colour image searched with clicks on a greyscale one: refused
    start = len(notification_manager.records)
    widget._run.native.click()
    assert widget.worker is None
    assert any("differ in colour" in str(n.message) for n in notification_manager.records[start:])
