"""Volumes in the train dock (issue 28, part 5), in a real napari viewer under Xvfb with real
worker threads: the '3-D features (volume)' checkbox, one 3-D classifier trained on strokes of
several slices, the slice in view or the whole volume predicted into a (Z, Y, X) Labels layer with
the image's scale, cancel and close, save / load, refusals, and the result drawn in 3-D."""

from __future__ import annotations


import numpy as np
import pytest
from conftest import Hold, close_mid_run

napari = pytest.importorskip("napari")

from napari_dinoseg.config import FeatureConfig, TrainConfig  # noqa: E402
from napari_dinoseg.segmenter import Segmenter  # noqa: E402
from napari_dinoseg.volume_prediction import predict_volume  # noqa: E402
from napari_dinoseg._widgets._feature_controls import SHARED_CACHE  # noqa: E402
from napari_dinoseg._widgets._train_volume import (VolumeResult, painted_slices,  # noqa: E402
                                                   spacing_from_scale)
from napari_dinoseg._widgets.train_widget import SCOPE_STACK, TrainWidget  # noqa: E402

TIMEOUT_MS = 120_000
SHAPE = (16, 48, 48)
SPACING = (2.0, 1.0, 1.0)
PAINTED = (4, 11)  # the slices with strokes
SIGMAS = "1, 2"


@pytest.fixture(scope="module")
def volume():
    """``(image uint8 (16, 48, 48), truth uint8 {1, 2})``: two phases of blurred noise (blobs a few
    slices deep), of different means, with noise on top."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.normal(size=SHAPE), (1.5, 3, 3))
    truth = np.where(field > 0, 2, 1).astype(np.uint8)
    image = np.where(truth == 2, 170.0, 80.0) + ndimage.gaussian_filter(rng.normal(0, 30, SHAPE), 0.7)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def strokes_of(truth: np.ndarray) -> np.ndarray:
    """``(Z, Y, X)`` uint8 strokes on the :data:`PAINTED` slices: every fourth pixel of every second
    row, inside each phase (two pixels from its edge)."""
    from scipy import ndimage

    strokes = np.zeros(truth.shape, np.uint8)
    grid = np.zeros(truth.shape[1:], bool)
    grid[::2, ::4] = True
    for z in PAINTED:
        for label in (1, 2):
            inside = ndimage.binary_erosion(truth[z] == label, iterations=2) & grid
            strokes[z][inside] = label
    return strokes


@pytest.fixture
def dock(make_napari_viewer):
    """``dock(image, **image_kwargs) -> (viewer, widget, image layer)``, the widget docked, the
    feature cache empty, sigmas 1 and 2 (fast)."""

    def make(image, show=False, **kwargs):
        SHARED_CACHE.clear()
        viewer = make_napari_viewer(show=show)
        layer = viewer.add_image(image, name="vol", **kwargs)
        widget = TrainWidget(viewer)
        viewer.window.add_dock_widget(widget, name="dinoseg: train")
        widget.features.sigmas.value = SIGMAS
        return viewer, widget, layer

    return make


def painted_dock(dock, volume, show=False):
    """A dock on the volume (scale (2, 1, 1)) with its strokes painted and the 3-D box ticked."""
    image, truth = volume
    viewer, widget, layer = dock(image, show=show, scale=SPACING)
    labels = widget.new_labels_layer()
    labels.data = strokes_of(truth)
    widget.features.volume.value = True
    return viewer, widget, layer, labels


def reference(image, truth) -> Segmenter:
    """A Segmenter fitted as the dock fits it: one call on the whole volume and its strokes."""
    seg = Segmenter(FeatureConfig(kind="classical", dims=3, sigmas=(1, 2)), TrainConfig())
    return seg.fit(image, strokes_of(truth), spacing=SPACING)


def click_and_wait(qtbot, widget):
    widget._run.native.click()
    if widget.worker is not None:
        qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def volume_in_3d(viewer, image_layer, predictions, angles=(-20.0, 35.0, 140.0), label=None, zoom=0.75):
    """Show a volume's predictions in napari's 3-D view, as for a screenshot (reusable for the docs):
    the image drawn as an attenuated maximum projection in grey, the predictions as lit surfaces
    ('iso_categorical', smooth gradients) of every class, or of ``label`` alone (the image seen around it), the
    other layers hidden, the camera fitted to the data, turned to ``angles`` (degrees) and zoomed
    out by ``zoom`` so the rotated box's corners stay on the canvas. Returns the viewer."""
    viewer.dims.ndisplay = 3
    for layer in viewer.layers:
        layer.visible = layer is image_layer or layer is predictions
    image_layer.rendering, image_layer.colormap, image_layer.opacity = "attenuated_mip", "gray", 0.6
    predictions.rendering, predictions.opacity, predictions.blending = "iso_categorical", 1.0, "translucent"
    if hasattr(predictions, "iso_gradient_mode"):
        predictions.iso_gradient_mode = "smooth"  # softer shading of the voxel steps
    if label is not None:
        predictions.selected_label, predictions.show_selected_label = label, True
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari 0.9 moved it
    viewer.reset_view()  # fit to the canvas (this resets the angles)
    camera.angles = angles
    camera.zoom *= zoom
    return viewer


