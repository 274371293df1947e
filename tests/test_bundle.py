"""Classifier bundles: round trip, no code execution, clear errors."""

import dataclasses
import io
import json
import pickle
import zipfile

import numpy as np
import pytest

from napari_dinoseg import FeatureConfig, TrainConfig, featurise, load_bundle, predict, save_bundle, train
from napari_dinoseg.bundle import FORMAT_VERSION, bundle_channels


@pytest.fixture
def trained(two_textures):
    image, _, scribbles = two_textures
    cfg = FeatureConfig(sigmas=(1, 2, 4))
    feats = featurise(image, cfg)
    return image, feats, train(feats, scribbles), cfg


def test_round_trip_gives_identical_predictions(tmp_path, trained):
    image, feats, clf, cfg = trained
    path = save_bundle(tmp_path / "clf.dinoseg", clf, cfg, channel_names=feats.channel_names)
    clf2, cfg2 = load_bundle(path)
    assert cfg2 == cfg and bundle_channels(path) == 1
    np.testing.assert_array_equal(predict(clf2, featurise(image, cfg2)), predict(clf, feats))
    assert not list(tmp_path.glob(".bundle-*"))  # written atomically, no temporary left


def test_scaling_and_smoothing_travel_with_the_bundle(tmp_path, trained, two_textures):
    image, feats, clf, cfg = trained
    guide = (feats.channel_names.index("gaussian_s1"),)
    assert (clf.scaling, clf.smooth, clf.guided_radius, clf.guide) == ("log", 0.0, 4, guide)  # the defaults
    clf2, _ = load_bundle(save_bundle(tmp_path / "clf.dinoseg", clf, cfg))
    assert (clf2.scaling, clf2.smooth, clf2.guided_radius, clf2.guide) == ("log", 0.0, 4, guide)
    smoothed = train(feats, two_textures[2], TrainConfig(smooth=1.5, guided_radius=0))
    clf3, _ = load_bundle(save_bundle(tmp_path / "gauss.dinoseg", smoothed, cfg))
    assert (clf3.smooth, clf3.guided_radius, clf3.guide) == (1.5, 0, ())


@pytest.mark.parametrize("bad", [{"scaling": "weird"}, {"smooth": -3}, {"smooth": "1"}, {"guided_radius": -1},
                                 {"guided_radius": 2.5}, {"guide": [10_000]}, {"guide": [-1]}, {"guide": ["1"]},
                                 {"guide": 1}, {"guide": [0], "n_features": None}])
def test_bundles_with_a_bad_scaling_or_smoothing_are_corrupt(tmp_path, trained, bad):
    _, _, clf, cfg = trained
    path = save_bundle(tmp_path / "clf.dinoseg", clf, cfg)
    with zipfile.ZipFile(path) as zf:
        meta, raw = json.loads(zf.read("bundle.json")), zf.read("arrays.npz")
    meta.update(bad)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("bundle.json", json.dumps(meta))
        zf.writestr("arrays.npz", raw)
    with pytest.raises(ValueError, match="is corrupt"):
        load_bundle(path)


def test_format_1_bundles_load_as_standard_scaling_without_smoothing(tmp_path, trained, two_textures):
    """Bundles written before scaling / smoothing were stored predicted with neither."""
    image, feats, _, cfg = trained
    clf = train(feats, two_textures[2], TrainConfig(classifier="logistic", scaling="standard", guided_radius=0))
    path = save_bundle(tmp_path / "old.dinoseg", clf, cfg)
    with zipfile.ZipFile(path) as zf:
        meta, raw = json.loads(zf.read("bundle.json")), zf.read("arrays.npz")
    meta["format_version"] = 1
    del meta["scaling"], meta["smooth"], meta["guided_radius"], meta["guide"]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("bundle.json", json.dumps(meta))
        zf.writestr("arrays.npz", raw)
    old, _ = load_bundle(path)
    assert (old.scaling, old.smooth, old.guided_radius) == ("standard", 0.0, 0)
    np.testing.assert_array_equal(predict(old, feats), predict(clf, feats))


