"""Multiscale (pyramid) image layers in the train dock (issue 27, part 2), in a real napari viewer
under Xvfb with real worker threads: strokes on disk at the working level, Train / Predict on the
region in view, the whole image into an OME-Zarr on disk (and its cancel), refusals when picked."""

from __future__ import annotations

import numpy as np
import pytest

import threading

from conftest import Hold, iou

napari = pytest.importorskip("napari")

from napari.layers import Labels  # noqa: E402

from napari_dinoseg.ngff import is_complete, open_ngff  # noqa: E402
from napari_dinoseg.ngff_write import create_ngff, write_pyramid  # noqa: E402
from napari_dinoseg.segmenter import Segmenter  # noqa: E402
from napari_dinoseg._widgets._feature_controls import SHARED_CACHE  # noqa: E402
from napari_dinoseg._widgets._pyramid import STORE_KEY, WORK_ENV  # noqa: E402
from napari_dinoseg._widgets._pyramid_job import region_in_level, within_budget, write_region  # noqa: E402
from napari_dinoseg._widgets._train_pyramid import READY  # noqa: E402
from napari_dinoseg._widgets.train_widget import TrainWidget  # noqa: E402

SIDE = 2048
TIMEOUT_MS = 180_000


def truth_of(n: int) -> np.ndarray:
    """``(n, n)`` uint8 phases 1, 2 of a smooth field."""
    y, x = np.mgrid[:n, :n].astype(np.float32)
    return (1 + (np.sin(y / 97.0) + np.sin(x / 131.0 + 1.0) > 0)).astype(np.uint8)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """``(path, truth)``: a 3-level uint16 OME-Zarr of ``SIDE``², two phases of different means and noise."""
    truth = truth_of(SIDE)
    rng = np.random.default_rng(0)
    value = np.where(truth == 1, 0.35 + 0.02 * rng.standard_normal(truth.shape),
                     0.65 + 0.10 * rng.standard_normal(truth.shape))
    path = tmp_path_factory.mktemp("ms") / "mosaic.ome.zarr"
    made = create_ngff(path, (SIDE, SIDE), np.uint16, chunks=512, pixel_size_um=0.02, levels=3, kind="intensity")
    made.levels[0][:] = (np.clip(value, 0, 1) * 65535).astype(np.uint16)
    write_pyramid(made)
    return path, truth


@pytest.fixture
def dock(make_napari_viewer, pyramid, monkeypatch, tmp_path):
    """``(viewer, widget, image layer, truth)``: the pyramid as a multiscale layer (its zarr
    levels), the train dock docked, a 1280×800 window, small tiles, the on-disk layers in tmp_path."""
    monkeypatch.setattr(Segmenter, "tile", 256)
    monkeypatch.setenv(WORK_ENV, str(tmp_path / "work"))
    SHARED_CACHE.clear()
    path, truth = pyramid
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1280, 800)
    levels = list(open_ngff(path).levels)
    layer = viewer.add_image(levels, multiscale=True, name="mosaic", scale=(0.02, 0.02), units="µm")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: train")
    return viewer, widget, layer, truth


def paint_truth(labels: Labels, truth: np.ndarray, region, every: int = 24) -> None:
    """Paint dots of the true class on a grid over ``region``, with the layer's brush, away from boundaries."""
    labels.brush_size = 5
    rows, cols = region
    for r in range(rows.start + 8, rows.stop - 8, every):
        for c in range(cols.start + 8, cols.stop - 8, every):
            patch = truth[r - 6:r + 7, c - 6:c + 7]
            if patch.min() == patch.max():
                labels.paint((r, c), int(patch[0, 0]), refresh=False)
    labels.refresh()


def look_at(viewer, qtbot, centre, zoom):
    viewer.scene.camera.center = centre
    viewer.scene.camera.zoom = zoom
    qtbot.wait(300)  # napari draws, updating the layers' corner pixels and levels


