"""The Segmenter: one trained pipeline for every path (fit, predict, check, save / load, the CLI)."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from conftest import iou
from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig, featurise, predict
from napari_dinoseg.config import CRFConfig

SMALL = FeatureConfig(sigmas=(1, 2, 4), membrane=False)


def brighter(image: np.ndarray) -> np.ndarray:
    """The same image with other brightness and contrast (x 0.6 + 60 grey levels)."""
    return np.clip(image * 0.6 + 60, 0, 255).astype(image.dtype)


def test_fit_predict_segment_shapes_and_quality(phases):
    image, truth, scribbles = phases
    seg = Segmenter(SMALL).fit(image, scribbles)
    proba = seg.predict_proba(image)
    assert proba.shape == (160, 160, 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(-1), 1, atol=1e-5)
    labels = seg.segment(image)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {1, 2, 3}
    assert min(iou(labels, truth, c) for c in (1, 2, 3)) > 0.85
    assert seg.check(image) == []  # the training image looks like the training image


def test_save_load_round_trip_predicts_identically(tmp_path, phases):
    image, _, scribbles = phases
    seg = Segmenter(SMALL, TrainConfig(n_trees=5), crf=CRFConfig(iterations=3)).fit(image, scribbles)
    path = seg.save(tmp_path / "model.dinoseg")
    back = Segmenter.load(path)
    assert back.features == seg.features and back.training == seg.training and back.crf == seg.crf
    assert back.n_channels == 1 and back.channel_names == seg.channel_names
    np.testing.assert_array_equal(back.statistics.quantiles, seg.statistics.quantiles)
    other = brighter(np.roll(image, 17, axis=1))
    np.testing.assert_array_equal(back.predict_proba(other), seg.predict_proba(other))
    assert back.check(255 - image) == seg.check(255 - image) != []


def test_a_two_image_fit_learns_from_the_labels_of_both(phases):
    image, truth, scribbles = phases
    only_12 = np.where(scribbles == 3, 0, scribbles)
    only_3 = np.where(scribbles == 3, 3, 0).astype(np.uint8)
    second = np.roll(image, 40, axis=0)  # another image of the material, another size below
    seg = Segmenter(SMALL).fit([image, second[:, :150]], [only_12, np.roll(only_3, 40, axis=0)[:, :150]])
    assert seg.classes.tolist() == [1, 2, 3]
    assert iou(seg.segment(image), truth, 3) > 0.8  # class 3 was painted on the second image only
    with pytest.raises(ValueError, match="2 images but 1 label"):
        Segmenter(SMALL).fit([image, second], [scribbles])
    with pytest.raises(ValueError, match="do not match image 1"):
        Segmenter(SMALL).fit([image, second], [scribbles, scribbles[:100]])


def test_percentile_normalisation_survives_brightness_and_contrast_changes(tmp_path, phases):
    """The folder use case: the default rule keeps the segmentation; a fixed range does not,
    and then check() says so instead of staying silent."""
    image, truth, scribbles = phases
    seg = Segmenter(SMALL).fit(image, scribbles)
    changed = brighter(image)
    assert (seg.segment(changed) == seg.segment(image)).mean() > 0.98
    assert seg.check(changed) == []
    fixed = Segmenter(dataclasses.replace(SMALL, normalise="fixed")).fit(image, scribbles)
    path = fixed.save(tmp_path / "fixed.dinoseg")
    loaded = Segmenter.load(path)
    assert loaded.features.normalise == "fixed"  # stored, and applied:
    np.testing.assert_array_equal(loaded.segment(changed), fixed.segment(changed))
    assert np.mean([iou(loaded.segment(changed), truth, c) for c in (1, 2, 3)]) < 0.8
    warnings = loaded.check(changed)
    assert any("unlike the training images" in w and "normalise='percentile'" in w for w in warnings)


def test_check_flags_an_inverted_copy_and_a_collapsed_prediction(phases):
    image, _, scribbles = phases
    seg = Segmenter(SMALL).fit(image, scribbles)
    inverted = seg.check(255 - image)
    assert len(inverted) >= 1 and "unlike the training images: its intensity" in inverted[0]
    collapsed = np.zeros((160, 160, 3), np.float32)
    collapsed[..., 1] = 1
    warnings = seg.check(image, collapsed)
    assert len(warnings) == 1 and "collapsed prediction: 100.0 % of the pixels are label 2" in warnings[0]


def test_format_3_bundles_load_with_the_legacy_rule_and_predict_as_before(tmp_path, phases):
    image, _, scribbles = phases
    legacy = dataclasses.replace(SMALL, normalise="legacy")
    seg = Segmenter(legacy, TrainConfig(predict_step=1)).fit(image, scribbles)  # format 3 predicted every pixel
    path = seg.save(tmp_path / "new.dinoseg")
    old = tmp_path / "old.dinoseg"  # the same bundle as format 3 wrote it
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(old, "w") as zout:
        meta = json.loads(zin.read("bundle.json"))
        for key in ("training_config", "crf_config", "statistics"):
            del meta[key]
        meta["format_version"] = 3
        for key in ("normalise", "percentiles", "intensity_range", "precision"):
            del meta["feature_config"][key]
        zout.writestr("bundle.json", json.dumps(meta))
        zout.writestr("arrays.npz", zin.read("arrays.npz"))
    loaded = Segmenter.load(old)
    assert loaded.features.normalise == "legacy" and loaded.statistics is None and loaded.crf is None
    assert loaded.features.precision == "float32"  # ViT features were float32 before the option
    assert loaded.training.predict_step == 1 and loaded.classifier.predict_step == 1
    before = predict(seg.classifier, featurise(image, loaded.features))  # the lower-level API, as format 3 did
    np.testing.assert_array_equal(loaded.predict_proba(image), before)
    assert loaded.check(image) == []  # no statistics: only the collapse check


@pytest.mark.parametrize("name, value, match", [
    ("coef", np.nan, "non-finite"), ("intercept", np.inf, "non-finite"),
    ("scale", 0.0, "zero or negative"), ("scale", np.nan, "non-finite"),
])
def test_bundles_with_non_finite_or_zero_numbers_are_corrupt(tmp_path, phases, name, value, match):
    image, _, scribbles = phases
    seg = Segmenter(SMALL, TrainConfig(classifier="logistic")).fit(image, scribbles)
    bad = getattr(seg.classifier, name).copy()
    bad[0] = value
    seg.classifier = dataclasses.replace(seg.classifier, **{name: bad})
    with np.errstate(all="ignore"), pytest.raises(ValueError, match="non-finite probabilities"):
        seg.predict_proba(image)  # never returned as a result
    path = seg.save(tmp_path / "bad.dinoseg")
    with pytest.raises(ValueError, match=f"is corrupt: .*{match}"):
        Segmenter.load(path)


def test_label_values_pick_the_output_dtype_and_channels_are_checked(phases):
    image, truth, scribbles = phases
    big = np.where(scribbles == 3, 70000, scribbles.astype(np.int64) * 300)
    seg = Segmenter(SMALL, TrainConfig(classifier="logistic")).fit(image, big)
    out = seg.segment(image)
    assert out.dtype == np.uint32 and set(np.unique(out)) == {300, 600, 70000}
    with pytest.raises(ValueError, match="has 3 channel.*trained on 1"):
        seg.predict_proba(np.stack([image] * 3, -1))
    with pytest.raises(ValueError, match="not fitted"):
        Segmenter().predict_proba(image)


def test_dinoseg_train_and_apply_on_files(tmp_path, phases, capsys):
    from napari_dinoseg.cli import main

    image, truth, scribbles = phases
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(tmp_path / "a.tif", image)
    imsave(tmp_path / "a_labels.png", scribbles, check_contrast=False)
    tifffile.imwrite(tmp_path / "b.tif", np.roll(image, 30, axis=1))
    imsave(tmp_path / "b_labels.png", np.roll(scribbles, 30, axis=1), check_contrast=False)
    model = tmp_path / "model.dinoseg"
    code = main(["train", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--labels", str(tmp_path / "a_labels.png"),
                 str(tmp_path / "b_labels.png"), "-o", str(model), "--classifier", "logistic", "--crf"])
    assert code == 0 and "on 2 image plane(s)" in capsys.readouterr().out
    seg = Segmenter.load(model)
    assert seg.crf == CRFConfig() and seg.training.classifier == "logistic" and seg.statistics.quantiles.shape[0] == 2
    tifffile.imwrite(d / "new.tif", brighter(image))
    tifffile.imwrite(d / "inverted.tif", 255 - image)
    out = tmp_path / "out"
    assert main(["apply", str(model), str(d), "-o", str(out)]) == 0  # a warning does not fail the run...
    text = capsys.readouterr().out
    assert "done 2" in text and "1 with warnings" in text and "inverted.tif: unlike the training images" in text
    np.testing.assert_array_equal(tifffile.imread(out / "new_labels.tif"), seg.segment(brighter(image)))
    assert main(["apply", str(model), str(d), "-o", str(out), "--strict", "--overwrite"]) == 1  # ...unless --strict
    assert main(["train", str(tmp_path / "a.tif"), "--labels", str(tmp_path / "a_labels.png"),
                 str(tmp_path / "b_labels.png"), "-o", str(model)]) == 2
    assert "1 images but 2 label files" in capsys.readouterr().err


def test_tone_curve_augmentation_trains_on_gamma_variants(phases):
    """augment=(g, ...): each training image is featurised again after x -> sign(x)|x|^g, and the
    classifier learns from all of them (statistics describe the images as painted)."""
    from napari_dinoseg.features.featurise import FeatureCache
    from napari_dinoseg.segmenter import tone_curve

    image, truth, scribbles = phases
    cache = FeatureCache()
    seg = Segmenter(SMALL, TrainConfig(augment=(0.5, 2.0))).fit(image, scribbles, cache=cache)
    assert len(cache) == 3 and seg.statistics.quantiles.shape[0] == 1
    x = np.linspace(-0.5, 1.5, 9, dtype=np.float32)
    np.testing.assert_allclose(tone_curve(x, 2.0), np.sign(x) * x**2, rtol=1e-6)
    curved = (255 * (image / 255.0) ** 1.8).astype(np.uint8)  # another tone curve than the painted image's
    plain = Segmenter(SMALL).fit(image, scribbles)
    score = [np.mean([iou(s.segment(curved), truth, c) for c in (1, 2, 3)]) for s in (plain, seg)]
    assert score[1] > 0.85 and score[1] >= score[0] - 0.01
    for bad in ((1.0,), (0.0,), (0.5, 0.5), ("x",)):
        with pytest.raises(ValueError, match="augment"):
            TrainConfig(augment=bad)


def test_a_refit_on_the_same_images_reuses_their_scaling_and_statistics(two_textures, monkeypatch):
    """With a feature cache, the parts of a fit that do not depend on the strokes are computed
    once per set of training images, and give what a fit without the cache gives."""
    import napari_dinoseg.segmenter as segmenter
    import napari_dinoseg.segmenter_checks as segmenter_checks
    from napari_dinoseg.features.featurise import FeatureCache

    image, _, scribbles = two_textures
    calls = []
    fit_scaling, image_statistics = segmenter.fit_scaling, segmenter_checks.image_statistics
    monkeypatch.setattr(segmenter, "fit_scaling", lambda *a: calls.append("scaling") or fit_scaling(*a))
    monkeypatch.setattr(segmenter_checks, "image_statistics", lambda *a: calls.append("stats") or image_statistics(*a))
    cache = FeatureCache()
    Segmenter().fit(image, scribbles, cache=cache)
    more = scribbles.copy()
    more[150:152, 20:80] = 1  # a new stroke
    refit = Segmenter().fit(image, more, cache=cache)
    assert calls == ["scaling", "stats"]
    fresh = Segmenter().fit(image, more)  # no cache: everything fitted again
    np.testing.assert_array_equal(refit.classifier.coef, fresh.classifier.coef)
    np.testing.assert_array_equal(refit.statistics.quantiles, fresh.statistics.quantiles)
    np.testing.assert_array_equal(refit.statistics.class_fractions, fresh.statistics.class_fractions)
    Segmenter().fit(255 - image, more, cache=cache)  # other pixels: fitted again
    Segmenter().fit([image, 255 - image], [more, more], cache=cache)  # a new set of known images
    assert calls == ["scaling", "stats"] * 3 + ["scaling"]


def test_a_tiled_fit_keeps_one_tiles_features_at_a_time_and_trains_as_on_whole_stacks(phases, monkeypatch):
    """A plane larger than the tile is featurised tile by tile; each tile's stack is let go
    before the next one is computed (only the painted pixels and the scaling's grid are kept),
    and the classifier equals one trained on all the tiles' stacks at once."""
    import gc
    import importlib
    import weakref
    from napari_dinoseg.classify import train
    from napari_dinoseg.segmenter import in_plane, plane_windows

    image, _, scribbles = phases
    featurise_module = importlib.import_module("napari_dinoseg.features.featurise")
    image, scribbles = np.tile(image, (2, 2)), np.tile(scribbles, (2, 2))  # 320 x 320: 4 tiles of 160 px
    alive, stacks = [], []
    keyed = featurise_module.keyed_featurise

    def watched(*args, **kwargs):
        gc.collect()
        alive.append(sum(ref() is not None for ref in stacks))  # earlier tiles' features still held
        key, stack = keyed(*args, **kwargs)
        owner = stack.data
        while isinstance(owner.base, np.ndarray):  # the buffer every view of the features keeps alive
            owner = owner.base
        stacks.append(weakref.ref(owner))
        return key, stack

    monkeypatch.setattr(featurise_module, "keyed_featurise", watched)
    seg = Segmenter(SMALL, TrainConfig(n_trees=5))
    seg.tile = 160
    seg.fit(image, scribbles)
    # 4 tiles of the image, then 4 of its contrast-inverted copy (the shift report's reference), one at a time
    assert len(stacks) == 8 and alive == [0] * 8
    monkeypatch.setattr(featurise_module, "keyed_featurise", keyed)
    norm = seg.normalise(image)
    windows = plane_windows(norm.shape[:2], seg.features, seg.training, 160)
    cores = [featurise(norm[window], seg.features, normalised=True) for window, _ in windows]
    cores = [dataclasses.replace(s, data=s.data[core], attention=None) for s, (_, core) in zip(cores, windows)]
    whole = train(cores, [scribbles[in_plane(w, c)] for w, c in windows], seg.training)
    np.testing.assert_array_equal(seg.classifier.coef, whole.coef)
    np.testing.assert_array_equal(seg.classifier.mean, whole.mean)
    assert seg.classifier.guide == whole.guide != ()
    np.testing.assert_array_equal(seg.classifier.forest.threshold, whole.forest.threshold)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("training", [TrainConfig(classifier="logistic", scaling="standard"), TrainConfig()],
                         ids=["logistic", "default"])
def test_logit_space_prediction_equals_pixel_space_and_never_builds_the_vit_map(phases, monkeypatch, tmp_path,
                                                                               training):
    """A classifier linear in the ViT channels -- a standard-scaled logistic regression, and the
    default, whose trees read 8 principal components of them -- predicts without a cache from
    logits (and components) computed on the token grids (featurise_projected, tile by tile), and
    gives the probabilities of the full features: within 1e-4 for the regression; with trees, a
    float rounding can send a pixel down another branch, so within 1e-4 almost everywhere."""
    import importlib

    from napari_dinoseg.classify import predict

    featurise_module = importlib.import_module("napari_dinoseg.features.featurise")
    image, truth, scribbles = phases
    hybrid = FeatureConfig(kind="hybrid", weights="random", stride=14, shifts=(7,), flips=False, device="cpu",
                           sigmas=(1.0, 2.0, 4.0), membrane=False, precision="float32")
    seg = Segmenter(hybrid, training).fit(image, scribbles)
    reduced, (weights, bias) = seg.logit_space()
    n_vit = sum("vit_" in name for name in seg.channel_names)
    n_new = 3 + (8 if seg.classifier.forest is not None else 0)  # the logits, then the trees' components
    assert weights.shape == (n_new, n_vit) and reduced.n_features == seg.classifier.n_features - n_vit + n_new
    full = predict(seg.classifier, featurise(seg.normalise(image), seg.features, normalised=True))  # pixel space
    built = []
    keyed = featurise_module.keyed_featurise
    monkeypatch.setattr(featurise_module, "keyed_featurise", lambda *a, **k: built.append(1) or keyed(*a, **k))
    for tile in (1024, 96):  # one window, then 2 x 2 tiles with margins
        seg.tile = tile
        proba = seg.predict_proba(image)
        close = np.abs(proba - full).max(-1) < 1e-4
        assert close.all() if seg.classifier.forest is None else close.mean() > 0.995, close.mean()
        assert np.mean(seg.to_labels(proba) == seg.to_labels(full)) > 0.999
    assert built == []  # the full features were never computed
    back = Segmenter.load(seg.save(tmp_path / "model.dinoseg"))
    np.testing.assert_array_equal(back.predict_proba(image), proba)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_classifiers_that_read_vit_channels_non_linearly_have_no_logit_space(phases):
    from napari_dinoseg.classify import logit_space

    image, _, scribbles = phases
    hybrid = FeatureConfig(kind="hybrid", weights="random", stride=14, shifts=(), flips=False, device="cpu",
                           sigmas=(1.0,), membrane=False)
    for training in (TrainConfig(vit_components=0), TrainConfig(classifier="logistic")):  # trees / log on ViT
        assert Segmenter(hybrid, training).fit(image, scribbles).logit_space() is None
    assert Segmenter(SMALL).fit(image, scribbles).logit_space() is None  # no ViT channels
    clf = Segmenter(SMALL, TrainConfig(classifier="logistic", scaling="standard")).fit(image, scribbles).classifier
    assert logit_space(clf, ("a", "b")) is None  # names that do not fit


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_fit_without_cache_reads_vit_channels_only_where_training_does(phases, monkeypatch):
    """Without a cache (the CLI, scripts), a ViT fit gathers the ViT channels at the painted pixels
    and the scaling's grid only (featurise_pixels, tile by tile): no full feature stack is built,
    and the classifier is the one a fit on full stacks gives, up to float rounding."""
    import importlib

    from napari_dinoseg.features.featurise import FeatureCache

    featurise_module = importlib.import_module("napari_dinoseg.features.featurise")
    image, truth, scribbles = phases
    hybrid = FeatureConfig(kind="hybrid", weights="random", stride=14, shifts=(7,), flips=False, device="cpu",
                           sigmas=(1.0, 2.0, 4.0), membrane=False, precision="float32")
    full = Segmenter(hybrid).fit(image, scribbles, cache=FeatureCache())
    built = []
    keyed = featurise_module.keyed_featurise
    monkeypatch.setattr(featurise_module, "keyed_featurise", lambda *a, **k: built.append(1) or keyed(*a, **k))
    for tile in (1024, 96):
        sparse = Segmenter(hybrid)
        sparse.tile = tile
        sparse.fit(image, scribbles)
        assert built == [] and sparse.channel_names == full.channel_names
        np.testing.assert_allclose(sparse.classifier.mean, full.classifier.mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sparse.classifier.coef, full.classifier.coef, rtol=1e-3, atol=1e-4)
        agree = np.mean(sparse.segment(image) == full.segment(image))
        assert agree > 0.99, agree


def test_a_cache_keeps_the_token_grids_not_the_vit_map(phases, monkeypatch):
    """With a feature cache (the widget's), ViT and hybrid fits and predictions read the views' token
    grids from it: refits on new strokes and predictions run no forward pass, the cache holds no
    ``(H, W, D)`` ViT map (a fraction of its bytes), and the results equal those without a cache."""
    from napari_dinoseg.classify import SCALING_SAMPLE
    from napari_dinoseg.features.backbones import StridedViT
    from napari_dinoseg.features.featurise import FeatureCache, n_features

    image, truth, scribbles = phases
    hybrid = FeatureConfig(kind="hybrid", weights="random", stride=14, shifts=(7,), flips=False, device="cpu",
                           sigmas=(1.0, 2.0, 4.0), membrane=False, precision="float32")
    passes = []
    forward = StridedViT.forward
    monkeypatch.setattr(StridedViT, "forward", lambda self, x, *a, **k: passes.append(len(x)) or forward(self, x, *a, **k))
    cache = FeatureCache()
    seg = Segmenter(hybrid).fit(image, scribbles, cache=cache)
    first = len(passes)
    assert sum(passes[:first]) == 9  # the nine views, once
    proba = seg.predict_proba(image, cache=cache)
    fewer = np.where(np.arange(scribbles.shape[1]) < scribbles.shape[1] // 2, scribbles, 0)
    refit = Segmenter(hybrid).fit(image, fewer, cache=cache)
    again = refit.predict_proba(image, cache=cache)
    assert len(passes) == first  # no forward pass after the first featurisation
    vit_map = image.shape[0] * image.shape[1] * 384 * 4
    stores = [v for k, v in cache._items.items() if isinstance(k, tuple) and k[0] == "tokens"]
    assert len(stores) == 1 and stores[0].nbytes < vit_map / 4, (stores, vit_map)
    grids = [v[0] for k, v in cache._items.items() if isinstance(k, tuple) and k[0] == "grid"]
    assert grids and all(len(g) <= SCALING_SAMPLE for g in grids)  # the scaling's sample, whatever the image size
    classical = n_features(dataclasses.replace(seg.features, kind="classical"))
    stacks = [v for v in cache._items.values() if hasattr(v, "n_features")]
    assert len(stacks) == 1 and stacks[0].n_features == classical  # no stack with ViT channels
    np.testing.assert_allclose(proba, Segmenter(hybrid).fit(image, scribbles).predict_proba(image), atol=1e-6)
    np.testing.assert_allclose(again, Segmenter(hybrid).fit(image, fewer).predict_proba(image), atol=1e-6)
    assert min(iou(seg.to_labels(proba), truth, c) for c in (1, 2, 3)) > 0.5
