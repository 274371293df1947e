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
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import reprlib
import stat
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Union

import numpy as np

from .atomic import format_bytes, write_atomic
from .classify import MAX_LABEL, PixelClassifier
from .config import CRFConfig, FeatureConfig, TrainConfig
from .forest import forest_from_arrays
from .image import MAX_CHANNELS
from .shift import TrainingStatistics

FORMAT = "napari-dinoseg-bundle"
#: 2: the classifier's feature scaling, probability smoothing and trees are stored (format 1
#: bundles load as a standard-scaled logistic regression without smoothing, as they were trained).
#: 3: the guided filter's radius and guide channels (format 2 bundles load without it).
#: 4: the whole :class:`~napari_dinoseg.Segmenter`: training and CRF configs, training statistics,
#: and the feature config's intensity normalisation (older bundles load with ``"legacy"``, the
#: rule they were trained with).
#: 5: the classifier's linear (ViT) channels, the trees' own channels and their ViT components
#: (older bundles: none; their trees read every channel, ``vit_components=0``).
#: 6: the lattice step of the classifier's prediction (``predict_step``; older bundles: 1, every pixel).
#: 7: ``resize="stretch"`` is torch's ``nearest-exact`` (older bundles' ``"stretch"`` loads as
#: ``"stretch-floor"``, the rule they were trained with); the ViT facet, layer and positional
#: embedding rule (older bundles: the last block's tokens, timm's resampling).
#: 8: the training statistics hold the training pixels' feature distribution, that of the
#: contrast-inverted training images and the classifier's confidence on them (the shift report's
#: feature, inversion and confidence checks; older bundles load without them and check intensities only).
FORMAT_VERSION = 8
ARRAYS = ("coef", "intercept", "classes", "mean", "scale")
#: Arrays only some classifiers have.
OPTIONAL_ARRAYS = ("tree_components",)
FOREST_PREFIX = "forest_"
PathLike = Union[str, os.PathLike]

#: Most bytes a bundle may inflate to: its members together, and the arrays inside its
#: ``arrays.npz`` together, as the zip directories and ``.npy`` headers declare them (checked
#: before anything is inflated or allocated). Bundles of the default ``logistic+trees``
#: classifier on classical features of a 512 x 512 image inflate to 16 KiB (brush strokes),
#: 126 KiB (every pixel labelled) and 20 MiB (three classes of labels unrelated to the image:
#: the largest trees it grows); the cap is 50 times the largest. Reading a bundle takes at most
#: about twice this much memory.
MAX_BUNDLE_BYTES = 1 << 30
#: Most bytes ``bundle.json`` may inflate to (a real one: 4 KiB, plus about 0.4 KiB of training
#: statistics per training image and channel, plus the feature distribution: 16 KiB for a classical
#: classifier, growing with the feature count); parsing takes up to about 25 times this much memory.
MAX_JSON_BYTES = 4 << 20
#: Deepest nesting of lists and objects in ``bundle.json`` (a real one nests 6 deep).
MAX_JSON_DEPTH = 32
#: Most members of a bundle's zip archive, and of its ``arrays.npz`` (a real one: 2 and 12).
MAX_MEMBERS = 64
#: Largest zip directory (``zipfile`` reads it whole on opening), of a bundle and of its ``arrays.npz``.
MAX_DIRECTORY_BYTES = 1 << 20
#: Longest quoted message of a library or config error in a refusal.
MAX_REASON = 300

_EOCD, _EOCD_LOCATOR, _EOCD_SIGNATURE = 22, 20, b"PK\x05\x06"  # zip end record, ZIP64 locator
_ENCRYPTED_OR_PATCHED = 0x1 | 0x20 | 0x40  # zip general-purpose flag bits
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, OverflowError, ValueError, struct.error,
               NotImplementedError)
_ARRAY_ERRORS = _ZIP_ERRORS + (TypeError,)
_CONFIG_ERRORS = (ValueError, TypeError, KeyError, OverflowError, AttributeError)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # linear time
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


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
    #: What was decided in reading it, for the user (a device this machine lacks replaced).
    notes: tuple = ()


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
    from .config import config_or_default
    from .features.featurise import n_features

    if not isinstance(clf, PixelClassifier):
        raise TypeError(f"clf must be a fitted PixelClassifier, got {type(clf).__name__}")
    if not isinstance(config, FeatureConfig):
        raise TypeError(f"config must be the FeatureConfig the features were made with, got {type(config).__name__}")
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
        "guide": list(clf.guide),
        "linear": list(clf.linear),
        "tree_channels": None if clf.tree_channels is None else list(clf.tree_channels),
        "classifier": "logistic" if clf.forest is None else "logistic+trees",
        "channel_names": list(channel_names) if channel_names else None,
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


class _Refusal(Exception):
    """Why a file is not a (readable) bundle; the text follows the file's name."""


def _refuse(reason: str) -> _Refusal:
    return _Refusal(f"is not a valid napari-dinoseg bundle: {reason}")


