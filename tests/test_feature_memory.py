"""Feature stacks are built in place, and the memory check's estimate matches measured peaks."""

import tracemalloc

import numpy as np
import pytest
import torch

from napari_dinoseg import FeatureConfig, featurise
from napari_dinoseg.features.featurise import check_memory, estimate_memory
from napari_dinoseg.features.vit import vit_features

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CPU = torch.device("cpu")


def cfg(kind="hybrid", **kw):
    base = dict(kind=kind, weights="random", stride=14, shifts=(), flips=False, sigmas=(1.0, 2.0), device="cpu")
    return FeatureConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(0).random((112, 140)) * 255).astype(np.uint8)


def test_hybrid_stack_is_built_in_place_without_a_second_copy(image):
    featurise(image[:28, :28], cfg())  # model loaded and libraries started outside the trace
    tracemalloc.start()  # numpy's allocations are traced: a concatenation would show as a second stack
    try:
        stack = featurise(image, cfg())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stack.data.shape == (112, 140, 26 + 384) and stack.data.flags.c_contiguous
    assert peak < 1.2 * stack.nbytes, (peak, stack.nbytes)
    np.testing.assert_array_equal(stack.data[..., :26], featurise(image, cfg("classical")).data)
    np.testing.assert_array_equal(stack.data[..., 26:], featurise(image, cfg("vit")).data)


def test_vit_features_write_into_a_slice_of_a_larger_array(image):
    img = (image / 255.0).astype(np.float32)[..., None]
    resolved = cfg("vit").resolved("cpu")
    buffer = np.full((112, 140, 400), -1.0, np.float32)
    feats, attention = vit_features(img, resolved, CPU, out=buffer[..., 10:394])
    assert np.shares_memory(feats, buffer) and feats.shape == (112, 140, 384)
    np.testing.assert_array_equal(feats, vit_features(img, resolved, CPU)[0])
    assert (buffer[..., :10] == -1).all() and (buffer[..., 394:] == -1).all()  # nothing written outside
    with pytest.raises(ValueError, match=r"out must be a writeable float32 array of shape \(112, 140, 384\)"):
        vit_features(img, resolved, CPU, out=np.empty((112, 140, 383), np.float32))


def test_estimate_counts_outputs_and_working_space_per_kind():
    shape = (1024, 1024)
    plane = 4 * 1024 * 1024
    classical = estimate_memory(FeatureConfig(), shape)
    assert 65 * plane + 4 * plane < classical < 65 * plane + 20 * plane  # output and the bank's temporaries
    vit = estimate_memory(cfg("vit").resolved("cpu"), shape, 1, CPU)
    hybrid = estimate_memory(cfg(sigmas=FeatureConfig().sigmas).resolved("cpu"), shape, 1, CPU)
    out = (65 + 384 + 6) * plane  # hybrid features and attention
    assert vit > (384 + 6) * plane
    assert out + 65 * plane < hybrid < 1.5 * out  # the classical buffer while it is copied; never two stacks
    rgb = estimate_memory(FeatureConfig(), shape, 3)
    assert rgb - classical == 2 * 66 * plane  # the channels' outputs and normalised copies; one bank at a time


def test_memory_check_names_the_estimate_and_the_fix():
    with pytest.raises(ValueError, match=r"hybrid features of a 8192x8192 image \(449 channels\) need about "
                                         r"[0-9.]+ GiB at their peak.*crop or downsample"):
        check_memory(cfg(sigmas=FeatureConfig().sigmas).resolved("cpu"), (8192, 8192), 1, CPU, available=2**34)
    assert check_memory(FeatureConfig(), (64, 64), available=2**30) == estimate_memory(FeatureConfig(), (64, 64))


# The estimate against a measured peak, per kind: tests/test_featuriser_contract.py.
