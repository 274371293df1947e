"""Planes read window by window (zarr, dask, an ``out`` array): the same result as in memory,
memory bounded by a window, the shift report from what the windows saw, bad outputs refused."""

import tracemalloc
import warnings

import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import Recording

from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig

SMALL = FeatureConfig(sigmas=(1, 2, 4))


@pytest.fixture
def fitted(two_textures):
    image, _, scribbles = two_textures
    seg = Segmenter(SMALL, TrainConfig(n_trees=20)).fit(image, scribbles)
    seg.tile = 160  # several windows on the planes below
    return seg


@pytest.fixture
def big(two_textures):
    """(500, 700) uint16: several tile windows of 160 px."""
    image, _, _ = two_textures
    return (np.tile(image, (3, 4))[:500, :700].astype(np.uint16) * 7 + 3)


def on_disk(path, array, chunks=(128, 128)):
    z = zarr.create_array(store=str(path), shape=array.shape, dtype=array.dtype, chunks=chunks)
    z[:] = array
    return zarr.open_array(str(path), mode="r")


def test_a_zarr_or_dask_plane_gets_the_in_memory_result_exactly(fitted, big, tmp_path):
    whole = fitted.predict_proba(big)
    lazy = fitted.predict_proba(on_disk(tmp_path / "image.zarr", big))
    assert isinstance(lazy, np.ndarray) and lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy, whole)
    np.testing.assert_array_equal(fitted.predict_proba(da.from_array(big, chunks=(100, 300))), whole)
    # a numpy plane with an out array goes window by window too, to the same values
    out = np.full(whole.shape, np.nan, np.float32)
    assert fitted.predict_proba(big, out=out) is out
    np.testing.assert_array_equal(out, whole)


def test_segment_writes_labels_into_a_zarr_array_on_disk(fitted, big, tmp_path):
    image = on_disk(tmp_path / "image.zarr", big)
    out = zarr.create_array(store=str(tmp_path / "labels.zarr"), shape=big.shape, dtype=np.uint8, chunks=(160, 160))
    assert fitted.segment(image, out=out) is out
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "labels.zarr"))[:], fitted.segment(big))


