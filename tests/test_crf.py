import numpy as np
import pytest

from conftest import iou
from napari_dinoseg.config import CRFConfig
from napari_dinoseg.crf import crf_refine


def two_regions(rng):
    truth = np.ones((96, 128), int)
    truth[:, 60:] = 2
    truth[30:60, 20:45] = 2
    image = np.where(truth == 2, 190, 60).astype(np.uint8)
    p2 = np.clip(np.where(truth == 2, 0.7, 0.3) + rng.normal(0, 0.3, truth.shape), 0.01, 0.99)
    return image, truth, np.stack([1 - p2, p2], -1).astype(np.float32)


def test_crf_raises_the_iou_of_a_noisy_probability_map(rng):
    image, truth, proba = two_regions(rng)
    before = proba.argmax(-1) + 1
    refined = crf_refine(image, proba)
    after = refined.argmax(-1) + 1
    assert refined.shape == proba.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(-1), 1, atol=1e-4)
    assert iou(before, truth, 2) < 0.85
    assert iou(after, truth, 2) > 0.97 and iou(after, truth, 2) > iou(before, truth, 2) + 0.1


def test_crf_accepts_rgb_and_checks_shapes(rng):
    image, _, proba = two_regions(rng)
    rgb = np.stack([image] * 3, -1)
    np.testing.assert_allclose(crf_refine(rgb, proba), crf_refine(image, proba), atol=1e-5)
    with pytest.raises(ValueError, match="differ"):
        crf_refine(image[:50], proba)
    with pytest.raises(ValueError, match=r"\(H, W, K\)"):
        crf_refine(image, proba[..., 0])
    with pytest.raises(ValueError, match="iterations"):
        CRFConfig(iterations=0)
