"""Unsupervised segmentation (CAS) of volumes with 3-D classical features (issue 28, part 5): the
core (:func:`napari_dinoseg.unsupervised_volume.segment_volume_unsupervised`) on a generated
three-phase volume, block by block, from zarr, its refusals; and the unsupervised dock's 3-D path
in a real napari viewer."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest
from conftest import Hold, close_mid_run

from napari_dinoseg import unsupervised_volume
from napari_dinoseg.config import CASConfig, FeatureConfig
from napari_dinoseg.unsupervised_volume import background_class_3d, segment_volume_unsupervised

SHAPE = (16, 48, 48)
SPACING = (2.0, 1.0, 1.0)  # the phases' blur is (4, 8, 8) voxels: isotropic at this spacing
CONFIG = CASConfig(features=FeatureConfig(kind="classical", sigmas=(1.0, 2.0), device="cpu"), k=6)


def three_phase(noise: float = 30.0, shape=SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8, truth uint8 {1, 2, 3})``: phase 2 where one blurred noise field is in its top
    40 %, phase 3 where another is in its top 30 % (over phase 2), means 60, 130, 200, plus Gaussian
    noise of ``noise`` grey levels."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    a, b = (ndimage.gaussian_filter(rng.normal(size=shape), (4, 8, 8), mode="wrap") for _ in range(2))
    truth = np.ones(shape, np.uint8)
    truth[a > np.quantile(a, 0.6)] = 2
    truth[b > np.quantile(b, 0.7)] = 3
    image = np.array([0.0, 60.0, 130.0, 200.0])[truth] + rng.normal(0, noise, shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def matched(labels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``labels == truth`` (bool, per voxel) under the permutation of the classes that agrees most."""
    n = int(truth.max())
    best = max(permutations(range(1, n + 1)), key=lambda p: (labels == np.array([0, *p])[truth]).sum())
    return labels == np.array([0, *best])[truth]


def dataclass_replace(config: CASConfig, **features) -> CASConfig:
    import dataclasses

    return dataclasses.replace(config, features=dataclasses.replace(config.features, **features))


@pytest.fixture(scope="module")
def phases():
    image, truth = three_phase()
    return image, truth, segment_volume_unsupervised(image, CONFIG, spacing=SPACING)


def test_regions_are_the_phases(phases):
    from scipy import ndimage

    _, truth, result = phases
    assert result.labels.shape == result.foreground.shape == SHAPE
    assert result.labels.dtype == np.uint8 and result.foreground.dtype == bool
    assert result.n_classes == 3 and set(np.unique(result.labels)) == {1, 2, 3}
    assert result.silhouettes[3] > result.silhouettes[2] + 0.05
    hits = matched(result.labels, truth)
    edge = ndimage.morphological_gradient(truth, size=3) > 0  # voxels at a phase boundary
    assert hits.mean() > 0.9  # measured 0.933: the misses are the rims that blurring leaves
    assert hits[~edge].mean() > 0.98  # measured 1.000 away from the boundaries
    # the background is the class of the largest connected region: the matrix (phase 1, 47 %)
    assert (result.labels == 1).sum() > 0.4 * truth.size and matched(result.labels, truth)[truth == 1].mean() > 0.9
    assert (result.foreground == (result.labels > 1)).all()
    assert list(result.foreground_classes) == [2, 3]
    assert result.spacing == SPACING
    assert any("object boxes" in m and "CRF" in m for m in result.notes) and result.messages == []


def test_blocks_equal_one_block(phases, monkeypatch):
    image, _, whole = phases
    monkeypatch.setattr(unsupervised_volume, "BLOCK", (5, 20, 16))  # 4 x 3 x 3 blocks, not dividing the shape
    calls = []
    real = unsupervised_volume._SmoothChannels.block
    monkeypatch.setattr(unsupervised_volume._SmoothChannels, "block",
                        lambda self, *a: calls.append(a[1]) or real(self, *a))
    blocks = segment_volume_unsupervised(image, CONFIG, spacing=SPACING)
    assert len(calls) == 2 * 36 - 1  # every block twice but the last, kept from the first pass
    assert all(tuple(s.stop - s.start for s in core) <= (5, 20, 16) for core in calls)
    assert blocks.n_classes == whole.n_classes
    assert blocks.silhouettes == pytest.approx(whole.silhouettes, abs=1e-6)
    assert (blocks.labels == whole.labels).all()  # the features of a block are the whole volume's (to float32 rounding)


