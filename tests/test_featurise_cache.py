import numpy as np
import pytest

from napari_dinoseg import FeatureConfig, featurise
from napari_dinoseg.features.featurise import FeatureCache, FeatureStack, cache_key, check_memory


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


def test_views_of_a_frozen_plane_are_keyed_by_place_without_reading_them(monkeypatch):
    """A normalised plane kept by the cache is read-only; its windows get keys from the plane's
    key and their place: equal windows equal keys, other windows other keys, the same keys
    for the plane made again from the same image."""
    from napari_dinoseg.features import keys

    plane = np.random.default_rng(0).random((64, 80, 1)).astype(np.float32)
    config = FeatureConfig()
    frozen = keys.frozen(plane.copy(), "K")
    with pytest.raises(ValueError, match="read-only"):
        frozen[0, 0, 0] = 1
    window = (slice(8, 40), slice(16, 72))
    key = cache_key(frozen[window], config)
    assert key == cache_key(frozen[window], config) != cache_key(frozen[(slice(9, 41), slice(16, 72))], config)
    assert key != cache_key(frozen[window], FeatureConfig(membrane=False))
    assert cache_key(frozen, config) != cache_key(frozen[window], config)
    again = keys.frozen(plane.copy(), "K")  # the plane made again from the same image
    read = []
    monkeypatch.setattr(keys, "memoryview", lambda a: read.append(a) or memoryview(a), raising=False)
    assert cache_key(again[window], config) == key and read == []
    assert cache_key(keys.frozen(plane.copy(), "other image")[window], config) != key
    assert cache_key(plane[window], config) != key and len(read) == 1  # not frozen: its bytes are read


def test_an_image_changed_in_place_is_normalised_and_featurised_again(two_textures):
    """The cache keeps an image's normalised plane under the image's content key: editing the
    image's pixels (the same array) gives a new plane, new windows and the uncached prediction."""
    from napari_dinoseg import Segmenter

    image, _, scribbles = two_textures
    image = image.copy()
    cache = FeatureCache()
    seg = Segmenter().fit(image, scribbles, cache=cache)
    norm = seg.normalise(image, cache)
    assert seg.normalise(image, cache) is norm and not norm.flags.writeable
    seg.predict_proba(image, cache=cache)
    image[:, :96] = 255 - image[:, :96]
    assert seg.normalise(image, cache) is not norm
    np.testing.assert_allclose(seg.predict_proba(image, cache=cache), seg.predict_proba(image), atol=1e-6)


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


def test_default_budget_is_a_share_of_the_machines_memory():
    import psutil

    from napari_dinoseg.features.featurise import CACHE_FRACTION, MIN_CACHE_BYTES, default_cache_bytes

    assert default_cache_bytes(24 * 2**30) == 6 * 2**30
    assert default_cache_bytes(2 * 2**30) == MIN_CACHE_BYTES  # a small machine still keeps something
    total = psutil.virtual_memory().total
    assert FeatureCache().max_bytes == max(MIN_CACHE_BYTES, int(CACHE_FRACTION * total))
    assert FeatureCache(123).max_bytes == 123


def test_plane_storage_keeps_float32_then_float16_then_nothing():
    from napari_dinoseg.features.featurise import plane_storage, storage_note

    gib = 2**30
    assert plane_storage(3 * gib, 6 * gib) == "float32"  # the stacks and their scaled features
    assert plane_storage(5 * gib, 6 * gib) == "float16"  # a 4096^2 plane's 65 channels on a 24 GiB machine
    assert plane_storage(12 * gib, 6 * gib) == "float16"
    assert plane_storage(20 * gib, 6 * gib) == "none"  # 8192^2
    assert storage_note("float32", 3 * gib, 6 * gib) == ""
    assert "float16 (2.5 GiB of the 6.0 GiB" in storage_note("float16", 5 * gib, 6 * gib)
    note = storage_note("none", 20 * gib, 6 * gib)
    assert "cannot be kept" in note and "10.0 GiB even as float16" in note and "6.0 GiB feature cache" in note


