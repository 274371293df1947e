"""The training config, :class:`TrainConfig`: how the pixel classifier is fitted, and the bounds of
its augmentation. Imported from :mod:`napari_dinoseg.config`, which re-exports it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, get_args

from .config_checks import _choice, _is_int, _is_number, _JSONConfig

ClassifierKind = Literal["logistic+trees", "logistic"]
ScalingKind = Literal["log", "standard"]

#: Most gamma values of ``TrainConfig.augment`` (each keeps one more normalised copy of every
#: training image in memory while fitting).
MAX_AUGMENT = 8


@dataclass(frozen=True)
class TrainConfig(_JSONConfig):
    """How the pixel classifier is fitted.

    Parameters
    ----------
    classifier
        ``"logistic+trees"``: the probabilities of a multinomial logistic regression (L2
        penalty) averaged with those of ``n_trees`` extremely randomised trees grown on the
        same pixels (non-linear decisions: thin structures, narrow intensity bands);
        ``"logistic"``: the regression alone (as in the paper; fastest prediction).
    n_trees
        Trees of a ``"logistic+trees"`` classifier.
    C
        Inverse regularisation strength. 0.1: brush strokes give many strongly correlated
        pixels, and a stronger penalty generalises better to unpainted regions and images.
    class_weight
        ``"balanced"`` weighs classes inversely to their painted pixel counts; ``None``
        weighs every pixel equally.
    max_pixels_per_class
        Painted pixels kept per class (a seeded random subsample beyond this), so
        training stays interactive however much is painted.
    max_iter
        Iteration cap of the solver.
    scaling
        How features are scaled before the classifier, by statistics of the training images:
        ``"log"``: ``sign(x - median) * log1p(|x - median| / MAD)``, robust to the heavy tails
        of filter responses; ``"standard"``: ``(x - mean) / std``.
    guided_radius
        Window radius (px) of the guided filter that smooths the predicted probabilities over
        the image plane without blurring across intensity edges, guided by the finest Gaussian
        channel of the classical features (no effect on ViT-only features); 0 = off.
    predict_step
        With the guided filter: the classifier reads every ``predict_step``-th pixel of each
        row and column (``predict_step²`` times fewer) and the guided filter brings its
        probabilities to every pixel, edges following the full-resolution guide (a "fast guided
        filter"); 1: every pixel (no effect without the guided filter).
    smooth
        Standard deviation (px) of a further Gaussian smoothing of the probabilities (blurs
        across edges too); 0 = off.
    augment
        Gamma values: :class:`~napari_dinoseg.Segmenter` also trains on every training image
        with its normalised intensities ``x`` mapped to ``sign(x) |x| ** gamma``, so that the
        classifier does not hinge on the painted image's exact tone curve (the images of a
        folder differ by more than brightness and contrast); ``()``: off; at most ``MAX_AUGMENT``
        values (each keeps a normalised copy of every training image while fitting). Lower-level
        :func:`~napari_dinoseg.train` does not augment.
    pca_dim
        Reduce the ViT channels to this many principal components, fitted at train time on
        the training images and folded into the classifier; ``None``: no PCA.
    vit_components
        With ``"logistic+trees"`` on ViT or hybrid features: the ViT channels are scaled by mean
        and standard deviation (whatever ``scaling`` says) and the trees read this many of
        their principal components instead of every channel, so the classifier is linear in
        them and predicts from logits computed on the ViT's token grids, never building the
        ``(H, W, D)`` map (:func:`napari_dinoseg.classify.logit_space`); 0: the trees read every
        ViT channel, scaled like the others (bundles from before format 5).
    seed
        Seed of every subsample, so training is reproducible (0..2**32 - 1).
    """

    classifier: ClassifierKind = "logistic+trees"
    C: float = 0.1
    class_weight: Literal["balanced"] | None = "balanced"
    max_pixels_per_class: int = 20_000
    max_iter: int = 100
    seed: int = 0
    pca_dim: Optional[int] = None
    scaling: ScalingKind = "log"
    guided_radius: int = 4
    predict_step: int = 2
    smooth: float = 0.0
    n_trees: int = 10
    augment: tuple[float, ...] = ()
    vit_components: int = 8

    def __post_init__(self) -> None:
        _choice("classifier", self.classifier, get_args(ClassifierKind))
        if not _is_int(self.vit_components) or not 0 <= self.vit_components <= 1024:
            raise ValueError(f"vit_components must be an integer in 0..1024, got {self.vit_components!r}")
        try:
            gammas = tuple(float(g) for g in self.augment)
        except (TypeError, ValueError):
            raise ValueError(f"augment must be a tuple of gamma values, e.g. (0.7, 1.4), got {self.augment!r}") from None
        if any(not (math.isfinite(g) and 0.1 <= g <= 10) or g == 1 for g in gammas) or len(set(gammas)) != len(gammas) \
                or len(gammas) > MAX_AUGMENT:
            raise ValueError(f"augment must hold at most {MAX_AUGMENT} distinct gamma values in [0.1, 10] other than 1, "
                             f"got {self.augment!r}")
        object.__setattr__(self, "augment", gammas)
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in 0..{2**32 - 1}, got {self.seed!r}")
        if self.class_weight not in ("balanced", None):
            raise ValueError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")
        if not (_is_number(self.C) and self.C > 0):
            raise ValueError(f"C must be a positive number, got {self.C!r}")
        if not _is_int(self.max_pixels_per_class) or not 1 <= self.max_pixels_per_class <= 10**9:
            raise ValueError(f"max_pixels_per_class must be a positive integer, got {self.max_pixels_per_class!r}")
        if not _is_int(self.max_iter) or not 1 <= self.max_iter <= 100_000:
            raise ValueError(f"max_iter must be an integer in [1, 100000], got {self.max_iter!r}")
        _choice("scaling", self.scaling, get_args(ScalingKind))
        if not _is_int(self.n_trees) or not 1 <= self.n_trees <= 1000:
            raise ValueError(f"n_trees must be an integer in [1, 1000], got {self.n_trees!r}")
        if not (_is_number(self.smooth) and 0 <= self.smooth <= 16):
            raise ValueError(f"smooth must be a number of pixels in [0, 16], got {self.smooth!r}")
        if not isinstance(self.guided_radius, int) or isinstance(self.guided_radius, bool) \
                or not 0 <= self.guided_radius <= 32:
            raise ValueError(f"guided_radius must be an integer number of pixels in [0, 32], got {self.guided_radius!r}")
        if not _is_int(self.predict_step) or not 1 <= self.predict_step <= 8:
            raise ValueError(f"predict_step must be an integer number of pixels in [1, 8], got {self.predict_step!r}")
        if self.pca_dim is not None and (not _is_int(self.pca_dim) or not 1 <= self.pca_dim <= 4096):
            raise ValueError(f"pca_dim must be a positive integer or None, got {self.pca_dim!r}")
