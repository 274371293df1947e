"""Volumes through the Segmenter (``FeatureConfig(dims=3)``): fit on painted slices, block-by-block
prediction equal to one block, lazy volumes, the spacing, the bundle, refusals."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_dinoseg import FeatureConfig, Segmenter
from napari_dinoseg import volume_prediction, volume_training
from napari_dinoseg.features.classical_featuriser import ClassicalFeaturiser

CONFIG = FeatureConfig(kind="classical", dims=3, sigmas=(1.0, 2.0), device="cpu")


def two_phase(shape=(24, 48, 40), seed=0):
    """A blurred two-phase volume (uint8) and its phases (1, 2)."""
    rng = np.random.default_rng(seed)
    truth = (ndi.gaussian_filter(rng.standard_normal(shape), 3) > 0).astype(np.uint8) + 1
    volume = (truth * 70.0 + rng.normal(0, 30, shape)).clip(0, 255).astype(np.uint8)
    return volume, truth


def strokes(truth, slices, fraction=0.05, seed=1):
    """Labels painted on a few z-slices (a random fraction of their voxels)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros_like(truth)
    for z in slices:
        keep = rng.random(truth[z].shape) < fraction
        labels[z][keep] = truth[z][keep]
    return labels


@pytest.fixture(scope="module")
def fitted():
    volume, truth = two_phase()
    labels = strokes(truth, (5, 18))
    return Segmenter(CONFIG).fit(volume, labels, spacing=(1.0, 1.0, 1.0)), volume, truth


