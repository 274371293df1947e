"""The logit-space split of a classifier: its ViT channels replaced by their projection.

A classifier that reads the ViT channels only linearly needs of them only a few projections
(its logits' share and the trees' components), which the ViT featuriser computes on the token
grid instead of building the channels at pixel level.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .pixel_classifier import PixelClassifier


def logit_space(clf: PixelClassifier, channel_names: Sequence[str]):
    """The classifier split for features whose ViT channels are never built at pixel level.

    A classifier that reads the ViT channels (``vit_*`` names) only linearly -- scaled by mean
    and standard deviation (``scaling="standard"``, or among ``clf.linear``), seen by the trees
    only through ``tree_components`` -- needs of them only a projection: each class's logit
    ``coef[:, vit] / scale[vit]`` and each tree component ``components / scale[vit]``, with
    their offsets. The ViT featuriser computes it on each view's token grid
    (:func:`napari_dinoseg.features.featurise.featurise_projected`); the other channels are
    kept as they are.

    Parameters
    ----------
    clf
        A fitted classifier.
    channel_names : (F,) str
        The names of its feature channels.

    Returns
    -------
    ``(reduced, (weights (K + P, L), bias (K + P,)))``: ``reduced`` is a :class:`PixelClassifier`
    on the kept channels followed by the ``K`` projected logits (weight 1 each) and the ``P``
    tree components, whose :func:`~napari_dinoseg.classify.predict` on ``featurise_projected`` features equals
    ``predict(clf, ...)`` on the full features up to float rounding. ``None`` where the
    classifier is not linear in the ViT channels (every classifier from before this layout
    with trees or the signed log) or there are none.
    """
    from .features.channels import ChannelLayout

    vit = np.array(ChannelLayout.of(channel_names).vit, dtype=np.int64)
    if len(vit) == 0 or len(channel_names) != clf.n_features:
        return None
    linear = set(range(clf.n_features)) if clf.scaling == "standard" else set(clf.linear)
    if not set(vit.tolist()) <= linear:
        return None
    if clf.forest is not None and (clf.tree_channels is None or set(clf.tree_channels) & set(vit.tolist())):
        return None
    if clf.tree_components is not None and tuple(clf.linear) != tuple(vit.tolist()):
        return None
    kept = np.setdiff1d(np.arange(clf.n_features), vit)
    position = {int(c): i for i, c in enumerate(kept)}
    inv = 1.0 / clf.scale[vit].astype(np.float64)
    rows = [clf.coef[:, vit] * inv]  # the logits' weights on the raw ViT channels
    if clf.tree_components is not None:
        rows.append(clf.tree_components * inv)
    weights = np.vstack(rows)
    bias = -(weights @ clf.mean[vit].astype(np.float64))
    k, n_kept, n_new = clf.n_classes, len(kept), len(weights)
    coef = np.zeros((k, n_kept + n_new), np.float32)
    coef[:, :n_kept], coef[:, n_kept:n_kept + k] = clf.coef[:, kept], np.eye(k)
    new = tuple(range(n_kept, n_kept + n_new))
    tree_channels = None
    if clf.forest is not None:
        tree_channels = tuple(position[i] for i in clf.tree_channels) + new[k:]
    reduced = PixelClassifier(
        coef=coef,
        intercept=clf.intercept,
        classes=clf.classes,
        mean=np.concatenate([clf.mean[kept], np.zeros(n_new, np.float32)]),
        scale=np.concatenate([clf.scale[kept], np.ones(n_new, np.float32)]),
        scaling=clf.scaling,
        smooth=clf.smooth,
        guided_radius=clf.guided_radius,
        guide=tuple(position[i] for i in clf.guide),
        guide_laplacian=tuple(position[i] for i in clf.guide_laplacian),
        forest=clf.forest,
        linear=tuple(position[i] for i in clf.linear if i in position) + new,
        tree_channels=tree_channels,
        predict_step=clf.predict_step,
    )
    return reduced, (weights.astype(np.float32), bias.astype(np.float32))
