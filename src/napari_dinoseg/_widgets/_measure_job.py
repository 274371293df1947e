"""The measure dock's job, outside Qt: what is measured, the worker function, and what the dock
shows of the result (its summary table and status line)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..measure import Measurements, joined, measure, summary_table
from ..measure_plots import class_name
from ..progress import report


@dataclass(frozen=True)
class MeasureJob:
    """What :func:`run_measure_job` measures, read from the layers on the GUI thread.

    Attributes
    ----------
    labels : (H, W) or (D, H, W) integer array-like
        The plane (or volume) to measure.
    image : array-like of ``labels``' shape (or with a trailing channel axis), or None
    pixel_size : float or None
        µm per pixel.
    min_size : int
    split : bool
    index : tuple of int
        The plane's index in the layer's leading axes (``()`` for a 2-D layer or a volume).
    """

    labels: object
    image: object
    pixel_size: Optional[float]
    min_size: int
    split: bool
    index: tuple = ()


@dataclass
class MeasureResult:
    """What the worker hands to the widget: the measurements and their summary over the one image."""

    measurements: Measurements
    summary: object
    index: tuple = ()
    messages: list = field(default_factory=list)


def run_measure_job(job: MeasureJob, progress=None, announce=None) -> MeasureResult:
    """Measure the job's labels (runs in a worker; touches no layer)."""
    where = f" of plane {', '.join(map(str, job.index))}" if job.index else ""
    if announce is not None:
        announce(f"measuring {'x'.join(map(str, np.shape(job.labels)))} labels{where}…")
    report(progress, 0, 3, "reading the labels")
    labels = np.asarray(job.labels)
    image = None if job.image is None else np.asarray(job.image)
    report(progress, 1, 3, "measuring the objects")
    measured = measure(labels, image=image, pixel_size=job.pixel_size, min_size=job.min_size, split=job.split)
    report(progress, 2, 3, "summarising")
    fractions, objects = joined([measured])
    summary = summary_table(fractions, objects)
    report(progress, 3, 3, "done")
    return MeasureResult(measured, summary, job.index)


def summary_frame(result: MeasureResult, names: Optional[dict] = None):
    """Per label value: its name (``"label <value>"`` without one), fraction (and the expected one,
    with probabilities), objects, those inside the image (not cut by its border) and their median
    equivalent diameter, in µm with a pixel size, else px (blank for the background, 0, whose
    objects are not measured): the dock's summary table."""
    import pandas as pd

    m = result.measurements
    objects = m.objects
    size = f"equivalent_diameter_{'um' if m.pixel_size is not None else 'px'}"
    rows = []
    for row in m.fractions.itertuples(index=False):
        value = int(row.label)
        entry = {"class": class_name(value, names), "fraction": float(row.fraction)}
        if "expected_fraction" in m.fractions.columns:
            entry["expected_fraction"] = float(row.expected_fraction)
        if value == 0:  # the background: no objects measured
            entry.update({"objects": np.nan, "objects_inside": np.nan, f"median_{size}": np.nan})
        else:
            mine = objects[objects["label"] == value] if len(objects) else objects
            inside = mine[~mine["touches_border"].astype(bool)] if len(mine) else mine
            entry.update({"objects": len(mine), "objects_inside": len(inside),
                          f"median_{size}": float(inside[size].median()) if len(inside) else np.nan})
        rows.append(entry)
    return pd.DataFrame(rows)


def report_line(result: MeasureResult, layer_name: str) -> str:
    """The status line after a measurement: what was measured, how many objects, in which unit."""
    m = result.measurements
    where = f" (plane {', '.join(map(str, result.index))} of the stack)" if result.index else ""
    kind = "voxels" if len(m.shape) == 3 and not result.index else "px"
    scale = f"{m.pixel_size:g} µm per pixel" if m.pixel_size is not None else f"sizes in {kind}: no pixel size"
    classes = int((m.fractions["label"] != 0).sum())
    return (f"measured {layer_name}{where}: {len(m.objects)} objects of {classes} label values, {scale}. "
            "Click an object row to go to it.")
