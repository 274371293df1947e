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

This module is the public face and runs the jobs (:func:`apply_bundle`, :func:`process_file`:
a run looks ``process_file`` up here, where a worker preload or a test may replace it); its
pieces, whose names it re-exports: :mod:`~napari_dinoseg.batch_summary` (what a run did),
:mod:`~napari_dinoseg.batch_names` (output names, the output folder's checks),
:mod:`~napari_dinoseg.batch_classifier` (the run's classifier, loaded once per process) and
:mod:`~napari_dinoseg.batch_outputs` (output files written and checked by a rerun).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np

from .atomic import NoSpaceError, clean_stale, name_max
from .batch_classifier import _classifier, check_weights, load_classifier
from .batch_classifier import _SEGMENTERS, fingerprint  # noqa: F401  (re-exported)
from .batch_names import _shortened, check_output_folder, output_stems
from .batch_outputs import _finished, _refuse_foreign, _remove_if_foreign, _write_tiff
from .batch_outputs import OLDER, ForeignOutputError, _checksum, _damage  # noqa: F401  (re-exported)
from .batch_summary import ALREADY_THERE, BatchSummary
from .batch_volume import process_volume, spacing_option
from .batch_zarr import ZARR_LABEL_SUFFIX, finished_store
from .cluster import CONNECT_TIMEOUT, ClusterLost, connect, prepare, release, run_jobs  # noqa: F401
from .folder_lock import FolderLock
from .inputs import file_identity, find_inputs, input_stat, source_record
from .ngff import is_zarr_image
from .outputs import LABEL_SUFFIX, PROBA_SUFFIX, output_metadata  # noqa: F401  (re-exported)
from .pixel_scale import resample_factor
from .pixel_size import pixel_size_of
from .resampling import resample_plane, resample_proba_back, resampled_shape
from .reading import check_axes, read_image

if TYPE_CHECKING:
    from .measure_report import MeasureOptions


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
    resample: bool = False,
    pixel_size: Optional[float] = None,
    output_format: str = "auto",
    level: int = 0,
    spacing: Optional[Sequence[float]] = None,
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
    resample
        Segment each image whose pixel size (``pixel_size``, else its metadata's) and the
        classifier's training pixel size differ (by more than 1 %) at the training
        pixel size: resampled to it (:mod:`napari_dinoseg.resampling`), its probabilities brought
        back linearly to its own shape; the outputs keep the input's shape and pixel size and record
        ``resampled_from_um`` / ``resampled_to_um``. Without it, a pixel size more than 10 % off is a
        warning (:func:`~napari_dinoseg.pixel_scale.pixel_size_warning`). An image of unknown pixel
        size is segmented as it is, with a warning; a classifier that does not record its training
        pixel size is refused.
    pixel_size
        µm per pixel of every input, replacing their metadata's (and ``measure.pixel_size``);
        ``None``: ``measure.pixel_size``, else each input's metadata.
    output_format
        ``"auto"``: OME-Zarr inputs (NGFF 0.4 / 0.5 or plain zarr; level 0) get OME-Zarr outputs,
        ``<stem>_labels.ome.zarr`` (and ``<stem>_proba.ome.zarr``, classes first), NGFF 0.5 with a
        pyramid and the pixel size, written tile by tile with memory bounded by a window, the
        tiles of one image spread over the cluster's workers (:mod:`napari_dinoseg.batch_zarr`);
        other inputs TIFF outputs. ``"zarr"``: every input gets OME-Zarr outputs.
    level
        The resolution level of OME-Zarr inputs that is segmented (0: the finest); its pixel
        size is the one recorded. An input without that level fails, saying which it has.
    spacing
        ``(dz, dy, dx)`` µm per voxel of every input, for a 3-D classifier (``dims=3``), replacing
        their metadata's: each input is then one ``(Z, Y, X)`` volume segmented in 3-D
        (:mod:`napari_dinoseg.batch_volume`). ``None``: each input's metadata, else unknown.

    Returns
    -------
    BatchSummary

    Raises
    ------
    ValueError
        A bundle that cannot be used (or, run here, whose ViT features have no weights here),
        no inputs, bad ``axes``, an output folder that cannot be written or is (or lies inside)
        an input folder, inputs that would write one output name, an output folder in use by
        another run (:class:`~napari_dinoseg.folder_lock.FolderBusyError`), a ``spacing`` that is not three
        positive numbers or is given to a classifier of planes, outputs of another
        classifier in the output folder (without ``overwrite``), or a scheduler that does not
        answer, has no workers, or whose workers cannot see the files.
    """
    from .measure_report import MeasureOptions
    from .pixel_scale import checked_pixel_size

    pixel_size = checked_pixel_size(pixel_size, "the pixel size")
    if not isinstance(level, int) or isinstance(level, bool) or level < 0:
        raise ValueError(f"level is {level!r}: a resolution level of the OME-Zarr inputs, 0 (the finest) or more")
    if output_format not in ("auto", "zarr"):
        raise ValueError(f"output_format is {output_format!r}: 'auto' (OME-Zarr for OME-Zarr inputs, TIFF for the "
                         "others) or 'zarr' (OME-Zarr for every input)")
    if measure is not None and not isinstance(measure, MeasureOptions):
        raise TypeError(f"measure must be a MeasureOptions (napari_dinoseg.measure_report) or None, got "
                        f"{type(measure).__name__}")
    seg, bundle_id = load_classifier(bundle)  # read once: fails early on a bad bundle; every output is of this one
    spacing = spacing_option(seg, spacing)
    if resample and seg.pixel_size is None:
        raise ValueError(f"cannot resample to the training pixel size: {str(bundle)!r} does not record it (trained on "
                         "images without a pixel size, or before it was recorded); apply it without resampling, or "
                         "train it again on images whose pixel size is known")
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
                             progress, axes, verify, lock.note, measure,
                             (bool(resample), pixel_size, output_format, level, spacing))


def _apply_locked(bundle, bundle_id: str, files: list, unusable: list, stems: dict, out: Path, scheduler,
                  probabilities: bool, overwrite: bool, progress, axes: Optional[str], verify: bool,
                  lock_note: str, measure=None, scale: tuple = (False, None, "auto", 0, None)) -> BatchSummary:
    """:func:`apply_bundle` once the output folder is this run's."""
    summary = BatchSummary(cleaned=[str(p) for p in clean_stale(out)])
    if lock_note:
        summary.notes.append((str(out), lock_note))
    for path, reason in unusable:
        (summary.failed if reason == "no such file" else summary.skipped).append((path, reason))
    todo = _to_do(summary, files, stems, out, probabilities, overwrite, bundle_id, axes, verify, *scale[2:4])
    jobs = [(str(p), str(bundle), str(out), probabilities, stems[p], axes, bundle_id, overwrite, measure, *scale)
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
           bundle_id: str, axes: Optional[str], verify: bool, output_format: str = "auto", level: int = 0) -> list:
    """The inputs to segment: those whose outputs are not finished (or all, with ``overwrite``);
    the others go to ``summary`` as skipped or failed, with notes. Raises ValueError when outputs
    of another classifier are in the folder (without ``overwrite``)."""
    todo, foreign = [], []
    for path in files:
        if _shortened(path, stems[path]):
            suffix = ZARR_LABEL_SUFFIX if output_format == "zarr" or is_zarr_image(path) else LABEL_SUFFIX
            summary.notes.append((str(path), f"its name is too long for an output name: written as "
                                             f"{stems[path]}{suffix} (its labels record its name)"))
        try:
            state, recorded, why = ("redo", [], "") if overwrite else (
                finished_store(path, out, stems[path], probabilities, bundle_id, axes, level)
                if output_format == "zarr" or is_zarr_image(path)
                else _finished(path, out, stems[path], probabilities, bundle_id, axes, verify))
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



NO_SPACE = "no space"
#: Reads of an input that keeps changing before it fails.
READ_ATTEMPTS = 3


def process_file(path: str, bundle: str, out_dir: str, probabilities: bool, stem: Optional[str] = None,
                 axes: Optional[str] = None, bundle_id: Optional[str] = None,
                 overwrite: bool = False, measure: Optional["MeasureOptions"] = None, resample: bool = False,
                 pixel_size: Optional[float] = None, output_format: str = "auto",
                 level: int = 0, spacing: Optional[Sequence[float]] = None) -> tuple[str, str, str, list]:
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
    TIFF resolution tags in cm): ``pixel_size`` or ``measure.pixel_size`` when given, else the
    input's metadata's (:func:`napari_dinoseg.pixel_size.pixel_size_of`). ``resample``: as in
    :func:`apply_bundle` (the outputs record ``resampled_from_um`` and ``resampled_to_um``).
    ``output_format``, ``level``: as in :func:`apply_bundle`. A 3-D classifier's input is one volume,
    :func:`~napari_dinoseg.batch_volume.process_volume` (``spacing``: as in :func:`apply_bundle`). With
    ``measure`` each plane is measured
    (:func:`napari_dinoseg.measure_report.measure_plane`, with the image and the probabilities)
    and the record ``measurements/images/<stem>.json`` is written once the labels are.
    """
    try:
        seg, bundle_id = _classifier(bundle, bundle_id)
        source = Path(path)
        if seg.features.dims == 3:  # one (Z, Y, X) volume, segmented in 3-D
            return process_volume(seg, source, Path(out_dir), probabilities, stem, axes, bundle_id, overwrite, spacing,
                                  level, output_format, pixel_size, measure is not None, resample)
        if output_format == "zarr" or is_zarr_image(source):  # written a tile at a time, as OME-Zarr
            from .batch_zarr import process_store

            size_um, size_from, _ = _pixel_size(source, measure, pixel_size, level)
            return process_store(seg, bundle, bundle_id, source, Path(out_dir), probabilities, stem, axes, overwrite,
                                 (size_um, size_from), measure is not None, resample, level)
        for attempt in range(READ_ATTEMPTS):
            before = input_stat(source)
            try:
                size_um, size_from, size_note = _pixel_size(source, measure, pixel_size)
                factor = resample_factor(size_um, seg.pixel_size) if resample else None
                image, labels, probas, warnings, measured = _segment(seg, source, axes, probabilities, measure,
                                                                     size_um, factor)
            except Exception:
                if attempt + 1 < READ_ATTEMPTS and file_identity(input_stat(source)) != file_identity(before):
                    continue  # read while it was being written: read it again
                raise
            if file_identity(input_stat(source)) == file_identity(before):
                if resample and size_um is None:
                    warnings.append("not resampled to the training pixel size: this image's pixel size is unknown "
                                    "(its metadata gives none); give it (--pixel-size, or the apply dock's pixel size)")
                break
        else:
            return path, "failed", (f"the input changed while it was segmented, {READ_ATTEMPTS} times: it is being "
                                    "written; run again once it is"), []
        meta = {"dinoseg_bundle": bundle_id, **source_record(source, before), "classes": seg.classes.tolist(),
                "warnings": [str(w) for w in warnings],  # reported again by a rerun that skips the image
                "axes_given": axes, "channels": seg.n_channels,  # how to read the input as it was read here
                "pixel_size_um": size_um, "pixel_size_from": size_from,
                **({} if factor is None else {"resampled_from_um": size_um, "resampled_to_um": seg.pixel_size})}
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
             pixel_size: Optional[float] = None, factor: Optional[float] = None):
    """``(image, label planes, probability planes, warnings, measured)`` of one input file;
    ``measured``: each plane's ``(fractions, objects)`` tables with ``measure`` (and
    ``pixel_size``), else empty. With ``factor`` each plane is segmented resampled by it (at the
    training pixel size) and its probabilities brought back to its shape."""
    from .memory import file_memory  # a file that would not fit is refused before it is decoded

    image = read_image(source, seg.n_channels, axes=axes,
                       memory=lambda shape, n: file_memory(seg, shape, n, probabilities))
    labels, probas, warnings, measured = [], [], [], []
    planes = image.planes
    for i, plane in enumerate(planes):
        work = plane if factor is None else _resampled(seg, plane, factor)
        proba = seg.predict_proba(work)
        where = f"plane {i}: " if len(planes) > 1 else ""
        warnings += [where + message for message in
                     seg.check(work, proba, pixel_size=pixel_size if factor is None else seg.pixel_size)]
        if factor is not None:
            proba = resample_proba_back(proba, plane.shape)
        labels.append(seg.to_labels(proba))
        if probabilities:
            probas.append(proba)
        if measure is not None:
            from .measure_report import measure_plane

            found = measure_plane(labels[-1], measure, image=plane, proba=proba, classes=seg.classes,
                                  pixel_size=pixel_size)
            measured.append((found.fractions, found.objects))  # the tables only, not the object images
    return image, labels, probas, warnings + list(image.notes), measured


def _resampled(seg, plane: np.ndarray, factor: float) -> np.ndarray:
    """``plane`` resampled by ``factor``, refused first when segmenting it would not fit in memory."""
    from .memory import check_plane_memory

    check_plane_memory(seg, resampled_shape(plane.shape, factor) + plane.shape[2:],
                       what="segmenting at the training pixel size")
    return resample_plane(plane, factor)


def _pixel_size(source: Path, measure, given: Optional[float] = None,
                level: int = 0) -> tuple[Optional[float], str, str]:
    """``(µm per pixel or None, where from, note)`` of an input: the one given, else its metadata's
    (of an OME-Zarr's resolution ``level``)."""
    if given is not None:
        return given, "given", ""
    if measure is not None and measure.pixel_size is not None:
        return measure.pixel_size, "given", ""
    found = pixel_size_of(source)
    if found is not None and level and is_zarr_image(source):  # the level's: level 0's times its downsampling
        from .ngff import open_ngff

        image = open_ngff(source, level)
        um = image.pixel_size_um
        return (None, "none", "") if um is None else (um, f"input: {found.source}, level {level}", found.note)
    return (None, "none", "") if found is None else (found.um, f"input: {found.source}", found.note)