# ---- the checkbox ----------------------------------------------------------------------------


def test_the_3d_box_shows_for_a_single_channel_volume_and_a_kind_with_3d_features(dock, volume):
    image, _ = volume
    viewer, widget, _ = dock(image[0])  # a plane: no box
    box = widget.features.volume
    assert box.native.isHidden() and not widget.features.volume_active
    assert "neighbouring slices" in box.tooltip and "scale" in box.tooltip

    viewer.add_image(image, name="stack", scale=SPACING)  # a volume picked: the box appears
    widget._image.value = viewer.layers["stack"]
    assert not box.native.isHidden() and box.enabled and not box.value
    assert widget.feature_config().dims == 2  # unticked: the stack of planes, as before
    box.value = True
    assert widget.feature_config() == FeatureConfig(kind="classical", dims=3, sigmas=(1, 2))
    assert widget.features.membrane.native.isHidden()  # a 2-D filter: none in 3-D
    assert widget.features.planes.native.isHidden()  # the ViT's planes: not for classical features
    widget.features.kind.value = "vit"  # the ViT featurises volumes too (its xy planes): the box stays
    assert box.enabled and widget.features.volume_active and widget.feature_config().dims == 3
    assert not widget.features.planes.native.isHidden() and widget.feature_config().volume_planes == "xy"
    widget.features.planes.value = "triplanar"
    assert widget.feature_config().volume_planes == "triplanar"
    box.value = False  # planes of a stack: no ViT planes menu, a 2-D config
    assert widget.features.planes.native.isHidden() and widget.feature_config().volume_planes == "xy"
    box.value = True
    widget.features.kind.value = "classical"
    assert widget.features.volume_active

    viewer.add_image(np.stack([image[0]] * 3, axis=-1), name="rgb", rgb=True)
    widget._image.value = viewer.layers["rgb"]  # RGB: a plane with colours, no box
    assert box.native.isHidden() and not widget.features.volume_active
    assert widget.feature_config().dims == 2


def test_spacing_comes_from_the_layers_scale():
    assert spacing_from_scale((1.0, 1.0, 1.0)) is None  # napari's default: unknown, isotropic
    assert spacing_from_scale((5.0, 2.0, 0.5, 0.5)) == (2.0, 0.5, 0.5)  # the last three axes
    assert spacing_from_scale((-2.0, 1.0, 1.0)) == (2.0, 1.0, 1.0)  # a flipped axis keeps its step
    pint = pytest.importorskip("pint")
    ureg = pint.get_application_registry()
    units = (ureg.micrometer, ureg.nanometer, ureg.nanometer)
    assert spacing_from_scale((2.0, 500.0, 500.0), units) == pytest.approx((2.0, 0.5, 0.5))


# ---- train and predict -------------------------------------------------------------------------


def test_strokes_on_two_slices_train_one_3d_classifier_and_predict_the_slice_in_view(dock, qtbot, volume, notes):
    image, truth = volume
    viewer, widget, layer, labels = painted_dock(dock, volume)
    assert painted_slices(labels.data) == list(PAINTED)
    z = 7  # a slice without strokes
    viewer.dims.set_current_step(0, z)
    click_and_wait(qtbot, widget)
    result = widget.last_result
    assert isinstance(result, VolumeResult) and result.planes == slice(z, z + 1)
    assert result.trained_on == ["vol (labels 'vol labels', 2 slices, 3-D)"]
    seg = widget.segmenter
    assert seg.features.dims == 3 and seg.spacing == SPACING and seg.classifier.n_classes == 2

    pred = widget.predictions
    assert pred.data.shape == SHAPE and tuple(pred.scale) == SPACING
    assert np.all(np.delete(pred.data, z, axis=0) == 0) and np.all(pred.data[z] > 0)  # exactly that slice
    ref = reference(image, truth)
    expected, _ = predict_volume(ref, image, None, True, SPACING, None, slice(z, z + 1))
    np.testing.assert_array_equal(pred.data[z], expected[0])
    assert np.mean(pred.data[z] == truth[z]) > 0.9
    assert f"predicted slice {z} of 'vol' with 3-D features (voxels of (2, 1, 1) (dz, dy, dx)" in widget._status.value

    widget._scope.value = SCOPE_STACK  # the whole volume, block by block
    click_and_wait(qtbot, widget)
    pred = widget.predictions
    assert pred.data.shape == SHAPE and tuple(pred.scale) == SPACING
    np.testing.assert_array_equal(pred.data, ref.segment(image, spacing=SPACING))
    assert np.mean(pred.data == truth) > 0.9
    assert "predicted all 16 slices of 'vol'" in widget._status.value


