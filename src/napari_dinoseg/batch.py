"""Apply a saved classifier to files and folders, locally or on a dask cluster.

Every image is predicted by :meth:`napari_dinoseg.Segmenter.predict_proba` (as in the widget:
same normalisation, tiles, smoothing and CRF) and checked by :meth:`~napari_dinoseg.Segmenter.check`.
Nothing is lost or passed over in silence:

- every input the run was given is done, skipped with a reason (already there, a folder, a
  broken link, not an image file) or failed with a reason;
- inputs whose names would give one output name (``a.tif`` and ``a.png``) get distinct ones
  (``a_tif_labels.tif``, ``a_png_labels.tif``);
- outputs are written atomically with the user's umask, and carry the classifier's and the
  input's fingerprints and the image's warnings: a rerun skips an image only when every output
  it asks for is there, readable and made by this classifier from this input, reports the
  warnings recorded with it again, and refuses to mix in outputs of another classifier;
  temporary files of a killed run are removed;
- a full disk stops the run early, saying how much space is left.
"""

from __future__ import annotations

import glob
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from .atomic import NoSpaceError, clean_stale, write_atomic
from .reading import IMAGE_SUFFIXES, check_axes, read_image

LABEL_SUFFIX = "_labels.tif"
PROBA_SUFFIX = "_proba.tif"
ALREADY_THERE = "already there"
#: Seconds to wait for a dask scheduler to answer.
CONNECT_TIMEOUT = 5


@dataclass
class BatchSummary:
    """What :func:`apply_bundle` did.

    Attributes
    ----------
    done : list of str
        Label images written.
    skipped : list of (input, reason)
        Inputs not processed: outputs already there, or not image files (folders, broken links).
    failed : list of (input, reason)
        Inputs that gave no output, and why.
    warnings : list of (input, message)
        Images unlike the training images (their outputs are written, but doubtful); for
        outputs already there, the warnings recorded with them by the run that wrote them.
    cleaned : list of str
        Temporary files of an interrupted earlier run, removed.
    stopped : str
        Why the run stopped before the end ("" when it did not).
    """

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    cleaned: list = field(default_factory=list)
    stopped: str = ""

    def __str__(self) -> str:
        doubtful = len({path for path, _ in self.warnings})
        there = sum(reason == ALREADY_THERE for _, reason in self.skipped)
        lines = [f"done {len(self.done)}, skipped {len(self.skipped)} ({there} already there), failed {len(self.failed)}"
                 + (f"; {doubtful} with warnings" if doubtful else "")]
        if self.stopped:
            lines.append(f"  stopped early: {self.stopped}")
        lines += [f"  skipped: {path}: {reason}" for path, reason in self.skipped if reason != ALREADY_THERE]
        lines += [f"  failed: {path}: {reason}" for path, reason in self.failed]
        kept = {path for path, reason in self.skipped if reason == ALREADY_THERE}
        lines += [f"  warning: {path}: {message}" + (" (recorded with its output by an earlier run)" * (path in kept))
                  for path, message in self.warnings]
        if self.cleaned:
            lines.append(f"  removed {len(self.cleaned)} temporary file(s) left by an interrupted run")
        return "\n".join(lines)


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


def output_stems(files: Sequence[Path]) -> dict[Path, str]:
    """The output name stem of every input: its stem, or its name with ``_`` for ``.`` where
    two inputs share a stem (compared without case, as on macOS and Windows file systems).

    Raises
    ------
    ValueError
        Two inputs with the same name in different folders, naming the pair.
    """
    by_stem: dict = {}
    for path in files:
        by_stem.setdefault(path.stem.casefold(), []).append(path)
    stems, taken = {}, {}
    for group in by_stem.values():
        for path in group:
            stem = path.stem if len(group) == 1 else path.name.replace(".", "_")
            other = taken.get(stem.casefold())
            if other is not None:
                raise ValueError(f"{str(other)!r} and {str(path)!r} have the same name: their outputs would "
                                 "overwrite each other; rename one, or apply to their folders one at a time")
            taken[stem.casefold()] = path
            stems[path] = stem
    return stems