def _read_members(path: Path, with_arrays: bool) -> tuple[dict, Optional[bytes]]:
    """``bundle.json`` parsed and ``arrays.npz`` as bytes (``None`` unless ``with_arrays``),
    their sizes checked in the zip directory before either is read."""
    with _open_regular(path) as f:
        if f.read(1) == b"\x80":
            raise _Refusal("is a pickle file; bundles never hold pickles (it was not loaded)")
        try:
            _check_directory(f, os.fstat(f.fileno()).st_size, "it")
            with zipfile.ZipFile(f) as zf:
                members = _members(zf, "its zip archive")
                if not {"bundle.json", "arrays.npz"} <= members.keys():
                    raise _Refusal(f"is not a napari-dinoseg bundle (it holds {sorted(members)[:5]}, "
                                   "not bundle.json and arrays.npz)")
                meta_info, arrays_info = members["bundle.json"], members["arrays.npz"]
                if meta_info.file_size > MAX_JSON_BYTES:
                    raise _refuse(f"its bundle.json inflates to {format_bytes(meta_info.file_size)}, more than the "
                                  f"{format_bytes(MAX_JSON_BYTES)} a bundle's may (MAX_JSON_BYTES)")
                if meta_info.file_size + arrays_info.file_size > MAX_BUNDLE_BYTES:
                    raise _refuse(f"it inflates to {format_bytes(meta_info.file_size + arrays_info.file_size)}, more "
                                  f"than the {format_bytes(MAX_BUNDLE_BYTES)} a bundle may (MAX_BUNDLE_BYTES)")
                meta = _parse_json(_read_member(zf, meta_info))
                raw = _read_member(zf, arrays_info) if with_arrays else None
        except _ZIP_ERRORS as err:
            raise _refuse(f"its zip archive is corrupt ({_text(err)})") from None
    if meta.get("format") != FORMAT:
        raise _Refusal(f"is not a napari-dinoseg bundle (format {reprlib.repr(meta.get('format'))})")
    return meta, raw


def _open_regular(path: Path) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file (never blocking on a pipe)."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise _refuse("it is a directory")
        if not stat.S_ISREG(mode):
            raise _refuse("it is not a regular file (a device, pipe or socket)")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise _Refusal("does not exist (no such bundle file)") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        raise _refuse(f"it cannot be read ({getattr(err, 'strerror', None) or err})") from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the check above
        f.close()
        raise _refuse("it is not a regular file")
    return f


def _check_directory(f: BinaryIO, size: int, what: str) -> None:
    """Refuse a zip archive whose central directory (read whole by ``zipfile``) is larger than
    ``MAX_DIRECTORY_BYTES``, or that needs ZIP64 (a bundle never does), from its end record
    (found as ``zipfile`` finds it)."""
    tail = min(size, _EOCD_LOCATOR + _EOCD + 0xFFFF)
    f.seek(size - tail)
    data = f.read(tail)
    at = len(data) - _EOCD if data[-_EOCD:-_EOCD + 4] == _EOCD_SIGNATURE and data[-2:] == b"\0\0" \
        else data.rfind(_EOCD_SIGNATURE, _EOCD_LOCATOR if size > tail else 0)
    if at < 0 or len(data) - at < _EOCD:
        raise _refuse(f"{what} is not a zip archive (corrupt or foreign file)")
    if at >= _EOCD_LOCATOR and data[at - _EOCD_LOCATOR:at - _EOCD_LOCATOR + 4] == b"PK\x06\x07":
        raise _refuse(f"{what} is a ZIP64 archive, which a bundle never needs")
    directory = struct.unpack("<I", data[at + 12:at + 16])[0]
    if directory > MAX_DIRECTORY_BYTES:
        raise _refuse(f"{what} has a zip directory of {format_bytes(directory)}, more than the "
                      f"{format_bytes(MAX_DIRECTORY_BYTES)} a bundle's may (MAX_DIRECTORY_BYTES)")
    f.seek(0)


def _members(zf: zipfile.ZipFile, what: str) -> dict[str, zipfile.ZipInfo]:
    """The members of ``zf`` by name: few, distinct, stored or deflated, not encrypted."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise _refuse(f"{what} holds {len(infos)} members, more than a bundle's {MAX_MEMBERS} (MAX_MEMBERS)")
    names = [info.filename for info in infos]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise _refuse(f"{what} holds two members named {twice[0]!r}")
    for info in infos:
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _refuse(f"{what} holds {info.filename!r} compressed with method {info.compress_type}; "
                          "bundles are stored or deflated")
        if info.flag_bits & _ENCRYPTED_OR_PATCHED:
            raise _refuse(f"{what} holds {info.filename!r} encrypted or patched, which bundles never are")
    return dict(zip(names, infos))


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes, never more than its directory entry declares (``zipfile``'s own
    ``read`` may inflate up to 2 GiB at once before truncating)."""
    with zf.open(info) as fh:
        data = fh.read(info.file_size)
    if len(data) != info.file_size:
        raise _refuse(f"its {info.filename} is truncated ({len(data)} of {info.file_size} bytes)")
    return data


