"""The "match two images" widget in a real napari viewer (run under Xvfb), classical features
(no DINOv2 weights on the test machines)."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari.layers import Points  # noqa: E402

from napari_dinoseg._widgets._feature_controls import SHARED_CACHE  # noqa: E402
from napari_dinoseg._widgets.match_widget import MatchWidget, pair_colours, viewer_grid  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_weights")
SHIFT = (16, 24)  # a multiple of the 8 px cells of classical features


def textured(seed: int, shape=(128, 160)) -> np.ndarray:
    """Blobs of several sizes and contrasts: every neighbourhood looks different."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    image = sum(ndimage.gaussian_filter(rng.normal(size=shape), s) * s for s in (1, 3, 8))
    return ((image - image.min()) / np.ptp(image) * 255).astype(np.uint8)


def test_match_an_image_with_a_shifted_copy(make_napari_viewer, qtbot):
    SHARED_CACHE.clear()
    base = textured(0, (128 + SHIFT[0], 160 + SHIFT[1]))
    image_a, image_b = base[SHIFT[0]:, SHIFT[1]:], base[:128, :160]  # a pixel of A is SHIFT further in B
    viewer = make_napari_viewer()
    viewer.add_image(image_a, name="A")
    viewer.add_image(image_b, name="B", translate=(0, 200))
    _, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: match two images")
    assert isinstance(widget, MatchWidget)
    assert widget._image_a.value.name == "A" and widget._image_b.value.name == "B"  # two images by default
    assert widget.features.kind.value == "classical" and "pretrain.pth" in widget._weights_note.value
    widget._n.value = 20
    widget._run.native.click()
    if widget.worker is not None:
        qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    a, b = viewer.layers["matches in A"], viewer.layers["matches in B"]
    assert isinstance(a, Points) and isinstance(b, Points), widget._status.value
    m = len(a.data)
    assert 1 <= m <= 20 and len(b.data) == m and f"{m} corresponding pairs" in widget._status.value
    np.testing.assert_array_equal(a.face_color, b.face_color)  # pair i: one colour in both
    np.testing.assert_array_equal(a.features["pair"], np.arange(m))
    assert len({tuple(c) for c in a.face_color}) == m
    exact = np.all(b.data - a.data == SHIFT, axis=1)
    assert exact.mean() >= 0.8, (b.data - a.data)
    assert tuple(b.translate) == (0, 200)  # each layer over its image
    assert viewer_grid(viewer).enabled and viewer_grid(viewer).stride == 2
    assert [layer.name for layer in viewer.layers][-4:] == ["A", "matches in A", "B", "matches in B"]


def visible_world(viewer) -> np.ndarray:
    """``(2, 2)`` float: the world (row, col) of the top-left and bottom-right corners of what one
    grid viewbox shows (in grid mode all viewboxes share one camera, so each shows this region)."""
    rows_cols = np.asarray(viewer.canvas.viewbox_size(viewer.layers), float)  # (height, width) pixels
    centre = np.asarray(viewer.scene.camera.center[-2:], float)
    half = rows_cols / 2 / viewer.scene.camera.zoom
    return np.array([centre - half, centre + half])


def test_side_by_side_fits_both_images_in_their_viewboxes(make_napari_viewer, qtbot):
    """Grid mode halves each viewbox: without refitting, half of each image was off screen."""
    SHARED_CACHE.clear()
    viewer = make_napari_viewer()
    viewer.window.resize(1280, 800)
    viewer.add_image(textured(2, (300, 360)), name="A")
    viewer.add_image(textured(3, (272, 318)), name="B")
    viewer.reset_view()  # fitted to the whole canvas before the grid exists, as a user would have it
    _, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: match two images")
    widget._n.value = 5
    widget._run.native.click()
    if widget.worker is not None:
        qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert viewer_grid(viewer).enabled and viewer.canvas.grid.actual_shape(viewer.layers) == (1, 2)
    lo, hi = visible_world(viewer)
    for name in ("A", "B"):
        extent = viewer.layers[name].extent.world[:, -2:]  # pixel centres at 0 .. n - 1
        assert np.all(lo <= extent[0] - 0.5) and np.all(extent[1] + 0.5 <= hi), (name, extent, lo, hi)
    # and fitted, not merely zoomed far out: the image fills most of its viewbox along one axis
    assert np.max(np.array([300, 360]) / (hi - lo)) > 0.8, (lo, hi)


def test_one_image_layer_is_refused_clearly(make_napari_viewer, qtbot):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    viewer.add_image(textured(1), name="only")
    _, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: match two images")
    start = len(notification_manager.records)
    widget._run.native.click()
    assert widget.worker is None  # refused before any work
    notes = [str(n.message) for n in notification_manager.records[start:]]
    assert any("two different image layers" in n for n in notes), notes
    assert [layer.name for layer in viewer.layers] == ["only"]


def test_pair_colours_are_distinct_and_opaque():
    colours = pair_colours(50)
    assert colours.shape == (50, 4) and np.all(colours[:, 3] == 1)
    assert len({tuple(np.round(c, 3)) for c in colours}) == 50
    assert pair_colours(0).shape == (0, 4)
