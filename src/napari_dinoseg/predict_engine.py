"""The prediction engine: a :class:`~napari_dinoseg.pixel_classifier.PixelClassifier` evaluated
on blocks of features, unsmoothed.

Pixels are taken in chunks of rows, copied channels-first into the CPU cache, on parallel
threads: the scaling, the logistic regression and its softmax as torch operations, then the
trees (:mod:`napari_dinoseg.forest`). :func:`napari_dinoseg.classify.predict` puts the
lattice of pixels read and the smoothing around it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .parallel import map_threads
from .pixel_classifier import FeaturesLike, PixelClassifier, feature_array

#: Feature values (pixels x channels) predicted at once: a chunk's copy and temporaries stay in
#: the CPU cache.
CHUNK_VALUES = 1 << 20
#: Weight of the trees' probabilities in a ``logistic+trees`` classifier.
FOREST_WEIGHT = 0.5


def scaled_features(clf: PixelClassifier, features: FeaturesLike) -> np.ndarray:
    """The features as the classifier's linear part reads them, its scaling applied.

    Parameters
    ----------
    clf
        A fitted classifier.
    features : FeatureStack or (..., F) float array

    Returns
    -------
    (F, ...) float32, channels first: pass it to :func:`~napari_dinoseg.classify.predict` as ``scaled`` to predict the
    same features again without scaling them again (the signed log costs more than the rest of
    the linear part).
    """
    data = feature_array(features)
    cf, step = _row_chunks(data)
    out = np.empty(cf.shape, np.float32)
    scale = _Linear(clf).scale

    def chunk(r0: int) -> None:
        out[:, r0:r0 + step] = scale(_chunk(cf, r0, step)).numpy().reshape(out[:, r0:r0 + step].shape)

    map_threads(chunk, range(0, cf.shape[1], step))
    return out.reshape(data.shape[-1], *data.shape[:-1])


class _Linear:
    """The classifier's scaling, logistic regression and tree inputs as torch operations on
    ``(F, m)`` chunks."""

    def __init__(self, clf: PixelClassifier) -> None:
        import torch

        self.kind = clf.scaling
        self.coef = torch.from_numpy(clf.coef.astype(np.float32))
        self.intercept = torch.from_numpy(clf.intercept.astype(np.float32))[:, None]
        self.inv_scale = torch.from_numpy((1.0 / clf.scale).astype(np.float32))[:, None]
        self.centre = torch.from_numpy(clf.mean.astype(np.float32))[:, None]
        # standard scaling folded into the weights: logits straight from the features
        self.folded_coef = self.coef * self.inv_scale.T
        self.folded_intercept = self.intercept - self.folded_coef @ self.centre
        linear = np.zeros(clf.n_features, bool)
        linear[list(clf.linear)] = True
        self.logged = None if self.kind != "log" else _rows(~linear)
        self.linear = _rows(linear)
        self.trees = None if clf.tree_channels is None else _rows(np.isin(np.arange(clf.n_features), clf.tree_channels))
        self.components = None if clf.tree_components is None else torch.from_numpy(clf.tree_components)

    @property
    def needs_scaled_trees(self) -> bool:
        return self.components is not None

    def scale(self, x):
        """``(F, m)`` float32 tensor -> scaled ``(F, m)`` (see :class:`PixelClassifier`)."""
        import torch

        z = (x - self.centre).mul_(self.inv_scale)
        if self.logged == slice(None):
            return torch.log1p(z.abs()).copysign_(z)
        if self.logged is not None:
            part = z[self.logged]
            z[self.logged] = torch.log1p(part.abs()).copysign_(part)
        return z

    def logits(self, x, scaled=None):
        """``(F, m)`` float32 features (or their ``scaled`` version) -> ``(K, m)`` logits."""
        import torch

        if scaled is not None:
            return torch.addmm(self.intercept, self.coef, scaled)
        if self.kind == "standard":
            return torch.addmm(self.folded_intercept, self.folded_coef, x)
        return torch.addmm(self.intercept, self.coef, self.scale(x))

    def tree_input(self, x, scaled=None):
        """``(F, m)`` features (and their ``scaled`` version, needed with tree components) -> the
        ``(T, m)`` inputs of the trees: ``x`` itself, or its tree channels and components."""
        import torch

        if self.trees is None and self.components is None:
            return x
        parts = [x if self.trees is None else x[self.trees]]
        if self.components is not None:
            parts.append(self.components @ scaled[self.linear])
        return torch.cat(parts)


def _rows(mask: np.ndarray):
    """Rows selected by a boolean ``mask``: a slice where they are contiguous, else an index tensor."""
    import torch

    index = np.flatnonzero(mask)
    if len(index) == len(mask):
        return slice(None)
    if len(index) and index[-1] - index[0] + 1 == len(index):
        return slice(int(index[0]), int(index[-1]) + 1)
    return torch.from_numpy(index)


def _row_chunks(data: np.ndarray) -> tuple[np.ndarray, int]:
    """``(..., F)`` features -> ``((F, R, P) channels-first view, rows per chunk)``: chunks of
    ``step`` rows hold about ``CHUNK_VALUES`` values (a view of the featurisers' channels-first
    buffers; rows of a stack of planes are copied where their layout allows no view)."""
    lead, n_feat = data.shape[:-1], data.shape[-1]
    cf = np.moveaxis(data, -1, 0)
    cf = cf[:, :, None] if len(lead) == 1 else cf.reshape(n_feat, -1, lead[-1])
    return cf, max(1, CHUNK_VALUES // (n_feat * cf.shape[2]))


def _chunk(cf: np.ndarray, r0: int, step: int):
    """Rows ``[r0, r0 + step)`` of a ``(F, R, P)`` array as a contiguous ``(F, m)`` float32 tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(cf[:, r0:r0 + step], dtype=np.float32).reshape(cf.shape[0], -1))


