"""The shift report of a :class:`~napari_dinoseg.segmenter.Segmenter`: :class:`ShiftReport`,
the methods that compare a plane with the training images (intensities, features in the
classifier's scaling, a collapsed prediction) and keep what a prediction already computed for it.
"""

from __future__ import annotations

import weakref
from typing import Optional, Sequence

import numpy as np

from .config import FeatureConfig
from .distribution_shift import (
    FEATURE_FIT_SAMPLE,
    FeatureDistribution,
    collapse_warning,
    collapse_warning_of,
    image_statistics,
    sample_step,
)
from .pixel_scale import checked_pixel_size, pixel_size_warning
from .plane_parts import _lattice_rows, _memo, _up
from .lazy_plane import NormalisedPlane
from .lazy_training import TrainingWindows, skips
from .planes import in_plane, plane_windows

ImageLike = np.ndarray


class ShiftReport:
    """The Segmenter's shift report (a mixin of :class:`~napari_dinoseg.segmenter.Segmenter`, which
    provides ``features``, ``training``, ``statistics``, ``pixel_size``, ``featuriser``, ``channel_names``,
    ``normalise``, ``predict_proba``, ``logit_space``, ``_fitted`` and ``_samples``)."""

    def check(self, image: ImageLike, proba: Optional[np.ndarray] = None, cache=None,
              pixel_size: Optional[float] = None, spacing: Optional[Sequence[float]] = None) -> list[str]:
        """Warnings about one plane: unlike the training images (their pixel size too), or a collapsed prediction.

        Parameters
        ----------
        image : (H, W) or (H, W, C) array
        proba : (H, W, K) array, optional
            Its probabilities, when already predicted (computed otherwise). Those returned by
            :meth:`predict_proba` carry the feature sample the check reads; for others (e.g. put
            together from windows elsewhere) the sample is featurised here, through ``cache``.
        cache : FeatureCache, optional
            As for :meth:`fit`: a cache holding the plane's features makes that sample cheap.
        pixel_size : float, optional
            The plane's µm per pixel (``None``: unknown): one more than 10 % from the training
            images' (``pixel_size``, when known) is named
            (:func:`~napari_dinoseg.pixel_scale.pixel_size_warning`).
        spacing : (dz, dy, dx), optional
            A volume's voxel spacing (a classifier of 3-D features): one unlike the training
            volumes' (``spacing``, when known) is named (:func:`~napari_dinoseg.volume.spacing_warning`).

        Returns
        -------
        list of str, empty when the image looks like the training data.

        Raises
        ------
        ValueError
            For ``proba`` of another shape than ``(H, W, K)``: this plane's height and width,
            the classifier's number of classes (probabilities of another image or classifier);
            a ``pixel_size`` that is not a positive number.
        """
        clf = self._fitted()
        # last: the dock's status line shows a job's last warning, and this one explains the others
        scale = pixel_size_warning(getattr(self, "pixel_size", None), checked_pixel_size(pixel_size))
        if self.features.dims == 3:
            return self._volume_warnings(image, proba, spacing) + scale
        findings = self._findings(image, proba, cache)
        if findings is not None:  # predicted window by window: what the prediction saw of the plane
            return self._window_warnings(findings) + scale
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
        return warnings + collapse_warning(proba, clf.classes) + scale

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
        rows = self._grid_rows(norm, self.featuriser, sample_step(norm.shape[:2]), cache)
        return self._sample(rows, projected=False)


    def _feature_distribution(self, grid: np.ndarray, normalised: Sequence[np.ndarray],
                              cache, key: tuple) -> FeatureDistribution:
        """The training pixels' :class:`~napari_dinoseg.distribution_shift.FeatureDistribution` from the fit's
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
        if not self.featuriser.gathers_pixels:  # a kind that gathers pixels (a ViT) would featurise every
            # training image again, whole
            n = FEATURE_FIT_SAMPLE / len(normalised)
            step = sample_step(normalised[0].shape[:2], n)
            kept = None if any(isinstance(norm, TrainingWindows) for norm in normalised) else cache  # keyed by
            inverted = self.shift_space(np.concatenate([  # the plane's values: a lazy one has no key
                _inverted_rows(norm, n, self.featuriser) if isinstance(norm, TrainingWindows)
                else _memo(kept, ("inverted sample", cache_key(norm, self.features) if kept else None, step),
                           lambda norm=norm: self._grid_rows(_inverted(norm), self.featuriser, step, None))
                for norm in normalised]))
        return FeatureDistribution.fit(self.shift_space(grid), inverted, confidence, self.training.seed)

    def _grid_rows(self, norm: np.ndarray, featuriser, step: int, cache) -> np.ndarray:
        """``(M, F)`` float32 full features of a normalised plane's pixels on the regular grid of
        ``step`` (plane coordinates multiples of it), tile by tile; of a featuriser that gathers
        pixels, only those pixels' (:func:`~napari_dinoseg.features.featurise.featurise_pixels`)."""
        from .features.featurise import featurise_pixels

        rows = []
        if featuriser.gathers_pixels:
            for window, core in plane_windows(norm.shape[:2], featuriser, self.training, self.tile):
                if skips(norm, window, core):  # a lazy plane's unpainted tile: not read
                    continue
                r, c = (np.arange(_up(w.start + k.start, step), w.start + k.stop, step) - w.start
                        for w, k in zip(window, core))
                grid = np.meshgrid(r, c, indexing="ij")
                data, _ = featurise_pixels(norm[window], featuriser, (grid[0].ravel(), grid[1].ravel()),
                                           normalised=True, cache=cache)
                rows.append(data)
        else:
            storage = self.feature_storage(norm.shape[:2], norm.shape[-1], cache, featuriser)
            for window, core, _, stack in self._window_features(norm, featuriser, None, cache, storage):
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

    def _keep_findings(self, out, findings) -> None:
        """Keep a window-by-window prediction's :class:`~napari_dinoseg.window_prediction.PlaneFindings`
        for :meth:`check` while its output lives (with the samples: 8 at most)."""
        self._keep_sample(out, findings)

    def _findings(self, image, proba, cache):
        """The :class:`~napari_dinoseg.window_prediction.PlaneFindings` of a plane predicted window
        by window: those kept for ``proba`` (an ``out`` of :meth:`predict_proba` or :meth:`segment`),
        or for a lazy ``image`` without them, gathered here by predicting it (nothing written);
        ``None`` for an in-memory plane."""
        from .lazy_plane import is_lazy
        from .window_prediction import Discard, PlaneFindings, predict_windows

        kept = None if proba is None else self._kept_sample(proba)
        if isinstance(kept, PlaneFindings):
            return kept
        if not is_lazy(image):
            return None
        if proba is not None:
            raise ValueError("these probabilities were not written by predict_proba or segment of this "
                             "Segmenter for this image; pass the out array they wrote, or none to predict it again")
        h, w = np.shape(image)[:2]
        return predict_windows(self, image, Discard((h, w), np.uint32), True, None, cache)[1]

    def _volume_warnings(self, volume, out, spacing) -> list[str]:
        """The shift report of a volume: from the findings its prediction ``out`` kept, or predicted
        here (nothing written); its spacing against the training volumes'."""
        from .volume import checked_spacing, spacing_warning
        from .volume_prediction import predict_volume
        from .window_prediction import Discard, PlaneFindings

        spacing = checked_spacing(spacing)
        findings = None if out is None else self._kept_sample(out)
        if not isinstance(findings, PlaneFindings):
            if out is not None:
                raise ValueError("this output was not written by predict_proba or segment of this Segmenter for "
                                 "this volume; pass the array they returned, or none to predict it again")
            findings = predict_volume(self, volume, Discard(np.shape(volume), np.uint32), True, spacing)[1]
        return self._window_warnings(findings) + spacing_warning(self.spacing, spacing)

    def _window_warnings(self, findings) -> list[str]:
        """The shift report of a plane from its :class:`~napari_dinoseg.window_prediction.PlaneFindings`."""
        warnings = []
        if self.statistics is not None:
            features, confidence = (None, None) if findings.sample is None else findings.sample
            warnings = self.statistics.check(None, self.features.normalise, features, confidence,
                                             findings.quantiles, n_channels=findings.n_channels)
        return warnings + collapse_warning_of(findings.counts, self._fitted().classes)

    def _kept_sample(self, proba: np.ndarray) -> Optional[tuple[np.ndarray, float]]:
        """The sample :meth:`predict_proba` kept for this very array of probabilities, else ``None``."""
        ref, sample = self._samples.get(id(proba), (None, None))
        return sample if ref is not None and ref() is proba else None

    @staticmethod
    def _image_statistics(norm: np.ndarray, config: FeatureConfig, cache) -> np.ndarray:
        """:func:`~napari_dinoseg.distribution_shift.image_statistics` of a normalised plane, through ``cache``
        (the same for the training image at each refit and for each plane predicted again)."""
        from .features.featurise import cache_key

        return _memo(cache, ("image statistics", cache_key(norm, config) if cache else None),
                     lambda: image_statistics(norm))


