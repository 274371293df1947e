"""Apply a saved classifier to files and folders, locally or on a dask cluster.

Every image is predicted by :meth:`napari_dinoseg.Segmenter.predict_proba` (as in the widget:
same normalisation, tiles, smoothing and CRF) and checked by :meth:`~napari_dinoseg.Segmenter.check`.
Nothing is lost or passed over in silence:

- every input the run was given is done, skipped with a reason (already there, a folder, a
  broken link, not an image file) or failed with a reason;
- inputs whose names would give one output name (``a.tif`` and ``a.png``) get distinct ones
  (``a_tif_labels.tif``, ``a_png_labels.tif``);
- a run holds its output folder (``dinoseg.lock``, :mod:`napari_dinoseg.folder_lock`): a second
  run there is refused, naming the first; the bundle is read once, so every output of a run
  comes from one classifier, whatever happens to the file meanwhile;
- outputs are written atomically with the user's umask, flushed to the disk, and carry the
  classifier's and the input's fingerprints, the image's warnings, and their own size and
  checksum: a rerun skips an image only when every output it asks for is there, whole (its
  size as written), made by this classifier from this input, reports the warnings recorded
  with it again, and refuses to mix in outputs of another classifier; an output is never
  written over one of another classifier that appeared meanwhile; temporary files of a killed
  run are removed;
- an input is segmented as it was read: one that changes while it is read or segmented is done
  again (or fails, saying so), never recorded with the new file's identity;
- inputs whose names are too long for an output name get a shortened one (and a note);
- a full disk stops the run early, saying how much space is left.

With ``measure`` (:class:`~napari_dinoseg.measure_report.MeasureOptions`), each image is measured
where it is segmented (a record beside the outputs, ``measurements/images/<stem>.json``), and at
the end of the run the tables and plots of every label output in the folder are written to
``measurements/`` (:func:`napari_dinoseg.measure_report.measure_outputs`).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from .atomic import NoSpaceError, check_writable, clean_stale, name_max, shorten, write_atomic
from .cluster import CONNECT_TIMEOUT, ClusterLost, connect, prepare, release, run_jobs  # noqa: F401
from .folder_lock import FolderLock
from .inputs import SOURCE_KEYS, file_identity, find_inputs, source_record
from .outputs import LABEL_SUFFIX, PROBA_SUFFIX, output_metadata  # re-exported
from .pixel_size import pixel_size_of
from .reading import check_axes, read_image

if TYPE_CHECKING:
    from .measure_report import MeasureOptions, Report

ALREADY_THERE = "already there"


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
    notes : list of (path, message)
        What the run did that is neither a failure nor a warning: outputs found and recomputed
        (cut short, of an older version, of an input changed since), output names shortened,
        the folder's lock taken over from a killed run (the path is then the output folder).
    measurements : Report or None
        With ``measure``: the tables and plots written
        (:class:`~napari_dinoseg.measure_report.Report`); ``None`` without, or when the run
        stopped early.
    """

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    cleaned: list = field(default_factory=list)
    stopped: str = ""
    notes: list = field(default_factory=list)
    measurements: Optional["Report"] = None

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
        by_message: dict = {}
        for path, message in self.notes:
            by_message.setdefault(message, []).append(path)
        for message, paths in by_message.items():  # one line for many alike (an older version's outputs)
            lines += ([f"  note: {path}: {message}" for path in paths] if len(paths) <= 3 else
                      [f"  note: {len(paths)} inputs ({paths[0]}, {paths[1]}, ...): {message}"])
        if self.measurements is not None:
            lines.append(str(self.measurements))
        return "\n".join(lines)


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
    by_stem: dict = {}
    for path in files:
        by_stem.setdefault(path.stem.casefold(), []).append(path)
    stems, taken = {}, {}
    room = name_limit - max(len(LABEL_SUFFIX), len(PROBA_SUFFIX))
    for group in by_stem.values():
        for path in group:
            stem = _fit(path.stem if len(group) == 1 else path.name.replace(".", "_"), room)
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
    return stem not in (path.stem, path.name.replace(".", "_"))


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


