"""The volume benchmark's pure pieces (issue 28) on tiny generated volumes: strokes on 3 slices,
scoring, the synthetic volumes, scikit-image's features one sigma at a time, the target checks.
No evaluation data is read."""


import numpy as np
import pytest
from conftest import benchmark_script


@pytest.fixture(scope="module")
def bench():
    yield from benchmark_script("volumes")


@pytest.fixture
def three_phase_volume():
    """(12, 64, 64) uint8 class ids: a matrix 0, a slab 1 (x 40..63) and a ball 2 through every slice."""
    gt = np.zeros((12, 64, 64), np.uint8)
    gt[:, :, 40:] = 1
    yy, xx = np.mgrid[:64, :64]
    gt[:, (yy - 30) ** 2 + (xx - 18) ** 2 < 12**2] = 2
    return gt


def test_painted_slices_are_at_a_quarter_half_and_three_quarters(bench):
    assert bench.stroke_slices(12) == (3, 6, 9)
    assert bench.stroke_slices(165) == (41, 82, 123)
    assert bench.stroke_slices(42) == (10, 21, 31)
    with pytest.raises(ValueError, match="at least 4 slices"):
        bench.stroke_slices(3)


def test_strokes_lie_on_the_three_slices_only_and_paint_every_class(bench, three_phase_volume):
    gt = three_phase_volume
    zs = bench.stroke_slices(len(gt))
    labels = bench.volume_scribbles(gt, zs, budget=0.02, seed=0)
    assert labels.shape == gt.shape and labels.dtype == np.uint8
    assert set(np.flatnonzero(labels.reshape(len(gt), -1).any(1))) == set(zs)  # nothing elsewhere
    for z in zs:
        painted = labels[z] > 0
        assert set(np.unique(labels[z][painted])) == {1, 2, 3}  # every class on every painted slice
        assert np.array_equal(labels[z][painted] - 1, gt[z][painted])  # never a wrong label
        assert painted.sum() <= 0.02 * 64 * 64
    # each slice has its own seed: the strokes differ between slices of identical truth
    assert not np.array_equal(labels[zs[0]], labels[zs[1]])
    assert np.array_equal(labels, bench.volume_scribbles(gt, zs, budget=0.02, seed=0))  # seeded


def test_score_counts_every_voxel_outside_the_excluded_slices(bench):
    gt = np.array([[[0, 0, 1, 1]], [[1, 1, 1, 1]]], np.uint8)  # (2, 1, 4)
    pred = np.array([[[0, 1, 1, 1]], [[0, 0, 0, 0]]], np.uint8)
    s = bench.score(gt, pred, 2, exclude_z=[1])
    # slice 0 only: class 0 tp 1, fn 1 -> 1/2; class 1 tp 2, fp 1 -> 2/3
    np.testing.assert_allclose(s["iou"], [1 / 2, 2 / 3])
    assert s["miou"] == pytest.approx(7 / 12)
    assert s["scored_voxels"] == 4 and s["confusion"] == [[1, 1], [0, 2]]
    s = bench.score(gt, pred, 2)  # both slices: class 0 tp 1, fp 4, fn 1; class 1 tp 2, fp 1, fn 4
    np.testing.assert_allclose(s["iou"], [1 / 6, 2 / 7])
    assert s["scored_voxels"] == 8


def test_score_leaves_absent_classes_and_ignored_voxels_out(bench):
    gt = np.array([[[0, 0, 255, 1]]], np.uint8)
    pred = np.array([[[0, 0, 1, 1]]], np.uint8)
    s = bench.score(gt, pred, 3)  # class 2 in neither truth nor prediction
    assert s["iou"] == [1.0, 1.0, None] and s["miou"] == 1.0 and s["scored_voxels"] == 3
    with pytest.raises(ValueError, match="holds class 3"):
        bench.score(gt, pred + 2, 3)
    with pytest.raises(ValueError, match="shape"):
        bench.score(gt, pred[:, :, :3], 3)


@pytest.mark.parametrize("name, k", [("blobs2", 2), ("blobs3", 3)])
def test_synthetic_volume_is_seeded_uint8_with_exact_truth(bench, name, k):
    shape = (16, 40, 40)
    state = np.random.get_state()
    image, gt = bench.synthetic_volume(name, shape, seed=3)
    assert np.array_equal(np.random.get_state()[1], state[1])  # porespy's global seeding undone
    assert image.shape == gt.shape == shape and image.dtype == gt.dtype == np.uint8
    assert set(np.unique(gt)) == set(range(k))  # every class, no other value
    again, gt_again = bench.synthetic_volume(name, shape, seed=3)
    assert np.array_equal(image, again) and np.array_equal(gt, gt_again)
    _, gt_other = bench.synthetic_volume(name, shape, seed=4)
    assert not np.array_equal(gt, gt_other)
    # each class is imaged at its own grey level (blur and noise average out over a class)
    levels = bench.SYNTHETIC[name].levels
    means = [image[gt == c].mean() for c in range(k)]
    assert np.argsort(means).tolist() == np.argsort(levels).tolist()
    assert all(abs(m - lv) < 12 for m, lv in zip(means, levels))
    with pytest.raises(ValueError, match="unknown synthetic volume"):
        bench.synthetic_volume("foam", shape)


