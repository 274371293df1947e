"""The unsupervised widget in a real napari viewer (random ViT weights: mechanics only).

Every test runs on a machine without DINOv2 weights and offline (an empty weights folder and
Hugging Face cache, ``HF_HUB_OFFLINE=1``), unless it puts a weights file there itself.
"""

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari.utils.notifications import notification_manager  # noqa: E402

from napari_dinoseg._widgets._feature_controls import SHARED_CACHE  # noqa: E402
from napari_dinoseg._widgets.unsupervised_widget import (  # noqa: E402
    BOXES_LAYER, CAS_LAYER, FOREGROUND_LAYER, MODE_PARTS, PARTS_LAYER, SCOPE_STACK, UnsupervisedWidget,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def weights_dir(no_weights):
    """No weights and no model hub: an empty weights folder and Hugging Face cache, offline."""
    return no_weights


@pytest.fixture
def notes():
    """The messages of the napari notifications shown since the test began."""
    start = len(notification_manager.records)
    return lambda: [str(n.message) for n in notification_manager.records[start:]]


@pytest.fixture
def blobs():
    """Two bright squares on a dark noisy background, 140 x 168 px."""
    rng = np.random.default_rng(0)
    img = np.full((140, 168), 40.0)
    img[20:60, 20:70] = 200
    img[80:125, 100:150] = 220
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def dock(make_napari_viewer):
    def make(image):
        SHARED_CACHE.clear()
        viewer = make_napari_viewer()
        viewer.add_image(image, name="img")
        widget = UnsupervisedWidget(viewer)
        viewer.window.add_dock_widget(widget, name="dinoseg: unsupervised")
        widget.features.use("vit", weights="random", views="one view", stride=14, device="cpu")
        widget._k.value = 6
        return viewer, widget

    return make


def segment(qtbot, widget):
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)


def test_segment_writes_three_layers_and_use_as_labels(dock, qtbot, blobs):
    viewer, widget = dock(blobs)
    segment(qtbot, widget)
    assert widget.result is not None, widget._status.value
    cas, fg = viewer.layers[f"img {CAS_LAYER}"], viewer.layers[f"img {FOREGROUND_LAYER}"]
    assert cas.data.shape == fg.data.shape == blobs.shape
    assert 1 <= cas.data.min() and cas.data.max() == widget.result.labels.max()
    assert set(np.unique(fg.data)) <= {0, 1} and fg.data.any()
    boxes = viewer.layers[f"img {BOXES_LAYER}"]
    assert isinstance(boxes, napari.layers.Shapes) and len(boxes.data) == sum(len(b) for b in widget.result.boxes)
    assert "classes from 6 clusters" in widget._status.value

    # the second run reuses the features cached by the first
    segment(qtbot, widget)
    assert SHARED_CACHE.hits == 1

    square = int(np.bincount(cas.data[30:50, 30:60].ravel()).argmax())
    widget._classes.value = str(square)
    widget._as_label.value = 2
    target = widget.use_as_labels()
    assert target is not None and target.data.shape == blobs.shape
    np.testing.assert_array_equal(target.data == 2, cas.data == square)
    widget._classes.value = "x"
    assert widget.use_as_labels() is None and "CAS classes" in widget._status.value


def test_stack_co_segmentation(dock, qtbot, blobs):
    moved = np.roll(blobs, (10, -15), axis=(0, 1))  # the same materials elsewhere
    viewer, widget = dock(np.stack([blobs, moved]))
    widget._scope.value = SCOPE_STACK
    segment(qtbot, widget)
    cas = viewer.layers[f"img {CAS_LAYER}"].data
    assert cas.shape == (2, *blobs.shape)

    def majority(a):
        return int(np.bincount(a.ravel()).argmax())

    # one clustering for both slices: the same material gets the same id in each
    assert majority(cas[0][85:120, 105:145]) == majority(cas[1][95:130, 90:130])
    assert majority(cas[0][5:15, 100:160]) == majority(cas[1][0:10, 100:140])
    assert all(len(np.asarray(b)) == 4 and np.asarray(b).shape[1] == 3 for b in viewer.layers[f"img {BOXES_LAYER}"].data)


