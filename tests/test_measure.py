"""measure / summarise: exactly scikit-image's regionprops and scipy's t interval, on real label images."""

import numpy as np
import pytest
from scipy import stats
from skimage.measure import label as connected, regionprops_table

from napari_dinoseg.measure import measure, summarise


def two_phase(seed: int, size: int = 128) -> np.ndarray:
    """Round precipitates (2) and a few bars (3) in a matrix (1); some touch the border, some touch each other."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.ones((size, size), np.uint8)
    for _ in range(25):
        cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(3, 9)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
    for _ in range(3):
        r, c = rng.integers(0, size - 30), rng.integers(0, size - 4)
        labels[r:r + 30, c:c + 3] = 3
    return labels


def test_objects_and_fractions_equal_regionprops_on_the_label_image():
    labels = two_phase(0)
    image = np.random.default_rng(1).random(labels.shape).astype(np.float32)
    m = measure(labels, image=image, pixel_size=0.5)
    values, counts = np.unique(labels, return_counts=True)
    np.testing.assert_array_equal(m.fractions["label"], values)
    np.testing.assert_allclose(m.fractions["fraction"], counts / labels.size)
    np.testing.assert_allclose(m.fractions["area_um2"], counts * 0.25)
    for value in (1, 2, 3):
        ref = regionprops_table(connected(labels == value, connectivity=2), intensity_image=image,
                                properties=("label", "area", "equivalent_diameter_area", "feret_diameter_max",
                                            "perimeter", "eccentricity", "centroid", "intensity_mean", "bbox"))
        mine = m.objects[m.objects["label"] == value]
        assert len(mine) == len(ref["label"]) > 0
        np.testing.assert_array_equal(mine["object"], ref["label"])
        np.testing.assert_array_equal(mine["area_px"], ref["area"])
        for ours, theirs in [("equivalent_diameter_px", "equivalent_diameter_area"),
                             ("perimeter_px", "perimeter"),
                             ("eccentricity", "eccentricity"), ("centroid_y", "centroid-0"),
                             ("centroid_x", "centroid-1")]:
            np.testing.assert_allclose(mine[ours], ref[theirs], rtol=1e-12, err_msg=ours)
        # regionprops sums a float32 image in float32; here in float64
        np.testing.assert_allclose(mine["mean_intensity"], ref["intensity_mean"], rtol=1e-6)
        touches = (ref["bbox-0"] == 0) | (ref["bbox-1"] == 0) | (ref["bbox-2"] == 128) | (ref["bbox-3"] == 128)
        np.testing.assert_array_equal(mine["touches_border"], touches)
        np.testing.assert_allclose(mine["equivalent_diameter_um"], ref["equivalent_diameter_area"] * 0.5)
        # Feret: the outline through pixel corners here, a contour through edge midpoints there
        assert np.all(np.abs(mine["feret_max_px"] - ref["feret_diameter_max"]) <= 1.5)


def test_objects_are_8_connected_and_min_size_drops_small_ones_only_from_the_objects():
    labels = np.zeros((10, 10), np.uint8)
    labels[2, 2] = labels[3, 3] = 1  # diagonal neighbours: one object
    labels[7:9, 7:9] = 1
    m = measure(labels)
    assert list(m.objects["area_px"]) == [2, 4]
    small = measure(labels, min_size=3)
    assert list(small.objects["area_px"]) == [4]
    assert small.fractions.equals(m.fractions)


def test_volumes_are_26_connected_and_measured_as_volumes():
    labels = np.zeros((6, 8, 8), np.uint16)
    labels[1, 1, 1] = labels[2, 2, 2] = 5  # corner neighbours
    labels[3:5, 4:7, 4:7] = 5
    m = measure(labels, pixel_size=2.0)
    assert list(m.objects["volume_px"]) == [2, 18]
    np.testing.assert_allclose(m.objects["volume_um3"], [16.0, 144.0])
    np.testing.assert_allclose(m.fractions.set_index("label").loc[5, "volume_um3"], 20 * 8.0)


def test_probabilities_give_the_expected_fraction_and_each_objects_confidence():
    labels = np.ones((20, 20), np.uint8)
    labels[:, 10:] = 2
    proba = np.zeros((20, 20, 2), np.float32)
    proba[..., 0] = np.where(labels == 1, 0.9, 0.3)
    proba[..., 1] = 1 - proba[..., 0]
    m = measure(labels, proba=proba)
    np.testing.assert_allclose(m.fractions["expected_fraction"], [0.6, 0.4], rtol=1e-6)
    np.testing.assert_allclose(m.objects["mean_confidence"], [0.9, 0.7], rtol=1e-6)


def test_summary_interval_is_scipys_t_interval_of_the_per_image_fractions():
    ms = [measure(two_phase(seed), pixel_size=0.1) for seed in range(5)]
    summary = summarise(ms, [f"field {i}" for i in range(5)]).set_index("label")
    for value in (1, 2, 3):
        per_image = np.array([m.fractions.set_index("label").loc[value, "fraction"] for m in ms])
        low, high = stats.t.interval(0.95, 4, loc=per_image.mean(), scale=stats.sem(per_image))
        assert summary.loc[value, "mean_fraction"] == pytest.approx(per_image.mean())
        assert summary.loc[value, "ci95_low"] == pytest.approx(low)
        assert summary.loc[value, "ci95_high"] == pytest.approx(high)
        assert summary.loc[value, "objects"] == sum((m.objects["label"] == value).sum() for m in ms)
        inside = np.concatenate([m.objects[(m.objects["label"] == value) & ~m.objects["touches_border"]]
                                 ["equivalent_diameter_px"] for m in ms])
        assert summary.loc[value, "objects_inside"] == len(inside) <= summary.loc[value, "objects"]
        assert summary.loc[value, "median_equivalent_diameter_px"] == np.median(inside)  # cut objects left out
    assert summary.loc[2, "objects_inside"] < summary.loc[2, "objects"]  # some precipitates are cut
    assert summary.loc[2, "median_equivalent_diameter_um"] == pytest.approx(
        summary.loc[2, "median_equivalent_diameter_px"] * 0.1)


def test_a_value_missing_from_an_image_counts_as_zero_there():
    a, b = np.ones((8, 8), np.uint8), np.ones((8, 8), np.uint8)
    a[:4] = 2
    summary = summarise([measure(a), measure(b)]).set_index("label")
    assert summary.loc[2, "mean_fraction"] == pytest.approx(0.25)
    assert summary.loc[2, "images"] == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"labels": np.zeros(5, np.uint8)}, "2-D image or a 3-D volume"),
    ({"labels": np.zeros((4, 4), np.float32)}, "whole numbers"),
    ({"labels": np.zeros((4, 4), np.uint8), "image": np.zeros((5, 4))}, "the image has shape"),
    ({"labels": np.zeros((4, 4), np.uint8), "proba": np.zeros((4, 4))}, "probabilities must be"),
    ({"labels": np.zeros((4, 4), np.uint8), "proba": np.full((4, 4, 2), np.nan)}, "NaN or inf"),
    ({"labels": np.zeros((4, 4), np.uint8), "pixel_size": -1}, "positive number"),
    ({"labels": np.zeros((4, 4), np.uint8), "pixel_size": "µm"}, "number of µm"),
    ({"labels": np.zeros((4, 4), np.uint8), "min_size": -2}, "min_size"),
])
def test_bad_input_is_refused_with_a_clear_message(kwargs, message):
    labels = kwargs.pop("labels")
    with pytest.raises(ValueError, match=message):
        measure(labels, **kwargs)
    with pytest.raises(ValueError, match="no measurements"):
        summarise([])


def exact_feret(mask: np.ndarray) -> tuple[float, float]:
    """Largest and smallest calliper width of a mask's pixel squares, from the convex hull of every
    pixel corner (scipy's qhull) and its edges' normals: the brute-force reference."""
    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import pdist

    y, x = np.nonzero(mask)
    corners = np.concatenate([np.stack([y + dy, x + dx], axis=1) for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)])
    hull = corners[ConvexHull(corners).vertices]
    edges = np.roll(hull, -1, axis=0) - hull
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1) / np.linalg.norm(edges, axis=1)[:, None]
    projected = hull @ normals.T
    return float(pdist(hull).max()), float((projected.max(axis=0) - projected.min(axis=0)).min())


def shapes(size: int = 96):
    """Objects whose Feret diameters are hard: a pixel, lines, thin rotated bars, rings, blobs."""
    from skimage.draw import ellipse, line, polygon

    labels = np.zeros((size, size), np.uint8)
    labels[3, 3] = 1
    labels[line(8, 2, 8, 30)] = 1
    labels[line(12, 2, 40, 25)] = 1
    for k, angle in enumerate((0.3, 1.1, 2.0)):
        rr, cc = ellipse(30 + 25 * k, 60, 10, 2.5, rotation=angle, shape=labels.shape)
        labels[rr, cc] = 1
    rr, cc = polygon([50, 60, 88, 70], [5, 40, 30, 8], shape=labels.shape)
    labels[rr, cc] = 1
    yy, xx = np.mgrid[:size, :size]
    labels[((yy - 80) ** 2 + (xx - 80) ** 2 <= 100) & ((yy - 80) ** 2 + (xx - 80) ** 2 > 30)] = 1
    return labels


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_feret_diameters_are_the_calliper_widths_of_the_pixel_squares(seed):
    labels = shapes() if seed is None else two_phase(seed)
    m = measure(labels, classes=[int(v) for v in np.unique(labels) if v])
    assert len(m.objects) > 5
    for row in m.objects.itertuples():
        big, small = exact_feret(m.object_ids == row.id)
        assert abs(row.feret_max_px - big) <= 1e-5 * big, (row.id, row.feret_max_px, big)  # 1 - cos(0.25°)
        # refined to 0.05° steps around the best direction: within sin(0.025°) of the largest width
        assert np.sin(np.radians(0.025)) * big >= row.feret_min_px - small >= -1e-5 * big, (row.id, row.feret_min_px, small)
        assert row.feret_min_px <= row.feret_max_px
    single = m.objects[m.objects["area_px"] == 1]
    if len(single):
        np.testing.assert_allclose(single[["feret_max_px", "feret_min_px"]].to_numpy()[0], [np.sqrt(2), 1.0], rtol=1e-6)


def test_split_cuts_two_touching_disks_apart_and_says_so():
    yy, xx = np.mgrid[:60, :90]
    labels = np.zeros((60, 90), np.uint8)
    labels[(yy - 30) ** 2 + (xx - 30) ** 2 <= 144] = 1
    labels[(yy - 30) ** 2 + (xx - 52) ** 2 <= 144] = 1  # overlapping: one connected component
    labels[(yy - 8) ** 2 + (xx - 80) ** 2 <= 16] = 1  # a disk alone
    whole = measure(labels)
    assert list(whole.objects["area_px"]) == [49, int((labels[:, :70] == 1).sum())]  # raster order
    assert "pieces" not in whole.objects and not whole.split
    cut = measure(labels, split=True)
    assert cut.split and len(cut.objects) == 3
    assert cut.objects["area_px"].sum() == (labels == 1).sum()  # every pixel still in one object
    pair = cut.objects[cut.objects["pieces"] == 2]
    assert len(pair) == 2 and abs(pair["area_px"].iloc[0] - pair["area_px"].iloc[1]) <= 30
    np.testing.assert_allclose(sorted(pair["centroid_x"]), [30, 52], atol=1.5)
    assert list(cut.objects[cut.objects["pieces"] == 1]["area_px"]) == [49]
    # the cut objects are measured like any other: regionprops of the object image
    ref = regionprops_table(cut.object_ids, properties=("label", "area", "perimeter", "eccentricity"))
    np.testing.assert_array_equal(cut.objects["id"], ref["label"])
    np.testing.assert_allclose(cut.objects["perimeter_px"], ref["perimeter"], rtol=1e-12)
    np.testing.assert_allclose(cut.objects["eccentricity"], ref["eccentricity"], rtol=1e-9)


def test_object_ids_image_numbers_the_objects_of_the_table_and_min_size_clears_the_dropped():
    labels = two_phase(2)
    m = measure(labels, min_size=30)
    ids = m.object_ids
    assert ids.shape == labels.shape and ids.dtype == np.int32
    present = np.unique(ids[ids > 0])
    np.testing.assert_array_equal(present, m.objects["id"])
    counts = np.bincount(ids.ravel())[m.objects["id"]]
    np.testing.assert_array_equal(counts, m.objects["area_px"])
    for row in m.objects.head(5).itertuples():
        assert np.all(labels[ids == row.id] == row.label)


def test_classes_absent_from_the_labels_get_a_row_of_zero_pixels_and_their_expected_fraction():
    labels = np.ones((8, 8), np.uint8)
    proba = np.zeros((8, 8, 3), np.float32)
    proba[..., 0], proba[..., 1], proba[..., 2] = 0.6, 0.3, 0.1
    m = measure(labels, proba=proba)
    assert list(m.fractions["label"]) == [1, 2, 3]
    assert list(m.fractions["pixels"]) == [64, 0, 0]
    np.testing.assert_allclose(m.fractions["expected_fraction"], [0.6, 0.3, 0.1], rtol=1e-6)
    assert list(m.objects["label"]) == [1]
    empty = measure(np.zeros((8, 8), np.uint8), classes=[])
    assert len(empty.objects) == 0 and list(empty.fractions["label"]) == [0]