def test_format_2_bundles_load_without_the_guided_filter(tmp_path, trained, two_textures):
    """Bundles written before the guided filter keep predicting as they did (Gaussian smoothing only)."""
    image, feats, _, cfg = trained
    clf = train(feats, two_textures[2], TrainConfig(smooth=1.0, guided_radius=0))
    path = save_bundle(tmp_path / "v2.dinoseg", clf, cfg)
    with zipfile.ZipFile(path) as zf:
        meta, raw = json.loads(zf.read("bundle.json")), zf.read("arrays.npz")
    meta["format_version"] = 2
    del meta["guided_radius"], meta["guide"]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("bundle.json", json.dumps(meta))
        zf.writestr("arrays.npz", raw)
    old, _ = load_bundle(path)
    assert (old.smooth, old.guided_radius, old.guide) == (1.0, 0, ())
    np.testing.assert_array_equal(predict(old, feats), predict(clf, feats))


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_pickle_payloads_are_rejected_without_running(tmp_path, trained):
    _, _, clf, cfg = trained
    marker = tmp_path / "pwned"
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(ValueError, match="pickle"):
        load_bundle(plain)
    # a well-formed bundle whose arrays.npz hides an object array (pickled) payload
    good = save_bundle(tmp_path / "good.dinoseg", clf, cfg)
    arrays = io.BytesIO()
    np.savez(arrays, coef=np.array([Payload(str(marker))], dtype=object), intercept=clf.intercept,
             classes=clf.classes, mean=clf.mean, scale=clf.scale)
    crafted = tmp_path / "crafted.dinoseg"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(crafted, "w") as dst:
        dst.writestr("bundle.json", src.read("bundle.json"))
        dst.writestr("arrays.npz", arrays.getvalue())
    with pytest.raises(ValueError, match="object arrays are refused"):
        load_bundle(crafted)
    assert not marker.exists()


