"""CAS pipeline on planted features and attention, with known answers."""

import numpy as np
import pytest

from napari_dinoseg import CASConfig, FeatureConfig, segment_unsupervised
from napari_dinoseg.features.featurise import FeatureStack
from napari_dinoseg.unsupervised import box_iou, merge_centroids, object_boxes, semantic_distance

CLASSES = 4  # 0, 1 background; 2, 3 foreground (high attention)


def planted(rng, layout: np.ndarray, sub=3, dim=16, noise=0.02):
    """Features with one prototype per class, each split into ``sub`` nearby sub-clusters
    (k-means finds the sub-clusters, merging must undo the split), and attention high on
    classes 2 and 3."""
    protos = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:CLASSES]  # orthonormal: distance 1
    offsets = 0.15 * rng.normal(size=(CLASSES, sub, dim))
    part = rng.integers(0, sub, layout.shape)
    data = protos[layout] + offsets[layout, part] + noise * rng.normal(size=(*layout.shape, dim))
    att = np.where(layout >= 2, 1.0, 0.1)[..., None] + 0.01 * rng.random((*layout.shape, 2))
    return FeatureStack(data.astype(np.float32), FeatureConfig(kind="vit"), tuple(f"vit_{i}" for i in range(dim)),
                        att.astype(np.float32))


def layout_a():
    lay = np.zeros((64, 80), int)
    lay[:, 40:] = 1
    lay[8:24, 8:30] = 2
    lay[40:60, 50:75] = 3
    lay[44:56, 10:20] = 2
    return lay


def same_partition(labels, truth):
    """Labels equal truth up to a renaming of ids (a bijection)."""
    pairs = set(zip(labels.ravel().tolist(), truth.ravel().tolist()))
    return len(pairs) == len(np.unique(labels)) == len(np.unique(truth))


def test_planted_classes_and_foreground_are_recovered_exactly(rng):
    lay = layout_a()
    result = segment_unsupervised(planted(rng, lay), CASConfig(k=12, min_area=20))
    assert result.n_clusters == 12
    assert same_partition(result.labels, lay)
    np.testing.assert_array_equal(result.foreground, lay >= 2)
    assert result.labels.dtype == np.int32 and result.labels.min() == 1


def test_boxes_of_the_planted_objects(rng):
    lay = layout_a()
    result = segment_unsupervised(planted(rng, lay), CASConfig(k=12, min_area=20))
    (boxes,) = result.boxes
    expected = {(8, 8, 24, 30), (40, 50, 60, 75), (44, 10, 56, 20)}
    assert {tuple(b) for b in boxes} == expected
    assert tuple(boxes[result.superbox[0]]) == (40, 50, 60, 75)  # the largest object


def test_stack_mode_gives_the_same_ids_across_slices(rng):
    a = layout_a()
    b = np.zeros_like(a)
    b[:32] = 1
    b[40:60, 5:30] = 3
    b[5:20, 50:70] = 2
    feats = planted(rng, np.stack([a, b]))
    slices = [FeatureStack(feats.data[i], feats.config, feats.channel_names, feats.attention[i]) for i in range(2)]
    result = segment_unsupervised(slices, CASConfig(k=12, min_area=20))
    assert result.labels.shape == (2, *a.shape)
    assert same_partition(result.labels, np.stack([a, b]))
    for cls in range(CLASSES):
        ids = {int(np.unique(result.labels[z][lay == cls])[0]) for z, lay in enumerate((a, b)) if (lay == cls).any()}
        assert len(ids) == 1, cls
    assert len(result.boxes) == 2 and len(result.boxes[1]) == 2


def test_without_attention_the_largest_cluster_is_background(rng):
    lay = layout_a()
    feats = planted(rng, lay)
    plain = FeatureStack(feats.data, FeatureConfig(), feats.channel_names, None)
    with pytest.warns(UserWarning, match="largest cluster is taken as background"):
        result = segment_unsupervised(plain, CASConfig(k=12))
    biggest = np.argmax(np.bincount(result.labels.ravel()))
    np.testing.assert_array_equal(result.foreground, result.labels != biggest)
    assert result.foreground.any() and result.messages


def test_merge_rule_merges_only_closer_than_the_threshold():
    c = np.array([[1, 0, 0], [0.999, 0.04, 0], [0, 1, 0], [0, 0.995, 0.1], [0, 0, 1.0]])
    merged = merge_centroids(c, threshold=0.05)
    assert merged.tolist() == [1, 1, 2, 2, 3]
    assert merge_centroids(c, threshold=1e-6).tolist() == [1, 2, 3, 4, 5]
    assert len(set(merge_centroids(c, threshold=1.5).tolist())) == 1


def test_semantic_distance_is_the_modal_bins_right_edge():
    fg = [np.array([1.0, 0, 0]), np.array([0.0, 1, 0])]
    bg = [np.array([0.0, 0, 1]), np.array([0.0, 0.2, 1])]
    c = np.array(fg + bg)
    d = 1 - (c / np.linalg.norm(c, axis=1, keepdims=True)) @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T
    pairs = d[np.ix_([0, 1], [2, 3])].ravel()
    counts, edges = np.histogram(pairs, bins=20)
    expected = edges[np.argmax(counts) + 1]
    assert semantic_distance(c, np.array([0, 1])) == pytest.approx(expected)
    assert semantic_distance(c, np.array([0, 1]), 1.1) == pytest.approx(1.1 * expected)


def test_boxes_superbox_and_iou_deduplication():
    labels = np.ones((50, 60), int)
    labels[5:15, 5:15] = 2  # an object of class 2
    labels[30:45, 30:55] = 3  # the largest object: its box equals the superbox (IoU 1)
    labels[20:24, 5:9] = 2  # too small (16 px)
    fg = labels >= 2
    boxes, sup = object_boxes(labels, fg, [2, 3], min_area=20)
    assert [tuple(b) for b in boxes] == [(5, 5, 15, 15), (30, 30, 45, 55)]  # superbox deduplicated
    assert sup == 1
    # two touching objects of different classes: the superbox spans both and is kept
    labels[15:25, 5:15] = 3
    boxes, sup = object_boxes(labels, labels >= 2, [2, 3], min_area=20)
    assert tuple(boxes[sup]) in {(5, 5, 25, 15), (30, 30, 45, 55)}
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0 and box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 5)) == pytest.approx(0.5)


def test_crf_option_and_image_input(rng):
    image = np.zeros((48, 64), np.uint8)
    image[10:30, 10:40] = 200
    image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    cfg = CASConfig(features=FeatureConfig(sigmas=(1, 2)), k=4, crf=True)
    with pytest.warns(UserWarning):
        result = segment_unsupervised(image, cfg)
    assert result.labels.shape == image.shape
    square = result.labels[12:28, 12:38]
    assert (square == np.bincount(square.ravel()).argmax()).mean() > 0.95
    assert result.foreground[12:28, 12:38].all() != result.foreground[40:, :].all()


def test_bad_input():
    with pytest.raises(ValueError, match="no images"):
        segment_unsupervised([])
    with pytest.raises(ValueError, match="k must be"):
        CASConfig(k=1)
    with pytest.raises(ValueError, match="uniform"):
        segment_unsupervised(np.zeros((32, 32), np.uint8), CASConfig(features=FeatureConfig(sigmas=(1,)), k=4))
