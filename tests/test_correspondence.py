"""Correspondences: a shifted copy of a textured image is recovered, pairs are best buddies,
``n`` is honoured, saliency filters and ranks, the spread takes one pair per cluster, bad input."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_dinoseg import FeatureConfig, featurise
from napari_dinoseg.correspondence import (
    best_buddies, correspondences, correspondences_from_features, log_bin,
)
from napari_dinoseg.descriptors import unit_rows
from napari_dinoseg.features.featurise import FeatureStack

VIT = FeatureConfig(kind="vit", weights="random", stride=14, shifts=(), flips=False, device="cpu",
                    precision="float32")
CLASSICAL = FeatureConfig(sigmas=(1.0, 2.0, 4.0), device="cpu")
SHAPE = (112, 140)  # 8 x 10 cells of 14 px


@pytest.fixture(scope="module")
def texture():
    """Smoothed noise, uint8 (112, 140): every patch distinct."""
    noise = gaussian_filter(np.random.default_rng(3).random(SHAPE), 1.5)
    return ((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def vit_pair(texture):
    """ViT features of the texture and of its copy rolled by (28, 42) px = (2, 3) cells."""
    shift = (28, 42)
    return featurise(texture, VIT), featurise(np.roll(texture, shift, axis=(0, 1)), VIT), shift


def exact(pairs_a, pairs_b, shift, shape=SHAPE):
    """Fraction of pairs whose displacement (modulo the image size: a roll) is ``shift``."""
    return float(np.mean(((pairs_b - pairs_a) % np.array(shape) == shift).all(1)))


def test_a_rolled_copy_is_recovered_with_vit_features(texture):
    shift = (28, 42)
    pa, pb = correspondences(texture, np.roll(texture, shift, axis=(0, 1)), VIT, n=20)
    assert pa.shape == pb.shape == (20, 2) and pa.dtype == np.int64
    assert exact(pa, pb, shift) >= 0.9
    # cell centres: index * 14 + 7
    assert np.all(pa % 14 == 7) and np.all(pb % 14 == 7)


def test_every_best_buddy_of_the_rolled_copy_is_exact_or_one_cell_off_at_the_border(vit_pair):
    fa, fb, shift = vit_pair
    pa, pb = correspondences_from_features(fa, fb, n=1000, min_saliency=0.0)
    assert 60 <= len(pa) < 1000  # fewer buddies than n: all of them, no padding
    assert exact(pa, pb, shift) >= 0.9
    off = ((pb - pa - np.array(shift)) // 14 + np.array([4, 5])) % np.array([8, 10]) - np.array([4, 5])
    assert np.abs(off).max() <= 1  # the rest: log-binning clamps at the borders, where the roll wraps
    for pairs in (pa, pb):  # best buddies are one-to-one
        assert len(np.unique(pairs, axis=0)) == len(pairs)


def test_a_rolled_copy_is_recovered_with_classical_features(texture):
    shift = (16, 24)  # (2, 3) cells of 8 px
    pa, pb = correspondences(texture, np.roll(texture, shift, axis=(0, 1)), CLASSICAL, n=30)
    assert len(pa) == 30
    assert exact(pa, pb, shift) >= 0.95


def planted(rng, shape, dim=8, attention=None):
    data = rng.normal(size=(*shape, dim)).astype(np.float32)
    return FeatureStack(data, VIT, tuple(f"vit_{i}" for i in range(dim)), attention)


def test_pairs_are_mutual_nearest_neighbours_of_the_log_binned_descriptors(rng):
    fa = planted(rng, (12, 15))
    fb = planted(rng, (10, 14))  # unrelated: buddies are rare and not trivially aligned
    pa, pb = correspondences_from_features(fa, fb, n=1000, cell=1, min_saliency=0.0)
    da, db = (unit_rows(log_bin(unit_rows(f.data))).reshape(-1, 17 * 8) for f in (fa, fb))
    sim = da @ db.T
    ia, ib = pa[:, 0] * 15 + pa[:, 1], pb[:, 0] * 14 + pb[:, 1]
    np.testing.assert_array_equal(sim[ia].argmax(1), ib)
    np.testing.assert_array_equal(sim[:, ib].argmax(0), ia)
    mutual = sim.argmax(0)[sim.argmax(1)] == np.arange(len(sim))
    assert len(pa) == mutual.sum() > 0  # all of them


def test_best_buddies_against_brute_force(rng):
    sim = rng.random((30, 25))
    ia, ib = best_buddies(sim)
    expected = [(i, j) for i in range(30) for j in range(25)
                if sim[i].argmax() == j and sim[:, j].argmax() == i]
    assert list(zip(ia.tolist(), ib.tolist())) == expected


def test_log_bin_layout(rng):
    grid = rng.random((9, 11, 2)).astype(np.float32)
    binned = log_bin(grid, levels=2)
    assert binned.shape == (9, 11, 17 * 2)
    bins = binned.reshape(9, 11, 17, 2)
    np.testing.assert_array_equal(bins[4, 5, 4], grid[4, 5])  # level 0 centre
    np.testing.assert_array_equal(bins[4, 5, 0], grid[3, 4])  # level 0, up-left neighbour
    np.testing.assert_allclose(bins[4, 5, 9], grid[0:3, 1:4].mean((0, 1)), rtol=1e-5)  # level 1, up-left
    np.testing.assert_allclose(bins[4, 5, 16], grid[6:9, 7:10].mean((0, 1)), rtol=1e-5)  # down-right
    np.testing.assert_array_equal(bins[0, 0, 0], grid[0, 0])  # outside: the nearest cell


def test_n_is_honoured_and_saliency_ranks(vit_pair):
    fa, fb, shift = vit_pair
    for n in (1, 5, 12):
        pa, pb = correspondences_from_features(fa, fb, n=n, min_saliency=0.0)
        assert len(pa) == len(pb) == n
    assert exact(pa, pb, shift) >= 0.8


def test_saliency_filters_and_orders(texture):
    """Attention rising along the columns: pairs below min_saliency are dropped, the rest come
    by decreasing saliency."""
    cols = np.broadcast_to(np.arange(SHAPE[1], dtype=np.float32)[None, :, None], (*SHAPE, 2))
    features = featurise(texture, CLASSICAL)
    fa = FeatureStack(features.data, CLASSICAL, features.channel_names, cols.copy())
    pa, pb = correspondences_from_features(fa, fa, n=1000, min_saliency=0.5)
    np.testing.assert_array_equal(pa, pb)  # an image with itself: the identity
    # cell means of the column are 8 c + 3.5 (c = 0..16), scaled (8 c) / 128: c = 8..16 pass
    assert len(pa) == 14 * 9
    assert pa[:, 1].min() == 8 * 8 + 4
    assert np.all(np.diff(pa[:, 1]) <= 0)  # decreasing saliency = decreasing column


def test_the_spread_keeps_the_most_salient_pair_of_each_cluster(rng):
    """Four vertical stripes of distinct descriptors, attention rising along the columns: the
    four most salient pairs all lie in the last stripe, the spread takes one per stripe."""
    stripe = np.repeat(np.arange(4), 5)[None, :].repeat(12, axis=0)  # (12, 20)
    protos = 3 * np.eye(8, dtype=np.float32)[:4]
    data = protos[stripe] + 0.1 * rng.normal(size=(12, 20, 8)).astype(np.float32)
    attention = np.broadcast_to(np.arange(20, dtype=np.float32)[None, :, None], (12, 20, 1)).copy()
    fa = FeatureStack(data, VIT, tuple(f"vit_{i}" for i in range(8)), attention)
    pa, pb = correspondences_from_features(fa, fa, n=4, cell=1, levels=1, min_saliency=0.0)
    np.testing.assert_array_equal(pa, pb)
    assert sorted(stripe[pa[:, 0], pa[:, 1]].tolist()) == [0, 1, 2, 3]
    np.testing.assert_array_equal(pa[:, 1], [19, 14, 9, 4])  # each stripe's most salient column, in order


def test_features_without_attention_have_uniform_saliency(texture):
    features = featurise(texture, CLASSICAL)
    assert features.attention is None
    pa, pb = correspondences_from_features(features, features, n=1000, min_saliency=1.0)
    assert len(pa) == (112 // 8) * (140 // 8)  # every cell its own buddy, none dropped
    np.testing.assert_array_equal(pa, pb)


def test_bad_input(texture, vit_pair):
    fa, fb, _ = vit_pair
    rgb = np.repeat(texture[..., None], 3, axis=-1)
    with pytest.raises(ValueError, match="channels"):
        correspondences(texture, rgb, CLASSICAL)
    with pytest.raises(ValueError, match="at least 1"):
        correspondences(texture, texture, CLASSICAL, n=0)
    with pytest.raises(TypeError, match="integer"):
        correspondences_from_features(fa, fb, n=2.5)
    with pytest.raises(ValueError, match="smaller than one 14x14 patch"):
        correspondences(texture[:10, :10], texture, VIT)
    with pytest.raises(ValueError, match="smaller than one cell"):
        correspondences_from_features(fa, fb, cell=120)
    with pytest.raises(ValueError, match="cell must be"):
        correspondences_from_features(fa, fb, cell=0)
    with pytest.raises(ValueError, match="more than"):
        correspondences_from_features(fa, fb, cell=1)
    with pytest.raises(ValueError, match="features differ"):
        correspondences_from_features(fa, featurise(texture, CLASSICAL))
    with pytest.raises(TypeError, match="FeatureStack"):
        correspondences_from_features(fa, texture)
    with pytest.raises(TypeError, match="FeatureConfig"):
        correspondences(texture, texture, {"kind": "vit"})
