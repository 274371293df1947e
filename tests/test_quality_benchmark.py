"""The quality benchmark's scribble simulator and scoring (synthetic ground truth only)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("quality", None)


@pytest.fixture
def ground_truth():
    """(256, 256) uint8: background 0, big blobs 1, a 2-px line 2 (thin), an ignored band 255."""
    gt = np.zeros((256, 256), np.uint8)
    yy, xx = np.mgrid[:256, :256]
    gt[(yy - 80) ** 2 + (xx - 80) ** 2 < 40**2] = 1
    gt[(yy - 180) ** 2 + (xx - 170) ** 2 < 30**2] = 1
    gt[200:202, 10:120] = 2
    gt[:, 250:] = 255
    return gt


def test_scribbles_stay_inside_their_class_and_respect_the_budget(quality, ground_truth):
    budget = 0.01 * ground_truth.size
    lab = quality.simulate_scribbles(ground_truth, budget, seed=0)
    painted = lab > 0
    assert painted.sum() <= budget
    assert np.array_equal(lab[painted] - 1, ground_truth[painted])  # never a wrong label
    assert set(np.unique(lab)) == {0, 1, 2, 3}  # the thin class is painted too
    assert (lab == 1).sum() > 0.5 * budget / 3  # the budget is mostly spent
    again = quality.simulate_scribbles(ground_truth, budget, seed=0)
    other = quality.simulate_scribbles(ground_truth, budget, seed=1)
    assert np.array_equal(lab, again) and not np.array_equal(lab, other)


def test_strokes_are_thin_lines_not_blobs(quality, ground_truth):
    lab = quality.simulate_scribbles(ground_truth, 0.01 * ground_truth.size, seed=2)
    from scipy import ndimage

    stroke = lab == 1
    eroded = ndimage.binary_erosion(stroke, np.ones((5, 5)))
    assert eroded.sum() < 0.05 * stroke.sum()  # 3 px wide: almost nothing survives a 5x5 erosion


def test_iou_from_the_confusion_matrix_ignores_255(quality):
    gt = np.array([[0, 0, 1, 1, 255]])
    pred = np.array([[0, 1, 1, 1, 0]])
    conf = quality.confusion(gt, pred, 2)
    assert conf.tolist() == [[1, 1], [0, 2]]
    np.testing.assert_allclose(quality.iou(conf), [1 / 2, 2 / 3])


def test_random_weights_are_refused_for_quality_rows(quality, tmp_path, capsys):
    with pytest.raises(SystemExit):
        quality.main(["--data", str(tmp_path), "--weights", "random"])
    assert "random features" in capsys.readouterr().err


# ----------------------------------------------------------------------------- cross-image rows


def _two_phase(seed: int, shape=(96, 96), dark=70, bright=150, with_blobs=True):
    """uint8 image of dark background and bright discs (+ noise), and its ground truth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    gt = np.zeros(shape, np.uint8)
    if with_blobs:
        for _ in range(4):
            cy, cx = rng.integers(15, shape[0] - 15, 2)
            gt[(yy - cy) ** 2 + (xx - cx) ** 2 < 10**2] = 1
    image = np.where(gt == 1, bright, dark) + rng.normal(0, 6, shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), gt


def _threshold_method(quality, calls):
    """A toy method (threshold half-way between the painted classes' means), counting its calls."""

    def features(image):
        calls["features"] += 1
        return image.astype(np.float32)[..., None]

    def fit(feats, labels):
        x, y = quality._painted(feats, labels)
        return (x[y == 1].mean() + x[y == 2].mean()) / 2

    def predict(thr, f, image):
        calls["predict"] += 1
        return (f[..., 0] > thr).astype(np.int64)

    return quality.Method("toy", features, fit, predict, "threshold")


def test_cross_rows_train_on_n_images_and_score_every_other_one(quality):
    pool = [(f"im{i}", *_two_phase(i, dark=40, bright=90, with_blobs=i != 0)) for i in range(6)]  # im0: one class
    plan = quality.make_plan("toy", "synthetic", ["bg", "disc"], pool, pool[:2], pool[-2:], None,
                             ["cross1", "cross2", "robust", "same"], 0.01, [0, 1, 2])
    names = [n for n, _, _ in pool]
    one, two = plan.rows["cross1"], plan.rows["cross2"]
    assert one["train_images"] == ["im1"]  # the first image that shows every class
    assert two["train_images"] == ["im1", "im2"]
    assert one["scored_images"] == [n for n in names if n != "im1"]
    assert two["scored_images"] == [n for n in names if n not in ("im1", "im2")]
    assert plan.rows["robust:orig"]["scored_images"] == ["im1"]
    assert plan.rows["robust:bc"]["training"] == plan.rows["cross1"]["training"]
    for items in plan.trainings.values():  # one scribble image per seed, all different
        for _, _, scribbles in items:
            assert len(scribbles) == 3 and not np.array_equal(scribbles[0], scribbles[1])
    assert set(plan.trainings) == {("im1",), ("im1", "im2"), ("im0", "im1")}
    # every image of the set is scored once, for all the rows it counts for
    targets = {t[0]: t[3] for t in plan.targets}
    assert targets["im0"] == ["cross1", "cross2"]
    assert targets["im2"] == ["cross1"]
    assert targets["im1"] == ["robust:orig"]
    assert targets["im5"] == ["cross1", "cross2", "same"]

    calls = {"features": 0, "predict": 0}
    result = quality.run_plan(plan, {"toy": _threshold_method(quality, calls)})
    # features: once per training image and once per target; predictions: per target, training set and seed
    n_pred = sum(3 * len({plan.rows[r]["training"] for r in rows}) for *_, rows in plan.targets)
    assert calls["features"] == 3 + len(plan.targets) and calls["predict"] == n_pred
    for row in ("cross1", "cross2", "same"):
        res = result["rows"][row]["methods"]["toy"]
        assert res["miou"] > 0.9 and len(res["miou_per_seed"]) == 3
    assert result["rows"]["cross1"]["n_scored"] == 5
    robust = result["robust"]["methods"]["toy"]
    # a fixed threshold does not survive x0.6 + 60: the ratio says so
    assert robust["miou_orig"] > 0.9 and robust["ratio"] < 0.7
    md = quality.report([result], ["toy"], "toy")
    assert "cross1: 1 → 5" in md and "cross2: 2 → 4" in md and "| toy | im1 |" in md


