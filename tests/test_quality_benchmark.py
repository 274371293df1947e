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
