"""The measurements of a folder of ``dinoseg apply`` outputs (:func:`measure_outputs`): each label
output's record used when it is of its pixel data and the options, else the output measured
again from its files; records of outputs gone removed; the tables and plots written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from .atomic import clean_stale
from .inputs import SOURCE_KEYS, source_record
from .measure_options import GIVEN, NO_PIXEL_SIZE, MeasureOptions
from .measure_records import (MEASUREMENTS, RECORD_FORMAT, RECORDS, _plain, _tables_of, image_record, measure_plane,
                              write_record)
from .measure_tables import Report, _tables, _write_report
from .outputs import LABEL_SUFFIX, PROBA_SUFFIX, output_metadata


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
    written to ``out_dir/measurements/`` (:data:`~napari_dinoseg.measure_tables.REPORT_FILES`),
    atomically.

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
