"""The trained pipeline as one object: what the widget builds, the bundle stores and batch reloads.

:class:`Segmenter` chains, for one 2-D plane: intensity normalisation (the feature config's
rule, over the whole plane) -> features (tile by tile for planes larger than ``TILE`` px, with
context margins, so memory stays bounded and every path cuts the same tiles) -> classifier ->
probability smoothing -> optional dense CRF -> label values; and keeps statistics of the
training images for :meth:`Segmenter.check`, the shift report. The train widget's clicks,
:func:`napari_dinoseg.apply_bundle`, the CLI and the apply-to-folder widget predict through
:meth:`Segmenter.predict_proba`, so one image gets the same output from all of them. The live
update does not: ``_widgets/_live.py`` predicts the part in view first from this module's pieces
(:func:`predict_part`, the windows of :func:`plane_windows`): the same windows, the same
probabilities to 1e-5 (tested); issue 26 gives the Segmenter a window API it can call instead.
"""

from __future__ import annotations

import os
import weakref
from typing import Optional, Sequence, Union

import numpy as np

from .classify import (PixelClassifier, check_labels, fit_scaling, grid_step, linear_channels, predict, train_parts,
                       training_part, tree_components)
from .config import CRFConfig, FeatureConfig, TrainConfig, config_or_default
from .planes import TILE, Slices, in_plane, label_dtype, plane_windows, window_origin
from .progress import ProgressCallback, report, within
from .shift import (FEATURE_FIT_SAMPLE, FeatureDistribution, TrainingStatistics, collapse_warning, image_statistics,
                    sample_step)

ImageLike = np.ndarray