def check_output_folder(out_dir: Path, inputs: Iterable[Path]) -> None:
    """Refuse an output folder inside an input folder, or one that cannot be written."""
    out = out_dir.resolve()
    for parent in {p.resolve().parent for p in inputs}:
        if out == parent or parent in out.parents:
            raise ValueError(
                f"output folder {str(out_dir)!r} is inside the input folder {str(parent)!r}: outputs would be "
                "read as inputs by the next run; choose a folder outside it"
            )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"output folder {str(out_dir)!r} cannot be written: {err.strerror}") from None


def apply_bundle(
    bundle: Union[str, os.PathLike],
    inputs: Union[str, os.PathLike, Sequence],
    out_dir: Union[str, os.PathLike],
    scheduler=None,
    probabilities: bool = False,
    overwrite: bool = False,
    progress: Optional[Callable[[int, int, str], None]] = None,
    axes: Optional[str] = None,
) -> BatchSummary:
    """Segment every input image with a saved classifier and write a label image per input.

    Parameters
    ----------
    bundle
        Path of a bundle written by :meth:`napari_dinoseg.Segmenter.save` or
        :func:`napari_dinoseg.save_bundle`.
    inputs
        A folder, a glob pattern, a file or a list of files (tif / png / jpg). A TIFF's axes
        are read from its metadata (or ``axes``): every plane of a stack or time series is
        segmented and the output keeps the leading axes. An unnamed axis of 3 or 4 before the
        plane is read as channels for a classifier of that many channels, else as planes with
        a warning (see :mod:`napari_dinoseg.reading`).
    out_dir
        Output folder: ``<stem>_labels.tif`` (uint8 / uint16 / uint32 labels, ``(*lead, H, W)``),
        and with ``probabilities`` ``<stem>_proba.tif`` (float32, ``(*lead, H, W, K)``).
    scheduler
        ``None``: this process. A dask ``Client`` or a scheduler address: the images are
        mapped over the dask.distributed cluster.
    overwrite
        Recompute outputs that already exist (otherwise finished ones are skipped).
    axes
        The axes of the TIFF inputs with that many dimensions (``"ZYX"``, ``"CYX"``, ...),
        replacing their files'; ``None``: each file's own. See
        :func:`napari_dinoseg.reading.read_image`.
    progress
        ``progress(0, total, "")`` once everything is checked and work starts (not called when
        nothing is left to do), then ``progress(done, total, input name)`` after each input;
        may raise to stop.

    Returns
    -------
    BatchSummary

    Raises
    ------
    ValueError
        A bundle that cannot be used (or, run here, whose ViT features have no weights here),
        no inputs, bad ``axes``, an output folder that cannot be written or lies inside an
        input folder, inputs that would write one output name, outputs of
        another classifier in the output folder (without ``overwrite``), or a scheduler that
        does not answer.
    """
    from .bundle import read_bundle

    contents = read_bundle(bundle)  # fail early, here, on a bad bundle
    if scheduler is None:  # a cluster's workers have their own weights folders
        check_weights(contents.features)
    axes = None if axes is None else check_axes(axes)
    bundle_id = fingerprint(bundle)
    files, unusable = find_inputs(inputs)
    if not files:
        shown = "; ".join(f"{Path(p).name}: {r}" for p, r in unusable[:3]) + (" …" if len(unusable) > 3 else "")
        raise ValueError(f"no image files to segment in {str(inputs)!r}" + (f" ({shown})" if unusable else " (it is empty)"))
    out = Path(out_dir)
    check_output_folder(out, files)
    stems = output_stems(files)
    summary = BatchSummary(cleaned=[str(p) for p in clean_stale(out)])
    for path, reason in unusable:
        (summary.failed if reason == "no such file" else summary.skipped).append((path, reason))
    todo, foreign = [], []
    for path in files:
        state, recorded = ("redo", []) if overwrite else _finished(path, out, stems[path], probabilities, bundle_id,
                                                                   axes)
        if state == "done":
            summary.skipped.append((str(path), ALREADY_THERE))
            summary.warnings += [(str(path), message) for message in recorded]
        elif state == "foreign":
            foreign.append(stems[path] + LABEL_SUFFIX)
        else:
            todo.append(path)
    if foreign:
        raise ValueError(f"{len(foreign)} output(s) in {str(out)!r} were made by another classifier or an older "
                         f"version (e.g. {foreign[0]}); choose another output folder, or overwrite them")
    jobs = [(str(p), str(bundle), str(out), probabilities, stems[p], axes) for p in todo]
    # connected here, so that a scheduler that does not answer is refused before work starts
    client = None if scheduler is None else _client(scheduler)
    results = (process_file(*job) for job in jobs) if client is None else _on_dask(client, jobs)
    finished = set()
    try:
        if jobs and progress is not None:
            progress(0, len(jobs), "")  # everything checked: work starts
        for n, (path, status, detail, warnings) in enumerate(results, 1):
            finished.add(path)
            if status == "done":
                summary.done.append(detail)
            else:
                summary.failed.append((path, detail))
            summary.warnings += [(path, message) for message in warnings]
            if status == NO_SPACE:
                summary.stopped = detail
                break
            if progress is not None:
                progress(n, len(todo), Path(path).name)
    finally:
        results.close()
        if client is not None and client is not scheduler:
            client.close()
    summary.failed += [(job[0], "not run: the run stopped early (no space left)") for job in jobs
                       if summary.stopped and job[0] not in finished]
    return summary