class Recording:
    """A volume whose reads are recorded (the z-slices each read covered)."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
        self.reads = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.array[key]


def test_segments_a_volume_and_sees_the_third_dimension():
    """Two textures alike in every xy-slice, one smooth along z, the other not: per-slice 2-D
    features cannot tell them apart, the 3-D bank can."""
    rng = np.random.default_rng(3)
    shape = (32, 40, 40)
    smooth_z = ndi.gaussian_filter(rng.standard_normal(shape), (4, 0, 0))
    smooth_z /= smooth_z.std()
    rough = rng.standard_normal(shape)
    truth = np.ones(shape, np.uint8)
    truth[:, :, 20:] = 2
    volume = ((np.where(truth == 1, smooth_z, rough) * 30) + 128).clip(0, 255).astype(np.uint8)
    labels = strokes(truth, (8, 24), fraction=0.2)
    seg3 = Segmenter(CONFIG).fit(volume, labels)
    acc3 = (seg3.segment(volume) == truth)[:, 4:-4, 4:-4].mean()  # away from the blocks' in-plane border of phases
    seg2 = Segmenter(FeatureConfig(sigmas=(1.0, 2.0), membrane=False, device="cpu"))
    seg2.fit([volume[8], volume[24]], [labels[8], labels[24]])
    acc2 = (np.stack([seg2.segment(p) for p in volume]) == truth)[:, 4:-4, 4:-4].mean()
    assert acc3 > 0.9
    assert acc3 > acc2 + 0.15


def test_blocks_equal_one_block(fitted, monkeypatch):
    seg, volume, _ = fitted
    whole = seg.predict_proba(volume)
    monkeypatch.setattr(ClassicalFeaturiser, "volume_block", lambda self: (7, 20, 16))  # does not divide the shape
    blocks = seg.predict_proba(volume)
    assert blocks.shape == (*volume.shape, 2)
    np.testing.assert_allclose(blocks, whole, atol=2e-4)
    assert (seg.to_labels(blocks) == seg.to_labels(whole)).mean() > 0.999


def test_fit_reads_only_the_painted_slices_and_their_halo(monkeypatch):
    volume, truth = two_phase((40, 32, 32))
    labels = strokes(truth, (20,))
    labels[20, :2, :2] = (1, 2), (2, 1)  # both classes
    recording = Recording(volume)
    seg = Segmenter(CONFIG)
    seg.fit(recording, labels)
    halo = seg.featuriser.halo((1.0, 1.0, 1.0))
    featurised = [key for key in recording.reads if isinstance(key, tuple) and len(key) == 3]
    assert featurised, "the painted block was read"
    for key in featurised:  # the bounds are read a slice at a time (ints); a block as slices
        assert key[0].start >= 20 - halo[0] and key[0].stop <= 21 + halo[0]


def test_planes_predict_the_slices_in_view(fitted):
    seg, volume, _ = fitted
    whole = seg.segment(volume)
    out, _ = volume_prediction.predict_volume(seg, volume, labels=True, planes=slice(11, 12))
    assert out.shape == (1, *volume.shape[1:])
    assert (out[0] == whole[11]).all()


def test_zarr_volume_in_and_out(fitted, tmp_path):
    import zarr

    seg, volume, _ = fitted
    stored = zarr.open_array(store=str(tmp_path / "v.zarr"), mode="w", shape=volume.shape, chunks=(8, 16, 16),
                             dtype=volume.dtype)
    stored[...] = volume
    out = zarr.open_array(store=str(tmp_path / "labels.zarr"), mode="w", shape=volume.shape, chunks=(8, 16, 16),
                          dtype=np.uint8)
    assert seg.segment(stored, out=out) is out
    assert (out[...] == seg.segment(volume)).all()
    assert seg.check(stored, out) == []


def test_spacing_scales_the_filters_and_is_kept(fitted, tmp_path):
    seg, volume, truth = fitted
    anisotropic = volume[::2]
    labels = strokes(truth[::2], (3, 9))
    seg4 = Segmenter(CONFIG).fit(anisotropic, labels, spacing=(2.0, 1.0, 1.0))
    assert seg4.spacing == (2.0, 1.0, 1.0)
    assert seg4.featuriser.halo((2.0, 1.0, 1.0))[0] < seg4.featuriser.halo((1.0, 1.0, 1.0))[0]
    with_spacing = seg4.segment(anisotropic, spacing=(2.0, 1.0, 1.0))
    assert not np.array_equal(seg4.predict_proba(anisotropic, spacing=(2.0, 1.0, 1.0)),
                              seg4.predict_proba(anisotropic, spacing=(1.0, 1.0, 1.0)))
    assert seg4.check(anisotropic, spacing=(2.0, 1.0, 1.0)) == []
    warned = seg4.check(anisotropic, spacing=(8.0, 1.0, 1.0))
    assert len(warned) == 1 and "(2, 1, 1)" in warned[0] and "(8, 1, 1)" in warned[0]
    path = seg4.save(tmp_path / "volume.dinoseg")
    loaded = Segmenter.load(path)
    assert loaded.features.dims == 3 and loaded.spacing == (2.0, 1.0, 1.0)
    assert (loaded.segment(anisotropic, spacing=(2.0, 1.0, 1.0)) == with_spacing).all()


def test_the_smoothing_of_a_3d_classifier_has_the_laplacian_as_second_guide(fitted, tmp_path):
    """3-D features: the guided filter's second guide is the Hessian trace of the guide's sigma,
    kept by the bundle, and it changes the probabilities; a plane classifier has none."""
    import dataclasses

    seg, volume, truth = fitted
    names = seg.featuriser.channel_names(1)
    clf = seg.classifier
    assert [names[i] for i in clf.guide] == ["gaussian_s1"]
    assert [names[i] for i in clf.guide_laplacian] == ["hessian_trace_s1"]
    loaded = Segmenter.load(seg.save(tmp_path / "volume.dinoseg"))
    assert loaded.classifier.guide_laplacian == clf.guide_laplacian
    part = volume[:8]
    one_guide = Segmenter.load(seg.save(tmp_path / "copy.dinoseg"))
    one_guide.classifier = dataclasses.replace(clf, guide_laplacian=())
    both = seg.predict_proba(part)
    np.testing.assert_array_equal(loaded.predict_proba(part), both)
    assert not np.allclose(one_guide.predict_proba(part), both, atol=1e-3)
    plane = Segmenter(FeatureConfig(sigmas=(1.0, 2.0), membrane=False, device="cpu"))
    plane.fit(volume[5], strokes(truth, (5,))[5])
    assert plane.classifier.guide and plane.classifier.guide_laplacian == ()


def test_plane_classifier_bundle_has_no_dims_key():
    assert "dims" not in FeatureConfig().to_dict()
    assert FeatureConfig.from_dict(FeatureConfig(dims=3).to_dict()).dims == 3


@pytest.mark.parametrize("call, message", [
    (lambda seg, v, lab: seg.fit(v[..., None].repeat(2, -1), np.zeros(v.shape + (2,), np.uint8)), "(Z, Y, X) volume"),
    (lambda seg, v, lab: seg.fit(v, lab[:-1]), "do not match the volume's shape"),
    (lambda seg, v, lab: seg.fit(v, np.zeros_like(lab)), "no painted voxel"),
    (lambda seg, v, lab: seg.fit(v, lab, spacing=(0, 1, 1)), "spacing must be three positive numbers"),
    (lambda seg, v, lab: seg.fit(v[0], lab[0]), "(Z, Y, X) volume"),
])
def test_bad_volume_input_is_refused(call, message):
    volume, truth = two_phase((12, 24, 24))
    labels = strokes(truth, (6,), fraction=0.3)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(Segmenter(CONFIG), volume, labels)


def test_spacing_refused_for_a_plane_classifier():
    volume, truth = two_phase((4, 32, 32))
    labels = strokes(truth, (1,), fraction=0.3)
    seg = Segmenter(FeatureConfig(sigmas=(1.0,), membrane=False, device="cpu"))
    with pytest.raises(ValueError, match="spacing is for volumes"):
        seg.fit(volume[1], labels[1], spacing=(1, 1, 1))
    seg.fit(volume[1], labels[1])
    with pytest.raises(ValueError, match="spacing is for volumes"):
        seg.segment(volume[1], spacing=(1, 1, 1))


def test_dims_must_be_2_or_3():
    with pytest.raises(ValueError, match="dims must be 2"):
        FeatureConfig(dims=1)


def test_painted_blocks_are_runs_of_painted_slices():
    labels = np.zeros((40, 8, 8), np.uint8)
    labels[[3, 4, 5, 9, 33], 1, 1] = 1
    cores = [core for core, _ in volume_training.painted_blocks(labels, labels.shape, (32, 8, 8))]
    assert [(c[0].start, c[0].stop) for c in cores] == [(3, 6), (9, 10), (33, 34)]


def test_a_volume_that_cannot_fit_is_refused_before_anything_is_read(fitted, monkeypatch):
    from napari_dinoseg import memory

    seg, volume, truth = fitted
    recording = Recording(volume)
    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 20)  # 1 MiB
    with pytest.raises(ValueError, match=r"segmenting the volume needs about .* but this process can use about"):
        seg.segment(recording)
    with pytest.raises(ValueError, match=r"training on the volume needs about"):
        Segmenter(CONFIG).fit(recording, strokes(truth, (5, 18)))
    assert recording.reads == []