def test_render_maps_classes_to_levels_without_blur_or_noise(bench):
    gt = np.array([[[0, 1, 2]]], np.uint8)
    image = bench.render(gt, (10.0, 100.0, 300.0), psf=(0, 0, 0), noise=0.0, seed=0)
    assert image.dtype == np.uint8 and image.tolist() == [[[10, 100, 255]]]  # clipped to uint8


def test_features_one_sigma_at_a_time_equal_the_one_call(bench):
    from skimage.feature import multiscale_basic_features

    volume = np.random.default_rng(0).integers(0, 256, (6, 20, 24), dtype=np.uint8)
    one_call = multiscale_basic_features(volume, sigma_min=1, sigma_max=16, channel_axis=None)
    per_sigma = bench.skimage_features_3d(volume, per_sigma=True)
    assert per_sigma.shape == one_call.shape == (6, 20, 24, 25)
    assert per_sigma.dtype == one_call.dtype and np.array_equal(per_sigma, one_call)


def test_centre_crop_keeps_the_middle_box(bench):
    a = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    crop = bench.centre_crop(a, (3, 4, 100))  # a side longer than the array's: all of it
    assert crop.shape == (3, 4, 7)
    assert np.array_equal(crop, a[1:4, 1:5, :])
    assert bench.centre_crop(a, None) is a


def _row(volume, method, miou, total, peak=1.0):
    return {"volume": volume, "method": method, "label": method, "miou": miou, "total_s": total,
            "peak_rss_gib": peak}


def test_targets_pass_and_fail_on_their_thresholds(bench):
    rows = [_row("blobs2", "skimage-3d", 0.80, 100.0), _row("blobs2", "dinoseg-2d", 0.79, 20.0),
            _row("blobs2", "dinoseg-3d", 0.81, 120.0),
            _row("lucchi", "skimage-3d-per-sigma", 0.70, 300.0), _row("lucchi", "dinoseg-2d", 0.60, 30.0),
            _row("lucchi", "dinoseg-3d", 0.75, 200.0, peak=3.0), _row("lucchi-x2", "dinoseg-3d", 0.74, 400.0, peak=3.3),
            _row("lucchi-z4", "dinoseg-3d", 0.70, 50.0), _row("lucchi-z4", "dinoseg-3d-isotropic", 0.72, 50.0)]
    volumes = [{"name": n} for n in ("lucchi", "lucchi-z4", "lucchi-x2", "blobs2")]
    checks = bench.target_checks(rows, volumes)
    text = "\n".join(checks)
    assert "✗ blobs2: dinoseg 3-D 0.810 vs dinoseg 2-D per slice 0.790 (+0.020" not in text  # +0.020 is enough
    assert "✓ blobs2: dinoseg 3-D 0.810 vs dinoseg 2-D per slice 0.790" in text
    assert "✓ blobs2: dinoseg 3-D 0.810 vs skimage-3d 0.800" in text
    assert "✗ blobs2: time dinoseg 3-D / skimage-3d = 120.0 / 100.0 s = 1.20" in text
    # lucchi's reference is the per-sigma row where the one call did not run
    assert "✓ lucchi: time dinoseg 3-D / skimage-3d-per-sigma = 200.0 / 300.0 s = 0.67" in text
    assert "✓ lucchi: dinoseg 3-D peak RSS 3.00 GiB" in text
    assert "✓ lucchi-x2 (2x the voxels): dinoseg 3-D peak RSS 3.30 GiB vs 3.00 (1.10x" in text
    assert "✗ lucchi-z4: spacing (4, 1, 1) 0.700 vs (1, 1, 1) 0.720" in text


def test_targets_say_why_they_are_unchecked(bench):
    rows = [_row("blobs2", "skimage-3d", 0.80, 100.0),
            {"volume": "blobs2", "method": "dinoseg-3d", "label": "dinoseg 3-D", "status": "not available yet"}]
    checks = bench.target_checks(rows, [{"name": "blobs2"}])
    assert len(checks) == 1 and checks[0].startswith("– blobs2: dinoseg 3-D not run (not available yet)")
