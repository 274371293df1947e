"""The phase-fraction benchmark's fractions, errors and intervals (synthetic arrays only)."""


import numpy as np
import pytest
from conftest import benchmark_script



@pytest.fixture(scope="module")
def bench():
    yield from benchmark_script("measure_fractions")


def test_truth_fractions_leave_ignored_pixels_out(bench):
    gt = np.array([[0, 0, 1, 255],
                   [0, 2, 1, 255]], np.uint8)  # 6 counted pixels: 3 of class 0, 2 of 1, 1 of 2
    np.testing.assert_allclose(bench.truth_fractions(gt, 3), [3 / 6, 2 / 6, 1 / 6])
    np.testing.assert_allclose(bench.truth_fractions(gt, 4), [3 / 6, 2 / 6, 1 / 6, 0])  # a class absent: 0


def test_predicted_fractions_hard_and_expected_over_the_kept_pixels(bench):
    # label values 1..2 paint classes 0..1; the last column's pixels are ignored
    labels = np.array([[1, 1, 2, 2],
                       [1, 2, 2, 1]], np.uint8)
    proba = np.zeros((2, 4, 2), np.float32)
    proba[..., 0] = [[0.9, 0.6, 0.2, 0.0],
                     [0.7, 0.4, 0.1, 1.0]]
    proba[..., 1] = 1 - proba[..., 0]
    keep = np.ones((2, 4), bool)
    keep[:, 3] = False
    hard, expected = bench.predicted_fractions(labels, proba, [1, 2], 2, keep)
    np.testing.assert_allclose(hard, [3 / 6, 3 / 6])  # 1 1 2 / 1 2 2 over the first three columns
    np.testing.assert_allclose(expected, [2.9 / 6, 3.1 / 6], rtol=1e-6)
    # every pixel kept: the plain fractions
    hard, expected = bench.predicted_fractions(labels, proba, [1, 2], 2)
    np.testing.assert_allclose(hard, [0.5, 0.5])
    np.testing.assert_allclose(expected, [3.9 / 8, 4.1 / 8], rtol=1e-6)


def test_a_class_no_pixel_is_labelled_with_keeps_its_expected_fraction(bench):
    labels = np.ones((3, 3), np.uint8)
    proba = np.stack([np.full((3, 3), 0.7), np.full((3, 3), 0.3)], -1).astype(np.float32)
    hard, expected = bench.predicted_fractions(labels, proba, [1, 2], 3)  # class 2 never seen: 0
    np.testing.assert_allclose(hard, [1, 0, 0])
    np.testing.assert_allclose(expected, [0.7, 0.3, 0], rtol=1e-6)


def test_fraction_errors_mean_sign_and_seeds(bench):
    truth = np.array([[0.5, 0.5], [0.4, 0.6]])
    seed0 = np.array([[0.6, 0.4], [0.4, 0.6]])  # errors +0.1 -0.1 0 0: MAE 0.05
    seed1 = np.array([[0.5, 0.5], [0.2, 0.8]])  # errors 0 0 -0.2 +0.2: MAE 0.1
    err = bench.fraction_errors(truth, np.stack([seed0, seed1]))
    np.testing.assert_allclose(err["mae_per_seed"], [0.05, 0.1])
    assert err["mae"] == pytest.approx(0.075) and err["mae_std"] == pytest.approx(0.025)
    np.testing.assert_allclose(err["bias_per_class"], [(0.1 - 0.2) / 4, (-0.1 + 0.2) / 4])
    np.testing.assert_allclose(err["mae_per_class"], [0.3 / 4, 0.3 / 4])
    np.testing.assert_allclose(err["under_segmented_images"], [1 / 4, 1 / 4])
    assert err["max_abs_error"] == pytest.approx(0.2)
    assert bench.fraction_errors(truth, seed0)["mae"] == pytest.approx(0.05)  # one classifier, (N, K)
    with pytest.raises(ValueError, match="do not match"):
        bench.fraction_errors(truth, seed0[:1])


def test_interval_check_against_scipy(bench):
    from scipy import stats

    truth = np.array([[0.50, 0.50], [0.45, 0.55], [0.55, 0.45], [0.52, 0.48]])
    shifted = truth + np.array([0.2, -0.2])  # far off: the truth's mean is outside
    close = truth + np.array([0.001, -0.001])
    out = bench.interval_check(truth, np.stack([shifted, close]), ["a", "b", "c", "d"])
    x = truth[:, 0]
    low, high = stats.t.interval(0.95, 3, loc=x.mean(), scale=x.std(ddof=1) / 2)
    assert out[0]["truth"]["mean"] == pytest.approx(x.mean())
    assert (out[0]["truth"]["ci95_low"], out[0]["truth"]["ci95_high"]) == pytest.approx((low, high))
    assert out[0]["truth_mean_inside"] == 1 and out[1]["truth_mean_inside"] == 1 and out[0]["seeds"] == 2
    assert out[0]["predicted"]["mean"] == pytest.approx(x.mean() + 0.1005)  # mean over the two seeds


def test_summaries_by_image_group(bench):
    assert bench.image_group("super_spot3_180d_2") == "180d" and bench.image_group("super_spot1_0d_0") == "0d"
    assert bench.image_group("isb0_superalloy_sem") is None
    row = {"scored_images": ["s_0d_1", "s_180d_1", "s_180d_2"], "painted": [[5, 5], [6, 4]],
           "truth": [[0.5, 0.5], [0.5, 0.5], [0.4, 0.6]],
           "hard": [[[0.5, 0.5], [0.7, 0.3], [0.4, 0.6]], [[0.5, 0.5], [0.5, 0.5], [0.6, 0.4]]],
           "expected": [[[0.5, 0.5], [0.5, 0.5], [0.4, 0.6]]] * 2}
    out = bench.summarised(row)
    assert out["painted_pixels"] == 10
    assert out["hard_mae_by_group"] == pytest.approx({"0d": 0.0, "180d": 0.1})  # (0.2 + 0 + 0 + 0.2) / 4 per seed
    assert list(out["hard_mae_by_group"]) == ["0d", "180d"]
    assert out["expected_errors"]["mae"] == 0 and len(out["hard_interval"]) == 2
