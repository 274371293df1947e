"""Finding ViT weights without loading anything, and failing fast when there are none."""

from __future__ import annotations

import pytest

from napari_dinoseg.features import registry
from napari_dinoseg.features.registry import WEIGHTS_ENV, find_weights


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """An empty weights folder and an empty Hugging Face cache."""
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_random_and_given_files(nowhere):
    assert find_weights("dinov2_vits14", "random") == "random"
    (nowhere / "ckpt.pth").write_bytes(b"x")
    assert find_weights("dinov2_vits14", str(nowhere / "ckpt.pth")) == str(nowhere / "ckpt.pth")
    with pytest.raises(ValueError, match="does not exist"):
        find_weights("dinov2_vits14", str(nowhere / "nope.pth"))
    with pytest.raises(ValueError, match="unknown model"):
        find_weights("dinov9", None)


def test_the_weights_folder_then_the_hub_cache(nowhere, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = nowhere / "hf" / "models--timm--vit_small_patch14_dinov2.lvd142m" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"x")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    assert find_weights("dinov2_vits14") == str(snapshot / "model.safetensors")
    (nowhere / "weights").mkdir()
    (nowhere / "weights" / "dinov2_vits14_pretrain.pth").write_bytes(b"x")
    assert find_weights("dinov2_vits14") == str(nowhere / "weights" / "dinov2_vits14_pretrain.pth")
    with pytest.raises(ValueError, match="dinov2_vitb14_pretrain.pth"):
        find_weights("dinov2_vitb14")  # another model: not there


def test_offline_fails_without_touching_the_network(nowhere, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the network was tried although HF_HUB_OFFLINE is set")

    monkeypatch.setattr("socket.create_connection", no_network)
    with pytest.raises(ValueError) as err:
        find_weights("dinov2_vits14")
    message = str(err.value)
    assert "'dinov2_vits14'" in message and "offline" in message
    assert "dinov2_vits14_pretrain.pth" in message and str(nowhere / "weights") in message and WEIGHTS_ENV in message


def test_a_hub_that_does_not_answer_counts_as_offline(nowhere, monkeypatch):
    """A connection that hangs (a firewall dropping packets) is given up after HUB_TIMEOUT."""
    import threading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)
        raise TimeoutError("timed out")

    monkeypatch.setattr("socket.create_connection", hang)
    monkeypatch.setattr(registry, "HUB_TIMEOUT", 0.2)
    try:
        with pytest.raises(ValueError, match="cannot be reached"):
            find_weights("dinov2_vits14")
    finally:
        release.set()


def test_a_hub_that_answers_means_download(nowhere, monkeypatch):
    class Socket:
        def close(self):
            pass

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: Socket())
    assert find_weights("dinov2_vits14") == "download"


def test_the_feature_controls_say_at_once_that_dinov2_cannot_run(nowhere, monkeypatch, qtbot):
    from napari_dinoseg._widgets._feature_controls import FeatureControls

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    controls = FeatureControls()
    controls.kind.value = "vit"
    assert controls.plan.value.startswith("cannot run: no dinov2_vits14 weights here, and offline. Put "
                                          "dinov2_vits14_pretrain.pth in ")
    assert controls.plan.value.endswith("or type its path under 'weights'")
    assert "type the path of a checkpoint file in the 'weights' field" in controls.plan.tooltip
    assert str(nowhere / "weights") in controls.plan.tooltip
    controls.weights.value = "random"
    controls.update_visibility()
    assert controls.plan.value == "preset: decided for the device when you click"
    controls.kind.value = "classical"
    assert controls.plan.value == ""


def test_random_weights_are_the_same_in_every_process(monkeypatch):
    """weights="random" is seeded: a bundle trained on random features and applied in a batch
    worker or the CLI sees the same features (unseeded, each process drew other weights and the
    folder got another segmentation without a word). The caller's random stream is untouched."""
    import subprocess
    import sys

    import torch

    from napari_dinoseg.features import backbones

    monkeypatch.setattr(backbones, "_LOADED", {})
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = backbones.load_model("dinov2_vits14", "random").pos_embed.clone()
    assert torch.equal(torch.rand(1), expected_next)  # the global generator was not advanced
    backbones._LOADED.clear()
    torch.rand(1000)  # another state of the global generator
    assert torch.equal(backbones.load_model("dinov2_vits14", "random").pos_embed, first)
    code = ("from napari_dinoseg.features.backbones import load_model;"
            "print(float(load_model('dinov2_vits14', 'random').pos_embed.sum()))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(other.stdout.split()[-1]) == pytest.approx(float(first.sum()), rel=1e-6)