def test_the_slice_in_view_and_the_whole_volume_with_uncertainty(dock, qtbot, volume):
    image, truth = volume
    viewer, widget, _, _ = painted_dock(dock, volume)
    widget._want_uncertainty.value = True
    widget._scope.value = SCOPE_STACK
    click_and_wait(qtbot, widget)
    ref = reference(image, truth)
    proba = ref.predict_proba(image, spacing=SPACING)
    np.testing.assert_array_equal(widget.predictions.data, ref.to_labels(proba))
    unc = next(lay for lay in viewer.layers if lay.name.startswith("vol uncertainty"))
    assert unc.data.shape == SHAPE and tuple(unc.scale) == SPACING
    np.testing.assert_allclose(unc.data, np.clip((1 - proba.max(axis=-1)) / 0.5, 0, 1), atol=1e-6)


def test_a_spacing_unlike_the_training_ones_is_named_in_the_status_line(dock, qtbot, volume, tmp_path):
    _, widget, _, _ = painted_dock(dock, volume)
    click_and_wait(qtbot, widget)
    widget._bundle_file.value = tmp_path / "vol"
    widget.save_classifier()
    image, _ = volume
    viewer2, widget2, _ = dock(image, scale=(4.0, 1.0, 1.0))  # the same voxels said to be twice as deep
    widget2._bundle_file.value = tmp_path / "vol.dinoseg"
    assert widget2.load_classifier()
    click_and_wait(qtbot, widget2)
    assert "trained on voxels of (2, 1, 1) (dz, dy, dx), this volume's are (4, 1, 1)" in widget2._status.value


# ---- cancel and close --------------------------------------------------------------------------


def test_cancel_while_predicting_the_volume_leaves_no_layer(dock, qtbot, volume):
    viewer, widget, _, _ = painted_dock(dock, volume)
    widget._scope.value = SCOPE_STACK
    hold = Hold(widget, after="predicting")
    layers = [lay.name for lay in viewer.layers]
    try:
        assert widget.run() is not None
        assert hold.entered.wait(60)  # the classifier fitted, the volume's prediction started
        widget.cancel()
    finally:
        hold.release()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert [lay.name for lay in viewer.layers] == layers and widget.predictions is None
    assert widget._status.value.startswith("cancelled") and widget.segmenter is None


def test_closing_the_dock_stops_the_volume_job(dock, qtbot, volume):
    viewer, widget, _, _ = painted_dock(dock, volume, show=True)
    widget._scope.value = SCOPE_STACK
    close_mid_run(qtbot, viewer, widget, "dinoseg: train", Hold(widget, after="predicting"), TIMEOUT_MS)
    assert widget.predictions is None


# ---- save, load, refusals --------------------------------------------------------------------


def test_a_saved_3d_classifier_predicts_a_volume_in_a_fresh_dock(dock, qtbot, volume, tmp_path):
    image, _ = volume
    _, widget, _, _ = painted_dock(dock, volume)
    widget._scope.value = SCOPE_STACK
    click_and_wait(qtbot, widget)
    first = widget.predictions.data.copy()
    widget._bundle_file.value = tmp_path / "vol"
    assert widget.save_classifier() == str(tmp_path / "vol.dinoseg")

    viewer2, widget2, _ = dock(image, scale=SPACING)  # nothing painted, the box unticked
    widget2.features.sigmas.value = "1, 2, 4, 8, 16"  # the bundle's features are used, not the controls'
    widget2._bundle_file.value = tmp_path / "vol.dinoseg"
    assert widget2.load_classifier()
    assert widget2.features.volume.value  # a 3-D classifier ticks the box
    assert "3-D features of volumes, trained on voxels of (2, 1, 1) (dz, dy, dx)" in widget2._state.value
    widget2._scope.value = SCOPE_STACK
    click_and_wait(qtbot, widget2)
    assert widget2.last_result.trained_on == [] and widget2.segmenter.spacing == SPACING
    assert widget2.predictions.data.shape == SHAPE and tuple(widget2.predictions.scale) == SPACING
    np.testing.assert_array_equal(widget2.predictions.data, first)
    assert "using the loaded classifier vol.dinoseg" in widget2._status.value


