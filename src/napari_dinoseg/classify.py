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
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from .config import TrainConfig, config_or_default
from .forest import Forest, fit_forest
from .parallel import cpu_threads, map_threads
from .smoothing import gaussian_smooth, guided_filter, reach

if TYPE_CHECKING:
    from .features.featurise import FeatureStack

#: Pixels of the training image(s) sampled (a regular grid) to fit the feature scaling and PCA.
SCALING_SAMPLE = 50_000
#: Feature values (pixels x channels) predicted at once: a chunk's copy and temporaries stay in
#: the CPU cache.
CHUNK_VALUES = 1 << 20
#: Weight of the trees' probabilities in a ``logistic+trees`` classifier.
FOREST_WEIGHT = 0.5

FeaturesLike = Union["FeatureStack", np.ndarray]


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
    forest
        Trees whose class fractions are averaged with the regression's probabilities
        (weight ``FOREST_WEIGHT``); ``None``: logistic regression alone.
    linear
        Channels scaled by ``(x - mean) / scale`` whatever ``scaling`` says, and read by the
        trees only through ``tree_components``: the ViT channels of a default classifier, so
        that it is linear in them (:func:`logit_space`).
    tree_channels
        Channels the trees read as they are (``None``: all of them).
    tree_components : (P, len(linear)) float32 or None
        The trees also read ``P`` principal components of the scaled ``linear`` channels,
        after ``tree_channels``.
    predict_step
        With the guided filter: the classifier reads every ``predict_step``-th pixel of each row
        and column and the guided filter interpolates (:func:`predict`); 1: every pixel.
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


