"""CAS pipeline on planted features and attention, and the classical rule on synthetic images, with known answers."""

import numpy as np
import pytest

from napari_dinoseg import CASConfig, FeatureConfig, segment_unsupervised
from napari_dinoseg.features.featurise import FeatureStack
from napari_dinoseg.unsupervised import (
    MAX_CLASSES, background_class, box_iou, boxes_are_meaningful, class_silhouette, merge_centroids, number_of_classes,
    object_boxes, semantic_distance, smooth_channels,
)

from conftest import iou

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


def test_without_attention_the_class_with_the_largest_region_is_background(rng):
    lay = layout_a()
    feats = planted(rng, lay)
    plain = FeatureStack(feats.data, FeatureConfig(), feats.channel_names, None)
    with pytest.warns(UserWarning, match="largest connected region is taken as background"):
        result = segment_unsupervised(plain, CASConfig(k=12))
    assert background_class(result.labels) == 1
    np.testing.assert_array_equal(result.foreground, result.labels != 1)
    assert result.foreground.any() and result.messages
    assert np.isnan(result.threshold) and 2 <= result.n_clusters <= MAX_CLASSES


def discs_on_textured_matrix(rng):
    """(image uint8 (160, 192), truth bool, true boxes): five bright discs (r 9..18 px) on a
    dark matrix with a strong texture (sinusoidal pattern plus noise)."""
    h, w = 160, 192
    yy, xx = np.mgrid[:h, :w]
    discs = [(35, 40, 14), (40, 130, 18), (110, 60, 16), (115, 150, 12), (80, 100, 9)]
    truth = np.zeros((h, w), bool)
    for cy, cx, r in discs:
        truth |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    matrix = 60 + 20 * np.sin(xx / 2.5) * np.sin(yy / 3.5) + rng.normal(0, 12, (h, w))
    image = np.where(truth, 190 + rng.normal(0, 12, (h, w)), matrix)
    boxes = {(cy - r + 1, cx - r + 1, cy + r, cx + r) for cy, cx, r in discs}
    return np.clip(image, 0, 255).astype(np.uint8), truth, boxes


def test_classical_two_phases_give_two_classes_and_a_box_per_disc(rng):
    image, truth, true_boxes = discs_on_textured_matrix(rng)
    with pytest.warns(UserWarning, match="2 classes"):
        result = segment_unsupervised(image, CASConfig(features=FeatureConfig(kind="classical")))
    assert result.labels.max() == 2 and result.silhouettes[2] > result.silhouettes[3] + 0.05
    assert result.foreground_classes.tolist() == [2]
    fg = result.foreground
    assert (fg & truth).sum() / (fg | truth).sum() > 0.97
    (boxes,) = result.boxes
    assert len(boxes) == len(true_boxes)  # one per disc; the superbox is the largest disc's box
    for box in true_boxes:
        assert max(box_iou(box, b) for b in boxes) > 0.85
    assert box_iou(boxes[result.superbox[0]], (23, 113, 58, 148)) > 0.85


def test_classical_three_phases_give_three_classes(phases):
    image, truth, _ = phases
    result = segment_unsupervised(image, CASConfig(features=FeatureConfig(kind="classical")))
    assert result.labels.max() == 3
    # 1 is the matrix (the largest connected region), then by decreasing area: discs, squares
    for cls in (1, 2, 3):
        assert iou(result.labels, truth, cls) > 0.75, cls
    assert result.foreground_classes.tolist() == [2, 3]
    assert len(result.boxes[0]) == 5  # three discs, two squares (the superbox is one of them)


def test_classical_k_caps_the_classes_and_stack_mode_shares_ids(phases):
    image, truth, _ = phases
    capped = segment_unsupervised(image, CASConfig(features=FeatureConfig(kind="classical"), k=2))
    assert capped.labels.max() == 2 and list(capped.silhouettes) == [2]
    moved = np.roll(image, (20, -30), axis=(0, 1))
    both = segment_unsupervised([image, moved], CASConfig(features=FeatureConfig(kind="classical")))
    assert both.labels.shape == (2, *image.shape) and both.labels.max() == 3
    inside = (slice(40, 120), slice(40, 110))  # away from the seams np.roll makes (rows 20, columns 130)
    assert (np.roll(both.labels[0], (20, -30), axis=(0, 1))[inside] == both.labels[1][inside]).mean() > 0.99


def test_classical_channels_and_the_number_of_classes_rule():
    names = ["intensity", "gaussian_s1", "sobel_s1", "gaussian_s2", "gaussian_s4", "gaussian_s8", "dog_s2-s1"]
    assert smooth_channels(names) == ([1, 3, 4], [0])
    rgb = [f"c{c}:{n}" for c in range(3) for n in names]
    channels, finest = smooth_channels(rgb)
    assert channels == [1, 3, 4, 8, 10, 11, 15, 17, 18] and finest == [0, 3, 6]
    assert smooth_channels(["intensity", "gaussian_s8", "gaussian_s16"]) == ([1], [0])  # all coarse: the finest
    assert smooth_channels(["vit_0", "vit_1"]) == ([0, 1], [0, 1])  # no Gaussian: everything
    assert number_of_classes({2: 0.5, 3: 0.56, 4: 0.6}, 0.05) == 3  # +0.06, then only +0.04
    assert number_of_classes({2: 0.85, 3: 0.98, 4: 0.78}, 0.05) == 3
    assert number_of_classes({2: 0.9, 3: 0.6, 4: 0.99}, 0.05) == 2  # stops at the first small gain
    assert number_of_classes({2: 0.5}, 0.05) == 2