def test_classifiers_of_other_dims_are_refused_with_what_to_do(dock, qtbot, volume, tmp_path, notes):
    image, truth = volume
    reference(image, truth).save(tmp_path / "3d.dinoseg")
    planes = Segmenter(FeatureConfig(kind="classical", sigmas=(1, 2)))
    planes.fit(image[PAINTED[0]], strokes_of(truth)[PAINTED[0]]).save(tmp_path / "2d.dinoseg")

    viewer, widget, _ = dock(image[0])  # a plane with a 3-D classifier
    widget._bundle_file.value = tmp_path / "3d.dinoseg"
    assert widget.load_classifier()
    click_and_wait(qtbot, widget)
    assert widget._status.value.startswith("error: the loaded classifier 3d.dinoseg uses 3-D features")
    assert "'vol' of shape (48, 48) is not one" in widget._status.value and widget.predictions is None

    viewer2, widget2, _ = dock(image, scale=SPACING)  # a volume, the box ticked, a 2-D classifier
    widget2.features.volume.value = True
    widget2._bundle_file.value = tmp_path / "2d.dinoseg"
    assert widget2.load_classifier()
    click_and_wait(qtbot, widget2)
    assert widget2._status.value.startswith("error: the loaded classifier 2d.dinoseg uses 2-D features")
    assert "untick '3-D features (volume)'" in widget2._status.value and widget2.predictions is None
    assert any("2d.dinoseg uses 2-D features" in n for n in notes())
    widget2.features.volume.value = False  # unticked: it predicts the slice in view, in 2-D
    click_and_wait(qtbot, widget2)
    assert widget2.last_result.config.dims == 2 and widget2.predictions.data.shape == SHAPE


def test_strokes_of_another_image_are_refused_for_3d_features(dock, qtbot, volume, notes):
    from napari_dinoseg._widgets._layers import IMAGE_KEY, TRAIN_ALL

    image, truth = volume
    viewer, widget, _, _ = painted_dock(dock, volume)
    viewer.add_image(image[4], name="plane")
    viewer.add_labels(strokes_of(truth)[4], name="plane labels", metadata={IMAGE_KEY: "plane"})
    widget._image.value = viewer.layers["vol"]
    widget._train_on.value = TRAIN_ALL
    click_and_wait(qtbot, widget)
    assert "3-D features train on volumes, and 'plane' with strokes is not a single-channel (Z, Y, X) volume" \
        in widget._status.value
    assert widget.predictions is None and any("choose 'train on: this image'" in n for n in notes())


def test_every_volume_with_strokes_trains_one_classifier_and_the_picked_one_is_predicted(dock, qtbot, volume, notes):
    """'train on: every image with labels' with 3-D features: the strokes of two volumes of one
    voxel size train one classifier (equal to a Segmenter fitted on both), the picked volume is
    predicted; a third volume of another voxel size is refused, naming it."""
    from scipy import ndimage

    from napari_dinoseg._widgets._layers import IMAGE_KEY, TRAIN_ALL

    image, truth = volume
    viewer, widget, layer, labels = painted_dock(dock, volume)
    other = np.clip(ndimage.shift(image.astype(float), (0, 5, 3), mode="reflect") * 0.9 + 10, 0, 255).astype(np.uint8)
    other_truth = ndimage.shift(truth, (0, 5, 3), order=0, mode="reflect")
    viewer.add_image(other, name="vol2", scale=SPACING)
    other_strokes = np.zeros_like(truth)
    other_strokes[8] = strokes_of(other_truth[4:])[4]  # strokes on slice 8 of vol2
    viewer.add_labels(other_strokes, name="vol2 labels", scale=SPACING, metadata={IMAGE_KEY: "vol2"})
    widget._image.value = layer
    widget._train_on.value = TRAIN_ALL
    viewer.dims.set_current_step(0, 7)
    click_and_wait(qtbot, widget)
    result = widget.last_result
    assert isinstance(result, VolumeResult), widget._status.value
    assert result.trained_on == ["vol (labels 'vol labels', 2 slices, 3-D)", "vol2 (labels 'vol2 labels', 1 slice, 3-D)"]
    both = Segmenter(FeatureConfig(kind="classical", dims=3, sigmas=(1, 2)), TrainConfig())
    both.fit([image, other], [labels.data, other_strokes], spacing=SPACING)
    np.testing.assert_array_equal(widget.segmenter.classifier.coef, both.classifier.coef)
    expected, _ = predict_volume(both, image, None, True, SPACING, None, slice(7, 8))
    np.testing.assert_array_equal(widget.predictions.data[7], expected[0])
    assert widget.predictions.name == "vol predictions"

    viewer.add_image(other, name="vol3", scale=(1.0, 1.0, 1.0))
    viewer.add_labels(other_strokes, name="vol3 labels", metadata={IMAGE_KEY: "vol3"})
    click_and_wait(qtbot, widget)
    assert "must have the voxel size of 'vol' (voxels of (2, 1, 1) (dz, dy, dx))" in widget._status.value
    assert "'vol3' (isotropic voxels (scale 1)) differ" in widget._status.value


