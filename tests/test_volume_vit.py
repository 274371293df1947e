"""ViT features of volumes (``FeatureConfig(kind="vit" | "hybrid", dims=3)``): planes through a
block equal the 2-D featuriser's, triplanar is the mean of the three families, hybrid is the 3-D
bank then the ViT, the Segmenter runs end to end, the config's checks. Random weights: mechanics
only, never quality."""

import dataclasses

import numpy as np
import pytest

from napari_dinoseg import FeatureConfig, Segmenter
from napari_dinoseg import volume_prediction, volume_training
from napari_dinoseg.features.classical3d import classical3d_channel_names, read_block
from napari_dinoseg.features.featurisers import featuriser_for
from napari_dinoseg.features.vit_featuriser import ViTFeaturiser
from napari_dinoseg.features.vit_volume import BLOCK_FEATURE_BYTES

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SPACING = (1.0, 1.0, 1.0)


def vit3d(kind="vit", planes="xy", weights="random", **kw):
    """A small 3-D config: ViT-S/14 at stride 14, one view, float32; two sigmas for hybrid."""
    base = dict(kind=kind, dims=3, volume_planes=planes, weights=weights, stride=14, shifts=(), flips=False,
                device="cpu", precision="float32", sigmas=(1.0, 2.0))
    base.update(kw)
    return FeatureConfig(**base)


def plane_features(featuriser, plane):
    """The 2-D featuriser's ``(H, W, D)`` features of an ``(H, W)`` normalised plane."""
    return featuriser.features(np.ascontiguousarray(plane, np.float32)[..., None]).data


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(b).max())))


@pytest.fixture(scope="module")
def volume():
    return np.random.default_rng(0).random((6, 60, 73)).astype(np.float32)


@pytest.mark.parametrize("core", [(slice(2, 4), slice(17, 45), slice(23, 50)),   # inside, off the token lattice
                                  (slice(0, 2), slice(0, 30), slice(45, 73))])   # at the border: the halo mirrored
def test_xy_features_of_a_placed_block_are_the_whole_slices(volume, core, local_weights):
    """With tokens that see only their patch, any offset from the planes' token lattice or any
    mirrored voxel shown to the ViT would change the core's features."""
    featuriser = featuriser_for(vit3d(weights=local_weights))
    halo = featuriser.halo(SPACING)
    assert halo == (0, featuriser.margin + featuriser.alignment - 1, featuriser.margin + featuriser.alignment - 1)
    block = read_block(volume, core, halo)
    got = featuriser.volume_features(block, SPACING, halo, place=(core, volume.shape))
    assert got.shape == (2, *(c.stop - c.start for c in core[1:]), 384) and got.dtype == np.float32
    for i, z in enumerate(range(core[0].start, core[0].stop)):
        close(got[i], plane_features(featuriser, volume[z])[core[1:]])


def test_xy_features_of_a_lone_block_are_its_slices_features(volume):
    """Without ``place`` the block is a volume of its own: each slice's 2-D features on the window a
    plane's core would read (:meth:`Featuriser.window`), cropped to the core."""
    featuriser = featuriser_for(vit3d())
    halo = featuriser.halo(SPACING)
    core = (slice(1, 3), slice(10, 22), slice(30, 45))
    block = read_block(volume, core, halo)
    got = featuriser.volume_features(block, SPACING, halo)
    local = tuple(slice(h, n - h) for n, h in zip(block.shape[1:], halo[1:]))
    window = featuriser.window(local, block.shape[1:])
    assert window != (slice(0, block.shape[1]), slice(0, block.shape[2]))  # the rule, not the whole slice
    inner = tuple(slice(c.start - w.start, c.stop - w.start) for c, w in zip(local, window))
    for i in range(2):
        close(got[i], plane_features(featuriser, block[i][window])[inner])


def triplanar_by_hand(featuriser, vol, core):
    """The ``(z, y, x, D)`` features of ``core`` of the whole volume's xy, xz and yz planes."""
    z, y, x = (range(c.start, c.stop) for c in core)
    xy = np.stack([plane_features(featuriser, vol[i])[core[1], core[2]] for i in z])
    xz = np.stack([plane_features(featuriser, vol[:, i])[core[0], core[2]] for i in y], axis=1)
    yz = np.stack([plane_features(featuriser, vol[:, :, i])[core[0], core[1]] for i in x], axis=2)
    return xy, xz, yz