def test_corrupt_foreign_and_mismatched_files(tmp_path, trained):
    _, _, clf, cfg = trained
    (tmp_path / "junk.dinoseg").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a zip archive"):
        load_bundle(tmp_path / "junk.dinoseg")
    with zipfile.ZipFile(tmp_path / "foreign.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="is not a napari-dinoseg bundle"):
        load_bundle(tmp_path / "foreign.zip")
    with pytest.raises(ValueError, match="does not exist"):
        load_bundle(tmp_path / "missing.dinoseg")
    good = save_bundle(tmp_path / "good.dinoseg", clf, cfg)

    def rewrite(name, edit):
        with zipfile.ZipFile(good) as src:
            meta, arrays = json.loads(src.read("bundle.json")), src.read("arrays.npz")
        edit(meta)
        with zipfile.ZipFile(tmp_path / name, "w") as dst:
            dst.writestr("bundle.json", json.dumps(meta))
            dst.writestr("arrays.npz", arrays)
        return tmp_path / name

    with pytest.raises(ValueError, match="makes"):
        load_bundle(rewrite("sigmas.dinoseg", lambda m: m["feature_config"].update(sigmas=[1, 2])))
    with pytest.raises(ValueError, match="unknown model"):
        load_bundle(rewrite("model.dinoseg", lambda m: m["feature_config"].update(kind="vit", model="dinov9_giant")))
    with pytest.raises(ValueError, match="newer"):
        load_bundle(rewrite("future.dinoseg", lambda m: m.update(format_version=99)))
    with pytest.warns(UserWarning, match="other library versions"):
        load_bundle(rewrite("old.dinoseg", lambda m: m["versions"].update(numpy="1.0.0")))


def test_saving_with_the_wrong_config_is_refused(tmp_path, trained):
    _, _, clf, _ = trained
    with pytest.raises(ValueError, match="does not produce"):
        save_bundle(tmp_path / "x.dinoseg", clf, FeatureConfig())


@pytest.fixture
def linear_in_vit(two_textures):
    """Hybrid-like features (classical + 'vit_' channels) and the default classifier on them:
    ViT channels read linearly, the trees on the classical channels and 4 ViT components."""
    from napari_dinoseg.features.featurise import FeatureStack

    image, _, scribbles = two_textures
    cfg = FeatureConfig(sigmas=(1, 2))
    classical = featurise(image, cfg)
    vit = classical.data[..., :6] @ np.random.default_rng(1).normal(size=(6, 12)).astype(np.float32)
    stack = FeatureStack(np.concatenate([classical.data, vit], -1), cfg,
                         classical.channel_names + tuple(f"vit_{i}" for i in range(12)))
    return stack, train(stack, scribbles, TrainConfig(vit_components=4))


def test_the_trees_components_and_linear_channels_travel_with_the_bundle(tmp_path, linear_in_vit, monkeypatch):
    import napari_dinoseg.bundle_checks as bundle_checks  # where read_bundle's feature-count check lives

    stack, clf = linear_in_vit
    n = stack.n_features - 12  # classical channels
    assert clf.linear == tuple(range(n, n + 12)) and clf.tree_channels == tuple(range(n))
    assert clf.tree_components.shape == (4, 12) and clf.n_tree_features == n + 4
    # the classical config cannot make the 'vit_' stand-ins: check them against a count that fits
    monkeypatch.setattr(bundle_checks, "_check", lambda *a: None)
    import importlib

    featurise_module = importlib.import_module("napari_dinoseg.features.featurise")
    monkeypatch.setattr(featurise_module, "n_features", lambda config, channels=1: n + 12)
    path = save_bundle(tmp_path / "clf.dinoseg", clf, stack.config, channel_names=stack.channel_names)
    back, _ = load_bundle(path)
    assert (back.linear, back.tree_channels) == (clf.linear, clf.tree_channels)
    np.testing.assert_array_equal(back.tree_components, clf.tree_components)
    np.testing.assert_array_equal(predict(back, stack), predict(clf, stack))
    with zipfile.ZipFile(path) as zf:
        meta, raw = json.loads(zf.read("bundle.json")), zf.read("arrays.npz")
    assert meta["format_version"] == FORMAT_VERSION == 9 and meta["training_config"]["vit_components"] == 4
    arrays = dict(np.load(io.BytesIO(raw)))
    forged = [({"tree_channels": [0, n]}, arrays, "trees read linear channels"),
              ({"linear": [n, n]}, arrays, "linear channels"),
              ({"tree_channels": [99]}, arrays, "tree channels"),
              ({}, {k: v for k, v in arrays.items() if k != "tree_components"}, "tree components disagree"),
              ({}, {**arrays, "tree_components": arrays["tree_components"][:, :5]}, "tree_components array"),
              ({}, {**arrays, "tree_components": np.full((4, 12), np.nan, np.float32)}, "tree_components array")]
    for update, data, match in forged:
        buffer = io.BytesIO()
        np.savez(buffer, **data)
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("bundle.json", json.dumps({**meta, **update}))
            zf.writestr("arrays.npz", buffer.getvalue())
        with pytest.raises(ValueError, match=f"is corrupt.*{match}"):
            load_bundle(path)


def test_format_4_bundles_load_with_trees_on_every_channel(tmp_path, trained):
    """Before format 5, no channel was read linearly and the trees read them all: vit_components=0."""
    from napari_dinoseg import Segmenter

    image, feats, clf, cfg = trained
    seg = Segmenter(cfg)
    seg.classifier, seg.n_channels, seg.channel_names = clf, 1, feats.channel_names
    path = seg.save(tmp_path / "clf.dinoseg")
    with zipfile.ZipFile(path) as zf:
        meta, raw = json.loads(zf.read("bundle.json")), zf.read("arrays.npz")
    meta["format_version"] = 4
    for key in ("linear", "tree_channels"):
        meta.pop(key)
    meta["training_config"].pop("vit_components")
    meta["training_config"].pop("predict_step")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("bundle.json", json.dumps(meta))
        zf.writestr("arrays.npz", raw)
    back = Segmenter.load(path)
    assert back.training.vit_components == 0 and back.classifier.linear == () and back.classifier.tree_channels is None
    assert back.training.predict_step == back.classifier.predict_step == 1  # before format 6: every pixel
    seg.classifier = dataclasses.replace(clf, predict_step=1)
    np.testing.assert_array_equal(back.predict_proba(image), seg.predict_proba(image))


def test_the_prediction_lattice_travels_with_the_bundle(tmp_path, two_textures):
    """Format 6 stores ``predict_step``: a loaded bundle predicts what the trained classifier does."""
    from napari_dinoseg import Segmenter

    image, _, scribbles = two_textures
    for step in (1, 3):
        seg = Segmenter(FeatureConfig(sigmas=(1, 2, 4)), TrainConfig(predict_step=step)).fit(image, scribbles)
        back = Segmenter.load(seg.save(tmp_path / f"step{step}.dinoseg"))
        assert back.training.predict_step == back.classifier.predict_step == step
        np.testing.assert_array_equal(back.predict_proba(image), seg.predict_proba(image))
