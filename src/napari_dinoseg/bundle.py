"""Classifier bundles: one file, no pickle, checked on load.

A bundle is a zip archive holding ``bundle.json`` (format, feature config with its intensity
normalisation, training config, CRF config, training statistics, classes, channel names, image
channel count, package and library versions) and ``arrays.npz`` (coefficients, intercepts,
classes, feature scaling, trees), read back by numpy's ``.npy`` reader with
``allow_pickle=False``: a bundle from a stranger cannot run code. A real mismatch
(corrupt or foreign file, wrong feature count, unknown model) raises ``ValueError`` with
what to do; version drift only warns.

Reading is bounded: before anything is inflated or allocated, the sizes that the zip
directories (of the bundle and of the zip inside it, ``arrays.npz``) and the ``.npy`` headers
declare are checked against :data:`MAX_BUNDLE_BYTES` (1 GiB; a real bundle inflates to
16 KiB..20 MiB, see there) and against the bytes each member really holds, and no member is
read past its declared size. Any file that is not a valid bundle (a directory, a device or
pipe, a zip bomb, malformed JSON or arrays, an out-of-range number) raises ``ValueError``
naming the file and the reason, never another exception.

The code lives in one module per job; this one is the public face (every name below imports
from here: the format's, the limits', the reader's and the writer's) and reads a bundle whole:

- :mod:`napari_dinoseg.bundle_format`: the format, its version history, :class:`BundleContents`;
- :mod:`napari_dinoseg.bundle_archive`: the bounded reading of the zip archive and its arrays,
  and the limits above;
- :mod:`napari_dinoseg.bundle_checks`: what the JSON and arrays must say, older formats migrated;
- :mod:`napari_dinoseg.bundle_write`: :func:`save_bundle`.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

from .bundle_archive import (MAX_BUNDLE_BYTES, MAX_DIRECTORY_BYTES, MAX_JSON_BYTES, MAX_JSON_DEPTH, MAX_MEMBERS,
                             MAX_REASON, _read_arrays, _read_members, _refuse, _Refusal, _text)
from .bundle_checks import _CONFIG_ERRORS, _contents, _count, _feature_config, _format_version
from .bundle_format import (ARRAYS, FOREST_PREFIX, FORMAT, FORMAT_VERSION, OPTIONAL_ARRAYS, BundleContents, PathLike,
                            _versions)
from .bundle_write import save_bundle
from .classify import PixelClassifier
from .config import FeatureConfig
from .image import MAX_CHANNELS

__all__ = ["ARRAYS", "FOREST_PREFIX", "FORMAT", "FORMAT_VERSION", "MAX_BUNDLE_BYTES", "MAX_DIRECTORY_BYTES",
           "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "MAX_MEMBERS", "MAX_REASON", "OPTIONAL_ARRAYS", "BundleContents",
           "PathLike", "bundle_channels", "device_here", "load_bundle", "read_bundle", "save_bundle"]


def load_bundle(path: PathLike) -> tuple[PixelClassifier, FeatureConfig]:
    """Read a bundle; returns ``(classifier, feature config)``. See the module docstring."""
    contents = read_bundle(path)
    return contents.classifier, contents.features


def read_bundle(path: PathLike) -> BundleContents:
    """Read and check everything a bundle holds.

    Raises
    ------
    ValueError
        For a missing file and for any file that is not a valid bundle, saying why (see the
        module docstring); a malformed file never raises anything else.
    """
    path = Path(path)
    try:
        meta, raw = _read_members(path, with_arrays=True)
        version = _format_version(meta)
        config = _feature_config(meta, version)
        arrays, forest_arrays = _read_arrays(raw)
        try:
            contents = _contents(meta, version, config, arrays, forest_arrays)
        except _CONFIG_ERRORS as err:
            raise _refuse(f"it is corrupt: {_text(err)}") from None
    except _Refusal as err:
        raise ValueError(f"{str(path)!r} {err}") from None
    _warn_on_drift(meta.get("versions") or {})
    config, note = device_here(contents.features)
    if note:
        warnings.warn(f"{str(path)!r}: {note}", UserWarning, stacklevel=2)
        contents = dataclasses.replace(contents, features=config, notes=contents.notes + (note,))
    return contents


def device_here(config: FeatureConfig) -> tuple[FeatureConfig, str]:
    """``(config, "")`` when its device exists on this machine; else ``config`` with ``device="auto"``
    and a note saying so. A device is the machine's choice, not the classifier's: a bundle trained
    on a GPU is applied where there is none, on the device ``"auto"`` finds (the same features; the
    stride, shifts and flips stay those it was trained with)."""
    from .features.featurise import resolve_device

    if config.device in ("auto", "cpu"):
        return config, ""
    try:
        resolve_device(config.device)
        return config, ""
    except ValueError:
        here = resolve_device("auto").type
    lacking = {"cuda": "CUDA GPU", "mps": "MPS (Apple GPU) device"}[config.device]
    where = {"cpu": "the CPU", "cuda": "its CUDA GPU", "mps": "its MPS device"}[here]
    return dataclasses.replace(config, device="auto"), (
        f"the classifier was saved with device={config.device!r}, which this machine lacks (no {lacking}): its "
        f"features are computed on {where} instead (device 'auto': the same features"
        f"{', more slowly' * (here == 'cpu')})")


def bundle_channels(path: PathLike) -> int:
    """Image channel count a bundle's classifier expects (reads ``bundle.json`` only).

    Raises
    ------
    ValueError
        As :func:`read_bundle`, for what ``bundle.json`` alone shows.
    """
    path = Path(path)
    try:
        meta, _ = _read_members(path, with_arrays=False)
        _format_version(meta)
        try:
            return _count(meta, "n_channels", MAX_CHANNELS)
        except ValueError as err:
            raise _refuse(f"it is corrupt: {err}") from None
    except _Refusal as err:
        raise ValueError(f"{str(path)!r} {err}") from None


def _warn_on_drift(saved: dict) -> None:
    now = _versions()
    drift = {k: (v, now.get(k)) for k, v in saved.items() if isinstance(v, str) and now.get(k) and v != now.get(k)}
    if drift:
        text = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in drift.items())
        warnings.warn(f"bundle written with other library versions ({text}); results may differ slightly",
                      UserWarning, stacklevel=3)
