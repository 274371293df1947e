"""Shared fixtures: small seeded synthetic images with known answers."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def two_textures(rng):
    """(image uint8 (192, 192), truth int (192, 192) in {1, 2}, scribbles uint8 (192, 192)).

    A high-variance texture and a smooth one with the same mean intensity, split by a
    wavy boundary: only texture features can tell them apart. Scribbles are two thin
    strokes per class, ~2 % of the pixels, away from the boundary.
    """
    h = w = 192
    yy, xx = np.mgrid[:h, :w]
    truth = np.where(xx < 96 + 16 * np.sin(2 * np.pi * yy / 96), 1, 2)
    image = np.where(truth == 2, rng.normal(0.5, 0.2, (h, w)), rng.normal(0.5, 0.03, (h, w)))
    image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    scribbles = np.zeros((h, w), np.uint8)
    scribbles[20:172, 30:32] = 1
    scribbles[100:102, 10:60] = 1
    scribbles[20:172, 160:162] = 2
    scribbles[60:62, 140:180] = 2
    return image, truth, scribbles


@pytest.fixture
def phases(rng):
    """(image uint8 (160, 160), truth {1, 2, 3}, scribbles): dark matrix (1), grey discs (2),
    bright squares (3) covering ~10 % of the image, so the histogram is far from symmetric."""
    h = w = 160
    yy, xx = np.mgrid[:h, :w]
    truth = np.ones((h, w), np.uint8)
    for cy, cx in ((40, 40), (40, 120), (120, 80)):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 < 18**2] = 2
    truth[100:130, 10:40] = 3
    truth[10:25, 70:100] = 3
    means = np.array([0, 40, 150, 240], float)
    image = np.clip(means[truth] + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)
    scribbles = np.zeros((h, w), np.uint8)
    scribbles[75:78, 5:60] = 1
    scribbles[150:153, 50:150] = 1
    scribbles[39:42, 24:57] = 2  # strokes across the objects, edge to edge
    scribbles[24:57, 119:122] = 2
    scribbles[112:115, 11:40] = 3
    scribbles[11:25, 84:86] = 3
    return image, truth, scribbles


def iou(pred: np.ndarray, truth: np.ndarray, cls: int) -> float:
    a, b = pred == cls, truth == cls
    return float((a & b).sum() / max(1, (a | b).sum()))


def planted_texture(seed: int, size: int, centres, radius: int):
    """(image uint8 (size, size), discs bool (size, size)): a fine-grained noise texture in discs
    of ``radius`` at ``centres`` on a smooth noise background of the same mean intensity (0.5)
    and standard deviation (0.1): only texture tells them apart."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    discs = np.zeros((size, size), bool)
    for cy, cx in centres:
        discs |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    background = ndimage.gaussian_filter(rng.normal(size=(size, size)), 2)
    background = 0.5 + 0.1 * background / background.std()
    texture = 0.5 + 0.1 * rng.normal(size=(size, size))
    image = np.where(discs, texture, background)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), discs


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the ``positive`` pixels (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.ravel(score))
    pos = np.ravel(positive).astype(bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """No weights and no model hub: an empty weights folder and Hugging Face cache, offline."""
    folder, hub = tmp_path / "weights", tmp_path / "hf-hub"
    folder.mkdir()
    hub.mkdir()
    monkeypatch.setenv("DINOSEG_WEIGHTS_DIR", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    return folder


@pytest.fixture(scope="session")
def local_weights(tmp_path_factory):
    """A DINOv2-S/14 checkpoint whose tokens see only their own patch (no position embedding,
    attention output zeroed): any difference between tiled and whole-image features, or between a
    window with its margin and the whole plane, is then a stitching error."""
    import torch

    from napari_dinoseg.features.backbones import load_model

    model = load_model("dinov2_vits14", "random")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["pos_embed"].zero_()
    for k in state:
        if ".attn.proj." in k:
            state[k].zero_()
    path = tmp_path_factory.mktemp("weights") / "local.pth"
    torch.save(state, path)
    return str(path)


class Recording:
    """An array-like over an array that records the keys it is read with (what a lazy reader
    reads of it): ``shape``, ``dtype``, ``__getitem__``, and ``keys``."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.keys = data, data.shape, data.dtype, []

    def __getitem__(self, key):
        self.keys.append(key)
        return self.data[key]


def benchmark_script(name: str):
    """Import ``benchmarks/<name>.py`` as module ``name`` (a generator for a fixture: yields it, then
    forgets it and the benchmark modules it imported beside it, ``quality`` and ``machine``)."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))  # the scripts import quality.py and machine.py beside them
    before = set(sys.modules)
    try:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        yield module
    finally:
        for imported in (name, "quality", "machine"):
            if imported not in before:
                sys.modules.pop(imported, None)
        sys.path.remove(str(folder))


class Hold:
    """Holds a dock's job at a progress report (in the worker thread) until ``release()``;
    ``entered`` is set when it holds. ``after``: hold at the first report after one whose message
    starts with it (e.g. ``"predicting"``: past the fit); ``None``: at the first report."""

    def __init__(self, widget, after=None) -> None:
        import threading

        self.entered, self._release = threading.Event(), threading.Event()
        self.ready = after is None
        real = widget._progress_callback

        def callback(done, total, message):
            if self.ready and not self.entered.is_set():
                self.entered.set()
                self._release.wait(60)
            self.ready = self.ready or message.startswith(after)
            real(done, total, message)

        widget._progress_callback = callback  # looked up by each job's start

    def release(self) -> None:
        self._release.set()


def close_mid_run(qtbot, viewer, widget, dock_name: str, hold: Hold, timeout_ms: int = 120_000) -> None:
    """Start ``widget``'s job, click its dock's own ✕ while ``hold`` holds it, and wait until the
    job has stopped (it raises ``Cancelled`` at its next progress report)."""
    import threading

    worker = widget.run()
    try:
        assert worker is not None and hold.entered.wait(60)
        stopped = threading.Event()
        worker.errored.connect(lambda err: stopped.set())
        viewer.window._wrapped_dock_widgets[dock_name].title.close_button.click()
    finally:
        hold.release()
    qtbot.waitUntil(stopped.is_set, timeout=timeout_ms)


@pytest.fixture
def volume_feature_calls(monkeypatch):
    """The regions the classical featuriser computes 3-D features of, as ``(z0, z1)`` of each
    call, in order (from any thread: the class's method is wrapped)."""
    from napari_dinoseg.features.classical_featuriser import ClassicalFeaturiser

    calls = []
    original = ClassicalFeaturiser.volume_features

    def recording(self, block, spacing, halo, progress=None, place=None, out=None):
        calls.append((place[0][0].start, place[0][0].stop))
        return original(self, block, spacing, halo, progress, place, out)

    monkeypatch.setattr(ClassicalFeaturiser, "volume_features", recording)
    return calls
