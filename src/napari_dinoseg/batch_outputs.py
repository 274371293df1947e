"""A batch run's output files: written (atomically, recording their pixel data's checksum and
their own size, never over an output of another classifier) and checked by a rerun (finished:
whole, made by this classifier from this input as it is now)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import write_atomic
from .inputs import SOURCE_KEYS, source_record
from .outputs import LABEL_SUFFIX, PROBA_SUFFIX, output_metadata


OLDER = ("was written by an older version of napari-dinoseg, which recorded no size to check it by: recomputed, "
         "as it may be incomplete")


def _finished(path: Path, out: Path, stem: str, probabilities: bool, bundle_id: str,
              axes: Optional[str] = None, verify: bool = False) -> tuple[str, list, str]:
    """Whether ``path``'s outputs are finished: ``(state, warnings recorded with the labels, why
    they are recomputed)``.

    ``"done"`` when every output the run asks for exists, was made by this classifier from this
    input as it is now, read with the same ``axes``, records its warnings, and is whole: its
    size is the size recorded in it when it was written (and with ``verify`` its pixel data's
    checksum the one recorded). ``"foreign"`` when one was made by another classifier (or
    carries no fingerprint). ``"redo"`` otherwise, with the reason where an output was there
    (unreadable, cut short, of an older version, of an input changed since, read with other
    axes). Raises ``OSError`` when an output cannot be looked at (the caller fails that input).
    """
    wanted = [stem + LABEL_SUFFIX] + ([stem + PROBA_SUFFIX] if probabilities else [])
    recorded = None
    for name in wanted:
        target = out / name
        if not target.is_file():
            return "redo", [], ""
        try:
            meta = output_metadata(target)
        except Exception as err:  # unreadable (truncated by another tool): ours to rewrite
            return "redo", [], f"its output {name} could not be read ({type(err).__name__}): recomputed"
        if meta.get("dinoseg_bundle") != bundle_id:
            return "foreign", [], ""
        if {k: meta.get(k) for k in SOURCE_KEYS} != source_record(path):
            return "redo", [], "its input changed since its output was written: recomputed"
        if meta.get("axes_given") != axes:
            return "redo", [], "its output was read with other axes: recomputed"
        warnings = meta.get("warnings")
        if not (isinstance(warnings, list) and all(isinstance(w, str) for w in warnings)):
            return "redo", [], f"its output {OLDER}"
        damage = _damage(target, meta, verify)
        if damage:
            return "redo", [], f"its output {damage}" if damage == OLDER else f"its output {name} {damage}"
        recorded = warnings if recorded is None else recorded  # the labels' (the first wanted)
    return "done", recorded, ""


def _damage(target: Path, meta: dict, verify: bool) -> str:
    """Why an output is not whole as written ("" when it is): its size against the size it
    records, and with ``verify`` its pixel data against the checksum it records."""
    written = meta.get("file_bytes")
    if not (isinstance(written, str) and written.isdigit()):
        return OLDER
    size = target.stat().st_size
    if size != int(written):
        return (f"is {size} bytes, not the {int(written)} written ({'cut short' if size < int(written) else 'changed'})"
                ": recomputed")
    if verify:
        import tifffile

        try:
            same = _checksum(tifffile.imread(target)) == meta.get("data_sha256")
        except Exception as err:
            return f"could not be read whole ({type(err).__name__}): recomputed"
        if not same:
            return "does not hold the pixel data written (its checksum differs): recomputed"
    return ""


class ForeignOutputError(ValueError):
    """An output of another classifier appeared where this run writes."""


def _refuse_foreign(target: Path, bundle_id: str, overwrite: bool) -> None:
    """Raise when ``target`` is now an output of another classifier (one written since the run
    looked at the folder: a run that did not hold the folder's lock); unless ``overwrite``."""
    if overwrite or not target.is_file():
        return
    try:
        meta = output_metadata(target)
    except Exception:  # unreadable: ours to rewrite
        return
    if meta.get("dinoseg_bundle") != bundle_id:
        raise ForeignOutputError(f"{target.name} was written meanwhile by another classifier (fingerprint "
                                 f"{meta.get('dinoseg_bundle')}), by a run that did not hold the folder's lock; "
                                 "it was not replaced")


def _remove_if_foreign(path: Path, bundle_id: str) -> None:
    """Remove an output of this project made by another classifier (``overwrite``, or a leftover
    beside labels this run writes); an unreadable one is left alone."""
    if path.is_file():
        try:
            meta = output_metadata(path)
        except Exception:
            return
        if "dinoseg_bundle" in meta and meta["dinoseg_bundle"] != bundle_id:
            path.unlink()


#: Placeholder of an output's size in its metadata, replaced once the file is written.
_SIZE_FIELD = '"file_bytes": "{:012d}"'


def _checksum(array: np.ndarray) -> str:
    """32 hex digits of the SHA-256 of an array's values (little-endian, C order)."""
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return hashlib.sha256(data.view(np.uint8).reshape(-1)).hexdigest()[:32]


def _write_tiff(target: Path, array: np.ndarray, metadata: dict, check=None,
                pixel_size: Optional[float] = None) -> str:
    """Write an output atomically, recording in its metadata its pixel data's byte count and
    checksum and the file's own size (what a rerun checks it by); returns the checksum.
    ``check``: as in :func:`~napari_dinoseg.atomic.write_atomic`. ``pixel_size`` (µm): written
    in the resolution tags too (pixels per cm), for other readers."""
    import tifffile

    meta = {"file_bytes": "0" * 12, "data_bytes": int(array.nbytes), "data_sha256": _checksum(array), **metadata}
    resolution = {} if pixel_size is None else {"resolution": (1e4 / pixel_size, 1e4 / pixel_size),
                                                "resolutionunit": "CENTIMETER"}

    def write(tmp: Path) -> None:
        tifffile.imwrite(tmp, array, metadata=meta, photometric="minisblack", **resolution)
        _record_size(tmp)

    write_atomic(target, write, size_hint=array.nbytes, check=check)
    return meta["data_sha256"]


def _record_size(path: Path) -> None:
    """Put the file's size in place of the placeholder in its description (same length)."""
    import tifffile

    size = path.stat().st_size
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["ImageDescription"]
        offset, count = tag.valueoffset, tag.count
    placeholder, value = _SIZE_FIELD.format(0).encode(), _SIZE_FIELD.format(size).encode()
    with open(path, "r+b") as f:
        f.seek(offset)
        at = f.read(count).find(placeholder)
        if at < 0:
            raise RuntimeError(f"{path.name}: the size placeholder is not in its description")
        f.seek(offset + at)
        f.write(value)