#: Side (px) of the part of a lazy training plane's first painted tile whose contrast-inverted
#: features give its inversion sample, featurised with the features' margin around it: a sample
#: of a few hundred pixels needs no whole tile (a 1172² tile's features cost ~0.2 s of every first
#: Train / Predict on a multiscale view, this part's a tenth of that).
INVERSION_SIDE = 256


def _inverted_rows(norm: TrainingWindows, n: float, featuriser) -> np.ndarray:
    """``(M, F)`` float32 features of the contrast-inverted (``1 - x``) top-left ``INVERSION_SIDE``²
    of a lazy training plane's first painted core, on the grid that samples about ``n`` of its
    pixels: each pixel's features are the inverted plane's there (read with the features' margin)."""
    from .features.featurise import featurise

    window, core = norm.windows[0]
    inner = tuple(slice(s.start, min(s.stop, s.start + INVERSION_SIDE)) for s in in_plane(window, core))
    align, margin = featuriser.alignment, featuriser.margin
    grown = tuple(slice(max(0, (s.start - margin) // align * align), min(size, s.stop + margin))
                  for s, size in zip(inner, norm.shape[:2]))
    stack = featurise(np.float32(1) - norm[grown], featuriser, normalised=True)
    part = tuple(slice(i.start - g.start, i.stop - g.start) for i, g in zip(inner, grown))
    return _lattice_rows(stack, grown, part, sample_step(tuple(s.stop - s.start for s in inner), n))


def _inverted(norm):
    """``1 - norm`` of a normalised plane, or of every window a lazy one reads."""
    if isinstance(norm, NormalisedPlane):
        return norm.mapped(lambda values: np.float32(1) - values)
    return np.float32(1) - norm
