"""Volumes as users hold them, in a real viewer under Xvfb: two anisotropic volumes open, the train,
unsupervised and apply docks opened from the Plugins menu in a 1280x800 window; the volume opened
second trained with 3-D features while the first is segmented without labels at the same time;
the classifier saved, then applied to a folder of 3-D TIFFs by the apply dock, whose first result
opens at the voxel spacing of its file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

napari = pytest.importorskip("napari")

from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig  # noqa: E402
from napari_dinoseg._widgets import batch_widget  # noqa: E402
from napari_dinoseg._widgets._feature_controls import SHARED_CACHE  # noqa: E402
from napari_dinoseg._widgets.train_widget import SCOPE_STACK  # noqa: E402
from napari_dinoseg._widgets.unsupervised_widget import CAS_LAYER  # noqa: E402

TIMEOUT_MS = 180_000
SHAPE = (16, 48, 48)
SPACING = (2.0, 1.0, 1.0)


def two_phases(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 image, truth {1, 2})`` of ``SHAPE``: blobs of blurred noise a few slices deep."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=SHAPE), (1.5, 3, 3))
    truth = np.where(field > 0, 2, 1).astype(np.uint8)
    image = np.where(truth == 2, 170.0, 80.0) + ndimage.gaussian_filter(rng.normal(0, 30, SHAPE), 0.7)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def strokes_of(truth: np.ndarray, slices=(4, 11)) -> np.ndarray:
    from scipy import ndimage

    strokes = np.zeros(truth.shape, np.uint8)
    grid = np.zeros(truth.shape[1:], bool)
    grid[::2, ::4] = True
    for z in slices:
        for label in (1, 2):
            strokes[z][ndimage.binary_erosion(truth[z] == label, iterations=2) & grid] = label
    return strokes


def test_two_volumes_three_docks_train_the_second_segment_the_first_and_apply_to_a_folder(
        make_napari_viewer, qtbot, tmp_path, no_weights):
    SHARED_CACHE.clear()
    batch_widget._LAST.clear()
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1280, 800)
    cells, cells_truth = two_phases(1)
    rock, rock_truth = two_phases(2)
    cells_layer = viewer.add_image(cells, name="cells", scale=SPACING)
    rock_layer = viewer.add_image(rock, name="rock", scale=SPACING)  # opened second
    _, train = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: train")
    _, unsupervised = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: unsupervised")
    _, apply = viewer.window.add_plugin_dock_widget("napari-dinoseg", "dinoseg: apply to folder")

    train._image.value = rock_layer
    strokes = train.new_labels_layer()
    strokes.data = strokes_of(rock_truth)
    train.features.sigmas.value = "1, 2"
    train.features.volume.value = True
    train._scope.value = SCOPE_STACK
    unsupervised._image.value = cells_layer
    unsupervised.features.sigmas.value = "1, 2"
    unsupervised._k.value = 6
    unsupervised.features.volume.value = True

    train._run.native.click()
    unsupervised._run.native.click()
    assert train.worker is not None and unsupervised.worker is not None  # both docks at work at once
    qtbot.waitUntil(lambda: train.worker is None and unsupervised.worker is None, timeout=TIMEOUT_MS)

    # the train dock's result is the second volume's, at its scale, right above it
    predictions = train.predictions
    assert predictions.name == "rock predictions" and predictions.data.shape == SHAPE
    assert tuple(predictions.scale) == SPACING
    names = [layer.name for layer in viewer.layers]
    assert names.index("rock predictions") > names.index("rock")
    reference = Segmenter(FeatureConfig(kind="classical", dims=3, sigmas=(1, 2)), TrainConfig())
    reference.fit(rock, strokes.data, spacing=SPACING)
    np.testing.assert_array_equal(predictions.data, reference.segment(rock, spacing=SPACING))
    assert np.mean(predictions.data == rock_truth) > 0.9
    assert "predicted all 16 slices of 'rock'" in train._status.value
    # the unsupervised dock's is the first volume's, and nothing of one went to the other
    cas = viewer.layers[f"cells {CAS_LAYER}"]
    assert cas.data.shape == SHAPE and tuple(cas.scale) == SPACING
    assert not any(layer.name.startswith("cells") and "predictions" in layer.name for layer in viewer.layers)
    assert not any(layer.name.startswith("rock") and CAS_LAYER in layer.name for layer in viewer.layers)

    # saved, then applied to a folder of 3-D TIFFs whose files say their voxel size (ImageJ)
    train._bundle_file.value = tmp_path / "rock"
    bundle = train.save_classifier()
    folder = tmp_path / "volumes"
    folder.mkdir()
    tifffile.imwrite(folder / "rock.tif", rock, imagej=True, resolution=(1.0, 1.0),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    apply._bundle.value, apply._inputs.value, apply._out.value = bundle, folder, tmp_path / "out"
    apply._run.native.click()
    qtbot.waitUntil(lambda: apply.worker is None, timeout=TIMEOUT_MS)
    assert apply.summary is not None and len(apply.summary.done) == 1, apply._report.value
    written = tifffile.imread(tmp_path / "out" / "rock_labels.tif")
    np.testing.assert_array_equal(written, predictions.data)  # the folder gets what the viewer showed
    opened_image, opened_labels = apply.opened
    assert opened_labels.data.shape == SHAPE
    np.testing.assert_array_equal(opened_labels.data, written)
    assert tuple(opened_image.scale) == tuple(opened_labels.scale) == SPACING  # at the file's voxel size