def check_weights(features) -> None:
    """Refuse, before work starts, a classifier whose ViT features cannot run here for want of
    weights (about a second at most), saying where to put the file; nothing for classical ones."""
    if not features.uses_vit:
        return
    from .features.registry import find_weights

    try:
        find_weights(features.model, features.weights, hint="or apply the classifier where its weights are")
    except ValueError as err:
        where = " (the file the classifier was trained with: put a copy at that path)" if features.weights else ""
        raise ValueError(f"the classifier's {features.kind} features need {features.model} weights: {err}{where}") \
            from None


def _client(scheduler):
    """The dask ``Client`` given, or one connected to the scheduler address given."""
    from dask.distributed import Client

    return scheduler if isinstance(scheduler, Client) else connect(scheduler)


def _on_dask(client, jobs: list):
    """Yield ``process_file`` results as the cluster finishes them; cancel the rest when closed."""
    from dask.distributed import as_completed

    futures = client.map(process_file, *zip(*jobs), pure=False) if jobs else []
    try:
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.cancel([f for f in futures if not f.done()])


def connect(address: str):
    """A dask ``Client`` of the scheduler at ``address``; ``ValueError`` when it does not answer
    within ``CONNECT_TIMEOUT`` seconds."""
    from dask.distributed import Client

    if not isinstance(address, str):
        raise TypeError(f"scheduler must be a dask Client or an address such as 'tcp://host:8786', got "
                        f"{type(address).__name__}")
    try:
        return Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as err:
        raise ValueError(f"cannot reach a dask scheduler at {address!r} within {CONNECT_TIMEOUT} s "
                         f"({type(err).__name__}: {err}); is it running, and is the address right?") from None


