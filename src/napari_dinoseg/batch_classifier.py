"""The classifier of a batch run: the fingerprint of a bundle file, the bundle loaded once per
process (this one or a dask worker) and kept by fingerprint, so that every image of a run is
segmented by the classifier it read at the start, and the check that its ViT weights are here."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from typing import Optional, Union


def check_weights(features) -> None:
    """Refuse, before work starts, a classifier whose ViT features cannot run here for want of
    weights (about a second at most), saying where to put the file; nothing for kinds without weights."""
    from .features.registry import weights_for

    try:
        weights_for(features, hint="or apply the classifier where its weights are")
    except ValueError as err:
        where = " (the file the classifier was trained with: put a copy at that path)" if features.weights else ""
        raise ValueError(f"the classifier's {features.kind} features need {features.model} weights: {err}{where}") \
            from None


def fingerprint(path: Union[str, os.PathLike]) -> str:
    """16 hex digits of the SHA-256 of a file's bytes: which classifier made an output.

    Raises ``ValueError`` for a folder, a device or a pipe (never blocking on one), ``OSError``
    for a file that cannot be read."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{str(path)!r} is not a regular file")
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


#: Classifiers loaded in this process, by fingerprint (the few latest).
_SEGMENTERS: dict = {}
_KEEP = 4
_CACHE_LOCK = threading.Lock()


def load_classifier(bundle: Union[str, os.PathLike]):
    """``(Segmenter, fingerprint)`` of a bundle file, the fingerprint of the very bytes loaded
    (read before and after loading: a file replaced meanwhile is read again); kept for this
    process, so that a run's images are all segmented by the classifier it read at the start.

    Raises
    ------
    ValueError
        A file that is not a usable bundle, or one that kept changing while it was read.
    """
    from .segmenter import Segmenter

    for _ in range(3):
        try:
            before = fingerprint(bundle)
        except (OSError, ValueError):
            before = None  # Segmenter.load says why, below
        with _CACHE_LOCK:
            if before in _SEGMENTERS:
                _SEGMENTERS[before] = _SEGMENTERS.pop(before)  # the latest used last
                return _SEGMENTERS[before], before
        seg = Segmenter.load(bundle)
        if before is not None and fingerprint(bundle) == before:
            with _CACHE_LOCK:
                _SEGMENTERS[before] = seg
                while len(_SEGMENTERS) > _KEEP:
                    del _SEGMENTERS[next(iter(_SEGMENTERS))]
            return seg, before
    raise ValueError(f"the classifier file {str(bundle)!r} kept changing while it was read; run again once it is "
                     "written")


def _classifier(bundle: str, bundle_id: Optional[str]):
    """The run's classifier: the one loaded with fingerprint ``bundle_id`` (from the bundle file
    if this process has not loaded it yet: on a dask worker), never another."""
    with _CACHE_LOCK:
        seg = _SEGMENTERS.get(bundle_id)
    if seg is not None:
        return seg, bundle_id
    seg, found = load_classifier(bundle)
    if bundle_id is not None and found != bundle_id:
        raise ValueError(f"the classifier file {bundle!r} was replaced during the run (fingerprint {found}, the run "
                         f"started with {bundle_id}): not segmented with another classifier; run again")
    return seg, found