def click_and_wait(qtbot, widget, button=None):
    (button or widget._run).native.click()
    if widget.worker is not None:
        qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def test_resolution_menu_strokes_on_disk_and_train_predict_in_view(dock, qtbot, tmp_path):
    viewer, widget, image, truth = dock
    assert widget._level.visible and widget._whole.visible and not widget._scope.visible
    assert [widget._level.native.itemText(i) for i in range(widget._level.native.count())] == [
        "level 0: 2048×2048, 20.0 nm/px", "level 1: 1024×1024, 40.0 nm/px", "level 2: 512×512, 80.0 nm/px"]
    assert "multiscale (3 levels)" in widget._status.value

    labels = widget.new_labels_layer()
    assert labels.data.shape == (SIDE, SIDE) and not isinstance(labels.data, np.ndarray)  # zarr on disk
    store = labels.metadata[STORE_KEY]
    assert store.startswith(str(tmp_path / "work")) and f"kept on disk in {store}" in widget._status.value
    np.testing.assert_allclose(labels.scale, image.scale)

    look_at(viewer, qtbot, (0.02 * 600, 0.02 * 700), 1.0 / 0.02 * 1.5)  # data pixels 1.5 canvas px: level 0
    assert image.data_level == 0
    view = widget.view_in_level()
    (r0, r1), (c0, c1) = [(s.start, s.stop) for s in view]
    assert r0 <= 600 <= r1 and c0 <= 700 <= c1 and 100_000 < (r1 - r0) * (c1 - c0) < SIDE * SIDE / 4
    canvas_h, canvas_w = viewer.canvas.size  # 1.5 canvas px per pixel: the view is the canvas / 1.5
    assert abs((r1 - r0) - canvas_h / 1.5) <= 2 and abs((c1 - c0) - canvas_w / 1.5) <= 2

    paint_truth(labels, truth, view)
    stored = sorted(p.name for p in (tmp_path / "work").rglob("c/*/*"))
    assert 0 < len(stored) < 16  # only painted chunks of the 4 x 4 are on disk
    assert set(np.unique(labels.data[r0:r1, c0:c1])) == {0, 1, 2}

    click_and_wait(qtbot, widget)
    pred = widget.predictions
    assert pred is not None and pred.multiscale and len(pred.data) >= 2
    np.testing.assert_allclose(pred.scale, image.scale)
    level0 = np.asarray(pred.data[0])
    assert level0.shape == (SIDE, SIDE)
    assert np.all(level0[view] > 0) and iou(level0[view], truth[view], 1) > 0.9
    assert iou(level0[view], truth[view], 2) > 0.9
    assert not level0[:max(r0 - 300, 1), :].any() or r0 < 300  # far outside the view: nothing predicted
    assert not level0[:, min(c1 + 300, SIDE - 1):].any()
    assert "predicted the view of 'mosaic' at level 0" in widget._status.value
    assert "predictions accumulate on disk in" in widget._status.value
    coarse = np.asarray(pred.data[1])
    np.testing.assert_array_equal(coarse, level0[::2, ::2])  # the pyramid's next level: every second pixel
    assert widget.segmenter.pixel_size == pytest.approx(0.02)

    look_at(viewer, qtbot, (0.02 * 1700, 0.02 * 300), 1.0 / 0.02 * 1.5)  # another view: predictions accumulate
    second = widget.view_in_level()
    click_and_wait(qtbot, widget)
    level0 = np.asarray(widget.predictions.data[0])
    assert np.all(level0[view] > 0) and np.all(level0[second] > 0)


def test_the_view_is_prepared_while_the_user_paints(dock, qtbot):
    """Once the view settles, its windows' features are computed in the background; the click
    then computes none (the cache's misses do not grow) and predicts the view."""
    viewer, widget, image, truth = dock
    labels = widget.new_labels_layer()
    look_at(viewer, qtbot, (0.02 * 600, 0.02 * 700), 1.0 / 0.02 * 1.5)
    view = widget.view_in_level()
    qtbot.waitUntil(lambda: READY in widget._status.value and widget.worker is None, timeout=TIMEOUT_MS)
    assert "kept on disk in" in widget._status.value  # said while it ran: kept, the readiness after it
    assert "Train / Predict starts from them" in widget._status.value
    assert widget._prefetched[2] == within_budget(view)
    assert not widget.prefetch()  # the same view again: nothing to do
    prepared = SHARED_CACHE.misses
    paint_truth(labels, truth, view)
    click_and_wait(qtbot, widget)
    assert "predicted the view of 'mosaic'" in widget._status.value
    assert SHARED_CACHE.misses == prepared  # every window the fit and the view read was ready
    level0 = np.asarray(widget.predictions.data[0])
    assert iou(level0[view], truth[view], 1) > 0.9 and iou(level0[view], truth[view], 2) > 0.9


