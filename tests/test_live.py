"""Live update's view-first prediction: any rectangle first, the rest after, equal to the whole plane's."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig
from napari_dinoseg._widgets import _live
from napari_dinoseg._widgets._live import bands, predict_view_first, remainder, visible_region
from napari_dinoseg.config import CRFConfig
from napari_dinoseg.features.featurise import FeatureCache

SMALL = FeatureConfig(sigmas=(1, 2, 4), membrane=False)


def cover(shape, parts):
    """How many of ``parts`` cover each pixel of a plane of ``shape``."""
    count = np.zeros(shape, int)
    for part in parts:
        count[part] += 1
    return count


@pytest.mark.parametrize("view", [(slice(0, 50), slice(0, 60)), (slice(10, 30), slice(20, 41)),
                                  (slice(0, 50), slice(30, 60)), (slice(49, 50), slice(0, 1))])
def test_view_and_its_remainder_in_bands_cover_the_plane_once(view):
    shape = (50, 60)
    parts = bands(view, pixels=64) + [band for part in remainder(shape, view) for band in bands(part, pixels=64)]
    assert np.all(cover(shape, parts) == 1)
    assert all((b[0].stop - b[0].start) * (b[1].stop - b[1].start) <= max(64, b[1].stop - b[1].start) for b in parts)


@pytest.mark.parametrize("tile, smooth, band", [(1024, 0.0, 1 << 18), (1024, 2.0, 1000), (64, 0.0, 1000),
                                                (64, 2.0, 1 << 18)])
def test_view_first_equals_the_whole_plane_prediction(phases, tile, smooth, band, monkeypatch):
    """In one window and across tiles (features with margins), in one band or many, with the
    guided filter and a Gaussian: the view's labels and the whole result are the plane's, up to
    float rounding."""
    image, _, scribbles = phases
    monkeypatch.setattr(Segmenter, "tile", tile)
    monkeypatch.setattr(_live, "BAND_PIXELS", band)
    cache = FeatureCache()
    seg = Segmenter(SMALL, TrainConfig(smooth=smooth)).fit(image, scribbles, cache=cache)
    whole = seg.predict_proba(image, cache=cache)
    shown, calls = [], []
    view = (slice(37, 131), slice(21, 99))
    out = predict_view_first(seg, image, lambda d, t, m: calls.append(d), cache, view=view,
                             show=lambda region, labels: shown.append((region, labels)))
    np.testing.assert_allclose(out, whole, atol=1e-5)
    assert len(shown) == 1 and shown[0][0] == view
    np.testing.assert_array_equal(shown[0][1], seg.to_labels(whole[view]))
    assert calls == sorted(calls) and calls[-1] == 1000
    assert len(calls) == len(bands(view, band)) + sum(len(bands(p, band)) for p in remainder((160, 160), view))
    assert cache.misses == (1 if tile == 1024 else 4)  # the fit's features (one window, or 2 x 2 tiles), reused


@pytest.mark.parametrize("tile", [1024, 96])
def test_view_first_with_vit_features_reads_the_token_cache(phases, tile, monkeypatch):
    """Hybrid features (random weights): the live update predicts from the cached token grids
    (logits projected per view, no (H, W, D) map), equal to the whole plane's prediction, and
    runs no forward pass after the fit's."""
    from napari_dinoseg.features.backbones import StridedViT

    image, _, scribbles = phases
    monkeypatch.setattr(Segmenter, "tile", tile)
    hybrid = FeatureConfig(kind="hybrid", weights="random", stride=14, shifts=(7,), flips=False, device="cpu",
                           sigmas=(1.0, 2.0, 4.0), membrane=False, precision="float32")
    cache = FeatureCache()
    seg = Segmenter(hybrid).fit(image, scribbles, cache=cache)
    whole = seg.predict_proba(image, cache=cache)
    passes = []
    forward = StridedViT.forward
    monkeypatch.setattr(StridedViT, "forward", lambda self, x, *a, **k: passes.append(1) or forward(self, x, *a, **k))
    view = (slice(37, 131), slice(21, 99))
    out = predict_view_first(seg, image, None, cache, view=view)
    np.testing.assert_allclose(out, whole, atol=1e-5)
    assert passes == []
    assert all(getattr(v, "n_features", 0) < 384 for v in cache._items.values())  # no pixel-level ViT map


def test_no_view_or_the_whole_plane_shows_nothing_early(phases):
    image, _, scribbles = phases
    seg = Segmenter(SMALL).fit(image, scribbles)
    shown = []
    for view in (None, (slice(0, 160), slice(0, 160))):
        out = predict_view_first(seg, image, view=view, show=lambda *a: shown.append(a))
        np.testing.assert_allclose(out, seg.predict_proba(image), atol=1e-5)
    assert shown == []


