"""One image's measurements as a record: each plane measured with the options
(:func:`measure_plane`), the planes' tables with what they were measured with
(:func:`image_record`), written as ``OUT/measurements/images/<stem>.json`` (:func:`write_record`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .atomic import write_atomic
from .measure_options import MeasureOptions

#: The sub-folder of an ``apply`` output folder that holds the measurements, and that of the records.
MEASUREMENTS, RECORDS = "measurements", "images"
#: Format of the per-image records (a record of another format is measured again).
RECORD_FORMAT = 1


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
        What it was measured with; ``pixel_size_from``:
        :data:`~napari_dinoseg.measure_options.GIVEN`, ``"input: <source>"``, ``"labels: <source>"``
        or :data:`~napari_dinoseg.measure_options.NO_PIXEL_SIZE`.
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
