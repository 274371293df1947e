"""ChannelLayout: the roles of the channels the real featurisers name, as the name parsing found them."""

import dataclasses
import importlib

import numpy as np
import pytest

from napari_dinoseg import FeatureConfig, featurise
from napari_dinoseg.features.channels import ChannelLayout, vit_channel_groups

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SIGMAS = (1.0, 2.5)
CLASSICAL_PER_CHANNEL = 1 + 10 * len(SIGMAS) + 1  # intensity, 10 per sigma, one difference of Gaussians


def config(kind: str) -> FeatureConfig:
    return FeatureConfig(kind=kind, sigmas=SIGMAS, membrane=False, weights="random", stride=14, shifts=(),
                         flips=False, device="cpu", precision="float32")


def parsed_vit(names):
    """The ViT channels as classify / segmenter / similarity found them before the layout."""
    return tuple(i for i, name in enumerate(names) if "vit_" in name)


def parsed_sigma(names):
    """The Gaussian channels and their sigma as unsupervised.smooth_channels found them."""
    sigma = {}
    for i, name in enumerate(names):
        base = name.split(":")[-1]
        if base.startswith("gaussian_s"):
            try:
                sigma[i] = float(base[len("gaussian_s"):])
            except ValueError:
                continue
    return sigma


def parsed_guide(names, cfg):
    """The guided filter's guide as training._guide found it from the config's finest sigma."""
    finest = f"gaussian_s{min(cfg.sigmas):g}"
    return tuple(i for i, name in enumerate(names) if name.split(":")[-1] == finest)


@pytest.fixture(scope="module")
def stacks():
    """Features of a 28 x 28 image of 1, 2 and 3 channels by each kind, keyed ``(kind, channels)``."""
    rng = np.random.default_rng(0)
    made = {}
    for kind in ("classical", "vit", "hybrid"):
        for channels in (1, 2, 3):
            img = rng.random((28, 28, channels)).astype(np.float32)
            made[kind, channels] = featurise(img[..., 0] if channels == 1 else img, config(kind))
    return made


@pytest.mark.parametrize("kind", ["classical", "vit", "hybrid"])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_the_layout_of_real_features_is_what_parsing_the_names_gave(stacks, kind, channels):
    stack = stacks[kind, channels]
    names, cfg = stack.channel_names, stack.config
    layout = ChannelLayout.of(names)
    assert layout.names == names and layout.n_channels == stack.n_features == len(names)
    assert layout.vit == parsed_vit(names)
    assert layout.classical == tuple(i for i in range(len(names)) if i not in set(layout.vit))
    assert layout.gaussian_sigma == parsed_sigma(names)
    assert list(layout.gaussian_sigma) == list(parsed_sigma(names))  # same order
    assert layout.guide == parsed_guide(names, cfg)

    n_classical = channels * CLASSICAL_PER_CHANNEL if kind != "vit" else 0
    groups = len(vit_channel_groups(channels))
    assert layout.classical == tuple(range(n_classical))  # classical first in a hybrid stack
    assert len(layout.vit) == (0 if kind == "classical" else stack.n_features - n_classical)
    assert len(layout.vit) % groups == 0
    if kind == "vit":
        assert layout.gaussian == layout.sigmas == layout.guide == ()
    else:
        # per image channel: intensity, then gaussian_s1 at 1 and gaussian_s2.5 at 11
        starts = [c * CLASSICAL_PER_CHANNEL for c in range(channels)]
        assert layout.gaussian == tuple(s + k for s in starts for k in (1, 11))
        assert layout.sigmas == (1.0, 2.5) * channels
        assert layout.guide == tuple(s + 1 for s in starts)
        assert all(names[i].endswith("gaussian_s1") for i in layout.guide)


def test_names_with_an_image_channel_prefix_and_names_that_only_look_like_roles():
    names = ["c0:intensity", "c0:gaussian_s2.0", "c1:gaussian_s0.5", "c1:gaussian_sx", "c0:vit_0", "c1:vit_0",
             "sobel_s1", "gaussian_s0.5"]
    layout = ChannelLayout.of(names)
    assert layout.vit == (4, 5)
    assert layout.classical == (0, 1, 2, 3, 6, 7)
    assert layout.gaussian_sigma == {1: 2.0, 2: 0.5, 7: 0.5}  # "gaussian_sx" names no sigma
    assert layout.guide == (2, 7)
    assert ChannelLayout.of([]) == ChannelLayout((), (), (), (), (), ())


def test_the_laplacian_of_the_guide_is_found_per_image_channel():
    names = ["intensity", "gaussian_s2", "hessian_trace_s2", "c1:gaussian_s1", "c1:hessian_trace_s1",
             "hessian_trace_s1", "hessian_trace_sx"]
    layout = ChannelLayout.of(names)
    assert layout.guide == (3,)
    assert layout.laplacian == (4, 5)  # the Hessian traces of the finest sigma, prefixed or not
    assert ChannelLayout.of(["intensity", "hessian_trace_s1"]).laplacian == ()  # no Gaussian: no guide


def test_the_layout_is_frozen_and_hashable():
    layout = ChannelLayout.of(["intensity", "gaussian_s1", "vit_0"])
    assert layout == ChannelLayout.of(("intensity", "gaussian_s1", "vit_0"))
    assert hash(layout) == hash(ChannelLayout.of(("intensity", "gaussian_s1", "vit_0")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        layout.vit = ()


def test_vit_channel_groups_lives_in_channels_and_featurise_reexports_it():
    featurise_module = importlib.import_module("napari_dinoseg.features.featurise")
    assert featurise_module.vit_channel_groups is vit_channel_groups
    assert vit_channel_groups(1) == [[0, 0, 0]]
    assert vit_channel_groups(2) == [[0, 0, 0], [1, 1, 1]]
    assert vit_channel_groups(3) == vit_channel_groups(4) == [[0, 1, 2]]
