import numpy as np
import pytest

from conftest import iou
from napari_dinoseg import FeatureConfig, TrainConfig, featurise, predict, train
from napari_dinoseg.classify import uncertainty


def test_two_textures_from_a_few_scribbles(two_textures):
    image, truth, scribbles = two_textures
    assert (scribbles > 0).mean() < 0.05
    feats = featurise(image)
    clf = train(feats, scribbles)
    proba = predict(clf, feats)
    assert proba.shape == (192, 192, 2) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(-1), 1, atol=1e-5)
    seg = clf.to_labels(proba)
    assert iou(seg, truth, 1) > 0.95 and iou(seg, truth, 2) > 0.95


def test_label_values_need_not_be_contiguous(two_textures):
    image, truth, scribbles = two_textures
    relabelled = np.where(scribbles == 2, 7, scribbles).astype(np.int32)
    feats = featurise(image)
    clf = train(feats, relabelled)
    assert clf.classes.tolist() == [1, 7]
    seg = clf.to_labels(predict(clf, feats))
    assert set(np.unique(seg)) == {1, 7}
    assert iou(seg, np.where(truth == 2, 7, 1), 7) > 0.95


def test_three_classes_and_uncertainty(rng):
    img = np.zeros((60, 90), np.uint8)
    img[:, 30:60], img[:, 60:] = 120, 240
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    labels = np.zeros(img.shape, np.uint8)
    labels[10:50, 10], labels[10:50, 45], labels[10:50, 80] = 1, 2, 3
    feats = featurise(img, FeatureConfig(sigmas=(1, 2)))
    # one-pixel lines see no edges, so edge channels are extrapolated at the bands' borders;
    # standard scaling extrapolates them linearly, the log scaling not (see the log test)
    clf = train(feats, labels, TrainConfig(scaling="standard"))
    proba = predict(clf, feats)
    seg = clf.to_labels(proba)
    assert (seg[:, 5:25] == 1).mean() > 0.97 and (seg[:, 35:55] == 2).mean() > 0.97 and (seg[:, 65:] == 3).mean() > 0.97
    unc = uncertainty(proba)
    assert unc.shape == img.shape and unc.dtype == np.float32
    assert 0 <= unc.min() and unc.max() <= 1 - 1 / 3 + 1e-6
    assert unc[:, 28:32].mean() > unc[:, 10:20].mean()  # least sure at class borders


@pytest.mark.parametrize("scaling", ["standard", "log"])
def test_scaling_is_fitted_once_and_kept(two_textures, scaling):
    """A brighter copy of the image is scaled with the training statistics, not its own."""
    image, _, scribbles = two_textures
    feats = featurise(image, FeatureConfig(sigmas=(1, 2)))
    clf = train(feats, scribbles, TrainConfig(scaling=scaling))
    flat = feats.data.reshape(-1, feats.n_features)
    centre = flat.mean(0) if scaling == "standard" else np.median(flat, 0)
    np.testing.assert_allclose(clf.mean, centre, rtol=0.05, atol=2e-3)
    if scaling == "log":
        mad = np.median(np.abs(flat - np.median(flat, 0)), 0)
        np.testing.assert_allclose(clf.scale, mad, rtol=0.1, atol=2e-3)
    shifted = feats.data + 10.0
    assert not np.allclose(predict(clf, shifted), predict(clf, feats))


