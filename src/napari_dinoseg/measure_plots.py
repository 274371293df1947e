"""Plots of measurements: phase fractions over images, object size distributions.

Matplotlib's object API only (:class:`matplotlib.figure.Figure`, no ``pyplot``, no Qt): a
figure made here is saved as a PNG by the CLI and the folder report, or drawn into the measure
dock's canvas, whose figure is passed in as ``figure`` and cleared and redrawn each time.

Both figures read the long tables of :func:`napari_dinoseg.measure.joined` (or of one
:class:`~napari_dinoseg.measure.Measurements`, with or without an ``image`` column):

- :func:`fractions_figure`: per label value, each image's fraction as a point, their mean with
  its 95 % interval (:func:`~napari_dinoseg.measure.summary_table`), and the fraction expected
  from the classifier's probabilities when the table has it;
- :func:`sizes_figure`: per label value, the histogram of the objects' equivalent diameters,
  in µm when known, objects cut by the image's border left out (each panel says how many).
"""

from __future__ import annotations

import textwrap
from typing import Mapping, Optional

import numpy as np

#: Width and height (inches) of a new figure: at 100 dpi about the width of a dock (~380 px
#: drawn at 4 in), and legible as a PNG.
FRACTIONS_SIZE = (4.6, 3.2)
#: Width, and height per label value's panel (inches), of a new sizes figure.
SIZES_WIDTH, SIZES_PANEL_HEIGHT = 4.6, 1.7
#: Font size of the plots' text (points).
FONT_SIZE = 8
#: Colours of the label values' panels and points, in turn (matplotlib's tab10).
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
           "tab:olive", "tab:cyan")
#: Group id (``Artist.get_gid``) of the points of each image's fraction, of the mean's bars and
#: of the expected fractions in :func:`fractions_figure`, of the histograms in :func:`sizes_figure`.
GID_POINTS, GID_MEAN, GID_EXPECTED, GID_HISTOGRAM = "fractions", "mean", "expected", "histogram"


def class_name(value: int, names: Optional[Mapping[int, str]] = None) -> str:
    """The name of label value ``value`` in ``names``, else ``"label <value>"``."""
    if names and int(value) in names and str(names[int(value)]).strip():
        return str(names[int(value)])
    return f"label {int(value)}"


