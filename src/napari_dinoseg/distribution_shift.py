"""Training statistics and the shift report: does a new image look like the training images?
(Distribution shift; the ViT upsampler's pixel "shifts" are :mod:`napari_dinoseg.features.upsample`'s.)

A classifier fitted on painted pixels of one or two images is only trustworthy on images
that resemble the training images. Three comparisons, each with its own warning:

- **Intensities**: :func:`image_statistics` summarises an image by quantiles of two signals per
  channel, the normalised intensity and its local edge strength (Gaussian-gradient magnitude at
  1 px). Blind to a contrast inversion and to most changes of texture.
- **Features** (:class:`FeatureDistribution`): what the classifier sees. A sample of pixels'
  features, scaled as the classifier scales them, is projected on the training pixels'
  ``FEATURE_COMPONENTS`` leading principal axes (whitened) and each pixel is assigned to the
  nearest of ``FEATURE_CLUSTERS`` k-means centroids of the training pixels: the image becomes a
  mix of kinds of pixel. Its distance to the training images' mix (total variation: the fraction
  of the pixels that would have to change kind) above ``FEATURE_THRESHOLD`` is a different kind
  of image; a mix closer to that of the training images with their contrast inverted than to
  theirs (and within ``FEATURE_THRESHOLD`` of it) is an inverted image (an inversion keeps the intensity and edge quantiles of a
  two-phase material, not its textures).
- **Confidence**: the classifier's mean top probability on the sample against its mean on the
  training pixels (unsmoothed both); below ``CONFIDENCE_RATIO`` times it, the classifier is unsure.

:class:`TrainingStatistics` keeps what the training images looked like (stored in bundles);
:meth:`TrainingStatistics.check` compares a new image with it, and :func:`collapse_warning` flags
a prediction that collapsed to one class. Thresholds are calibrated on the evaluation
micrographs (``benchmarks/bench_shift.py``, ``docs/benchmarks.md``). Warnings, never errors: the
caller reports them (CLI summary, widget status line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

#: Quantile levels (%) an image's signals are summarised by.
LEVELS = (1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0)
#: Pixels (a regular grid) the quantiles are estimated from.
SAMPLE = 1 << 18
#: Signals summarised per image channel.
SIGNALS = ("intensity", "edge strength")
#: A signal whose quantiles differ from the closest training image's by more than this
#: fraction of the training range (mean absolute difference over ``LEVELS``) is a shift.
SHIFT_THRESHOLD = 0.15
#: A prediction with at least this fraction of pixels in one class has collapsed, when
#: several classes were painted.
COLLAPSE_FRACTION = 0.99
#: Principal axes of the classifier's scaled training features that the feature check compares in.
FEATURE_COMPONENTS = 8
#: k-means clusters (kinds of pixel) of the training pixels in those axes.
FEATURE_CLUSTERS = 32
#: Pixels of a new image (a regular grid) whose features the check reads.
FEATURE_SAMPLE = 4096
#: Training pixels (at most; a regular subsample of the fit's grid sample) the clusters are fitted on.
FEATURE_FIT_SAMPLE = 8192
#: An image whose mix of kinds of pixel differs from the training images' by more than this total
#: variation distance is unlike them. On the evaluation sets (``benchmarks/bench_shift.py``)
#: images of the training image's own set reach 0.05-0.29 (one EBC image 0.49), every other set
#: and modality 0.35 or more; a 4096-pixel sample of the training image itself about 0.04.
FEATURE_THRESHOLD = 0.3
#: The image counts as inverted when its mix is closer to the inverted training images' than to
#: the training images' by more than this (total variation).
INVERSION_MARGIN = 0.02
#: The classifier is unsure of an image when its mean top probability falls below this fraction of
#: its mean top probability on the training pixels (evaluation sets: own set 0.88 or more).
CONFIDENCE_RATIO = 0.85


def image_statistics(normalised: np.ndarray) -> np.ndarray:
    """Quantiles of a normalised image's signals.

    Parameters
    ----------
    normalised : (H, W, C) float32
        An image normalised by the classifier's rule (:func:`napari_dinoseg.image.as_float_image`).

    Returns
    -------
    (C, len(SIGNALS), len(LEVELS)) float64 quantiles.
    """
    h, w, _ = normalised.shape
    step = statistics_step((h, w))
    whole = (slice(0, h), slice(0, w))
    return signal_quantiles(signal_samples(normalised, whole, whole, step))


def statistics_step(shape: tuple[int, int]) -> int:
    """Step of the regular grid :func:`image_statistics` samples a plane of ``shape`` on."""
    return max(1, int(np.ceil(np.sqrt(shape[0] * shape[1] / SAMPLE))))


def signal_samples(normalised: np.ndarray, window, core, step: int) -> np.ndarray:
    """The signals of a window of a plane at the pixels of its core on the plane's grid of ``step``
    (plane coordinates multiples of ``step``): ``(C, len(SIGNALS), M)`` float32. The windows of a
    plane, their cores partitioning it and their margins wider than the edge filter's reach (4 px),
    give together the whole plane's samples: :func:`signal_quantiles` of them is
    :func:`image_statistics` of the plane.

    ``normalised``: ``(h, w, C)`` the window's values; ``window``: its ``(rows, cols)`` slices in the
    plane; ``core``: the part it owns, relative to it."""
    from scipy.ndimage import gaussian_gradient_magnitude

    grid = tuple(slice(-(-(w.start + k.start) // step) * step - w.start, k.stop, step) for w, k in zip(window, core))
    out = []
    for ch in range(normalised.shape[-1]):
        x = normalised[..., ch]
        edges = gaussian_gradient_magnitude(x, 1.0, mode="reflect")
        out.append([x[grid].ravel(), edges[grid].ravel()])
    return np.asarray(out, np.float32)


def signal_quantiles(samples: np.ndarray) -> np.ndarray:
    """``(C, len(SIGNALS), M)`` samples (:func:`signal_samples`, joined along ``M``) ->
    ``(C, len(SIGNALS), len(LEVELS))`` float64 quantiles."""
    return np.percentile(samples, LEVELS, axis=-1).transpose(1, 2, 0).astype(np.float64)


def sample_step(shape: tuple[int, int], n: int = FEATURE_SAMPLE) -> int:
    """Step of the regular grid (every ``step``-th row and column, from the plane's origin) that
    samples about ``n`` pixels of a plane of ``shape``."""
    return max(1, int(np.ceil(np.sqrt(shape[0] * shape[1] / n))))


def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 20, n_init: int = 3) -> np.ndarray:
    """``(k, D)`` float64 centroids of ``(M, D)`` points: the best (least squared distance) of
    ``n_init`` runs of k-means++ seeding and Lloyd iterations; deterministic for a seed, and fewer
    centroids when there are fewer distinct points."""
    x = np.asarray(x, np.float64)
    k = min(k, len(np.unique(x, axis=0)))
    squared = (x ** 2).sum(1)
    runs = [_lloyd(x, squared, _seeds(x, k, np.random.default_rng([seed, run])), iterations)
            for run in range(n_init)]
    return min(runs, key=lambda centres: _assign(x, squared, centres)[1])


def _seeds(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: ``(k, D)`` points of ``x``, each drawn with probability proportional to its
    squared distance to the nearest one drawn before."""
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(len(x))]
    nearest = ((x - centres[0]) ** 2).sum(1)
    for c in range(1, k):
        total = nearest.sum()
        centres[c] = x[rng.choice(len(x), p=nearest / total) if total > 0 else rng.integers(len(x))]
        np.minimum(nearest, ((x - centres[c]) ** 2).sum(1), out=nearest)
    return centres


