"""Regenerate the screenshots in docs/images from a real napari session (needs a display or xvfb-run).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from napari.qt import get_qapp
from qtpy.QtCore import QEventLoop, Qt

from napari_dinoseg._widgets.demo import build_viewer
from napari_dinoseg._widgets.train_widget import UNCERTAINTY

OUT = Path(__file__).resolve().parent / "images"


def click_and_wait(widget) -> None:
    worker = widget.run()
    loop = QEventLoop()
    worker.finished.connect(loop.quit)
    if widget.worker is not None:
        loop.exec()
    for _ in range(10):
        get_qapp().processEvents()
        time.sleep(0.05)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    viewer, widget = build_viewer(show=True)
    viewer.reset_view()
    get_qapp().processEvents()
    viewer.screenshot(str(OUT / "before_train_ihc.png"), canvas_only=False)

    click_and_wait(widget)
    viewer.reset_view()
    viewer.screenshot(str(OUT / "train_widget_ihc.png"), canvas_only=False)

    widget._want_uncertainty.value = True
    click_and_wait(widget)
    widget.predictions.visible = False
    viewer.screenshot(str(OUT / "uncertainty_ihc.png"), canvas_only=False)

    # DINOv2 mode. No weights can be downloaded on the machine that makes these pictures, so
    # this one runs with RANDOM weights: it shows the controls and the mechanics, not DINOv2's quality.
    widget._want_uncertainty.value = False
    viewer.layers.remove(f"{widget._image.value.name} {UNCERTAINTY}")
    widget.predictions.visible = True
    widget.features.use("vit", weights="random")
    click_and_wait(widget)
    viewer.screenshot(str(OUT / "dinov2_mode_random_weights.png"), canvas_only=False)
    viewer.close()
    unsupervised()
    similarity()
    two_images()
    fresh_from_the_menu()


def fresh_from_the_menu() -> None:
    """The train widget as a new user first meets it: a fresh viewer holding only an image, the
    widget opened the way the Plugins menu opens it, no Labels layer; classical, then DINOv2
    mode (on this machine without weights: the widget says what is missing before any work)."""
    import napari

    from napari_dinoseg._sample_data import ihc_image

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.add_image(ihc_image(), name="ihc micrograph", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: train")
    for _ in range(10):
        get_qapp().processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(OUT / "train_widget_fresh_classical.png"), canvas_only=False)
    widget.features.kind.value = "vit"  # without weights, the plan line says what is missing
    for _ in range(10):
        get_qapp().processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(OUT / "train_widget_fresh_dinov2.png"), canvas_only=False)
    print(widget.features.plan.value)
    viewer.close()


def unsupervised() -> None:
    """The unsupervised widget on the sample with classical features (no weights needed)."""
    import napari

    from napari_dinoseg._sample_data import ihc_image
    from napari_dinoseg._widgets.unsupervised_widget import UnsupervisedWidget

    viewer = napari.Viewer(show=True)
    viewer.add_image(ihc_image(), name="ihc micrograph", rgb=True)
    widget = UnsupervisedWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: unsupervised", area="right")
    viewer.window.resize(1500, 950)
    widget.features.kind.value = "classical"
    widget._k.value = 20
    click_and_wait(widget)
    viewer.layers["ihc micrograph foreground"].visible = False
    viewer.reset_view()
    viewer.screenshot(str(OUT / "unsupervised_classical_ihc.png"), canvas_only=False)
    viewer.close()
    print(f"wrote screenshots to {OUT}")


def similarity() -> None:
    """The "find similar (click)" widget, opened from the Plugins menu, on a synthetic image: a
    fine-grained texture planted in discs on a smooth background of the same mean intensity (the
    test image of tests/test_similarity.py, larger); two clicks in one disc, CLASSICAL features."""
    import importlib.util

    import napari

    spec = importlib.util.spec_from_file_location("conftest", OUT.parents[1] / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    centres = [(50, 50), (60, 190), (150, 110), (200, 40), (215, 215), (130, 250)]
    image, _ = conftest.planted_texture(0, 288, centres, 22)

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.add_image(image, name="planted texture")
    _, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: find similar (click)")
    widget.features.kind.value = "classical"
    widget.add_points_layer()
    viewer.layers["clicks"].add([[50, 50], [58, 44]])
    click_and_wait(widget)
    viewer.reset_view()
    get_qapp().processEvents()
    viewer.screenshot(str(OUT / "similarity_widget.png"), canvas_only=False)
    viewer.close()


def match() -> None:
    """The "match two images" widget on a textured synthetic image and a shifted crop of it, with a
    RANDOMLY INITIALISED DINOv2-S (keys of block 9): it shows the mechanics, not DINOv2's results."""
    import napari
    from scipy import ndimage

    rng = np.random.default_rng(0)
    base = sum(ndimage.gaussian_filter(rng.normal(size=(300, 360)), s) * s for s in (1, 3, 8))
    base = ((base - base.min()) / np.ptp(base) * 255).astype(np.uint8)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 800)
    viewer.add_image(base[28:, 42:], name="A")
    viewer.add_image(base[:272, :318], name="B (A shifted by 28, 42 px)")
    _, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: match two images")
    widget.features.use("vit", weights="random", views="one view", stride=14, device="cpu")
    widget.features.facet.value, widget.features.layer.value = "key", 9
    widget._n.value = 20
    click_and_wait(widget)  # the widget switches the grid on and fits it: no reset_view here
    viewer.screenshot(str(OUT / "match_widget_random_weights.png"), canvas_only=False)
    print(widget._status.value)
    viewer.close()


