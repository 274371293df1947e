"""Dense CRF refinement of per-pixel class probabilities (pydensecrf)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .config import CRFConfig, FeatureConfig, config_or_default
from .image import as_float_image

#: Probabilities are clipped here before ``-log p`` so that certain pixels stay finite.
EPS = 1e-6


def crf_refine(image: np.ndarray, proba: np.ndarray, config: Optional[CRFConfig] = None,
               features: Optional[FeatureConfig] = None, normalised: bool = False) -> np.ndarray:
    """Refine probabilities with a fully connected CRF on the image.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array
        The image the bilateral kernel compares pixels on (normalised by ``features``' rule,
        clipped to [0, 1]; greyscale replicated to RGB, the first three channels of
        multichannel images used).
    proba : (H, W, K) float array
        Class probabilities (summing to 1 over K).
    config
        Kernel parameters; ``CRFConfig()`` when omitted.
    features
        The feature config whose normalisation rule scales the image; ``FeatureConfig()``'s
        when omitted.
    normalised
        ``image`` is already a normalised ``(H, W, C)`` float image: used as it is.

    Returns
    -------
    (H, W, K) float32 refined probabilities.
    """
    import pydensecrf.densecrf as dcrf

    config = config_or_default(config, CRFConfig)
    proba = np.asarray(proba, dtype=np.float32)
    if proba.ndim != 3 or proba.shape[-1] < 2:
        raise ValueError(f"proba must have shape (H, W, K) with K >= 2, got {proba.shape}")
    img = np.asarray(image, np.float32) if normalised else as_float_image(image, features)
    img = img[..., None] if img.ndim == 2 else img
    if img.shape[:2] != proba.shape[:2]:
        raise ValueError(f"image of shape {img.shape[:2]} and probabilities of shape {proba.shape[:2]} differ")
    h, w, k = proba.shape
    rgb = img[..., :3] if img.shape[-1] >= 3 else np.repeat(img[..., :1], 3, axis=-1)
    rgb = np.ascontiguousarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    unary = -np.log(np.clip(proba, EPS, 1.0)).reshape(-1, k).T
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=config.gaussian_sxy, compat=config.gaussian_compat)
    crf.addPairwiseBilateral(sxy=config.bilateral_sxy, srgb=config.bilateral_srgb, rgbim=rgb,
                             compat=config.bilateral_compat)
    q = np.array(crf.inference(config.iterations), dtype=np.float32)
    return q.reshape(k, h, w).transpose(1, 2, 0).copy()


def refine_labels(image: np.ndarray, labels: np.ndarray, n_labels: int, config: Optional[CRFConfig] = None,
                  features: Optional[FeatureConfig] = None, confidence: float = 0.9) -> np.ndarray:
    """Refine a label image with the dense CRF, from a soft one-hot of the labels.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array
        As for :func:`crf_refine`.
    labels : (H, W) int array
        Labels ``0 .. n_labels - 1``.
    n_labels
        The number of labels (at least 2).
    config, features
        As for :func:`crf_refine`.
    confidence
        The probability given to each pixel's label, the rest shared by the others.

    Returns
    -------
    (H, W) int32 refined labels in ``0 .. n_labels - 1``.
    """
    labels = np.asarray(labels)
    if n_labels < 2 or labels.min() < 0 or labels.max() >= n_labels:
        raise ValueError(f"labels must lie in 0..n_labels - 1 with n_labels >= 2, got labels in "
                         f"{labels.min()}..{labels.max()} and n_labels={n_labels}")
    proba = np.full((*labels.shape, n_labels), (1.0 - confidence) / (n_labels - 1), np.float32)
    np.put_along_axis(proba, labels[..., None].astype(np.intp), confidence, axis=-1)
    return crf_refine(image, proba, config, features).argmax(-1).astype(np.int32)
