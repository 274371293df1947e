"""Measure label image files into CSV tables and plots: the outputs of ``dinoseg apply``, or label
files made anywhere.

The one place where files are measured (``dinoseg apply --measure``, ``dinoseg measure``, the
widgets), each plane with :func:`napari_dinoseg.measure.measure`:

- :func:`measure_files`: label files (TIFF / PNG, one field per plane), with their images for
  intensities, into ``fractions.csv``, ``objects.csv``, ``summary.csv``, ``fractions.png`` and
  ``sizes.png`` in a folder of the caller's choice;
- the outputs of :func:`napari_dinoseg.batch.apply_bundle` with ``measure=``: each image is
  measured where it is segmented (this process or a dask worker, with its image and
  probabilities in memory) into a record ``OUT/measurements/images/<stem>.json``
  (:func:`image_record`, :func:`write_record`); at the end of the run :func:`measure_outputs`
  gathers the records of every label output in the folder into the same five files in
  ``OUT/measurements/``. An output without a record, or whose record is of other pixel data or
  other options, is measured again from its files, and a record whose output is gone is
  removed: the tables always describe the label images in the folder.

Units are in the column names: ``_px`` pixels, ``_um`` µm, ``_um2`` µm²; µm columns appear only
where a pixel size is known (``pixel_size_um`` and ``pixel_size_from`` in ``fractions.csv`` say
which, and from where). The CSV files are plain (one header line), read with ``pandas.read_csv``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from .atomic import check_writable, clean_stale, write_atomic
from .inputs import SOURCE_KEYS, find_inputs, source_record
from .outputs import LABEL_SUFFIX, PROBA_SUFFIX, output_metadata

#: The sub-folder of an ``apply`` output folder that holds the measurements, and that of the records.
MEASUREMENTS, RECORDS = "measurements", "images"
FRACTIONS_CSV, OBJECTS_CSV, SUMMARY_CSV = "fractions.csv", "objects.csv", "summary.csv"
FRACTIONS_PNG, SIZES_PNG = "fractions.png", "sizes.png"
REPORT_FILES = (FRACTIONS_CSV, OBJECTS_CSV, SUMMARY_CSV, FRACTIONS_PNG, SIZES_PNG)
#: Format of the per-image records (a record of another format is measured again).
RECORD_FORMAT = 1
#: Resolution of the PNG plots (dots per inch).
DPI = 150
#: ``pixel_size_from`` of a pixel size given (``--pixel-size``, ``pixel_size=``) and of none.
GIVEN, NO_PIXEL_SIZE = "given", "none"


@dataclass(frozen=True)
class MeasureOptions:
    """How label images are measured (``dinoseg apply --measure``, :func:`measure_files`).

    Attributes
    ----------
    min_size : int
        Objects of fewer pixels are left out of the objects table (not of the fractions).
    split : bool
        Separate touching round objects (see :func:`napari_dinoseg.measure.measure`).
    pixel_size : float or None
        µm per pixel, replacing any the files' metadata give; ``None``: the metadata's.

    Raises
    ------
    ValueError
        A negative or fractional ``min_size``, a ``pixel_size`` that is not a positive finite
        number, a ``split`` that is not a bool.
    """

    min_size: int = 0
    split: bool = False
    pixel_size: Optional[float] = None

    def __post_init__(self) -> None:
        size = self.min_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise ValueError(f"the minimum object size (--min-size, min_size) must be a whole number of pixels >= 0, "
                             f"got {size!r}")
        object.__setattr__(self, "min_size", int(size))
        if not isinstance(self.split, (bool, np.bool_)):
            raise ValueError(f"split must be True or False, got {self.split!r}")
        object.__setattr__(self, "split", bool(self.split))
        if self.pixel_size is not None:
            try:
                value = float(self.pixel_size)
            except (TypeError, ValueError):
                value = float("nan")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"the pixel size (--pixel-size, pixel_size) must be a positive number of µm per "
                                 f"pixel, got {self.pixel_size!r}; leave it out to use the images' metadata")
            object.__setattr__(self, "pixel_size", value)

    def key(self) -> dict:
        """The options as a record stores them (a record of other options is measured again)."""
        return {"min_size": self.min_size, "split": self.split, "pixel_size": self.pixel_size}


@dataclass
class Report:
    """What :func:`measure_outputs` / :func:`measure_files` wrote.

    Attributes
    ----------
    folder : Path
        Where the files are.
    fractions, objects, summary : pandas.DataFrame
        The tables written (``fractions.csv``, ``objects.csv``, ``summary.csv``); empty when
        there was nothing to measure.
    files : list of Path
        The files written.
    measured : list of str
        Outputs measured again from their files (no record, or a record of other pixel data
        or options); ``apply`` only.
    notes : list of (path, message)
        What the user should know: files left out (not an output of ``dinoseg apply``),
        records removed, pixels that are not square, colour files.
    failed : list of (path, message)
        Label outputs that could not be measured (left out of the tables); ``apply`` only.
    """

    folder: Path
    fractions: object = None
    objects: object = None
    summary: object = None
    files: list = field(default_factory=list)
    measured: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    failed: list = field(default_factory=list)

    def __str__(self) -> str:
        if not self.files:
            lines = [f"measurements: no label images to measure; no tables written in {self.folder}"]
        else:
            images = self.fractions["image"].nunique()
            fields = len(self.fractions[["image", "plane"]].drop_duplicates())
            lines = [f"measurements of {images} image(s)" + (f" ({fields} fields)" if fields != images else "")
                     + f" in {self.folder}: " + ", ".join(p.name for p in self.files)]
        if self.measured:
            lines.append(f"  measured again from their label images: {len(self.measured)} output(s) (no record of "
                         "this pixel data with these options)")
        lines += [f"  note: {path}: {message}" for path, message in self.notes]
        if self.summary is not None and len(self.summary):
            lines.append(format_summary(self.summary))
        return "\n".join(lines)


def format_summary(summary) -> str:
    """The summary table for people: label, fields, mean fraction, 95 % interval, objects.

    Parameters
    ----------
    summary : pandas.DataFrame
        What :func:`napari_dinoseg.measure.summary_table` gives.
    """
    rows = [("label", "fields", "mean fraction", "95 % interval", "objects")]
    for row in summary.itertuples(index=False):
        interval = "-" if not np.isfinite(row.ci95_low) else f"{row.ci95_low:.4f} to {row.ci95_high:.4f}"
        rows.append((str(row.label), str(row.images), f"{row.mean_fraction:.4f}", interval, str(row.objects)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


# ---- one image: measured planes -> a record ---------------------------------------------------------


def measure_plane(labels: np.ndarray, options: MeasureOptions, *, image: Optional[np.ndarray] = None,
                  proba: Optional[np.ndarray] = None, classes: Optional[Sequence[int]] = None,
                  pixel_size: Optional[float] = None):
    """One plane measured with ``options`` (:func:`napari_dinoseg.measure.measure`).

    Parameters
    ----------
    labels : (H, W) integer array
    options : MeasureOptions
    image : (H, W) or (H, W, C) array, optional
        For the objects' ``mean_intensity``.
    proba : (H, W, K) float array, optional
        Probabilities of ``classes``: ``expected_fraction`` and ``mean_confidence``.
    classes : sequence of int, optional
        The label values measured as objects (and the columns of ``proba``).
    pixel_size : float, optional
        µm per pixel (the one resolved from ``options`` and the metadata).

    Returns
    -------
    :class:`napari_dinoseg.measure.Measurements`
    """
    from .measure import measure

    return measure(labels, image=image, proba=proba, pixel_size=pixel_size,
                   classes=None if classes is None else [int(c) for c in classes],
                   min_size=options.min_size, split=options.split)


def image_record(planes: Sequence, *, image: str, labels: str, data_sha256: Optional[str], options: MeasureOptions,
                 pixel_size: Optional[float], pixel_size_from: str, classifier: Optional[str] = None,
                 source: Optional[dict] = None, notes: Sequence[str] = ()) -> dict:
    """The record of one label output: its planes' tables, what they were measured with.

    Parameters
    ----------
    planes : sequence of (fractions, objects) DataFrame pairs
        One per plane, in the file's order (leading axes flattened in C order): the tables of
        its :class:`~napari_dinoseg.measure.Measurements` (only the tables are kept: a stack's
        object images would take memory).
    image : str
        The name the tables give the image (the input's file name).
    labels : str
        The label output's file name.
    data_sha256 : str
        The checksum of the label output's pixel data (its metadata's ``data_sha256``): a
        record is used only for the pixel data it was made from.
    options, pixel_size, pixel_size_from
        What it was measured with; ``pixel_size_from``: :data:`GIVEN`, ``"input: <source>"``,
        ``"labels: <source>"`` or :data:`NO_PIXEL_SIZE`.
    classifier : str, optional
        The fingerprint of the classifier that made the labels.
    source : dict, optional
        The identity of the input they were made from, as the label output records it
        (``source, source_size, source_mtime_ns``).
    notes : sequence of str
        For the user, reported with the tables (pixels that are not square).

    Returns
    -------
    dict, JSON-serialisable: ``fractions`` and ``objects`` as ``{"columns": [...], "data":
    [[...], ...]}``, each row with its ``plane`` second (after ``image``, added when gathered).
    """
    import pandas as pd

    tables = {}
    for k, name in enumerate(("fractions", "objects")):
        parts = [pair[k].assign(plane=i) for i, pair in enumerate(planes)]
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        table = table[["plane", *[c for c in table.columns if c != "plane"]]]
        tables[name] = {"columns": [str(c) for c in table.columns],
                        "data": [[_plain(v) for v in row] for row in table.itertuples(index=False)]}
    return {"format": RECORD_FORMAT, "image": image, "labels": labels, "data_sha256": data_sha256,
            "options": options.key(), "pixel_size_um": pixel_size, "pixel_size_from": pixel_size_from,
            "classifier": classifier, "input": source, "notes": list(notes), "planes": len(planes), **tables}


def _tables_of(measurements) -> tuple:
    """``(fractions, objects)`` of a :class:`~napari_dinoseg.measure.Measurements`."""
    return measurements.fractions, measurements.objects


def record_path(out_dir: Union[str, os.PathLike], stem: str) -> Path:
    """Where the record of the label output ``<stem>_labels.tif`` of ``out_dir`` lives."""
    return Path(out_dir) / MEASUREMENTS / RECORDS / f"{stem}.json"


def write_record(out_dir: Union[str, os.PathLike], stem: str, record: dict) -> Path:
    """Write a record atomically (:func:`~napari_dinoseg.atomic.write_atomic`); its folder is made."""
    target = record_path(out_dir, stem)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, allow_nan=True)
    return write_atomic(target, lambda tmp: tmp.write_text(text, encoding="utf-8"), size_hint=len(text))


def _plain(value):
    """A table cell as a JSON value (numpy scalars to Python's; NaN kept)."""
    return value.item() if isinstance(value, np.generic) else value


# ---- a folder of apply outputs -----------------------------------------------------------------------


def measure_outputs(out_dir: Union[str, os.PathLike], options: MeasureOptions, *,
                    inputs: Optional[Mapping[str, Path]] = None) -> Report:
    """Gather the measurements of every label output of ``dinoseg apply`` in ``out_dir``.

    Each ``<stem>_labels.tif`` made by ``dinoseg apply`` (its metadata says so) is taken from its
    record ``measurements/images/<stem>.json`` when that record is of its pixel data (the
    ``data_sha256`` of its metadata) and of ``options``; otherwise it is measured again from the
    label image, with its ``<stem>_proba.tif`` when that was made with it (same classifier and
    input) and with its input's pixels when ``inputs`` has the input and it is unchanged (the
    output records the input's name, size and modification time), and its record is
    rewritten. Records of outputs no longer there are removed. The tables and plots are then
    written to ``out_dir/measurements/`` (:data:`REPORT_FILES`), atomically.

    Pixel size of an output measured again: ``options.pixel_size``; else its input's metadata
    (the input if given and unchanged, else as the output recorded it from its input); else none.

    Parameters
    ----------
    out_dir
        The output folder of ``apply`` (its caller holds the folder's lock).
    options : MeasureOptions
    inputs : mapping of str to Path, optional
        ``{stem: input file}`` of the run's inputs.

    Returns
    -------
    Report
        With ``failed`` the outputs that could not be read (left out of the tables).
    """
    import pandas as pd

    out = Path(out_dir)
    folder = out / MEASUREMENTS
    records = folder / RECORDS
    records.mkdir(parents=True, exist_ok=True)
    for where in (folder, records):
        clean_stale(where)
    report = Report(folder=folder)
    inputs = dict(inputs or {})
    there, gathered = set(), []
    for path in sorted(p for p in out.glob("*" + LABEL_SUFFIX) if not p.name.startswith(".") and p.is_file()):
        stem = path.name[: -len(LABEL_SUFFIX)]
        there.add(stem)
        try:
            meta = output_metadata(path)
        except Exception as err:  # unreadable (cut short by another tool)
            report.failed.append((str(path), f"its metadata cannot be read ({type(err).__name__}: {err}): left out "
                                             "of the measurements"))
            continue
        if "dinoseg_bundle" not in meta:
            report.notes.append((str(path), "not an output of dinoseg apply (no classifier fingerprint in its "
                                            "metadata): not measured"))
            continue
        record = _load_record(records / f"{stem}.json")
        if not _current(record, meta, options):
            try:
                record = _measure_output(path, meta, options, inputs.get(stem), record)
            except (ValueError, OSError) as err:
                report.failed.append((str(path), f"could not be measured ({type(err).__name__}: {err}): left out of "
                                                 "the measurements"))
                continue
            write_record(out, stem, record)
            report.measured.append(str(path))
        report.notes += [(str(path), note) for note in record.get("notes") or ()]
        gathered.append(record)
    for stale in sorted(records.glob("*.json")):
        if stale.stem not in there:
            stale.unlink()
            report.notes.append((str(stale), "its label output is gone: its record was removed"))
    classifiers = {r.get("classifier") for r in gathered}
    if len(classifiers) > 1:
        report.notes.append((str(out), f"the label outputs measured were made by {len(classifiers)} classifiers: "
                                       "their label values may not mean the same classes"))
    fractions, objects = _tables(gathered, pd)
    _write_report(report, fractions, objects)
    return report


def _load_record(path: Path) -> Optional[dict]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _current(record: Optional[dict], meta: dict, options: MeasureOptions) -> bool:
    """Whether ``record`` is of the label output of metadata ``meta``, measured with ``options``."""
    return (record is not None and record.get("format") == RECORD_FORMAT
            and record.get("data_sha256") is not None and record.get("data_sha256") == meta.get("data_sha256")
            and record.get("options") == options.key()
            and isinstance(record.get("image"), str)
            and all(isinstance(record.get(k), dict) and {"columns", "data"} <= set(record[k])
                    for k in ("fractions", "objects")))


def _measure_output(path: Path, meta: dict, options: MeasureOptions, source: Optional[Path],
                    previous: Optional[dict] = None) -> dict:
    """The record of a label output measured from its files (see :func:`measure_outputs`); without
    its probabilities, the expected fractions of ``previous`` (its record of other options) when
    that is of the same pixel data, classifier and input."""
    import tifffile

    from .pixel_size import pixel_size_of
    from .reading import read_image

    labels = np.asarray(tifffile.imread(path))
    planes = labels.reshape(-1, *labels.shape[-2:])
    classes = meta.get("classes")
    proba_path = path.with_name(path.name[: -len(LABEL_SUFFIX)] + PROBA_SUFFIX)
    probas = None
    if proba_path.is_file() and isinstance(classes, list):
        try:
            proba_meta = output_metadata(proba_path)
        except Exception:
            proba_meta = {}
        same = proba_meta.get("dinoseg_bundle") == meta.get("dinoseg_bundle") and \
            all(proba_meta.get(k) == meta.get(k) for k in SOURCE_KEYS)
        if same:
            proba = np.asarray(tifffile.imread(proba_path))
            if proba.shape == (*labels.shape, len(classes)):
                probas = proba.reshape(-1, *proba.shape[-3:])
    unchanged = source is not None and source.is_file() and \
        {k: meta.get(k) for k in SOURCE_KEYS} == source_record(source)
    images = None
    if unchanged:
        image = read_image(source, meta.get("channels"), axes=meta.get("axes_given"))
        if len(image.planes) == len(planes) and image.planes[0].shape[:2] == planes[0].shape:
            images = image.planes
    notes: list = []
    if options.pixel_size is not None:
        size, size_from = options.pixel_size, GIVEN
    else:
        found = pixel_size_of(source) if unchanged else None
        recorded = meta.get("pixel_size_from")
        if found is not None:
            size, size_from, notes = found.um, f"input: {found.source}", [found.note] * bool(found.note)
        elif not unchanged and isinstance(recorded, str) and recorded.startswith("input: "):
            size, size_from = meta.get("pixel_size_um"), recorded
        else:
            size, size_from = None, NO_PIXEL_SIZE
    measured = [_tables_of(measure_plane(plane, options, image=None if images is None else images[i],
                                         proba=None if probas is None else probas[i], classes=classes,
                                         pixel_size=size))
                for i, plane in enumerate(planes)]
    made_from = {k: meta.get(k) for k in SOURCE_KEYS}
    record = image_record(measured, image=str(meta.get("source") or path.name), labels=path.name,
                          data_sha256=meta.get("data_sha256"), options=options, pixel_size=size,
                          pixel_size_from=size_from, classifier=meta.get("dinoseg_bundle"), source=made_from,
                          notes=notes)
    if probas is None and previous is not None and all(previous.get(k) == record[k] for k in
                                                       ("data_sha256", "classifier", "input")):
        _carry_expected(record, previous)
    return record


def _carry_expected(record: dict, previous: dict) -> None:
    """Give ``record``'s fractions the ``expected_fraction`` of ``previous`` (of the same labels
    and probabilities), by plane and label value (in place)."""
    import pandas as pd

    try:
        theirs = pd.DataFrame(previous["fractions"]["data"], columns=previous["fractions"]["columns"])
    except (KeyError, TypeError, ValueError):
        return
    mine = record["fractions"]
    if "expected_fraction" not in theirs or "expected_fraction" in mine["columns"]:
        return
    table = pd.DataFrame(mine["data"], columns=mine["columns"])
    expected = theirs.set_index(["plane", "label"])["expected_fraction"]
    at = mine["columns"].index("fraction") + 1
    table.insert(at, "expected_fraction", expected.reindex(pd.MultiIndex.from_frame(table[["plane", "label"]]))
                 .fillna(0.0).to_numpy())
    record["fractions"] = {"columns": list(table.columns),
                           "data": [[_plain(v) for v in row] for row in table.itertuples(index=False)]}


# ---- label files made anywhere -----------------------------------------------------------------------


def measure_files(label_files, out_dir: Union[str, os.PathLike], *, images: Optional[Sequence] = None,
                  pixel_size: Optional[float] = None, min_size: int = 0, split: bool = False,
                  classes: Optional[Sequence[int]] = None,
                  progress: Optional[Callable[[int, int, str], None]] = None) -> Report:
    """Measure label image files and write the tables and plots to ``out_dir``.

    Parameters
    ----------
    label_files
        A folder (its ``.tif`` / ``.tiff`` / ``.png`` files but ``*_proba.tif``), a glob
        pattern, a file, or a list of files and folders. Each is read as label values
        (:func:`napari_dinoseg.label_files.read_label_file`: greyscale, palette, integer TIFF; every
        page or plane of a stack a field, measured in 2-D); colour (RGB) label files are
        refused (their colours would be numbered file by file).
    out_dir
        Where :data:`REPORT_FILES` are written (made if missing); not a folder of the label
        files (its PNG plots would be read as label files by the next run), a sub-folder is fine.
    images
        The images the labels were made from, one per label file in the same order, for the
        objects' ``mean_intensity``; the same number of planes of the same height and width.
    pixel_size
        µm per pixel of every file; ``None``: each label file's metadata (an output of
        ``dinoseg apply`` records the one its run used; OME, ImageJ, TIFF resolution, PNG
        pHYs, see :func:`napari_dinoseg.pixel_size.pixel_size_of`), else its image's, else none.
    min_size, split
        As in :class:`MeasureOptions`.
    classes
        The label values measured as objects (default: every value but 0).
    progress
        ``progress(done, total, file name)`` after each file (and ``(0, total, "")`` first).

    Returns
    -------
    Report
        ``image`` in the tables is each label file's name (its path as given where two share
        a name).

    Raises
    ------
    ValueError
        Bad options, no label files, a file that cannot be read as labels (named), images not
        one per label file or of other sizes, an output folder that cannot be written or holds
        the label files; nothing is written then.
    """
    import pandas as pd

    from .label_files import read_label_file
    from .pixel_size import pixel_size_of
    from .reading import read_image

    options = MeasureOptions(min_size=min_size, split=split, pixel_size=pixel_size)
    files = _label_paths(label_files)
    image_files = None if images is None else [Path(p) for p in ([images] if isinstance(images, (str, os.PathLike))
                                                                  else images)]
    if image_files is not None and len(image_files) != len(files):
        raise ValueError(f"{len(image_files)} image(s) for {len(files)} label files: give one image per label file, in "
                         "the same order, or none")
    out = Path(out_dir)
    _check_out(out, files)
    names = [p.name for p in files]
    if len(set(names)) < len(names):
        names = [str(p) for p in files]
    report = Report(folder=out)
    gathered = []
    if progress is not None:
        progress(0, len(files), "")
    for n, path in enumerate(files):
        try:
            labels = read_label_file(path)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        if labels.colours is not None:
            raise ValueError(f"{path}: an RGB colour image, not label values: measure label images whose pixel values "
                             "are the classes (greyscale, palette or integer TIFF)")
        report.notes += [(str(path), note) for note in labels.notes]
        image_planes = None
        if image_files is not None:
            try:
                image_planes = read_image(image_files[n]).planes
            except ValueError as err:
                raise ValueError(f"{image_files[n]}: {err}") from None
            if len(image_planes) != len(labels.planes) or image_planes[0].shape[:2] != labels.planes[0].shape:
                raise ValueError(f"{image_files[n]} has {len(image_planes)} plane(s) of {image_planes[0].shape[:2]} px "
                                 f"but its label file {path} has {len(labels.planes)} of {labels.planes[0].shape} "
                                 "px: give each label file the image it was made from")
        size, size_from = _file_pixel_size(options, path, None if image_files is None else image_files[n],
                                           pixel_size_of, report)
        measured = [_tables_of(measure_plane(plane, options, image=None if image_planes is None else image_planes[i],
                                             classes=classes, pixel_size=size))
                    for i, plane in enumerate(labels.planes)]
        gathered.append(image_record(measured, image=names[n], labels=path.name, data_sha256=None, options=options,
                                     pixel_size=size, pixel_size_from=size_from))
        if progress is not None:
            progress(n + 1, len(files), path.name)
    fractions, objects = _tables(gathered, pd)
    _write_report(report, fractions, objects)
    return report


def _label_paths(label_files) -> list[Path]:
    """The label files of a folder, glob, file or list (folders expanded, ``*_proba.tif`` left out)."""
    from .label_files import LABEL_SUFFIXES

    given = [label_files] if isinstance(label_files, (str, os.PathLike)) else list(label_files)
    if not given:
        raise ValueError("no label files given")
    files: list = []
    for item in given:
        if Path(item).is_dir() or not os.path.lexists(item):  # a folder or a glob pattern: its label files
            found, _ = find_inputs(item)
            files += [p for p in found if p.suffix.lower() in LABEL_SUFFIXES and not p.name.endswith(PROBA_SUFFIX)]
            continue
        found, unusable = find_inputs([item])
        for path, reason in unusable:
            if "listed twice" not in reason:
                raise ValueError(f"{path}: {reason}")
        files += found
    files = list(dict.fromkeys(files))
    if not files:
        raise ValueError(f"no label files (.tif, .tiff, .png) in {', '.join(map(str, given))}")
    return files


def _check_out(out: Path, files: Sequence[Path]) -> None:
    """Refuse an output folder that holds label files, or that cannot be written."""
    for path in files:
        if out.is_dir() and os.path.samefile(out, path.parent):
            raise ValueError(f"the output folder {str(out)!r} holds the label file {path.name}: its plots would be "
                             "read as label files by the next run; choose another folder (a sub-folder is fine)")
    check_writable(out)


def _file_pixel_size(options: MeasureOptions, labels: Path, image: Optional[Path], pixel_size_of,
                     report: Report) -> tuple[Optional[float], str]:
    """``(µm per pixel or None, where from)``: given > the label file's metadata > the image's."""
    if options.pixel_size is not None:
        return options.pixel_size, GIVEN
    for what, path in (("labels", labels), ("image", image)):
        found = None if path is None else pixel_size_of(path)
        if found is not None:
            if found.note:
                report.notes.append((str(path), found.note))
            return found.um, f"{what}: {found.source}"
    return None, NO_PIXEL_SIZE


# ---- the tables and plots ----------------------------------------------------------------------------


def _tables(records: Sequence[dict], pd):
    """``(fractions, objects)`` of the records, one below the other: ``image, plane``, the
    measured columns, and in ``fractions`` ``pixel_size_um, pixel_size_from`` last."""
    fractions, objects = [], []
    for record in records:
        for name, into in (("fractions", fractions), ("objects", objects)):
            part = record[name]
            table = pd.DataFrame(part["data"], columns=part["columns"])
            table.insert(0, "image", record["image"])
            if name == "fractions":
                table["pixel_size_um"] = np.nan if record.get("pixel_size_um") is None else record["pixel_size_um"]
                table["pixel_size_from"] = record.get("pixel_size_from") or NO_PIXEL_SIZE
            into.append(table)
    return _concat(fractions, pd), _concat(objects, pd)


def _concat(tables: list, pd):
    """Tables one below the other, columns in the order first seen; empty tables give their columns."""
    if not tables:
        return pd.DataFrame()
    full = [t for t in tables if len(t)]
    columns = list(dict.fromkeys(c for t in tables for c in t.columns))
    if not full:
        return pd.DataFrame(columns=columns)
    return pd.concat(full, ignore_index=True).reindex(columns=columns)


def _fields(table):
    """``table`` with ``image`` naming each field: the image, or ``<image> [plane p]`` for a stack's planes."""
    if not len(table):
        return table
    stack = table.groupby("image")["plane"].transform("max") > 0
    named = table["image"].where(~stack, table["image"] + " [plane " + table["plane"].astype(str) + "]")
    return table.assign(image=named)


def _write_report(report: Report, fractions, objects) -> None:
    """Write the CSV files and plots (atomically) and fill ``report``; with nothing measured,
    remove the report files of an earlier run instead (they would describe outputs now gone)."""
    from .measure import summary_table

    folder = report.folder
    report.fractions, report.objects = fractions, objects
    if not len(fractions):
        for name in REPORT_FILES:
            if (folder / name).is_file():
                (folder / name).unlink()
        return
    fields_fractions, fields_objects = _fields(fractions), _fields(objects)
    report.summary = summary_table(fields_fractions, fields_objects)
    for name, table in ((FRACTIONS_CSV, fractions), (OBJECTS_CSV, objects), (SUMMARY_CSV, report.summary)):
        report.files.append(write_atomic(folder / name, lambda tmp, t=table: t.to_csv(tmp, index=False)))
    report.files += _write_plots(folder, fields_fractions, fields_objects)


def _write_plots(folder: Path, fractions, objects) -> list[Path]:
    from .measure_plots import fractions_figure, sizes_figure

    written = []
    for name, figure in ((FRACTIONS_PNG, fractions_figure(fractions)), (SIZES_PNG, sizes_figure(objects))):
        written.append(write_atomic(folder / name, lambda tmp, f=figure: f.savefig(tmp, format="png", dpi=DPI)))
    return written