def test_scaled_features_are_kept_beside_float16_windows_when_their_lattice_fits():
    from napari_dinoseg.features.featurise import keeps_scaled, storage_note

    gib = 2**30
    assert keeps_scaled("float32", 3 * gib, 6 * gib)
    assert keeps_scaled("float16", 5 * gib, 6 * gib, 1 / 4)  # 4096^2: 2.5 GiB + the predict_step 2 lattice
    assert not keeps_scaled("float16", 5 * gib, 6 * gib, 1.0)  # every pixel read: 2.5 + 5 GiB
    assert not keeps_scaled("float16", 12 * gib, 6 * gib, 1 / 4)
    assert not keeps_scaled("none", 20 * gib, 6 * gib, 1 / 64)
    note = storage_note("float16", 5 * gib, 6 * gib, 5 * gib // 4)
    assert "with the classifier's scaled features" in note and "(3.8 GiB of the 6.0 GiB" in note


def test_compact_stack_keeps_every_channel_to_float16_precision_of_its_deviations(two_textures):
    """Tiny channels (Hessian determinants at large sigmas) and narrow ones around a large value
    (wide Gaussian blurs) keep their information, which raw float16 loses; half the bytes."""
    from napari_dinoseg.features.featurise import CompactStack, as_stack

    image = two_textures[0]
    stack = featurise(image, FeatureConfig())
    compact = CompactStack.encode(stack)
    decoded = as_stack(compact)
    assert decoded.data.dtype == np.float32 and decoded.data.shape == stack.data.shape
    assert decoded.channel_names == stack.channel_names
    assert compact.nbytes < 0.51 * stack.nbytes
    x = stack.data.reshape(-1, stack.n_features)
    spread = np.median(np.abs(x - np.median(x, axis=0)), axis=0)
    error = np.median(np.abs(decoded.data.reshape(x.shape) - x), axis=0) / spread
    raw = np.median(np.abs(x.astype(np.float16).astype(np.float32) - x), axis=0) / spread
    assert error.max() < 1e-3, stack.channel_names[int(error.argmax())]
    assert raw.max() > 0.1  # what storing the features as plain float16 would do
    worst = np.abs(decoded.data - stack.data).max(axis=(0, 1))
    assert np.all(worst <= 2.0**-10 * np.abs(stack.data - compact.centre).max(axis=(0, 1)) + 1e-12)
    rows, cols = np.array([0, 5, 191, 100]), np.array([3, 0, 191, 77])
    np.testing.assert_array_equal(compact.pixels(rows, cols), decoded.data[rows, cols])
    np.testing.assert_array_equal(compact.region(slice(1, 150, 2), slice(0, 192, 2)), decoded.data[1:150:2, ::2])
    np.testing.assert_array_equal(compact.region(slice(5, 50), slice(7, 9), [1, 3]), decoded.data[5:50, 7:9][..., [1, 3]])


def test_a_compact_stack_kept_in_part_reads_in_the_whole_windows_coordinates(two_textures):
    """A large plane's window is kept without its feature margins: the part reads as the whole
    stack's encoding reads there (to float16 precision), refuses what it does not hold, and
    takes its share of the bytes."""
    from napari_dinoseg.features.featurise import CompactStack, as_stack

    stack = featurise(two_textures[0], FeatureConfig())  # 192 x 192
    keep = (slice(20, 150), slice(30, 192))
    part, whole = CompactStack.encode(stack, keep), CompactStack.encode(stack)
    assert part.partial and not whole.partial and part.shape == whole.shape == (192, 192)
    assert part.offset == (20, 30) and part.codes.shape[1:] == (130, 162)
    assert part.nbytes < 0.6 * whole.nbytes
    full = stack.data
    scale = np.abs(full[20:150, 30:] - part.centre).max(axis=(0, 1))
    got = part.region(slice(21, 150, 2), slice(30, 190, 3))
    assert np.all(np.abs(got - full[21:150:2, 30:190:3]).max(axis=(0, 1)) <= 2.0**-10 * scale + 1e-12)
    rows, cols = np.array([20, 149, 77]), np.array([30, 191, 100])
    np.testing.assert_array_equal(part.pixels(rows, cols), np.stack([part.region(slice(r, r + 1), slice(c, c + 1))[0, 0]
                                                                     for r, c in zip(rows, cols)]))
    np.testing.assert_array_equal(part.region(slice(40, 60), slice(50, 52), [2, 0]),
                                  part.region(slice(40, 60), slice(50, 52))[..., [2, 0]])
    with pytest.raises(ValueError, match="outside the part kept"):
        part.region(slice(10, 60), slice(50, 60))
    with pytest.raises(ValueError, match="outside the part kept"):
        part.pixels(np.array([30]), np.array([10]))
    with pytest.raises(ValueError, match="kept in part"):
        as_stack(part)
    assert not CompactStack.encode(stack, (slice(0, 192), slice(None))).partial  # all of it: the whole


def test_compact_stack_survives_outliers_beyond_its_sample():
    from napari_dinoseg.features.featurise import CompactStack

    data = np.zeros((64, 64, 2), np.float32)
    data[..., 0] = np.random.default_rng(0).normal(size=(64, 64))
    data[3, 5, 0] = 1e6  # off the sample grid, 1e6 standard deviations out
    stack = FeatureStack(data=data, config=FeatureConfig(), channel_names=("a", "b"))
    decoded = CompactStack.encode(stack).decode().data
    assert np.isfinite(decoded).all()
    assert abs(decoded[3, 5, 0] - 1e6) < 1e6 * 2.0**-10 and np.all(decoded[..., 1] == 0)


def plane_budget(seg, image):
    """A cache budget that holds ``image``'s feature windows as float16, not as float32."""
    return seg.feature_bytes(image.shape, 1, seg.features.resolved("cpu"))


@pytest.mark.parametrize("tile", [1024, 64])
def test_a_plane_over_budget_as_float32_is_kept_as_float16(two_textures, monkeypatch, tile):
    """Issue 23 item 6: the second click (refit and predict) reads every window from the cache,
    where before the fix the stacks and their scaled features, over the budget together, evicted
    each other and every click featurised again; the labels equal the uncached path's on
    >= 99.9 % of the pixels (float16 rounding)."""
    import importlib

    from napari_dinoseg import Segmenter
    from napari_dinoseg.features.featurise import CompactStack

    featurise_module = importlib.import_module("napari_dinoseg.features.featurise")
    monkeypatch.setattr(Segmenter, "tile", tile)
    image, _, scribbles = two_textures
    cache = FeatureCache(max_bytes=plane_budget(Segmenter(), image))
    seg = Segmenter().fit(image, scribbles, cache=cache)
    assert seg.feature_storage(image.shape, 1, cache) == "float16"
    first = seg.predict_proba(image, cache=cache)
    built = []
    real = featurise_module.featurise
    monkeypatch.setattr(featurise_module, "featurise", lambda *a, **k: built.append(1) or real(*a, **k))
    seg.fit(image, scribbles[::-1].copy(), cache=cache)  # other strokes
    second = seg.predict_proba(image, cache=cache)
    assert built == [] and cache.nbytes <= cache.max_bytes
    assert all(isinstance(v, CompactStack) for k, v in cache._items.items() if isinstance(k, str))
    monkeypatch.setattr(featurise_module, "featurise", real)
    uncached = Segmenter().fit(image, scribbles[::-1].copy()).predict_proba(image)
    assert (seg.to_labels(second) == seg.to_labels(uncached)).mean() >= 0.999
    # a tree split that float16 rounding moves a pixel across: one tree of ten, weighted 0.5
    np.testing.assert_allclose(second, uncached, atol=0.06)
    assert not np.array_equal(first, second)


def test_compact_prediction_equals_the_decoded_stacks(two_textures, monkeypatch):
    """Decoding only the lattice and the guide gives exactly what predicting the decoded stack gives."""
    from napari_dinoseg import Segmenter
    from napari_dinoseg.classify import predict
    from napari_dinoseg.features.featurise import CompactStack
    from napari_dinoseg.segmenter import predict_part

    image, _, scribbles = two_textures
    seg = Segmenter().fit(image, scribbles)
    compact = CompactStack.encode(featurise(image, seg.features))
    for part, origin in [((slice(0, 192), slice(0, 192)), (0, 0)), ((slice(3, 120), slice(10, 101)), (7, 13))]:
        expected = predict(seg.classifier, compact.decode().data[part], origin=origin)
        np.testing.assert_array_equal(predict_part(seg.classifier, compact, part, origin), expected)


@pytest.mark.parametrize("tile", [1024, 61])
def test_float16_windows_keep_their_scaled_lattice_and_predict_as_without(two_textures, monkeypatch, tile):
    """Beside float16 windows the cache keeps the scaled features of the pixels the classifier
    reads (the signed log, computed once per set of training images): a refit on other strokes
    scales nothing again, and predicts what scaling the decoded windows anew predicts (windows at
    odd origins with tile 61)."""
    import napari_dinoseg.classify as classify
    from napari_dinoseg import Segmenter
    from napari_dinoseg.features.featurise import CompactStack

    monkeypatch.setattr(Segmenter, "tile", tile)
    image, _, scribbles = two_textures
    budget = plane_budget(Segmenter(), image)
    cache, without = FeatureCache(max_bytes=budget), FeatureCache(max_bytes=budget * 2 // 3)
    seg = Segmenter().fit(image, scribbles, cache=cache)
    assert seg.feature_storage(image.shape, 1, cache) == "float16" == seg.feature_storage(image.shape, 1, without)
    assert seg.keeps_scaled(image.shape, 1, cache) and not seg.keeps_scaled(image.shape, 1, without)
    seg.predict_proba(image, cache=cache)
    lattices = [v for k, v in cache._items.items() if isinstance(k, tuple) and k[0] == "scaled"]
    assert lattices and all(v.shape[1] <= 1 + image.shape[0] // 2 for v in lattices)
    calls = []
    scaled_features = classify.scaled_features
    monkeypatch.setattr(classify, "scaled_features", lambda *a: calls.append(1) or scaled_features(*a))
    seg.fit(image, scribbles[::-1].copy(), cache=cache)
    kept = seg.predict_proba(image, cache=cache)
    assert calls == []
    other = Segmenter().fit(image, scribbles[::-1].copy(), cache=without)
    assert all(isinstance(v, CompactStack) for k, v in without._items.items() if isinstance(k, str))
    np.testing.assert_allclose(kept, other.predict_proba(image, cache=without), atol=1e-6)


def test_a_plane_over_budget_even_as_float16_is_not_kept_and_evicts_nothing(two_textures, monkeypatch):
    from napari_dinoseg import Segmenter

    monkeypatch.setattr(Segmenter, "tile", 64)
    image, _, scribbles = two_textures
    small = featurise(np.zeros((8, 8), np.uint8), FeatureConfig())
    cache = FeatureCache(max_bytes=plane_budget(Segmenter(), image) // 3)
    cache.put("other image", small)
    seg = Segmenter().fit(image, scribbles, cache=cache)
    assert seg.feature_storage(image.shape, 1, cache) == "none"
    proba = seg.predict_proba(image, cache=cache)
    assert cache.get("other image") is small and len(cache) == 1
    np.testing.assert_array_equal(proba, Segmenter().fit(image, scribbles).predict_proba(image))