@pytest.mark.parametrize("n_pixels, n_channels", [(1001, 7), (2000, 1), (999, 65)])
def test_log_scaling_is_the_median_and_median_absolute_deviation(rng, n_pixels, n_channels):
    """Exactly numpy's median and MAD of every channel (odd and even counts, any channel count),
    the standard deviation for a channel whose MAD is 0."""
    from napari_dinoseg.classify import TrainingPart, fit_scaling

    grid = rng.standard_t(2, (n_pixels, n_channels)).astype(np.float32)
    grid[: n_pixels // 2 + 1, 0] = 3.0  # mostly constant: MAD 0
    centre, spread = fit_scaling([TrainingPart(x=grid[:2], y=np.array([1, 2]), grid=grid)], "log")
    median = np.median(grid, axis=0)
    mad = np.median(np.abs(grid - median), axis=0)
    mad[0] = grid[:, 0].std(dtype=np.float64)
    np.testing.assert_array_equal(centre, median.astype(np.float64))
    np.testing.assert_allclose(spread, mad, rtol=1e-6)


def test_to_labels_is_the_first_largest_class_in_any_layout(rng):
    """Channels-first planes (what predict returns) and channels-last arrays give np.argmax's
    classes, ties to the first class and NaN counted as the largest."""
    from napari_dinoseg.classify import PixelClassifier

    clf = train(rng.random((40, 3)).astype(np.float32), np.repeat([2, 5, 9], [14, 13, 13]),
                TrainConfig(classifier="logistic"))
    planes = rng.random((3, 20, 30)).astype(np.float32)
    planes[:, 0, :5] = 0.5  # ties
    planes[1, 1, 1] = planes[2, 1, 2] = planes[0, 1, 3] = np.nan
    for proba in (np.moveaxis(planes, 0, -1), np.ascontiguousarray(np.moveaxis(planes, 0, -1))):
        expected = clf.classes[np.argmax(proba, axis=-1)]
        np.testing.assert_array_equal(PixelClassifier.to_labels(clf, proba), expected)
    finite = np.moveaxis(np.nan_to_num(planes, nan=0.0), 0, -1)
    np.testing.assert_array_equal(clf.to_labels(finite), clf.classes[np.argmax(finite, axis=-1)])
    assert set(np.unique(clf.to_labels(finite))) <= {2, 5, 9}


def test_log_scaling_prediction_matches_its_formula(two_textures):
    image, _, scribbles = two_textures
    feats = featurise(image, FeatureConfig(sigmas=(1, 2)))
    clf = train(feats, scribbles, TrainConfig(classifier="logistic", scaling="log", guided_radius=0))
    z = (feats.data - clf.mean) / clf.scale
    logits = np.sign(z) * np.log1p(np.abs(z)) @ clf.coef.T + clf.intercept
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(predict(clf, feats), expected / expected.sum(-1, keepdims=True), atol=1e-5)


def test_log_scaling_resists_a_heavy_tailed_channel(rng):
    """A channel of rare huge spikes must not swamp the informative channel."""
    h, w = 64, 64
    truth = np.where(np.arange(w)[None] < 32, 1, 2).repeat(h, 0)
    signal = np.where(truth == 1, 0.0, 1.0) + rng.normal(0, 0.3, (h, w))
    spikes = np.where(rng.random((h, w)) < 0.02, rng.normal(0, 1000, (h, w)), rng.normal(0, 0.01, (h, w)))
    feats = np.stack([signal, spikes], -1).astype(np.float32)
    labels = np.zeros((h, w), np.uint8)
    labels[::3, 2:30:3], labels[::3, 34:62:3] = 1, 2  # sparse samples that include spikes
    for scaling in ("log", "standard"):
        clf = train(feats, labels, TrainConfig(scaling=scaling, smooth=0))
        acc = (clf.to_labels(predict(clf, feats)) == truth).mean()
        assert acc > 0.9, (scaling, acc)


def test_smoothing_is_a_gaussian_of_the_probabilities_over_the_plane(two_textures):
    from scipy.ndimage import gaussian_filter

    image, _, scribbles = two_textures
    feats = featurise(image, FeatureConfig(sigmas=(1, 2)))
    raw = predict(train(feats, scribbles, TrainConfig(guided_radius=0)), feats)
    clf = train(feats, scribbles, TrainConfig(smooth=1.5, guided_radius=0))
    smoothed = predict(clf, feats)
    np.testing.assert_allclose(smoothed, gaussian_filter(raw, (1.5, 1.5, 0), truncate=4), atol=1e-5)
    np.testing.assert_allclose(smoothed.sum(-1), 1, atol=1e-5)
    assert clf.margin == 6
    flat = feats.data.reshape(-1, feats.n_features)  # no plane: nothing to smooth
    np.testing.assert_allclose(predict(clf, flat), raw.reshape(-1, 2), atol=1e-5)
    stack = np.stack([feats.data, feats.data])  # (Z, H, W, F): each plane smoothed alone
    np.testing.assert_allclose(predict(clf, stack)[1], smoothed, atol=1e-5)


def test_default_smoothing_is_the_guided_filter_on_the_finest_gaussian(two_textures):
    from napari_dinoseg.smoothing import guided_filter

    image, _, scribbles = two_textures
    feats = featurise(image, FeatureConfig(sigmas=(2, 4)))
    clf = train(feats, scribbles, TrainConfig(predict_step=1))
    assert clf.guided_radius == 4 and clf.guide == (feats.channel_names.index("gaussian_s2"),)
    assert clf.margin == 8  # the filter averages window fits over a window: twice the radius
    raw = predict(train(feats, scribbles, TrainConfig(guided_radius=0)), feats)
    guide = feats.data[..., clf.guide[0]]
    np.testing.assert_allclose(predict(clf, feats), guided_filter(guide, raw, 4), atol=1e-5)
    fast = train(feats, scribbles)  # the default: the classifier reads every other pixel
    assert fast.predict_step == 2 and fast.margin == 9  # plus the interpolation between lattice points
    np.testing.assert_allclose(predict(fast, feats), guided_filter(guide, raw[::2, ::2], 4, step=2), atol=1e-5)
    agree = (fast.to_labels(predict(fast, feats)) == clf.to_labels(predict(clf, feats))).mean()
    assert agree > 0.97, agree
    stack = np.stack([feats.data[::-1], feats.data])  # (Z, H, W, F): planes filtered alone
    np.testing.assert_allclose(predict(clf, stack)[1], predict(clf, feats), atol=1e-5)
    flat = feats.data.reshape(-1, feats.n_features)  # no plane: nothing to filter
    np.testing.assert_allclose(predict(clf, flat), raw.reshape(-1, 2), atol=1e-5)


def test_guide_channels_of_each_feature_kind(two_textures):
    from napari_dinoseg.classify import guide_channels

    image = two_textures[0]
    rgb = featurise(np.stack([image, image[::-1], image.T], -1), FeatureConfig(sigmas=(1, 2)))
    found = guide_channels(rgb)
    assert [rgb.channel_names[i] for i in found] == ["c0:gaussian_s1", "c1:gaussian_s1", "c2:gaussian_s1"]
    assert guide_channels([rgb, rgb]) == found
    assert guide_channels(rgb.data) == ()  # plain arrays carry no names: no guided filter
    clf = train(rgb.data, two_textures[2])
    assert clf.guide == () and clf.margin == 0


def test_prediction_is_independent_of_memory_layout(two_textures):
    image, _, scribbles = two_textures
    feats = featurise(image, FeatureConfig(sigmas=(1, 2)))
    assert not feats.data.flags.c_contiguous  # channels-last view of a channels-first buffer
    clf = train(feats, scribbles)
    a = predict(clf, feats)
    b = predict(clf, np.ascontiguousarray(feats.data))
    c = predict(clf, np.asfortranarray(feats.data))
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)


