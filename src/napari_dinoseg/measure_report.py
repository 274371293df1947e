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

This module is the public face: it owns no code and re-exports the names of its pieces, each
of one job: :mod:`~napari_dinoseg.measure_options` (:class:`MeasureOptions`),
:mod:`~napari_dinoseg.measure_records` (one image: its planes measured, its record),
:mod:`~napari_dinoseg.measure_tables` (records gathered into the tables and plots, the
:class:`Report`), :mod:`~napari_dinoseg.measure_apply` (a folder of apply outputs) and
:mod:`~napari_dinoseg.measure_label_files` (label files made anywhere).
"""

from __future__ import annotations

from .measure_apply import measure_outputs
from .measure_label_files import measure_files
from .measure_options import GIVEN, NO_PIXEL_SIZE, MeasureOptions
from .measure_records import (MEASUREMENTS, RECORD_FORMAT, RECORDS, image_record, measure_plane, record_path,
                              write_record)
from .measure_tables import (DPI, FRACTIONS_CSV, FRACTIONS_PNG, OBJECTS_CSV, REPORT_FILES, SIZES_PNG, SUMMARY_CSV,
                             Report, format_summary)

__all__ = [
    "DPI", "FRACTIONS_CSV", "FRACTIONS_PNG", "GIVEN", "MEASUREMENTS", "NO_PIXEL_SIZE", "OBJECTS_CSV", "RECORDS",
    "RECORD_FORMAT", "REPORT_FILES", "SIZES_PNG", "SUMMARY_CSV", "MeasureOptions", "Report", "format_summary",
    "image_record", "measure_files", "measure_outputs", "measure_plane", "record_path", "write_record",
]
