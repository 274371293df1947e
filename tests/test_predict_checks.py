"""What the prediction APIs refuse instead of returning nonsense: ``Segmenter.check`` with
probabilities of another image or classifier, the low-level ``predict`` / ``predict_read`` on
NaN or inf features."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig, featurise, predict, train
from napari_dinoseg.classify import predict_read, read_pixels, scaled_features

SMALL = FeatureConfig(sigmas=(1, 2), membrane=False)


@pytest.fixture
def fitted(two_textures):
    image, _, scribbles = two_textures
    return Segmenter(SMALL, TrainConfig(classifier="logistic")).fit(image, scribbles)


# ---- Segmenter.check ---------------------------------------------------------------------

def test_check_takes_the_probabilities_of_this_plane(fitted, two_textures):
    image = two_textures[0]
    proba = fitted.predict_proba(image)
    assert fitted.check(image, proba) == fitted.check(image)
    assert fitted.check(image, proba.copy()) == []  # from elsewhere: its sample is featurised


@pytest.mark.parametrize("shape", [(192, 190, 2), (190, 192, 2), (192, 192, 3), (192, 192), (192, 192, 2, 1)])
def test_check_refuses_probabilities_of_another_shape(fitted, two_textures, shape):
    image = two_textures[0]
    proba = np.full(shape, 0.5, np.float32)
    with pytest.raises(ValueError, match=r"proba of shape .* expected \(192, 192, 2\) .* the classifier's 2"):
        fitted.check(image, proba)


def test_check_reads_the_height_and_width_of_a_multichannel_plane(two_textures):
    image, _, scribbles = two_textures
    rgb = np.stack([image, image[::-1], image[:, ::-1]], -1)
    seg = Segmenter(SMALL, TrainConfig(classifier="logistic")).fit(rgb, scribbles)
    assert isinstance(seg.check(rgb, seg.predict_proba(rgb)), list)
    with pytest.raises(ValueError, match=r"expected \(192, 192, 2\)"):
        seg.check(rgb, np.full((192, 192, 3), 1 / 3, np.float32))


# ---- predict on NaN / inf features --------------------------------------------------------

@pytest.fixture
def features(two_textures):
    image, _, scribbles = two_textures
    feats = featurise(image, SMALL)
    return feats, scribbles


@pytest.mark.parametrize("classifier", ["logistic", "logistic+trees"])
@pytest.mark.parametrize("scaling", ["standard", "log"])
def test_nan_features_are_refused_saying_how_many_pixels_and_which_channels(features, classifier, scaling):
    feats, scribbles = features
    clf = train(feats, scribbles, TrainConfig(classifier=classifier, scaling=scaling, guided_radius=0))
    data = feats.data.copy()
    data[10:12, 20:22, 3] = np.nan  # 4 pixels
    data[50, 60, 5] = np.nan
    bad = type(feats)(data, feats.config, feats.channel_names)
    names = f"{feats.channel_names[3]}, {feats.channel_names[5]}"
    with pytest.raises(ValueError, match=rf"features of 5 pixel\(s\) are not finite \(NaN in channels {names}\)"):
        predict(clf, bad)
    with pytest.raises(ValueError, match=r"features of 5 pixel\(s\) are not finite \(NaN in channels 3, 5\)"):
        predict(clf, data)  # an array: channels by index
    data[50, 60, 5] = -np.inf
    with pytest.raises(ValueError, match=r"5 pixel\(s\) .*NaN in channel 3; inf in channel 5"):
        predict(clf, data)


def test_non_finite_features_are_refused_on_every_path(features, monkeypatch):
    """Chunked on threads, with kept scaled features, through predict_read: same refusal."""
    from napari_dinoseg import predict_engine

    monkeypatch.setattr(predict_engine, "CHUNK_VALUES", 1 << 12)  # many chunks, on several threads
    feats, scribbles = features
    clf = train(feats, scribbles, TrainConfig(guided_radius=0))
    data = feats.data.copy()
    data[::40, ::50, 1] = np.inf
    n = len(range(0, 192, 40)) * len(range(0, 192, 50))
    with pytest.raises(ValueError, match=rf"features of {n} pixel\(s\) are not finite \(inf in channel 1\)"):
        predict(clf, data)
    scaled = scaled_features(clf, data)
    with pytest.raises(ValueError, match=rf"{n} pixel\(s\) are not finite"):
        predict(clf, data, scaled=scaled)
    with pytest.raises(ValueError, match=rf"{n} pixel\(s\) are not finite"):
        predict_read(clf, data, None)
    rows = data.reshape(-1, data.shape[-1])  # (M, F) rows, as the shift report predicts them
    with pytest.raises(ValueError, match=rf"{n} pixel\(s\) are not finite"):
        predict(clf, rows)


def test_with_the_guided_filter_the_pixels_read_and_the_guide_are_checked(features):
    feats, scribbles = features
    clf = train(feats, scribbles, TrainConfig(predict_step=2))
    assert clf.predict_step == 2 and clf.guide
    read = read_pixels(clf, feats.shape)
    data = feats.data.copy()
    data[4, 6, -1] = np.nan  # a pixel read (on the lattice), a channel outside the guide
    with pytest.raises(ValueError, match=r"features of 1 pixel\(s\) are not finite"):
        predict(clf, data)
    data = feats.data.copy()
    data[5, 7, -1] = np.nan  # off the lattice, outside the guide: not read, not in the result
    assert np.isfinite(predict(clf, data)).all()
    data[5, 7, clf.guide[0]] = np.nan  # off the lattice, in the guide: refused
    with pytest.raises(ValueError, match=r"guide of the edge smoothing .* NaN or inf at 1 pixel\(s\)"):
        predict(clf, data)
    guide = data[..., list(clf.guide)].mean(-1, dtype=np.float32)
    with pytest.raises(ValueError, match=r"guide of the edge smoothing"):
        predict_read(clf, np.ascontiguousarray(data[read]), guide)


def test_a_second_guide_is_checked_and_needed_exactly_when_the_classifier_has_one(features):
    """The two-guide filter of 3-D classifiers (here a plane classifier given a second guide channel)."""
    import dataclasses

    feats, scribbles = features
    clf = train(feats, scribbles, TrainConfig(predict_step=2))
    second = next(i for i, name in enumerate(feats.channel_names) if name.startswith("hessian"))
    two = dataclasses.replace(clf, guide_laplacian=(second,))
    read = np.ascontiguousarray(feats.data[read_pixels(clf, feats.shape)])
    guide = feats.data[..., list(clf.guide)].mean(-1, dtype=np.float32)
    with pytest.raises(ValueError, match="second guide image is needed exactly"):
        predict_read(two, read, guide)
    with pytest.raises(ValueError, match="second guide image is needed exactly"):
        predict_read(clf, read, guide, second=guide)
    np.testing.assert_allclose(predict_read(two, read, guide, second=feats.data[..., second]), predict(two, feats),
                               atol=1e-6)
    data = feats.data.copy()
    data[5, 7, second] = np.inf  # off the lattice, in the second guide: refused, its channel named
    with pytest.raises(ValueError, match=rf"feature channels \[{second}\]\) is NaN or inf at 1 pixel"):
        predict(two, data)


def test_overflowing_logits_and_a_corrupt_classifier_are_told_apart(features):
    import dataclasses

    feats, scribbles = features
    clf = train(feats, scribbles, TrainConfig(classifier="logistic", guided_radius=0))
    data = feats.data.copy()
    data[7, 8] = 3e38  # finite, but no logit holds it
    with pytest.raises(ValueError, match=r"non-finite probabilities .* at 1 pixel\(s\): its logits overflow"):
        predict(clf, data)
    coef = clf.coef.copy()
    coef[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite probabilities .* its numbers are corrupt"):
        predict(dataclasses.replace(clf, coef=coef), feats)


def test_finite_features_predict_as_before(features):
    feats, scribbles = features
    clf = train(feats, scribbles)
    proba = predict(clf, feats)
    assert proba.shape == (192, 192, 2) and np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(-1), 1, atol=1e-5)
