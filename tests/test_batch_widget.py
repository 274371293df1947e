"""The 'apply to folder' widget in a real viewer, and its menu entries."""

import numpy as np
import pytest
import tifffile

napari = pytest.importorskip("napari")

from napari_dinoseg import FeatureConfig, featurise, save_bundle, train  # noqa: E402
from napari_dinoseg._widgets.batch_widget import BatchWidget  # noqa: E402


def test_menu_dialog_applies_a_bundle_to_a_folder(make_napari_viewer, qtbot, tmp_path, two_textures):
    image, truth, scribbles = two_textures
    cfg = FeatureConfig(sigmas=(1, 2), membrane=False)
    bundle = save_bundle(tmp_path / "clf.dinoseg", train(featurise(image, cfg), scribbles), cfg)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        tifffile.imwrite(src / f"img{i}.tif", np.roll(image, 10 * i, axis=1))
    (src / "broken.tif").write_bytes(b"junk")

    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: apply to folder")
    widget._run.native.click()  # nothing chosen yet: refused
    assert widget.worker is None and "choose the classifier file" in widget._status.value
    widget._bundle.value, widget._inputs.value, widget._out.value = bundle, src, tmp_path / "out"
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.summary is not None and len(widget.summary.done) == 3 and len(widget.summary.failed) == 1
    assert "broken.tif" in widget._report.value
    assert "img0_labels" in [layer.name for layer in viewer.layers]  # the first result, opened
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == [f"img{i}_labels.tif" for i in range(3)]


def test_widgets_are_in_the_plugins_and_segment_menus(make_napari_viewer):
    from npe2 import PluginManifest

    make_napari_viewer()
    pm = PluginManifest.from_distribution("napari-dinoseg")
    segment = [item.command for item in pm.contributions.menus["napari/layers/segment"]]
    assert segment == ["napari-dinoseg.batch_widget"]
    from napari._app_model import get_app_model

    ids = {item.command.id for item in get_app_model().menus.get_menu("napari/layers/segment")
           if hasattr(item, "command")}
    assert "napari-dinoseg.batch_widget" in ids


def test_doubtful_images_are_named_in_the_report_and_a_notification(make_napari_viewer, qtbot, tmp_path, phases):
    """A folder image unlike the training images is written but never passed over in silence."""
    from napari.utils.notifications import notification_manager

    from napari_dinoseg import Segmenter

    image, _, scribbles = phases
    bundle = Segmenter(FeatureConfig(sigmas=(1, 2), membrane=False)).fit(image, scribbles).save(tmp_path / "m.dinoseg")
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "same.tif", image)
    tifffile.imwrite(src / "inverted.tif", 255 - image)
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: apply to folder")
    widget._bundle.value, widget._inputs.value, widget._out.value = bundle, src, tmp_path / "out"
    start = len(notification_manager.records)
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert len(widget.summary.done) == 2 and [p for p, _ in widget.summary.warnings] == [str(src / "inverted.tif")]
    assert "1 with warnings" in widget._status.value
    assert "inverted.tif: unlike the training images" in widget._report.value
    notes = [str(n.message) for n in notification_manager.records[start:]]
    assert any("1 image(s) look unlike the training images" in n and "inverted.tif" in n for n in notes)
