"""What a feature cache keeps of a volume between clicks (``napari_dinoseg.volume_regions``): the
painted runs of slices of a fit and the slice in view of a prediction are featurised once, with
results equal to those without a cache; what is too large to keep is not kept."""

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from napari_dinoseg import Cancelled, FeatureConfig, Segmenter
from napari_dinoseg.features.cache import FeatureCache
from napari_dinoseg.volume_regions import kept, volume_identity
from napari_dinoseg.volume_prediction import predict_volume

CONFIG = FeatureConfig(kind="classical", dims=3, sigmas=(1.0, 2.0), device="cpu")
SPACING = (2.0, 1.0, 1.0)


@pytest.fixture
def volume():
    """A two-phase uint8 volume (20, 40, 36) and strokes on slices 4 and 15."""
    rng = np.random.default_rng(5)
    truth = (ndi.gaussian_filter(rng.standard_normal((20, 40, 36)), 2.5) > 0).astype(np.uint8) + 1
    image = (truth * 70.0 + rng.normal(0, 25, truth.shape)).clip(0, 255).astype(np.uint8)
    labels = np.zeros_like(truth)
    for z in (4, 15):
        keep = rng.random(truth[z].shape) < 0.08
        labels[z][keep] = truth[z][keep]
    return image, labels


@pytest.fixture
def computed(volume_feature_calls):
    """The regions a featuriser computes, as ``(z0, z1)`` of each call, in order."""
    return volume_feature_calls


def fitted(image, labels, cache=None):
    return Segmenter(CONFIG).fit(image, labels, spacing=SPACING, cache=cache)


def test_a_refit_featurises_nothing_and_equals_a_fit_without_cache(volume, computed):
    image, labels = volume
    cache = FeatureCache()
    first = fitted(image, labels, cache)
    assert sorted(computed) == [(4, 5), (15, 16)]
    more = labels.copy()
    more[4, :3, :3] = 2  # strokes added to a slice already painted
    computed.clear()
    again = fitted(image, more, cache)
    assert computed == []
    plain = fitted(image, more)
    for name in ("coef", "intercept", "mean", "scale"):
        np.testing.assert_array_equal(getattr(again.classifier, name), getattr(plain.classifier, name))
    assert not np.array_equal(again.classifier.coef, first.classifier.coef)  # the new strokes were learnt
    np.testing.assert_array_equal(again.predict_proba(image, spacing=SPACING), plain.predict_proba(image, spacing=SPACING))


def test_a_new_painted_slice_is_the_only_one_featurised(volume, computed):
    image, labels = volume
    cache = FeatureCache()
    fitted(image, labels, cache)
    labels = labels.copy()
    labels[10, 5:9, 5:9] = 1
    computed.clear()
    fitted(image, labels, cache)
    assert computed == [(10, 11)]


def test_the_slice_in_view_is_featurised_once_and_predicted_as_without_cache(volume, computed):
    image, labels = volume
    seg = fitted(image, labels)
    cache = FeatureCache()
    computed.clear()
    first, _ = predict_volume(seg, image, None, True, SPACING, None, slice(9, 10), cache)
    second, found = predict_volume(seg, image, None, True, SPACING, None, slice(9, 10), cache)
    assert computed == [(9, 10)]
    plain, found_plain = predict_volume(seg, image, None, True, SPACING, None, slice(9, 10))
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(second, plain)
    seg._keep_findings(second, found)  # as the dock does: the shift report reads what was seen
    seg._keep_findings(plain, found_plain)
    assert seg.check(image, second, spacing=SPACING) == seg.check(image, plain, spacing=SPACING)


def test_what_is_too_large_for_the_cache_is_not_kept(volume, computed):
    image, labels = volume
    seg = fitted(image, labels)
    small = FeatureCache(max_bytes=4 * image.size * seg.featuriser.n_features(1))  # a quarter: under a volume
    assert not kept(seg.featuriser, [tuple(slice(0, n) for n in image.shape)], small)
    computed.clear()
    seg.segment(image, spacing=SPACING, cache=small)
    seg.segment(image, spacing=SPACING, cache=small)
    assert len(computed) == 2  # computed each time
    regions = [key for key in small._items if isinstance(key, tuple) and key[0] == "volume region"]
    assert regions == [] and any(key[0] == "volume bounds" for key in small._items)


def test_another_volume_or_spacing_is_featurised_again(volume, computed):
    image, labels = volume
    cache = FeatureCache()
    fitted(image, labels, cache)
    computed.clear()
    brighter = image.copy()
    brighter[0, 0, 0] ^= 1  # one voxel changed
    fitted(brighter, labels, cache)
    assert sorted(computed) == [(4, 5), (15, 16)]
    computed.clear()
    Segmenter(CONFIG).fit(image, labels, spacing=(1.0, 1.0, 1.0), cache=cache)
    assert sorted(computed) == [(4, 5), (15, 16)]


def test_a_cancelled_fit_keeps_nothing_of_the_region_it_was_computing(volume, computed):
    image, labels = volume
    cache = FeatureCache()

    def cancel(done, total, message):
        if "3-D classical features" in message:
            raise Cancelled()

    with pytest.raises(Cancelled):
        Segmenter(CONFIG).fit(image, labels, cancel, cache, spacing=SPACING)
    assert not any(isinstance(key, tuple) and key[0] == "volume region" for key in cache._items)
    computed.clear()
    fitted(image, labels, cache)
    assert sorted(computed) == [(4, 5), (15, 16)]


def test_identities_of_numpy_zarr_and_memory_stores(volume, tmp_path):
    image, _ = volume
    assert volume_identity(image) == volume_identity(image.copy())
    changed = image.copy()
    changed[3, 3, 3] ^= 1
    assert volume_identity(changed) != volume_identity(image)
    stored = zarr.create_array(tmp_path / "v.zarr", shape=image.shape, chunks=(8, 40, 36), dtype=image.dtype)
    stored[:] = image
    assert volume_identity(stored)[0] == "zarr"
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), shape=image.shape, dtype=image.dtype)
    assert volume_identity(in_memory) is None  # no lasting name: nothing kept for it
