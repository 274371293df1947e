"""The train widget in a real napari viewer (run under Xvfb), with real worker threads."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import iou

napari = pytest.importorskip("napari")

from napari.layers import Labels  # noqa: E402
from napari.utils.notifications import notification_manager  # noqa: E402

from napari_dinoseg._widgets._feature_controls import SHARED_CACHE  # noqa: E402
from napari_dinoseg._widgets._sections import controls  # noqa: E402
from napari_dinoseg._widgets import train_widget  # noqa: E402
from napari_dinoseg._widgets.train_widget import UNCERTAINTY, TrainWidget  # noqa: E402

TIMEOUT_MS = 120_000


@pytest.fixture
def notes():
    """Messages of the napari notifications dispatched during the test."""
    start = len(notification_manager.records)
    yield lambda: [str(n.message) for n in notification_manager.records[start:]]


@pytest.fixture
def dock(make_napari_viewer):
    """``dock(image, **image_kwargs) -> (viewer, widget, image_layer)`` with the widget docked."""

    def make(image, show=False, **kwargs):
        SHARED_CACHE.clear()  # the cache is shared by the session's widgets: start each test empty
        viewer = make_napari_viewer(show=show)
        layer = viewer.add_image(image, name="img", **kwargs)
        widget = TrainWidget(viewer)
        viewer.window.add_dock_widget(widget, name="dinoseg: train")
        return viewer, widget, layer

    return make


def brush(layer, strokes):
    """Paint ``(label, [(row, col), ...])`` polylines into a Labels layer with its brush."""
    layer.brush_size = 3
    for label, points in strokes:
        for (r0, c0), (r1, c1) in zip(points, points[1:]):
            n = int(max(abs(r1 - r0), abs(c1 - c0))) + 1
            for r, c in zip(np.linspace(r0, r1, n), np.linspace(c0, c1, n)):
                layer.paint((round(r), round(c)), label, refresh=False)
    layer.refresh()


TEXTURE_STROKES = [
    (1, [(20, 30), (170, 30)]), (1, [(100, 10), (100, 60)]),
    (2, [(20, 160), (170, 160)]), (2, [(60, 140), (60, 180)]),
]


def click_and_wait(qtbot, widget):
    widget._run.native.click()
    if widget.worker is not None:
        qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def test_paint_train_predict_and_reuse_cached_features(dock, qtbot, two_textures):
    image, truth, _ = two_textures
    viewer, widget, _ = dock(image)
    labels = widget.new_labels_layer()
    assert labels.data.shape == image.shape and widget._labels_layer.value is labels
    brush(labels, TEXTURE_STROKES)
    assert set(np.unique(labels.data)) == {0, 1, 2}

    click_and_wait(qtbot, widget)
    pred = widget.predictions
    assert pred.data.shape == image.shape
    assert iou(pred.data, truth, 1) > 0.95 and iou(pred.data, truth, 2) > 0.95
    np.testing.assert_array_equal(pred.colormap.map(np.array([1, 2])), labels.colormap.map(np.array([1, 2])))
    assert viewer.layers.index(pred) == viewer.layers.index(labels) + 1  # directly above its image's strokes
    assert widget.last_result.featurised == 1 and widget.cache.misses == 1
    assert "predicted 1 slice(s) of 'img' with 2 classes" in widget._status.value

    brush(labels, [(1, [(150, 40), (180, 40)])])  # a correction, then a second click
    first = pred.data.copy()
    click_and_wait(qtbot, widget)
    assert widget.last_result.featurised == 0 and widget.last_result.reused == 1
    assert widget.cache.misses == 1  # fit and predict of both clicks: featurised once
    assert widget.predictions is pred  # updated in place
    assert pred.data.shape == first.shape


def test_uncertainty_layer(dock, qtbot, two_textures):
    image, _, scribbles = two_textures
    viewer, widget, _ = dock(image)
    viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    widget._want_uncertainty.value = True
    click_and_wait(qtbot, widget)
    unc = viewer.layers[f"img {UNCERTAINTY}"]
    assert unc.data.shape == image.shape and unc.data.dtype == np.float32
    assert 0 <= unc.data.min() and unc.data.max() <= 1.0 and unc.data.max() > 0.5  # 1 = both classes as likely
    assert unc.data[:, 90:100].mean() > unc.data[:, 20:40].mean()  # unsure at the boundary
    assert unc.contrast_limits == [0.0, 1.0] and unc.colormap.name == "viridis" and unc.blending == "translucent"


def test_classifier_menu_chooses_trees_or_the_regression_alone(dock, qtbot, two_textures):
    image, truth, scribbles = two_textures
    viewer, widget, _ = dock(image)
    viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    assert widget._classifier.value == "logistic+trees"
    click_and_wait(qtbot, widget)
    assert widget.classifier.forest is not None
    widget._classifier.value = "logistic"
    click_and_wait(qtbot, widget)
    assert widget.classifier.forest is None and widget.last_result.reused == 1
    assert iou(widget.predictions.data, truth, 2) > 0.9


def test_edge_aware_smoothing_checkbox(dock, qtbot, two_textures):
    image, truth, scribbles = two_textures
    viewer, widget, _ = dock(image)
    viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    assert widget._edge_smoothing.value
    click_and_wait(qtbot, widget)
    assert widget.classifier.guided_radius == 4 and len(widget.classifier.guide) == 1
    smoothed = widget.predictions.data.copy()
    widget._edge_smoothing.value = False
    click_and_wait(qtbot, widget)
    assert widget.classifier.guided_radius == 0 and widget.last_result.reused == 1
    raw = widget.predictions.data
    assert not np.array_equal(raw, smoothed)  # the filter changed some pixels
    assert iou(smoothed, truth, 2) > 0.95 and iou(raw, truth, 2) > 0.95


def test_cancel_leaves_the_layers_untouched(dock, qtbot, notes):
    image = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    viewer, widget, _ = dock(image, rgb=True)
    labels = widget.new_labels_layer()
    brush(labels, [(1, [(10, 10), (10, 200)]), (2, [(300, 10), (300, 200)])])
    worker = widget.run()
    assert worker is not None
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert widget.predictions is None
    assert widget._status.value.startswith("cancelled")
    assert widget._run.enabled and not widget._cancel.enabled
    assert any("cancelled" in n for n in notes())


@pytest.mark.parametrize("channels", [3, 4])
def test_rgb_and_rgba_images(dock, qtbot, two_textures, channels):
    image, truth, scribbles = two_textures
    rgb = np.repeat(image[..., None], channels, axis=-1)
    if channels == 4:
        rgb[..., 3] = 255
    viewer, widget, layer = dock(rgb, rgb=True)
    assert layer.rgb
    viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    click_and_wait(qtbot, widget)
    pred = widget.predictions.data
    assert pred.shape == image.shape
    assert widget.classifier.n_features == 3 * 65  # alpha dropped
    assert iou(pred, truth, 2) > 0.9


def test_float_image_with_nan_and_inf_warns_and_predicts(dock, qtbot, two_textures, notes):
    image, truth, scribbles = two_textures
    img = image.astype(np.float32)
    img[0, :5] = np.nan
    img[1, :5] = np.inf
    viewer, widget, _ = dock(img)
    viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    click_and_wait(qtbot, widget)
    assert widget.predictions.data.shape == image.shape
    assert any("NaN/inf pixel(s) replaced" in n for n in notes())


def test_stack_trains_on_painted_slices_and_predicts_current_slice_or_all(dock, qtbot, two_textures):
    image, truth, scribbles = two_textures
    stack = np.stack([image, image[:, ::-1], image])
    viewer, widget, _ = dock(stack)
    assert not widget._scope.native.isHidden()  # the scope choice appears for stacks
    strokes = np.zeros(stack.shape, np.uint8)
    strokes[0] = scribbles  # labels in one slice train the classifier
    viewer.add_labels(strokes, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    viewer.dims.set_current_step(0, 1)
    click_and_wait(qtbot, widget)
    pred = widget.predictions.data
    assert pred.shape == stack.shape
    assert np.all(pred[0] == 0) and np.all(pred[2] == 0)  # only the current slice
    assert iou(pred[1], truth[:, ::-1], 2) > 0.9

    widget._scope.value = "whole stack"
    click_and_wait(qtbot, widget)
    pred = widget.predictions.data
    assert all(iou(pred[z], t, 2) > 0.9 for z, t in enumerate([truth, truth[:, ::-1], truth]))
    # slices 0 and 1 were featurised by the first click; slice 2 equals slice 0: the same features
    assert widget.last_result.reused == 2 and widget.last_result.featurised == 0
    assert widget.last_result.trained_on == ["img (labels 'strokes', 1 slice)"]


def test_tiny_image_smaller_than_the_filters(dock, qtbot):
    image = np.zeros((12, 12), np.uint8)
    image[:, 6:] = 200
    viewer, widget, _ = dock(image)
    labels = np.zeros(image.shape, np.uint8)
    labels[2:10, 1], labels[2:10, 10] = 1, 2
    viewer.add_labels(labels, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    click_and_wait(qtbot, widget)
    pred = widget.predictions.data
    assert np.all(pred[:, :5] == 1) and np.all(pred[:, 7:] == 2)


def expect_refusal(qtbot, viewer, widget, notes, match):
    before = [layer.name for layer in viewer.layers]
    click_and_wait(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == before  # nothing lost, nothing added
    assert widget._status.value.startswith("error:") and match in widget._status.value
    assert any(match in n for n in notes())
    assert widget._run.enabled and widget.worker is None


def test_no_labels_layer(dock, qtbot, notes, two_textures):
    viewer, widget, _ = dock(two_textures[0])
    expect_refusal(qtbot, viewer, widget, notes, "no labels layer")


@pytest.mark.parametrize("value, match", [(-3, "negative value -3"), (2**40, "too large for a class id")])
def test_label_values_that_cannot_be_class_ids_are_refused(dock, qtbot, notes, two_textures, value, match):
    image, _, scribbles = two_textures
    viewer, widget, _ = dock(image)
    strokes = scribbles.astype(np.int64)
    strokes[strokes == 2] = value
    viewer.add_labels(strokes, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    expect_refusal(qtbot, viewer, widget, notes, match)


def test_labels_of_another_shape(dock, qtbot, notes, two_textures):
    viewer, widget, _ = dock(two_textures[0])
    viewer.add_labels(np.zeros((50, 60), np.uint8), name="other")
    widget._labels_layer.value = viewer.layers["other"]
    expect_refusal(qtbot, viewer, widget, notes, "has shape (50, 60) but image")


def test_nothing_painted(dock, qtbot, notes, two_textures):
    viewer, widget, _ = dock(two_textures[0])
    widget.new_labels_layer()
    expect_refusal(qtbot, viewer, widget, notes, "no labelled pixels")


def test_single_class_painted(dock, qtbot, notes, two_textures):
    viewer, widget, _ = dock(two_textures[0])
    brush(widget.new_labels_layer(), [(1, [(10, 10), (10, 100)])])
    expect_refusal(qtbot, viewer, widget, notes, "only class 1 is painted")


def test_bad_sigmas_text(dock, qtbot, notes, two_textures):
    viewer, widget, _ = dock(two_textures[0])
    brush(widget.new_labels_layer(), TEXTURE_STROKES)
    widget.features.sigmas.value = "1, two"
    expect_refusal(qtbot, viewer, widget, notes, "give numbers separated by commas")


def test_normalisation_percentiles_reach_the_config_and_bad_ones_are_refused(dock, qtbot, notes, two_textures):
    viewer, widget, _ = dock(two_textures[0])
    assert widget.features.config().percentiles == (5.0, 95.0)  # the shipped default, shown as such
    widget.features.percentiles.value = "25, 75"
    assert widget.features.config().percentiles == (25.0, 75.0)
    brush(widget.new_labels_layer(), TEXTURE_STROKES)
    widget.features.percentiles.value = "75"
    expect_refusal(qtbot, viewer, widget, notes, "give two numbers")
    widget.features.percentiles.value = "75, 25"
    expect_refusal(qtbot, viewer, widget, notes, "percentiles must be (low, high)")


def test_multichannel_shown_as_stack(dock, qtbot, notes):
    viewer, widget, _ = dock(np.zeros((64, 64, 5), np.float32))
    widget.new_labels_layer()
    expect_refusal(qtbot, viewer, widget, notes, "channel_axis=-1")


def use_vit(widget, kind="vit", weights="random", views="one view", stride=14):
    widget.features.use(kind, weights=weights, views=views, stride=stride, device="cpu")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dinov2_and_hybrid_modes_train_and_predict(dock, qtbot, two_textures):
    """Random weights: this checks the mechanics, not the quality of DINOv2 features."""
    image, truth, scribbles = two_textures
    viewer, widget, _ = dock(image)
    viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    use_vit(widget)
    assert not widget.features.model.native.isHidden() and widget.features.sigmas.native.isHidden()
    click_and_wait(qtbot, widget)
    # the resolved setting and a time estimate are announced before featurisation starts
    assert "dinov2_vits14 on cpu: stride 14, shifts (), flips False (1 views), about" in widget.features.plan.value
    assert widget.last_result.plan == widget.features.plan.value
    pred = widget.predictions.data
    assert pred.shape == image.shape and set(np.unique(pred)) <= {1, 2}
    assert widget.classifier.n_features == 384

    widget.features.kind.value = "hybrid"  # classical + DINOv2: a new cache entry, then reuse
    widget._pca.value = 16  # PCA of the 384 ViT channels, fitted at train time
    click_and_wait(qtbot, widget)
    assert widget.classifier.n_features == 65 + 384 and widget.last_result.featurised == 1
    assert iou(widget.predictions.data, truth, 2) > 0.9  # the classical half carries it
    click_and_wait(qtbot, widget)
    assert widget.last_result.reused == 1 and widget.last_result.featurised == 0
    widget.features.facet.value, widget.features.layer.value = "key", 6  # the keys of block 6: new features
    click_and_wait(qtbot, widget)
    features = widget.last_result.segmenter.features
    assert (features.facet, features.layer) == ("key", 6) and widget.last_result.featurised == 1
    assert iou(widget.predictions.data, truth, 2) > 0.9


def count_calls(monkeypatch):
    """``{"resolve_device": [...], "resolved": [...]}``: one entry per call, from now on, of
    :func:`napari_dinoseg.features.base.resolve_device` (wherever a module of the package holds
    it) and of :meth:`FeatureConfig.resolved`, each the package's frames that made the call."""
    import sys
    import traceback

    from napari_dinoseg.config import FeatureConfig
    from napari_dinoseg.features import base

    calls = {"resolve_device": [], "resolved": []}
    real_device, real_resolved = base.resolve_device, FeatureConfig.resolved

    def where() -> str:
        frames = [f for f in traceback.extract_stack()[:-2] if "napari_dinoseg" in f.filename]
        return "".join(traceback.format_list(frames))

    def resolve_device(name):
        calls["resolve_device"].append(where())
        return real_device(name)

    def resolved(self, device_type):
        calls["resolved"].append(where())
        return real_resolved(self, device_type)

    for name, module in list(sys.modules.items()):
        if name.startswith("napari_dinoseg") and getattr(module, "resolve_device", None) is real_device:
            monkeypatch.setattr(module, "resolve_device", resolve_device)
    monkeypatch.setattr(FeatureConfig, "resolved", resolved)
    return calls