def test_class_silhouette_weighs_classes_equally():
    points = np.array([[0.0], [0.1], [0.2], [0.3], [10.0], [10.2]])
    labels = np.array([0, 0, 0, 0, 1, 1])
    from sklearn.metrics import silhouette_samples

    s = silhouette_samples(points, labels)
    assert class_silhouette(points, labels) == pytest.approx((s[:4].mean() + s[4:].mean()) / 2)
    assert class_silhouette(points, np.zeros(6, int)) == -1.0


def test_background_is_the_class_with_the_largest_connected_region():
    labels = np.ones((40, 40), int)
    labels[:, ::4] = 2  # a connected grid of thin lines: the matrix
    labels[::4, :] = 2
    assert (labels == 1).sum() > (labels == 2).sum()  # the blobs of class 1 cover more ...
    assert background_class(labels) == 2  # ... but class 2 is one connected region
    assert background_class(np.stack([labels, np.full_like(labels, 3)])) == 3  # a whole slice of 3


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


def scattered_discs(rng, cover=0.2, radius=12, shape=(256, 256)) -> np.ndarray:
    """``shape`` bool: discs (radius 0.6..1.4 x ``radius``) at random places, 2 px apart at least,
    until they cover ``cover`` of the image: separate, compact objects on a background."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    fg = np.zeros(shape, bool)
    for _ in range(20000):
        if fg.mean() >= cover:
            break
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), radius * rng.uniform(0.6, 1.4)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        if not fg[d2 < (r + 2) ** 2].any():
            fg |= d2 < r**2
    return fg


def two_phase_noise(rng, sigma, cover=0.5, shape=(256, 256)) -> np.ndarray:
    """``shape`` bool: smoothed white noise below its ``cover`` quantile, a continuous two-phase
    microstructure at cover 0.5."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return noise < np.quantile(noise, cover)


@pytest.mark.parametrize("cover", [0.1, 0.2, 0.35])
def test_boxes_are_shown_on_separate_discs(rng, cover):
    shown, note = boxes_are_meaningful(scattered_discs(rng, cover))
    assert shown and note.startswith("boxes shown"), note


@pytest.mark.parametrize("sigma", [3, 6, 12])
def test_boxes_are_hidden_on_a_continuous_two_phase_microstructure(rng, sigma):
    shown, note = boxes_are_meaningful(two_phase_noise(rng, sigma))
    assert not shown and note.startswith("boxes hidden:") and "not separate objects" in note, note


def test_boxes_hidden_notes_say_which_rule(rng):
    membranes = np.zeros((256, 256), bool)  # a thin network spanning the image: lines 2 px wide
    membranes[::32] = membranes[1::32] = True
    membranes[:, ::40] = membranes[:, 1::40] = True
    shown, note = boxes_are_meaningful(membranes)
    assert not shown and "one connected network touching opposite borders" in note, note
    cells = ~membranes  # the cells between the membranes: packed, thin gaps
    shown, note = boxes_are_meaningful(cells)
    assert not shown and "packed close together" in note, note
    branching = two_phase_noise(rng, 3, cover=0.3)  # separate, but amoeboid regions
    shown, note = boxes_are_meaningful(branching)
    assert not shown and "irregular, branching shapes" in note, note
    assert boxes_are_meaningful(np.ones((64, 64), bool))[0] is False
    assert boxes_are_meaningful(np.zeros((64, 64), bool))[0] is True  # no boxes: nothing to hide


def test_boxes_verdict_of_a_stack_is_the_majority_of_its_slices(rng):
    discs = [scattered_discs(rng, 0.2) for _ in range(3)]
    noise = [two_phase_noise(rng, 6) for _ in range(2)]
    shown, note = boxes_are_meaningful(np.stack(discs + noise))
    assert shown and "3 of 5 slices" in note, note
    shown, note = boxes_are_meaningful(np.stack(discs[:1] + noise))
    assert not shown and note.startswith("boxes hidden:") and note.endswith("(in 2 of 3 slices)"), note
    with pytest.raises(ValueError, match="foreground must be"):
        boxes_are_meaningful(np.zeros(5, bool))


def test_segment_unsupervised_says_whether_its_boxes_are_meaningful(rng):
    """Classical CAS: boxes kept on discs on a matrix, hidden (but still computed) on a two-phase structure."""
    config = CASConfig(features=FeatureConfig(kind="classical"))
    image, _, _ = discs_on_textured_matrix(rng)
    with pytest.warns(UserWarning):
        result = segment_unsupervised(image, config)
    assert result.boxes_shown and len(result.boxes[0]) > 0, result.boxes_note
    assert "slices" not in result.boxes_note  # one image: no slice count
    smooth = two_phase_noise(rng, 6, shape=(192, 192))
    image = np.where(smooth, 60, 190) + rng.normal(0, 8, smooth.shape)
    with pytest.warns(UserWarning):
        result = segment_unsupervised(np.clip(image, 0, 255).astype(np.uint8), config)
    assert not result.boxes_shown and result.boxes_note.startswith("boxes hidden:"), result.boxes_note
    assert len(result.boxes[0]) > 0  # computed all the same, for scripts that want them
