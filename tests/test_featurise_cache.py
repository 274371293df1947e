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
