"""What a bundle's ``bundle.json`` and arrays must say, checked, and older formats migrated:
its format version, its feature and training configs (older formats read with the rules
they were trained with, see :data:`~napari_dinoseg.bundle_format.FORMAT_VERSION`), and the
classifier's arrays against each other and against the feature count its config makes,
gathered into :class:`~napari_dinoseg.bundle_format.BundleContents`.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from typing import Optional

import numpy as np

from .bundle_archive import _JSON_TYPES, _Refusal, _refuse, _text
from .bundle_format import FORMAT_VERSION, BundleContents
from .classify import MAX_LABEL, PixelClassifier
from .config import CRFConfig, FeatureConfig, TrainConfig
from .distribution_shift import TrainingStatistics
from .forest import forest_from_arrays
from .image import MAX_CHANNELS

_CONFIG_ERRORS = (ValueError, TypeError, KeyError, OverflowError, AttributeError)


def _format_version(meta: dict) -> int:
    version = meta.get("format_version", 0)
    if type(version) is not int or version < 0:
        raise _refuse(f"it is corrupt: format_version {reprlib.repr(version)} is not a non-negative integer")
    if version > FORMAT_VERSION:
        raise _Refusal(f"is a napari-dinoseg bundle of format {version}, newer than this version reads "
                       f"({FORMAT_VERSION}); upgrade napari-dinoseg")
    return version


def _feature_config(meta: dict, version: int) -> FeatureConfig:
    try:
        feature_dict = dict(_object(meta, "feature_config"))
        if version < 4:  # trained with the rule of the time
            feature_dict.setdefault("normalise", "legacy")
        feature_dict.setdefault("precision", "float32")  # before the option, ViT features were float32
        if version < 7 and feature_dict.get("resize") == "stretch":  # then torch's legacy nearest
            feature_dict["resize"] = "stretch-floor"
        return FeatureConfig.from_dict(feature_dict)  # an unknown model: the error lists the names
    except _CONFIG_ERRORS as err:
        raise _refuse(f"its feature config is not valid here: {_text(err)}") from None


def _contents(meta: dict, version: int, config: FeatureConfig, arrays: dict, forest_arrays: dict) -> BundleContents:
    """The checked contents; ``ValueError`` (or another config error) says what is wrong."""
    n_channels, n_feat = _count(meta, "n_channels", MAX_CHANNELS), _count(meta, "n_features", None)
    training = _training_config(meta, version)
    crf = None if meta.get("crf_config") is None else CRFConfig.from_dict(_object(meta, "crf_config"))
    guide, second = meta.get("guide", []), meta.get("guide_laplacian", [])
    for what, channels in (("guide", guide), ("second guide", second)):
        if not (isinstance(channels, list) and all(type(i) is int and 0 <= i < n_feat for i in channels)):
            raise ValueError(f"{what} channels {reprlib.repr(channels)} are not indices of its {n_feat} features")
    if second and not guide:
        raise ValueError(f"it has second guide channels {reprlib.repr(second)} but no guide")
    _check_values(arrays, n_feat)
    layout = _tree_layout(meta, arrays, n_feat, training)
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(type(c) is int for c in classes)
                                    and classes == arrays["classes"].tolist()):
        raise ValueError(f"its classes {reprlib.repr(classes)} are not the integers of its arrays")
    clf = PixelClassifier(**arrays, scaling=training.scaling, smooth=float(training.smooth),
                          guided_radius=training.guided_radius, guide=tuple(guide), guide_laplacian=tuple(second),
                          predict_step=training.predict_step, **layout)
    _check(clf, config, n_channels)
    if training.classifier == "logistic+trees":
        clf = dataclasses.replace(clf, forest=forest_from_arrays(forest_arrays, clf.n_tree_features, clf.n_classes))
    statistics = None
    if meta.get("statistics") is not None:
        statistics = TrainingStatistics.from_dict(_object(meta, "statistics"), n_channels, clf.n_classes)
    names = meta.get("channel_names")
    if names is not None and not (isinstance(names, list) and len(names) == n_feat
                                  and all(isinstance(name, str) for name in names)):
        raise ValueError(f"its channel_names are not {n_feat} strings")
    if not isinstance(meta.get("versions", {}), dict):
        raise ValueError("its versions are not a JSON object")
    return BundleContents(clf, config, training, crf, statistics, n_channels,
                          None if names is None else tuple(names), pixel_size=_pixel_size(meta),
                          spacing=_spacing(meta))


def _pixel_size(meta: dict) -> Optional[float]:
    """The training images' µm per pixel, ``pixel_size_um``: a positive finite number, or null
    or absent (unknown; bundles written before it was recorded)."""
    size = meta.get("pixel_size_um")
    if size is None:
        return None
    if type(size) not in (int, float) or not (math.isfinite(size) and size > 0):
        raise ValueError(f"its pixel_size_um {reprlib.repr(size)} is not a positive number of µm per pixel")
    return float(size)


def _spacing(meta: dict) -> Optional[tuple]:
    """The training volumes' ``spacing`` ``(dz, dy, dx)``: three positive finite numbers, or null
    or absent (unknown; plane classifiers, bundles written before volumes)."""
    from .volume import checked_spacing

    spacing = meta.get("spacing")
    if spacing is None:
        return None
    if not isinstance(spacing, list) or any(type(v) not in (int, float) for v in spacing):
        raise ValueError(f"its spacing {reprlib.repr(spacing)} is not three numbers (dz, dy, dx)")
    try:
        return checked_spacing(spacing)
    except ValueError as err:
        raise ValueError(f"its {err}") from None


def _tree_layout(meta: dict, arrays: dict, n_feat: int, training: TrainConfig) -> dict:
    """The classifier's ``linear``, ``tree_channels`` and ``tree_components``, checked against
    each other and ``n_feat`` features (format 5; none before)."""
    linear, tree_channels = meta.get("linear", []), meta.get("tree_channels")
    components = arrays.pop("tree_components", None)

    def indices(value, what: str) -> tuple[int, ...]:
        if not (isinstance(value, list) and all(type(i) is int and 0 <= i < n_feat for i in value)
                and len(set(value)) == len(value)):
            raise ValueError(f"its {what} {reprlib.repr(value)} are not distinct indices of its {n_feat} features")
        return tuple(value)

    layout = {"linear": indices(linear, "linear channels"),
              "tree_channels": None if tree_channels is None else indices(tree_channels, "tree channels"),
              "tree_components": None}
    if set(layout["tree_channels"] or ()) & set(layout["linear"]):
        raise ValueError("its trees read linear channels as they are")
    if components is not None:
        if components.dtype.kind != "f" or components.ndim != 2 or components.shape[1] != len(layout["linear"]) \
                or not np.isfinite(components).all():
            raise ValueError(f"its tree_components array ({components.dtype} {components.shape}) is not finite "
                             f"components of its {len(layout['linear'])} linear channels")
        layout["tree_components"] = components.astype(np.float32)
    expected = training.vit_components if training.classifier == "logistic+trees" and layout["linear"] else 0
    if (components is None) != (expected == 0):
        raise ValueError("its tree components disagree with its training config")
    return layout


def _training_config(meta: dict, version: int) -> TrainConfig:
    """The training config, agreeing with the classifier's own fields (the only source before format 4)."""
    own = (meta.get("classifier", "logistic"), meta.get("scaling", "standard"), meta.get("smooth", 0.0),
           meta.get("guided_radius", 0))
    if version < 4:
        return TrainConfig(classifier=own[0], scaling=own[1], smooth=own[2], guided_radius=own[3], predict_step=1)
    saved = dict(_object(meta, "training_config"))
    if version < 5:  # trained before the ViT channels were read linearly
        saved.setdefault("vit_components", 0)
    if version < 6:  # predicted every pixel
        saved.setdefault("predict_step", 1)
    training = TrainConfig.from_dict(saved)
    if (training.classifier, training.scaling, training.smooth, training.guided_radius) != own:
        raise ValueError("its training config disagrees with its classifier")
    return training