def parts() -> None:
    """The unsupervised widget's parts mode on a synthetic stack (objects of two textures at other
    places in each slice), CLASSICAL features (no attention: every pixel is foreground)."""
    import importlib.util

    import napari

    spec = importlib.util.spec_from_file_location("unsup", OUT.parents[1] / "tests" / "test_unsupervised_widget.py")
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    stack, _ = tests.two_part_objects()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.add_image(stack, name="two-part objects")
    _, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: unsupervised")
    widget.features.use("classical")
    widget.features.sigmas.value = "1, 2, 4"  # fine filters: less of the objects spills into the background
    widget._mode.value = "parts (co-segmentation)"
    widget._scope.value = "whole stack (co-segmentation)"
    widget._n_parts.value = 3
    click_and_wait(widget)
    viewer.grid.enabled = False
    viewer.dims.set_current_step(0, 1)
    viewer.reset_view()
    get_qapp().processEvents()
    viewer.screenshot(str(OUT / "parts_mode_classical.png"), canvas_only=False)
    print(widget._status.value)
    viewer.close()


def two_images() -> None:
    """Train on two superalloy SEM images of different brightness (simulated strokes from their
    ground truth, as in benchmarks/quality.py), predict a third; needs ../shared/evaldata."""
    import importlib.util
    import sys

    import napari
    import tifffile

    from napari_dinoseg._widgets.train_widget import TrainWidget

    data = Path(__file__).resolve().parents[2] / "shared" / "evaldata" / "nasa_micronet"
    if not data.exists():
        print(f"skipped the two-image screenshot: no {data}")
        return
    spec = importlib.util.spec_from_file_location("quality", OUT.parents[1] / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = quality
    spec.loader.exec_module(quality)

    viewer = napari.Viewer(show=True)
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: train", area="right")
    viewer.window.resize(1500, 950)
    for i, name in enumerate(("super_spot1_0d_0", "super_spot1_180d_5")):
        image, gt = quality._read(data, name)
        layer = viewer.add_image(image, name=name)
        widget._image.value = layer
        widget.new_labels_layer().data[:] = quality.simulate_scribbles(gt, 0.01 * gt.size / 2, seed=i)
    third = viewer.add_image(tifffile.imread(data / "images" / "super_spot5_180d_2.tif"), name="super_spot5_180d_2")
    widget._image.value = third
    widget._train_on.value = "every image with labels"
    click_and_wait(widget)
    for layer in viewer.layers:
        layer.visible = layer.name in (third.name, f"{third.name} predictions")
    viewer.reset_view()
    get_qapp().processEvents()
    viewer.screenshot(str(OUT / "train_two_images_super.png"), canvas_only=False)
    print(widget.features.plan.value)
    viewer.close()


def _quality_module():
    """benchmarks/quality.py (reading the evaluation sets, simulated strokes), or None without ../shared/evaldata."""
    import importlib.util
    import sys

    data = Path(__file__).resolve().parents[2] / "shared" / "evaldata"
    if not data.exists():
        print(f"skipped: no {data}")
        return None, data
    spec = importlib.util.spec_from_file_location("quality", OUT.parents[1] / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = quality
    spec.loader.exec_module(quality)
    return quality, data


def _settle(viewer, seconds: float = 0.5) -> None:
    for _ in range(int(seconds / 0.05)):
        get_qapp().processEvents()
        time.sleep(0.05)


def each_image_its_prediction() -> None:
    """Two superalloy SEM images opened one after the other (the second covers the first), each with
    simulated strokes; one classifier trained on both; each image predicted in turn: each gets its
    own '<image> predictions' layer directly above its strokes. Grid view shows both (the
    train dock opened from the Plugins menu, a 1280x800 window); needs ../shared/evaldata."""
    import napari

    quality, data = _quality_module()
    if quality is None:
        return
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 800)
    names = ("super_spot1_0d_0", "super_spot1_180d_5")
    layers = []
    for i, name in enumerate(names):
        image, gt = quality._read(data / "nasa_micronet", name)
        layers.append(viewer.add_image(image, name=name))
    _, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: train")
    for i, layer in enumerate(layers):
        _, gt = quality._read(data / "nasa_micronet", layer.name)
        widget._image.value = layer
        widget.new_labels_layer().data[:] = quality.simulate_scribbles(gt, 0.01 * gt.size / 2, seed=i)
    widget._train_on.value = "every image with labels"
    for layer in (layers[1], layers[0]):  # the image opened second first, then the covered one
        widget._image.value = layer
        click_and_wait(widget)
    order = [lay.name for lay in viewer.layers]
    print("layer order, bottom to top:", order)
    from napari_dinoseg._widgets.match_widget import viewer_grid

    grid = viewer_grid(viewer)
    grid.stride, grid.enabled = 3, True  # each image with its strokes and its predictions in one cell
    viewer.reset_view()
    _settle(viewer)
    viewer.screenshot(str(OUT / "two_images_each_its_prediction.png"), canvas_only=False)
    viewer.close()


def three_docks() -> None:
    """Train, apply to folder and unsupervised opened from the Plugins menu at once in a 1280x800
    window, on the sample micrograph with its example strokes."""
    import napari

    from napari_dinoseg._sample_data import sample_ihc

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 800)
    for data, kwargs, kind in sample_ihc():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    docks = [viewer.window.add_plugin_dock_widget("napari-dinoseg", name)[0]
             for name in ("dinoseg: train", "dinoseg: apply to folder", "dinoseg: unsupervised")]
    viewer.reset_view()
    _settle(viewer)
    window = viewer.window._qt_window
    print("window", window.width(), "x", window.height(), "docks", [d.height() for d in docks])
    viewer.screenshot(str(OUT / "three_docks_1280x800.png"), canvas_only=False)
    viewer.close()


