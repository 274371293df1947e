"""Writing a classifier bundle: :func:`save_bundle` (atomically; re-exported by
:mod:`napari_dinoseg.bundle`). The format is :mod:`napari_dinoseg.bundle_format`'s."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import write_atomic
from .bundle_format import ARRAYS, FOREST_PREFIX, FORMAT, FORMAT_VERSION, OPTIONAL_ARRAYS, PathLike, _versions
from .classify import PixelClassifier
from .config import CRFConfig, FeatureConfig, TrainConfig
from .distribution_shift import TrainingStatistics


def save_bundle(path: PathLike, clf: PixelClassifier, config: FeatureConfig, n_channels: Optional[int] = None,
                channel_names: Optional[tuple] = None, *, training: Optional[TrainConfig] = None,
                crf: Optional[CRFConfig] = None, statistics: Optional[TrainingStatistics] = None,
                pixel_size: Optional[float] = None, spacing=None) -> Path:
    """Write ``clf`` and the FeatureConfig that made its features to ``path`` (atomically).

    Parameters
    ----------
    path
        Output file (any extension; ``.dinoseg`` by convention).
    clf
        A fitted classifier.
    config
        The (resolved) feature configuration of the training features.
    n_channels
        Image channels the features came from (checked when the bundle is applied);
        inferred from the feature count when omitted (pass it for RGB ViT features, whose
        count equals a greyscale image's).
    channel_names
        Names of the feature channels, stored for reference.
    training, crf, statistics
        The rest of a :class:`~napari_dinoseg.Segmenter`: training config (rebuilt from the
        classifier when omitted), dense CRF config (``None``: off), training statistics.
    pixel_size, spacing
        µm per pixel of the training images, stored as ``pixel_size_um``; ``(dz, dy, dx)`` of the
        training volumes of a 3-D classifier, stored as ``spacing`` (``None``: unknown).

    Raises
    ------
    ValueError
        A ``pixel_size`` that is not a positive finite number, a config that does not make the
        classifier's features, a folder that does not exist.
    """
    from .config import config_or_default
    from .features.featurise import n_features
    from .pixel_scale import checked_pixel_size
    from .volume import checked_spacing

    if not isinstance(clf, PixelClassifier):
        raise TypeError(f"clf must be a fitted PixelClassifier, got {type(clf).__name__}")
    if not isinstance(config, FeatureConfig):
        raise TypeError(f"config must be the FeatureConfig the features were made with, got {type(config).__name__}")
    pixel_size, spacing = checked_pixel_size(pixel_size), checked_spacing(spacing)
    if crf is not None:
        config_or_default(crf, CRFConfig, "crf")
    if training is not None:
        config_or_default(training, TrainConfig, "training")
    if not Path(path).absolute().parent.is_dir():
        raise ValueError(f"cannot save the bundle: the folder {str(Path(path).absolute().parent)!r} does not exist")
    if n_channels is None:  # the smallest channel count giving this many features
        n_channels = next((c for c in range(1, 17) if n_features(config, c) == clf.n_features), None)
    if n_channels is None or n_features(config, n_channels) != clf.n_features:
        raise ValueError(
            f"the classifier has {clf.n_features} features, which this FeatureConfig does not produce "
            f"for {n_channels} image channel(s); save it with the config its features were made with"
        )
    if training is None:
        training = TrainConfig(classifier="logistic" if clf.forest is None else "logistic+trees",
                               scaling=clf.scaling, smooth=clf.smooth, guided_radius=clf.guided_radius,
                               vit_components=0 if clf.tree_components is None else len(clf.tree_components),
                               predict_step=clf.predict_step)
    meta = {
        "format": FORMAT,
        "training_config": training.to_dict(),
        "crf_config": None if crf is None else crf.to_dict(),
        "statistics": None if statistics is None else statistics.to_dict(),
        "format_version": FORMAT_VERSION,
        "feature_config": config.to_dict(),
        "n_features": clf.n_features,
        "n_channels": n_channels,
        "classes": clf.classes.tolist(),
        "scaling": clf.scaling,
        "smooth": clf.smooth,
        "guided_radius": clf.guided_radius,
        "guide": list(clf.guide), "guide_laplacian": list(clf.guide_laplacian),
        "linear": list(clf.linear),
        "tree_channels": None if clf.tree_channels is None else list(clf.tree_channels),
        "classifier": "logistic" if clf.forest is None else "logistic+trees",
        "channel_names": list(channel_names) if channel_names else None,
        "pixel_size_um": pixel_size,
        "spacing": None if spacing is None else list(spacing),
        "versions": _versions(),
    }
    arrays = io.BytesIO()
    forest = {} if clf.forest is None else {FOREST_PREFIX + k: v for k, v in clf.forest.arrays().items()}
    optional = {name: getattr(clf, name) for name in OPTIONAL_ARRAYS if getattr(clf, name) is not None}
    np.savez(arrays, **{name: getattr(clf, name) for name in ARRAYS}, **optional, **forest)
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("bundle.json", json.dumps(meta, indent=2))
            zf.writestr("arrays.npz", arrays.getvalue())

    return write_atomic(Path(path).absolute(), write, size_hint=len(arrays.getvalue()))
