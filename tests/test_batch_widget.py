"""The 'apply to folder' widget in a real viewer, and its menu entries."""

import numpy as np
import pytest
import tifffile

napari = pytest.importorskip("napari")

from napari_dinoseg import FeatureConfig, Segmenter, featurise, save_bundle, train  # noqa: E402
from napari_dinoseg._widgets import batch_widget  # noqa: E402
from napari_dinoseg._widgets.batch_widget import MAX_REPORT_LINES, BatchResult, BatchWidget  # noqa: E402
from napari_dinoseg._widgets._sections import controls  # noqa: E402
from napari_dinoseg.batch import BatchSummary  # noqa: E402


@pytest.fixture(autouse=True)
def forget_last_run():
    """Each test starts from an empty widget (the widget remembers the session's last run)."""
    batch_widget._LAST.clear()
    yield
    batch_widget._LAST.clear()


def run_and_wait(widget, qtbot):
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)


def shown_text(widget) -> str:
    return widget._status.value + "\n" + widget._report.value


def bundle_and_folder(tmp_path, two_textures, n: int):
    """A classical classifier trained on the two-texture image, and a folder ``in`` of ``n`` shifted
    copies of that image (``img0.tif`` …): ``(bundle path, folder)``."""
    image, _, scribbles = two_textures
    cfg = FeatureConfig(sigmas=(1, 2), membrane=False)
    bundle = save_bundle(tmp_path / "clf.dinoseg", train(featurise(image, cfg), scribbles), cfg)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(n):
        tifffile.imwrite(src / f"img{i}.tif", np.roll(image, 10 * i, axis=1))
    return bundle, src


def test_menu_dialog_applies_a_bundle_to_a_folder(make_napari_viewer, qtbot, tmp_path, two_textures):
    from napari.utils import progress

    bundle, src = bundle_and_folder(tmp_path, two_textures, 3)
    (src / "broken.tif").write_bytes(b"junk")

    viewer = make_napari_viewer()
    before = viewer.add_image(np.zeros((40, 50), np.uint8), name="on screen before")
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: apply to folder")
    widget._run.native.click()  # nothing chosen yet: refused
    assert widget.worker is None and "choose the classifier file" in widget._status.value
    widget._bundle.value, widget._inputs.value, widget._out.value = bundle, src, tmp_path / "out"
    bars = []

    def record(event):
        bars.extend(event.added)

    progress._all_instances.events.changed.connect(record)
    try:
        run_and_wait(widget, qtbot)
    finally:
        progress._all_instances.events.changed.disconnect(record)
    assert widget.summary is not None and len(widget.summary.done) == 3 and len(widget.summary.failed) == 1
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == [f"img{i}_labels.tif" for i in range(3)]
    assert "broken.tif" in widget._report.value
    assert str(src) not in widget._report.value  # names relative to the input folder
    counts = str(widget.summary).splitlines()[0]
    assert counts.startswith("done 3,") and shown_text(widget).count(counts) == 1
    assert widget._status.value.startswith("finished in ") and "opened img0.tif" in widget._status.value
    # napari's own progress (activity dock; shown for jobs over a second) is closed
    assert not any(bar in progress._all_instances for bar in bars)

    # the first result: its own input image, with its labels on top, the only layers shown
    names = [layer.name for layer in viewer.layers]
    assert names == ["on screen before", "img0", "img0_labels"]
    raw, labels = viewer.layers["img0"], viewer.layers["img0_labels"]
    np.testing.assert_array_equal(raw.data, tifffile.imread(src / "img0.tif"))
    np.testing.assert_array_equal(labels.data, tifffile.imread(tmp_path / "out" / "img0_labels.tif"))
    assert labels.data.shape == raw.data.shape and not raw.rgb
    assert not before.visible and raw.visible and labels.visible
    assert viewer.layers.selection.active is labels

    # a new widget in this session starts from the last run's choices
    again = BatchWidget(viewer)
    assert (again._bundle.value, again._inputs.value, again._out.value) == (bundle, src, tmp_path / "out")

    # a rerun writes nothing new: it opens nothing and says so
    run_and_wait(widget, qtbot)
    assert widget.summary.done == [] and len(widget.summary.skipped) == 3
    assert [layer.name for layer in viewer.layers] == names
    assert "none was opened" in widget._status.value
    counts = str(widget.summary).splitlines()[0]
    assert counts.startswith("done 0,") and shown_text(widget).count(counts) == 1