def test_a_click_during_the_preparation_stops_it_and_runs_at_once(dock, qtbot):
    viewer, widget, image, truth = dock
    labels = widget.new_labels_layer()
    look_at(viewer, qtbot, (0.02 * 600, 0.02 * 700), 1.0 / 0.02 * 1.5)
    qtbot.waitUntil(lambda: READY in widget._status.value and widget.worker is None, timeout=TIMEOUT_MS)
    paint_truth(labels, truth, widget.view_in_level())
    hold = Hold(widget)  # the next job: the preparation of the next view
    try:
        look_at(viewer, qtbot, (0.02 * 1400, 0.02 * 1300), 1.0 / 0.02 * 1.5)  # another view: prepared, held
        qtbot.waitUntil(hold.entered.is_set, timeout=TIMEOUT_MS)
        preparation = widget.worker
        assert preparation is not None and widget._background
        stopped = threading.Event()
        preparation.errored.connect(lambda err: stopped.set())
        widget._run.native.click()
        assert "starting when the running update has stopped" in widget._status.value
    finally:
        hold.release()
    qtbot.waitUntil(stopped.is_set, timeout=TIMEOUT_MS)  # cancelled at its next report
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert "predicted the view of 'mosaic'" in widget._status.value
    view = widget.view_in_level()
    assert widget.last_result.region == within_budget(view)
    assert widget._prefetched is None  # stopped before it finished: the view is prepared again when asked


def test_the_docks_close_button_stops_a_preparation_mid_run(dock, qtbot):
    viewer, widget, image, truth = dock
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    hold = Hold(widget)
    try:
        widget._prefetched = None
        assert widget.prefetch()
        qtbot.waitUntil(hold.entered.is_set, timeout=TIMEOUT_MS)
        preparation = widget.worker
        stopped = threading.Event()
        preparation.errored.connect(lambda err: stopped.set())
        viewer.window._wrapped_dock_widgets["dinoseg: train"].title.close_button.click()
    finally:
        hold.release()
    qtbot.waitUntil(stopped.is_set, timeout=TIMEOUT_MS)  # Cancelled at its next report
    look_at(viewer, qtbot, (0.02 * 300, 0.02 * 300), 1.0 / 0.02)
    qtbot.wait(800)  # past the delay after the view moved: a closed dock prepares nothing
    assert widget._prefetch_job() is None and not widget.prefetch()


def test_a_view_too_large_to_prepare_gets_its_intensity_bounds_only(dock, qtbot, monkeypatch):
    from napari_dinoseg._widgets import _train_pyramid

    viewer, widget, image, truth = dock
    monkeypatch.setattr(_train_pyramid, "PREFETCH_PIXELS", 10_000)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    SHARED_CACHE.clear()
    widget._prefetched = None
    assert widget.prefetch()
    assert _train_pyramid.BOUNDS in widget._status.value
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert len(SHARED_CACHE) == 0  # no window's features
    assert any(isinstance(k, tuple) and k[0] == "intensity bounds" for k in SHARED_CACHE._items)
    assert _train_pyramid.BOUNDS not in widget._status.value and READY not in widget._status.value


def test_no_preparation_for_vit_features_or_a_closed_dock(dock, qtbot):
    viewer, widget, image, truth = dock
    widget.new_labels_layer()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    widget.features.kind.value = "vit"  # forward passes on a CPU: minutes of both cores while painting
    widget._prefetched = None
    assert widget._prefetch_job() is None and not widget.prefetch()
    widget.features.kind.value = "classical"
    assert widget._prefetch_job() is not None
    viewer.window._wrapped_dock_widgets["dinoseg: train"].title.close_button.click()
    look_at(viewer, qtbot, (0.02 * 300, 0.02 * 300), 1.0 / 0.02)
    qtbot.wait(800)  # past the delay after the view moved
    assert widget.worker is None and widget._prefetch_job() is None


