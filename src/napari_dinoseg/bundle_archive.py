"""Reading a bundle's zip archive, bounded: ``bundle.json`` parsed and ``arrays.npz``'s arrays
read, every size the zip directories and ``.npy`` headers declare checked against the limits
below before anything is inflated or allocated, and no pickle ever loaded.

A file that is not a readable bundle raises :class:`_Refusal` (made by :func:`_refuse`), whose
text :func:`napari_dinoseg.bundle.read_bundle` puts after the file's name; what the members say
is checked in :mod:`napari_dinoseg.bundle_checks`.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import reprlib
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np

from .atomic import format_bytes
from .bundle_format import ARRAYS, FOREST_PREFIX, FORMAT, OPTIONAL_ARRAYS

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
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # linear time
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


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


def _text(err: BaseException) -> str:
    """An error's message, cut to ``MAX_REASON`` characters (a hostile file can make it huge)."""
    text = str(err) or type(err).__name__
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."
