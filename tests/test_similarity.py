"""Similarity from a click: planted textures found, the computation checked against numpy, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from conftest import planted_texture, roc_auc
from napari_dinoseg import FeatureConfig, FeatureStack, featurise
from napari_dinoseg import similarity
from napari_dinoseg.similarity import similar_mask, similarity_map, similarity_query

CENTRES_A = [(30, 30), (30, 96), (96, 40), (100, 100)]
CENTRES_B = [(20, 60), (70, 25), (90, 95)]
CLICK = np.array([[30.0, 30.0]])  # the centre of A's first disc
CLICKS = np.array([[30, 30], [33.4, 27], [27, 34.2]])  # three in that disc, floats rounded


@pytest.fixture(scope="module")
def image_a():
    return planted_texture(0, 128, CENTRES_A, 14)


@pytest.fixture(scope="module")
def image_b():
    return planted_texture(1, 128, CENTRES_B, 12)


@pytest.fixture(scope="module")
def classical_a(image_a):
    return featurise(image_a[0], FeatureConfig())


@pytest.fixture(scope="module")
def classical_b(image_b):
    return featurise(image_b[0], FeatureConfig())


def other_discs(discs):
    """Pixels to score: everything but the quadrant of the clicked disc."""
    keep = np.ones_like(discs)
    keep[:48, :48] = False
    return keep


def check_map(sim, shape):
    assert sim.shape == shape and sim.dtype == np.float32
    assert np.all(np.isfinite(sim)) and sim.min() >= -1.0 and sim.max() <= 1.0


def test_a_click_in_one_disc_finds_the_others_with_classical_features(image_a, classical_a):
    _, discs = image_a
    sim = similarity_map(classical_a, CLICK)
    check_map(sim, discs.shape)
    assert sim[30, 30] == pytest.approx(1.0, abs=1e-5)  # one point: its own descriptor
    keep = other_discs(discs)
    assert roc_auc(sim[keep], discs[keep]) > 0.92  # measured 0.938; the 16-px filters blur the edges
    inner = ndimage.binary_erosion(discs, iterations=4) & keep
    far = ~ndimage.binary_dilation(discs, iterations=8) & keep
    assert np.median(sim[inner]) > 0.4 > np.percentile(sim[far], 99)  # measured 0.57 and 0.37
    several = similarity_map(classical_a, CLICKS)
    assert roc_auc(several[keep], discs[keep]) > 0.92
    assert not np.array_equal(several, sim)


def test_centring_is_the_better_default(image_a, classical_a):
    """Measured on this image: AUC 0.938 centred, 0.868 not."""
    _, discs = image_a
    keep = other_discs(discs)
    centred = roc_auc(similarity_map(classical_a, CLICK)[keep], discs[keep])
    plain = roc_auc(similarity_map(classical_a, CLICK, centre=False)[keep], discs[keep])
    assert centred > plain + 0.05
    np.testing.assert_array_equal(similarity_map(classical_a, CLICK), similarity_map(classical_a, CLICK, centre=True))


def test_points_on_image_a_find_the_texture_in_image_b(classical_a, classical_b, image_b):
    _, discs_b = image_b
    sim = similarity_map(classical_b, CLICKS, reference=classical_a)
    check_map(sim, discs_b.shape)
    assert roc_auc(sim, discs_b) > 0.92  # measured 0.950
    # the frame is the reference's: B mapped with B's own statistics is another map
    assert not np.allclose(sim, similarity_map(classical_b, np.array([[20, 60]])))


def test_matches_a_plain_numpy_computation(monkeypatch):
    """Standardised (unnamed) channels, centred by the reference's mean, several blocks of rows."""
    rng = np.random.default_rng(3)
    ref = rng.normal(2.0, [1.0, 5.0, 0.01], (40, 30, 3)).astype(np.float32)
    target = rng.normal(2.0, [1.0, 5.0, 0.01], (25, 33, 3)).astype(np.float32)
    points = np.array([[3, 4], [10, 20], [39, 0]])
    flat = ref.reshape(-1, 3).astype(np.float64)
    mean, std = flat.mean(0), flat.std(0)
    q = (ref[points[:, 0], points[:, 1]].mean(0) - mean) / std
    z = (target.astype(np.float64) - mean) / std
    expected = (z @ q) / (np.linalg.norm(z, axis=-1) * np.linalg.norm(q))
    monkeypatch.setattr(similarity, "BLOCK_BYTES", 3 * 4 * 33 * 3)  # 3 rows a block
    # float32 arithmetic: the third channel's offset (2.0) is rounded at 1e-7, its scale is 1 / 0.01
    np.testing.assert_allclose(similarity_map(target, points, reference=ref), expected, atol=1e-4)
    uncentred = (target / std) @ (ref[points[:, 0], points[:, 1]].mean(0) / std)
    uncentred /= np.linalg.norm(target / std, axis=-1) * np.linalg.norm(ref[points[:, 0], points[:, 1]].mean(0) / std)
    np.testing.assert_allclose(similarity_map(target, points, reference=ref, centre=False), uncentred, atol=1e-4)