def fingerprint(path: Union[str, os.PathLike]) -> str:
    """16 hex digits of the SHA-256 of a file's bytes: which classifier made an output."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _source(path: Path) -> dict:
    info = path.stat()
    return {"source": path.name, "source_size": info.st_size, "source_mtime_ns": info.st_mtime_ns}


def _finished(path: Path, out: Path, stem: str, probabilities: bool, bundle_id: str,
              axes: Optional[str] = None) -> tuple[str, list]:
    """``("done", warnings recorded with the labels)`` when every output the run asks for exists,
    is readable, was made by this classifier from this input as it is now, read with the same
    ``axes``, and records its warnings; ``("foreign", [])`` when one was made by another
    classifier (or carries no fingerprint); ``("redo", [])`` otherwise (an older version's
    output, without the record of its warnings, included: a rerun could not vouch for it)."""
    wanted = [stem + LABEL_SUFFIX] + ([stem + PROBA_SUFFIX] if probabilities else [])
    recorded = None
    for name in wanted:
        target = out / name
        if not target.is_file():
            return "redo", []
        try:
            meta = output_metadata(target)
        except Exception:  # unreadable (truncated by another tool): ours to rewrite
            return "redo", []
        if meta.get("dinoseg_bundle") != bundle_id:
            return "foreign", []
        if {k: meta.get(k) for k in ("source", "source_size", "source_mtime_ns")} != _source(path):
            return "redo", []  # the input changed since
        if meta.get("axes_given") != axes:
            return "redo", []  # read with other axes
        warnings = meta.get("warnings")
        if not (isinstance(warnings, list) and all(isinstance(w, str) for w in warnings)):
            return "redo", []
        recorded = warnings if recorded is None else recorded  # the labels' (the first wanted)
    return "done", recorded


_SEGMENTERS: dict = {}
NO_SPACE = "no space"


def process_file(path: str, bundle: str, out_dir: str, probabilities: bool,
                 stem: Optional[str] = None, axes: Optional[str] = None) -> tuple[str, str, str, list]:
    """Segment one file: ``(input, "done", output, warnings)``, ``(input, "failed", reason, [])``,
    or ``(input, "no space", message, [])`` when the output disk is full.

    Runs anywhere (this process or a dask worker): it loads the bundle itself, once per
    process and bundle content, and never raises for a bad input. ``axes``: as in
    :func:`apply_bundle`.
    """
    from .segmenter import Segmenter

    try:
        bundle_id = fingerprint(bundle)
        if (bundle, bundle_id) not in _SEGMENTERS:
            _SEGMENTERS.clear()
            _SEGMENTERS[(bundle, bundle_id)] = Segmenter.load(bundle)
        seg = _SEGMENTERS[(bundle, bundle_id)]
        source = Path(path)
        image = read_image(source, seg.n_channels, axes=axes)
        labels, probas, warnings = [], [], []
        planes = image.planes
        for i, plane in enumerate(planes):
            proba = seg.predict_proba(plane)
            labels.append(seg.to_labels(proba))
            where = f"plane {i}: " if len(planes) > 1 else ""
            warnings += [where + message for message in seg.check(plane, proba)]
            if probabilities:
                probas.append(proba)
        warnings += list(image.notes)
        meta = {"dinoseg_bundle": bundle_id, **_source(source), "classes": seg.classes.tolist(),
                "warnings": [str(w) for w in warnings],  # reported again by a rerun that skips the image
                "axes_given": axes, "channels": seg.n_channels}  # how to read the input as it was read here
        lead, axes = image.lead_shape, image.lead_axes
        stem = stem or source.stem
        if probabilities:  # the labels last: an image is finished when every output is there
            _write_tiff(Path(out_dir) / (stem + PROBA_SUFFIX), np.stack(probas).reshape(*lead, *probas[0].shape),
                        {**meta, "axes": axes + "YXC"})
        else:  # never leave another classifier's probabilities beside these labels
            _remove_if_foreign(Path(out_dir) / (stem + PROBA_SUFFIX), bundle_id)
        target = Path(out_dir) / (stem + LABEL_SUFFIX)
        _write_tiff(target, np.stack(labels).reshape(*lead, *labels[0].shape), {**meta, "axes": axes + "YX"})
        return path, "done", str(target), warnings
    except NoSpaceError as err:
        return path, NO_SPACE, err.strerror or str(err), []
    except Exception as err:  # a bad input is reported, never fatal for the run
        return path, "failed", f"{type(err).__name__}: {err}", []


def output_metadata(path: Path) -> dict:
    """What an output TIFF says of itself: classifier fingerprint, input, classes, the image's
    warnings, the axes given and the channel count the input was read with, the output's axes
    ({} if nothing)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tif.shaped_metadata[0] if tif.shaped_metadata else {}


def _remove_if_foreign(path: Path, bundle_id: str) -> None:
    """Remove an output of this project made by another classifier (``overwrite``)."""
    if path.is_file():
        meta = output_metadata(path)
        if "dinoseg_bundle" in meta and meta["dinoseg_bundle"] != bundle_id:
            path.unlink()


def _write_tiff(target: Path, array: np.ndarray, metadata: dict) -> None:
    import tifffile

    write_atomic(target, lambda tmp: tifffile.imwrite(tmp, array, metadata=metadata, photometric="minisblack"),
                 size_hint=array.nbytes)