def test_triplanar_is_the_mean_of_the_three_families_of_planes():
    """A volume smaller than the planes' windows: each window is a whole plane, whatever the
    weights (the ViT's attention is global here)."""
    vol = np.random.default_rng(1).random((15, 17, 19)).astype(np.float32)
    featuriser = featuriser_for(vit3d(planes="triplanar"))
    halo = featuriser.halo(SPACING)
    assert halo[0] == halo[1] == halo[2] > 0
    core = (slice(5, 8), slice(6, 9), slice(7, 11))
    got = featuriser.volume_features(read_block(vol, core, halo), SPACING, halo, place=(core, vol.shape))
    xy, xz, yz = triplanar_by_hand(featuriser, vol, core)
    assert xy.shape == xz.shape == yz.shape == got.shape == (3, 3, 4, 384)
    assert not np.allclose(xy, xz, atol=1e-3)  # the families differ: the mean is not any one of them
    close(got, (xy + xz + yz) / 3)


def test_triplanar_blocks_are_the_whole_volume_planes(local_weights):
    """A core off the token lattice, its x windows inside the volume, its z and y halos mirrored at
    the border: the whole volume's planes' features (tokens that see only their patch make any
    lattice offset or mirrored voxel shown to the ViT visible)."""
    vol = np.random.default_rng(2).random((16, 20, 80)).astype(np.float32)
    featuriser = featuriser_for(vit3d(planes="triplanar", weights=local_weights))
    halo = featuriser.halo(SPACING)
    core = (slice(3, 6), slice(11, 14), slice(45, 50))
    assert featuriser.window(core[1:], vol.shape[1:])[1].start > 0  # a window inside the plane along x
    got = featuriser.volume_features(read_block(vol, core, halo), SPACING, halo, place=(core, vol.shape))
    close(got, sum(triplanar_by_hand(featuriser, vol, core)) / 3)


def test_triplanar_refuses_a_volume_thinner_than_a_patch(volume):
    featuriser = featuriser_for(vit3d(planes="triplanar"))
    halo = featuriser.halo(SPACING)
    whole = tuple(slice(0, n) for n in volume.shape)
    with pytest.raises(ValueError, match="xz planes of this volume are 6x73.*volume_planes='xy'"):
        featuriser.volume_features(read_block(volume, whole, halo), SPACING, halo, place=(whole, volume.shape))


def test_a_halo_too_small_is_refused(volume):
    featuriser = featuriser_for(vit3d())
    core = (slice(1, 2), slice(20, 40), slice(20, 40))
    halo = (0, 10, 10)
    with pytest.raises(ValueError, match="halo along axis y is too small"):
        featuriser.volume_features(read_block(volume, core, halo), SPACING, halo, place=(core, volume.shape))


def test_hybrid_is_the_3d_bank_then_the_vit():
    vol = np.random.default_rng(3).random((5, 30, 34)).astype(np.float32)
    config = vit3d(kind="hybrid")
    hybrid = featuriser_for(config)
    classical = featuriser_for(dataclasses.replace(config, kind="classical"))
    vit = featuriser_for(dataclasses.replace(config, kind="vit"))
    halo = hybrid.halo(SPACING)
    assert halo == tuple(max(c, v) for c, v in zip(classical.halo(SPACING), vit.halo(SPACING)))
    core = (slice(1, 4), slice(5, 25), slice(8, 30))
    block = read_block(vol, core, halo)
    got = hybrid.volume_features(block, SPACING, halo, place=(core, vol.shape))
    names = hybrid.channel_names(1)
    n_classical = len(classical3d_channel_names(config))
    assert names == classical.channel_names(1) + vit.channel_names(1) and len(names) == n_classical + 384
    assert got.shape == (3, 20, 22, len(names))
    close(got[..., :n_classical], classical.volume_features(read_block(vol, core, classical.halo(SPACING)), SPACING,
                                                            classical.halo(SPACING)))
    close(got[..., n_classical:], vit.volume_features(block, SPACING, halo, place=(core, vol.shape)))


def test_blocks_are_bounded_in_memory():
    for planes in ("xy", "triplanar"):
        for kind in ("vit", "hybrid"):
            featuriser = featuriser_for(vit3d(kind=kind, planes=planes))
            block = featuriser.volume_block()
            assert 4 * np.prod(block) * featuriser.n_features(1) <= BLOCK_FEATURE_BYTES
            assert featuriser.volume_bytes(block, SPACING) > 4 * np.prod(block) * featuriser.n_features(1)
    assert featuriser_for(vit3d()).volume_block() == (2, 256, 256)  # ViT-S: 384 channels of 256 x 256 slices
    side = featuriser_for(vit3d(planes="triplanar")).volume_block()
    assert side[0] == side[1] == side[2] >= 32
    assert featuriser_for(FeatureConfig(kind="classical", dims=3)).volume_block() == volume_training.VOLUME_BLOCK