def test_a_coarser_working_level_trains_at_its_pixel_size(dock, qtbot):
    viewer, widget, image, truth = dock
    widget._level.value = 1
    labels = widget.new_labels_layer()
    assert labels.data.shape == (SIDE // 2, SIDE // 2)
    np.testing.assert_allclose(labels.scale, np.asarray(image.scale) * 2)
    look_at(viewer, qtbot, (0.02 * 1024, 0.02 * 1024), 1.0 / 0.02 / 8)  # the whole image on screen
    view = widget.view_in_level()
    assert view == (slice(0, SIDE // 2), slice(0, SIDE // 2))
    paint_truth(labels, truth[::2, ::2], view, every=40)
    click_and_wait(qtbot, widget)
    assert widget.segmenter.pixel_size == pytest.approx(0.04)  # kept in the bundle: the scale trained at
    level0 = np.asarray(widget.predictions.data[0])
    assert level0.shape == (SIDE // 2, SIDE // 2) and iou(level0, truth[::2, ::2], 2) > 0.85
    assert "at level 1" in widget._status.value and "at level 1" in widget._state.value


def test_whole_image_into_an_ome_zarr_and_its_cancel(dock, qtbot, tmp_path):
    viewer, widget, image, truth = dock
    widget._level.value = 1
    labels = widget.new_labels_layer()
    assert widget.predict_whole() is None and "no classifier yet" in widget._status.value
    look_at(viewer, qtbot, (0.02 * 1024, 0.02 * 1024), 1.0 / 0.02 / 8)
    paint_truth(labels, truth[::2, ::2], widget.view_in_level(), every=40)
    click_and_wait(qtbot, widget)

    worker = widget.predict_whole()
    assert worker is not None
    out = widget._whole_out
    widget.cancel()  # before its first window: stopped at the first progress report
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert not is_complete(out) and not out.exists()
    assert "cancelled" in widget._status.value and "was removed" in widget._status.value
    assert not any(lay.name == "mosaic segmentation (whole)" for lay in viewer.layers)

    click_and_wait(qtbot, widget, widget._whole)
    layer = viewer.layers["mosaic segmentation (whole)"]
    path = layer.metadata[STORE_KEY]
    assert is_complete(path) and f"written to {path}" in widget._status.value
    assert layer.multiscale and len(layer.data) >= 2
    np.testing.assert_allclose(layer.scale, np.asarray(image.scale) * 2)
    whole = np.asarray(layer.data[0])
    assert whole.shape == (SIDE // 2, SIDE // 2) and iou(whole, truth[::2, ::2], 1) > 0.85
    np.testing.assert_array_equal(np.asarray(layer.data[1]), whole[::2, ::2])


def test_a_multiscale_stack_is_refused_when_picked(make_napari_viewer):
    viewer = make_napari_viewer()
    stack = [np.zeros((3, 256, 256), np.uint8), np.zeros((3, 128, 128), np.uint8)]
    viewer.add_image(stack, multiscale=True, name="stack")
    widget = TrainWidget(viewer)
    assert "multiscale stack" in widget._status.value and not widget._level.visible
    assert widget.new_labels_layer() is None
    assert not any(isinstance(lay, Labels) for lay in viewer.layers)


def test_view_geometry_helpers():
    corners = np.array([[10, 20], [59, 99]])  # at a level twice as coarse as the working level
    assert region_in_level(corners, (2.0, 2.0), (1000, 1000)) == (slice(20, 120), slice(40, 200))
    assert region_in_level(corners, (2.0, 2.0), (100, 150)) == (slice(20, 100), slice(40, 150))
    assert region_in_level(np.array([[500, 500], [600, 600]]), (1.0, 1.0), (100, 100)) is None
    big = (slice(0, 8000), slice(1000, 5000))
    part = within_budget(big, budget=4_000_000)
    h, w = part[0].stop - part[0].start, part[1].stop - part[1].start
    assert h * w <= 4_000_000 and abs(h / w - 2.0) < 0.01
    assert (part[0].start + part[0].stop) // 2 == 4000 and (part[1].start + part[1].stop) // 2 == 3000
    assert within_budget((slice(0, 10), slice(0, 10)), budget=100) == (slice(0, 10), slice(0, 10))


def test_write_region_fills_every_level_as_the_pyramid_would(tmp_path):
    levels = [np.zeros((37, 50), np.uint8), np.zeros((19, 25), np.uint8), np.zeros((10, 13), np.uint8)]
    full = np.random.default_rng(1).integers(1, 4, (37, 50)).astype(np.uint8)
    write_region(levels, (slice(5, 30), slice(3, 41)), full[5:30, 3:41])
    expected = np.zeros_like(full)
    expected[5:30, 3:41] = full[5:30, 3:41]
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(level, expected[::2 ** k, ::2 ** k])


@pytest.mark.parametrize("name, dock", [("dinoseg: unsupervised", "the unsupervised dock"),
                                        ("dinoseg: match two images", "the match dock"),
                                        ("dinoseg: find similar (click)", "the find-similar dock")])
def test_other_docks_refuse_a_multiscale_image_when_it_is_picked(make_napari_viewer, name, dock):
    viewer = make_napari_viewer()
    plain = viewer.add_image(np.zeros((64, 64), np.uint8), name="plain")
    _, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", name)
    assert "multiscale" not in widget._status.value
    combo = widget._image_a if name.startswith("dinoseg: match") else widget._image
    assert combo.value is plain
    pyramid = viewer.add_image([np.zeros((256, 256), np.uint8), np.zeros((128, 128), np.uint8)], multiscale=True,
                               name="pyramid")
    combo.value = pyramid  # picked: said at once, before any click
    assert f"layer 'pyramid' is multiscale (a pyramid): {dock} cannot use it yet (the train dock can)" \
        in widget._status.value
