"""Classifier bundles: one file, no pickle, checked on load.

A bundle is a zip archive holding ``bundle.json`` (format, feature config with its intensity
normalisation, training config, CRF config, training statistics, classes, channel names, image
channel count, package and library versions) and ``arrays.npz`` (coefficients, intercepts,
classes, feature scaling, trees), read back with
``np.load(allow_pickle=False)``: a bundle from a stranger cannot run code. A real mismatch
(corrupt or foreign file, wrong feature count, unknown model) raises ``ValueError`` with
what to do; version drift only warns.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .classify import PixelClassifier
from .config import CRFConfig, FeatureConfig, TrainConfig
from .forest import forest_from_arrays
from .shift import TrainingStatistics

FORMAT = "napari-dinoseg-bundle"
#: 2: the classifier's feature scaling, probability smoothing and trees are stored (format 1
#: bundles load as a standard-scaled logistic regression without smoothing, as they were trained).
#: 3: the guided filter's radius and guide channels (format 2 bundles load without it).
#: 4: the whole :class:`~napari_dinoseg.Segmenter`: training and CRF configs, training statistics,
#: and the feature config's intensity normalisation (older bundles load with ``"legacy"``, the
#: rule they were trained with).
FORMAT_VERSION = 4
ARRAYS = ("coef", "intercept", "classes", "mean", "scale")
FOREST_PREFIX = "forest_"
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class BundleContents:
    """Everything a bundle holds (see :meth:`napari_dinoseg.Segmenter.load`)."""

    classifier: PixelClassifier
    features: FeatureConfig
    training: TrainConfig
    crf: Optional[CRFConfig]
    statistics: Optional[TrainingStatistics]
    n_channels: int
    channel_names: Optional[tuple[str, ...]]


def save_bundle(path: PathLike, clf: PixelClassifier, config: FeatureConfig, n_channels: Optional[int] = None,
                channel_names: Optional[tuple] = None, *, training: Optional[TrainConfig] = None,
                crf: Optional[CRFConfig] = None, statistics: Optional[TrainingStatistics] = None) -> Path:
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
    """
    from .features.featurise import n_features

    if n_channels is None:  # the smallest channel count giving this many features
        n_channels = next((c for c in range(1, 17) if n_features(config, c) == clf.n_features), None)
    if n_channels is None or n_features(config, n_channels) != clf.n_features:
        raise ValueError(
            f"the classifier has {clf.n_features} features, which this FeatureConfig does not produce "
            f"for {n_channels} image channel(s); save it with the config its features were made with"
        )
    if training is None:
        training = TrainConfig(classifier="logistic" if clf.forest is None else "logistic+trees",
                               scaling=clf.scaling, smooth=clf.smooth, guided_radius=clf.guided_radius)
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
        "guide": list(clf.guide),
        "classifier": "logistic" if clf.forest is None else "logistic+trees",
        "channel_names": list(channel_names) if channel_names else None,
        "versions": _versions(),
    }
    arrays = io.BytesIO()
    forest = {} if clf.forest is None else {FOREST_PREFIX + k: v for k, v in clf.forest.arrays().items()}
    np.savez(arrays, **{name: getattr(clf, name) for name in ARRAYS}, **forest)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".bundle-", dir=path.parent or ".")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("bundle.json", json.dumps(meta, indent=2))
            zf.writestr("arrays.npz", arrays.getvalue())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_bundle(path: PathLike) -> tuple[PixelClassifier, FeatureConfig]:
    """Read a bundle; returns ``(classifier, feature config)``. See the module docstring."""
    contents = read_bundle(path)
    return contents.classifier, contents.features


