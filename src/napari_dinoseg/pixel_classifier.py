"""The fitted pixel classifier as plain arrays (:class:`PixelClassifier`), and the checks of
what it is given: features (:func:`feature_array`) and brush labels (:func:`check_labels`).

Training is in :mod:`napari_dinoseg.training`, the evaluation of the classifier on features in
:mod:`napari_dinoseg.predict_engine`; :mod:`napari_dinoseg.classify` is the public face of both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Union

import numpy as np

from .forest import Forest
from .smoothing import reach


class StackLike(Protocol):
    """What the classifier reads of a :class:`~napari_dinoseg.features.featurise.FeatureStack`:
    its ``(..., F)`` ``data`` (and its ``channel_names`` and ``config``, where a function says
    so). Named by its shape, so that the classifier's modules need not import the featurisers."""

    data: np.ndarray


#: Features as the classifier takes them: a ``FeatureStack`` or a plain ``(..., F)`` float array.
FeaturesLike = Union[StackLike, np.ndarray]


@dataclass(frozen=True)
class PixelClassifier:
    """A fitted pixel classifier, as plain arrays (no pickle needed to store it).

    Attributes
    ----------
    coef : (K, F) float32
        Linear weights on scaled features.
    intercept : (K,) float32
    classes : (K,) int64
        Label value of each output column (the painted label values, ascending).
    mean, scale : (F,) float32
        Feature scaling fitted at train time: the centre (mean or median) and spread (standard
        deviation or median absolute deviation) of every channel.
    scaling
        ``"standard"``: ``(x - mean) / scale``; ``"log"``: ``sign(x - mean) * log1p(|x - mean| / scale)``.
    smooth
        Standard deviation (px) of the Gaussian that smooths the probabilities over the image
        plane; 0 = none.
    guided_radius
        Window radius (px) of the guided filter applied to the probabilities; 0 = none.
    guide
        Feature channels averaged into the guided filter's guide image (the finest Gaussian
        blur of each image channel); empty = no guided filter (features without such a channel).
    guide_laplacian
        Feature channels averaged into the guided filter's second guide (the Laplacian of the
        guide's blur, 3-D features); empty = the guide alone (every classifier of planes).
    forest
        Trees whose class fractions are averaged with the regression's probabilities
        (weight ``FOREST_WEIGHT``); ``None``: logistic regression alone.
    linear
        Channels scaled by ``(x - mean) / scale`` whatever ``scaling`` says, and read by the
        trees only through ``tree_components``: the ViT channels of a default classifier, so
        that it is linear in them (:func:`~napari_dinoseg.logit_space.logit_space`).
    tree_channels
        Channels the trees read as they are (``None``: all of them).
    tree_components : (P, len(linear)) float32 or None
        The trees also read ``P`` principal components of the scaled ``linear`` channels,
        after ``tree_channels``.
    predict_step
        With the guided filter: the classifier reads every ``predict_step``-th pixel of each row
        and column and the guided filter interpolates (:func:`~napari_dinoseg.classify.predict`);
        1: every pixel.
    """

    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    scaling: str = "standard"
    smooth: float = 0.0
    guided_radius: int = 0
    guide: tuple[int, ...] = ()
    guide_laplacian: tuple[int, ...] = ()
    forest: Optional[Forest] = None
    linear: tuple[int, ...] = ()
    tree_channels: Optional[tuple[int, ...]] = None
    tree_components: Optional[np.ndarray] = None
    predict_step: int = 1

    @property
    def n_tree_features(self) -> int:
        """Inputs of each tree: ``tree_channels`` (all channels when ``None``), then the components."""
        kept = self.n_features if self.tree_channels is None else len(self.tree_channels)
        return kept + (0 if self.tree_components is None else len(self.tree_components))

    @property
    def margin(self) -> int:
        """Pixels of context the probability smoothing reads around each pixel."""
        return reach(self.guided_radius if self.guide else 0, self.smooth, self.predict_step)

    @property
    def n_features(self) -> int:
        return self.coef.shape[1]

    @property
    def n_classes(self) -> int:
        return self.coef.shape[0]

    def to_labels(self, proba: np.ndarray) -> np.ndarray:
        """``(..., K)`` probabilities -> ``(...)`` label values (``classes[argmax]``, the first
        class among equals; NaN counts as the largest, as in ``np.argmax``)."""
        proba = np.asarray(proba)
        if proba.ndim < 2 or proba.strides[-1] == proba.itemsize:  # channels last in memory
            return self.classes[np.argmax(proba, axis=-1)]
        # a view of channels-first planes (what predict returns): compare whole planes
        best, index = proba[..., 0].copy(), np.zeros(proba.shape[:-1], np.intp)
        for k in range(1, proba.shape[-1]):
            np.copyto(index, k, where=proba[..., k] > best)
            np.maximum(best, proba[..., k], out=best)  # NaN where any class is NaN
        if np.isnan(best).any():  # NaN's place decides, as in np.argmax
            index = np.argmax(proba, axis=-1)
        return self.classes[index]


def feature_array(features: FeaturesLike) -> np.ndarray:
    data = getattr(features, "data", features)
    data = np.asarray(data)
    if data.ndim < 2:
        raise ValueError(f"features must have shape (..., F), got {data.shape}")
    if not np.issubdtype(data.dtype, np.floating):
        raise TypeError(f"features must be a float array, got dtype {data.dtype}")
    return data


#: The largest label value a class may have: label images are written as uint8, uint16 or uint32.
MAX_LABEL = 2**32 - 1


def check_labels(labels) -> np.ndarray:
    """Brush labels as an integer array, refused when a value cannot be a class id.

    Parameters
    ----------
    labels : (...) array
        0 = unlabelled, 1..``MAX_LABEL`` = classes.

    Returns
    -------
    The labels as an ndarray (not copied).

    Raises
    ------
    TypeError
        For bool, float or other non-integer arrays.
    ValueError
        For negative values or values above ``MAX_LABEL`` (which would wrap in the output).
    """
    lab = np.asarray(labels)
    if lab.dtype == bool or not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels must be an integer array (0 = unlabelled, 1..K = classes), got dtype {lab.dtype}")
    if lab.size:
        low, high = lab.min(), lab.max()
        if low < 0:
            raise ValueError(f"labels hold the negative value {int(low)}: label values must be 0 (unlabelled) "
                             f"or 1..{MAX_LABEL} (classes)")
        if high > MAX_LABEL:
            raise ValueError(f"labels hold the value {int(high)}, too large for a class id: label values must be "
                             f"at most {MAX_LABEL} (they are written as uint32 at most); renumber the classes")
    return lab