def shift_warning() -> None:
    """Apply to folder: a classifier painted on one superalloy SEM image (simulated strokes) applied
    to two more of its set, a contrast-inverted copy of its training image and a fluorescence nuclei
    image; the report names the two unlike images. Needs ../shared/evaldata."""
    import tempfile

    import napari
    import tifffile

    from napari_dinoseg import FeatureConfig, Segmenter

    quality, data = _quality_module()
    if quality is None:
        return
    work = Path(tempfile.mkdtemp(prefix="dinoseg-shift-"))
    folder = work / "folder"
    folder.mkdir()
    image, gt = quality._read(data / "nasa_micronet", "super_spot1_0d_0")
    strokes = quality.simulate_scribbles(gt, 0.01 * gt.size / 2, seed=0)
    bundle = Segmenter(FeatureConfig()).fit(image, strokes).save(work / "super.dinoseg")
    for name in ("super_spot1_180d_5", "super_spot5_180d_2"):
        tifffile.imwrite(folder / f"{name}.tif", tifffile.imread(data / "nasa_micronet" / "images" / f"{name}.tif"))
    tifffile.imwrite(folder / "super_spot1_0d_0_inverted.tif", 255 - image)
    nuclei = sorted((data / "stardist_dsb2018_nuclei" / "images").glob("*.tif"))[0]
    tifffile.imwrite(folder / "nuclei.tif", tifffile.imread(nuclei))
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 800)
    _, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: apply to folder")
    widget._bundle.value, widget._inputs.value, widget._out.value = bundle, folder, work / "out"
    click_and_wait(widget)
    _settle(viewer, 1.0)
    print(widget._report.value)
    viewer.screenshot(str(OUT / "apply_to_folder_shift_warning.png"), canvas_only=False)
    viewer.close()


