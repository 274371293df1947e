"""Part co-segmentation: two-part objects on a background, at other places and sizes in three
images, get the same part ids in all of them (masks, planted saliency, CRF); votes; bad input."""

import dataclasses

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_dinoseg import FeatureConfig, featurise
from napari_dinoseg.crf import refine_labels
from napari_dinoseg.descriptors import saliency
from napari_dinoseg.parts import salient_foreground, segment_parts

CLASSICAL = FeatureConfig(sigmas=(1.0, 2.0), membrane=False, device="cpu")
VIT = FeatureConfig(kind="vit", weights="random", stride=14, shifts=(), flips=False, device="cpu",
                    precision="float32")
#: (image shape, object box (row0, col0, row1, col1)): the top half of the box is part 1, the bottom part 2
SCENES = [((96, 112), (20, 30, 76, 90)), ((112, 112), (10, 10, 60, 50)), ((84, 126), (30, 50, 84, 120))]
#: The same with boxes on the 14 px token grid, for ViT features without shifts
ALIGNED = [((98, 112), (14, 28, 70, 84)), ((112, 112), (0, 14, 56, 70)), ((84, 126), (28, 56, 84, 126))]


def scene(rng, shape, box):
    """(image uint8, truth uint8: 0 background, 1 bright noisy part, 2 dark striped part)."""
    r0, c0, r1, c1 = box
    truth = np.zeros(shape, np.uint8)
    truth[r0:(r0 + r1) // 2, c0:c1] = 1
    truth[(r0 + r1) // 2:r1, c0:c1] = 2
    background = 0.45 + 0.4 * (gaussian_filter(rng.random(shape), 3) - 0.5)
    bright = 0.8 + 0.15 * rng.normal(size=shape)
    stripes = 0.04 + 0.12 * (np.arange(shape[1]) // 2 % 2) + 0.03 * rng.normal(size=shape)
    image = np.choose(truth, [background, bright, stripes])
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), truth


def scenes(layout, seed=0):
    rng = np.random.default_rng(seed)
    pairs = [scene(rng, shape, box) for shape, box in layout]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def part_ious(labels, truths):
    """IoU of each true part with the label that covers most of it in image 0, that mapping
    reused on every image: ``(n_images, 2)``."""
    mapping = {p: np.bincount(labels[0][truths[0] == p]).argmax() for p in (1, 2)}
    assert mapping[1] != mapping[2] and 0 not in mapping.values()
    return np.array([[((lab == mapping[p]) & (t == p)).sum() / ((lab == mapping[p]) | (t == p)).sum()
                      for p in (1, 2)] for lab, t in zip(labels, truths)])


@pytest.fixture(scope="module")
def classical_set():
    images, truths = scenes(SCENES)
    return images, truths, [featurise(im, CLASSICAL) for im in images]


def test_parts_share_ids_across_images_with_masks(classical_set):
    images, truths, _ = classical_set
    labels = segment_parts(images, CLASSICAL, n_parts=2, foreground=[t > 0 for t in truths])
    assert [lab.shape for lab in labels] == [im.shape for im in images]
    assert all(lab.dtype == np.uint8 for lab in labels)
    assert part_ious(labels, truths).min() > 0.9
    for lab, t in zip(labels, truths):
        assert np.all(lab[t == 0] == 0)  # outside the masks: background
        assert set(np.unique(lab)) == {0, 1, 2}
    area = np.bincount(np.concatenate([lab.ravel() for lab in labels]))
    assert area[1] >= area[2]  # ids by decreasing total area


@pytest.fixture(scope="module")
def vit_set():
    images, truths = scenes(ALIGNED, seed=1)
    return images, truths, [featurise(im, VIT) for im in images]


def test_parts_with_vit_features_and_masks(vit_set):
    """Random weights: the mechanics only (the textures differ in every patch embedding)."""
    images, truths, stacks = vit_set
    labels = segment_parts(stacks, n_parts=2, foreground=[t > 0 for t in truths])
    assert part_ious(labels, truths).min() > 0.9


def planted_attention(stack, truth, rng):
    """The stack with CLS attention (2 heads) high on the object, low and noisy elsewhere."""
    att = np.where(truth > 0, 1.0, 0.0)[..., None] + 0.05 * rng.random((*truth.shape, 2))
    return dataclasses.replace(stack, attention=att.astype(np.float32))


def test_parts_with_the_foreground_found_by_saliency_votes(vit_set, rng):
    """ViT features (random weights) with planted attention, since random attention means nothing."""
    images, truths, stacks = vit_set
    stacks = [planted_attention(s, t, rng) for s, t in zip(stacks, truths)]
    labels = segment_parts(stacks, n_parts=2)  # foreground="saliency"
    assert part_ious(labels, truths).min() > 0.9
    for lab, t in zip(labels, truths):
        assert np.mean(lab[t == 0] == 0) > 0.95


def test_crf_option_keeps_the_parts(classical_set):
    images, truths, _ = classical_set
    masks = [t > 0 for t in truths]
    labels = segment_parts(images, CLASSICAL, n_parts=2, foreground=masks, crf=True)
    assert part_ious(labels, truths).min() > 0.8
    with pytest.raises(ValueError, match="crf needs the images"):
        segment_parts(classical_set[2], n_parts=2, foreground=masks, crf=True)


def test_refine_labels_cleans_isolated_pixels(rng):
    image = np.zeros((40, 40), np.uint8)
    image[:, 20:] = 200
    labels = (np.arange(40)[None, :] >= 20).repeat(40, axis=0).astype(int)
    noisy = labels.copy()
    flip = rng.random(labels.shape) < 0.05
    noisy[flip] = 1 - noisy[flip]
    refined = refine_labels(image, noisy, 2)
    assert refined.dtype == np.int32 and np.mean(refined == labels) > np.mean(noisy == labels) + 0.03
    with pytest.raises(ValueError, match="n_labels"):
        refine_labels(image, noisy + 1, 2)


def test_votes_need_enough_images(rng):
    """Two blocks of descriptors; block A is salient in all 4 images, block B in 2 of them."""
    proto = np.eye(4, dtype=np.float32)
    descriptors, attention, shapes = [], [], [(10, 20)] * 4
    for i in range(4):
        block = np.arange(200).reshape(10, 20) % 20 // 5  # columns 0-4: A, 5-9: B, 10-19: background
        d = proto[block].reshape(-1, 4) + 0.01 * rng.normal(size=(200, 4)).astype(np.float32)
        descriptors.append(d / np.linalg.norm(d, axis=1, keepdims=True))
        salient = (block == 0) | ((block == 1) & (i < 2))
        attention.append(np.where(salient, 1.0, 0.0)[..., None].astype(np.float32))
    strict = salient_foreground(descriptors, attention, shapes, n_clusters=4, votes=0.75)
    lenient = salient_foreground(descriptors, attention, shapes, n_clusters=4, votes=0.5)
    block = np.arange(200).reshape(10, 20) % 20 // 5
    for s, le in zip(strict, lenient):
        np.testing.assert_array_equal(s, block == 0)
        np.testing.assert_array_equal(le, block <= 1)


def test_saliency_map():
    att = np.stack([np.arange(12.0).reshape(3, 4), np.zeros((3, 4))], -1)
    sal = saliency(att)
    assert sal.dtype == np.float32 and sal.min() == 0 and sal.max() == 1
    np.testing.assert_allclose(sal, np.arange(12).reshape(3, 4) / 11, rtol=1e-6)
    np.testing.assert_array_equal(saliency(np.ones((3, 4, 2))), 1)  # constant: nothing stands out


def test_bad_input(classical_set):
    images, truths, stacks = classical_set
    masks = [t > 0 for t in truths]
    with pytest.raises(ValueError, match="n_parts"):
        segment_parts(images, CLASSICAL, n_parts=0, foreground=masks)
    with pytest.raises(ValueError, match="no images"):
        segment_parts([], CLASSICAL)
    with pytest.raises(TypeError, match="list of images"):
        segment_parts(images[0], CLASSICAL)
    rgb = np.repeat(images[1][..., None], 3, axis=-1)
    with pytest.raises(ValueError, match="different numbers of channels"):
        segment_parts([images[0], rgb], CLASSICAL, foreground="all")
    with pytest.raises(ValueError, match="features differ"):
        segment_parts([stacks[0], featurise(images[1], FeatureConfig(sigmas=(1.0,), device="cpu"))],
                      foreground="all")
    with pytest.raises(ValueError, match="needs features with attention"):
        segment_parts(stacks, n_parts=2)
    with pytest.raises(ValueError, match="2 masks for 3 images"):
        segment_parts(stacks, n_parts=2, foreground=masks[:2])
    with pytest.raises(ValueError, match="mask 1 has shape"):
        segment_parts(stacks, n_parts=2, foreground=[masks[0], masks[0], masks[2]])
    with pytest.raises(ValueError, match="foreground must be"):
        segment_parts(stacks, n_parts=2, foreground="objects")
    with pytest.raises(ValueError, match="foreground is empty"):
        segment_parts(stacks, n_parts=2, foreground=[np.zeros_like(m) for m in masks])
    with pytest.raises(ValueError, match="votes"):
        segment_parts(stacks, n_parts=2, foreground="all", votes=0)
    with pytest.raises(ValueError, match="distinct descriptors"):
        flat = [dataclasses.replace(s, data=np.ones_like(s.data)) for s in stacks]
        segment_parts(flat, n_parts=2, foreground="all")
