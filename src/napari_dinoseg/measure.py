"""Numbers from a segmentation: phase fractions, objects and their sizes, and their summary over images.

:func:`measure` turns one label image (2-D or 3-D) into two tables: the fraction of each label
value, and one row per connected component of each value (8-connected in 2-D, 26-connected
in 3-D), with scikit-image's ``regionprops`` measurements, in pixels and, when the pixel size is
known, in µm. :func:`summarise` gives, per label value over several images (fields), the mean
fraction with its 95 % confidence interval (Student t over the per-image fractions: the
field-to-field interval of ASTM E562) and the objects' median size.

With the classifier's probabilities the fractions also get ``expected_fraction``: the mean
probability of each class, the fraction the classifier expects when it is unsure; a large gap
between the two says the number is not certain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

#: Object columns measured in 2-D and in 3-D (pixel units; ``_um`` / ``_um2`` / ``_um3`` added
#: when the pixel size is known). ``id`` numbers the objects of all label values together (the
#: value of the object's pixels in :attr:`Measurements.object_ids`), ``object`` within its label
#: value. Volumes get the diameter of the sphere of their volume; their Feret diameters,
#: perimeter and eccentricity are not measured.
COLUMNS_2D = ("id", "label", "object", "area_px", "equivalent_diameter_px", "feret_max_px", "feret_min_px",
              "perimeter_px", "eccentricity", "centroid_y", "centroid_x", "touches_border")
COLUMNS_3D = ("id", "label", "object", "volume_px", "equivalent_diameter_px", "centroid_z", "centroid_y",
              "centroid_x", "touches_border")
#: With ``split``: how far apart (px) two distance-transform maxima must be to seed two objects.
SPLIT_DISTANCE = 5


@dataclass(frozen=True)
class Measurements:
    """What :func:`measure` found in one label image.

    Attributes
    ----------
    fractions : pandas.DataFrame
        One row per label value present, and per class named by ``classes`` or the
        probabilities even where absent (0 pixels): ``label, pixels, fraction`` (of all the
        image's pixels), ``expected_fraction`` with probabilities, ``area_um2`` (``volume_um3`` in 3-D)
        with a pixel size.
    objects : pandas.DataFrame
        One row per object of each label value: :data:`COLUMNS_2D` (or :data:`COLUMNS_3D`),
        ``pieces`` with ``split`` (how many objects its connected component was cut into),
        ``mean_intensity`` with an image, ``mean_confidence`` with probabilities, and the µm
        columns with a pixel size.
    pixel_size : float or None
        µm per pixel (isotropic), ``None`` when unknown.
    shape : tuple of int
        The label image's shape.
    object_ids : int32 array of ``shape``, optional
        Each measured object's pixels hold its ``id`` (0 elsewhere, and for objects left out
        by ``min_size``).
    split : bool
        Whether touching objects were split.
    """

    fractions: "object"
    objects: "object"
    pixel_size: Optional[float]
    shape: tuple
    object_ids: Optional[np.ndarray] = None
    split: bool = False


def measure(labels: np.ndarray, *, image: Optional[np.ndarray] = None, proba: Optional[np.ndarray] = None,
            pixel_size: Optional[float] = None, classes: Optional[Sequence[int]] = None,
            min_size: int = 0, split: bool = False) -> Measurements:
    """Fractions and objects of one label image.

    Parameters
    ----------
    labels : (H, W) or (D, H, W) integer array
        Label values (0 = background, counted in the fractions like any other value).
    image : array of ``labels``' shape (or with a trailing channel axis), optional
        Intensities, for each object's ``mean_intensity`` (of the channels' mean).
    proba : (..., K) float array, optional
        The classifier's probabilities, column ``k`` for ``classes[k]``: ``expected_fraction``
        per class and each object's ``mean_confidence`` (its pixels' mean top probability).
    pixel_size
        µm per pixel (isotropic); adds the µm columns.
    classes
        Label values whose objects are measured (default: every value but 0); with ``proba``,
        the value of each of its columns (default ``1..K``).
    min_size
        Objects of fewer pixels (voxels) are left out of ``objects`` (not out of the fractions).
    split
        Separate touching round objects (a watershed of each value's distance transform from
        its local maxima at least :data:`SPLIT_DISTANCE` px apart); each object's ``pieces``
        says into how many objects its connected component was cut. Elongated or branched
        objects may be cut too: look at the ``pieces`` column.

    Returns
    -------
    :class:`Measurements`.

    Raises
    ------
    ValueError
        For labels that are not 2-D / 3-D integers, an image or probabilities of another shape,
        a pixel size that is not a positive finite number, or a negative ``min_size``.
    """
    import pandas as pd

    from .regions import objects_image, region_properties

    labels = _check_labels(labels)
    image = _check_like(image, labels, "image")
    proba = _check_proba(proba, labels)
    pixel_size = _check_pixel_size(pixel_size)
    if not isinstance(min_size, (int, np.integer)) or isinstance(min_size, bool) or min_size < 0:
        raise ValueError(f"min_size must be a whole number of pixels >= 0, got {min_size!r}")
    values, counts = _counts(labels)
    proba_classes = None
    if proba is not None:
        proba_classes = np.arange(1, proba.shape[-1] + 1) if classes is None else np.asarray(classes)
        if len(proba_classes) != proba.shape[-1]:
            raise ValueError(f"{len(proba_classes)} classes given for probabilities of {proba.shape[-1]} columns")
    named = [] if classes is None and proba_classes is None else \
        [int(c) for c in (proba_classes if classes is None else classes)]
    absent = sorted(set(named) - set(values.tolist()))  # named classes with no pixel: a row of 0 each
    if absent:
        values = np.concatenate([values.astype(np.int64), absent])
        counts = np.concatenate([counts, np.zeros(len(absent), counts.dtype)])
        order = np.argsort(values, kind="stable")
        values, counts = values[order], counts[order]
    fractions = pd.DataFrame({"label": values.astype(np.int64), "pixels": counts.astype(np.int64),
                              "fraction": counts / labels.size})
    if proba is not None:
        # per channel: a reduction over the last axis of an (H, W, K) array is ten times slower
        means = [float(proba[..., k].sum(dtype=np.float64)) / labels.size for k in range(proba.shape[-1])]
        expected = dict(zip(proba_classes.tolist(), means))
        fractions["expected_fraction"] = [expected.get(int(v), 0.0) for v in values]
    volume = labels.ndim == 3
    if pixel_size is not None:
        fractions["volume_um3" if volume else "area_um2"] = counts * pixel_size ** labels.ndim
    wanted = [int(v) for v in values if v != 0 and v not in absent] if classes is None else [int(c) for c in classes]
    ids, value_of, pieces = objects_image(labels, wanted, split=split, split_distance=SPLIT_DISTANCE)
    n = len(value_of)
    intensity = None if image is None else (image if image.ndim == labels.ndim else image.mean(axis=-1))
    props = region_properties(ids, n, intensity=intensity,
                              confidence=None if proba is None else _top(proba))
    objects = _object_table(props, value_of, pieces if split else None, volume)
    if min_size:
        small = objects["area_px" if not volume else "volume_px"].to_numpy() < min_size
        if small.any():
            ids[np.isin(ids, objects["id"].to_numpy()[small])] = 0
            objects = objects[~small].reset_index(drop=True)
    if pixel_size is not None:
        _add_units(objects, pixel_size, volume)
    return Measurements(fractions=fractions, objects=objects, pixel_size=pixel_size, shape=labels.shape,
                        object_ids=ids, split=bool(split))


def _object_table(props: dict, value_of: np.ndarray, pieces: Optional[np.ndarray], volume: bool):
    """The objects DataFrame of :func:`regions.region_properties`' arrays, columns in
    :data:`COLUMNS_2D` / :data:`COLUMNS_3D` order, then ``pieces`` and the means."""
    import pandas as pd

    n = len(value_of)
    # ids of one value are consecutive: an object's number within its value counts from its first
    first = {v: i for i, v in reversed(list(enumerate(value_of.tolist())))}
    within = np.arange(n, dtype=np.int64) - np.array([first[v] for v in value_of.tolist()], dtype=np.int64) + 1
    centroid = props["centroid"]
    table = {"id": np.arange(1, n + 1, dtype=np.int64), "label": value_of, "object": within}
    if volume:
        table.update(volume_px=props["area"], equivalent_diameter_px=props["equivalent_diameter"],
                     centroid_z=centroid[:, 0], centroid_y=centroid[:, 1], centroid_x=centroid[:, 2])
    else:
        table.update(area_px=props["area"], equivalent_diameter_px=props["equivalent_diameter"],
                     feret_max_px=props["feret_max"], feret_min_px=props["feret_min"],
                     perimeter_px=props["perimeter"], eccentricity=props["eccentricity"],
                     centroid_y=centroid[:, 0], centroid_x=centroid[:, 1])
    table["touches_border"] = props["touches_border"]
    if pieces is not None:
        table["pieces"] = pieces
    for name in ("mean_intensity", "mean_confidence"):
        if name in props:
            table[name] = props[name]
    return pd.DataFrame(table)


def summarise(measurements: Sequence[Measurements], names: Optional[Sequence[str]] = None,
              confidence: float = 0.95):
    """Per label value over images: the mean fraction with its confidence interval, and the objects.

    Parameters
    ----------
    measurements
        One :class:`Measurements` per image (field).
    names
        The images' names (default ``image 0``, ``image 1``, …), one per measurement.
    confidence
        Of the interval (default 0.95).

    Returns
    -------
    pandas.DataFrame: :func:`summary_table` of the measurements' tables joined.
    """
    measurements = list(measurements)
    if not measurements:
        raise ValueError("no measurements to summarise")
    if names is not None and len(names) != len(measurements):
        raise ValueError(f"{len(names)} names for {len(measurements)} measurements")
    fractions, objects = joined(measurements, names)
    return summary_table(fractions, objects, confidence)


def joined(measurements: Sequence[Measurements], names: Optional[Sequence[str]] = None):
    """The fractions and objects tables of several images, one below the other, each row with
    its ``image`` name first: ``(fractions, objects)`` DataFrames."""
    import pandas as pd

    measurements = list(measurements)
    names = [f"image {i}" for i in range(len(measurements))] if names is None else list(names)
    tables = []
    for attribute in ("fractions", "objects"):
        parts = [getattr(m, attribute).assign(image=name) for m, name in zip(measurements, names)]
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        tables.append(table[["image", *[c for c in table.columns if c != "image"]]])
    return tuple(tables)


def summary_table(fractions, objects, confidence: float = 0.95):
    """Per label value over the images of long tables (what :func:`joined` gives, or the CSV files).

    Parameters
    ----------
    fractions : pandas.DataFrame
        Columns ``image, label, fraction`` (one row per image and label value present in it).
    objects : pandas.DataFrame
        Columns ``image, label, equivalent_diameter_px`` (and ``equivalent_diameter_um``).
    confidence
        Of the interval (default 0.95).

    Returns
    -------
    pandas.DataFrame with one row per label value seen in any image: ``label, images,
    mean_fraction, sd_fraction, ci95_low, ci95_high`` (a value absent from an image counts as
    fraction 0 there; the interval is ``scipy.stats.t.interval`` of the per-image fractions,
    NaN with fewer than two images, the mean itself when every image gives the same fraction),
    ``objects`` (their total count), ``objects_inside`` (those not touching the image's border)
    and ``median_equivalent_diameter_px`` of the objects inside (objects cut by the border are
    smaller than they are; ``_um`` too when the objects have that column and every image has a
    pixel size).
    """
    import pandas as pd
    from scipy import stats

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    images = list(dict.fromkeys(fractions["image"]))
    if not images:
        raise ValueError("no images to summarise")
    wide = fractions.pivot_table(index="image", columns="label", values="fraction", aggfunc="sum")
    wide = wide.reindex(images).fillna(0.0)
    with_units = "equivalent_diameter_um" in objects.columns and not objects["equivalent_diameter_um"].isna().any()
    rows = []
    for value in sorted(int(v) for v in wide.columns):
        per_image = wide[value].to_numpy(dtype=np.float64)
        n = len(per_image)
        mean, sd = float(per_image.mean()), float(per_image.std(ddof=1)) if n > 1 else float("nan")
        if n > 1 and sd > 0:
            low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sd / np.sqrt(n))
        else:
            low = high = mean if n > 1 else float("nan")
        mine = objects[objects["label"] == value] if len(objects) else objects
        # sizes of the objects the image's border does not cut (ASTM E1245 leaves those out)
        inside = mine[~mine["touches_border"].astype(bool)] if "touches_border" in mine.columns else mine
        row = {"label": value, "images": n, "mean_fraction": mean, "sd_fraction": sd,
               "ci95_low": float(low), "ci95_high": float(high), "objects": int(len(mine)),
               "objects_inside": int(len(inside)),
               "median_equivalent_diameter_px": float(inside["equivalent_diameter_px"].median())
               if len(inside) else float("nan")}
        if with_units:
            row["median_equivalent_diameter_um"] = float(inside["equivalent_diameter_um"].median()) \
                if len(inside) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _top(proba: np.ndarray) -> np.ndarray:
    """``proba.max(axis=-1)``, channel by channel (seven times faster on an (H, W, K) array)."""
    top = proba[..., 0].copy()
    for k in range(1, proba.shape[-1]):
        np.maximum(top, proba[..., k], out=top)
    return top


def _counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The label values present and their pixel counts (``np.unique``'s, by ``np.bincount`` when
    the values are small non-negative numbers: ten times faster on a large image)."""
    if labels.dtype.kind == "u" and labels.dtype.itemsize <= 2:
        counts = np.bincount(labels.ravel())
        values = np.flatnonzero(counts)
        return values.astype(labels.dtype), counts[values]
    return np.unique(labels, return_counts=True)


def _add_units(objects, pixel_size: float, volume: bool) -> None:
    """The µm columns of the pixel columns (in place)."""
    if volume:
        objects["volume_um3"] = objects["volume_px"] * pixel_size ** 3
    else:
        objects["area_um2"] = objects["area_px"] * pixel_size ** 2
        objects["perimeter_um"] = objects["perimeter_px"] * pixel_size
        objects["feret_max_um"] = objects["feret_max_px"] * pixel_size
        objects["feret_min_um"] = objects["feret_min_px"] * pixel_size
    objects["equivalent_diameter_um"] = objects["equivalent_diameter_px"] * pixel_size


def _check_labels(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3):
        raise ValueError(f"labels must be a 2-D image or a 3-D volume, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must hold whole numbers (an integer dtype), got {arr.dtype}")
    return arr


def _check_like(image, labels: np.ndarray, what: str) -> Optional[np.ndarray]:
    if image is None:
        return None
    arr = np.asarray(image)
    if arr.shape[:labels.ndim] != labels.shape or arr.ndim > labels.ndim + 1:
        raise ValueError(f"the {what} has shape {arr.shape}, the labels {labels.shape}: give the {what} the labels "
                         "were made from")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"the {what} must be numeric, got {arr.dtype}")
    return arr


def _check_proba(proba, labels: np.ndarray) -> Optional[np.ndarray]:
    if proba is None:
        return None
    arr = np.asarray(proba, dtype=np.float32)
    if arr.ndim != labels.ndim + 1 or arr.shape[:-1] != labels.shape:
        raise ValueError(f"probabilities must be {labels.shape} + (K,), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("the probabilities hold NaN or inf")
    return arr


def _check_pixel_size(pixel_size) -> Optional[float]:
    if pixel_size is None:
        return None
    try:
        size = float(pixel_size)
    except (TypeError, ValueError):
        raise ValueError(f"pixel_size must be a number of µm per pixel, got {pixel_size!r}") from None
    if not np.isfinite(size) or size <= 0:
        raise ValueError(f"pixel_size must be a positive number of µm per pixel, got {pixel_size!r}")
    return size
