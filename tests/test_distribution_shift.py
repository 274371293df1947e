"""The shift report: feature mix, inversion and confidence checks on real-looking synthetic micrographs."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from napari_dinoseg import FeatureConfig, Segmenter
from napari_dinoseg.distribution_shift import (FEATURE_THRESHOLD, FeatureDistribution, TrainingStatistics, kmeans,
                                  sample_step, total_variation)

SIZE = 192


def precipitates(seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A superalloy-like SEM image: dark rounded cuboids (~50 % of the area, so that the intensity
    histogram is nearly symmetric and an inversion keeps its quantiles) in a bright matrix, blurred,
    with noise. ``(uint8 image, truth: 1 matrix, 2 precipitate)``."""
    rng = np.random.default_rng(seed)
    truth = np.ones((size, size), np.uint8)
    for cy in range(12, size, 24):
        for cx in range(12, size, 24):
            y, x = cy + rng.integers(-3, 4), cx + rng.integers(-3, 4)
            half = rng.integers(7, 11)
            truth[max(0, y - half):y + half, max(0, x - half):x + half] = 2
    image = np.where(truth == 2, 0.3, 0.75) + 0.05 * gaussian_filter(rng.normal(size=truth.shape), 3)
    image = gaussian_filter(image, 1.2) + rng.normal(0, 0.03, truth.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), truth


def cells(seed: int, size: int = SIZE) -> np.ndarray:
    """A membrane-like TEM image: bright textured cells bounded by thin dark membranes (Voronoi edges)."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, size, (40, 2))
    yy, xx = np.mgrid[:size, :size]
    d, _ = cKDTree(points).query(np.stack([yy.ravel(), xx.ravel()], 1), k=2)
    edge = (d[:, 1] - d[:, 0] < 2.0).reshape(size, size)
    image = np.where(edge, 0.15, 0.65) + 0.1 * gaussian_filter(rng.normal(size=(size, size)), 1.5)
    image = gaussian_filter(image, 0.8) + rng.normal(0, 0.03, (size, size))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def strokes(truth: np.ndarray) -> np.ndarray:
    """Thin brush strokes along a few rows, inside each class (eroded away from the boundaries)."""
    from scipy.ndimage import binary_erosion

    labels = np.zeros_like(truth)
    for row in range(6, truth.shape[0], 24):
        for cls in (1, 2):
            inside = binary_erosion(truth == cls, iterations=2)
            labels[row:row + 2][inside[row:row + 2]] = cls
    return labels


@pytest.fixture(scope="module")
def trained():
    image, truth = precipitates(0)
    return image, Segmenter().fit(image, strokes(truth))


# ---- the pieces -----------------------------------------------------------------------------


def test_kmeans_finds_three_separated_clusters_and_is_deterministic():
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.5, (200, 2)) for c in centres])
    found = kmeans(x, 3, seed=0)
    assert found.shape == (3, 2)
    assert np.abs(np.sort(found, axis=0) - np.sort(centres, axis=0)).max() < 0.2
    np.testing.assert_array_equal(kmeans(x, 3, seed=0), found)
    assert kmeans(np.zeros((10, 2)), 5).shape == (1, 2)  # one distinct point: one centroid


def test_total_variation_and_sample_step():
    assert total_variation([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5)
    assert total_variation([1, 0], [1, 0]) == 0.0
    assert sample_step((64, 64)) == 1 and sample_step((512, 512)) == 8 and sample_step((1024, 1024)) == 16


def test_feature_distribution_tells_a_sample_of_its_own_from_a_shifted_one_and_from_the_inverted_reference():
    rng = np.random.default_rng(2)
    train = rng.normal(0, 1, (8000, 12)) * np.linspace(3, 0.5, 12)
    other = train + np.r_[9.0, np.zeros(11)]  # shifted by 3 standard deviations along the first axis
    dist = FeatureDistribution.fit(train, other, confidence=0.9)
    assert dist.n_dims == 12 and dist.axes.shape == (8, 12) and dist.centroids.shape == (32, 8)
    np.testing.assert_allclose(dist.fractions.sum(), 1.0)
    same, inverted = dist.distances(rng.normal(0, 1, (4096, 12)) * np.linspace(3, 0.5, 12))
    assert same < 0.1 and inverted > 0.4
    far, near = dist.distances(other[:4096])
    assert far > 0.4 and near < 0.1
    assert dist.warnings(other[:4096])[0].startswith("its contrast looks inverted")
    elsewhere = train[:4096] + np.r_[0.0, 12.0, np.zeros(10)]  # far from both references
    assert min(dist.distances(elsewhere)) > FEATURE_THRESHOLD
    assert dist.warnings(elsewhere)[0].startswith("unlike the training images:")
    assert dist.warnings(train[:4096], confidence=0.5)[0].startswith("the classifier is unsure")
    assert dist.warnings(train[:4096], confidence=0.85) == []
    with pytest.raises(ValueError, match=r"not \(M, 12\) rows"):
        dist.mix(train[:, :5])


def test_feature_distribution_round_trip_and_refusals():
    rng = np.random.default_rng(3)
    dist = FeatureDistribution.fit(rng.normal(size=(500, 5)), None, confidence=0.75)
    data = json.loads(json.dumps(dist.to_dict()))
    back = FeatureDistribution.from_dict(data)
    assert back.inverted is None and back.confidence == 0.75
    for name in ("centre", "axes", "centroids", "fractions"):
        np.testing.assert_allclose(getattr(back, name), getattr(dist, name), rtol=1e-6, atol=1e-7)
    bad_shape = dict(data, centroids=[[0.0, 1.0]])
    with pytest.raises(ValueError, match="inconsistent shapes"):
        FeatureDistribution.from_dict(bad_shape)
    with pytest.raises(ValueError, match="non-finite"):
        FeatureDistribution.from_dict(dict(data, confidence=float("nan")))
    with pytest.raises(ValueError, match="other than numbers"):
        FeatureDistribution.from_dict(dict(data, fractions=["a"] * len(data["fractions"])))
    with pytest.raises(ValueError, match="unreadable"):
        FeatureDistribution.from_dict({k: v for k, v in data.items() if k != "axes"})


# ---- the Segmenter on synthetic micrographs ---------------------------------------------------


def test_another_image_of_the_same_kind_passes(trained):
    image, seg = trained
    assert seg.check(image) == []
    for seed in (1, 2, 3):
        other, _ = precipitates(seed)
        assert seg.check(other) == [], seed
        distance, inverted = seg.statistics.features.distances(seg.feature_sample(other)[0])
        assert distance < FEATURE_THRESHOLD / 2 < inverted


def test_an_inverted_copy_is_flagged_where_the_intensity_quantiles_see_nothing(trained):
    image, seg = trained
    inverted = 255 - image
    quantiles_only = seg.statistics.check(seg.normalise(inverted))  # what the report said before
    assert quantiles_only == []
    warnings = seg.check(inverted)
    assert len(warnings) == 1 and warnings[0].startswith("its contrast looks inverted"), warnings
    assert "Invert it back" in warnings[0]


def test_another_kind_of_micrograph_is_flagged(trained):
    _, seg = trained
    warnings = seg.check(cells(0))
    assert any(w.startswith("unlike the training images:") and "kinds (textures" in w for w in warnings), warnings


def test_check_reads_the_sample_predict_proba_kept_and_featurises_only_for_foreign_probabilities(trained, monkeypatch):
    image, seg = trained
    other = 255 - precipitates(4)[0]
    for tile in (1024, 80):  # one window, then tiles with margins: one plane-wide grid either way
        seg.tile = tile
        try:
            proba = seg.predict_proba(other)
            kept = seg._kept_sample(proba)
            fresh = seg.feature_sample(other)
            assert kept[0].shape == fresh[0].shape and len(kept[0]) == (SIZE // 3) ** 2  # every 3rd row, column
            np.testing.assert_allclose(np.sort(kept[0], axis=0), np.sort(fresh[0], axis=0), atol=1e-4)
            assert kept[1] == pytest.approx(fresh[1], abs=1e-4)
            calls = []
            grid_rows = Segmenter._grid_rows
            monkeypatch.setattr(Segmenter, "_grid_rows", lambda *a: calls.append(1) or grid_rows(*a))
            warnings = seg.check(other, proba)
            assert calls == [] and warnings and warnings[0].startswith("its contrast looks inverted")
            assert seg.check(other, proba.copy()) == warnings and calls == [1]  # not ours: featurised
            monkeypatch.undo()
        finally:
            seg.tile = 1024


def test_bundles_keep_the_feature_distribution_and_older_ones_check_intensities_only(tmp_path, trained):
    image, seg = trained
    path = seg.save(tmp_path / "model.dinoseg")
    back = Segmenter.load(path)
    np.testing.assert_allclose(back.statistics.features.fractions, seg.statistics.features.fractions, atol=1e-7)
    assert back.check(255 - image) == seg.check(255 - image) != []
    old = tmp_path / "format7.dinoseg"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(old, "w") as zout:
        meta = json.loads(zin.read("bundle.json"))
        assert meta["format_version"] == 9 and "features" in meta["statistics"]
        del meta["statistics"]["features"]
        meta["format_version"] = 7
        zout.writestr("bundle.json", json.dumps(meta))
        zout.writestr("arrays.npz", zin.read("arrays.npz"))
    loaded = Segmenter.load(old)
    assert loaded.statistics.features is None
    np.testing.assert_array_equal(loaded.statistics.quantiles, seg.statistics.quantiles)
    assert loaded.check(255 - image) == []  # intensities alike: an older bundle cannot see the inversion
    assert loaded.check(cells(0)) == seg.statistics.check(seg.normalise(cells(0)))


def test_a_bundle_whose_feature_distribution_does_not_fit_its_classifier_is_refused(tmp_path, trained):
    _, seg = trained
    path = seg.save(tmp_path / "model.dinoseg")
    bad = tmp_path / "bad.dinoseg"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(bad, "w") as zout:
        meta = json.loads(zin.read("bundle.json"))
        features = meta["statistics"]["features"]
        features["centre"] = features["centre"][:-1]
        features["axes"] = [row[:-1] for row in features["axes"]]
        zout.writestr("bundle.json", json.dumps(meta))
        zout.writestr("arrays.npz", zin.read("arrays.npz"))
    with pytest.raises(ValueError, match="feature distribution has .* columns, not those of its classifier"):
        Segmenter.load(bad)


def test_training_statistics_without_a_sample_check_intensities_only(trained):
    image, seg = trained
    stats = seg.statistics
    assert isinstance(stats, TrainingStatistics) and stats.features is not None
    assert stats.check(seg.normalise(255 - image)) == []  # no features given: no feature checks
    sample, confidence = seg.feature_sample(255 - image)
    assert stats.check(seg.normalise(255 - image), features=sample, confidence=confidence)[0].startswith(
        "its contrast looks inverted")


def test_vit_and_hybrid_features_check_in_the_classifiers_logit_space(tmp_path):
    """Mechanics only (random weights: no claim about what DINOv2 features tell apart): the sample
    kept from the logit-space prediction (the ViT map never built) equals the one featurised in
    pixel space, in the same columns as the training distribution."""
    image, truth = precipitates(0, 112)
    hybrid = FeatureConfig(kind="hybrid", weights="random", stride=14, shifts=(), flips=False, device="cpu",
                           sigmas=(1.0, 2.0), membrane=False, precision="float32")
    seg = Segmenter(hybrid).fit(image, strokes(truth))
    assert seg.logit_space() is not None
    proba = seg.predict_proba(image)
    kept, confidence = seg._kept_sample(proba)
    fresh, fresh_confidence = seg.feature_sample(image)
    assert kept.shape == fresh.shape and kept.shape[1] == seg.statistics.features.n_dims
    np.testing.assert_allclose(kept, fresh, atol=2e-3)
    assert confidence == pytest.approx(fresh_confidence, abs=1e-3)
    distance, inverted = seg.statistics.features.distances(kept)
    assert distance < FEATURE_THRESHOLD and inverted is None  # no second forward pass for the inverted images
    back = Segmenter.load(seg.save(tmp_path / "hybrid.dinoseg"))
    assert back.statistics.features.n_dims == kept.shape[1]
    np.testing.assert_allclose(back._kept_sample(back.predict_proba(image))[0], kept, atol=1e-4)
    assert back.check(image, back.predict_proba(image)) == seg.check(image, proba)


def test_check_of_foreign_probabilities_reads_the_planes_features_from_a_cache(trained, monkeypatch):
    """Probabilities put together elsewhere (the widget's view-first prediction) carry no sample:
    the check featurises the plane, through the cache that already holds its features."""
    import importlib

    from napari_dinoseg.features.featurise import FeatureCache

    featurise_module = importlib.import_module("napari_dinoseg.features.featurise")
    image, seg = trained
    other = 255 - precipitates(5)[0]
    cache = FeatureCache()
    proba = seg.predict_proba(other, cache=cache)
    computed = []
    featurise = featurise_module.featurise
    monkeypatch.setattr(featurise_module, "featurise", lambda *a, **k: computed.append(1) or featurise(*a, **k))
    warnings = seg.check(other, proba.copy(), cache=cache)
    assert computed == [] and warnings[0].startswith("its contrast looks inverted")


def test_check_through_a_cache_computes_a_planes_intensity_statistics_once(trained, monkeypatch):
    """The image statistics (intensity and edge quantiles, a Gaussian gradient of the whole
    plane: 0.8 s at 4096²) of a plane checked again through a cache, or of a training image
    refitted and checked, are computed once; the warnings are those of the uncached check."""
    import napari_dinoseg.segmenter_checks as segmenter_module
    import napari_dinoseg.distribution_shift as shift_module
    from napari_dinoseg.features.featurise import FeatureCache

    image, seg = trained
    other = cells(1)
    uncached = seg.check(other)
    cache = FeatureCache()
    calls = []
    statistics = segmenter_module.image_statistics
    for module in (segmenter_module, shift_module):
        monkeypatch.setattr(module, "image_statistics", lambda norm: calls.append(1) or statistics(norm))
    refit = Segmenter(seg.features).fit(image, strokes(precipitates(0)[1]), cache=cache)
    assert refit.check(image, cache=cache) is not None and len(calls) == 1  # the fit's statistics reused
    assert refit.check(other, cache=cache) == refit.check(other, cache=cache) and len(calls) == 2
    assert refit.check(other, cache=cache) == refit.check(other)
    assert any(w.startswith("unlike the training images:") for w in uncached)
