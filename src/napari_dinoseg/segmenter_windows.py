"""How a :class:`~napari_dinoseg.segmenter.Segmenter` walks a plane's tile windows: their
features through a cache (kept as float32, float16 or not at all, :meth:`WindowFeatures.feature_storage`),
the classifier's scaled features kept beside them, and each window's training part.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .plane_parts import _grid_and_painted
from .lazy_plane import LAZY_WORKING_WINDOWS, NormalisedPlane
from .lazy_training import skips
from .planes import in_plane, plane_windows
from .progress import within


class WindowFeatures:
    """The Segmenter's tile windows and their features (a mixin of
    :class:`~napari_dinoseg.segmenter.Segmenter`, which provides ``featuriser``, ``training``,
    ``tile`` and ``classifier``)."""

    def feature_bytes(self, shape: tuple[int, int], n_channels: int, config=None, lazy: bool = False) -> int:
        """Bytes of all the float32 feature windows (:func:`plane_windows`, margins included) of an
        ``(H, W)`` plane of ``n_channels``, with ``config`` (a featuriser or a feature config;
        default: :attr:`featuriser`); of a ``lazy`` plane (zarr, dask: never featurised whole), of
        its :data:`LAZY_WORKING_WINDOWS` largest windows, what an interactive session uses of it
        (the windows in view, the painted ones)."""
        from .features.featurisers import featuriser_for

        featuriser = self.featuriser if config is None else featuriser_for(config)
        windows = plane_windows(shape, featuriser, self.training, self.tile)
        sizes = sorted(((r.stop - r.start) * (c.stop - c.start) for (r, c), _ in windows), reverse=True)
        pixels = sum(sizes[:LAZY_WORKING_WINDOWS] if lazy else sizes)
        return 4 * pixels * featuriser.n_features(n_channels)

    def feature_storage(self, shape: tuple[int, int], n_channels: int, cache,
                        config=None, lazy: bool = False) -> str:
        """How ``cache`` keeps the feature windows of an ``(H, W)`` plane of ``n_channels``:
        :func:`~napari_dinoseg.features.featurise.plane_storage` of :meth:`feature_bytes` and the
        cache's budget (``"float32"`` without a cache). A ``lazy`` plane's windows are kept as
        they are met, as float16 :class:`~napari_dinoseg.features.cache.CompactStack` s (half the
        bytes: its working set stays a fraction of the memory), evicted oldest first."""
        if cache is None:
            return "float32"
        from .features.featurise import plane_storage

        nbytes = self.feature_bytes(shape, n_channels, config, lazy)
        if lazy:  # half the bytes, what is read decoded: the working set of a plane larger than memory
            return "float16" if nbytes // 2 <= cache.max_bytes else "none"
        return plane_storage(nbytes, cache.max_bytes)

    def keeps_scaled(self, shape: tuple[int, int], n_channels: int, cache,
                     config=None, lazy: bool = False) -> bool:
        """Whether ``cache`` keeps the classifier's :meth:`scaled_features` of an ``(H, W)`` plane's
        windows beside the windows (:func:`~napari_dinoseg.features.featurise.keeps_scaled`)."""
        from .features.featurise import keeps_scaled

        if cache is None or lazy:  # a lazy plane's working set: its windows only, the memory kept low
            return False
        storage = self.feature_storage(shape, n_channels, cache, config, lazy)
        return keeps_scaled(storage, self.feature_bytes(shape, n_channels, config, lazy), cache.max_bytes,
                            self.read_fraction())

    def read_fraction(self) -> float:
        """The share of a plane's pixels whose features the classifier reads: ``1 / predict_step²``
        with the guided filter (:func:`~napari_dinoseg.classify.read_pixels`), else 1."""
        clf = self.classifier
        guided, step = ((self.training.guided_radius > 0, self.training.predict_step) if clf is None
                        else (clf.guided_radius > 0 and bool(clf.guide), clf.predict_step))
        return 1.0 / step**2 if guided else 1.0

    def scaled_features(self, stack, key: Optional[str], cache, origin: tuple[int, int] = (0, 0)) -> Optional[np.ndarray]:
        """The classifier's :func:`~napari_dinoseg.classify.scaled_features` of a cached window,
        kept in ``cache`` while the classifier's scaling stays the same (refits on the same
        training images keep it); ``None`` without a cache: :func:`predict` scales as it goes.

        Of a :class:`FeatureStack`: ``(F, h, w)``, every pixel. Of a
        :class:`~napari_dinoseg.features.featurise.CompactStack` (a large plane's window at plane
        coordinates ``origin``): ``(F, h', w')``, the pixels the classifier reads
        (:func:`~napari_dinoseg.classify.read_pixels`), from its decoded values: what
        :func:`predict_part` reads, scaled as it would scale them.
        """
        from .classify import read_pixels, scaled_features
        from .features.featurise import CompactStack

        clf = self._fitted()
        if cache is None or key is None:
            return None
        scaling = (clf.scaling, clf.mean.tobytes(), clf.scale.tobytes())
        if not isinstance(stack, CompactStack):
            return cache.derived(("scaled", key, scaling), lambda: scaled_features(clf, stack))
        read = read_pixels(clf, stack.shape, origin)
        return cache.derived(("scaled", key, scaling, tuple((r.start, r.step) for r in read)),
                             lambda: scaled_features(clf, stack.region(*read)))

    def regions(self, image, progress=None, cache=None):
        """The window API: one plane ready to predict any rectangle of it, as :meth:`predict_proba`
        predicts it there (without the CRF, which couples the whole plane): a
        :class:`~napari_dinoseg.region_prediction.PlaneRegions` whose ``proba(region)`` is the
        ``(h, w, K)`` float32 probabilities of ``(rows, cols)`` slices. The live update predicts
        the part on screen first through it."""
        from .region_prediction import PlaneRegions

        return PlaneRegions(self, image, progress, cache)

    def kept_part(self, window, core) -> tuple[slice, slice]:
        """``(rows, cols)`` of a lazy plane's window (relative to it) that a cache keeps of its
        features: its core and the reach of the probability smoothing around it (within the
        window), all that training and prediction read of it; the feature margins are dropped
        (a fifth of a 1172² window's bytes and encoding time)."""
        from .smoothing import reach

        grow = reach(self.training.guided_radius, self.training.smooth, self.training.predict_step)
        return tuple(slice(max(0, c.start - grow), min(w.stop - w.start, c.stop + grow)) for w, c in zip(window, core))

    def cache_view(self, image, region, progress=None, cache=None) -> int:
        """Compute into ``cache`` the features of the tile windows of a lazy plane that meet
        ``region``, as :meth:`fit` and :meth:`regions` read them (the intensity bounds too): a
        Train / Predict there then finds them. The train dock does this while the user paints.

        Parameters
        ----------
        image : (H, W) or (H, W, C) array-like
            A plane read window by window (zarr, dask: :func:`~napari_dinoseg.lazy_plane.is_lazy`).
        region
            ``(rows, cols)`` slices of the plane (the part on screen); ``None``: the intensity
            bounds only.
        progress
            Reported after each window (a cancel point between windows).
        cache
            A :class:`~napari_dinoseg.features.cache.FeatureCache`; without one nothing is done.

        Returns
        -------
        The number of windows whose features it computed: of those that meet ``region``, the ones
        not in ``cache`` already (0 also when their features would not be kept, or without a region).
        """
        from .features.featurise import cache_key, keyed_featurise, part_key
        from .lazy_plane import LazyPlane, is_lazy
        from .region_prediction import _overlap

        if cache is None or not is_lazy(image):
            return 0
        norm = LazyPlane(image, self.features, None, cache).normalised()
        storage = self.feature_storage(norm.shape[:2], norm.shape[-1], cache, lazy=True)
        if region is None or storage == "none":
            return 0
        windows = [(window, core) for window, core in plane_windows(norm.shape[:2], self.featuriser, self.training,
                                                                    self.tile) if _overlap(in_plane(window, core), region) is not None]
        computed = 0
        for n, (window, core) in enumerate(windows):
            values, keep = norm[window], self.kept_part(window, core)
            if part_key(cache_key(values, self.featuriser.config), keep) not in cache:
                keyed_featurise(values, self.featuriser, within(progress, n / len(windows), (n + 1) / len(windows)),
                                cache, normalised=True, storage=storage, keep=keep)
                computed += 1
        return computed

    def _window_parts(self, norm: np.ndarray, labels: np.ndarray, featuriser, step: int, progress, cache=None):
        """Yield ``(window, core, key, TrainingPart, channel names)`` for every tile of a normalised
        plane, its features computed at the painted pixels and the grid sample only
        (:func:`~napari_dinoseg.features.featurise.featurise_pixels`, through ``cache``): the same part
        as :func:`~napari_dinoseg.classify.training_part` of the tile's whole stack, up to float
        rounding. ``key``: the tile's cache key (``None`` without a cache)."""
        from .classify import TrainingPart
        from .features.featurise import cache_key, featurise_pixels

        windows = plane_windows(norm.shape[:2], featuriser, self.training, self.tile)
        for n, (window, core) in enumerate(windows):
            if skips(norm, window, core):  # a lazy plane's unpainted tile: not read
                continue
            sub = within(progress, n / len(windows), (n + 1) / len(windows))
            crop = np.asarray(labels[in_plane(window, core)])
            rows, cols, n_painted = _grid_and_painted(crop, core, step)
            if cache is None:  # one pass of the model for both
                data, names = featurise_pixels(norm[window], featuriser, (rows, cols), sub, normalised=True)
                x, grid, key = data[:n_painted], data[n_painted:], None
            else:  # the grid sample does not change with the strokes: gathered once
                key = cache_key(norm[window], featuriser.config)
                where = ("grid", key, step, tuple((c.start, c.stop) for c in core))
                grid, names = cache.derived(where, lambda: featurise_pixels(
                    norm[window], featuriser, (rows[n_painted:], cols[n_painted:]), sub, normalised=True, cache=cache))
                x, _ = featurise_pixels(norm[window], featuriser, (rows[:n_painted], cols[:n_painted]), sub,
                                        normalised=True, cache=cache)
            part = TrainingPart(x=x, y=crop[crop > 0].astype(np.int64), grid=grid)
            yield window, core, key, part, names

    def _window_features(self, norm: np.ndarray, featuriser, progress, cache, storage: str = "float32"):
        """Yield ``(window, core, key, stack)`` for every tile of a normalised plane: ``window``
        slices the plane, ``core`` slices the window's features down to the part the tile owns,
        ``key`` is the stack's cache key (``None`` without a cache), ``stack`` a FeatureStack or,
        with ``storage="float16"``, a CompactStack (:func:`window_training_part`, :func:`predict_part`
        read either)."""
        from .features.featurise import keyed_featurise

        lazy = storage != "float32" and isinstance(norm, NormalisedPlane)  # kept in part (no cache: "float32")
        windows = plane_windows(norm.shape[:2], featuriser, self.training, self.tile)
        for n, (window, core) in enumerate(windows):
            if skips(norm, window, core):  # a lazy plane's unpainted tile: not read
                continue
            sub = within(progress, n / len(windows), (n + 1) / len(windows))
            keep = self.kept_part(window, core) if lazy else None
            yield (window, core, *keyed_featurise(norm[window], featuriser, sub, cache, normalised=True, storage=storage,
                                                  keep=keep))