def apply_bundle(
    bundle: Union[str, os.PathLike],
    inputs: Union[str, os.PathLike, Sequence],
    out_dir: Union[str, os.PathLike],
    scheduler=None,
    probabilities: bool = False,
    overwrite: bool = False,
    progress: Optional[Callable[[int, int, str], None]] = None,
    axes: Optional[str] = None,
    verify: bool = False,
    measure: Optional["MeasureOptions"] = None,
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
        mapped over the dask.distributed cluster, their paths made absolute; see
        :mod:`napari_dinoseg.cluster` for what is checked first and how long each wait lasts.
        A cluster lost mid-run stops the run (``BatchSummary.stopped``).
    overwrite
        Recompute outputs that already exist (otherwise finished ones are skipped).
    verify
        Read every output already there whole and compare its pixel data's checksum with the
        one recorded when it was written (otherwise its size is compared, which finds an output
        cut short but not one damaged in place).
    axes
        The axes of the TIFF inputs with that many dimensions (``"ZYX"``, ``"CYX"``, ...),
        replacing their files'; ``None``: each file's own. See
        :func:`napari_dinoseg.reading.read_image`.
    progress
        ``progress(0, total, "")`` once everything is checked and work starts (not called when
        nothing is left to do), then ``progress(done, total, input name)`` after each input;
        may raise to stop.
    measure
        :class:`~napari_dinoseg.measure_report.MeasureOptions`: measure each image as it is
        segmented, then write the tables and plots of every label output in the folder to
        ``out_dir/measurements/`` (``BatchSummary.measurements``; outputs that cannot be
        measured are in ``failed``). Not when the run stops early. ``None``: no measurements.

    Returns
    -------
    BatchSummary

    Raises
    ------
    ValueError
        A bundle that cannot be used (or, run here, whose ViT features have no weights here),
        no inputs, bad ``axes``, an output folder that cannot be written or is (or lies inside)
        an input folder, inputs that would write one output name, an output folder in use by
        another run (:class:`~napari_dinoseg.folder_lock.FolderBusyError`), outputs of another
        classifier in the output folder (without ``overwrite``), or a scheduler that does not
        answer, has no workers, or whose workers cannot see the files.
    """
    from .measure_report import MeasureOptions

    if measure is not None and not isinstance(measure, MeasureOptions):
        raise TypeError(f"measure must be a MeasureOptions (napari_dinoseg.measure_report) or None, got "
                        f"{type(measure).__name__}")
    seg, bundle_id = load_classifier(bundle)  # read once: fails early on a bad bundle; every output is of this one
    if scheduler is None:  # a cluster's workers have their own weights folders
        check_weights(seg.features)
    axes = None if axes is None else check_axes(axes)
    files, unusable = find_inputs(inputs)
    if not files:
        shown = "; ".join(f"{Path(p).name}: {r}" for p, r in unusable[:3]) + (" …" if len(unusable) > 3 else "")
        raise ValueError(f"no image files to segment in {str(inputs)!r}" + (f" ({shown})" if unusable else " (it is empty)"))
    out = Path(out_dir)
    check_output_folder(out, files)
    stems = output_stems(files, name_max(out))
    with FolderLock(out, bundle, bundle_id) as lock:  # one run per folder, from the look at its outputs to the end
        return _apply_locked(bundle, bundle_id, files, unusable, stems, out, scheduler, probabilities, overwrite,
                             progress, axes, verify, lock.note, measure)


def _apply_locked(bundle, bundle_id: str, files: list, unusable: list, stems: dict, out: Path, scheduler,
                  probabilities: bool, overwrite: bool, progress, axes: Optional[str], verify: bool,
                  lock_note: str, measure=None) -> BatchSummary:
    """:func:`apply_bundle` once the output folder is this run's."""
    summary = BatchSummary(cleaned=[str(p) for p in clean_stale(out)])
    if lock_note:
        summary.notes.append((str(out), lock_note))
    for path, reason in unusable:
        (summary.failed if reason == "no such file" else summary.skipped).append((path, reason))
    todo = _to_do(summary, files, stems, out, probabilities, overwrite, bundle_id, axes, verify)
    jobs = [(str(p), str(bundle), str(out), probabilities, stems[p], axes, bundle_id, overwrite, measure)
            for p in todo]
    _run(summary, jobs, scheduler, progress)
    if measure is not None and not summary.stopped:  # the tables of every label output now in the folder
        from .measure_report import measure_outputs

        try:
            summary.measurements = measure_outputs(out, measure, inputs={stems[p]: p for p in files})
        except NoSpaceError as err:
            summary.stopped = f"writing the measurements: {err.strerror or err}"
        else:
            summary.failed += summary.measurements.failed
    if measure is not None and summary.measurements is None:
        summary.notes.append((str(out), "no measurements written: the run stopped early; a rerun measures every "
                                        "label output in the folder"))
    return summary


def _to_do(summary: BatchSummary, files: list, stems: dict, out: Path, probabilities: bool, overwrite: bool,
           bundle_id: str, axes: Optional[str], verify: bool) -> list:
    """The inputs to segment: those whose outputs are not finished (or all, with ``overwrite``);
    the others go to ``summary`` as skipped or failed, with notes. Raises ValueError when outputs
    of another classifier are in the folder (without ``overwrite``)."""
    todo, foreign = [], []
    for path in files:
        if _shortened(path, stems[path]):
            summary.notes.append((str(path), f"its name is too long for an output name: written as "
                                             f"{stems[path]}{LABEL_SUFFIX} (its labels record its name)"))
        try:
            state, recorded, why = ("redo", [], "") if overwrite else _finished(
                path, out, stems[path], probabilities, bundle_id, axes, verify)
        except OSError as err:  # this input's outputs cannot be looked at: this input fails, not the run
            summary.failed.append((str(path), f"its output cannot be checked: {err.strerror or err}"))
            continue
        if state == "done":
            summary.skipped.append((str(path), ALREADY_THERE))
            summary.warnings += [(str(path), message) for message in recorded]
        elif state == "foreign":
            foreign.append(stems[path] + LABEL_SUFFIX)
        else:
            todo.append(path)
            if why:
                summary.notes.append((str(path), why))
    if foreign:
        raise ValueError(f"{len(foreign)} output(s) in {str(out)!r} were made by another classifier or an older "
                         f"version (e.g. {foreign[0]}); choose another output folder, or overwrite them")
    return todo


def _run(summary: BatchSummary, jobs: list, scheduler, progress) -> None:
    """Run the jobs here or on the cluster, recording each result in ``summary``; a full disk or
    a lost cluster stops the run, and the jobs not finished fail with the reason."""
    # connected here, so that a scheduler that does not answer, has no workers, or whose workers
    # cannot see the files is refused before work starts (napari_dinoseg.cluster)
    client = None if scheduler is None else prepare(scheduler, jobs)
    results = (process_file(*job) for job in jobs) if client is None else run_jobs(client, jobs, process_file)
    finished, stop = set(), ""  # stop: the reason given to the jobs not finished
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
                summary.stopped, stop = detail, "not run: the run stopped early (no space left)"
                break
            if progress is not None:
                progress(n, len(jobs), Path(path).name)
    except ClusterLost as lost:  # the scheduler, or every worker, gone mid-run
        summary.stopped, stop = str(lost), lost.unfinished
    finally:
        results.close()
        release(client, scheduler)
    summary.failed += [(job[0], stop) for job in jobs if stop and job[0] not in finished]


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


NO_SPACE = "no space"
#: Reads of an input that keeps changing before it fails.
READ_ATTEMPTS = 3


def process_file(path: str, bundle: str, out_dir: str, probabilities: bool, stem: Optional[str] = None,
                 axes: Optional[str] = None, bundle_id: Optional[str] = None,
                 overwrite: bool = False, measure: Optional["MeasureOptions"] = None) -> tuple[str, str, str, list]:
    """Segment one file: ``(input, "done", output, warnings)``, ``(input, "failed", reason, [])``,
    or ``(input, "no space", message, [])`` when the output disk is full.

    Runs anywhere (this process or a dask worker) and never raises for a bad input. The
    classifier is the one of fingerprint ``bundle_id`` (loaded once per process; an image fails
    if the bundle file now holds another); ``None``: whatever the file holds. The input is
    segmented again when it changes while it is read or segmented (and fails after
    ``READ_ATTEMPTS``); its outputs record its identity as it was read. An output is not
    written over one of another classifier (unless ``overwrite``). ``axes``: as in
    :func:`apply_bundle`.

    The label output records the pixel size (``pixel_size_um``, ``pixel_size_from``, and the
    TIFF resolution tags in cm): ``measure.pixel_size`` when given, else the input's metadata's
    (:func:`napari_dinoseg.pixel_size.pixel_size_of`). With ``measure`` each plane is measured
    (:func:`napari_dinoseg.measure_report.measure_plane`, with the image and the probabilities)
    and the record ``measurements/images/<stem>.json`` is written once the labels are.
    """
    from functools import partial

    try:
        seg, bundle_id = _classifier(bundle, bundle_id)
        source = Path(path)
        for attempt in range(READ_ATTEMPTS):
            before = source.stat()
            try:
                size_um, size_from, size_note = _pixel_size(source, measure)
                image, labels, probas, warnings, measured = _segment(seg, source, axes, probabilities, measure,
                                                                     size_um)
            except Exception:
                if attempt + 1 < READ_ATTEMPTS and file_identity(source.stat()) != file_identity(before):
                    continue  # read while it was being written: read it again
                raise
            if file_identity(source.stat()) == file_identity(before):
                break
        else:
            return path, "failed", (f"the input changed while it was segmented, {READ_ATTEMPTS} times: it is being "
                                    "written; run again once it is"), []
        meta = {"dinoseg_bundle": bundle_id, **source_record(source, before), "classes": seg.classes.tolist(),
                "warnings": [str(w) for w in warnings],  # reported again by a rerun that skips the image
                "axes_given": axes, "channels": seg.n_channels,  # how to read the input as it was read here
                "pixel_size_um": size_um, "pixel_size_from": size_from}
        lead, axes = image.lead_shape, image.lead_axes
        stem = stem or source.stem
        check = partial(_refuse_foreign, bundle_id=bundle_id, overwrite=overwrite)
        if probabilities:  # the labels last: an image is finished when every output is there
            _write_tiff(Path(out_dir) / (stem + PROBA_SUFFIX), np.stack(probas).reshape(*lead, *probas[0].shape),
                        {**meta, "axes": axes + "YXC"}, check)
        else:  # never leave another classifier's probabilities beside these labels
            _remove_if_foreign(Path(out_dir) / (stem + PROBA_SUFFIX), bundle_id)
        target = Path(out_dir) / (stem + LABEL_SUFFIX)
        checksum = _write_tiff(target, np.stack(labels).reshape(*lead, *labels[0].shape),
                               {**meta, "axes": axes + "YX"}, check, pixel_size=size_um)
        if measure is not None:
            from .measure_report import image_record, write_record

            record = image_record(measured, image=source.name, labels=target.name, data_sha256=checksum,
                                  options=measure, pixel_size=size_um, pixel_size_from=size_from,
                                  classifier=bundle_id, source=source_record(source, before),
                                  notes=[size_note] if size_note else [])
            write_record(out_dir, stem, record)
        return path, "done", str(target), warnings
    except NoSpaceError as err:
        return path, NO_SPACE, err.strerror or str(err), []
    except Exception as err:  # a bad input is reported, never fatal for the run
        return path, "failed", f"{type(err).__name__}: {err}", []


def _segment(seg, source: Path, axes: Optional[str], probabilities: bool, measure=None,
             pixel_size: Optional[float] = None):
    """``(image, label planes, probability planes, warnings, measured)`` of one input file;
    ``measured``: each plane's ``(fractions, objects)`` tables with ``measure`` (and
    ``pixel_size``), else empty."""
    from .memory import file_memory  # a file that would not fit is refused before it is decoded

    image = read_image(source, seg.n_channels, axes=axes,
                       memory=lambda shape, n: file_memory(seg, shape, n, probabilities))
    labels, probas, warnings, measured = [], [], [], []
    planes = image.planes
    for i, plane in enumerate(planes):
        proba = seg.predict_proba(plane)
        labels.append(seg.to_labels(proba))
        where = f"plane {i}: " if len(planes) > 1 else ""
        warnings += [where + message for message in seg.check(plane, proba)]
        if probabilities:
            probas.append(proba)
        if measure is not None:
            from .measure_report import measure_plane

            found = measure_plane(labels[-1], measure, image=plane, proba=proba, classes=seg.classes,
                                  pixel_size=pixel_size)
            measured.append((found.fractions, found.objects))  # the tables only, not the object images
    return image, labels, probas, warnings + list(image.notes), measured


def _pixel_size(source: Path, measure) -> tuple[Optional[float], str, str]:
    """``(µm per pixel or None, where from, note)`` of an input: the one given, else its metadata's."""
    if measure is not None and measure.pixel_size is not None:
        return measure.pixel_size, "given", ""
    found = pixel_size_of(source)
    return (None, "none", "") if found is None else (found.um, f"input: {found.source}", found.note)


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
