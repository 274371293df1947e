"""The featuriser contract: every registered feature kind passes the same checks
(:func:`check_contract`), and a kind written outside the package (a 2-channel toy) trains,
predicts, saves and loads through the Segmenter the day it is registered."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig
from napari_dinoseg.feature_kinds import BUILT_IN
from napari_dinoseg.features.base import Featuriser
from napari_dinoseg.features.channels import per_image_channel
from napari_dinoseg.features.featurisers import FEATURISERS, featuriser_for, register, unregister
from napari_dinoseg.features.stack import FeatureStack
from napari_dinoseg.models import model_spec

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
MEMORY_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"


def small_config(kind: str, weights: str) -> FeatureConfig:
    """A config of ``kind`` small enough for a test: two sigmas, one view of the ViT at stride 14."""
    return FeatureConfig(kind=kind, sigmas=(1.0, 2.0), membrane=False, weights=weights, stride=14, shifts=(2,),
                         flips=False, device="cpu", precision="float32")


def check_contract(featuriser: Featuriser, image: np.ndarray) -> None:
    """What every featuriser promises, on one ``(H, W, C)`` float32 normalised plane."""
    n_channels = image.shape[-1]
    stack = featuriser.features(image)
    data = stack.data
    assert data.shape == (*image.shape[:2], featuriser.n_features(n_channels)) and data.dtype == np.float32
    # the layout names the channels made, and says which are which
    layout = featuriser.layout(n_channels)
    assert layout.names == stack.channel_names == featuriser.channel_names(n_channels)
    assert sorted(layout.vit + layout.classical) == list(range(data.shape[-1]))
    assert layout.attention == featuriser.has_attention == (stack.attention is not None)
    assert set(layout.guide) <= set(layout.gaussian)
    # the margin is honoured: a window with its margin has the whole plane's features in its core
    core = (slice(40, 70), slice(44, 80))
    window = featuriser.window(core, image.shape[:2])
    assert all(w.start % featuriser.alignment == 0 for w in window)
    inner = tuple(slice(c.start - w.start, c.stop - w.start) for c, w in zip(core, window))
    part = featuriser.features(image[window]).data[inner]
    np.testing.assert_allclose(part, data[core], rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(data).max())))
    # at_pixels and projected equal the full map's
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, image.shape[0], 60), rng.integers(0, image.shape[1], 60)
    np.testing.assert_allclose(featuriser.at_pixels(image, rows, cols), data[rows, cols], rtol=1e-5, atol=1e-5)
    weights = rng.standard_normal((3, len(layout.vit))).astype(np.float32) / max(1, len(layout.vit))
    bias = np.float32([0.5, -1.0, 2.0])
    projected = featuriser.projected(image, weights, bias)
    expected = data[..., list(layout.vit)] @ weights.T + bias
    np.testing.assert_array_equal(projected.data[..., :len(layout.classical)], data[..., list(layout.classical)])
    np.testing.assert_allclose(projected.data[..., len(layout.classical):], expected, rtol=1e-4,
                               atol=1e-4 * max(1.0, float(np.abs(expected).max())))
    # the plan line and the memory estimate exist and grow with the image
    assert featuriser.describe(image.shape[:2], n_channels).strip()
    assert featuriser.working_bytes((512, 512), n_channels) > featuriser.working_bytes((128, 128), n_channels) \
        >= 4 * 128 * 128 * featuriser.n_features(n_channels)


@pytest.mark.parametrize("kind", BUILT_IN)  # a kind added to the package is checked the day it is
@pytest.mark.parametrize("channels", [1, 3])
def test_every_built_in_kind_keeps_the_contract(kind, channels, local_weights):
    image = np.random.default_rng(channels).random((112, 126, channels)).astype(np.float32)
    featuriser = featuriser_for(small_config(kind, local_weights))
    assert type(featuriser) is FEATURISERS[kind] and featuriser.config.is_resolved
    check_contract(featuriser, image)


@pytest.fixture(scope="module")
def memory_benchmark():
    spec = importlib.util.spec_from_file_location("memory_benchmark", MEMORY_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_benchmark"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("memory_benchmark", None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("kind, size", [("classical", 512), ("vit", 256), ("hybrid", 256)])
def test_working_bytes_within_a_quarter_of_the_measured_peak(memory_benchmark, kind, size):
    """One featurisation in a fresh process (``benchmarks/memory.py``): growth of the resident set
    against :meth:`Featuriser.working_bytes`."""
    row = memory_benchmark.measure(memory_benchmark.config_for(kind, "one"), size)
    assert row["peak"] > row["output"]
    assert 0.75 < row["estimate"] / row["peak"] < 1.25, row


class ToyFeaturiser(Featuriser):
    """A kind written the way docs/architecture.md says: the intensity and its square, per channel."""

    kind = "toy"

    def channel_names(self, n_channels):
        return per_image_channel(("intensity", "squared"), n_channels)

    def features(self, img, progress=None, out=None, cache=None, key=None):
        data = np.empty((*img.shape[:2], 2 * img.shape[-1]), np.float32) if out is None else out
        data[..., 0::2], data[..., 1::2] = img, img * img
        return FeatureStack(data=data, config=self.config, channel_names=self.channel_names(img.shape[-1]))


@pytest.fixture
def toy():
    register(ToyFeaturiser)
    yield ToyFeaturiser
    unregister("toy")


def test_a_registered_toy_kind_trains_predicts_saves_and_loads_through_the_segmenter(toy, tmp_path):
    rng = np.random.default_rng(3)
    image = (rng.normal(60, 8, (96, 120))).clip(0, 255).astype(np.uint8)
    image[:, 60:] += 100  # two phases, told apart by intensity
    labels = np.zeros(image.shape, np.uint8)
    labels[10:20, 5:50], labels[70:80, 70:115] = 1, 2
    config = FeatureConfig(kind="toy", device="cpu")
    assert not config.uses_vit and not config.uses_classical
    check_contract(featuriser_for(config), (image[..., None] / 255).astype(np.float32))
    seg = Segmenter(config, TrainConfig(classifier="logistic")).fit(image, labels)
    assert seg.channel_names == ("intensity", "squared") and seg.classifier.n_features == 2
    result = seg.segment(image)
    assert (result[:, :50] == 1).mean() > 0.95 and (result[:, 70:] == 2).mean() > 0.95
    path = seg.save(tmp_path / "toy.dinoseg")
    loaded = Segmenter.load(path)
    assert loaded.features.kind == "toy"
    np.testing.assert_array_equal(loaded.segment(image), result)
    assert loaded.check(image) == []


def test_unregistered_kinds_are_refused_with_the_kinds_there_are(toy):
    unregister("toy")
    with pytest.raises(ValueError, match="kind='toy' is not valid; choose one of 'classical', 'vit', 'hybrid'"):
        FeatureConfig(kind="toy")
    with pytest.raises(TypeError, match="Featuriser subclass"):
        register(object)
    register(ToyFeaturiser)
    assert FeatureConfig(kind="toy").kind == "toy"
    unregister("classical")  # the built-in kinds stay
    assert FEATURISERS["classical"].kind == "classical" and model_spec("dinov2_vits14").patch_size == 14


def test_a_vit_featurisation_plans_its_tiles_once(local_weights):
    """The plan line, the memory check and the runner of one featurisation share one tile plan."""
    from napari_dinoseg.features import vit_plan

    featuriser = featuriser_for(FeatureConfig(kind="hybrid", weights=local_weights, stride=14, shifts=(), flips=False,
                                              tile=224, device="cpu", sigmas=(1.0,)))
    image = np.random.default_rng(0).random((300, 260, 1)).astype(np.float32)
    vit_plan._plan.cache_clear()
    featuriser.describe(image.shape[:2])
    featuriser.features(featuriser.prepare(image, normalised=True))
    info = vit_plan._plan.cache_info()
    assert info.misses == 1 and info.hits >= 2, info
    assert len(vit_plan.choose_tiles(featuriser.vit.config, image.shape[:2])) > 1  # tiled: a plan worth keeping