def _parse_json(raw: bytes) -> dict:
    """``bundle.json`` parsed: UTF-8, nested at most ``MAX_JSON_DEPTH`` deep (checked before
    parsing, which recurses), strict JSON (no NaN), an object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse("its bundle.json is not UTF-8 text") from None
    if _json_depth(raw) > MAX_JSON_DEPTH:
        raise _refuse(f"its bundle.json nests lists or objects more than {MAX_JSON_DEPTH} deep (MAX_JSON_DEPTH)")
    try:
        meta = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise _refuse(f"its bundle.json is not valid JSON ({_text(err)})") from None
    if not isinstance(meta, dict):
        raise _refuse(f"its bundle.json holds a JSON {_JSON_TYPES.get(type(meta), 'value')}, not an object")
    return meta


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays and objects in JSON text (brackets inside strings skipped)."""
    code = np.frombuffer(_JSON_STRING.sub(b'""', raw), np.uint8)
    opens = (code == ord("[")) | (code == ord("{"))
    closes = (code == ord("]")) | (code == ord("}"))
    return int(np.cumsum(opens.astype(np.int8) - closes.astype(np.int8), dtype=np.int32).max(initial=0))


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


def _read_arrays(raw: bytes) -> tuple[dict, dict]:
    """``(classifier arrays, forest arrays)`` from the bytes of ``arrays.npz``, every size
    checked against the zip directory and ``MAX_BUNDLE_BYTES`` before anything is inflated."""
    try:
        f = io.BytesIO(raw)
        _check_directory(f, len(raw), "its arrays.npz")
        with zipfile.ZipFile(f) as zf:
            members = _members(zf, "its arrays.npz")
            total = sum(info.file_size for info in members.values())
            if total > MAX_BUNDLE_BYTES:
                raise _refuse(f"its arrays.npz inflates to {format_bytes(total)}, more than the "
                              f"{format_bytes(MAX_BUNDLE_BYTES)} a bundle may (MAX_BUNDLE_BYTES)")
            wanted = {name[:-4]: info for name, info in members.items() if name.endswith(".npy")
                      and (name[:-4] in ARRAYS + OPTIONAL_ARRAYS or name.startswith(FOREST_PREFIX))}
            missing = [name for name in ARRAYS if name not in wanted]
            if missing:
                raise _refuse(f"its arrays.npz lacks the array(s) {missing}")
            arrays = {name: _read_npy(zf, info) for name, info in wanted.items()}
    except _ARRAY_ERRORS as err:
        raise _refuse(f"its arrays.npz is corrupt ({_text(err)})") from None
    forest = {name[len(FOREST_PREFIX):]: arrays.pop(name) for name in list(arrays) if name.startswith(FOREST_PREFIX)}
    return arrays, forest


def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member, its header checked first: no objects (pickle), and no more data than
    the member holds (``numpy`` allocates the declared size before reading)."""
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise _refuse(f"its {info.filename} is a .npy file of version {version}, which bundles never use")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
        held = info.file_size - fh.tell()
    if dtype.hasobject:
        raise _refuse(f"its {info.filename} holds Python objects (object arrays are refused: loading them "
                      "would run pickle)")
    if any(n < 0 for n in shape):
        raise _refuse(f"its {info.filename} declares the shape {shape}")
    size = math.prod(shape) * max(dtype.itemsize, 1)
    if size > held:
        raise _refuse(f"its {info.filename} declares a {shape} {dtype} array of {format_bytes(size)}, more than the "
                      f"{format_bytes(held)} it holds")
    with zf.open(info) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _contents(meta: dict, version: int, config: FeatureConfig, arrays: dict, forest_arrays: dict) -> BundleContents:
    """The checked contents; ``ValueError`` (or another config error) says what is wrong."""
    n_channels, n_feat = _count(meta, "n_channels", MAX_CHANNELS), _count(meta, "n_features", None)
    training = _training_config(meta, version)
    crf = None if meta.get("crf_config") is None else CRFConfig.from_dict(_object(meta, "crf_config"))
    guide = meta.get("guide", [])
    if not (isinstance(guide, list) and all(type(i) is int and 0 <= i < n_feat for i in guide)):
        raise ValueError(f"guide channels {reprlib.repr(guide)} are not indices of its {n_feat} features")
    _check_values(arrays, n_feat)
    layout = _tree_layout(meta, arrays, n_feat, training)
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(type(c) is int for c in classes)
                                    and classes == arrays["classes"].tolist()):
        raise ValueError(f"its classes {reprlib.repr(classes)} are not the integers of its arrays")
    clf = PixelClassifier(**arrays, scaling=training.scaling, smooth=float(training.smooth),
                          guided_radius=training.guided_radius, guide=tuple(guide),
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
                          None if names is None else tuple(names))


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


def _text(err: BaseException) -> str:
    """An error's message, cut to ``MAX_REASON`` characters (a hostile file can make it huge)."""
    text = str(err) or type(err).__name__
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."


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
    drift = {k: (v, now.get(k)) for k, v in saved.items() if isinstance(v, str) and now.get(k) and v != now.get(k)}
    if drift:
        text = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in drift.items())
        warnings.warn(f"bundle written with other library versions ({text}); results may differ slightly",
                      UserWarning, stacklevel=3)
