"""The inputs of a run of ``dinoseg apply`` (or ``dinoseg measure``): which files (and OME-Zarr
directories) they are, and what identifies one.

Used by :mod:`napari_dinoseg.batch` and :mod:`napari_dinoseg.measure_report`; imports neither.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

from .ngff import is_zarr_image, zarr_node_type
from .reading import IMAGE_SUFFIXES

#: The keys of :func:`source_record`, as an output's metadata holds them.
SOURCE_KEYS = ("source", "source_size", "source_mtime_ns")
#: The metadata files of a zarr store (v3, and v2's) that :func:`input_stat` reads.
ZARR_METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup")


def find_inputs(inputs: Union[str, os.PathLike, Sequence]) -> tuple[list[Path], list[tuple[str, str]]]:
    """A folder (its entries), a glob pattern, a file, or a list of files -> image files to process.

    An OME-Zarr image directory (or a plain zarr array's, :func:`napari_dinoseg.ngff.is_zarr_image`)
    is an input like a file: given alone it is that input, not a folder to list.

    Returns
    -------
    files : list of Path
        Regular image files and zarr image directories, sorted for a folder or a glob, in the
        given order for a list, each once.
    unusable : list of (path, reason)
        Entries that are not image files (other sub-folders, broken links, link loops, other
        suffixes), and repeats of a file already listed. Hidden names (``.*``) are left out.

    Raises
    ------
    ValueError
        When a single path or pattern names nothing at all.
    """
    if isinstance(inputs, (list, tuple)):
        candidates = [Path(p) for p in inputs]
    else:
        text = str(inputs)
        path = Path(text)
        if path.is_dir() and not is_zarr_image(path):
            candidates = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        elif os.path.lexists(text):
            candidates = [path]
        else:
            candidates = sorted(Path(p) for p in glob.glob(text))
            if not candidates:
                raise ValueError(f"no input files: {text!r} is neither a folder, a file nor a glob pattern that matches")
    files, unusable, seen = [], [], {}
    for path in candidates:
        reason = _unusable(path)
        if reason is None:
            key = os.path.realpath(path)
            if key in seen:
                reason = f"the same file as {seen[key]}, listed twice"
            else:
                seen[key] = str(path)
        (files.append(path) if reason is None else unusable.append((str(path), reason)))
    return files, unusable


def _unusable(path: Path) -> Optional[str]:
    """Why ``path`` is not an image file to process, or ``None``."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except FileNotFoundError:
            return "a broken symbolic link (its target does not exist)"
        except (RuntimeError, OSError):
            return "a symbolic link loop"
    if not os.path.lexists(path):
        return "no such file"
    if path.is_dir():
        if is_zarr_image(path):
            return None
        return "a folder, not an image file nor an OME-Zarr image (sub-folders are not searched)"
    if not path.is_file():
        return "not a regular file (a device, pipe or socket)"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file (expected {', '.join(IMAGE_SUFFIXES)})"
    return None


class StoreStat(NamedTuple):
    """What :func:`input_stat` reports of a zarr directory, with ``os.stat_result``'s names."""

    st_dev: int
    st_ino: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int


def input_stat(path: Path) -> Union[os.stat_result, StoreStat]:
    """An input's ``os.stat``; for a directory (a zarr store) a :class:`StoreStat` of its
    metadata files (:data:`ZARR_METADATA`, of the root and every group and array below it):
    their total size and their latest modification and change times, and the directory's
    device and inode.

    A zarr store is many files; its metadata is what changes when it is written again
    (``zarr.json`` is rewritten when an array is created or its attributes are set) and is a
    few files however large the image, so reading it is cheap. Chunks rewritten in place with
    the same metadata are not seen.

    Raises
    ------
    OSError
        ``path`` cannot be read.
    """
    info = path.stat()
    if not path.is_dir():
        return info
    size = mtime = ctime = 0
    for meta in _zarr_metadata_files(path):
        found = meta.stat()
        size, mtime, ctime = size + found.st_size, max(mtime, found.st_mtime_ns), max(ctime, found.st_ctime_ns)
    return StoreStat(info.st_dev, info.st_ino, size, mtime, ctime)


def _zarr_metadata_files(root: Path) -> list[Path]:
    """The metadata files of the zarr nodes at and below ``root``: groups are descended into,
    arrays are not (what is below an array is its chunks)."""
    found, todo = [], [root]
    while todo:
        node = todo.pop()
        names = [node / name for name in ZARR_METADATA if (node / name).is_file()]
        found += names
        if names and zarr_node_type(node) == "group":
            todo += sorted(p for p in node.iterdir() if p.is_dir() and not p.is_symlink())
    return found


def source_record(path: Path, info=None) -> dict:
    """What identifies an input in its outputs' metadata (:data:`SOURCE_KEYS`: its name, size and
    modification time); ``info``: its :func:`input_stat` as read, now if not given."""
    info = input_stat(path) if info is None else info
    return {"source": path.name, "source_size": info.st_size, "source_mtime_ns": info.st_mtime_ns}


def file_identity(info) -> tuple:
    """What changes when a file is rewritten or replaced (its ctime too: a rewrite that keeps the
    size and the modification time); ``info``: ``os.stat`` or :func:`input_stat`."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns
