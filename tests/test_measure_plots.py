"""measure_plots: the fractions and sizes figures hold what the tables say, with units, and save as PNG."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

from napari_dinoseg.measure import joined, measure, summary_table
from napari_dinoseg.measure_plots import (GID_EXPECTED, GID_HISTOGRAM, GID_MEAN, GID_POINTS, fractions_figure,
                                          sizes_figure)


def discs(seed: int, size: int = 96) -> np.ndarray:
    """Matrix (1), discs (2) of which some touch the border, and one bar (3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.ones((size, size), np.uint8)
    for _ in range(10):
        cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(3, 8)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
    labels[30:60, 40:43] = 3
    return labels


def four_images(pixel_size=0.5, proba=False):
    results = []
    for seed in range(4):
        labels = discs(seed)
        p = np.random.default_rng(seed).dirichlet([1, 1, 1], size=labels.shape) if proba else None
        results.append(measure(labels, proba=p, classes=[1, 2, 3] if proba else None, pixel_size=pixel_size))
    return joined(results)


def gid(figure, name):
    return [a for ax in figure.axes for a in ax.get_children() if a.get_gid() == name]


def test_fractions_figure_has_a_point_per_image_and_the_intervals_of_summary_table():
    fractions, objects = four_images(proba=True)
    fig = fractions_figure(fractions, names={2: "precipitate"})
    (ax,) = fig.axes
    points = [c for c in gid(fig, GID_POINTS) if isinstance(c, PathCollection)]
    assert len(points) == 3 and all(len(c.get_offsets()) == 4 for c in points)
    # the points are the per-image fractions, label by label
    for value, c in zip((1, 2, 3), points):
        mine = fractions[fractions["label"] == value].set_index("image")["fraction"]
        np.testing.assert_allclose(np.sort(c.get_offsets()[:, 1]), np.sort(mine.to_numpy()))
    bars = gid(fig, GID_MEAN)
    summary = summary_table(fractions, objects)
    np.testing.assert_allclose([b.get_height() for b in bars], summary["mean_fraction"])
    # the error bars span the 95 % interval
    caps = sorted(y for line in ax.lines for y in np.ravel(line.get_ydata()) if line.get_marker() == "_")
    np.testing.assert_allclose(caps, np.sort(np.r_[summary["ci95_low"], summary["ci95_high"]]))
    expected = gid(fig, GID_EXPECTED)
    assert len(expected) == 3 and all(len(c.get_offsets()) == 4 for c in expected)
    np.testing.assert_allclose(np.sort(expected[1].get_offsets()[:, 1]),
                               np.sort(fractions[fractions["label"] == 2]["expected_fraction"]))
    assert "fraction" in ax.get_ylabel() and "4 images" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["label 1", "precipitate", "label 3"]


def test_a_label_absent_from_an_image_is_a_point_at_zero_there():
    a = measure(np.array([[1, 1], [2, 2]], np.uint8)).fractions
    b = measure(np.ones((2, 2), np.uint8)).fractions
    fractions, _ = joined([type("M", (), {"fractions": a, "objects": pd.DataFrame()})(),
                           type("M", (), {"fractions": b, "objects": pd.DataFrame()})()])
    fig = fractions_figure(fractions)
    second = gid(fig, GID_POINTS)[1]
    assert sorted(second.get_offsets()[:, 1]) == [0.0, 0.5]


def test_one_image_draws_no_interval_and_says_so():
    labels = discs(0)
    fig = fractions_figure(measure(labels).fractions)
    (ax,) = fig.axes
    assert "no interval" in ax.get_title()
    assert not [line for line in ax.lines if line.get_marker() == "_"]  # no error-bar caps
    assert [len(c.get_offsets()) for c in gid(fig, GID_POINTS)] == [1, 1, 1]
    assert not gid(fig, GID_EXPECTED)


def test_sizes_figure_one_panel_per_label_in_um_without_the_border_objects():
    _, objects = four_images(pixel_size=0.5)
    fig = sizes_figure(objects, names={2: "precipitate"}, bins=12)
    assert len(fig.axes) == 3
    for ax, value in zip(fig.axes, (1, 2, 3)):
        mine = objects[objects["label"] == value]
        inside, cut = int((~mine["touches_border"]).sum()), int(mine["touches_border"].sum())
        bars = [p for p in ax.patches if p.get_gid() == GID_HISTOGRAM]
        assert sum(p.get_height() for p in bars) == inside
        said = " ".join([t.get_text() for t in ax.texts] + [t.get_text() for t in ax.get_legend().get_texts()]
                        if ax.get_legend() else [t.get_text() for t in ax.texts])
        assert (f"{inside} objects" in said) == (inside > 0)
        assert (f"{cut} at the border left out" in said) == (cut > 0)
    assert [ax.get_title("left") for ax in fig.axes] == ["label 1", "precipitate", "label 3"]
    assert fig.axes[-1].get_xlabel() == "equivalent diameter (µm)"
    assert len([p for p in fig.axes[1].patches if p.get_gid() == GID_HISTOGRAM]) == 12
    discs_inside = objects[(objects["label"] == 2) & ~objects["touches_border"]]["equivalent_diameter_um"]
    (median,) = [line for line in fig.axes[1].lines if line.get_linestyle() == "--"]
    assert median.get_xdata()[0] == pytest.approx(discs_inside.median())


def test_sizes_in_px_without_a_pixel_size_and_a_panel_saying_no_objects():
    _, objects = four_images(pixel_size=None)
    assert sizes_figure(objects).axes[-1].get_xlabel() == "equivalent diameter (px)"
    empty = measure(discs(0)).objects.iloc[:0]
    fig = sizes_figure(empty)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["no objects"] and "(px)" in ax.get_xlabel()


def test_a_given_figure_is_cleared_and_reused():
    fractions, objects = four_images()
    figure = Figure()
    assert sizes_figure(objects, figure=figure) is figure and len(figure.axes) == 3
    assert fractions_figure(fractions, figure=figure) is figure and len(figure.axes) == 1
    assert sizes_figure(objects[objects["label"] == 2], figure=figure) is figure and len(figure.axes) == 1


def test_the_figures_save_as_png(tmp_path):
    from PIL import Image

    fractions, objects = four_images(proba=True)
    for name, fig in (("fractions", fractions_figure(fractions)), ("sizes", sizes_figure(objects))):
        path = tmp_path / f"{name}.png"
        fig.savefig(path, dpi=100)
        with Image.open(path) as png:
            assert png.format == "PNG" and png.size[0] >= 400 and png.size[1] >= 300
            assert len(np.unique(np.asarray(png.convert("L")))) > 10  # something is drawn


def test_bad_tables_and_bins_are_refused_with_what_to_give():
    with pytest.raises(ValueError, match="no column"):
        fractions_figure(pd.DataFrame({"label": [1]}))
    with pytest.raises(ValueError, match="no rows"):
        fractions_figure(pd.DataFrame({"label": [], "fraction": []}))
    with pytest.raises(ValueError, match="bins"):
        sizes_figure(pd.DataFrame({"label": [1], "equivalent_diameter_px": [2.0]}), bins=0)