def measure_widget() -> None:
    """The measure dock, opened from the Plugins menu in a 1280x800 window, on a superalloy SEM
    image and its ground-truth mask (NASA MicroNet; class names from its classes.json as the mask
    layer's features), widened to 560 px: the summary table and the size histograms. No pixel size
    is known for these images, so sizes are in px. Needs ../shared/evaldata."""
    import json

    import napari

    quality, data = _quality_module()
    if quality is None:
        return
    folder = data / "nasa_micronet"
    name = "super_spot1_0d_0"
    image, mask = quality._read(folder, name)
    classes = json.loads((folder / "classes.json").read_text())["classes"]["super_*"]
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 800)
    viewer.add_image(image, name=name)
    viewer.add_labels(mask.astype(np.uint8), name=f"{name} mask", opacity=0.5,
                      features={"index": [int(k) for k in classes], "name": list(classes.values())})
    dock, widget = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: measure")
    widget._labels_layer.value = viewer.layers[f"{name} mask"]
    widget._image.value = viewer.layers[name]
    click_and_wait(widget)
    widget.tables.setCurrentIndex(0)  # the summary per class
    widget.plots.setCurrentIndex(1)  # their sizes
    window = viewer.window._qt_window
    window.resizeDocks([dock], [560], Qt.Orientation.Horizontal)  # widened, as one does to read tables
    _settle(viewer, 0.5)
    viewer.reset_view()
    _settle(viewer, 1.0)
    print(widget._status.value)
    viewer.screenshot(str(OUT / "measure_widget.png"), canvas_only=False)
    viewer.close()


def predict_then_measure() -> None:
    """A new user's path to numbers, in a 1280x800 window: a viewer holding one superalloy image
    opens the measure dock from the Plugins menu (nothing to measure yet: it says so), opens a
    second image, paints it in the train dock, predicts it, then measures the predictions with the
    measure dock and the apply-to-folder dock open beside it; needs ../shared/evaldata."""
    import napari

    quality, data = _quality_module()
    if quality is None:
        return
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 800)
    first, _ = quality._read(data / "nasa_micronet", "super_spot1_0d_0")
    viewer.add_image(first, name="super_spot1_0d_0")
    _, measure = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: measure")
    _settle(viewer)
    viewer.screenshot(str(OUT / "measure_fresh_viewer.png"), canvas_only=False)
    print("fresh measure dock:", measure._status.value)
    second, gt = quality._read(data / "nasa_micronet", "super_spot3_180d_2")
    image = viewer.add_image(second, name="super_spot3_180d_2")
    _, train = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: train")
    viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: apply to folder")
    train._image.value = image
    train.new_labels_layer().data[:] = quality.simulate_scribbles(gt, 0.01 * gt.size, seed=0)
    click_and_wait(train)
    _settle(viewer)
    print("measure dock offers:", measure._labels_layer.value.name if measure._labels_layer.value is not None else None)
    click_and_wait(measure)
    viewer.reset_view()
    _settle(viewer, 1.0)
    print("layer order, bottom to top:", [layer.name for layer in viewer.layers])
    print("measure dock:", measure._status.value)
    viewer.screenshot(str(OUT / "predict_then_measure_1280x800.png"), canvas_only=False)
    viewer.close()