def _lloyd(x: np.ndarray, squared: np.ndarray, centres: np.ndarray, iterations: int) -> np.ndarray:
    """Lloyd iterations from ``(k, D)`` centres until they stop moving (an empty cluster keeps its centre)."""
    k = len(centres)
    for _ in range(iterations):
        assigned, _ = _assign(x, squared, centres)
        counts = np.bincount(assigned, minlength=k)
        sums = np.stack([np.bincount(assigned, x[:, d], minlength=k) for d in range(x.shape[1])], 1)
        moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres)
        if np.allclose(moved, centres):
            return moved
        centres = moved
    return centres


def _assign(x: np.ndarray, squared: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, float]:
    """Nearest centre of each point and the sum of squared distances to them."""
    d = squared[:, None] - 2 * x @ centres.T + (centres ** 2).sum(1)[None]
    assigned = np.argmin(d, axis=1)
    return assigned, float(np.maximum(d[np.arange(len(x)), assigned], 0).sum())


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``(M,)`` index of the nearest of ``(k, D)`` centres for each of ``(M, D)`` points."""
    return np.argmin(-2 * x @ centres.T + (centres ** 2).sum(1)[None], axis=1)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance of two ``(k,)`` fraction vectors: the share that must move, 0..1."""
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


@dataclass(frozen=True)
class FeatureDistribution:
    """The training pixels' features as the classifier sees them, summarised as a mix of kinds.

    Features are rows of the classifier's scaled feature space (``D`` columns; see
    :meth:`napari_dinoseg.Segmenter.shift_features`).

    Attributes
    ----------
    centre : (D,) float64
        Mean of the training pixels' scaled features.
    axes : (P, D) float64
        Leading principal axes, divided by their standard deviations (whitening).
    centroids : (Q, P) float64
        k-means centroids of the training pixels in those axes: the kinds of pixel.
    fractions : (Q,) float64
        Fraction of the training pixels of each kind.
    inverted : (Q,) float64 or None
        The same for the training images with their contrast inverted (``1 - x`` of the
        normalised image); ``None``: not measured (no inversion check).
    confidence : float
        The classifier's mean top probability (unsmoothed) on the training pixels.
    """

    centre: np.ndarray
    axes: np.ndarray
    centroids: np.ndarray
    fractions: np.ndarray
    inverted: Optional[np.ndarray]
    confidence: float

    @property
    def n_dims(self) -> int:
        """``D``: columns of the scaled features it reads."""
        return self.centre.shape[0]

    @classmethod
    def fit(cls, features: np.ndarray, inverted: Optional[np.ndarray], confidence: float,
            seed: int = 0) -> "FeatureDistribution":
        """Fit on ``(M, D)`` scaled features of training pixels and, optionally, ``(M', D)`` those
        of the same images contrast-inverted; ``confidence`` as the attribute."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"need (M, D) features of at least 2 pixels, got shape {x.shape}")
        x = x[:: max(1, len(x) // FEATURE_FIT_SAMPLE)]
        centre = x.mean(0)
        variance, vectors = np.linalg.eigh(np.cov(x - centre, rowvar=False, bias=True).reshape(x.shape[1], -1))
        order = np.argsort(variance)[::-1][:FEATURE_COMPONENTS]
        spread = np.sqrt(np.maximum(variance[order], 0))
        keep = spread > 1e-6 * max(spread.max(), 1e-12)
        if not keep.any():  # every training pixel alike: one axis, not whitened
            keep[0], spread[0] = True, 1.0
        axes = vectors[:, order].T[keep] / spread[keep][:, None]
        centroids = kmeans((x - centre) @ axes.T, FEATURE_CLUSTERS, seed)
        partial = cls(centre, axes, centroids, np.zeros(len(centroids)), None, float(confidence))
        fractions = partial.mix(x)
        inv = None if inverted is None else partial.mix(inverted)
        return cls(centre, axes, centroids, fractions, inv, float(confidence))

    def mix(self, features: np.ndarray) -> np.ndarray:
        """``(Q,)`` fraction of ``(M, D)`` scaled features' pixels of each kind."""
        x = np.asarray(features, np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_dims:
            raise ValueError(f"features of shape {x.shape} are not (M, {self.n_dims}) rows of this classifier's "
                             "feature space")
        projected = (x - self.centre.astype(np.float32)) @ self.axes.T.astype(np.float32)
        kinds = _nearest(projected, self.centroids.astype(np.float32))
        return np.bincount(kinds, minlength=len(self.centroids)) / max(1, len(x))

    def distances(self, features: np.ndarray) -> tuple[float, Optional[float]]:
        """Total variation distances of a sample's mix to the training mix and to the inverted one
        (``None`` when not measured)."""
        mix = self.mix(features)
        inverted = None if self.inverted is None else total_variation(mix, self.inverted)
        return total_variation(mix, self.fractions), inverted

    def warnings(self, features: np.ndarray, confidence: Optional[float] = None) -> list[str]:
        """Warnings for ``(M, D)`` scaled features of an image's pixels and the classifier's mean
        top probability on them (``None``: not checked); empty when they look like the training's."""
        out = []
        distance, inverted = self.distances(features)
        looks_inverted = inverted is not None and inverted + INVERSION_MARGIN < distance
        if looks_inverted and inverted <= FEATURE_THRESHOLD:  # like the training images, bright and dark swapped
            out.append(
                "its contrast looks inverted: its textures match the training images with bright and dark "
                f"swapped ({100 * inverted:.0f} % of its pixels differ) better than the training images themselves "
                f"({100 * distance:.0f} %); is it a negative, or another detector or imaging mode? Invert it back, "
                "or paint labels on such an image and train on it too")
        elif distance > FEATURE_THRESHOLD:
            out.append(
                f"unlike the training images: {100 * distance:.0f} % of its pixels are of kinds (textures, as the "
                f"classifier's features see them) that the training images do not have in that proportion (more "
                f"than {100 * FEATURE_THRESHOLD:.0f} % is another kind of image); check the result, and paint "
                "labels on such an image and train on it too")
        if confidence is not None and confidence < CONFIDENCE_RATIO * self.confidence:
            out.append(
                f"the classifier is unsure on this image: its mean top probability is {100 * confidence:.0f} %, "
                f"against {100 * self.confidence:.0f} % on the training images; check the result, and add labels "
                "where it hesitates")
        return out

    def to_dict(self) -> dict:
        return {"components": FEATURE_COMPONENTS, "clusters": FEATURE_CLUSTERS,
                "centre": _rounded(self.centre), "axes": _rounded(self.axes),
                "centroids": _rounded(self.centroids), "fractions": _rounded(self.fractions),
                "inverted": None if self.inverted is None else _rounded(self.inverted),
                "confidence": float(self.confidence)}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureDistribution":
        """Read :meth:`to_dict` back, checking every number; ``ValueError`` says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"the feature distribution is a {type(data).__name__}, not a dict")
        try:
            arrays = {name: np.asarray(data[name]) for name in ("centre", "axes", "centroids", "fractions")}
            inverted = None if data.get("inverted") is None else np.asarray(data["inverted"])
            confidence = data["confidence"]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"the feature distribution is unreadable: {err}") from None
        values = list(arrays.values()) + ([] if inverted is None else [inverted])
        if any(a.dtype.kind not in "iuf" for a in values) or type(confidence) not in (int, float):
            raise ValueError("the feature distribution holds values other than numbers")
        centre, axes, centroids, fractions = (arrays[n].astype(np.float64) for n in arrays)
        inverted = None if inverted is None else inverted.astype(np.float64)
        q = len(fractions) if fractions.ndim == 1 else -1
        if centre.ndim != 1 or axes.ndim != 2 or axes.shape[1] != centre.shape[0] or not 1 <= len(axes) <= len(centre) \
                or centroids.ndim != 2 or centroids.shape[1] != len(axes) or len(centroids) != q or q < 1 \
                or (inverted is not None and inverted.shape != (q,)):
            raise ValueError(f"the feature distribution has inconsistent shapes: centre {centre.shape}, axes "
                             f"{axes.shape}, centroids {centroids.shape}, fractions {fractions.shape}")
        if not all(np.isfinite(a).all() for a in (centre, axes, centroids, fractions)) \
                or (inverted is not None and not np.isfinite(inverted).all()) or not np.isfinite(confidence):
            raise ValueError("the feature distribution holds non-finite numbers")
        return cls(centre, axes, centroids, fractions, inverted, float(confidence))


def _rounded(a: np.ndarray) -> list:
    """An array as nested lists of float32-precise numbers (shorter JSON)."""
    return np.asarray(a, np.float32).astype(np.float64).round(7).tolist()


@dataclass(frozen=True)
class TrainingStatistics:
    """What the training images looked like.

    Attributes
    ----------
    quantiles : (N, C, len(SIGNALS), len(LEVELS)) float64
        :func:`image_statistics` of each of the N training images.
    class_fractions : (K,) float64
        Fraction of the painted pixels in each class.
    features : FeatureDistribution or None
        The training pixels' features as the classifier sees them (``None`` for bundles from
        before format 8: no feature, inversion or confidence check).
    """

    quantiles: np.ndarray
    class_fractions: np.ndarray
    features: Optional[FeatureDistribution] = None

    @classmethod
    def of(cls, quantiles: Sequence[np.ndarray], labels: Sequence[np.ndarray],
           classes: np.ndarray) -> "TrainingStatistics":
        """Statistics of training images from their :func:`image_statistics` and ``(H, W)`` labels."""
        quantiles = np.stack(quantiles)
        counts = np.array([sum(int(np.count_nonzero(lab == c)) for lab in labels) for c in classes], float)
        return cls(quantiles=quantiles, class_fractions=counts / max(counts.sum(), 1.0))

    def to_dict(self) -> dict:
        out = {"levels": list(LEVELS), "signals": list(SIGNALS), "quantiles": self.quantiles.tolist(),
               "class_fractions": self.class_fractions.tolist()}
        if self.features is not None:
            out["features"] = self.features.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict, n_channels: int, n_classes: int) -> "TrainingStatistics":
        """Read :meth:`to_dict` back, checking every number; ``ValueError`` says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"training statistics are a {type(data).__name__}, not a dict")
        if data.get("levels") != list(LEVELS) or data.get("signals") != list(SIGNALS):
            raise ValueError("training statistics use other quantile levels or signals")
        try:
            quantiles, fractions = np.asarray(data["quantiles"]), np.asarray(data["class_fractions"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"training statistics are unreadable: {err}") from None
        if quantiles.dtype.kind not in "iuf" or fractions.dtype.kind not in "iuf":
            raise ValueError("training statistics hold values other than numbers")
        quantiles, fractions = quantiles.astype(np.float64), fractions.astype(np.float64)
        if quantiles.ndim != 4 or quantiles.shape[1:] != (n_channels, len(SIGNALS), len(LEVELS)) \
                or quantiles.shape[0] < 1 or fractions.shape != (n_classes,):
            raise ValueError(f"training statistics have shapes {quantiles.shape} and {fractions.shape}, "
                             f"not those of {n_channels} channel(s) and {n_classes} classes")
        if not (np.isfinite(quantiles).all() and np.isfinite(fractions).all()) or (fractions < 0).any():
            raise ValueError("training statistics hold non-finite or negative numbers")
        features = None if data.get("features") is None else FeatureDistribution.from_dict(data["features"])
        return cls(quantiles=quantiles, class_fractions=fractions, features=features)

    def shift(self, normalised: np.ndarray, quantiles: Optional[np.ndarray] = None) -> np.ndarray:
        """``(C, len(SIGNALS))`` distance of an image's signals to the closest training image's,
        as a fraction of the training images' range of that signal (1 %..99 % quantiles);
        ``quantiles``: :func:`image_statistics` of ``normalised`` when already computed."""
        q = image_statistics(normalised) if quantiles is None else quantiles  # (C, S, L)
        train = self.quantiles  # (N, C, S, L)
        span = train[..., -1].max(axis=0) - train[..., 0].min(axis=0)  # (C, S)
        distance = np.abs(train - q[None]).mean(axis=-1).min(axis=0)  # (C, S)
        return distance / np.maximum(span, 1e-6)

    def check(self, normalised: Optional[np.ndarray], normalise: str = "percentile",
              features: Optional[np.ndarray] = None, confidence: Optional[float] = None,
              quantiles: Optional[np.ndarray] = None, n_channels: Optional[int] = None) -> list[str]:
        """Warnings (empty when the image looks like the training images).

        Parameters
        ----------
        normalised : (H, W, C) float32, or None
            The image, normalised by the classifier's rule; ``None`` for a plane read window by
            window, with its ``quantiles`` and ``n_channels`` given.
        normalise
            The classifier's normalisation rule (named in the hint).
        features : (M, D) float array, optional
            Scaled features of a sample of the image's pixels (about ``FEATURE_SAMPLE``), for the
            feature and inversion checks (skipped without them, or without ``self.features``).
        confidence
            The classifier's mean top probability on those pixels, for the confidence check.
        quantiles
            :func:`image_statistics` of ``normalised``, when already computed (e.g. kept in a cache).
        n_channels
            The image's channels, where ``normalised`` is ``None``.
        """
        n_channels = normalised.shape[-1] if normalised is not None else n_channels
        if n_channels != self.quantiles.shape[1]:
            return [f"the image has {n_channels} channel(s), the training images had "
                    f"{self.quantiles.shape[1]}"]
        out = []
        shift = self.shift(normalised, quantiles)
        worst = np.unravel_index(np.argmax(shift), shift.shape)
        if shift[worst] > SHIFT_THRESHOLD:
            channel = f" of channel {worst[0]}" if shift.shape[0] > 1 else ""
            hint = ("normalise='percentile' cancels brightness and contrast changes" if normalise != "percentile"
                    else "is it the same kind of image, not inverted, acquired alike?")
            out.append(f"unlike the training images: its {SIGNALS[worst[1]]}{channel} differs by "
                       f"{100 * shift[worst]:.0f} % of the training range (more than {100 * SHIFT_THRESHOLD:.0f} %); "
                       f"check the result, and paint labels on such an image and train on it too ({hint})")
        if self.features is not None and features is not None:
            out += self.features.warnings(features, confidence)
        return out


def collapse_warning(proba: np.ndarray, classes: np.ndarray) -> list[str]:
    """A warning when ``(..., K)`` probabilities put at least ``COLLAPSE_FRACTION`` of the pixels in
    one class of a classifier painted with several (``classes``: label value of each column)."""
    return collapse_warning_of(np.bincount(np.argmax(proba, axis=-1).ravel(), minlength=proba.shape[-1]), classes)


def collapse_warning_of(counts: np.ndarray, classes: np.ndarray) -> list[str]:
    """:func:`collapse_warning` of the ``(K,)`` pixel counts of each class's column."""
    if len(classes) < 2:
        return []
    top = int(np.argmax(counts))
    fraction = counts[top] / max(1, counts.sum())
    if fraction < COLLAPSE_FRACTION:
        return []
    return [f"collapsed prediction: {100 * fraction:.1f} % of the pixels are label {int(classes[top])} "
            f"although {len(classes)} classes were painted; the image probably differs from the training "
            "images: check it, and add labels from such an image"]