def _pixel_proba(clf: PixelClassifier, data: np.ndarray, scaled: Optional[np.ndarray] = None,
                 names: Optional[Sequence[str]] = None) -> np.ndarray:
    """``(..., F)`` features -> ``(K, ...)`` float32 probabilities (channels first), unsmoothed.

    Pixels are taken in chunks of about ``CHUNK_VALUES`` feature values, copied channels-first
    (small enough to stay in the CPU cache for all that follows): the scaling (unless
    ``scaled``, :func:`scaled_features` of ``data``, is given), the logits as one
    ``(K, F) @ (F, m)`` product and the softmax in torch, then the trees on the same chunk;
    chunks run on parallel threads. A chunk's logits are checked (``(K, m)`` values, in the
    CPU cache): NaN or inf there (from NaN or inf features, or features so large that the
    logits overflow) raise a ValueError saying how many pixels and which channels (named by
    ``names`` when given), once every chunk is done.
    """
    import torch

    cf, step = _row_chunks(data)
    scaled_cf = None if scaled is None else _row_chunks(np.moveaxis(scaled, 0, -1))[0]
    k = clf.n_classes
    out = np.empty((k, *cf.shape[1:]), np.float32)
    linear = _Linear(clf)
    bad: list = []  # (pixels, NaN channels, inf channels) of the chunks whose logits are not finite

    def chunk(r0: int) -> None:
        x = _chunk(cf, r0, step) if scaled is None or clf.forest is not None else None
        z = None if scaled_cf is None else _chunk(scaled_cf, r0, step)
        if z is None and clf.forest is not None and linear.needs_scaled_trees:
            z = linear.scale(x)
        logits = linear.logits(x, z)
        if not bool(torch.isfinite(logits).all()):  # a non-finite feature makes its pixel's logits non-finite
            pixels = ~torch.isfinite(logits).all(dim=0)
            values = (x if x is not None else z)[:, pixels]
            bad.append((int(pixels.sum()), torch.isnan(values).any(dim=1).numpy(),
                        torch.isinf(values).any(dim=1).numpy()))
        proba = torch.softmax(logits, dim=0).numpy()  # (K, m)
        if clf.forest is not None:
            inputs = linear.tree_input(x, z).numpy().T
            trees = clf.forest.predict_proba(inputs, clf.n_tree_features)  # (m, K), read in place
            proba *= 1 - FOREST_WEIGHT
            proba += FOREST_WEIGHT * trees.T
        rows = out[:, r0:r0 + step]
        rows[...] = proba.reshape(rows.shape)

    map_threads(chunk, range(0, cf.shape[1], step))
    if bad:
        raise ValueError(_non_finite_message(clf, bad, names))
    return out.reshape(k, *data.shape[:-1])


def _non_finite_message(clf: PixelClassifier, bad: list, names: Optional[Sequence[str]]) -> str:
    """What :func:`_pixel_proba` says of the chunks whose logits were not finite."""
    pixels = sum(b[0] for b in bad)
    parts = []
    for kind, i in (("NaN", 1), ("inf", 2)):
        channels = np.flatnonzero(np.any([b[i] for b in bad], axis=0))
        if len(channels):
            listed = [names[c] if names is not None and c < len(names) else str(c) for c in channels[:8]]
            more = f" and {len(channels) - 8} more" if len(channels) > 8 else ""
            parts.append(f"{kind} in channel{'s' if len(channels) > 1 else ''} {', '.join(listed)}{more}")
    if not all(np.isfinite(a).all() for a in (clf.coef, clf.intercept, clf.mean, clf.scale)) \
            or (clf.scale <= 0).any():
        return (f"the classifier gave non-finite probabilities (NaN or inf) at {pixels} pixel(s): "
                "its numbers are corrupt (NaN, inf or a zero scale); nothing is predicted from them")
    if not parts:
        return (f"the classifier gave non-finite probabilities (NaN or inf) at {pixels} pixel(s): its logits overflow "
                "on features that are finite but too large for it; featurise the image with the classifier's own "
                "FeatureConfig (its normalisation); nothing is predicted from them")
    return (f"the features of {pixels} pixel(s) are not finite ({'; '.join(parts)}): the image or its features are "
            "corrupt (NaN or inf pixels in the image?); nothing is predicted from them")