def multiscale_in_view() -> None:
    """The train dock, opened from the Plugins menu in a 1280x800 window, on a 4096² three-level
    OME-Zarr pyramid (synthetic, 0.02 µm/px): dots of the true phases painted on the part in view,
    the dock prepares the view's features meanwhile (docs/images/multiscale_prepared.png); Train /
    Predict predicts that part into the on-disk predictions pyramid; then zoomed out to show it
    among the parts not predicted (docs/images/multiscale_in_view.png)."""
    import tempfile

    import napari

    from napari_dinoseg.ngff import open_ngff
    from napari_dinoseg.ngff_write import create_ngff, mark_complete, write_pyramid

    side, um = 4096, 0.02
    y, x = np.mgrid[:side, :side].astype(np.float32)
    field = np.sin(y / 97.0 + 0.3) + np.sin(x / 131.0 + 1.1) + np.sin((x + y) / 211.0 + 2.0) + 0.7 * np.sin((x - 2 * y) / 59.0)
    truth = (1 + (field > -0.6) + (field > 0.9)).astype(np.uint8)
    del y, x, field
    rng = np.random.default_rng(0)
    means, noise = np.array([0.30, 0.50, 0.70], np.float32), np.array([0.02, 0.10, 0.04], np.float32)
    value = means[truth - 1] + noise[truth - 1] * rng.standard_normal(truth.shape, np.float32)
    path = Path(tempfile.mkdtemp(prefix="dinoseg-screenshot-")) / "mosaic.ome.zarr"
    made = create_ngff(path, (side, side), np.uint16, chunks=1024, pixel_size_um=um, levels=3, kind="intensity")
    made.levels[0][:] = (np.clip(value, 0, 1) * 65535).astype(np.uint16)
    write_pyramid(made)
    mark_complete(made)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 800)
    image = viewer.add_image(list(open_ngff(path).levels), multiscale=True, name="mosaic", scale=(um, um), units="µm")
    _, train = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: train")
    train._image.value = image
    labels = train.new_labels_layer()
    viewer.scene.camera.center, viewer.scene.camera.zoom = (um * side / 2, um * side / 2), 1.5 / um
    _settle(viewer)
    rows, cols = train.view_in_level()
    labels.brush_size = 7
    for r in range(rows.start + 10, rows.stop - 10, 40):
        for c in range(cols.start + 10, cols.stop - 10, 40):
            patch = truth[r - 8:r + 9, c - 8:c + 9]
            if patch.min() == patch.max():
                labels.paint((r, c), int(patch[0, 0]), refresh=False)
    labels.refresh()
    from napari_dinoseg._widgets._train_pyramid import READY

    for _ in range(1200):  # the view's features, prepared in the background once it settled
        if READY in train._status.value and train.worker is None:
            break
        _settle(viewer, 0.05)
    _settle(viewer)
    print("train dock, the view prepared:", train._status.value)
    viewer.screenshot(str(OUT / "multiscale_prepared.png"), canvas_only=False)
    click_and_wait(train)
    viewer.scene.camera.zoom = 0.6 / um  # the part predicted among the parts not predicted
    _settle(viewer, 1.0)
    print("train dock:", train._status.value)
    viewer.screenshot(str(OUT / "multiscale_in_view.png"), canvas_only=False)
    viewer.close()


def volume_in_3d() -> None:
    """The train dock, opened from the Plugins menu in a 1280x800 window, on a synthetic two-phase
    volume (48 x 160 x 160, voxels 2 : 1 : 1, pores of blurred noise): strokes on two slices, the
    '3-D features (volume)' box ticked, the whole volume predicted; then napari's 3-D view, the
    image as an attenuated maximum projection and the pore phase as lit surfaces
    (docs/images/volume_in_3d.png)."""
    import napari
    from scipy import ndimage

    from napari_dinoseg._widgets.train_widget import SCOPE_STACK

    rng = np.random.default_rng(4)
    shape, spacing = (48, 160, 160), (2.0, 1.0, 1.0)
    field = ndimage.gaussian_filter(rng.normal(size=shape), (2.0, 4.0, 4.0))
    truth = np.where(field > 0.25 * field.std(), 2, 1).astype(np.uint8)
    image = np.where(truth == 2, 70.0, 150.0) + ndimage.gaussian_filter(rng.normal(0, 40, shape), 0.8)
    image = np.clip(image, 0, 255).astype(np.uint8)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 800)
    layer = viewer.add_image(image, name="porous volume", scale=spacing)
    _, train = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: train")
    train._image.value = layer
    labels = train.new_labels_layer()
    strokes = np.zeros(shape, np.uint8)
    grid = np.zeros(shape[1:], bool)
    grid[::3, ::5] = True
    for z in (12, 36):
        for label in (1, 2):
            inside = ndimage.binary_erosion(truth[z] == label, iterations=3) & grid
            strokes[z][inside] = label
    labels.data = strokes
    train.features.volume.value = True
    train._scope.value = SCOPE_STACK
    click_and_wait(train)
    print("train dock:", train._status.value)
    predictions = next(x for x in viewer.layers if x.name.endswith("predictions"))
    print("voxels equal to the truth:", float((np.asarray(predictions.data) == truth).mean()))
    viewer.dims.ndisplay = 3
    for other in viewer.layers:
        other.visible = other is layer or other is predictions
    layer.rendering, layer.colormap, layer.opacity = "attenuated_mip", "gray", 0.5
    predictions.rendering, predictions.opacity, predictions.blending = "iso_categorical", 1.0, "translucent"
    predictions.selected_label, predictions.show_selected_label = 2, True
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    viewer.reset_view()
    camera.angles, camera.zoom = (-20.0, 35.0, 140.0), camera.zoom * 0.8
    _settle(viewer, 1.0)
    viewer.screenshot(str(OUT / "volume_in_3d.png"), canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    import sys

    globals()[sys.argv[1]]() if len(sys.argv) > 1 else main()
