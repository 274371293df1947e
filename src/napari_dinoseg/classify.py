"""Pixel classifier: sparse brush labels -> training set -> logistic regression -> probabilities.

The classifier is kept as plain arrays (:class:`PixelClassifier`): coefficients on scaled
features plus the scaling itself, fitted once at train time on the training image(s), so
new images are scaled exactly like them. Two scalings:

- ``"log"`` (default): ``sign(x - median) * log1p(|x - median| / MAD)`` per channel. Filter
  responses (Hessian determinants, squared eigenvalue differences, ...) are heavy-tailed; the
  log keeps a few extreme pixels from dominating a linear model, and lifts mIoU on real
  micrographs (``benchmarks/quality.py``).
- ``"standard"``: ``(x - mean) / std``, folded into the weights at prediction (no copy).

With ``classifier="logistic+trees"`` (the default) the regression's probabilities are
averaged with those of extremely randomised trees grown on the same painted pixels
(:mod:`napari_dinoseg.forest`, stored as arrays too): the trees add the non-linear
decisions a linear model cannot make (thin membranes, narrow intensity bands).

Probabilities are then smoothed over the image plane (:mod:`napari_dinoseg.smoothing`): by
default with a guided filter steered by the finest Gaussian channel of the classical features
(edge-preserving: it removes isolated pixels and the "rims" a classifier paints on the
intensity ramps between two phases, but does not blur across edges), optionally also by a
plain Gaussian.

The code lives in one module per job; this one is the public face (every name below imports
from here) and puts the lattice of pixels read and the smoothing around the prediction engine:

- :mod:`napari_dinoseg.pixel_classifier`: :class:`PixelClassifier` and the checks of its inputs;
- :mod:`napari_dinoseg.training`: :func:`train` and what it fits (scaling, PCA, trees);
- :mod:`napari_dinoseg.predict_engine`: the classifier evaluated on feature chunks in torch;
- :mod:`napari_dinoseg.logit_space`: the split for ViT channels projected on the token grid.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .logit_space import logit_space
from .pixel_classifier import MAX_LABEL, FeaturesLike, PixelClassifier, check_labels, feature_array
from .predict_engine import CHUNK_VALUES, FOREST_WEIGHT, _pixel_proba, scaled_features
from .smoothing import gaussian_smooth, guided_filter
from .training import (SCALING_SAMPLE, TrainingPart, fit_scaling, grid_step, guide_channels, linear_channels, train,
                       train_parts, training_part, tree_components)
from .training import _scaled as _scaled  # a private helper the pipeline imports from here

__all__ = ["CHUNK_VALUES", "FOREST_WEIGHT", "MAX_LABEL", "SCALING_SAMPLE", "FeaturesLike", "PixelClassifier",
           "TrainingPart", "check_labels", "fit_scaling", "grid_step", "guide_channels", "guide_images",
           "linear_channels", "logit_space", "predict", "predict_read", "read_pixels", "scaled_features", "train",
           "train_parts", "training_part", "tree_components", "uncertainty"]


def predict(clf: PixelClassifier, features: FeaturesLike, scaled: Optional[np.ndarray] = None,
            origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Per-class probabilities for every pixel.

    Parameters
    ----------
    clf
        A fitted classifier.
    features : FeatureStack or (..., F) float array
        ``F`` must equal ``clf.n_features``.
    scaled : (F, ...) float32 array, optional
        :func:`scaled_features` of these features for this classifier (kept by a caller that
        predicts them again), used instead of scaling them here.
    origin
        Plane coordinates (row, column) of the features' first pixel, when they are a window
        of a larger plane: the lattice of pixels the classifier evaluates (``clf.predict_step``)
        is the whole plane's, so a window predicts what the whole plane predicts there (away
        from the window's border, ``clf.margin``).

    Returns
    -------
    (..., K) float32 array of probabilities summing to 1 over the last axis; column
    ``k`` belongs to label value ``clf.classes[k]``. With at least two leading axes, the last
    two (the image plane) are smoothed: by the guided filter (``clf.guided_radius``, guided by
    the channels ``clf.guide``), then by the Gaussian (``clf.smooth``). With the guided filter
    and ``clf.predict_step > 1``, the classifier reads every ``predict_step``-th pixel of each
    row and column (plane coordinates multiple of it) and the guided filter brings its
    probabilities to every pixel, edges following the guide (:func:`~napari_dinoseg.smoothing.guided_filter`).
    Features off the lattice are then not read: a non-finite value there does not reach the
    probabilities, which take their neighbours'.

    Raises
    ------
    ValueError
        For a wrong channel count; for NaN or inf in the features read (how many pixels, which
        channels), or in the guide of the guided filter: never returned as probabilities. The
        check reads the logits the classifier computes (a non-finite feature makes its pixel's
        logits non-finite), not the features: it costs nothing measurable.
    """
    data = feature_array(features)
    if data.shape[-1] != clf.n_features:
        raise ValueError(
            f"features have {data.shape[-1]} channels but the classifier was trained on "
            f"{clf.n_features}; featurise the image with the classifier's own FeatureConfig"
        )
    lead = data.shape[:-1]
    if scaled is not None and scaled.shape != (data.shape[-1], *data.shape[:-1]):
        raise ValueError(f"scaled features of shape {scaled.shape} do not match features of shape {data.shape}")
    guided = len(lead) >= 2 and clf.guided_radius > 0 and bool(clf.guide)
    step = clf.predict_step if guided else 1
    if step > 1:  # the lattice of pixels the classifier reads
        read = (Ellipsis, *read_pixels(clf, lead[-2:], origin))
        data = data[(*read, slice(None))]
        scaled = None if scaled is None else scaled[read]
    names = getattr(features, "channel_names", None)
    out = np.moveaxis(_pixel_proba(clf, data, scaled, names), 0, -1)  # (..., K) view of a channels-first buffer
    guide, second = guide_images(clf, feature_array(features)) if guided else (None, None)
    return _smoothed(clf, out, guide, origin, len(lead) >= 2, second)