def read_bundle(path: PathLike) -> BundleContents:
    """Read and check everything a bundle holds; ``ValueError`` says what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"bundle {str(path)!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(1)
    if head == b"\x80":
        raise ValueError(f"{str(path)!r} is a pickle file; bundles never hold pickles (it was not loaded)")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{str(path)!r} is not a napari-dinoseg bundle (not a zip archive: corrupt or foreign file)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if not {"bundle.json", "arrays.npz"} <= names:
                raise ValueError(f"{str(path)!r} is not a napari-dinoseg bundle (it holds {sorted(names)[:5]})")
            meta = json.loads(zf.read("bundle.json"))
            raw = zf.read("arrays.npz")
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"bundle {str(path)!r} is corrupt: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a napari-dinoseg bundle (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"bundle format {version!r} is newer than this napari-dinoseg reads; upgrade")
    try:
        feature_dict = dict(meta["feature_config"])
        if version < 4:  # trained with the rule of the time
            feature_dict.setdefault("normalise", "legacy")
        config = FeatureConfig.from_dict(feature_dict)  # unknown model -> ValueError listing the names
    except (KeyError, TypeError) as err:
        raise ValueError(f"bundle {str(path)!r} is corrupt: no valid feature config ({err})") from None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in ARRAYS}
            forest_arrays = {k[len(FOREST_PREFIX):]: npz[k] for k in npz.files if k.startswith(FOREST_PREFIX)}
    except (ValueError, KeyError, OSError) as err:
        raise ValueError(f"bundle {str(path)!r} has unreadable arrays (object arrays are refused): {err}") from None
    scaling, smooth = meta.get("scaling", "standard"), meta.get("smooth", 0.0)
    radius, guide = meta.get("guided_radius", 0), meta.get("guide", [])
    kind = meta.get("classifier", "logistic")
    try:
        training = TrainConfig.from_dict(meta["training_config"]) if version >= 4 else \
            TrainConfig(classifier=kind, scaling=scaling, smooth=smooth, guided_radius=radius)
        if (training.scaling, training.smooth, training.guided_radius) != (scaling, smooth, radius) \
                or training.classifier != kind:
            raise ValueError("its training config disagrees with its classifier")
        crf = CRFConfig.from_dict(meta["crf_config"]) if meta.get("crf_config") is not None else None
        n_feat = meta.get("n_features")
        if not (isinstance(n_feat, int) and isinstance(guide, list)
                and all(type(i) is int and 0 <= i < n_feat for i in guide)):
            raise ValueError(f"guide channels {guide!r} are not indices of its {n_feat} features")
        _check_values(arrays)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"bundle {str(path)!r} is corrupt: {err}") from None
    clf = PixelClassifier(**arrays, scaling=scaling, smooth=float(smooth), guided_radius=radius, guide=tuple(guide))
    _check(clf, meta, config, path)
    if kind == "logistic+trees":
        try:
            forest = forest_from_arrays(forest_arrays, clf.n_features, clf.n_classes)
        except ValueError as err:
            raise ValueError(f"bundle {str(path)!r} is corrupt: {err}") from None
        clf = dataclasses.replace(clf, forest=forest)
    n_channels = int(meta["n_channels"])
    statistics = None
    if meta.get("statistics") is not None:
        try:
            statistics = TrainingStatistics.from_dict(meta["statistics"], n_channels, clf.n_classes)
        except ValueError as err:
            raise ValueError(f"bundle {str(path)!r} is corrupt: {err}") from None
    _warn_on_drift(meta.get("versions", {}))
    names = meta.get("channel_names")
    return BundleContents(clf, config, training, crf, statistics, n_channels,
                          tuple(names) if isinstance(names, list) else None)


def _check_values(arrays: dict) -> None:
    """Every number finite, every scale positive, classes distinct positive integers."""
    for name in ("coef", "intercept", "mean", "scale"):
        a = arrays[name]
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
            raise ValueError(f"its {name} array holds non-finite or non-float values")
    if (arrays["scale"] <= 0).any():
        raise ValueError("its feature scale holds zero or negative values")
    classes = arrays["classes"]
    if not np.issubdtype(classes.dtype, np.integer) or (classes < 1).any() or len(np.unique(classes)) != len(classes):
        raise ValueError("its classes are not distinct positive integers")


def bundle_channels(path: PathLike) -> int:
    """Image channel count a bundle's classifier expects (without loading its arrays)."""
    with zipfile.ZipFile(path) as zf:
        return int(json.loads(zf.read("bundle.json"))["n_channels"])


def _check(clf: PixelClassifier, meta: dict, config: FeatureConfig, path: Path) -> None:
    from .features.featurise import n_features

    k, f = clf.coef.shape if clf.coef.ndim == 2 else (None, None)
    ok = (
        f == meta["n_features"] and clf.intercept.shape == (k,) and clf.classes.shape == (k,)
        and clf.mean.shape == (f,) and clf.scale.shape == (f,)
    )
    if not ok:
        raise ValueError(f"bundle {str(path)!r} is inconsistent: array shapes do not match its {meta['n_features']} features")
    expected = n_features(config, int(meta["n_channels"]))
    if expected != f:
        raise ValueError(
            f"bundle {str(path)!r} has a classifier on {f} features but its FeatureConfig makes {expected}; "
            "the file was altered or written by an incompatible version"
        )


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("napari-dinoseg", "numpy", "scikit-learn", "torch", "timm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _warn_on_drift(saved: dict) -> None:
    now = _versions()
    drift = {k: (v, now.get(k)) for k, v in saved.items() if v and now.get(k) and v != now.get(k)}
    if drift:
        text = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in drift.items())
        warnings.warn(f"bundle written with other library versions ({text}); results may differ slightly",
                      UserWarning, stacklevel=3)