def train(
    features: Union[FeaturesLike, Sequence[FeaturesLike]],
    labels: Union[np.ndarray, Sequence[np.ndarray]],
    config: Optional[TrainConfig] = None,
    *,
    scaling: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> PixelClassifier:
    """Fit a class-balanced multinomial logistic regression (and, with the default
    ``classifier="logistic+trees"``, extremely randomised trees) on the painted pixels.

    The features are scaled (``config.scaling``) by statistics of all pixels of the
    training images, not only the painted ones.

    Parameters
    ----------
    features : FeatureStack or (..., F) float array, or a sequence of them
        Per-pixel features of one or several images (or slices of a stack).
    labels : (...) int array, or a sequence of them
        Brush labels matching ``features`` without the last axis; 0 = unlabelled,
        1..K = classes (any positive integers).
    config
        Training options; ``TrainConfig()`` when omitted. With ``pca_dim`` set, the ViT
        channels (``vit_*`` channel names; all channels for plain arrays) are reduced by a
        PCA fitted here, on the training images, and the chain PCA -> logistic regression
        is folded into one linear map on the scaled features: prediction needs no PCA step
        and never re-fits anything.
    scaling : ((F,), (F,)) float arrays, optional
        The feature scaling's centre and spread, as :func:`fit_scaling` gives them for these
        features and ``config.scaling`` (a caller that keeps them saves that step); fitted here
        when omitted.

    Returns
    -------
    PixelClassifier

    Raises
    ------
    TypeError
        For float / non-integer labels.
    ValueError
        For mismatched shapes, negative labels, no painted pixels, or a single class.
    """
    config = config_or_default(config, TrainConfig)
    feats, labs = _as_pairs(features, labels)
    step = grid_step([f.shape[:-1] for f in feats])
    parts = [_part(f, lab, step) for f, lab in zip(feats, labs)]
    first = features[0] if isinstance(features, (list, tuple)) else features
    return train_parts(parts, config, channel_names=getattr(first, "channel_names", None),
                       feature_config=getattr(first, "config", None), scaling=scaling)


@dataclass(frozen=True)
class TrainingPart:
    """What training reads of one feature stack and its brush labels (no more: a caller that
    featurises an image tile by tile keeps these and lets the stacks go).

    Attributes
    ----------
    x : (N, F) float32
        Features of the painted pixels.
    y : (N,) int64
        Their label values.
    grid : (M, F) float32
        Features of a regular grid over all pixels (every ``step``-th row and column; see
        :func:`grid_step`): the sample the feature scaling and the PCA are fitted on.
    """

    x: np.ndarray
    y: np.ndarray
    grid: np.ndarray


def training_part(features: FeaturesLike, labels: np.ndarray, step: int) -> TrainingPart:
    """The :class:`TrainingPart` of one feature stack ``(..., F)`` and its labels ``(...)``,
    the grid taking every ``step``-th pixel along each axis (``step`` from :func:`grid_step`
    over all the parts of one training set)."""
    (data,), (lab,) = _as_pairs(features, labels)
    return _part(data, lab, step)


def grid_step(shapes: Sequence[tuple[int, ...]]) -> int:
    """Step of the regular grid that samples about ``SCALING_SAMPLE`` pixels of arrays of the
    given (spatial) shapes, all together."""
    total = sum(int(np.prod(shape)) for shape in shapes)
    return max(1, int(np.ceil((total / SCALING_SAMPLE) ** (1 / max(1, len(shapes[0]))))))


def _part(data: np.ndarray, labels: np.ndarray, step: int) -> TrainingPart:
    mask = labels > 0
    grid = data[(slice(None, None, step),) * (data.ndim - 1)].reshape(-1, data.shape[-1]).astype(np.float32)
    return TrainingPart(x=data[mask].astype(np.float32, copy=False), y=labels[mask].astype(np.int64), grid=grid)


def train_parts(
    parts: Sequence[TrainingPart],
    config: Optional[TrainConfig] = None,
    *,
    channel_names: Optional[Sequence[str]] = None,
    feature_config=None,
    scaling: Optional[tuple[np.ndarray, np.ndarray]] = None,
    components: Optional[np.ndarray] = None,
) -> PixelClassifier:
    """:func:`train` on :class:`TrainingPart` s (one per stack or tile of a training set).

    ``channel_names`` and ``feature_config`` (those of the stacks) pick the guided filter's
    guide channels and the channels a PCA reduces; without them there is no guide and a PCA
    reduces every channel. Equal to :func:`train` on the stacks themselves. ``scaling`` and
    ``components`` (:func:`fit_scaling`, :func:`tree_components`): those of these parts, kept by a
    caller that refits on the same images.
    """
    config = config_or_default(config, TrainConfig)
    x, y = _training_set(parts, config)
    grid = np.concatenate([p.grid for p in parts])
    linear = linear_channels(channel_names, config)
    mean, scale = _fit_scaling(grid, config.scaling, linear) if scaling is None else scaling
    if np.shape(mean) != (x.shape[1],) or np.shape(scale) != (x.shape[1],):
        raise ValueError(f"the scaling has shapes {np.shape(mean)} and {np.shape(scale)}, "
                         f"not ({x.shape[1]},) for {x.shape[1]} feature channels")
    xs = _scaled(x, mean, scale, config.scaling, linear)
    tree_x, tree_channels, kept_components, components = x, None, components, None
    if config.classifier == "logistic+trees" and linear:
        tree_channels = tuple(int(i) for i in np.setdiff1d(np.arange(x.shape[1]), linear))
        components = kept_components
        if components is None:
            components = tree_components(grid, (mean, scale), linear, config)
        tree_x = np.hstack([x[:, list(tree_channels)], xs[:, list(linear)] @ components.T])
    reduce = _fit_pca(channel_names, grid, mean, scale, config, linear) if config.pca_dim else None
    if reduce is not None:
        xs = reduce.transform(xs)

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    # newton-cg converges in ~10 iterations here, ~10x faster than lbfgs's ~100
    model = LogisticRegression(
        C=config.C, class_weight=config.class_weight, max_iter=config.max_iter, solver="newton-cg"
    )
    forest = None
    with ThreadPoolExecutor(1) as pool:  # the trees grow on one core while the regression fits
        trees = (pool.submit(fit_forest, tree_x, y, config.n_trees, config.class_weight, config.seed)
                 if config.classifier == "logistic+trees" else None)
        # the regression on the other core: BLAS threads would only contend with the trees
        with warnings.catch_warnings(), threadpool_limits(1 if trees is not None else None):
            # the solver may stop at max_iter on hard data; the fit is still usable for interaction
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            model.fit(xs, y)
        if trees is not None:
            forest = trees.result()
    coef, intercept = model.coef_, model.intercept_
    if reduce is not None:
        coef, intercept = reduce.fold(coef, intercept)
    if coef.shape[0] == 1:  # binary: sklearn keeps one row; softmax([0, z]) == sigmoid(z)
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    return PixelClassifier(
        coef=coef.astype(np.float32),
        intercept=intercept.astype(np.float32),
        classes=model.classes_.astype(np.int64),
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        scaling=config.scaling,
        smooth=float(config.smooth),
        guided_radius=int(config.guided_radius),
        guide=_guide(channel_names, feature_config) if config.guided_radius else (),
        forest=forest,
        linear=linear,
        tree_channels=tree_channels,
        tree_components=components,
        predict_step=int(config.predict_step),
    )


def linear_channels(channel_names: Optional[Sequence[str]], config: TrainConfig) -> tuple[int, ...]:
    """The channels a classifier trained with ``config`` reads linearly (see :class:`PixelClassifier`):
    the ViT channels (``vit_*`` names) when ``config.vit_components`` is set and the trees are on,
    else none."""
    if not channel_names or not config.vit_components or config.classifier != "logistic+trees":
        return ()
    from .features.channels import ChannelLayout

    return ChannelLayout.of(channel_names).vit


def tree_components(grid: np.ndarray, scaling: tuple[np.ndarray, np.ndarray], linear: Sequence[int],
                    config: TrainConfig) -> np.ndarray:
    """``(n, L)`` float32 principal axes of the standard-scaled ``linear`` channels of the grid sample
    ``(M, F)``: what the trees read of the ViT channels (``n = config.vit_components``)."""
    mean, scale = scaling
    cols = list(linear)
    return _components(_scaled(grid[:, cols], mean[cols], scale[cols], "standard"), config.vit_components, config.seed)


def _components(scaled: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``(n, L)`` float32 leading principal axes of ``(M, L)`` scaled features."""
    from sklearn.decomposition import PCA

    n = min(n, scaled.shape[1], len(scaled))
    return PCA(n_components=n, svd_solver="randomized", random_state=seed).fit(scaled).components_.astype(np.float32)


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
    data = _data(features)
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
    guide = _data(features)[..., list(clf.guide)].mean(axis=-1, dtype=np.float32) if guided else None
    return _smoothed(clf, out, guide, origin, len(lead) >= 2)


def read_pixels(clf: PixelClassifier, shape: tuple[int, int], origin: tuple[int, int] = (0, 0)) -> tuple[slice, slice]:
    """``(rows, cols)`` of the pixels of an ``(H, W)`` window at plane coordinates ``origin`` whose
    features the classifier reads (:func:`predict`): with the guided filter and
    ``clf.predict_step > 1``, every ``predict_step``-th row and column (plane coordinates multiple
    of it); else every pixel."""
    step = clf.predict_step if clf.guided_radius > 0 and clf.guide else 1
    return tuple(slice(int(-o % step), n, step) for o, n in zip(origin, shape))


def predict_read(clf: PixelClassifier, read: np.ndarray, guide: Optional[np.ndarray],
                 origin: tuple[int, int] = (0, 0), scaled: Optional[np.ndarray] = None) -> np.ndarray:
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

    Returns
    -------
    (H, W, K) float32 probabilities.

    Raises
    ------
    ValueError
        As :func:`predict`: for NaN or inf in ``read`` or ``guide``.
    """
    data = _data(read)
    if data.ndim != 3 or data.shape[-1] != clf.n_features:
        raise ValueError(f"features read must be (h, w, {clf.n_features}), got {data.shape}")
    guided = clf.guided_radius > 0 and bool(clf.guide)
    if guided != (guide is not None):
        raise ValueError("a guide image is needed exactly when the classifier has a guided filter")
    out = np.moveaxis(_pixel_proba(clf, data, scaled), 0, -1)
    return _smoothed(clf, out, guide, origin, True)


def _smoothed(clf: PixelClassifier, proba: np.ndarray, guide: Optional[np.ndarray], origin: tuple[int, int],
              plane: bool) -> np.ndarray:
    """Probabilities at the pixels read -> every pixel: the guided filter (``guide`` not ``None``),
    then the Gaussian (``plane``: the last two leading axes are an image plane)."""
    if guide is not None:
        finite = np.isfinite(guide)
        if not finite.all():
            raise ValueError(f"the guide of the edge smoothing (the mean of feature channels {list(clf.guide)}) is NaN "
                             f"or inf at {int(finite.size - np.count_nonzero(finite))} pixel(s): the features hold "
                             "NaN or inf (the image or its features are corrupt); nothing is predicted from them")
        step = clf.predict_step
        offset = tuple(int(-o % step) for o in origin)
        proba = guided_filter(guide, proba, clf.guided_radius, step=step, offset=offset)
    if plane and clf.smooth > 0:
        proba = gaussian_smooth(proba, clf.smooth)
    return proba


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
    tree components, whose :func:`predict` on ``featurise_projected`` features equals
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
        forest=clf.forest,
        linear=tuple(position[i] for i in clf.linear if i in position) + new,
        tree_channels=tree_channels,
        predict_step=clf.predict_step,
    )
    return reduced, (weights.astype(np.float32), bias.astype(np.float32))


def guide_channels(features: Union[FeaturesLike, Sequence[FeaturesLike]]) -> tuple[int, ...]:
    """Indices of the channels that make the guided filter's guide: the finest Gaussian blur
    (``gaussian_s<smallest sigma>``) of every image channel; ``()`` for features without names
    (plain arrays) or without classical channels (ViT features)."""
    first = features[0] if isinstance(features, (list, tuple)) else features
    return _guide(getattr(first, "channel_names", None), getattr(first, "config", None))


def _guide(names: Optional[Sequence[str]], config) -> tuple[int, ...]:
    if not names or config is None or not config.sigmas:
        return ()
    from .features.channels import ChannelLayout

    return ChannelLayout.of(names).guide


def uncertainty(proba: np.ndarray) -> np.ndarray:
    """``(..., K)`` probabilities -> ``(...)`` float32 uncertainty ``1 - max_k p_k`` in [0, 1 - 1/K]."""
    return (1.0 - proba.max(axis=-1)).astype(np.float32)


def scaled_features(clf: PixelClassifier, features: FeaturesLike) -> np.ndarray:
    """The features as the classifier's linear part reads them, its scaling applied.

    Parameters
    ----------
    clf
        A fitted classifier.
    features : FeatureStack or (..., F) float array

    Returns
    -------
    (F, ...) float32, channels first: pass it to :func:`predict` as ``scaled`` to predict the
    same features again without scaling them again (the signed log costs more than the rest of
    the linear part).
    """
    data = _data(features)
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


def _data(features: FeaturesLike) -> np.ndarray:
    data = getattr(features, "data", features)
    data = np.asarray(data)
    if data.ndim < 2:
        raise ValueError(f"features must have shape (..., F), got {data.shape}")
    if not np.issubdtype(data.dtype, np.floating):
        raise TypeError(f"features must be a float array, got dtype {data.dtype}")
    return data


def _as_pairs(features, labels) -> tuple[list[np.ndarray], list[np.ndarray]]:
    single = hasattr(features, "data") or isinstance(features, np.ndarray)
    if single:
        feats, labs = [_data(features)], [labels]
    else:
        feats = [_data(f) for f in features]
        labs = list(labels) if not isinstance(labels, np.ndarray) else [labels]
        if len(feats) != len(labs):
            raise ValueError(f"got {len(feats)} feature stacks but {len(labs)} label images")
        if not feats:
            raise ValueError("no feature stacks given")
    n_feat = {f.shape[-1] for f in feats}
    if len(n_feat) > 1:
        raise ValueError(f"feature stacks have different channel counts {sorted(n_feat)}")
    checked = []
    for f, lab in zip(feats, labs):
        lab = check_labels(lab)
        if lab.shape != f.shape[:-1]:
            raise ValueError(
                f"labels of shape {lab.shape} do not match the image's shape {f.shape[:-1]}; "
                "paint in a Labels layer with the image's shape"
            )
        checked.append(lab)
    return feats, checked


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


def _training_set(parts: Sequence[TrainingPart], config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Painted pixels' features and labels, at most ``max_pixels_per_class`` per class."""
    rng = np.random.default_rng(config.seed)
    painted = [p for p in parts if len(p.y)]
    if not painted:
        raise ValueError("no labelled pixels: paint at least one stroke for each of two classes")
    x, y = np.concatenate([p.x for p in painted]), np.concatenate([p.y for p in painted])
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(
            f"only class {classes[0]} is painted; paint strokes of at least two classes "
            "(e.g. foreground and background)"
        )
    keep = []
    for c in classes:
        idx = np.flatnonzero(y == c)
        if len(idx) > config.max_pixels_per_class:
            idx = rng.choice(idx, config.max_pixels_per_class, replace=False)
        keep.append(idx)
    keep = np.sort(np.concatenate(keep))
    return x[keep], y[keep]


def fit_scaling(features: Union[FeaturesLike, Sequence[FeaturesLike], Sequence["TrainingPart"]],
                kind: str, linear: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """The feature scaling of training images: per-channel centre and spread (float64, ``(F,)``
    each) of about ``SCALING_SAMPLE`` pixels on a regular grid over all of them (the grids of
    :class:`TrainingPart` s).

    ``kind``: ``"standard"``: mean and standard deviation; ``"log"``: median and median absolute
    deviation (the standard deviation where that is ~0, e.g. channels mostly constant); the
    ``linear`` channels (:func:`linear_channels`) always by mean and standard deviation.
    """
    items = list(features) if isinstance(features, (list, tuple)) else [features]
    if all(isinstance(f, TrainingPart) for f in items):
        return _fit_scaling(np.concatenate([p.grid for p in items]), kind, linear)
    feats = [_data(f) for f in items]
    step = grid_step([f.shape[:-1] for f in feats])
    grids = [_part(f, np.zeros(f.shape[:-1], np.uint8), step).grid for f in feats]
    return _fit_scaling(np.concatenate(grids), kind, linear)


def _fit_scaling(sample: np.ndarray, kind: str, linear: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fit_scaling` of a ``(M, F)`` sample; the ``linear`` channels' by mean and standard deviation."""
    if kind != "standard" and len(linear):
        centre, spread = _fit_scaling(sample, kind)
        rest = _fit_scaling(sample[:, list(linear)], "standard")
        centre[list(linear)], spread[list(linear)] = rest
        return centre, spread
    if kind == "standard":
        centre = sample.mean(axis=0, dtype=np.float64)
        spread = sample.std(axis=0, dtype=np.float64)
    else:
        columns = _transposed(sample)  # (F, M): each channel's values contiguous
        centre = _row_medians(columns)
        np.abs(columns - centre[:, None].astype(np.float32), out=columns)
        spread = _row_medians(columns)
        flat = spread < 1e-6
        spread[flat] = sample[:, flat].std(axis=0, dtype=np.float64)
    spread[spread < 1e-6] = 1.0  # constant channels carry no information; avoid dividing by ~0
    return centre, spread


def _transposed(x: np.ndarray, block: int = 512) -> np.ndarray:
    """``(M, F)`` -> C-contiguous float32 ``(F, M)``, copied a block of rows at a time (cache-sized)."""
    out = np.empty(x.shape[::-1], np.float32)
    for start in range(0, len(x), block):
        out[:, start:start + block] = x[start:start + block].T
    return out


def _row_medians(rows: np.ndarray) -> np.ndarray:
    """``(F, M)`` C-contiguous -> ``(F,)`` float64 medians of the rows, blocks of rows on parallel
    threads (numpy's partition releases the GIL)."""
    blocks = np.array_split(np.arange(len(rows)), min(len(rows), cpu_threads()) or 1)
    parts = map_threads(lambda b: np.median(rows[b[0]:b[-1] + 1], axis=1), [b for b in blocks if len(b)])
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def _scaled(x: np.ndarray, centre: np.ndarray, spread: np.ndarray, kind: str,
            linear: Sequence[int] = ()) -> np.ndarray:
    """``(N, F)`` features -> ``(N, F)`` float32 scaled features (see :class:`PixelClassifier`;
    the ``linear`` channels are not logged)."""
    z = np.subtract(x, centre.astype(np.float32), dtype=np.float32)
    z *= (1.0 / spread).astype(np.float32)
    if kind != "log":
        return z
    logged = np.setdiff1d(np.arange(z.shape[1]), linear) if len(linear) else slice(None)
    part = z[:, logged]
    z[:, logged] = np.copysign(np.log1p(np.abs(part)), part)
    return z


class _ChannelPCA:
    """PCA of some channels of scaled features, the others passed through."""

    def __init__(self, n_feat: int, reduced: np.ndarray, components: np.ndarray, centre: np.ndarray) -> None:
        self.reduced = reduced  # (R,) indices of the channels the PCA replaces
        self.kept = np.setdiff1d(np.arange(n_feat), reduced)  # the other channels, as they are
        self.components = components  # (k, R)
        self.centre = centre  # (R,)

    def transform(self, xs: np.ndarray) -> np.ndarray:
        z = (xs[:, self.reduced] - self.centre) @ self.components.T
        return np.hstack([xs[:, self.kept], z])

    def fold(self, coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients on ``[kept, pca]`` -> coefficients on all scaled channels."""
        n_kept = len(self.kept)
        full = np.zeros((coef.shape[0], n_kept + len(self.reduced)))
        full[:, self.kept] = coef[:, :n_kept]
        full[:, self.reduced] = coef[:, n_kept:] @ self.components
        return full, intercept - coef[:, n_kept:] @ (self.components @ self.centre)


def _fit_pca(names: Optional[Sequence[str]], sample, mean, scale, config: TrainConfig,
             linear: Sequence[int] = ()) -> _ChannelPCA:
    from sklearn.decomposition import PCA

    from .features.channels import ChannelLayout

    n_feat = sample.shape[1]
    reduced = np.array(ChannelLayout.of(names).vit) if names else np.arange(n_feat)
    if len(reduced) == 0:
        raise ValueError("pca_dim is set but the features have no ViT channels; use kind='vit' or 'hybrid'")
    k = min(config.pca_dim, len(reduced), len(sample))
    kind = "standard" if set(reduced.tolist()) <= set(linear) else config.scaling
    scaled = _scaled(sample[:, reduced], mean[reduced], scale[reduced], kind)
    pca = PCA(n_components=k, svd_solver="randomized", random_state=config.seed).fit(scaled)
    return _ChannelPCA(n_feat, reduced, pca.components_, pca.mean_)