def test_training_on_several_slices(two_textures):
    image, truth, scribbles = two_textures
    feats = featurise(image, FeatureConfig(sigmas=(1, 2, 4)))
    only_1 = np.where(scribbles == 1, 1, 0).astype(np.uint8)
    only_2 = np.where(scribbles == 2, 2, 0).astype(np.uint8)
    clf = train([feats, feats], [only_1, only_2])  # each slice holds one class: together two
    seg = clf.to_labels(predict(clf, feats))
    assert iou(seg, truth, 2) > 0.9


def test_subsampling_caps_pixels_per_class_reproducibly(two_textures):
    image, _, scribbles = two_textures
    feats = featurise(image, FeatureConfig(sigmas=(1,)))
    cfg = TrainConfig(max_pixels_per_class=50, seed=3)
    a, b = train(feats, scribbles, cfg), train(feats, scribbles, cfg)
    np.testing.assert_array_equal(a.coef, b.coef)
    assert not np.array_equal(a.coef, train(feats, scribbles, TrainConfig(max_pixels_per_class=50, seed=4)).coef)


@pytest.mark.parametrize(
    "labels, exc, match",
    [
        (np.zeros((192, 192), np.uint8), ValueError, "no labelled pixels"),
        (np.pad(np.ones((8, 8), np.uint8), 92), ValueError, "only class 1 is painted"),
        (np.zeros((64, 64), np.uint8), ValueError, r"labels of shape \(64, 64\) do not match"),
        (np.zeros((192, 192), np.float32), TypeError, "integer array"),
        (np.zeros((192, 192), bool), TypeError, "integer array"),
        (np.full((192, 192), -1, np.int8), ValueError, "negative value -1"),
    ],
)
def test_bad_labels_raise_clear_errors(two_textures, labels, exc, match):
    feats = featurise(two_textures[0], FeatureConfig(sigmas=(1,)))
    with pytest.raises(exc, match=match):
        train(feats, labels)