def test_classical_features_find_the_squares_and_say_what_they_lack(dock, qtbot, notes, blobs):
    viewer, widget = dock(blobs)
    widget.features.kind.value = "classical"
    assert widget._granularity.native.isHidden()  # DINOv2 merging only
    segment(qtbot, widget)
    cas = viewer.layers[f"img {CAS_LAYER}"].data
    assert cas.max() == 2 and cas[5:15, 5:15].max() == 1  # two classes; 1 is the background
    assert (viewer.layers[f"img {FOREGROUND_LAYER}"].data == 1).sum() == pytest.approx(40 * 50 + 45 * 50, rel=0.05)
    assert len(viewer.layers[f"img {BOXES_LAYER}"].data) == 2  # one box per square
    assert widget._status.value.startswith("2 classes (classical")
    assert any("largest connected region is taken as background" in n for n in notes())


def test_scope_choice_only_for_images_with_several_planes(make_napari_viewer, blobs):
    viewer = make_napari_viewer()
    viewer.add_image(blobs, name="plane")
    widget = UnsupervisedWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: unsupervised")
    assert widget._scope.native.isHidden()
    viewer.add_image(np.stack([blobs, blobs[::-1]]), name="stack")  # a new layer: the choices update
    widget._image.value = viewer.layers["stack"]
    assert not widget._scope.native.isHidden()
    viewer.add_image(np.stack([blobs] * 3, axis=-1), name="rgb", rgb=True)  # one plane of colour
    widget._image.value = viewer.layers["rgb"]
    assert widget._scope.native.isHidden()
    viewer.add_image(blobs[None], name="one slice")
    widget._image.value = viewer.layers["one slice"]
    assert widget._scope.native.isHidden()
    widget._image.value = viewer.layers["stack"]
    assert not widget._scope.native.isHidden()


def test_without_weights_classical_is_the_default_and_the_widget_says_why(make_napari_viewer, blobs, weights_dir):
    viewer = make_napari_viewer()
    viewer.add_image(blobs, name="img")
    widget = UnsupervisedWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: unsupervised")
    assert widget.features.kind.value == "classical"
    note = widget._weights_note
    assert not note.native.isHidden()
    assert "CLS attention" in note.value and "semantic features" in note.value
    assert "dinov2_vits14_pretrain.pth" in note.value and str(weights_dir) in note.value
    assert len(note.value) < 300, "a few lines; the whole story is in the tooltip"
    assert widget.features.kind.tooltip == note.tooltip and "(offline)" in note.tooltip


def test_with_weights_dinov2_is_the_default(make_napari_viewer, blobs, weights_dir):
    (weights_dir / "dinov2_vits14_pretrain.pth").write_bytes(b"")  # found, not loaded
    viewer = make_napari_viewer()
    viewer.add_image(blobs, name="img")
    widget = UnsupervisedWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: unsupervised")
    assert widget.features.kind.value == "vit"
    assert widget._weights_note.native.isHidden() and not widget._granularity.native.isHidden()


@pytest.mark.parametrize("kind", ["vit", "hybrid"])
def test_dinov2_without_weights_is_refused_before_any_work(dock, qtbot, notes, blobs, weights_dir, kind):
    viewer, widget = dock(blobs)
    widget.features.use(kind, weights="", views="one view", stride=14, device="cpu")
    widget._run.native.click()
    assert widget.worker is None and widget._run.enabled  # refused on the spot: nothing started
    assert widget._status.value.startswith("error: no weights for 'dinov2_vits14'")
    assert str(weights_dir) in widget._status.value
    assert any("no weights for 'dinov2_vits14'" in n for n in notes())
    assert f"img {CAS_LAYER}" not in viewer.layers


def test_use_as_labels_before_segmenting_is_refused(dock, qtbot, blobs):
    viewer, widget = dock(blobs)
    assert widget.use_as_labels() is None
    assert widget._status.value.startswith("error: run Segment on 'img' first")


