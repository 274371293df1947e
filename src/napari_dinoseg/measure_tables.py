"""The tables and plots of a measuring run and the :class:`Report` of them: records gathered into
``fractions.csv``, ``objects.csv``, ``summary.csv``, ``fractions.png`` and ``sizes.png``, written
atomically (or, with nothing measured, those of an earlier run removed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import write_atomic
from .measure_options import NO_PIXEL_SIZE

FRACTIONS_CSV, OBJECTS_CSV, SUMMARY_CSV = "fractions.csv", "objects.csv", "summary.csv"
FRACTIONS_PNG, SIZES_PNG = "fractions.png", "sizes.png"
REPORT_FILES = (FRACTIONS_CSV, OBJECTS_CSV, SUMMARY_CSV, FRACTIONS_PNG, SIZES_PNG)
#: Resolution of the PNG plots (dots per inch).
DPI = 150


@dataclass
class Report:
    """What :func:`~napari_dinoseg.measure_report.measure_outputs` /
    :func:`~napari_dinoseg.measure_report.measure_files` wrote.

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