@pytest.mark.parametrize("kind", ["classical", "vit"])
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_click_resolves_the_device_and_the_config_once(dock, qtbot, two_textures, monkeypatch, kind):
    """A Train / Predict click builds one featuriser, its Segmenter's: the device and the feature
    config's presets are resolved once, for the plan line, the fit and the prediction."""
    image, _, scribbles = two_textures
    viewer, widget, _ = dock(image)
    viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    if kind == "vit":
        use_vit(widget)
    calls = count_calls(monkeypatch)
    click_and_wait(qtbot, widget)
    assert widget.predictions is not None and widget.last_result.featurised == 1  # the click ran through
    for what, stacks in calls.items():
        assert len(stacks) == 1, f"{what} was called {len(stacks)} times in one click, from:\n" + "\n".join(stacks)


def test_missing_weights_is_a_clear_error(dock, qtbot, notes, two_textures, tmp_path, monkeypatch):
    monkeypatch.setenv("DINOSEG_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    image, _, scribbles = two_textures
    viewer, widget, _ = dock(image)
    viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    use_vit(widget, weights="")
    widget.features.model.value = "dinov2_vitb14"
    expect_refusal(qtbot, viewer, widget, notes, "dinov2_vitb14_pretrain.pth")


def test_crf_option_refines_the_prediction(dock, qtbot, two_textures):
    image, truth, scribbles = two_textures
    viewer, widget, _ = dock(image)
    viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    click_and_wait(qtbot, widget)
    plain = widget.predictions.data.copy()
    widget._crf.value = True
    click_and_wait(qtbot, widget)
    refined = widget.predictions.data
    assert widget.last_result.featurised == 0  # the CRF works on cached features' predictions
    assert not np.array_equal(refined, plain)
    assert iou(refined, truth, 2) > 0.9


def test_save_then_load_predicts_a_new_image_with_nothing_painted(dock, qtbot, two_textures, tmp_path, notes):
    image, truth, scribbles = two_textures
    viewer, widget, _ = dock(image)
    widget._bundle_file.value = tmp_path / "textures"
    assert widget.save_classifier() is None and "train a classifier first" in widget._status.value
    viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    widget.features.sigmas.value = "1, 2, 4"
    click_and_wait(qtbot, widget)
    saved = widget.save_classifier()
    assert saved == str(tmp_path / "textures.dinoseg")

    other = np.roll(image, 40, axis=1)  # a new image; the classifier's own features (sigmas 1, 2, 4)
    viewer2, widget2, _ = dock(other)
    widget2._bundle_file.value = saved
    assert widget2.load_classifier()
    click_and_wait(qtbot, widget2)
    pred = widget2.predictions.data
    assert widget2.last_result.config.sigmas == (1.0, 2.0, 4.0)
    assert iou(pred, np.roll(truth, 40, axis=1), 2) > 0.9

    (tmp_path / "bad.dinoseg").write_bytes(b"junk")
    widget2._bundle_file.value = tmp_path / "bad.dinoseg"
    assert not widget2.load_classifier() and "not a zip archive" in widget2._status.value


def test_train_on_every_image_with_labels(dock, qtbot, phases):
    """Two image layers, each painted in its own Labels layer: one click trains on both."""
    image, truth, scribbles = phases
    viewer, widget, first = dock(image)
    mine = widget.new_labels_layer()
    mine.data[:] = np.where(scribbles == 3, 0, scribbles)  # classes 1 and 2 on this image
    second = viewer.add_image(np.roll(image, 40, axis=0), name="second")
    widget._image.value = second
    theirs = widget.new_labels_layer()
    theirs.data[:] = np.roll(np.where(scribbles == 3, 3, 0), 40, axis=0)  # class 3 on the other one
    viewer.add_labels(np.full(image.shape, 3, np.uint8), name="stray")  # belongs to no image: never used
    widget._image.value, widget._labels_layer.value = first, mine
    widget._train_on.value = "this image"
    click_and_wait(qtbot, widget)
    assert widget.classifier.classes.tolist() == [1, 2]
    widget._train_on.value = "every image with labels"
    click_and_wait(qtbot, widget)
    assert widget.classifier.classes.tolist() == [1, 2, 3]
    assert widget.last_result.trained_on == ["img (labels 'img labels')", "second (labels 'second labels')"]
    assert "trained on 2 image(s): img (labels 'img labels'); second (labels 'second labels')" in widget._status.value
    pred = widget.predictions.data
    assert iou(pred, truth, 3) > 0.8  # class 3 was painted on the second image only
    assert widget.segmenter.statistics.quantiles.shape[0] == 2


def test_labels_made_for_another_image_are_refused(dock, qtbot, notes, phases):
    image, _, scribbles = phases
    viewer, widget, first = dock(image)
    other = viewer.add_image(image[::-1], name="other")
    widget._image.value = other
    labels = widget.new_labels_layer()
    labels.data[:] = scribbles
    widget._image.value, widget._labels_layer.value = first, labels
    expect_refusal(qtbot, viewer, widget, notes, "belongs to image 'other', not 'img'")


def test_widget_output_equals_dinoseg_apply_with_crf_and_tiles(dock, qtbot, phases, tmp_path, monkeypatch):
    """What the user approved in the viewer is what the folder gets: same pipeline, CRF and tiles."""
    import tifffile

    from napari_dinoseg import Segmenter
    from napari_dinoseg.cli import main

    monkeypatch.setattr(Segmenter, "tile", 96)  # 160 px planes are cut into tiles in both places
    image, _, scribbles = phases
    viewer, widget, _ = dock(image)
    viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    widget.features.sigmas.value = "1, 2, 4"
    widget._crf.value = True
    click_and_wait(qtbot, widget)
    approved = widget.predictions.data.copy()
    widget._bundle_file.value = tmp_path / "approved"
    saved = widget.save_classifier()
    folder = tmp_path / "folder"
    folder.mkdir()
    tifffile.imwrite(folder / "same.tif", image)
    assert main(["apply", saved, str(folder), "-o", str(tmp_path / "out")]) == 0
    written = tifffile.imread(tmp_path / "out" / "same_labels.tif")
    np.testing.assert_array_equal(written, approved)
    without_crf = Segmenter.load(saved)
    without_crf.crf = None
    assert not np.array_equal(without_crf.segment(image), approved)  # the CRF was applied in both


def test_every_image_mode_predicts_an_unpainted_image(dock, qtbot, phases):
    """Train on two painted images, predict a third one that has no labels of its own."""
    image, truth, scribbles = phases
    viewer, widget, first = dock(image)
    widget.new_labels_layer().data[:] = scribbles
    second = viewer.add_image(np.roll(image, 40, axis=1), name="second")
    widget._image.value = second
    widget.new_labels_layer().data[:] = np.roll(scribbles, 40, axis=1)
    third = viewer.add_image((image * 0.6 + 60).astype(np.uint8)[::-1], name="third, darker")
    widget._image.value = third
    widget._train_on.value = "every image with labels"
    click_and_wait(qtbot, widget)
    assert len(widget.last_result.trained_on) == 2
    pred = widget.predictions
    assert viewer.layers.index(pred) > viewer.layers.index(third)  # drawn over the predicted image
    assert min(iou(pred.data, truth[::-1], c) for c in (1, 2, 3)) > 0.8


def test_every_control_has_its_label_with_no_labels_layer(dock):
    """Opened on an image alone (no Labels layer yet), the drop-downs and boxes keep their labels."""
    from magicgui.widgets.bases import ButtonWidget

    viewer, widget, _ = dock(np.zeros((32, 32), np.uint8))
    assert not [lay for lay in viewer.layers if lay.__class__.__name__ == "Labels"]
    assert widget.labels is True  # the Container's own flag, not a shadowing attribute
    shown = [w for w in controls(widget) if not isinstance(w, ButtonWidget) and w.label]
    assert all(w._labeled_widget() is not None for w in shown)
    assert {"image", "brush labels", "train on", "features", "classifier"} <= {w.label for w in shown}


def test_a_loaded_classifier_is_used_until_this_images_labels_are_painted(dock, qtbot, two_textures, tmp_path):
    """Strokes present when a classifier is loaded do not silently replace it; painting does."""
    image, truth, scribbles = two_textures
    viewer, widget, _ = dock(image)
    viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    click_and_wait(qtbot, widget)
    widget._bundle_file.value = tmp_path / "model.dinoseg"
    widget.save_classifier()

    other = np.roll(image, 40, axis=1)
    viewer2, widget2, _ = dock(other)
    stale = np.zeros_like(scribbles)
    stale[5:9, 5:60], stale[180:184, 100:180] = 2, 1  # strokes that disagree with the texture
    viewer2.add_labels(stale, name="old strokes")
    widget2._labels_layer.value = viewer2.layers["old strokes"]
    widget2._bundle_file.value = tmp_path / "model.dinoseg"
    assert widget2.load_classifier()
    assert widget2._state.value.startswith("loaded from model.dinoseg")
    click_and_wait(qtbot, widget2)
    assert widget2.last_result.trained_on == [] and "using the loaded classifier model.dinoseg" in widget2._status.value
    assert iou(widget2.predictions.data, np.roll(truth, 40, axis=1), 2) > 0.9

    brush(viewer2.layers["old strokes"], [(1, [(60, 20), (60, 60)])])  # the user paints: train from the strokes
    click_and_wait(qtbot, widget2)
    assert widget2.last_result.trained_on and widget2.loaded is None
    assert widget2._state.value.startswith("trained here on other") or "trained here on img" in widget2._state.value
    assert "the loaded model.dinoseg is set aside (you painted)" in widget2._state.value


def test_a_labels_layer_of_no_image_is_tied_to_the_first_image_it_trains(dock, qtbot, notes, two_textures):
    image, _, scribbles = two_textures
    viewer, widget, _ = dock(image)
    viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    click_and_wait(qtbot, widget)
    assert "labels layer 'strokes' now belongs to this image" in widget._status.value
    second = viewer.add_image(image[:, ::-1], name="second")
    widget._image.value = second
    widget._labels_layer.value = viewer.layers["strokes"]
    expect_refusal(qtbot, viewer, widget, notes, "labels layer 'strokes' belongs to image 'img', not 'second'")


def test_missing_weights_fail_before_any_work_naming_the_weights_field(dock, qtbot, notes, two_textures, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("DINOSEG_WEIGHTS_DIR", str(tmp_path / ("a_long_folder_name_" * 8)))  # no place to wrap
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    image, _, scribbles = two_textures
    viewer, widget, _ = dock(image)
    viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    width = widget.native.sizeHint().width()  # as the user first sees it
    widget.features.kind.value = "vit"
    qtbot.wait(50)
    widget._run.native.click()
    assert widget.worker is None, "refused on the GUI thread, before a worker starts"
    assert "type the path of a checkpoint file in the 'weights' field" in widget._status.value
    assert any("dinov2_vits14_pretrain.pth" in n for n in notes())
    qtbot.wait(100)
    assert widget.native.sizeHint().width() <= width, "a long message wraps; the dock keeps its width"
    from qtpy.QtWidgets import QSizePolicy

    for label in (widget._status, widget.features.plan, widget._state):  # whatever their text, never wider
        wraps = label.native.wordWrap() if hasattr(label.native, "wordWrap") else \
            label.native.lineWrapMode() == label.native.LineWrapMode.WidgetWidth  # the message areas
        assert label.native.sizePolicy().horizontalPolicy() == QSizePolicy.Ignored and wraps


def test_progress_shows_in_napari_and_its_cancel_stops_the_job(dock, qtbot, two_textures, monkeypatch):
    from napari.utils import progress

    from napari_dinoseg._widgets import _worker_widget

    # the bar after 0.2 s instead of 1 s, on a 2112² image (about 2.5 s of work on a fast 2-core
    # machine): the job is still running when the bar shows and when its cancel comes
    monkeypatch.setattr(_worker_widget, "NAPARI_BAR_AFTER", 0.2)
    image, _, scribbles = two_textures
    viewer, widget, _ = dock(np.tile(image, (11, 11)))
    viewer.add_labels(np.tile(scribbles, (11, 11)), name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    widget._run.native.click()
    assert widget._bar is None, "a job shorter than NAPARI_BAR_AFTER needs no second progress bar"
    qtbot.waitUntil(lambda: widget._bar is not None, timeout=TIMEOUT_MS)
    bar = widget._bar
    assert bar in progress._all_instances
    qtbot.waitUntil(lambda: bar.n > 0, timeout=TIMEOUT_MS)
    bar.cancel()  # the activity dock's cancel button
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert widget._status.value.startswith("cancelled") and widget.predictions is None
    assert widget._bar is None and bar not in progress._all_instances


def test_every_control_has_a_label_and_a_tooltip_in_every_mode(dock, two_textures):
    viewer, widget, _ = dock(two_textures[0])  # no Labels layer: the state a new user meets
    from magicgui.widgets import CheckBox, Label, PushButton, TextEdit

    assert widget.labels is True, "the container shows its controls' labels"
    for kind in ("classical", "vit", "hybrid"):
        widget.features.kind.value = kind
        shown = [w for w in controls(widget) if not w.native.isHidden()]
        for w in shown:
            text = w.text if isinstance(w, (CheckBox, PushButton)) else w.label
            assert text or isinstance(w, (Label, TextEdit)), f"{type(w).__name__} {w.name!r} has no label in {kind} mode"
            assert w.tooltip, f"{text or w.value!r} has no tooltip in {kind} mode"
        labels = [w.label for w in shown if not isinstance(w, (CheckBox, PushButton))]
        assert "features" in labels and ("weights" in labels) == (kind != "classical")


# ---- live update -------------------------------------------------------------------------


def stroke(layer, label, points):
    """One brush stroke as napari's mouse binding makes it: the paints, then one ``paint`` event
    when the stroke ends (the history block closes)."""
    with layer.block_history():
        brush(layer, [(label, points)])


class Jobs:
    """Records the live jobs a widget starts and the results it writes; can hold the first job
    at its start until ``release()`` (to have a stroke arrive while it runs)."""

    def __init__(self, monkeypatch, widget, hold_first=False):
        import threading

        self.started, self.results = [], []
        self.entered, self._release = threading.Event(), threading.Event()
        real, on_result = train_widget.run_train_job, TrainWidget._on_result

        def job(job, cache, progress=None, announce=None, **kwargs):
            self.started.append(job)
            if hold_first and len(self.started) == 1:
                self.entered.set()
                self._release.wait(60)
            return real(job, cache, progress, announce, **kwargs)

        def result(this, res):
            if this is widget:
                self.results.append(res)
            on_result(this, res)

        monkeypatch.setattr(train_widget, "run_train_job", job)
        monkeypatch.setattr(TrainWidget, "_on_result", result)

    def release(self):
        self._release.set()


@pytest.fixture
def record_jobs(monkeypatch):
    """``jobs(widget, hold_first=False) -> Jobs``; a held job is released at the end of the test."""
    made = []

    def make(widget, hold_first=False):
        made.append(Jobs(monkeypatch, widget, hold_first))
        return made[-1]

    yield make
    for recorder in made:
        recorder.release()


def idle(qtbot, widget):
    """Wait until no job runs, none waits and no live update is due."""
    qtbot.waitUntil(lambda: widget.worker is None and widget._waiting is None and not widget._live_timer.isActive(),
                    timeout=TIMEOUT_MS)


def test_live_update_predicts_when_a_stroke_ends_without_a_click(dock, qtbot, two_textures, record_jobs):
    image, truth, _ = two_textures
    viewer, widget, _ = dock(image)
    labels = widget.new_labels_layer()
    jobs = record_jobs(widget)
    widget._live.value = True
    stroke(labels, 1, TEXTURE_STROKES[0][1])  # one class: the update waits, quietly
    qtbot.waitUntil(lambda: len(jobs.started) == 1, timeout=TIMEOUT_MS)
    idle(qtbot, widget)
    assert widget._status.value.startswith("waiting: only class 1 is painted") and widget.predictions is None
    for label, points in TEXTURE_STROKES[1:]:
        stroke(labels, label, points)
        idle(qtbot, widget)
    assert len(jobs.started) == 4 and len(jobs.results) == 2  # one update per stroke; two classes from the third
    pred = widget.predictions
    assert iou(pred.data, truth, 1) > 0.95 and iou(pred.data, truth, 2) > 0.95
    np.testing.assert_array_equal(jobs.started[-1].sources[0].labels, labels.data)
    assert widget.last_result.featurised == 0 and widget.cache.misses == 1  # featurised by the first update only
    assert widget._run.enabled and not widget._cancel.enabled


def paint_phases(viewer, widget, scribbles):
    """Strokes of classes 1 and 2 only (the bright squares, class 3, not yet painted), trained by a click."""
    strokes = np.where(scribbles == 3, 0, scribbles).astype(np.uint8)
    viewer.add_labels(strokes, name="strokes")
    widget._labels_layer.value = viewer.layers["strokes"]
    return viewer.layers["strokes"]


SQUARE_A = [(113, 12), (113, 38)]  # class 3 strokes across the two bright squares of `phases`
SQUARE_B = [(12, 85), (23, 85)]


def stroke_pixels(points):
    layer = Labels(np.zeros((160, 160), np.uint8))
    brush(layer, [(1, points)])
    return layer.data == 1


def test_live_update_strokes_in_quick_succession_make_one_update(dock, qtbot, phases, record_jobs):
    image, truth, scribbles = phases
    viewer, widget, _ = dock(image)
    strokes = paint_phases(viewer, widget, scribbles)
    click_and_wait(qtbot, widget)
    assert 3 not in widget.classifier.classes
    jobs = record_jobs(widget)
    widget._live.value = True
    stroke(strokes, 3, SQUARE_A)
    stroke(strokes, 3, SQUARE_B)  # within the delay: the first stroke's update never starts
    idle(qtbot, widget)
    assert len(jobs.started) == 1 and len(jobs.results) == 1
    used = jobs.started[0].sources[0].labels
    assert np.all(used[stroke_pixels(SQUARE_A)] == 3) and np.all(used[stroke_pixels(SQUARE_B)] == 3)
    assert list(widget.classifier.classes) == [1, 2, 3]
    assert iou(widget.predictions.data, truth, 3) > 0.8


def test_live_update_a_stroke_during_an_update_cancels_it(dock, qtbot, phases, record_jobs):
    image, truth, scribbles = phases
    viewer, widget, _ = dock(image)
    strokes = paint_phases(viewer, widget, scribbles)
    click_and_wait(qtbot, widget)
    jobs = record_jobs(widget, hold_first=True)
    widget._live.value = True
    stroke(strokes, 3, SQUARE_A)
    qtbot.waitUntil(jobs.entered.is_set, timeout=TIMEOUT_MS)  # the first update started, and is held
    stale = widget.worker
    stroke(strokes, 3, SQUARE_B)
    qtbot.waitUntil(lambda: widget._waiting is not None, timeout=TIMEOUT_MS)  # the newer update waits...
    assert stale.abort_requested and widget.worker is stale  # ...for the stale one to stop
    jobs.release()
    idle(qtbot, widget)
    assert len(jobs.started) == 2 and len(jobs.results) == 1  # the stale update wrote nothing
    assert jobs.results[0].segmenter is not jobs.started[0].segmenter
    used = jobs.started[1].sources[0].labels
    assert np.all(used[stroke_pixels(SQUARE_A)] == 3) and np.all(used[stroke_pixels(SQUARE_B)] == 3)
    assert iou(widget.predictions.data, truth, 3) > 0.8


def test_live_update_predicts_the_view_first_as_the_whole_plane_has_it(dock, qtbot, phases, monkeypatch):
    image, truth, scribbles = phases
    image = np.tile(image, (2, 2))  # 320 x 320
    viewer, widget, layer = dock(image, show=True)
    strokes = viewer.add_labels(np.tile(np.where(scribbles == 3, 0, scribbles), (2, 2)).astype(np.uint8),
                                name="strokes")
    widget._labels_layer.value = strokes
    viewer.scene.camera.center = (115, 40)  # on the first bright square
    viewer.scene.camera.zoom *= 3
    qtbot.waitUntil(lambda: widget.visible_region() is not None and widget.visible_region()[0].stop < 320,
                    timeout=TIMEOUT_MS)  # napari drew the zoomed view
    view = widget.visible_region()
    seen = []
    show = TrainWidget._show_view

    def record(this, token, image, index, region, labels):  # worker thread
        seen.append((region, labels.copy()))
        show(this, token, image, index, region, labels)

    monkeypatch.setattr(TrainWidget, "_show_view", record)
    widget._live.value = True
    stroke(strokes, 3, SQUARE_A)
    idle(qtbot, widget)
    assert len(seen) == 1
    region, first = seen[0]
    assert region == view and first.shape == (view[0].stop - view[0].start, view[1].stop - view[1].start)
    proba = widget.segmenter.predict_proba(image)  # the same classifier on the whole plane, in one go
    whole = widget.segmenter.to_labels(proba)
    top = np.sort(proba, axis=-1)
    sure = top[..., -1] - top[..., -2] > 1e-5  # not a tie that float rounding may break either way
    assert sure.mean() > 0.99
    np.testing.assert_array_equal(first[sure[region]], whole[region][sure[region]])
    np.testing.assert_array_equal(widget.predictions.data[sure], whole[sure])
    assert 3 in first and 1 in first  # the new class, on screen


def test_live_update_turned_off_stops_updates(dock, qtbot, two_textures, record_jobs):
    image, _, scribbles = two_textures
    viewer, widget, _ = dock(image)
    strokes = viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = strokes
    jobs = record_jobs(widget)
    widget._live.value = True
    stroke(strokes, 1, [(150, 40), (180, 40)])
    qtbot.waitUntil(lambda: len(jobs.results) == 1, timeout=TIMEOUT_MS)
    idle(qtbot, widget)

    stroke(strokes, 2, [(150, 150), (180, 150)])
    widget._live.value = False  # before the delay is over: the update is dropped
    assert not widget._live_timer.isActive() and widget._status.value == "live update off"
    stroke(strokes, 1, [(10, 40), (10, 60)])  # off: strokes start nothing
    qtbot.wait(max(500, 4 * train_widget.LIVE_DELAY_MS))
    assert len(jobs.started) == 1 and widget.worker is None

    other = viewer.add_labels(np.zeros_like(scribbles), name="unrelated")  # not the brush labels
    widget._live.value = True
    stroke(other, 1, [(10, 10), (10, 50)])
    qtbot.wait(max(500, 4 * train_widget.LIVE_DELAY_MS))
    assert len(jobs.started) == 1


def test_live_update_keeps_the_button_working(dock, qtbot, two_textures, record_jobs, notes):
    image, truth, scribbles = two_textures
    viewer, widget, _ = dock(image)
    strokes = viewer.add_labels(scribbles, name="strokes")
    widget._labels_layer.value = strokes
    jobs = record_jobs(widget, hold_first=True)
    widget._live.value = True
    stroke(strokes, 1, [(150, 40), (180, 40)])
    qtbot.waitUntil(jobs.entered.is_set, timeout=TIMEOUT_MS)
    live = widget.worker
    assert widget._run.enabled and widget._bar is None  # a live update: no activity-dock bar
    widget._run.native.click()  # the click cancels the update and runs when it has stopped
    assert live.abort_requested and widget._waiting is not None
    jobs.release()
    idle(qtbot, widget)
    assert len(jobs.started) == 2 and len(jobs.results) == 1 and jobs.results[0].segmenter is jobs.started[1].segmenter
    assert iou(widget.predictions.data, truth, 2) > 0.9
    assert not any("cancelled" in n for n in notes())  # the superseded update is not announced


def test_time_left_comes_from_the_rate_of_the_work_done(dock, two_textures):
    import time

    _, widget, _ = dock(two_textures[0])
    widget._started = time.perf_counter() - 10.0  # 10 s in
    assert widget.seconds_left(250, 1000) == pytest.approx(30.0, rel=0.05)  # a quarter done: 30 s to go
    assert widget.seconds_left(10, 1000) is None, "too little done to tell"
    assert widget.seconds_left(1000, 1000) is None
    widget._started = time.perf_counter() - 0.5
    assert widget.seconds_left(500, 1000) is None, "too early to tell"


def test_a_zarr_layer_larger_than_a_tile_is_read_window_by_window(dock, qtbot, two_textures, tmp_path, monkeypatch):
    """A plain image layer backed by a zarr array on disk: the click fits on its painted windows and
    predicts it window by window (never read whole into a float plane), with the labels the
    in-memory path gives."""
    import zarr

    from napari_dinoseg.segmenter import Segmenter

    monkeypatch.setattr(Segmenter, "tile", 256)
    image, truth, _ = two_textures
    plane, truth = np.tile(image, (4, 5)), np.tile(truth, (4, 5))  # 768 x 960: 12 tiles
    z = zarr.create_array(store=str(tmp_path / "img.zarr"), shape=plane.shape, dtype=plane.dtype, chunks=(256, 256))
    z[:] = plane
    lazy_fits, lazy_predictions = [], []
    fit, windows = Segmenter._training_planes, Segmenter._predict_windows
    monkeypatch.setattr(Segmenter, "_training_planes", lambda self, images, *a, **k: lazy_fits.append(
        [type(i).__name__ for i in images]) or fit(self, images, *a, **k))
    monkeypatch.setattr(Segmenter, "_predict_windows", lambda self, *a, **k: lazy_predictions.append(1) or windows(
        self, *a, **k))
    viewer, widget, layer = dock(zarr.open_array(str(tmp_path / "img.zarr"), mode="r"))
    labels = widget.new_labels_layer()
    brush(labels, TEXTURE_STROKES)  # in the first tiles only
    click_and_wait(qtbot, widget)
    assert lazy_fits == [["Array"]] and lazy_predictions == [1]
    pred = widget.predictions.data
    assert iou(pred, truth, 1) > 0.9 and iou(pred, truth, 2) > 0.9
    # the painted windows come from the dock's cache (float16, their cores and the smoothing's
    # reach): the whole-plane prediction's labels up to float rounding (2 pixels of 737 280 here)
    assert (pred == widget.segmenter.segment(plane)).mean() > 0.9999


def test_a_numpy_layer_too_large_for_the_cache_is_read_window_by_window(dock, qtbot, two_textures, monkeypatch):
    """Over WINDOWED_PIXELS a numpy layer takes the zarr path: trained on its painted windows,
    predicted window by window, the labels those of the whole-plane prediction."""
    from napari_dinoseg._widgets import _train_job
    from napari_dinoseg.segmenter import Segmenter

    monkeypatch.setattr(Segmenter, "tile", 256)
    monkeypatch.setattr(_train_job, "WINDOWED_PIXELS", 500_000)
    image, truth, _ = two_textures
    plane, truth = np.tile(image, (4, 5)), np.tile(truth, (4, 5))  # 768 x 960 = 737 280 px
    fits, probabilities = [], []
    fit, proba = Segmenter._training_planes, Segmenter.predict_proba
    monkeypatch.setattr(Segmenter, "_training_planes", lambda self, images, *a, **k: fits.append(
        [type(i).__name__ for i in images]) or fit(self, images, *a, **k))
    monkeypatch.setattr(Segmenter, "predict_proba", lambda self, *a, **k: probabilities.append(1) or proba(
        self, *a, **k))
    viewer, widget, layer = dock(plane)
    brush(widget.new_labels_layer(), TEXTURE_STROKES)
    click_and_wait(qtbot, widget)
    assert fits == [["WindowedArray"]]
    assert probabilities == []  # labels written window by window: no (H, W, K) float plane
    pred = widget.predictions.data
    assert iou(pred, truth, 1) > 0.9 and iou(pred, truth, 2) > 0.9
    assert (pred == widget.segmenter.segment(plane)).mean() > 0.9999  # up to float rounding, as above
