import numpy as np
import pytest

from napari_dinoseg import FeatureConfig, featurise
from napari_dinoseg.features.featurise import FeatureCache, cache_key, check_memory


def test_cache_key_tracks_content_shape_dtype_and_config():
    img = np.zeros((16, 16), np.uint8)
    key = cache_key(img, FeatureConfig())
    assert key == cache_key(img.copy(), FeatureConfig())
    changed = img.copy()
    changed[3, 3] = 1
    assert key != cache_key(changed, FeatureConfig())
    assert key != cache_key(img.astype(np.uint16), FeatureConfig())
    assert key != cache_key(img.reshape(8, 32), FeatureConfig())
    assert key != cache_key(img, FeatureConfig(membrane=False))
    assert cache_key(np.asfortranarray(np.eye(16)), FeatureConfig()) == cache_key(np.eye(16), FeatureConfig())


def test_cache_is_lru_and_bounded_in_bytes():
    stacks = [featurise(np.full((16, 16), i, np.uint8), FeatureConfig(sigmas=(1,))) for i in range(3)]
    size = stacks[0].nbytes
    cache = FeatureCache(max_bytes=2 * size)
    cache.put("a", stacks[0])
    cache.put("b", stacks[1])
    assert cache.get("a") is stacks[0]  # "a" is now the most recent
    cache.put("c", stacks[2])  # evicts "b", the least recently used
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.get("b") is None and (cache.hits, cache.misses) == (1, 1)
    assert cache.nbytes <= 2 * size


def test_features_that_would_not_fit_are_refused_before_allocating():
    with pytest.raises(ValueError, match=r"need about .* GiB.*crop or downsample"):
        check_memory(FeatureConfig(), (100_000, 100_000))
    assert check_memory(FeatureConfig(), (64, 64), available=2**30) > 64 * 64 * 65 * 4


def test_derived_results_are_computed_once_and_their_arrays_count_in_the_budget():
    stack = featurise(np.zeros((16, 16), np.uint8), FeatureConfig(sigmas=(1,)))
    cache = FeatureCache(max_bytes=3 * stack.nbytes)
    cache.put("a", stack)
    calls = []

    def compute(value):
        return lambda: calls.append(value) or value

    big = np.zeros(stack.nbytes // 4, np.float32)  # as large as the stack
    assert cache.derived(("scaled", "a"), compute(big)) is big
    assert cache.derived(("scaled", "a"), compute(None)) is big and len(calls) == 1
    assert cache.nbytes == 2 * stack.nbytes and len(cache) == 1  # one stack, one derived array
    cache.derived(("scaled", "b"), compute(big.copy()))
    cache.derived(("scaled", "c"), compute(big.copy()))  # over budget: the oldest entry ("a") goes
    assert "a" not in cache and cache.nbytes == 3 * stack.nbytes
    for i in range(FeatureCache.MAX_DERIVED + 5):  # small results: bounded in number
        cache.derived(("small", i), compute((np.zeros(2), np.ones(2))))
    assert sum(isinstance(k, tuple) for k in cache._items) == FeatureCache.MAX_DERIVED


def test_segmenter_keeps_scaled_features_while_the_scaling_holds(two_textures, monkeypatch):
    """A second prediction of a cached image reads its scaled features from the cache, and
    predicts exactly what a prediction without cache does; a refit on other images (another
    scaling) scales again."""
    import napari_dinoseg.classify as classify
    from napari_dinoseg import Segmenter

    image, _, scribbles = two_textures
    calls = []
    scaled_features = classify.scaled_features
    monkeypatch.setattr(classify, "scaled_features", lambda *a: calls.append(1) or scaled_features(*a))
    cache = FeatureCache()
    seg = Segmenter().fit(image, scribbles, cache=cache)
    first = seg.predict_proba(image, cache=cache)
    again = seg.predict_proba(image, cache=cache)
    assert len(calls) == 1
    np.testing.assert_allclose(again, seg.predict_proba(image), atol=1e-6)
    np.testing.assert_array_equal(first, again)
    Segmenter().fit(image, scribbles, cache=cache).predict_proba(image, cache=cache)  # same scaling
    assert len(calls) == 1
    other = Segmenter().fit([image, 255 - image], [scribbles, scribbles], cache=cache)
    other.predict_proba(image, cache=cache)
    assert len(calls) == 2
