"""Training the pixel classifier: sparse brush labels -> training set -> :class:`PixelClassifier`.

The feature scaling (and, with ``pca_dim``, a PCA of the ViT channels) is fitted on a regular
grid over all pixels of the training images; the class-balanced logistic regression and the
extremely randomised trees (:mod:`napari_dinoseg.forest`) on the painted pixels, side by side on
two cores. Images featurised tile by tile are trained on through :class:`TrainingPart` s.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from .config import TrainConfig, config_or_default
from .forest import fit_forest
from .parallel import cpu_threads, map_threads
from .pixel_classifier import FeaturesLike, PixelClassifier, check_labels, feature_array

#: Pixels of the training image(s) sampled (a regular grid) to fit the feature scaling and PCA.
SCALING_SAMPLE = 50_000


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

    model, forest = _fit_models(xs, tree_x, y, config)
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
        guide_laplacian=_guide_laplacian(channel_names, feature_config) if config.guided_radius else (),
        forest=forest,
        linear=linear,
        tree_channels=tree_channels,
        tree_components=components,
        predict_step=int(config.predict_step),
    )


def _fit_models(xs: np.ndarray, tree_x: np.ndarray, y: np.ndarray, config: TrainConfig):
    """The class-balanced logistic regression on the scaled (and reduced) features ``xs (N, F')``
    and, with ``classifier="logistic+trees"``, the extremely randomised trees on ``tree_x (N, T)``,
    side by side on two cores (``y (N,)`` int64 the labels). Returns ``(fitted LogisticRegression,
    forest or None)``."""
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
    return model, forest


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


def _guide_laplacian(names: Optional[Sequence[str]], config) -> tuple[int, ...]:
    """The channels of the guided filter's second guide: the Laplacian (Hessian trace) of the
    guide's sigma for 3-D features, where it was measured to help (``docs/volumes.md``); ``()``
    for planes, whose smoothing is the one-guide filter their benchmarks were measured with."""
    if not _guide(names, config) or getattr(config, "dims", 2) != 3:
        return ()
    from .features.channels import ChannelLayout

    return ChannelLayout.of(names).laplacian


def _as_pairs(features, labels) -> tuple[list[np.ndarray], list[np.ndarray]]:
    single = hasattr(features, "data") or isinstance(features, np.ndarray)
    if single:
        feats, labs = [feature_array(features)], [labels]
    else:
        feats = [feature_array(f) for f in features]
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
    feats = [feature_array(f) for f in items]
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