def test_predict_refuses_features_of_another_config(two_textures):
    image, _, scribbles = two_textures
    clf = train(featurise(image, FeatureConfig(sigmas=(1,))), scribbles)
    with pytest.raises(ValueError, match="trained on 15"):
        predict(clf, featurise(image))
    with pytest.raises(TypeError, match="float"):
        predict(clf, np.zeros((4, 4, 12), np.int32))


@pytest.mark.parametrize("scaling", ["standard", "log"])
def test_pca_of_vit_channels_is_fitted_at_train_time_and_folded_into_the_classifier(two_textures, scaling):
    """Hybrid-like features: 14 classical channels + 32 'vit_' channels of which only 3
    directions carry signal. With pca_dim=3 the classifier acts on the ViT channels through
    a rank-3 map, predicts on raw features (no PCA at predict time) and stays accurate."""
    from napari_dinoseg.features.featurise import FeatureStack

    image, truth, scribbles = two_textures
    classical = featurise(image, FeatureConfig(sigmas=(1,)))
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(3, 32)).astype(np.float32)
    signal = classical.data[..., [2, 3, 5]]  # sobel, hessian modulus, det: texture-sensitive
    vit = signal @ mix + 0.01 * rng.normal(size=(*image.shape, 32)).astype(np.float32)
    stack = FeatureStack(np.concatenate([classical.data, vit], -1), classical.config,
                         classical.channel_names + tuple(f"vit_{i}" for i in range(32)))
    clf = train(stack, scribbles, TrainConfig(pca_dim=3, scaling=scaling))
    assert clf.n_features == 15 + 32
    # the ViT coefficients (on scaled channels) lie in the top-3 principal subspace
    vz = (vit.reshape(-1, 32) - clf.mean[15:]) / clf.scale[15:]  # standard-scaled, whatever `scaling` says
    assert clf.linear == tuple(range(15, 47)) and clf.tree_channels == tuple(range(15))
    top3 = np.linalg.svd(vz - vz.mean(0), full_matrices=False)[2][:3]
    w = clf.coef[:, 15:]
    assert np.abs(w - (w @ top3.T) @ top3).max() < 1e-2 * np.abs(w).max()
    seg = clf.to_labels(predict(clf, stack))
    assert iou(seg, truth, 2) > 0.9
    with pytest.raises(ValueError, match="no ViT channels"):
        train(classical, scribbles, TrainConfig(pca_dim=3))
    with pytest.raises(ValueError, match="pca_dim"):
        TrainConfig(pca_dim=0)


