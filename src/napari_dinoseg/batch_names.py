"""Where a batch run's outputs go: the output name of every input (distinct, within the file
system's name limit) and the checks on the output folder (not an input folder, writable)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .atomic import check_writable, shorten
from .outputs import LABEL_SUFFIX, PROBA_SUFFIX


def output_stems(files: Sequence[Path], name_limit: int = 255) -> dict[Path, str]:
    """The output name stem of every input: its stem, or its name with ``_`` for ``.`` where
    two inputs share a stem (compared without case, as on macOS and Windows file systems); cut
    short, with ``~`` and 8 hex digits of a hash of the whole stem, where ``<stem>_labels.tif``
    would be longer than ``name_limit`` bytes (the output file system's name limit).

    Raises
    ------
    ValueError
        Two inputs with the same name in different folders, naming the pair.
    """
    from .batch_zarr import ZARR_PROBA_SUFFIX, partial_path, store_stem
    from .ngff import is_zarr_image

    by_stem: dict = {}
    zarr = {path: is_zarr_image(path) for path in files}
    for path in files:
        by_stem.setdefault((store_stem(path) if zarr[path] else path.stem).casefold(), []).append(path)
    stems, taken = {}, {}
    room = name_limit - max(len(LABEL_SUFFIX), len(PROBA_SUFFIX))
    store_room = name_limit - len(partial_path(Path(ZARR_PROBA_SUFFIX)).name)  # the longest name of a store's
    for group in by_stem.values():
        for path in group:
            own = store_stem(path) if zarr[path] else path.stem
            stem = _fit(own if len(group) == 1 else path.name.replace(".", "_"), store_room if zarr[path] else room)
            other = taken.get(stem.casefold())
            if other is not None:
                raise ValueError(f"{str(other)!r} and {str(path)!r} have the same name: their outputs would "
                                 "overwrite each other; rename one, or apply to their folders one at a time")
            taken[stem.casefold()] = path
            stems[path] = stem
    return stems


def _fit(stem: str, room: int) -> str:
    """``stem``, or where longer than ``room`` bytes its start + ``~`` + 8 hex digits of its hash."""
    if len(os.fsencode(stem)) <= room:
        return stem
    tag = "~" + hashlib.sha256(os.fsencode(stem)).hexdigest()[:8]
    return shorten(stem, room - len(tag)) + tag


def _shortened(path: Path, stem: str) -> bool:
    from .batch_zarr import store_stem

    return stem not in (path.stem, path.name.replace(".", "_"), store_stem(path))


def check_output_folder(out_dir: Path, inputs: Iterable[Path]) -> None:
    """Refuse an output folder that is an input folder or lies inside one (compared as folders:
    device and inode, so a symbolic link or a bind mount of the input folder is found), or one
    that cannot be written."""
    given = Path(os.path.abspath(out_dir))
    chain = {given, *given.parents, Path(os.path.realpath(given)), *Path(os.path.realpath(given)).parents}
    ours = {}
    for folder in chain:  # the output folder and every folder above it, as given and as resolved
        key = _folder_id(folder)
        if key is not None:
            ours.setdefault(key, folder)
    for parent in {q for p in inputs for q in (Path(os.path.abspath(p)).parent, p.resolve().parent)}:
        key = _folder_id(parent)
        folder = ours.get(key) if key is not None else None
        if folder is None:
            continue
        how = "is the input folder" if folder in (given, Path(os.path.realpath(given))) else "is inside the input folder"
        raise ValueError(
            f"output folder {str(out_dir)!r} {how} {str(parent)!r} (the same folder on disk"
            f"{'' if os.path.realpath(folder) == os.path.realpath(parent) else ', through a link or a mount'}): "
            "outputs would be read as inputs by the next run; choose a folder outside it"
        )
    check_writable(out_dir)


def _folder_id(folder: Path) -> Optional[tuple[int, int]]:
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if info.st_ino else None