def fractions_figure(fractions, *, names: Optional[Mapping[int, str]] = None, figure=None):
    """Phase fractions per label value: each image's, their mean with its 95 % interval.

    Parameters
    ----------
    fractions : pandas.DataFrame
        Long table, one row per image and label value present in it: ``image, label,
        fraction`` and optionally ``expected_fraction`` (from the probabilities). Without an
        ``image`` column the table is one image's. A label value absent from an image counts
        as fraction 0 there, as in :func:`~napari_dinoseg.measure.summary_table`.
    names : mapping of int to str, optional
        ``{label value: class name}`` for the axis (default ``"label <value>"``).
    figure : matplotlib.figure.Figure, optional
        Cleared and drawn into (the dock's canvas figure); default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: per label value, a bar up to the mean fraction with its 95 % interval as an
        error bar (none with one image), one point per image (gid :data:`GID_POINTS`), and a
        hollow diamond per image at its expected fraction when the table has it
        (gid :data:`GID_EXPECTED`).

    Raises
    ------
    ValueError
        A table without ``label`` or ``fraction``, or with no rows.
    """
    import pandas as pd

    from .measure import summary_table

    fractions = _with_image(fractions, ("label", "fraction"), "fractions")
    if not len(fractions):
        raise ValueError("the fractions table has no rows: measure an image first")
    figure = _fresh(figure, FRACTIONS_SIZE)
    ax = figure.add_subplot()
    empty = pd.DataFrame({"image": [], "label": [], "equivalent_diameter_px": []})
    summary = summary_table(fractions, empty)
    images = list(dict.fromkeys(fractions["image"]))
    wide = _wide(fractions, "fraction", images)
    expected = _wide(fractions, "expected_fraction", images, fill=False) if "expected_fraction" in fractions else None
    n = len(images)
    spread = _spread(n)
    for i, row in enumerate(summary.itertuples(index=False)):
        value, colour = int(row.label), COLOURS[i % len(COLOURS)]
        interval = np.isfinite(row.ci95_low) and np.isfinite(row.ci95_high)
        error = [[row.mean_fraction - row.ci95_low], [row.ci95_high - row.mean_fraction]] if interval else None
        bars = ax.bar(i, row.mean_fraction, width=0.7, color=colour, alpha=0.25, edgecolor=colour, yerr=error,
                      capsize=4, error_kw={"elinewidth": 1.2, "ecolor": "black"},
                      label=("mean ± 95 % interval" if n > 1 else "fraction") if i == 0 else None)
        for patch in bars.patches:
            patch.set_gid(GID_MEAN)
        points = ax.scatter(i + spread, wide[value], s=14, color=colour, edgecolors="black", linewidths=0.4,
                            zorder=3, label="each image" if i == 0 and n > 1 else None)
        points.set_gid(GID_POINTS)
        if expected is not None:
            hollow = ax.scatter(i + spread, expected[value], s=22, marker="D", facecolors="none",
                                edgecolors="black", linewidths=0.8, zorder=3,
                                label="expected from the probabilities" if i == 0 else None)
            hollow.set_gid(GID_EXPECTED)
    ax.set_xticks(range(len(summary)),
                  [_wrapped(class_name(v, names)) for v in summary["label"]], fontsize=FONT_SIZE)
    ax.set_xlim(-0.6, len(summary) - 0.4)
    highest = [summary[["mean_fraction", "ci95_high"]].to_numpy(dtype=float), wide.to_numpy(dtype=float)]
    if expected is not None:
        highest.append(expected.to_numpy(dtype=float))
    top = max(float(np.nanmax(a, initial=0.0)) for a in highest)
    ax.set_ylim(0, min(1.0, top * 1.15) if top > 0 else 1.0)
    ax.set_ylabel("area fraction (of all pixels)", fontsize=FONT_SIZE)
    ax.tick_params(labelsize=FONT_SIZE)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    title = f"phase fractions over {n} images" if n > 1 else "phase fractions (one image: no interval)"
    ax.set_title(title, fontsize=FONT_SIZE + 1)
    ax.legend(fontsize=FONT_SIZE - 1, loc="best", frameon=False)
    return figure


def sizes_figure(objects, *, names: Optional[Mapping[int, str]] = None, figure=None, bins: int = 30):
    """Histograms of the objects' equivalent diameters, one panel per label value.

    Parameters
    ----------
    objects : pandas.DataFrame
        One row per object: ``label, equivalent_diameter_px`` and optionally
        ``equivalent_diameter_um`` (used when every row has it) and ``touches_border``
        (such objects are left out: their size is cut by the image's edge).
    names : mapping of int to str, optional
        ``{label value: class name}`` for the panels' titles (default ``"label <value>"``).
    figure : matplotlib.figure.Figure, optional
        Cleared and drawn into (the dock's canvas figure); default a new figure.
    bins
        Number of histogram bins (>= 1).

    Returns
    -------
    matplotlib.figure.Figure
        One axes per label value in ``objects`` (top to bottom, ascending), titled with its
        name, with its histogram (gid :data:`GID_HISTOGRAM`) and the median as a dashed line; the
        legend counts the objects shown and those left out at the border. With no objects at
        all, one axes saying so.

    Raises
    ------
    ValueError
        A table without ``label`` or ``equivalent_diameter_px``, or ``bins`` < 1.
    """
    if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a whole number >= 1, got {bins!r}")
    objects = _with_image(objects, ("label", "equivalent_diameter_px"), "objects")
    values = sorted(int(v) for v in objects["label"].unique())
    size = (SIZES_WIDTH, SIZES_PANEL_HEIGHT * max(1, len(values)) + 0.5)
    figure = _fresh(figure, size)
    um = "equivalent_diameter_um" in objects and len(objects) and not objects["equivalent_diameter_um"].isna().any()
    column, unit = ("equivalent_diameter_um", "µm") if um else ("equivalent_diameter_px", "px")
    if not values:
        ax = figure.add_subplot()
        ax.text(0.5, 0.5, "no objects", ha="center", va="center", fontsize=FONT_SIZE + 1, transform=ax.transAxes)
        ax.set_xlabel(f"equivalent diameter ({unit})", fontsize=FONT_SIZE)
        ax.set_yticks([])
        ax.set_xticks([])
        return figure
    axes = figure.subplots(len(values), 1, squeeze=False)[:, 0]
    border = objects["touches_border"].astype(bool) if "touches_border" in objects else None
    for i, (value, ax) in enumerate(zip(values, axes)):
        mine = objects["label"] == value
        cut = int((mine & border).sum()) if border is not None else 0
        kept = objects.loc[mine & ~border, column] if border is not None else objects.loc[mine, column]
        kept = kept.to_numpy(dtype=float)
        left_out = f" ({cut} at the border left out)" if cut else ""
        ax.set_title(class_name(value, names), fontsize=FONT_SIZE, loc="left")
        ax.tick_params(labelsize=FONT_SIZE)
        ax.set_ylabel("objects", fontsize=FONT_SIZE)
        if len(kept):
            _, _, patches = ax.hist(kept, bins=int(bins), color=COLOURS[i % len(COLOURS)], alpha=0.8,
                                    label=f"{len(kept)} objects{left_out}")
            for patch in patches:
                patch.set_gid(GID_HISTOGRAM)
            median = float(np.median(kept))
            ax.axvline(median, color="black", linestyle="--", linewidth=1, label=f"median {median:.3g} {unit}")
            ax.legend(fontsize=FONT_SIZE - 1, loc="best", framealpha=0.8, edgecolor="none")
            if ax.get_xlim()[0] < 0:  # one size only: matplotlib centres a unit-wide range on it
                ax.set_xlim(left=0)
        else:
            ax.text(0.5, 0.5, f"none inside ({cut} at the border left out)" if cut else "no objects", ha="center",
                    va="center", fontsize=FONT_SIZE, transform=ax.transAxes)
            ax.set_yticks([])
    axes[-1].set_xlabel(f"equivalent diameter ({unit})", fontsize=FONT_SIZE)
    return figure


def _fresh(figure, size: tuple):
    """``figure`` cleared, or a new constrained-layout figure of ``size`` inches."""
    if figure is None:
        from matplotlib.figure import Figure

        return Figure(figsize=size, layout="constrained")
    figure.clear()
    return figure


def _with_image(table, required: tuple, what: str):
    """``table`` with an ``image`` column (one image when it has none), its required columns checked."""
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"the {what} table has no column(s) {missing}: give the table measure() or joined() made")
    return table if "image" in table.columns else table.assign(image="image")


def _wide(fractions, column: str, images: list, fill: bool = True):
    """``column`` per image (rows, in ``images``' order) and label value (columns): 0 where the
    value is absent from an image with ``fill``, else NaN (not drawn)."""
    wide = fractions.pivot_table(index="image", columns="label", values=column, aggfunc="sum", dropna=False)
    wide = wide.reindex(index=images, columns=sorted(fractions["label"].unique()))
    return wide.fillna(0.0) if fill else wide


def _spread(n: int) -> np.ndarray:
    """Horizontal offsets of ``n`` points about their label's position, so that equal values stay apart."""
    return np.zeros(1) if n == 1 else np.linspace(-0.22, 0.22, n)


def _wrapped(text: str, width: int = 14) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text