def test_vit_channels_alone_make_the_descriptor_unscaled():
    """A stack with ViT channels: its classical channels are ignored, the ViT ones used as they are."""
    rng = np.random.default_rng(4)
    vit = rng.normal(0, [1.0, 10.0, 0.1, 3.0], (20, 24, 4)).astype(np.float32)
    noise = rng.normal(0, 100.0, (20, 24, 2)).astype(np.float32)
    stack = FeatureStack(np.concatenate([noise, vit], axis=-1), FeatureConfig(kind="hybrid"),
                         ("gaussian_s1", "sobel_s1", "vit_0", "vit_1", "vit_2", "vit_3"))
    points = np.array([[2, 3], [15, 20]])
    centred = vit - vit.reshape(-1, 4).mean(0)
    q = centred[points[:, 0], points[:, 1]].mean(0)
    expected = (centred @ q) / (np.linalg.norm(centred, axis=-1) * np.linalg.norm(q))
    np.testing.assert_allclose(similarity_map(stack, points), expected, atol=2e-6)


def test_random_weights_vit_mechanics(image_a):
    """Random weights: shapes, dtype, range and the frame only (NOT DINOv2 quality)."""
    config = FeatureConfig(kind="vit", weights="random", stride=14, shifts=(), flips=False, device="cpu",
                           precision="float32")
    image = np.kron(image_a[0][:64, :64], np.ones((2, 2), np.uint8))  # 128 px
    stack = featurise(image, config)
    assert any("vit_" in n for n in stack.channel_names)
    sim = similarity_map(stack, np.array([[60, 60]]))
    check_map(sim, (128, 128))
    assert sim[60, 60] == pytest.approx(1.0, abs=1e-5)
    assert sim.std() > 0.01  # not one value everywhere
    other = featurise(np.kron(image_a[0][64:, 64:], np.ones((2, 2), np.uint8)), config)
    check_map(similarity_map(other, np.array([[60, 60]]), reference=stack), (128, 128))


def test_query_of_several_references_maps_every_slice(classical_a, classical_b, image_a, image_b):
    query = similarity_query([classical_a, classical_b], np.array([[0, 30, 30], [1, 70, 25]]))
    for stack, (_, discs) in ((classical_a, image_a), (classical_b, image_b)):
        assert roc_auc(query.map(stack), discs) > 0.9
    single = similarity_query([classical_a], np.array([[0, 30, 30]]))
    np.testing.assert_array_equal(single.map(classical_b), similarity_map(classical_b, CLICK, reference=classical_a))


def test_similar_mask_thresholds():
    sim = np.array([[-0.5, 0.2], [0.5, 0.9]], np.float32)
    np.testing.assert_array_equal(similar_mask(sim, 0.5), [[False, False], [True, True]])
    assert similar_mask(sim, -1.0).all() and not similar_mask(sim, 0.95).any()
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        similar_mask(sim, float("nan"))
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        similar_mask(sim, True)
    with pytest.raises(ValueError, match="float array"):
        similar_mask(sim > 0, 0.5)


@pytest.mark.parametrize("points, message", [
    (np.zeros((0, 2)), "no points"),
    (np.array([30, 30]), r"\(N, 2\) array of \(row, col\), got shape \(2,\)"),
    (np.array([[1, 2, 3]]), r"\(N, 2\) array of \(row, col\), got shape \(1, 3\)"),
    (np.array([[128, 5]]), r"point \(row 128, col 5\) is outside the 128x128 image"),
    (np.array([[5, -1]]), r"point \(row 5, col -1\) is outside"),
    (np.array([[127.6, 5]]), r"point \(row 128, col 5\) is outside"),  # rounded
    (np.array([[np.nan, 5]]), "finite"),
    ("here", r"\(N, 2\) array"),
])
def test_bad_points_are_refused(classical_a, points, message):
    with pytest.raises(ValueError, match=message):
        similarity_map(classical_a, points)


def test_points_at_the_edge_round_inside(classical_a):
    check_map(similarity_map(classical_a, np.array([[-0.4, 127.4]])), (128, 128))


def test_bad_features_and_references_are_refused(classical_a):
    data = classical_a.data
    with pytest.raises(ValueError, match=r"features have 10 channels but the reference has"):
        similarity_map(data[..., :10], CLICK, reference=classical_a)
    with pytest.raises(ValueError, match="different channels"):
        renamed = FeatureStack(data, classical_a.config, tuple(f"x{i}" for i in range(data.shape[-1])))
        similarity_map(renamed, CLICK, reference=classical_a)
    with pytest.raises(ValueError, match=r"must be a FeatureStack or an \(H, W, F\) array, got shape \(128, 128\)"):
        similarity_map(data[..., 0], CLICK)
    with pytest.raises(ValueError, match="float features"):
        similarity_map(np.ones((8, 8, 2), np.uint8), CLICK[:, :] * 0)
    nan_at_point = data.copy()
    nan_at_point[30, 30, 5] = np.nan
    with pytest.raises(ValueError, match=r"features at point \(row 30, col 30\) are not finite"):
        similarity_map(nan_at_point, CLICK)
    with pytest.raises(ValueError, match="non-finite values"):
        similarity_map(nan_at_point, np.array([[60, 60]]))
    with pytest.raises(ValueError, match="non-finite values"):  # in the target only
        similarity_map(nan_at_point, CLICK, reference=data)
    with pytest.raises(ValueError, match="nothing sets them apart"):
        similarity_map(np.ones((16, 16, 3), np.float32), np.array([[4, 4]]))
    with pytest.raises(ValueError, match=r"\(N, 3\) array of \(i, row, col\)"):
        similarity_query([classical_a], CLICK)
    with pytest.raises(ValueError, match="names reference 1, but there are 1"):
        similarity_query([classical_a], np.array([[1, 3, 3]]))
    with pytest.raises(ValueError, match="empty sequence"):
        similarity_query([], CLICK)