def _object(meta: dict, key: str) -> dict:
    value = meta.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"its {key} is a JSON {_JSON_TYPES.get(type(value), 'value')}, not an object")
    return value


def _count(meta: dict, key: str, top: Optional[int]) -> int:
    """``meta[key]``, an integer in ``1..top``."""
    value = meta.get(key)
    if type(value) is not int or value < 1 or (top is not None and value > top):
        raise ValueError(f"its {key} {reprlib.repr(value)} is not an integer in 1..{top}" if top else
                         f"its {key} {reprlib.repr(value)} is not a positive integer")
    return value


def _check_values(arrays: dict, n_features: int) -> None:
    """Shapes ``coef (K, F)``, ``intercept`` and ``classes (K,)``, ``mean`` and ``scale (F,)`` with
    ``F = n_features``; every number finite, every scale positive, classes distinct positive
    integers that fit a label image (uint32)."""
    coef = arrays["coef"]
    k = coef.shape[0] if coef.ndim == 2 else None
    shapes = {"coef": (k, n_features), "intercept": (k,), "classes": (k,), "mean": (n_features,),
              "scale": (n_features,)}
    for name, shape in shapes.items():
        if k is None or k < 1 or arrays[name].shape != shape:
            raise ValueError(f"its {name} array has the shape {arrays[name].shape}, not that of {n_features} "
                             f"features and {k or 'some'} classes")
    for name in ("coef", "intercept", "mean", "scale"):
        a = arrays[name]
        if a.dtype.kind != "f":
            raise ValueError(f"its {name} array holds {a.dtype} values, not floating-point numbers")
        if not np.isfinite(a).all():
            raise ValueError(f"its {name} array holds non-finite values")
    if (arrays["scale"] <= 0).any():
        raise ValueError("its feature scale holds zero or negative values")
    classes = arrays["classes"]
    if classes.dtype.kind not in "iu" or (classes < 1).any() or (classes > MAX_LABEL).any() \
            or len(np.unique(classes)) != len(classes):
        raise ValueError(f"its classes are not distinct integers in 1..{MAX_LABEL}")


def _check(clf: PixelClassifier, config: FeatureConfig, n_channels: int) -> None:
    """The classifier's feature count is the one ``config`` makes of ``n_channels`` image channels."""
    from .features.featurise import n_features

    expected = n_features(config, n_channels)
    if expected != clf.n_features:
        raise ValueError(
            f"it has a classifier on {clf.n_features} features but its FeatureConfig makes {expected} "
            f"of {n_channels} channel(s); the file was altered or written by an incompatible version"
        )