def guide_images(clf: PixelClassifier, values) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The guided filter's guide and second guide from a window's features.

    Parameters
    ----------
    clf
        A classifier with a guided filter.
    values : (..., F) float array, or a callable ``channels -> (..., len(channels))``
        The features (or a reader of some of their channels: a compact cache decodes only those).

    Returns
    -------
    guide : (...) float32
        The mean of the channels ``clf.guide``.
    second : (...) float32 or None
        The mean of the channels ``clf.guide_laplacian``; ``None`` when it has none.
    """
    read = values if callable(values) else (lambda channels: values[..., channels])
    guide = read(list(clf.guide)).mean(axis=-1, dtype=np.float32)
    if not clf.guide_laplacian:
        return guide, None
    return guide, read(list(clf.guide_laplacian)).mean(axis=-1, dtype=np.float32)


def read_pixels(clf: PixelClassifier, shape: tuple[int, int], origin: tuple[int, int] = (0, 0)) -> tuple[slice, slice]:
    """``(rows, cols)`` of the pixels of an ``(H, W)`` window at plane coordinates ``origin`` whose
    features the classifier reads (:func:`predict`): with the guided filter and
    ``clf.predict_step > 1``, every ``predict_step``-th row and column (plane coordinates multiple
    of it); else every pixel."""
    step = clf.predict_step if clf.guided_radius > 0 and clf.guide else 1
    return tuple(slice(int(-o % step), n, step) for o, n in zip(origin, shape))


def predict_read(clf: PixelClassifier, read: np.ndarray, guide: Optional[np.ndarray],
                 origin: tuple[int, int] = (0, 0), scaled: Optional[np.ndarray] = None,
                 second: Optional[np.ndarray] = None) -> np.ndarray:
    """:func:`predict` of an ``(H, W)`` window for a caller that reads the features itself (a
    compact cache decodes only these): the same probabilities, from the same values.

    Parameters
    ----------
    clf
        A fitted classifier.
    read : (h, w, F) float32 array
        The window's features at :func:`read_pixels` ``(clf, (H, W), origin)``.
    guide : (H, W) float32 array or None
        The mean of the window's feature channels ``clf.guide`` at every pixel; ``None`` when
        ``clf`` has no guided filter (``read`` is then the whole window).
    origin
        As for :func:`predict`.
    scaled : (F, h, w) float32 array, optional
        :func:`scaled_features` of ``read``, when kept (not scaled again).
    second : (H, W) float32 array, optional
        The mean of the channels ``clf.guide_laplacian`` at every pixel, exactly when it has
        them (:func:`guide_images` gives both guides).

    Returns
    -------
    (H, W, K) float32 probabilities.

    Raises
    ------
    ValueError
        As :func:`predict`: for NaN or inf in ``read`` or ``guide``.
    """
    data = feature_array(read)
    if data.ndim != 3 or data.shape[-1] != clf.n_features:
        raise ValueError(f"features read must be (h, w, {clf.n_features}), got {data.shape}")
    guided = clf.guided_radius > 0 and bool(clf.guide)
    if guided != (guide is not None):
        raise ValueError("a guide image is needed exactly when the classifier has a guided filter")
    if (guided and bool(clf.guide_laplacian)) != (second is not None):
        raise ValueError("a second guide image is needed exactly when the classifier's guided filter has one")
    out = np.moveaxis(_pixel_proba(clf, data, scaled), 0, -1)
    return _smoothed(clf, out, guide, origin, True, second)


def _smoothed(clf: PixelClassifier, proba: np.ndarray, guide: Optional[np.ndarray], origin: tuple[int, int],
              plane: bool, second: Optional[np.ndarray] = None) -> np.ndarray:
    """Probabilities at the pixels read -> every pixel: the guided filter (``guide`` not ``None``;
    ``second`` its second guide, if any), then the Gaussian (``plane``: the last two leading axes
    are an image plane)."""
    if guide is not None:
        for image, channels in ((guide, clf.guide), (second, clf.guide_laplacian)):
            if image is None:
                continue
            finite = np.isfinite(image)
            if not finite.all():
                raise ValueError(f"the guide of the edge smoothing (the mean of feature channels {list(channels)}) is "
                                 f"NaN or inf at {int(finite.size - np.count_nonzero(finite))} pixel(s): the features "
                                 "hold NaN or inf (the image or its features are corrupt); nothing is predicted "
                                 "from them")
        step = clf.predict_step
        offset = tuple(int(-o % step) for o in origin)
        proba = guided_filter(guide, proba, clf.guided_radius, step=step, offset=offset, second=second)
    if plane and clf.smooth > 0:
        proba = gaussian_smooth(proba, clf.smooth)
    return proba


def uncertainty(proba: np.ndarray) -> np.ndarray:
    """``(..., K)`` probabilities -> ``(...)`` float32 uncertainty ``1 - max_k p_k`` in [0, 1 - 1/K]."""
    return (1.0 - proba.max(axis=-1)).astype(np.float32)