def test_with_a_crf_the_plane_is_predicted_in_one_go(phases):
    """The CRF couples every pixel with every other: no part of the plane is final before the whole."""
    image, _, scribbles = phases
    seg = Segmenter(SMALL, crf=CRFConfig(iterations=2)).fit(image, scribbles)
    shown = []
    out = predict_view_first(seg, image, view=(slice(0, 40), slice(0, 40)), show=lambda *a: shown.append(a))
    np.testing.assert_array_equal(out, seg.predict_proba(image))
    assert shown == []


@pytest.mark.parametrize("corners, expected", [
    ([[10, 20], [59, 99]], (slice(10, 60), slice(20, 100))),
    ([[0, 3, -5], [0, 200, 300]], (slice(3, 100), slice(0, 120))),  # a stack: the last two axes, clipped
    ([[100, 0], [120, 50]], None),  # below the plane
])
def test_visible_region_from_corner_pixels(corners, expected):
    assert visible_region(np.array(corners), (100, 120)) == expected


@pytest.mark.parametrize("tile", [1024, 64])
def test_view_first_reads_a_plane_kept_as_float16(phases, tile, monkeypatch):
    """A plane over the cache's budget as float32 is kept as float16: the live update reads it
    (featurising nothing after the fit) and predicts what ``predict_proba`` predicts from it."""
    from napari_dinoseg.features.featurise import CompactStack

    image, _, scribbles = phases
    monkeypatch.setattr(Segmenter, "tile", tile)
    budget = Segmenter(SMALL).feature_bytes(image.shape, 1, SMALL.resolved("cpu"))
    cache = FeatureCache(max_bytes=budget)
    seg = Segmenter(SMALL).fit(image, scribbles, cache=cache)
    assert seg.feature_storage(image.shape, 1, cache) == "float16"
    whole = seg.predict_proba(image, cache=cache)
    misses = cache.misses
    view = (slice(37, 131), slice(21, 99))
    out = predict_view_first(seg, image, None, cache, view=view)
    np.testing.assert_allclose(out, whole, atol=1e-5)
    assert cache.misses == misses and any(isinstance(v, CompactStack) for v in cache._items.values())


def test_the_dock_says_when_features_cannot_be_kept(make_napari_viewer, qtbot, phases, monkeypatch):
    """Issue 23 item 6, in a real viewer: over the cache's budget even as float16, the plan line
    and the status line say that the features cannot be kept, their size and the budget."""
    from napari_dinoseg._widgets._feature_controls import SHARED_CACHE
    from napari_dinoseg._widgets.train_widget import TrainWidget

    image, _, scribbles = phases
    SHARED_CACHE.clear()
    monkeypatch.setattr(SHARED_CACHE, "max_bytes", 2**20)  # 1 MiB: 160^2 x 65 channels do not fit
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: train")
    labels = widget.new_labels_layer()
    labels.data = scribbles.copy()
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget.worker is None and widget.last_result is not None, timeout=120_000)
    plan = widget.features.plan.value
    assert "features cannot be kept" in plan and "even as float16, over the 1 MiB feature cache" in plan
    assert widget._status.value.endswith("for interactive speed") and "cannot be kept" in widget._status.value
    assert widget.last_result.messages[-1] in plan
    SHARED_CACHE.clear()


def test_a_live_updates_check_reads_the_cached_features(phases, monkeypatch):
    """The job's shift check of a live update's probabilities (which carry no feature sample)
    takes its sample from the cache: no featurisation after the fit (before: the whole plane
    featurised again after every stroke, 12-20 s at 4096^2)."""
    import importlib

    from napari_dinoseg._widgets._train_job import Source, TrainJob, run_train_job

    featurise_module = importlib.import_module("napari_dinoseg.features.featurise")
    image, _, scribbles = phases
    cache = FeatureCache()
    job = lambda: TrainJob(sources=[Source("img", image, scribbles, False)], predict_slices=[()],  # noqa: E731
                           segmenter=Segmenter(SMALL))
    run_train_job(job(), cache)
    built = []
    real = featurise_module.featurise
    monkeypatch.setattr(featurise_module, "featurise", lambda *a, **k: built.append(1) or real(*a, **k))
    view = (slice(37, 131), slice(21, 99))
    result = run_train_job(job(), cache, predict_plane=lambda seg, plane, progress, c: predict_view_first(
        seg, plane, progress, c, view=view))
    assert built == [] and result.featurised == 0