def test_the_first_result_is_found_from_the_labels_file_not_guessed_from_names(
        make_napari_viewer, qtbot, tmp_path, two_textures):
    """a.png and a.tif share a stem: outputs a_png_labels.tif and a_tif_labels.tif. The first
    input (a.png) is opened, as RGB, found from the source its labels file records."""
    from PIL import Image as PILImage

    image, _, scribbles = two_textures
    rgb = np.stack([image, 255 - image, image // 2], axis=-1)
    bundle = Segmenter(FeatureConfig(sigmas=(1, 2), membrane=False)).fit(rgb, scribbles).save(tmp_path / "m.dinoseg")
    src = tmp_path / "in"
    src.mkdir()
    PILImage.fromarray(np.roll(rgb, 30, axis=0)).save(src / "a.png")
    tifffile.imwrite(src / "a.tif", rgb, photometric="rgb")
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    widget._bundle.value, widget._inputs.value, widget._out.value = bundle, src, tmp_path / "out"
    run_and_wait(widget, qtbot)
    assert len(widget.summary.done) == 2, widget._report.value
    assert [layer.name for layer in viewer.layers] == ["a", "a_png_labels"]
    raw, labels = viewer.layers["a"], viewer.layers["a_png_labels"]
    assert raw.rgb and raw.data.shape == (192, 192, 3) and labels.data.shape == (192, 192)
    np.testing.assert_array_equal(raw.data, np.roll(rgb, 30, axis=0))
    np.testing.assert_array_equal(labels.data, tifffile.imread(tmp_path / "out" / "a_png_labels.tif"))

    # overwrite: the same pair is updated in place, not added again
    widget._overwrite.value = True
    run_and_wait(widget, qtbot)
    assert len(widget.summary.done) == 2 and [layer.name for layer in viewer.layers] == ["a", "a_png_labels"]
    assert viewer.layers["a_png_labels"] is labels


def test_a_long_report_is_cut_and_never_widens_the_dock(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: apply to folder")
    width = widget.native.sizeHint().width()
    deep = "/data/" + "very_long_folder_name_without_spaces" * 8
    summary = BatchSummary(failed=[(f"{deep}/image{i:03d}.tif", "ValueError: cannot read the image") for i in range(300)])
    widget._input_dir = "/elsewhere"
    widget._on_result(BatchResult(summary, note="no image was segmented by this run, so none was opened"))
    lines = widget._report.value.splitlines()
    assert len(lines) == MAX_REPORT_LINES + 1 and lines[-1] == f"… and {301 - MAX_REPORT_LINES} more"
    assert lines[0] == "done 0, skipped 0 (0 already there), failed 300" and "image000.tif" in lines[1]
    assert widget.native.sizeHint().width() <= width


def test_every_control_has_a_label_and_a_tooltip(make_napari_viewer):
    from magicgui.widgets.bases import ButtonWidget

    widget = BatchWidget(make_napari_viewer())
    for control in controls(widget):
        assert control.tooltip, control
        text = control.text if isinstance(control, ButtonWidget) else control.label
        assert text or control is widget._status, control


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
    assert len(widget.summary.done) == 2 and {p for p, _ in widget.summary.warnings} == {str(src / "inverted.tif")}
    assert "1 with warnings" in widget._report.value and "with warnings" not in widget._status.value
    assert "inverted.tif: unlike the training images" in widget._report.value
    notes = [str(n.message) for n in notification_manager.records[start:]]
    assert any("1 image(s) unlike the training images; see the report" in n for n in notes)  # names: in the report


def test_measure_option_writes_the_folder_tables_and_says_where(make_napari_viewer, qtbot, tmp_path, two_textures):
    import pandas as pd

    bundle, src = bundle_and_folder(tmp_path, two_textures, 2)
    widget = BatchWidget(make_napari_viewer())
    widget._bundle.value, widget._inputs.value, widget._out.value = bundle, src, tmp_path / "out"
    widget._open_first.value = False
    widget._measure.value, widget._pixel_size.value = True, "zero"
    widget._run.native.click()  # a pixel size that is not a number: refused before the run
    assert widget.worker is None and "pixel size" in widget._status.value and not (tmp_path / "out").exists()
    widget._pixel_size.value, widget._min_size.value = "0.5", 3
    run_and_wait(widget, qtbot)
    folder = tmp_path / "out" / "measurements"
    assert f"measurements in {folder}" in widget._status.value
    fractions = pd.read_csv(folder / "fractions.csv")
    assert sorted(set(fractions["image"])) == ["img0.tif", "img1.tif"]
    assert (fractions["pixel_size_um"] == 0.5).all()
    objects = pd.read_csv(folder / "objects.csv")
    assert len(objects) and objects["area_px"].min() >= 3 and "area_um2" in objects
    summary = pd.read_csv(folder / "summary.csv")
    assert list(summary["images"].unique()) == [2]
    assert "mean_fraction" in widget._report.value or "mean fraction" in widget._report.value


def test_an_ome_zarr_folder_gets_ome_zarr_outputs_opened_as_a_multiscale_result(make_napari_viewer, qtbot, tmp_path,
                                                                                 two_textures, monkeypatch):
    """OME-Zarr inputs in the folder: OME-Zarr labels with a pyramid, and 'open the first result'
    shows the input's levels and the labels' levels as multiscale layers (read lazily)."""
    from napari_dinoseg.ngff import is_complete
    from napari_dinoseg.ngff_write import create_ngff, mark_complete, write_pyramid

    monkeypatch.setattr(Segmenter, "tile", 256)
    bundle, _ = bundle_and_folder(tmp_path, two_textures, 0)
    src = tmp_path / "zin"
    src.mkdir()
    plane = np.tile(two_textures[0], (8, 8))  # 1536²: 2 levels of 1024 px or less
    made = create_ngff(src / "mosaic.ome.zarr", plane.shape, plane.dtype, chunks=256, pixel_size_um=0.5,
                       kind="intensity")
    made.levels[0][:] = plane
    write_pyramid(made)
    mark_complete(made)
    tifffile.imwrite(src / "small.tif", two_textures[0])
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: apply to folder")
    widget._bundle.value, widget._inputs.value, widget._out.value = bundle, src, tmp_path / "out"
    widget._zarr.value = True
    run_and_wait(widget, qtbot)
    assert len(widget.summary.done) == 2 and not widget.summary.failed, widget._report.value
    for name in ("mosaic_labels.ome.zarr", "small_labels.ome.zarr"):
        assert is_complete(tmp_path / "out" / name)
    assert "opened mosaic.ome.zarr" in widget._status.value
    image, labels = viewer.layers["mosaic"], viewer.layers["mosaic_labels"]
    assert image.multiscale and labels.multiscale and len(labels.data) == 2
    assert labels.data[0].shape == plane.shape
    assert [layer.name for layer in viewer.layers if layer.visible] == ["mosaic", "mosaic_labels"]