def two_part_objects(seed: int = 0):
    """(stack uint8 (3, 96, 120), truth (3, 96, 120) in {0, 1, 2}): in each plane a rectangle whose
    left half is a coarse bright texture (1) and right half a fine dark one (2), at another place
    and size in each plane, on a smooth mid-grey background (0)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    stack, truth = [], []
    for r0, c0, h, w in ((10, 10, 40, 60), (40, 30, 50, 70), (20, 50, 44, 56)):
        img = ndimage.gaussian_filter(rng.normal(120, 30, (96, 120)), 3)
        lab = np.zeros((96, 120), np.uint8)
        lab[r0:r0 + h, c0:c0 + w // 2], lab[r0:r0 + h, c0 + w // 2:c0 + w] = 1, 2
        coarse = ndimage.gaussian_filter(rng.normal(200, 60, img.shape), 2)
        fine = rng.normal(60, 25, img.shape)
        img = np.where(lab == 1, coarse, np.where(lab == 2, fine, img))
        stack.append(np.clip(img, 0, 255).astype(np.uint8))
        truth.append(lab)
    return np.stack(stack), np.stack(truth)


def test_parts_mode_co_segments_the_stack_with_shared_ids(dock, qtbot):
    """Parts mode on a stack, classical features (no weights): every pixel is foreground, so the
    background is a part too; the two textures of the objects get one id each, the same in
    every plane (all their pixels measured)."""
    stack, truth = two_part_objects()
    viewer, widget = dock(stack)
    widget.features.use("classical")
    widget._mode.value = MODE_PARTS
    assert not widget._n_parts.native.isHidden() and widget._k.native.isHidden() and widget.as_labels.native.isHidden()
    assert widget.features.facet.value == "key"
    widget._scope.value = SCOPE_STACK
    widget._n_parts.value = 3
    segment(qtbot, widget)
    parts = viewer.layers[f"img {PARTS_LAYER}"].data
    assert parts.shape == stack.shape, widget._status.value
    assert "3 of 3 parts over 3 plane(s)" in widget._status.value and "classical features" in widget._status.value
    ids = {}
    for k in (0, 1, 2):
        ids[k] = [np.bincount(parts[z][truth[z] == k]).argmax() for z in range(3)]
        assert len(set(ids[k])) == 1, (k, ids[k])  # one id for the texture in every plane
        for z in range(3):
            share = np.mean(parts[z][truth[z] == k] == ids[k][0])
            # the objects' textures: one part each; the background loses rims around the objects to
            # them (the 16 px filters see the objects there): 0.67-0.75 measured
            assert share > (0.95 if k else 0.6), (k, z, share)
    assert len({ids[k][0] for k in ids}) == 3
    assert f"img {CAS_LAYER}" not in viewer.layers


def two_phase_microstructure(seed: int = 0, shape=(140, 168)) -> np.ndarray:
    """uint8: smoothed noise split at its median into a dark and a bright phase, both continuous
    (no separate objects), grey levels 60 / 190 plus noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), 5)
    image = np.where(smooth < np.median(smooth), 60.0, 190.0) + rng.normal(0, 8, shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_boxes_hidden_on_a_continuous_microstructure_and_the_status_says_why(dock, qtbot, blobs):
    def boxes_layers():
        return [layer for layer in viewer.layers if isinstance(layer, napari.layers.Shapes)]

    viewer, widget = dock(blobs)
    widget.features.kind.value = "classical"
    segment(qtbot, widget)
    assert widget.result.boxes_shown and len(boxes_layers()) == 1, widget._status.value  # two squares: boxes
    assert "2 boxes" in widget._status.value

    SHARED_CACHE.clear()
    viewer.layers["img"].data = two_phase_microstructure()  # the same image layer, now a microstructure
    segment(qtbot, widget)
    assert widget.result is not None and not widget.result.boxes_shown
    assert len(widget.result.boxes[0]) > 0  # computed, not drawn
    assert boxes_layers() == []  # the squares' old boxes are gone too
    status = widget._status.value
    assert "boxes hidden: " in status and "not separate objects" in status, status
    assert " boxes;" not in status and not status.rstrip().endswith(" boxes"), status