class Segmenter:
    """Features + pixel classifier + smoothing + optional CRF, fitted on painted images.

    After scikit-image's ``TrainableSegmenter``::

        seg = Segmenter(features=FeatureConfig(), training=TrainConfig(), crf=None)
        seg.fit(image, labels)                 # or lists of images and labels
        proba = seg.predict_proba(other)       # (H, W, K) float32
        seg.segment(other)                     # (H, W) painted label values
        seg.check(other)                       # list of warnings, [] when it looks like the training data
        seg.save("model.dinoseg"); Segmenter.load("model.dinoseg")

    Parameters
    ----------
    features
        How images are normalised and featurised; ``FeatureConfig()`` when omitted.
    training
        How the classifier is fitted and its probabilities smoothed; ``TrainConfig()`` when omitted.
    crf
        Dense CRF refinement of the probabilities; ``None``: off.

    Attributes
    ----------
    classifier : PixelClassifier or None
        The fitted classifier (``None`` before :meth:`fit`).
    statistics : TrainingStatistics or None
        What the training images looked like (``None`` for bundles from before format 4).
    n_channels : int or None
        Image channels the classifier was trained on.
    tile : int
        Planes with a longer side are featurised and predicted in tiles of this many px (plus margins).
    """

    tile: int = TILE

    def __init__(self, features: Optional[FeatureConfig] = None, training: Optional[TrainConfig] = None,
                 crf: Optional[CRFConfig] = None) -> None:
        self.features = config_or_default(features, FeatureConfig, "features")
        self.training = config_or_default(training, TrainConfig, "training")
        self.crf = None if crf is None else config_or_default(crf, CRFConfig, "crf")
        self.classifier: Optional[PixelClassifier] = None
        self.statistics: Optional[TrainingStatistics] = None
        self.n_channels: Optional[int] = None
        self.channel_names: Optional[tuple[str, ...]] = None
        # feature samples of the latest predictions, for check(image, proba): id(proba) -> (ref, sample)
        self._samples: dict = {}

    def __repr__(self) -> str:
        state = (f"fitted, {self.classifier.n_classes} classes" if self.classifier is not None else "not fitted")
        crf = ", crf" if self.crf is not None else ""
        return f"Segmenter({self.features.kind} features, normalise={self.features.normalise!r}{crf}; {state})"

    @property
    def classes(self) -> np.ndarray:
        """``(K,)`` int64 painted label value of each probability column."""
        return self._fitted().classes

    # ---- fitting -------------------------------------------------------------------

    def fit(self, images: Union[ImageLike, Sequence[ImageLike]], labels: Union[np.ndarray, Sequence[np.ndarray]],
            progress: Optional[ProgressCallback] = None, cache=None) -> "Segmenter":
        """Fit on one image and its brush labels, or on lists of them (sizes may differ).

        Parameters
        ----------
        images : (H, W) or (H, W, C) array, or a sequence of them
            The painted images (one channel count for all).
        labels : (H, W) int array, or a sequence of them
            Brush labels, 0 = unlabelled, 1..K = classes.
        progress
            ``progress(done, total, message)``; may raise :class:`napari_dinoseg.Cancelled`.
        cache : FeatureCache, optional
            Features are taken from / put into it (the widget's cache).

        Returns
        -------
        self, fitted. The feature config's device presets are resolved here.
        """
        from .features.featurise import resolve_device
        from .memory import check_fit_memory

        images, labels = _as_lists(images, labels)
        channels = {_channels(img) for img in images}
        if len(channels) > 1:
            raise ValueError(f"the training images have different channel counts {sorted(channels)}; "
                             "train on images of one kind")
        labels = [check_labels(lab) for lab in labels]  # before any featurisation
        for i, (img, lab) in enumerate(zip(images, labels)):
            if np.shape(lab) != np.shape(img)[:2]:
                raise ValueError(f"labels of shape {np.shape(lab)} do not match image {i}'s shape "
                                 f"{np.shape(img)[:2]}; paint in a Labels layer with the image's shape")
        config = self.features.resolved(resolve_device(self.features.device).type)
        check_fit_memory(self, images, labels, config)
        normalised = [self._normalise(img, config, check_channels=False, cache=cache) for img in images]
        variants = [(norm, lab) for norm, lab in zip(normalised, labels)]
        variants += [(tone_curve(norm, g), lab) for g in self.training.augment for norm, lab in zip(normalised, labels)]
        # one tile's features at a time: only what training reads of each is kept
        shapes = [tuple(c.stop - c.start for c in core) for norm, _ in variants
                  for _, core in plane_windows(norm.shape[:2], config, self.training, self.tile)]
        step = grid_step(shapes)
        parts, keys, names = [], [], None
        for i, (norm, lab) in enumerate(variants):
            sub = within(progress, 0.9 * i / len(variants), 0.9 * (i + 1) / len(variants))
            if config.uses_vit:  # the ViT channels only where training reads them (a cache keeps tokens)
                for window, core, key, part, names in self._window_parts(norm, lab, config, step, sub, cache):
                    parts.append(part)
                    keys.append((key, tuple((c.start, c.stop) for c in core)))
                continue
            storage = self.feature_storage(norm.shape[:2], norm.shape[-1], cache, config)
            for window, core, key, stack in self._window_features(norm, config, sub, cache, storage):
                crop = np.asarray(lab)[in_plane(window, core)]
                parts.append(window_training_part(stack, core, crop, step))
                keys.append((key, tuple((c.start, c.stop) for c in core)))
                names = stack.channel_names
                del stack  # before the next tile's features are computed
        report(progress, 900, 1000, "training")
        # what does not depend on the strokes is computed once per set of training images
        kind, linear = self.training.scaling, linear_channels(names, self.training)
        scaling = _memo(cache, ("scaling", kind, linear, tuple(keys)), lambda: fit_scaling(parts, kind, linear))
        components = None
        if linear:  # the trees' view of the ViT channels: a PCA of the grid sample, as the scaling
            grid = lambda: np.concatenate([p.grid for p in parts])  # noqa: E731
            components = _memo(cache, ("components", kind, linear, self.training.vit_components, self.training.seed,
                                       tuple(keys)), lambda: tree_components(grid(), scaling, linear, self.training))
        classifier = train_parts(parts, self.training, channel_names=names, feature_config=config, scaling=scaling,
                                 components=components)
        self.features, self.classifier, self.n_channels = config, classifier, normalised[0].shape[-1]
        self.channel_names = names
        quantiles = [self._image_statistics(norm, config, cache) for norm in normalised]
        report(progress, 950, 1000, "training statistics")
        distribution = self._feature_distribution(np.concatenate([p.grid for p in parts]), normalised, cache,
                                                  ("feature distribution", kind, linear, tuple(keys)))
        statistics = TrainingStatistics.of(quantiles, [np.asarray(lab) for lab in labels], classifier.classes)
        self.statistics = TrainingStatistics(statistics.quantiles, statistics.class_fractions, distribution)
        report(progress, 1000, 1000, "trained")
        return self

    # ---- predicting ----------------------------------------------------------------

    def predict_proba(self, image: ImageLike, progress: Optional[ProgressCallback] = None,
                      cache=None) -> np.ndarray:
        """Class probabilities of one plane.

        Parameters
        ----------
        image : (H, W) or (H, W, C) array
            One plane with the training images' channel count (RGBA: alpha dropped).
        progress, cache
            As for :meth:`fit`.

        Returns
        -------
        (H, W, K) float32, summing to 1 over K; column ``k`` is label ``classes[k]``.

        Raises
        ------
        ValueError
            For a wrong channel count, or when the probabilities are not finite (never
            returned as a result); :class:`~napari_dinoseg.memory.NotEnoughMemory` (a ValueError),
            before anything of the plane is allocated, when its estimated peak would not fit
            (:func:`~napari_dinoseg.memory.check_plane_memory`).
        """
        from .memory import check_plane_memory

        clf = self._fitted()
        check_plane_memory(self, np.shape(image), what="predicting")
        norm = self.normalise(image, cache)
        out = np.empty((*norm.shape[:2], clf.n_classes), np.float32)
        split = self.logit_space()
        step = sample_step(norm.shape[:2])
        rows = []  # the shift report's sample: features already computed, every step-th row and column
        if split is not None:  # the ViT map never built: its logits computed on the token grids (kept in a cache)
            from .features.featurise import featurise_projected

            reduced, projection = split
            windows = plane_windows(norm.shape[:2], self.features, self.training, self.tile)
            for n, (window, core) in enumerate(windows):
                sub = within(progress, 0.95 * n / len(windows), 0.95 * (n + 1) / len(windows))
                stack = featurise_projected(norm[window], self.features, projection, sub, normalised=True,
                                            cache=cache)
                out[window][core] = predict(reduced, stack, origin=window_origin(window))[core]
                rows.append(_lattice_rows(stack, window, core, step))
                del stack
        else:
            storage = self.feature_storage(norm.shape[:2], norm.shape[-1], cache)
            keep = self.keeps_scaled(norm.shape[:2], norm.shape[-1], cache)
            for window, core, key, stack in self._window_features(norm, self.features, within(progress, 0, 0.95),
                                                                  cache, storage):
                scaled = self.scaled_features(stack, key, cache, window_origin(window)) if keep else None
                whole = tuple(slice(0, n) for n in stack.shape)
                out[window][core] = predict_part(clf, stack, whole, window_origin(window), scaled)[core]
                rows.append(_lattice_rows(stack, window, core, step))
                del stack  # before the next tile's features are computed
        if self.crf is not None:
            from .crf import crf_refine

            report(progress, 960, 1000, "dense CRF")
            out = crf_refine(norm, out, self.crf, normalised=True)
        check_finite(out)
        if self.statistics is not None and self.statistics.features is not None:
            self._keep_sample(out, self._sample(np.concatenate(rows), projected=split is not None))
        report(progress, 1000, 1000, "predicted")
        return out

    def segment(self, image: ImageLike, progress: Optional[ProgressCallback] = None, cache=None) -> np.ndarray:
        """``(H, W)`` painted label values of one plane (dtype from :func:`label_dtype`)."""
        return self.to_labels(self.predict_proba(image, progress, cache))

    def to_labels(self, proba: np.ndarray) -> np.ndarray:
        """``(..., K)`` probabilities -> ``(...)`` label values, in the smallest unsigned dtype holding them
        (a block of rows at a time: no int64 copy of the plane)."""
        clf, proba = self._fitted(), np.asarray(proba)
        if proba.ndim < 3:
            return clf.to_labels(proba).astype(label_dtype(self.classes))
        out = np.empty(proba.shape[:-1], label_dtype(self.classes))
        rows = max(1, (1 << 20) // max(1, proba[:1].size))
        for r0 in range(0, len(out), rows):
            out[r0:r0 + rows] = clf.to_labels(proba[r0:r0 + rows])
        return out

    def check(self, image: ImageLike, proba: Optional[np.ndarray] = None, cache=None) -> list[str]:
        """Warnings about one plane: unlike the training images, or a collapsed prediction.

        Parameters
        ----------
        image : (H, W) or (H, W, C) array
        proba : (H, W, K) array, optional
            Its probabilities, when already predicted (computed otherwise). Those returned by
            :meth:`predict_proba` carry the feature sample the check reads; for others (e.g. put
            together from windows elsewhere) the sample is featurised here, through ``cache``.
        cache : FeatureCache, optional
            As for :meth:`fit`: a cache holding the plane's features makes that sample cheap.

        Returns
        -------
        list of str, empty when the image looks like the training data.

        Raises
        ------
        ValueError
            For ``proba`` of another shape than ``(H, W, K)``: this plane's height and width,
            the classifier's number of classes (probabilities of another image or classifier).
        """
        clf = self._fitted()
        if proba is not None:
            expected = (*np.shape(image)[:2], clf.n_classes)
            if np.shape(proba) != expected:
                raise ValueError(f"proba of shape {np.shape(proba)} do not belong to this image and classifier: "
                                 f"expected {expected} (the image's height and width, then one column per class "
                                 f"of the classifier's {clf.n_classes}); pass the probabilities predict_proba gave "
                                 "for this image, or none to have them computed")
        norm = self.normalise(image, cache)
        proba = self.predict_proba(image) if proba is None else proba
        warnings = []
        if self.statistics is not None:
            sample = self._kept_sample(proba)
            if sample is None and self.statistics.features is not None:  # probabilities from elsewhere
                sample = self.feature_sample(image, cache)
            features, confidence = (None, None) if sample is None else sample
            warnings = self.statistics.check(norm, self.features.normalise, features, confidence,
                                             self._image_statistics(norm, self.features, cache))
        return warnings + collapse_warning(proba, clf.classes)

    def shift_space(self, rows: np.ndarray, projected: bool = False) -> np.ndarray:
        """Feature rows as the shift report compares them: scaled as the classifier scales them.

        Parameters
        ----------
        rows : (M, F) float array
            Features of some pixels: the full stack's channels, or with ``projected`` those of
            :func:`~napari_dinoseg.features.featurise.featurise_projected` with the classifier's
            :meth:`logit_space` projection.

        Returns
        -------
        (M, D) float32. For a classifier with a :meth:`logit_space`, the ViT channels enter as that
        projection (the classifier's logits on them and the trees' components of them): the same
        ``D`` columns whichever way the features were computed.
        """
        from .classify import _scaled
        from .features.channels import ChannelLayout

        clf, rows = self._fitted(), np.asarray(rows, np.float32)
        split = self.logit_space()
        if split is not None:
            reduced, (weights, bias) = split
            if not projected:
                layout = ChannelLayout.of(self.channel_names)
                other, vit = list(layout.classical), list(layout.vit)
                rows = np.hstack([rows[:, other], rows[:, vit] @ weights.T + bias])
            clf = reduced
        return _scaled(rows, clf.mean, clf.scale, clf.scaling, clf.linear)

    def feature_sample(self, image: ImageLike, cache=None) -> tuple[np.ndarray, float]:
        """The shift report's sample of one plane, featurised here (:meth:`predict_proba` keeps it
        for :meth:`check` without featurising again): ``(M, D)`` float32 :meth:`shift_space` rows
        of about ``FEATURE_SAMPLE`` pixels on a regular grid, and the classifier's mean top
        probability on them (unsmoothed)."""
        norm = self.normalise(image, cache)
        rows = self._grid_rows(norm, self.features, sample_step(norm.shape[:2]), cache)
        return self._sample(rows, projected=False)

    def logit_space(self):
        """:func:`~napari_dinoseg.classify.logit_space` of the classifier: ``(reduced classifier,
        ViT projection)`` where it is linear in the ViT channels, else ``None``.

        :meth:`predict_proba` then never builds the ``(H, W, D)`` ViT map: the classifier's
        logits on the ViT channels are computed on each view's token grid and upsampled (``K``
        channels instead of ``D``). A feature cache keeps the token grids (and the classical
        channels), so the refits of an interactive session run no forward pass either.
        """
        from .classify import logit_space

        if not self.features.uses_vit or not self.channel_names:
            return None
        return logit_space(self._fitted(), self.channel_names)

    def feature_bytes(self, shape: tuple[int, int], n_channels: int, config: Optional[FeatureConfig] = None) -> int:
        """Bytes of all the float32 feature windows (:func:`plane_windows`, margins included) of an
        ``(H, W)`` plane of ``n_channels``, with ``config`` (default: the segmenter's, resolved)."""
        from .features.featurise import n_features

        config = self.features if config is None else config
        windows = plane_windows(shape, config, self.training, self.tile)
        pixels = sum((r.stop - r.start) * (c.stop - c.start) for (r, c), _ in windows)
        return 4 * pixels * n_features(config, n_channels)

    def feature_storage(self, shape: tuple[int, int], n_channels: int, cache,
                        config: Optional[FeatureConfig] = None) -> str:
        """How ``cache`` keeps the feature windows of an ``(H, W)`` plane of ``n_channels``:
        :func:`~napari_dinoseg.features.featurise.plane_storage` of :meth:`feature_bytes` and the
        cache's budget (``"float32"`` without a cache)."""
        if cache is None:
            return "float32"
        from .features.featurise import plane_storage

        return plane_storage(self.feature_bytes(shape, n_channels, config), cache.max_bytes)

    def keeps_scaled(self, shape: tuple[int, int], n_channels: int, cache,
                     config: Optional[FeatureConfig] = None) -> bool:
        """Whether ``cache`` keeps the classifier's :meth:`scaled_features` of an ``(H, W)`` plane's
        windows beside the windows (:func:`~napari_dinoseg.features.featurise.keeps_scaled`)."""
        from .features.featurise import keeps_scaled

        if cache is None:
            return False
        storage = self.feature_storage(shape, n_channels, cache, config)
        return keeps_scaled(storage, self.feature_bytes(shape, n_channels, config), cache.max_bytes,
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

    # ---- persistence ---------------------------------------------------------------

    def save(self, path: Union[str, os.PathLike]):
        """Write the fitted pipeline to a bundle file (atomically; see :mod:`napari_dinoseg.bundle`)."""
        from .bundle import save_bundle

        return save_bundle(path, self._fitted(), self.features, self.n_channels, self.channel_names,
                           training=self.training, crf=self.crf, statistics=self.statistics)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Segmenter":
        """Read a bundle (any format; format 3 and older load with ``normalise="legacy"``)."""
        from .bundle import read_bundle

        contents = read_bundle(path)
        seg = cls(contents.features, contents.training, contents.crf)
        seg.classifier, seg.statistics = contents.classifier, contents.statistics
        seg.n_channels, seg.channel_names = contents.n_channels, contents.channel_names
        features = None if seg.statistics is None else seg.statistics.features
        if features is not None and features.n_dims != seg.shift_space(np.zeros((1, seg.classifier.n_features))).shape[1]:
            raise ValueError(f"{str(path)!r} is corrupt: its training statistics' feature distribution has "
                             f"{features.n_dims} columns, not those of its classifier")
        return seg

    # ---- internals -----------------------------------------------------------------

    def _feature_distribution(self, grid: np.ndarray, normalised: Sequence[np.ndarray],
                              cache, key: tuple) -> FeatureDistribution:
        """The training pixels' :class:`~napari_dinoseg.shift.FeatureDistribution` from the fit's
        ``(M, F)`` grid sample, and from the contrast-inverted training images (``1 - x``,
        featurised here on a grid; kept in ``cache`` per training image). With ViT or hybrid
        features the inverted images are not featurised (no inversion check): their forward
        passes would double the fit's cost. Without a logit-space split the distribution depends
        on the training images and their scaling, not on the strokes: kept in ``cache`` under
        ``key`` (what the scaling is kept under), so a refit after a stroke does not redo it;
        only the confidence, which depends on the classifier, is computed again."""
        import dataclasses

        from .classify import _pixel_proba

        confidence = float(_pixel_proba(self.classifier, grid).max(axis=0).mean())
        if self.logit_space() is not None:  # the ViT channels enter as the classifier's logits
            return self._fit_distribution(grid, normalised, cache, confidence)
        kept = _memo(cache, key + (self.training.seed,),
                     lambda: self._fit_distribution(grid, normalised, cache, confidence))
        return dataclasses.replace(kept, confidence=confidence)

    def _fit_distribution(self, grid: np.ndarray, normalised: Sequence[np.ndarray], cache,
                          confidence: float) -> FeatureDistribution:
        """:meth:`_feature_distribution` computed (k-means of the scaled grid sample)."""
        from .features.featurise import cache_key

        inverted = None
        if not self.features.uses_vit:  # a ViT would need a second forward pass of every training image
            step = sample_step(normalised[0].shape[:2], FEATURE_FIT_SAMPLE / len(normalised))
            inverted = self.shift_space(np.concatenate([
                _memo(cache, ("inverted sample", cache_key(norm, self.features) if cache else None, step),
                      lambda norm=norm: self._grid_rows(np.float32(1) - norm, self.features, step, None))
                for norm in normalised]))
        return FeatureDistribution.fit(self.shift_space(grid), inverted, confidence, self.training.seed)

    def _grid_rows(self, norm: np.ndarray, config: FeatureConfig, step: int, cache) -> np.ndarray:
        """``(M, F)`` float32 full features of a normalised plane's pixels on the regular grid of
        ``step`` (plane coordinates multiples of it), tile by tile; with ViT features only those
        pixels' (:func:`~napari_dinoseg.features.featurise.featurise_pixels`)."""
        from .features.featurise import featurise_pixels

        rows = []
        if config.uses_vit:
            for window, core in plane_windows(norm.shape[:2], config, self.training, self.tile):
                r, c = (np.arange(_up(w.start + k.start, step), w.start + k.stop, step) - w.start
                        for w, k in zip(window, core))
                grid = np.meshgrid(r, c, indexing="ij")
                data, _ = featurise_pixels(norm[window], config, (grid[0].ravel(), grid[1].ravel()),
                                           normalised=True, cache=cache)
                rows.append(data)
        else:
            storage = self.feature_storage(norm.shape[:2], norm.shape[-1], cache, config)
            for window, core, _, stack in self._window_features(norm, config, None, cache, storage):
                rows.append(_lattice_rows(stack, window, core, step))
                del stack
        return np.concatenate(rows).astype(np.float32, copy=False)

    def _sample(self, rows: np.ndarray, projected: bool) -> tuple[np.ndarray, float]:
        """:meth:`shift_space` rows of a sample and the classifier's mean top probability on them."""
        from .classify import _pixel_proba

        split = self.logit_space() if projected else None
        clf = self._fitted() if split is None else split[0]
        rows = np.asarray(rows, np.float32)
        confidence = float(_pixel_proba(clf, rows).max(axis=0).mean()) if len(rows) else 1.0
        return self.shift_space(rows, projected), confidence

    def _keep_sample(self, proba: np.ndarray, sample: tuple[np.ndarray, float]) -> None:
        """Keep a prediction's sample for :meth:`check` while the prediction lives (8 at most)."""
        for key in [k for k, (ref, _) in list(self._samples.items()) if ref() is None]:
            self._samples.pop(key, None)
        while len(self._samples) >= 8:
            self._samples.pop(next(iter(self._samples)), None)
        self._samples[id(proba)] = (weakref.ref(proba), sample)

    def _kept_sample(self, proba: np.ndarray) -> Optional[tuple[np.ndarray, float]]:
        """The sample :meth:`predict_proba` kept for this very array of probabilities, else ``None``."""
        ref, sample = self._samples.get(id(proba), (None, None))
        return sample if ref is not None and ref() is proba else None

    @staticmethod
    def _image_statistics(norm: np.ndarray, config: FeatureConfig, cache) -> np.ndarray:
        """:func:`~napari_dinoseg.shift.image_statistics` of a normalised plane, through ``cache``
        (the same for the training image at each refit and for each plane predicted again)."""
        from .features.featurise import cache_key

        return _memo(cache, ("image statistics", cache_key(norm, config) if cache else None),
                     lambda: image_statistics(norm))

    def _fitted(self) -> PixelClassifier:
        if self.classifier is None:
            raise ValueError("the Segmenter is not fitted: call fit(images, labels) or Segmenter.load(path)")
        return self.classifier

    def normalise(self, image: ImageLike, cache=None) -> np.ndarray:
        """One plane -> ``(H, W, C)`` float32, as :meth:`predict_proba` normalises it (channels checked).

        With a ``cache`` (a :class:`~napari_dinoseg.features.featurise.FeatureCache`), the
        normalised plane is kept there, read-only, and its windows are keyed without reading
        their pixels (:func:`napari_dinoseg.features.keys.frozen`): a click or live update on an
        image seen before reads the image once (its key) instead of normalising it again."""
        return self._normalise(image, self.features, cache=cache)

    def _normalise(self, image: ImageLike, config: FeatureConfig, check_channels: bool = True,
                   cache=None) -> np.ndarray:
        """One plane -> ``(H, W, C)`` float32 normalised by ``config``'s rule, channel count checked
        (through ``cache``: see :meth:`normalise`)."""
        from .features.keys import cache_key, frozen
        from .image import as_float_image, check_image_shape, drop_alpha

        arr = image if np.ma.isMaskedArray(image) else np.asarray(image)  # masks: see as_float_image
        check_image_shape(arr.shape)
        if check_channels and self.n_channels is not None:
            if self.n_channels == 3 and arr.ndim == 3 and arr.shape[-1] == 4:
                arr = drop_alpha(arr)
            if _channels(arr) != self.n_channels:
                raise ValueError(f"the image has {_channels(arr)} channel(s) but the classifier was trained on "
                                 f"{self.n_channels}; give it images of the kind it was trained on")
        if cache is None or np.ma.isMaskedArray(arr):  # a content key does not see a mask
            return as_float_image(arr, config)
        key = cache_key(arr, config)
        return cache.derived(("normalised", key), lambda: frozen(as_float_image(arr, config), key))

    def _window_parts(self, norm: np.ndarray, labels: np.ndarray, config: FeatureConfig, step: int, progress,
                      cache=None):
        """Yield ``(window, core, key, TrainingPart, channel names)`` for every tile of a normalised
        plane, its features computed at the painted pixels and the grid sample only
        (:func:`~napari_dinoseg.features.featurise.featurise_pixels`, through ``cache``): the same part
        as :func:`~napari_dinoseg.classify.training_part` of the tile's whole stack, up to float
        rounding. ``key``: the tile's cache key (``None`` without a cache)."""
        from .classify import TrainingPart
        from .features.featurise import cache_key, featurise_pixels

        windows = plane_windows(norm.shape[:2], config, self.training, self.tile)
        for n, (window, core) in enumerate(windows):
            sub = within(progress, n / len(windows), (n + 1) / len(windows))
            crop = np.asarray(labels)[in_plane(window, core)]
            rows, cols, n_painted = _grid_and_painted(crop, core, step)
            if cache is None:  # one pass of the model for both
                data, names = featurise_pixels(norm[window], config, (rows, cols), sub, normalised=True)
                x, grid, key = data[:n_painted], data[n_painted:], None
            else:  # the grid sample does not change with the strokes: gathered once
                key = cache_key(norm[window], config)
                where = ("grid", key, step, tuple((c.start, c.stop) for c in core))
                grid, names = cache.derived(where, lambda: featurise_pixels(
                    norm[window], config, (rows[n_painted:], cols[n_painted:]), sub, normalised=True, cache=cache))
                x, _ = featurise_pixels(norm[window], config, (rows[:n_painted], cols[:n_painted]), sub,
                                        normalised=True, cache=cache)
            part = TrainingPart(x=x, y=crop[crop > 0].astype(np.int64), grid=grid)
            yield window, core, key, part, names

    def _window_features(self, norm: np.ndarray, config: FeatureConfig, progress, cache, storage: str = "float32"):
        """Yield ``(window, core, key, stack)`` for every tile of a normalised plane: ``window``
        slices the plane, ``core`` slices the window's features down to the part the tile owns,
        ``key`` is the stack's cache key (``None`` without a cache), ``stack`` a FeatureStack or,
        with ``storage="float16"``, a CompactStack (:func:`window_training_part`, :func:`predict_part`
        read either)."""
        from .features.featurise import keyed_featurise

        windows = plane_windows(norm.shape[:2], config, self.training, self.tile)
        for n, (window, core) in enumerate(windows):
            sub = within(progress, n / len(windows), (n + 1) / len(windows))
            yield (window, core, *keyed_featurise(norm[window], config, sub, cache, normalised=True, storage=storage))


def window_training_part(stack, core: Slices, labels: np.ndarray, step: int):
    """:func:`~napari_dinoseg.classify.training_part` of ``stack.data[core]`` and its ``labels``
    ``(h, w)``; of a :class:`~napari_dinoseg.features.featurise.CompactStack`, only the painted
    pixels and the grid sample are decoded."""
    from .classify import TrainingPart
    from .features.featurise import CompactStack

    if not isinstance(stack, CompactStack):
        return training_part(stack.data[core], labels, step)
    painted = np.nonzero(labels)
    x = stack.pixels(painted[0] + core[0].start, painted[1] + core[1].start)
    grid = stack.region(*(slice(c.start, c.stop, step) for c in core)).reshape(-1, stack.n_features)
    return TrainingPart(x=x, y=labels[painted].astype(np.int64), grid=grid)


def predict_part(classifier: PixelClassifier, stack, part: Slices, origin: tuple[int, int],
                 scaled: Optional[np.ndarray] = None) -> np.ndarray:
    """``predict(classifier, stack.data[part], scaled[:, part], origin)``: ``(h, w, K)`` float32
    probabilities of a rectangle ``part`` of a window's features at plane coordinates ``origin``.
    A :class:`~napari_dinoseg.features.featurise.CompactStack` decodes only what the classifier
    reads (:func:`~napari_dinoseg.classify.read_pixels` and the guide channels), into the same
    probabilities as its decoded stack; its ``scaled`` features (:meth:`Segmenter.scaled_features`)
    are those of the pixels read in the whole window."""
    from .classify import predict_read, read_pixels
    from .features.featurise import CompactStack

    if not isinstance(stack, CompactStack):
        return predict(classifier, stack.data[part], None if scaled is None else scaled[(slice(None), *part)], origin)
    read = read_pixels(classifier, tuple(p.stop - p.start for p in part), origin)
    region = tuple(slice(p.start + r.start, p.stop, r.step) for p, r in zip(part, read))
    features = stack.region(*region)
    if scaled is not None:  # the window's lattice starts at its first pixel read
        start = tuple(o - p.start for o, p in zip(origin, part))  # the window's, in plane coordinates
        first = [r.start for r in read_pixels(classifier, stack.shape, start)]
        scaled = scaled[(slice(None), *(slice((g.start - f) // g.step, (g.start - f) // g.step + n)
                                        for g, f, n in zip(region, first, features.shape[:2])))]
    guide = None
    if classifier.guided_radius > 0 and classifier.guide:
        guide = stack.region(*part, channels=list(classifier.guide)).mean(axis=-1, dtype=np.float32)
    return predict_read(classifier, features, guide, origin, scaled)


def _grid_and_painted(crop: np.ndarray, core: Slices, step: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Window coordinates of a core's painted pixels (row-major, as ``data[labels > 0]``), then of
    its grid sample (every ``step``-th row and column); and the number of painted ones."""
    painted = np.nonzero(crop)
    grid = np.meshgrid(np.arange(core[0].start, core[0].stop, step), np.arange(core[1].start, core[1].stop, step),
                       indexing="ij")
    rows = np.concatenate([painted[0] + core[0].start, grid[0].ravel()])
    cols = np.concatenate([painted[1] + core[1].start, grid[1].ravel()])
    return rows, cols, len(painted[0])


def _up(x: int, step: int) -> int:
    """The smallest multiple of ``step`` not below ``x``."""
    return -(-x // step) * step


def _lattice_rows(stack, window: Slices, core: Slices, step: int) -> np.ndarray:
    """``(M, F)`` float32 rows of a window's features (a FeatureStack or CompactStack) at the core's
    pixels whose plane coordinates are multiples of ``step``: each tile's share of one plane-wide grid."""
    from .features.featurise import CompactStack

    part = tuple(slice(_up(w.start + k.start, step) - w.start, k.stop, step) for w, k in zip(window, core))
    data = stack.region(*part) if isinstance(stack, CompactStack) else stack.data[part]
    return np.asarray(data, np.float32).reshape(-1, data.shape[-1])


def tone_curve(normalised: np.ndarray, gamma: float) -> np.ndarray:
    """``sign(x) |x| ** gamma`` of a normalised float32 image (a monotone change of its tone curve)."""
    return (np.sign(normalised) * np.abs(normalised) ** np.float32(gamma)).astype(np.float32)


def check_finite(proba: np.ndarray) -> None:
    """Refuse probabilities with NaN or inf: nothing is ever written from them."""
    if not np.isfinite(proba).all():
        raise ValueError("the classifier gave non-finite probabilities (NaN or inf) on this image; "
                         "nothing is written from them: the classifier or the image is corrupt")


def _memo(cache, key: tuple, compute):
    """``compute()``, through ``cache.derived`` when there is a cache (``key`` then holds the
    cache keys of everything the result depends on)."""
    return compute() if cache is None else cache.derived(key, compute)


def _channels(image) -> int:
    shape = np.shape(image)
    return 1 if len(shape) == 2 else int(shape[-1])


def _as_lists(images, labels) -> tuple[list, list]:
    """One image and its labels, or sequences of them -> two equally long lists."""
    if isinstance(images, np.ndarray) or hasattr(images, "__array__") and not isinstance(images, (list, tuple)):
        images, labels = [images], [labels]
    images, labels = list(images), list(labels) if not isinstance(labels, np.ndarray) else [labels]
    if not images:
        raise ValueError("no training images given")
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} label images; give one label image per image")
    return images, labels