def test_unticked_a_volume_is_a_stack_of_planes_as_before(dock, qtbot, volume):
    viewer, widget, _, labels = painted_dock(dock, volume)
    widget.features.volume.value = False
    viewer.dims.set_current_step(0, 7)
    click_and_wait(qtbot, widget)
    assert not isinstance(widget.last_result, VolumeResult) and widget.segmenter.features.dims == 2
    assert widget.last_result.trained_on == ["vol (labels 'vol labels', 2 slices)"]
    assert np.all(np.delete(widget.predictions.data, 7, axis=0) == 0)


# ---- live update, 3-D view ---------------------------------------------------------------------


def test_live_update_with_3d_features_predicts_the_slice_in_view(dock, qtbot, volume):
    viewer, widget, _, labels = painted_dock(dock, volume)
    viewer.dims.set_current_step(0, 9)
    widget._live.value = True
    labels.data = labels.data.copy()  # the strokes replaced: one update
    qtbot.waitUntil(lambda: isinstance(widget.last_result, VolumeResult), timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert widget.last_result.planes == slice(9, 10) and widget.segmenter.features.dims == 3
    assert np.all(widget.predictions.data[9] > 0) and np.all(np.delete(widget.predictions.data, 9, axis=0) == 0)


def test_clicks_after_the_first_featurise_only_new_painted_slices(dock, qtbot, volume, volume_feature_calls):
    """The dock's feature cache keeps the painted slices' and the slice in view's 3-D features:
    strokes added to a painted slice retrain on kept features; a newly painted slice is the only
    region featurised; the predictions are those of a Segmenter fitted without a cache."""
    image, truth = volume
    calls = volume_feature_calls
    viewer, widget, _, labels = painted_dock(dock, volume)
    viewer.dims.set_current_step(0, 7)
    click_and_wait(qtbot, widget)
    assert sorted(calls) == [(4, 5), (7, 8), (11, 12)]
    strokes = labels.data.copy()
    strokes[4, :2, :2] = truth[4, :2, :2]  # more strokes on a painted slice
    labels.data = strokes
    calls.clear()
    click_and_wait(qtbot, widget)
    assert calls == []
    strokes[13, 20:24, 20:24] = truth[13, 20:24, 20:24]  # a new slice
    labels.data = strokes
    calls.clear()
    click_and_wait(qtbot, widget)
    assert calls == [(13, 14)]
    plain = Segmenter(FeatureConfig(kind="classical", dims=3, sigmas=(1, 2)), TrainConfig())
    plain.fit(image, strokes, spacing=SPACING)
    expected, _ = predict_volume(plain, image, None, True, SPACING, None, slice(7, 8))
    np.testing.assert_array_equal(widget.predictions.data[7], expected[0])


def test_the_predicted_volume_is_drawn_in_3d(dock, qtbot, volume):
    viewer, widget, layer, _ = painted_dock(dock, volume, show=True)
    widget._scope.value = SCOPE_STACK
    click_and_wait(qtbot, widget)
    pred = widget.predictions
    volume_in_3d(viewer, layer, pred)
    assert viewer.dims.ndisplay == 3 and pred.visible
    shot = viewer.screenshot(canvas_only=True)
    assert shot.ndim == 3 and shot.shape[-1] == 4
    rgb = shot[..., :3].reshape(-1, 3)
    assert rgb.std(axis=0).max() > 10  # not one flat colour
    colours = (pred.colormap.map(np.array([1, 2]))[:, :3] * 255).astype(int)
    near = [np.mean(np.abs(rgb.astype(int) - c).sum(axis=1) < 60) for c in colours]
    assert min(near) > 0.01, f"both classes' colours on screen: {near}"


@pytest.fixture
def notes():
    """Messages of the napari notifications dispatched during the test."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)
    yield lambda: [str(n.message) for n in notification_manager.records[start:]]
