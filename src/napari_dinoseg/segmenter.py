"""The trained pipeline as one object: what the widget builds, the bundle stores and batch reloads.

:class:`Segmenter` chains, for one 2-D plane: intensity normalisation (the feature config's
rule, over the whole plane) -> features (tile by tile for planes larger than ``TILE`` px, with
context margins, so memory stays bounded and every path cuts the same tiles) -> classifier ->
probability smoothing -> optional dense CRF -> label values; and keeps statistics of the
training images for :meth:`Segmenter.check`, the shift report. The train widget's clicks,
:func:`napari_dinoseg.apply_bundle`, the CLI and the apply-to-folder widget predict through
:meth:`Segmenter.predict_proba`, so one image gets the same output from all of them. The live
update predicts the part in view first through the window API, :meth:`Segmenter.regions`: the
same windows, the same probabilities to 1e-5 (tested).

The class is put together from mixins by job: :class:`~napari_dinoseg.segmenter_windows.WindowFeatures`
(the tile windows and their features through a cache, the window API),
:class:`~napari_dinoseg.segmenter_checks.ShiftReport` (the shift report); the pure pieces are
:mod:`napari_dinoseg.plane_parts`'. Its featuriser (:attr:`Segmenter.featuriser`) is built once.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np

from .classify import (
    PixelClassifier,
    check_labels,
    fit_scaling,
    grid_step,
    linear_channels,
    predict,
    train_parts,
    tree_components,
)
from .config import CRFConfig, FeatureConfig, TrainConfig, config_or_default
from .distribution_shift import TrainingStatistics, sample_step
from .lazy_plane import NormalisedPlane, is_lazy
from .lazy_training import PaintedLabels, TrainingWindows, skips
from .plane_parts import (_as_lists, _channels, _lattice_rows, _memo, check_finite, predict_part,  # noqa: F401
                          tone_curve, window_training_part)
from .planes import TILE, Slices, in_plane, label_dtype, plane_windows, window_origin  # noqa: F401
from .progress import ProgressCallback, report, within
from .segmenter_checks import ImageLike, ShiftReport
from .segmenter_volumes import VolumeSegmenting
from .segmenter_windows import WindowFeatures


class Segmenter(ShiftReport, WindowFeatures, VolumeSegmenting):
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
        self.pixel_size: Optional[float] = None  # µm per pixel of the training images; None: unknown
        self.spacing: Optional[tuple[float, float, float]] = None  # (dz, dy, dx) of training volumes; None: unknown
        self._featuriser = None  # (config it was built for, Featuriser): see the featuriser property
        # feature samples of the latest predictions, for check(image, proba): id(proba) -> (ref, sample)
        self._samples: dict = {}

    def __repr__(self) -> str:
        state = (f"fitted, {self.classifier.n_classes} classes" if self.classifier is not None else "not fitted")
        crf = ", crf" if self.crf is not None else ""
        return f"Segmenter({self.features.kind} features, normalise={self.features.normalise!r}{crf}; {state})"

    @property
    def featuriser(self):
        """The :class:`~napari_dinoseg.features.base.Featuriser` of :attr:`features`: built once
        (the device resolved, the config's presets filled in) and kept while :attr:`features`
        stays the config it was built for, or the resolved config it carries (the one :meth:`fit`
        keeps). Everything this object featurises, plans or checks asks it."""
        from .features.featurisers import featuriser_for

        built = self._featuriser
        if built is None or self.features not in (built[0], built[1].config):
            built = self._featuriser = (self.features, featuriser_for(self.features))
        return built[1]

    @property
    def classes(self) -> np.ndarray:
        """``(K,)`` int64 painted label value of each probability column."""
        return self._fitted().classes

    # ---- fitting -------------------------------------------------------------------

    def fit(self, images: Union[ImageLike, Sequence[ImageLike]], labels: Union[np.ndarray, Sequence[np.ndarray]],
            progress: Optional[ProgressCallback] = None, cache=None,
            pixel_size: Optional[float] = None, spacing: Optional[Sequence[float]] = None) -> "Segmenter":
        """Fit on one image and its brush labels, or on lists of them (sizes may differ).

        Parameters
        ----------
        images : (H, W) or (H, W, C) array, or a sequence of them
            The painted images (one channel count for all); with ``FeatureConfig(dims=3)``, ``(Z, Y,
            X)`` volumes (numpy, zarr, dask) read a block at a time (:mod:`~napari_dinoseg.volume_training`).
        labels : (H, W) int array, or a sequence of them
            Brush labels, 0 = unlabelled, 1..K = classes (a volume's: its painted slices are featurised).
        progress
            ``progress(done, total, message)``; may raise :class:`napari_dinoseg.Cancelled`.
        cache : FeatureCache, optional
            Features are taken from / put into it (the widget's cache). For a volume: its
            intensity bounds and the features of its painted runs of slices (and, predicting, of
            the slices in view), :mod:`~napari_dinoseg.volume_regions`.
        pixel_size : float, optional
            µm per pixel of the training images (``None``: unknown), kept as :attr:`pixel_size`
            for the shift report's pixel-size check and ``dinoseg apply --resample``.
        spacing : (dz, dy, dx), optional
            The training volumes' voxel spacing (one unit for all axes): the 3-D filters' sigmas are
            scaled by it per axis; kept as :attr:`spacing` (``None``: unknown, taken as isotropic).

        Returns
        -------
        self, fitted. The feature config's device presets are resolved here, once
        (:attr:`featuriser`), and :attr:`features` becomes the resolved config.
        """
        from .pixel_scale import checked_pixel_size

        pixel_size = checked_pixel_size(pixel_size)
        images, labels = _as_lists(images, labels)
        if self._fit_volumes(images, labels, spacing, progress, pixel_size, cache):
            return self
        channels = {_channels(img) for img in images}
        if len(channels) > 1:
            raise ValueError(f"the training images have different channel counts {sorted(channels)}; "
                             "train on images of one kind")
        featuriser = self.featuriser
        normalised, labels = self._training_planes(images, labels, featuriser, cache)
        config = featuriser.config
        variants = [(norm, lab) for norm, lab in zip(normalised, labels)]
        variants += [(_tone(norm, g), lab) for g in self.training.augment for norm, lab in zip(normalised, labels)]
        # one tile's features at a time: only what training reads of each is kept
        shapes = [tuple(c.stop - c.start for c in core) for norm, _ in variants
                  for window, core in plane_windows(norm.shape[:2], featuriser, self.training, self.tile)
                  if not skips(norm, window, core)]
        step = grid_step(shapes)
        parts, keys, names = [], [], None
        for i, (norm, lab) in enumerate(variants):
            sub = within(progress, 0.9 * i / len(variants), 0.9 * (i + 1) / len(variants))
            if featuriser.gathers_pixels:  # features only where training reads them (a cache keeps ViT tokens)
                for window, core, key, part, names in self._window_parts(norm, lab, featuriser, step, sub, cache):
                    parts.append(part)
                    keys.append((key, tuple((c.start, c.stop) for c in core)))
                continue
            storage = self.feature_storage(norm.shape[:2], norm.shape[-1], cache, featuriser,
                                           lazy=isinstance(norm, NormalisedPlane))
            for window, core, key, stack in self._window_features(norm, featuriser, sub, cache, storage):
                crop = np.asarray(lab[in_plane(window, core)])
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
        self.channel_names, self.pixel_size = names, pixel_size
        quantiles = [norm.signal_quantiles() if isinstance(norm, TrainingWindows) else
                     self._image_statistics(norm, config, cache) for norm in normalised]
        report(progress, 950, 1000, "training statistics")
        distribution = self._feature_distribution(np.concatenate([p.grid for p in parts]), normalised, cache,
                                                  ("feature distribution", kind, linear, tuple(keys)))
        statistics = TrainingStatistics.of(quantiles, [lab.painted() if isinstance(lab, PaintedLabels) else lab
                                                       for lab in labels], classifier.classes)
        self.statistics = TrainingStatistics(statistics.quantiles, statistics.class_fractions, distribution)
        report(progress, 1000, 1000, "trained")
        return self

    def _training_planes(self, images: list, labels: list, featuriser, cache) -> tuple[list, list]:
        """The training images normalised and their labels checked, memory checked first: an
        in-memory image as a whole ``(H, W, C)`` float32 plane, a lazy one (zarr, dask) as
        :class:`~napari_dinoseg.lazy_training.TrainingWindows` (its painted windows only, read as
        needed) with :class:`~napari_dinoseg.lazy_training.PaintedLabels`."""
        from .memory import check_fit_memory

        config, lazy = featuriser.config, [is_lazy(img) for img in images]
        labels = [lab if is_lazy(img) else check_labels(lab) for img, lab in zip(images, labels)]  # before any
        for i, (img, lab) in enumerate(zip(images, labels)):  # featurisation
            if np.shape(lab) != np.shape(img)[:2]:
                raise ValueError(f"labels of shape {np.shape(lab)} do not match image {i}'s shape "
                                 f"{np.shape(img)[:2]}; paint in a Labels layer with the image's shape")
        planes = [TrainingWindows(img, lab, config, featuriser, self.training, self.tile, cache=cache)
                  if is_lazy(img) else None for img, lab in zip(images, labels)]
        labels = [plane.labels if plane is not None else lab for plane, lab in zip(planes, labels)]
        # a lazy plane counts as its largest window, its labels as the painted cores
        sized = [img if plane is None else np.empty((*max((tuple(s.stop - s.start for s in w) for w, _ in plane.windows),
                                                          default=(1, 1)), plane.shape[-1]), np.uint8)
                 for img, plane in zip(images, planes)]
        check_fit_memory(self, sized, [lab.painted() if is_lazy_labels else lab
                                       for lab, is_lazy_labels in zip(labels, lazy)], featuriser)
        normalised = [plane if plane is not None else self._normalise(img, config, check_channels=False, cache=cache)
                      for img, plane in zip(images, planes)]
        return normalised, labels

    # ---- predicting ----------------------------------------------------------------

    def predict_proba(self, image: ImageLike, progress: Optional[ProgressCallback] = None,
                      cache=None, out=None, spacing: Optional[Sequence[float]] = None) -> np.ndarray:
        """Class probabilities of one plane (or, fitted with ``dims=3``, of one ``(Z, Y, X)`` volume:
        ``(Z, Y, X, K)``, predicted block by block, :mod:`napari_dinoseg.volume_prediction`).

        Parameters
        ----------
        image : (H, W) or (H, W, C) array or array-like
            One plane with the training images' channel count (RGBA: alpha dropped). An
            array-like that is not a numpy array (a zarr or dask array: ``shape``, ``dtype``,
            ``image[rows, cols]``) is read window by window, never whole
            (:func:`~napari_dinoseg.window_prediction.predict_windows`).
        progress, cache
            As for :meth:`fit`.
        out : (H, W, K) array-like, optional
            Written window by window and returned (a zarr array on disk: memory is bounded by a
            window, not the plane). With ``out`` the plane is always read window by window; the
            result equals the in-memory one except with a dense CRF, which then refines each
            window on its own.
        spacing : (dz, dy, dx), optional
            A volume's voxel spacing (``None``: isotropic); :meth:`check` names one unlike :attr:`spacing`.

        Returns
        -------
        (H, W, K) float32, summing to 1 over K; column ``k`` is label ``classes[k]`` (``out`` when given).

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
        if self._is_volume(spacing):
            return self._predict_volume(image, out, False, spacing, progress, cache)
        if out is not None or is_lazy(image):
            return self._predict_windows(image, out, False, progress, cache)
        check_plane_memory(self, np.shape(image), what="predicting")
        norm = self.normalise(image, cache)
        out = np.empty((*norm.shape[:2], clf.n_classes), np.float32)
        split = self.logit_space()
        step = sample_step(norm.shape[:2])
        rows = []  # the shift report's sample: features already computed, every step-th row and column
        if split is not None:  # the ViT map never built: its logits computed on the token grids (kept in a cache)
            from .features.featurise import featurise_projected

            reduced, projection = split
            windows = plane_windows(norm.shape[:2], self.featuriser, self.training, self.tile)
            for n, (window, core) in enumerate(windows):
                sub = within(progress, 0.95 * n / len(windows), 0.95 * (n + 1) / len(windows))
                stack = featurise_projected(norm[window], self.featuriser, projection, sub, normalised=True,
                                            cache=cache)
                out[window][core] = predict(reduced, stack, origin=window_origin(window))[core]
                rows.append(_lattice_rows(stack, window, core, step))
                del stack
        else:
            storage = self.feature_storage(norm.shape[:2], norm.shape[-1], cache)
            keep = self.keeps_scaled(norm.shape[:2], norm.shape[-1], cache)
            for window, core, key, stack in self._window_features(norm, self.featuriser, within(progress, 0, 0.95),
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

    def segment(self, image: ImageLike, progress: Optional[ProgressCallback] = None, cache=None,
                out=None, spacing: Optional[Sequence[float]] = None) -> np.ndarray:
        """``(H, W)`` painted label values of one plane (dtype from :func:`label_dtype`); ``(Z, Y, X)``
        of a volume when fitted with ``dims=3``.

        ``image``, ``out`` and ``spacing`` as for :meth:`predict_proba`; ``out`` is ``(H, W)`` of an
        integer dtype that holds the label values, and with it (or a lazy ``image``, or a volume)
        the ``(H, W, K)`` probabilities are never held: each window's labels are written as it is
        predicted."""
        if self._is_volume(spacing):
            return self._predict_volume(image, out, True, spacing, progress, cache)
        if out is not None or is_lazy(image):
            self._fitted()
            return self._predict_windows(image, out, True, progress, cache)
        return self.to_labels(self.predict_proba(image, progress, cache))

    def _predict_windows(self, image, out, labels: bool, progress, cache):
        """:func:`~napari_dinoseg.window_prediction.predict_windows` with its memory checked first
        (the output counted where it is allocated here) and its findings kept for :meth:`check`."""
        from .memory import check_window_memory
        from .window_prediction import output_shape, predict_windows

        h, w = np.shape(image)[:2]
        size = int(np.prod(output_shape(self, (h, w), labels)))
        out_bytes = 0 if out is not None else size * (label_dtype(self.classes).itemsize if labels else 4)
        check_window_memory(self, tuple(np.shape(image)), out_bytes, what="segmenting" if labels else "predicting")
        out, findings = predict_windows(self, image, out, labels, progress, cache)
        self._keep_findings(out, findings)
        return out

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

    def logit_space(self):
        """:func:`~napari_dinoseg.classify.logit_space` of the classifier: ``(reduced classifier,
        ViT projection)`` where it is linear in the ViT channels, else ``None``.

        :meth:`predict_proba` then never builds the ``(H, W, D)`` ViT map: the classifier's
        logits on the ViT channels are computed on each view's token grid and upsampled (``K``
        channels instead of ``D``). A feature cache keeps the token grids (and the classical
        channels), so the refits of an interactive session run no forward pass either.
        """
        from .classify import logit_space

        if not self.channel_names:  # no ViT channels among them: None too
            return None
        return logit_space(self._fitted(), self.channel_names)

    # ---- persistence ---------------------------------------------------------------

    def save(self, path: Union[str, os.PathLike]):
        """Write the fitted pipeline to a bundle file (atomically; see :mod:`napari_dinoseg.bundle`)."""
        from .bundle import save_bundle

        return save_bundle(path, self._fitted(), self.features, self.n_channels, self.channel_names,
                           training=self.training, crf=self.crf, statistics=self.statistics,
                           pixel_size=self.pixel_size, spacing=self.spacing)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Segmenter":
        """Read a bundle (any format; format 3 and older load with ``normalise="legacy"``)."""
        from .bundle import read_bundle

        contents = read_bundle(path)
        seg = cls(contents.features, contents.training, contents.crf)
        seg.classifier, seg.statistics = contents.classifier, contents.statistics
        seg.n_channels, seg.channel_names = contents.n_channels, contents.channel_names
        seg.pixel_size, seg.spacing = contents.pixel_size, contents.spacing
        features = None if seg.statistics is None else seg.statistics.features
        if features is not None and features.n_dims != seg.shift_space(np.zeros((1, seg.classifier.n_features))).shape[1]:
            raise ValueError(f"{str(path)!r} is corrupt: its training statistics' feature distribution has "
                             f"{features.n_dims} columns, not those of its classifier")
        return seg

    # ---- internals -----------------------------------------------------------------

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


def _tone(norm, gamma: float):
    """:func:`tone_curve` of a normalised plane, or of every window a lazy one reads."""
    if isinstance(norm, NormalisedPlane):
        return norm.mapped(lambda values: tone_curve(values, gamma))
    return tone_curve(norm, gamma)