def test_single_image_sets_have_same_and_robust_rows_only(quality):
    pool = [("only", *_two_phase(3))]
    plan = quality.make_plan("one", "synthetic", ["bg", "disc"], pool, pool, pool, None,
                             ["cross1", "cross2", "robust", "same"], 0.01, [0, 1])
    assert set(plan.rows) == {"same", "robust:orig", "robust:bc"}
    assert len(plan.trainings) == 1  # the same scribbles serve both rows


def test_brightness_contrast_copy_keeps_the_dtype_and_clips(quality):
    img = np.array([[0, 100, 255]], np.uint8)
    out = quality.brightness_contrast(img)
    assert out.dtype == np.uint8 and out.tolist() == [[60, 120, 213]]
    big = quality.brightness_contrast(np.array([[65535]], np.uint16))
    assert big.dtype == np.uint16 and big.tolist() == [[39381]]
    assert quality.brightness_contrast(np.array([[200]], np.uint8), gain=2.0).tolist() == [[255]]


def test_gaussian_hgb_recovers_two_intensities_on_a_brightness_shifted_copy(quality):
    image, gt = _two_phase(7)
    scribbles = quality.simulate_scribbles(gt, 0.01 * gt.size, seed=0)
    method = quality.gaussian_hgb()
    model = method.fit([method.features(image)], [scribbles])
    for other, other_gt in (_two_phase(8), _two_phase(9, dark=110, bright=230)):
        for test in (other, quality.brightness_contrast(other)):
            pred = method.predict(model, method.features(test), test)
            assert np.nanmean(quality.iou(quality.confusion(other_gt, pred, 2))) > 0.8


def test_fast_one_feature_hgb_prediction_is_exact(quality):
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 1))
    y = (x[:, 0] > 0.3).astype(int) + (x[:, 0] > 1.2) + (rng.random(3000) < 0.1)
    model = HistGradientBoostingClassifier(random_state=0, max_iter=20).fit(x, y)
    test = np.concatenate([rng.normal(scale=2, size=(5000, 1)), model._bin_mapper.bin_thresholds_[0][:, None]])
    np.testing.assert_array_equal(quality.hgb_predict_1d(model, test), model.predict(test))


def test_identical_methods_run_once(quality):
    """On uint8 images normalise='fixed' equals 'legacy': the second is copied, not run."""
    from napari_dinoseg import FeatureConfig

    pool = [(f"im{i}", *_two_phase(i)) for i in range(1, 4)]
    plan = quality.make_plan("toy", "synthetic", ["bg", "disc"], pool, pool[:2], pool[-1:], None,
                             ["cross1", "robust"], 0.01, [0])
    methods = {"legacy": quality.dinoseg(FeatureConfig(normalise="legacy")),
               "fixed": quality.dinoseg(FeatureConfig(normalise="fixed")),
               "percentile": quality.dinoseg(FeatureConfig(normalise="percentile"))}
    result = quality.run_plan(plan, methods)
    res = result["rows"]["cross1"]["methods"]
    assert res["fixed"]["same_as"] == "legacy" and res["fixed"]["miou"] == res["legacy"]["miou"]
    assert "same_as" not in res["percentile"] and "fixed" not in result["seconds"]
    assert res["percentile"]["miou"] > 0.8
    # per-image percentiles make the features insensitive to the brightness / contrast change
    assert result["robust"]["methods"]["percentile"]["ratio"] > 0.95


def test_dropped_channels_leave_the_guide_in_place(quality):
    from napari_dinoseg import FeatureConfig, featurise

    image, _ = _two_phase(1, shape=(40, 40))
    fs = featurise(image, FeatureConfig(normalise="percentile"))
    sel = quality.select_channels(fs, quality.LEVEL_CHANNELS)
    assert "intensity" not in sel.channel_names and not any(n.startswith("gaussian_") for n in sel.channel_names)
    assert "sobel_s1" in sel.channel_names and sel.data.shape == (40, 40, len(sel.channel_names))
    i = fs.channel_names.index("sobel_s1")
    np.testing.assert_array_equal(sel.data[..., sel.channel_names.index("sobel_s1")], fs.data[..., i])