def test_rgb_zarr_planes_and_alpha(two_textures, tmp_path):
    image, _, scribbles = two_textures
    rgb = np.stack([image, 255 - image, image // 2], axis=-1)
    seg = Segmenter(SMALL, TrainConfig(n_trees=10)).fit(rgb, scribbles)
    seg.tile = 100
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(seg.predict_proba(on_disk(tmp_path / "rgba.zarr", rgba, (64, 64, 4))),
                                  seg.predict_proba(rgb))


def test_vit_logits_on_token_grids_window_by_window(two_textures, local_weights, tmp_path):
    image, _, scribbles = two_textures
    vit = FeatureConfig(kind="hybrid", weights=local_weights, model="dinov2_vits14", stride=14, shifts=(),
                        flips=False, device="cpu", precision="float32", sigmas=(1, 2), membrane=False)
    seg = Segmenter(vit, TrainConfig(n_trees=10)).fit(image, scribbles)
    assert seg.logit_space() is not None
    seg.tile = 140
    plane = np.tile(image, (2, 2))[:300, :330]
    np.testing.assert_array_equal(seg.predict_proba(on_disk(tmp_path / "p.zarr", plane)), seg.predict_proba(plane))


def test_memory_is_bounded_by_a_window_not_the_plane(fitted, two_textures, tmp_path):
    """Planes of 1200² and 2400² segmented window by window into zarr arrays on disk: Python's
    peak is that of a few windows' features, the same for both (the larger plane's probabilities
    alone would be 44 MiB), and the labels are the in-memory ones."""
    image, _, _ = two_textures
    fitted.tile = 256
    peaks = []
    for side in (1200, 2400):
        plane = np.tile(image, (13, 13))[:side, :side]
        source = on_disk(tmp_path / f"{side}.zarr", plane, (256, 256))
        out = zarr.create_array(store=str(tmp_path / f"out{side}.zarr"), shape=plane.shape, dtype=np.uint8,
                                chunks=(256, 256))
        tracemalloc.start()
        fitted.segment(source, out=out)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    whole_proba = plane.size * 4 * fitted.classifier.n_classes
    assert peaks[1] < 1.2 * peaks[0] and peaks[1] < whole_proba, [f"{p / 2**20:.0f} MiB" for p in peaks]
    got = zarr.open_array(str(tmp_path / "out2400.zarr"))
    np.testing.assert_array_equal(got[1000:1300, 700:900], fitted.segment(plane)[1000:1300, 700:900])


def test_the_shift_report_of_a_lazy_plane_is_the_in_memory_one(fitted, big, tmp_path):
    image = on_disk(tmp_path / "image.zarr", big)
    for plane in (big, np.ascontiguousarray(big.max() - big), big // 3):
        lazy = on_disk(tmp_path / f"p{plane.sum()}.zarr", plane)
        expected = fitted.check(plane, fitted.predict_proba(plane))
        labels = zarr.create_array(store={}, shape=plane.shape, dtype=np.uint8, chunks=(160, 160))
        assert fitted.check(lazy, fitted.segment(lazy, out=labels)) == expected
        assert fitted.check(lazy) == expected  # predicted here, nothing written
    assert fitted.check(np.ascontiguousarray(big.max() - big))  # the inverted one is reported
    with pytest.raises(ValueError, match="not written by predict_proba or segment"):
        fitted.check(image, np.zeros((*big.shape, 2), np.float32))


def test_bad_outputs_and_planes_are_refused_before_anything_is_written(fitted, big, tmp_path):
    image = on_disk(tmp_path / "image.zarr", big)
    with pytest.raises(ValueError, match=r"out has shape \(500, 600\), not \(500, 700\)"):
        fitted.segment(image, out=np.zeros((500, 600), np.uint8))
    with pytest.raises(ValueError, match="not \\(500, 700, 2\\)"):
        fitted.predict_proba(image, out=np.zeros((500, 700), np.float32))
    with pytest.raises(ValueError, match="does not hold float32"):
        fitted.predict_proba(image, out=np.zeros((500, 700, 2), np.uint8))
    labels = np.full(big.shape, 9, np.uint8)
    with pytest.raises(ValueError, match="3 channel\\(s\\) but the classifier was trained on 1"):
        fitted.segment(on_disk(tmp_path / "rgb.zarr", np.stack([big] * 3, -1), (128, 128, 3)), out=labels)
    assert (labels == 9).all()
    with pytest.raises(TypeError, match="complex"):
        fitted.segment(da.from_array(big.astype(np.complex64)))


def test_nan_in_a_lazy_float_plane_is_replaced_and_said(fitted, big):
    plane = big.astype(np.float32)
    plane[10:20, 30:40] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lazy = fitted.predict_proba(da.from_array(plane, chunks=200))
    assert any("100 NaN/inf pixel(s)" in str(w.message) for w in caught)
    assert np.isfinite(lazy).all()
    with pytest.warns(UserWarning, match="100 NaN/inf"):
        np.testing.assert_array_equal(lazy, fitted.predict_proba(plane))


def test_a_dense_crf_refines_each_window(two_textures, tmp_path):
    from napari_dinoseg import CRFConfig

    image, truth, scribbles = two_textures
    seg = Segmenter(SMALL, TrainConfig(n_trees=20), crf=CRFConfig()).fit(image, scribbles)
    plane, truth = np.tile(image, (2, 2)), np.tile(truth, (2, 2))
    whole = seg.segment(plane)
    seg.tile = 200
    lazy = seg.segment(on_disk(tmp_path / "crf.zarr", plane))
    assert (lazy == whole).mean() > 0.99
    assert (lazy == truth).mean() > 0.9


def test_a_lazy_plane_trains_on_its_painted_windows_only(fitted, big):
    from napari_dinoseg.planes import in_plane, plane_windows

    labels = np.zeros(big.shape, np.uint8)
    labels[20:30, 40:200] = 1  # in the first row of tiles only
    labels[40:50, 300:420] = 2
    image = Recording(big)
    seg = Segmenter(SMALL, TrainConfig(n_trees=20))
    seg.tile = 160
    seg.fit(image, labels)
    windows = plane_windows(big.shape, seg.featuriser, seg.training, 160)
    painted = {tuple((s.start, s.stop) for s in w) for w, c in windows if labels[in_plane(w, c)].any()}
    read = {tuple((s.start, s.stop) for s in key) for key in image.keys if isinstance(key, tuple)}
    assert painted <= read and 0 < len(painted) < len(windows)
    (inverted,) = read - painted  # the inversion sample's part of the first painted window, with margins
    first = min(painted)
    assert all(a0 <= b0 < b1 <= a1 for (a0, a1), (b0, b1) in zip(first, inverted))
    assert (seg.segment(big) == fitted.segment(big)).mean() > 0.5  # a classifier, not noise
    with pytest.raises(ValueError, match="do not match image 0.s shape"):
        Segmenter(SMALL).fit(Recording(big), labels[:-1])
    with pytest.raises(TypeError, match="integer array"):
        Segmenter(SMALL).fit(Recording(big), labels.astype(np.float32))


def test_a_lazy_plane_painted_in_every_tile_trains_the_in_memory_classifier(two_textures, tmp_path):
    image, _, scribbles = two_textures
    plane = np.tile(image, (2, 2))
    labels = np.tile(scribbles, (2, 2))
    whole = Segmenter(SMALL, TrainConfig(n_trees=20))
    lazy = Segmenter(SMALL, TrainConfig(n_trees=20))
    whole.tile = lazy.tile = 200
    whole.fit(plane, labels)
    lazy.fit(on_disk(tmp_path / "plane.zarr", plane), zarr.array(labels, chunks=(100, 100)))
    np.testing.assert_array_equal(lazy.predict_proba(plane), whole.predict_proba(plane))
    np.testing.assert_array_equal(lazy.statistics.quantiles, whole.statistics.quantiles)
    np.testing.assert_array_equal(lazy.statistics.class_fractions, whole.statistics.class_fractions)


def test_the_window_api_reads_a_lazy_plane_window_by_window(fitted, big, tmp_path):
    """What the live update and the view-first prediction ask: a rectangle of a zarr plane, as the
    whole plane's prediction has it, reading only the windows that meet it (and the statistics)."""
    image = Recording(on_disk(tmp_path / "image.zarr", big))
    regions = fitted.regions(image)
    statistics_reads = len(image.keys)
    region = (slice(200, 330), slice(350, 520))
    np.testing.assert_allclose(regions.proba(region), fitted.predict_proba(big)[region], atol=1e-5)
    met = [w for w, c in regions.windows if all(s.start < r.stop and r.start < s.stop for s, r in zip(w, region))]
    assert 0 < len(image.keys) - statistics_reads <= len(met) < len(regions.windows)


def test_a_cache_keeps_a_lazy_planes_bounds_and_the_windows_it_met(fitted, big, tmp_path):
    """The interactive loop on a zarr plane: the second fit and view read neither the whole plane
    (its intensity bounds are kept, named by the store) nor featurise the windows again."""
    from napari_dinoseg.features.featurise import FeatureCache

    class Store(Recording):  # a zarr array seen through a recorder, named by its store
        def __init__(self, array):
            super().__init__(array)
            self.store_path = array.store_path

    image = Store(on_disk(tmp_path / "image.zarr", big))
    labels = np.zeros(big.shape, np.uint8)
    labels[20:30, 40:200], labels[40:50, 300:420] = 1, 2
    cache = FeatureCache()
    featurised = []
    put = cache.put
    cache.put = lambda key, stack: featurised.append(key) or put(key, stack)
    seg = Segmenter(SMALL, TrainConfig(n_trees=20))
    seg.tile = 160
    seg.fit(image, labels, cache=cache)
    region = (slice(0, 100), slice(100, 300))
    first = seg.regions(image, cache=cache).proba(region)
    full_width = [k for k in image.keys if not isinstance(k, tuple) or k[1] == slice(None)]
    assert full_width  # the bounds: read once, a row of chunks at a time
    assert featurised  # the windows met were featurised and kept
    image.keys.clear()
    featurised.clear()
    labels[60:64, 40:200] = 1  # a stroke more, in a tile already painted
    seg.fit(image, labels, cache=cache)
    again = seg.regions(image, cache=cache).proba(region)
    assert not [k for k in image.keys if not isinstance(k, tuple) or k[1] == slice(None)]
    assert featurised == []  # every window's features from the cache
    assert first.shape == again.shape


class Spy:
    """An array-like over a zarr array (its attributes its own) that records the keys it is read with."""

    def __init__(self, array):
        self.array, self.keys = array, []

    def __getattr__(self, name):
        return getattr(self.array, name)

    def __getitem__(self, key):
        self.keys.append(key)
        return self.array[key]


def test_the_painted_windows_of_a_strokes_store_are_found_from_its_chunk_files(big, tmp_path):
    from napari_dinoseg.lazy_training import TrainingWindows, stored_chunk_files
    from napari_dinoseg.planes import plane_windows

    seg = Segmenter(SMALL, TrainConfig(n_trees=20))
    labels = np.zeros(big.shape, np.uint8)
    labels[20:30, 40:200], labels[300:310, 500:600] = 1, 2

    def strokes(name, fill):
        z = zarr.create_array(store=str(tmp_path / name), shape=big.shape, dtype=np.uint8, chunks=(64, 64),
                              fill_value=fill)
        z[20:30, 40:200], z[300:310, 500:600] = 1, 2  # only these chunks are written
        return z

    painted = strokes("strokes.zarr", 0)
    assert set(stored_chunk_files(painted)) == {(0, 0), (0, 1), (0, 2), (0, 3), (4, 7), (4, 8), (4, 9)}
    assert stored_chunk_files(labels) is None and stored_chunk_files(da.from_array(labels)) is None
    spy = Spy(painted)
    found = TrainingWindows(big, spy, seg.features, seg.featuriser, seg.training, 160)
    expected = TrainingWindows(big, labels, seg.features, seg.featuriser, seg.training, 160)
    windows = plane_windows(big.shape, seg.featuriser, seg.training, 160)
    assert found.windows == expected.windows and 0 < len(found.windows) < len(windows)
    assert found.labels.crops.keys() == expected.labels.crops.keys()
    for key, crop in expected.labels.crops.items():
        np.testing.assert_array_equal(found.labels.crops[key], crop)
    assert len(spy.keys) == 2  # one strip of the cores that meet a written chunk in each of the two rows painted
    # a store whose unwritten chunks read as a class (fill value 1) is read everywhere: every tile painted
    everywhere = TrainingWindows(big, strokes("filled.zarr", 1), seg.features, seg.featuriser, seg.training, 160)
    assert everywhere.windows == windows


def test_cache_view_computes_the_windows_a_fit_and_the_view_read(big, tmp_path):
    from napari_dinoseg.features.cache import FeatureCache
    from napari_dinoseg.planes import in_plane, plane_windows

    plane = on_disk(tmp_path / "image.zarr", big)
    labels = np.zeros(big.shape, np.uint8)
    labels[60:70, 200:300], labels[100:110, 200:300] = 1, 2
    view = (slice(50, 130), slice(180, 330))
    seg = Segmenter(SMALL, TrainConfig(n_trees=20))
    seg.tile = 160
    cache = FeatureCache()
    windows = plane_windows(big.shape, seg.featuriser, seg.training, 160)
    meeting = [w for w, c in windows if all(a.start < b.stop and b.start < a.stop for a, b in zip(in_plane(w, c), view))]
    assert 1 < seg.cache_view(plane, view, cache=cache) == len(meeting) == len(cache) < len(windows)
    assert seg.cache_view(plane, view, cache=cache) == 0  # all there already
    assert seg.cache_view(plane, None, cache=cache) == 0 and seg.cache_view(big, view, cache=cache) == 0
    assert seg.cache_view(plane, view) == 0  # no cache: nothing to keep them in
    misses = cache.misses
    seg.fit(plane, labels, cache=cache)
    seg.regions(plane, cache=cache).proba(view)
    assert cache.misses == misses  # the fit's painted windows and the view's: all prepared
    kept = [v for k, v in cache._items.items() if isinstance(k, str)]
    assert kept and all(v.partial for v in kept)  # each window without its feature margins
    margin = seg.featuriser.margin
    assert all(v.codes.shape[1] <= v.shape[0] - margin for v in kept)
    # segment() of the lazy plane reads the same parts (no window computed again) and predicts as it
    # predicts without a cache, up to float rounding
    labels_cached = seg.segment(plane, cache=cache)
    assert cache.misses == misses + len(windows) - len(meeting)  # only the windows not prepared
    assert (labels_cached == seg.segment(plane)).mean() > 0.999
