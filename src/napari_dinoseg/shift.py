"""Training statistics and the shift report: does a new image look like the training images?

A classifier fitted on painted pixels of one or two images is only trustworthy on images
whose normalised intensities (what every featuriser sees) resemble the training images'.
:func:`image_statistics` summarises an image by quantiles of two signals per channel, the
normalised intensity and its local edge strength (Gaussian-gradient magnitude at 1 px);
:class:`TrainingStatistics` keeps those of the training images (a few hundred numbers, stored
in bundles) with the painted class fractions; :meth:`TrainingStatistics.check` compares a new
image with them, and :func:`collapse_warning` flags a prediction that collapsed to one class.
Warnings, never errors:
the caller reports them (CLI summary, widget status line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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
    from scipy.ndimage import gaussian_gradient_magnitude

    h, w, c = normalised.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / SAMPLE))))
    out = np.empty((c, len(SIGNALS), len(LEVELS)))
    for ch in range(c):
        x = normalised[..., ch]
        edges = gaussian_gradient_magnitude(x, 1.0, mode="reflect")
        out[ch, 0] = np.percentile(x[::step, ::step], LEVELS)
        out[ch, 1] = np.percentile(edges[::step, ::step], LEVELS)
    return out


@dataclass(frozen=True)
class TrainingStatistics:
    """What the training images looked like.

    Attributes
    ----------
    quantiles : (N, C, len(SIGNALS), len(LEVELS)) float64
        :func:`image_statistics` of each of the N training images.
    class_fractions : (K,) float64
        Fraction of the painted pixels in each class.
    """

    quantiles: np.ndarray
    class_fractions: np.ndarray

    @classmethod
    def of(cls, quantiles: Sequence[np.ndarray], labels: Sequence[np.ndarray],
           classes: np.ndarray) -> "TrainingStatistics":
        """Statistics of training images from their :func:`image_statistics` and ``(H, W)`` labels."""
        quantiles = np.stack(quantiles)
        counts = np.array([sum(int(np.count_nonzero(lab == c)) for lab in labels) for c in classes], float)
        return cls(quantiles=quantiles, class_fractions=counts / max(counts.sum(), 1.0))

    def to_dict(self) -> dict:
        return {"levels": list(LEVELS), "signals": list(SIGNALS), "quantiles": self.quantiles.tolist(),
                "class_fractions": self.class_fractions.tolist()}

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
        return cls(quantiles=quantiles, class_fractions=fractions)

    def shift(self, normalised: np.ndarray) -> np.ndarray:
        """``(C, len(SIGNALS))`` distance of an image's signals to the closest training image's,
        as a fraction of the training images' range of that signal (1 %..99 % quantiles)."""
        q = image_statistics(normalised)  # (C, S, L)
        train = self.quantiles  # (N, C, S, L)
        span = train[..., -1].max(axis=0) - train[..., 0].min(axis=0)  # (C, S)
        distance = np.abs(train - q[None]).mean(axis=-1).min(axis=0)  # (C, S)
        return distance / np.maximum(span, 1e-6)

    def check(self, normalised: np.ndarray, normalise: str = "percentile") -> list[str]:
        """Warnings (empty when the image looks like the training images).

        Parameters
        ----------
        normalised : (H, W, C) float32
            The image, normalised by the classifier's rule.
        normalise
            The classifier's normalisation rule (named in the hint).
        """
        if normalised.shape[-1] != self.quantiles.shape[1]:
            return [f"the image has {normalised.shape[-1]} channel(s), the training images had "
                    f"{self.quantiles.shape[1]}"]
        shift = self.shift(normalised)
        worst = np.unravel_index(np.argmax(shift), shift.shape)
        if shift[worst] <= SHIFT_THRESHOLD:
            return []
        channel = f" of channel {worst[0]}" if shift.shape[0] > 1 else ""
        hint = ("normalise='percentile' cancels brightness and contrast changes" if normalise != "percentile"
                else "is it the same kind of image, not inverted, acquired alike?")
        return [f"unlike the training images: its {SIGNALS[worst[1]]}{channel} differs by "
                f"{100 * shift[worst]:.0f} % of the training range (more than {100 * SHIFT_THRESHOLD:.0f} %); "
                f"check the result, and paint labels on such an image and train on it too ({hint})"]


def collapse_warning(proba: np.ndarray, classes: np.ndarray) -> list[str]:
    """A warning when ``(..., K)`` probabilities put at least ``COLLAPSE_FRACTION`` of the pixels in
    one class of a classifier painted with several (``classes``: label value of each column)."""
    if len(classes) < 2:
        return []
    counts = np.bincount(np.argmax(proba, axis=-1).ravel(), minlength=proba.shape[-1])
    top = int(np.argmax(counts))
    fraction = counts[top] / max(1, counts.sum())
    if fraction < COLLAPSE_FRACTION:
        return []
    return [f"collapsed prediction: {100 * fraction:.1f} % of the pixels are label {int(classes[top])} "
            f"although {len(classes)} classes were painted; the image probably differs from the training "
            "images: check it, and add labels from such an image"]