def test_a_zarr_volume_is_read_block_by_block(phases, tmp_path):
    zarr = pytest.importorskip("zarr")
    image, _, whole = phases
    stored = zarr.open_array(store=str(tmp_path / "v.zarr"), mode="w", shape=image.shape, chunks=(8, 16, 16),
                             dtype=image.dtype)
    stored[...] = image
    result = segment_volume_unsupervised(stored, CONFIG, spacing=SPACING)
    assert (result.labels == whole.labels).all()


def test_3d_features_see_through_noise_that_planes_do_not():
    """At noise 60 (the phases 70 grey levels apart) the slices' own 2-D features find 2 classes;
    the volume's 3-D features, averaging along z too, find the 3 phases."""
    import warnings

    from napari_dinoseg.unsupervised import segment_unsupervised

    image, truth = three_phase(noise=60.0)
    result = segment_volume_unsupervised(image, CONFIG, spacing=SPACING)
    assert result.n_classes == 3 and matched(result.labels, truth).mean() > 0.9  # measured 0.921
    planes = dataclass_replace(CONFIG, membrane=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert segment_unsupervised(list(image), planes).labels.max() == 2


def test_background_is_the_largest_3d_region():
    """Class 1 is a bar through all slices (24 voxels a slice, 240 connected in 3-D); classes 2 and 3
    alternate slice by slice in the rest (40 voxels a slice, never connected along z): the 3-D rule
    takes class 1 as the background, where the rule of planes takes the class of the largest slice
    region."""
    from napari_dinoseg.cas_foreground import background_class

    labels = np.ones((10, 8, 8), np.uint8)
    labels[0::2, :, 3:] = 2
    labels[1::2, :, 3:] = 3
    assert background_class_3d(labels) == 1
    assert background_class(labels) == 2


@pytest.mark.parametrize("shape", [(48, 48), (2, 8, 48, 48)])
def test_not_a_volume_is_refused(shape):
    with pytest.raises(ValueError, match=r"\(Z, Y, X\) volume.*segment_unsupervised"):
        segment_volume_unsupervised(np.zeros(shape, np.uint8), CONFIG)


@pytest.mark.parametrize("kind", ["vit", "hybrid"])
def test_features_without_3d_are_refused(kind):
    config = CASConfig(features=FeatureConfig(kind=kind))
    with pytest.raises(ValueError, match=rf"3-D classical features only.*kind={kind!r}"):
        segment_volume_unsupervised(np.zeros(SHAPE, np.uint8), config)


def test_a_uniform_volume_is_refused():
    with pytest.raises(ValueError, match="uniform"):
        segment_volume_unsupervised(np.full((4, 16, 16), 7, np.uint8), CONFIG)


# ---- the dock, in a real napari viewer ---------------------------------------------------------

TIMEOUT_MS = 120_000


@pytest.fixture
def dock(make_napari_viewer, no_weights):
    """``dock(image, **image_kwargs) -> (viewer, widget)``: the unsupervised dock on ``image`` (no
    DINOv2 weights: it starts with classical features), sigmas 1 and 2."""
    pytest.importorskip("napari")
    from napari_dinoseg._widgets._feature_controls import SHARED_CACHE
    from napari_dinoseg._widgets.unsupervised_widget import UnsupervisedWidget

    def make(image, show=False, **kwargs):
        SHARED_CACHE.clear()
        viewer = make_napari_viewer(show=show)
        viewer.add_image(image, name="vol", **kwargs)
        widget = UnsupervisedWidget(viewer)
        viewer.window.add_dock_widget(widget, name="dinoseg: unsupervised")
        widget.features.sigmas.value = "1, 2"
        widget._k.value = 6
        return viewer, widget

    return make


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_dock_segments_a_volume_in_3d(dock, qtbot):
    from napari_dinoseg._widgets._layers import RESULT_KEY
    from napari_dinoseg._widgets.unsupervised_widget import (BOXES_LAYER, CAS_LAYER, FOREGROUND_LAYER,
                                                             SCOPE_STACK)

    image, truth = three_phase()
    viewer, widget = dock(image, scale=SPACING)
    assert widget.features.kind.value == "classical"  # no weights here
    assert not widget.features.volume.native.isHidden() and not widget._scope.native.isHidden()
    widget._scope.value = SCOPE_STACK
    old = viewer.add_shapes([[[0, 0, 0], [0, 0, 9], [0, 9, 9], [0, 9, 0]]], name=f"vol {BOXES_LAYER}")
    old.metadata[RESULT_KEY] = (BOXES_LAYER, "vol")  # boxes of an earlier run on vol's planes
    widget._image.value = viewer.layers["vol"]
    widget.features.volume.value = True
    assert widget._scope.native.isHidden()  # 3-D features segment the whole volume
    assert widget.config().features.dims == 3
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert widget.result is not None, widget._status.value
    cas, fg = viewer.layers[f"vol {CAS_LAYER}"], viewer.layers[f"vol {FOREGROUND_LAYER}"]
    assert cas.data.shape == fg.data.shape == SHAPE
    assert tuple(cas.scale) == tuple(fg.scale) == SPACING
    assert (cas.data == widget.result.labels).all() and (fg.data == widget.result.foreground).all()
    assert matched(cas.data, truth).mean() > 0.9 and widget.result.spacing == SPACING
    assert f"vol {BOXES_LAYER}" not in [lay.name for lay in viewer.layers]
    assert widget._status.value.startswith("3 classes in 3-D (voxels of (2, 1, 1)")


def test_the_3d_box_is_shown_for_a_volume_only(dock):
    image, _ = three_phase()
    viewer, widget = dock(image)
    assert not widget.features.volume.native.isHidden()
    for name, data, kwargs in [("plane", image[0], {}), ("rgb", np.stack([image[0]] * 3, -1), {"rgb": True}),
                               ("channels", np.stack([image] * 2), {})]:
        viewer.add_image(data, name=name, **kwargs)
        widget._image.value = viewer.layers[name]
        assert widget.features.volume.native.isHidden(), name
        assert widget.config().features.dims == 2, name
    widget._image.value = viewer.layers["vol"]
    assert not widget.features.volume.native.isHidden()


def test_parts_mode_and_dinov2_are_refused_in_3d_at_the_click(dock):
    from napari_dinoseg._widgets.unsupervised_widget import MODE_PARTS

    image, _ = three_phase()
    viewer, widget = dock(image)
    widget.features.volume.value = True
    widget._mode.value = MODE_PARTS
    assert widget.run() is None and "parts mode co-segments planes" in widget._status.value
    widget._mode.value = "classes (CAS)"
    widget.features.use("vit", weights="random", views="one view", stride=14, device="cpu")
    if widget.config().features.dims == 3:  # a ViT kind with a 3-D featuriser: refused by the volume path
        assert widget.run() is None and "3-D classical features only" in widget._status.value
    assert [lay.name for lay in viewer.layers] == ["vol"]


def test_cancel_while_segmenting_a_volume_writes_nothing(dock, qtbot):
    image, _ = three_phase()
    viewer, widget = dock(image, scale=SPACING)
    widget.features.volume.value = True
    hold = Hold(widget)
    try:
        assert widget.run() is not None and hold.entered.wait(60)
        widget.cancel()
    finally:
        hold.release()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert [lay.name for lay in viewer.layers] == ["vol"] and widget.result is None
    assert widget._status.value.startswith("cancelled")


def test_closing_the_dock_stops_the_volume_job(dock, qtbot):
    image, _ = three_phase()
    viewer, widget = dock(image, show=True)
    widget.features.volume.value = True
    close_mid_run(qtbot, viewer, widget, "dinoseg: unsupervised", Hold(widget), TIMEOUT_MS)
    assert [lay.name for lay in viewer.layers] == ["vol"]