def reference_predict(clf, data, origin=(0, 0)):
    """The pixel-space prediction written out: scaled features, logits, softmax, the trees'
    class fractions through scikit-learn, the guided filter over every class with scipy; with
    ``clf.predict_step`` s > 1 all of it on the plane's lattice (pixels whose plane coordinates,
    ``origin`` + index, are multiples of s), the filter's coefficients interpolated to every
    pixel with ``np.interp``."""
    from scipy.ndimage import uniform_filter

    from napari_dinoseg.classify import FOREST_WEIGHT
    from napari_dinoseg.smoothing import GUIDED_EPS

    s = clf.predict_step
    full = data[..., list(clf.guide)].mean(-1).astype(np.float64)
    off = [-o % s for o in origin]
    data = data[off[0]::s, off[1]::s]
    x = data.reshape(-1, data.shape[-1]).astype(np.float64)
    z = (x - clf.mean) / clf.scale
    if clf.scaling == "log":
        z = np.sign(z) * np.log1p(np.abs(z))
    logits = z @ clf.coef.T + clf.intercept
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    if clf.forest is not None:
        trees = clf.forest._sklearn_trees(clf.n_features)
        fractions = np.mean([t.predict(np.ascontiguousarray(x, np.float32)).reshape(len(x), -1) for t in trees], 0)
        p = (1 - FOREST_WEIGHT) * p + FOREST_WEIGHT * fractions
    p = p.reshape(*data.shape[:-1], -1)
    r = max(1, round(clf.guided_radius / s))

    def box(a):
        return uniform_filter(a, (2 * r + 1, 2 * r + 1) + (1,) * (a.ndim - 2), mode="reflect")

    def up(a):  # lattice -> every pixel, linear along rows then columns
        for axis in (0, 1):
            known = off[axis] + s * np.arange(a.shape[axis])
            a = np.apply_along_axis(lambda v: np.interp(np.arange(full.shape[axis]), known, v), axis, a)
        return a

    full -= full.mean()
    g = full[off[0]::s, off[1]::s]
    mg, mp = box(g), box(p)
    a = (box(g[..., None] * p) - mg[..., None] * mp) / (np.maximum(box(g * g) - mg * mg, 0)[..., None] + GUIDED_EPS)
    b = mp - a * mg[..., None]
    out = np.clip(up(box(a)) * full[..., None] + up(box(b)), 0, 1)
    return out / out.sum(-1, keepdims=True)


@pytest.mark.parametrize("classes, step", [(2, 1), (3, 1), (2, 2), (3, 2), (3, 3)])
def test_default_prediction_equals_the_pixel_space_formula(rng, monkeypatch, classes, step):
    """Chunked, threaded, channels-first prediction (logistic + trees + guided filter, K - 1
    classes filtered, on a lattice of ``step``) gives the formula's probabilities, on a window
    view of the features too, whose lattice is the whole plane's."""
    from napari_dinoseg import classify, predict_engine

    monkeypatch.setattr(predict_engine, "CHUNK_VALUES", 1 << 13)  # many chunks of rows, on several threads
    image = (rng.random((150, 170)) * 255).astype(np.uint8)
    image[:, 60:] //= 2
    image[40:90, 100:] = 250
    labels = np.zeros(image.shape, np.uint8)
    labels[5:140:9, 5:50], labels[5:140:9, 70:95] = 1, 2
    if classes == 3:
        labels[50:80:6, 110:160] = 3
    feats = featurise(image, FeatureConfig(sigmas=(1, 2, 4)))
    clf = train(feats, labels, TrainConfig(predict_step=step))
    assert clf.forest is not None and clf.guided_radius > 0 and clf.n_classes == classes
    assert clf.predict_step == step and clf.margin == 2 * step * max(1, round(4 / step)) + step - 1
    assert feats.data[..., 0].size * feats.n_features > 10 * step ** 2 * predict_engine.CHUNK_VALUES
    whole = predict(clf, feats)
    np.testing.assert_allclose(whole, reference_predict(clf, feats.data), atol=5e-5)
    window = feats.data[13:141, 21:160]  # strided in rows and columns
    part = predict(clf, window, origin=(13, 21))
    np.testing.assert_allclose(part, reference_predict(clf, window, (13, 21)), atol=5e-5)
    m = clf.margin  # away from the window's border, the window predicts what the plane does
    np.testing.assert_allclose(part[m:-m, m:-m], whole[13 + m:141 - m, 21 + m:160 - m], atol=1e-4)
    if step > 1:  # another lattice: another prediction
        assert np.abs(predict(clf, window) - part).max() > 1e-3
    scaled = classify.scaled_features(clf, feats)  # kept by a caller that predicts the image again
    assert scaled.shape == (feats.n_features, 150, 170) and scaled.dtype == np.float32
    np.testing.assert_allclose(predict(clf, feats, scaled=scaled), whole, atol=1e-6)
    np.testing.assert_allclose(predict(clf, window, scaled=scaled[:, 13:141, 21:160], origin=(13, 21)), part, atol=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        predict(clf, window, scaled=scaled)
