"""The inputs of a run of ``dinoseg apply`` (or ``dinoseg measure``): which files they are, and
what identifies one.

Used by :mod:`napari_dinoseg.batch` and :mod:`napari_dinoseg.measure_report`; imports neither.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Optional, Sequence, Union

from .reading import IMAGE_SUFFIXES

#: The keys of :func:`source_record`, as an output's metadata holds them.
SOURCE_KEYS = ("source", "source_size", "source_mtime_ns")


def find_inputs(inputs: Union[str, os.PathLike, Sequence]) -> tuple[list[Path], list[tuple[str, str]]]:
    """A folder (its entries), a glob pattern, a file, or a list of files -> image files to process.

    Returns
    -------
    files : list of Path
        Regular image files, sorted for a folder or a glob, in the given order for a list,
        each once.
    unusable : list of (path, reason)
        Entries that are not image files (sub-folders, broken links, link loops, other
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
        if path.is_dir():
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
        return "a folder, not an image file (sub-folders are not searched)"
    if not path.is_file():
        return "not a regular file (a device, pipe or socket)"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file (expected {', '.join(IMAGE_SUFFIXES)})"
    return None


def source_record(path: Path, info: Optional[os.stat_result] = None) -> dict:
    """What identifies an input in its outputs' metadata (:data:`SOURCE_KEYS`: its name, size and
    modification time); ``info``: its ``os.stat`` as read, now if not given."""
    info = path.stat() if info is None else info
    return {"source": path.name, "source_size": info.st_size, "source_mtime_ns": info.st_mtime_ns}


def file_identity(info: os.stat_result) -> tuple:
    """What changes when a file is rewritten or replaced (its ctime too: a rewrite that keeps the
    size and the modification time)."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns
