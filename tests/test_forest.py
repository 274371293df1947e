"""Extremely randomised trees stored as arrays: same answers as scikit-learn, corrupt arrays refused."""

import json
import zipfile

import numpy as np
import pytest

from napari_dinoseg import FeatureConfig, TrainConfig, featurise, load_bundle, predict, save_bundle, train
from napari_dinoseg.forest import fit_forest, forest_from_arrays


@pytest.fixture
def banded(rng):
    """Features ``(4000, 3)`` and labels where class 1 is a middle intensity band: not linear."""
    x = rng.random((4000, 3)).astype(np.float32)
    y = np.where((x[:, 0] > 0.35) & (x[:, 0] < 0.65), 1, 2)
    return x, y


def test_forest_matches_scikit_learn(banded):
    from sklearn.ensemble import ExtraTreesClassifier

    x, y = banded
    forest = fit_forest(x[:3000], y[:3000], n_trees=7, class_weight="balanced", seed=3)
    reference = ExtraTreesClassifier(n_estimators=7, min_samples_leaf=2, class_weight="balanced",
                                     random_state=3).fit(x[:3000], y[:3000])
    np.testing.assert_allclose(forest.predict_proba(x[3000:], 3), reference.predict_proba(x[3000:]), atol=1e-6)
    assert forest.n_trees == 7 and forest.n_classes == 2


def test_trees_make_the_decisions_a_linear_model_cannot(banded):
    x, y = banded
    test = slice(3000, None)
    linear = train(x[:3000], y[:3000], TrainConfig(classifier="logistic", smooth=0))
    both = train(x[:3000], y[:3000], TrainConfig(smooth=0))
    acc_linear = (linear.to_labels(predict(linear, x[test])) == y[test]).mean()
    acc_both = (both.to_labels(predict(both, x[test])) == y[test]).mean()
    assert acc_linear < 0.8 < 0.95 < acc_both
    proba = predict(both, x[test])
    np.testing.assert_allclose(proba.sum(-1), 1, atol=1e-5)


def test_default_classifier_round_trips_through_a_bundle(tmp_path, two_textures):
    image, _, scribbles = two_textures
    cfg = FeatureConfig(sigmas=(1, 2))
    feats = featurise(image, cfg)
    clf = train(feats, scribbles)
    assert clf.forest is not None and clf.forest.n_trees == TrainConfig().n_trees
    clf2, _ = load_bundle(save_bundle(tmp_path / "c.dinoseg", clf, cfg))
    assert clf2.forest is not None
    np.testing.assert_array_equal(predict(clf2, feats), predict(clf, feats))


@pytest.mark.parametrize("corrupt", ["child_out_of_range", "cycle", "feature_out_of_range", "missing", "offsets"])
def test_corrupt_forest_arrays_are_refused_not_traversed(tmp_path, two_textures, corrupt):
    image, _, scribbles = two_textures
    cfg = FeatureConfig(sigmas=(1,))
    clf = train(featurise(image, cfg), scribbles, TrainConfig(n_trees=3))
    path = save_bundle(tmp_path / "c.dinoseg", clf, cfg)
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("bundle.json"))
        with zf.open("arrays.npz") as fh:
            arrays = dict(np.load(fh, allow_pickle=False))
    inner = np.flatnonzero(arrays["forest_left"] != -1)
    if corrupt == "child_out_of_range":
        arrays["forest_left"][inner[0]] = 10**6
    elif corrupt == "cycle":
        arrays["forest_right"][inner[1]] = 0  # back to the root
    elif corrupt == "feature_out_of_range":
        arrays["forest_feature"][inner[0]] = 99
    elif corrupt == "missing":
        del arrays["forest_values"]
    else:
        arrays["forest_offsets"][-1] += 5
    bad = tmp_path / "bad.dinoseg"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("bundle.json", json.dumps(meta))
        with zf.open("arrays.npz", "w") as fh:
            np.savez(fh, **arrays)
    with pytest.raises(ValueError, match="corrupt"):
        load_bundle(bad)


def test_forest_from_arrays_checks_shapes():
    with pytest.raises(ValueError, match="missing"):
        forest_from_arrays({}, 3, 2)