def small_blocks(monkeypatch, block):
    """Volumes cut into blocks of ``block`` voxels, whichever way the pipeline asks for the block."""
    for module in (volume_training, volume_prediction):
        monkeypatch.setattr(module, "VOLUME_BLOCK", block, raising=False)
    monkeypatch.setattr(ViTFeaturiser, "volume_block", lambda self: block)


def two_phases():
    """(8, 48, 48) uint8 volume of two phases of different brightness, the phases, strokes on two slices."""
    rng = np.random.default_rng(4)
    truth = np.ones((8, 48, 48), np.uint8)
    truth[:, :, 24:] = 2
    vol = (np.where(truth == 2, 180.0, 60.0) + rng.normal(0, 10, truth.shape)).clip(0, 255).astype(np.uint8)
    labels = np.zeros_like(truth)
    labels[(2, 6), 5:43, 4:16] = 1
    labels[(2, 6), 5:43, 32:44] = 2
    return vol, truth, labels


def test_segmenter_fits_and_segments_a_volume_with_vit_features(monkeypatch, tmp_path):
    """End to end, several blocks (a grid that does not divide the volume)."""
    small_blocks(monkeypatch, (3, 20, 28))
    vol, truth, labels = two_phases()
    seg = Segmenter(vit3d()).fit(vol, labels, spacing=SPACING)
    assert len(seg.channel_names) == 384 and seg.features.dims == 3
    out = seg.segment(vol, spacing=SPACING)
    assert out.shape == vol.shape and set(np.unique(out)) <= {1, 2}
    assert (out == truth).mean() > 0.9  # brightness alone tells the phases apart, even to a random ViT
    proba = seg.predict_proba(vol, spacing=SPACING)
    assert proba.shape == (*vol.shape, 2)
    np.testing.assert_allclose(proba.sum(-1), 1, atol=1e-5)
    assert isinstance(seg.check(vol, out, spacing=SPACING), list)  # the shift report reads the findings
    loaded = Segmenter.load(seg.save(tmp_path / "vit3d.dinoseg"))
    assert loaded.features == seg.features and loaded.features.dims == 3
    np.testing.assert_array_equal(loaded.segment(vol, spacing=SPACING), out)


def test_block_by_block_prediction_is_the_one_block_prediction(monkeypatch, local_weights):
    """Blocks placed in the volume: no seam where they meet (tokens that see only their patch
    make any lattice offset or mirrored voxel shown to the ViT visible)."""
    vol, _, labels = two_phases()
    small_blocks(monkeypatch, (8, 48, 48))
    seg = Segmenter(vit3d(weights=local_weights)).fit(vol, labels, spacing=SPACING)
    whole = seg.predict_proba(vol, spacing=SPACING)
    small_blocks(monkeypatch, (3, 20, 28))
    close(seg.predict_proba(vol, spacing=SPACING), whole)


def test_volume_planes_is_validated_and_serialised():
    with pytest.raises(ValueError, match="volume_planes='yz' is not valid; choose one of 'xy', 'triplanar'"):
        vit3d(planes="yz")
    with pytest.raises(ValueError, match="volume_planes='triplanar' is for volumes: use it with dims=3"):
        FeatureConfig(kind="vit", volume_planes="triplanar")
    assert FeatureConfig(kind="classical", dims=3, volume_planes="triplanar").volume_planes == "triplanar"  # ignored
    assert "volume_planes" not in vit3d().to_dict() and "volume_planes" not in FeatureConfig().to_dict()
    config = vit3d(planes="triplanar")
    assert config.to_dict()["volume_planes"] == "triplanar"
    assert FeatureConfig.from_dict(config.to_dict()) == config
    for kind in ("vit", "hybrid"):
        assert FeatureConfig(kind=kind, dims=3).dims == 3


def test_dims_3_is_refused_for_a_kind_without_volume_features():
    from napari_dinoseg.feature_kinds import KindTraits, add_kind, remove_kind

    add_kind("planes_only", KindTraits(vit=True))
    try:
        with pytest.raises(ValueError, match=r"needs a kind that featurises volumes \(\['classical', 'hybrid', 'vit'\]\)"):
            FeatureConfig(kind="planes_only", dims=3, weights="random")
    finally:
        remove_kind("planes_only")
