"""Tiny well-formed bundles with hostile values: every config value a bundle carries is bounded to what
the code can run, so such a bundle is refused when it is read, with a message that names the value,
within seconds and without the memory the value would have taken; and a bundle saved with a device
this machine lacks is applied on the device it has.

The bundles are written by the real save path, then their ``bundle.json`` is edited in the zip."""

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from napari_dinoseg import CRFConfig, FeatureConfig, Segmenter, TrainConfig
from napari_dinoseg.bundle import read_bundle
from napari_dinoseg.cli import main
from test_bundle_hostile import crf, features, training  # edits of a bundle's bundle.json
from napari_dinoseg.config import (MAX_AUGMENT, MAX_MEMBRANE_SIZE, MAX_SHIFTS, MAX_SIGMA, MAX_SIGMAS, MAX_TILE,
                                   MIN_CRF_WIDTH)

GiB = 1 << 30


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A real small bundle (default features, trees, a CRF) and the image it was trained on."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    labels = np.zeros((64, 64), np.uint8)
    labels[5:9, 5:60], labels[40:44, 5:60] = 1, 2
    seg = Segmenter(FeatureConfig(), TrainConfig(n_trees=2), CRFConfig()).fit(image, labels)
    return str(seg.save(tmp_path_factory.mktemp("bounds") / "good.dinoseg")), image


def edited(source: str, target, edit) -> str:
    """A copy of bundle ``source`` with ``edit(meta)`` applied to its ``bundle.json``."""
    with zipfile.ZipFile(source) as zf:
        meta, arrays = json.loads(zf.read("bundle.json")), zf.read("arrays.npz")
    edit(meta)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bundle.json", json.dumps(meta))
        zf.writestr("arrays.npz", arrays)
    return str(target)


#: (id, edit, what the refusal says). Each value was accepted before and ran out of memory, crashed
#: the process (pydensecrf at zero width) or named channels twice.
HOSTILE = [
    ("membrane_size 4001", features(membrane_size=4001),
     rf"membrane_size must be an odd integer in 3\.\.{MAX_MEMBRANE_SIZE}"),
    ("membrane_size 8001", features(membrane_size=8001), "membrane_size must be"),
    ("membrane 'yes'", features(membrane="yes"), "membrane must be True or False"),
    ("sigma 1e6", features(sigmas=[1, 2, 4, 8, 1e6]), f"sigmas must lie in 0.1..{MAX_SIGMA:g} px"),
    ("sigma 1e-300", features(sigmas=[1e-300, 1]), "sigmas must lie in"),
    ("40 sigmas", features(sigmas=[1 + i for i in range(40)]), f"at most {MAX_SIGMAS} scales"),
    ("sigmas named alike", features(sigmas=[1.0, 1.0000001]), "first 6 significant digits"),
    ("weights not a path", features(weights=12), "weights must be"),
    ("CRF width 0 (a segfault)", crf(gaussian_sxy=0), rf"gaussian_sxy must be a number in \[{MIN_CRF_WIDTH:g}"),
    ("CRF intensity width 1e-6", crf(bilateral_srgb=1e-6), "bilateral_srgb must be"),
    ("50 augment gammas", training(augment=[0.2 + 0.05 * i for i in range(50)]), f"at most {MAX_AUGMENT} distinct"),
    ("negative seed", training(seed=-1), "seed must be an integer"),
    ("seed 2**70", training(seed=2**70), "seed must be an integer"),
]


@pytest.fixture(scope="module")
def hostile_results(good, tmp_path_factory):
    """Every hostile bundle read and applied to the training image in one subprocess whose address
    space is limited to what it holds plus 1 GiB: ``{id: (error type, message, seconds)}`` and the peak."""
    folder = tmp_path_factory.mktemp("hostile")
    paths = {name: edited(good[0], folder / f"{i}.dinoseg", edit) for i, (name, edit, _) in enumerate(HOSTILE)}
    np.save(folder / "image.npy", good[1])
    script = textwrap.dedent("""
        import json, resource, sys, time, warnings
        import numpy as np, psutil
        from napari_dinoseg import Segmenter
        warnings.simplefilter("ignore")
        good, paths, image = sys.argv[1], json.loads(sys.argv[2]), np.load(sys.argv[3])
        seg = Segmenter.load(good)
        seg.check(image, seg.predict_proba(image))
        process = psutil.Process()
        resource.setrlimit(resource.RLIMIT_AS, (process.memory_info().vms + (1 << 30),
                                                 resource.getrlimit(resource.RLIMIT_AS)[1]))
        with open("/proc/self/clear_refs", "w") as f:  # the peak resident size starts again from here
            f.write("5")
        before, out = process.memory_info().rss, {}
        for name, path in paths.items():
            start = time.perf_counter()
            try:
                Segmenter.load(path).predict_proba(image)
                out[name] = ("ok", "", time.perf_counter() - start)
            except Exception as err:
                out[name] = (type(err).__name__, str(err), time.perf_counter() - start)
        with open("/proc/self/status") as f:
            peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")) - before
        print("RESULT" + json.dumps({"cases": out, "peak": peak}))
    """)
    done = subprocess.run([sys.executable, "-c", script, good[0], json.dumps(paths), str(folder / "image.npy")],
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT"):]), paths


@pytest.mark.parametrize("name, edit, reason", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_values_are_refused_when_the_bundle_is_read(hostile_results, name, edit, reason):
    results, paths = hostile_results
    kind, message, seconds = results["cases"][name]
    assert kind == "ValueError", (kind, message)
    assert "napari-dinoseg bundle" in message and paths[name] in message, message
    assert re.search(reason, message), message
    assert "crop" not in message.lower()  # a bundle's fault is not the image's
    assert seconds < 5


def test_hostile_bundles_take_no_memory(hostile_results):
    results, _ = hostile_results
    assert results["peak"] < GiB, results["peak"]


def test_the_same_values_are_refused_by_the_configs_themselves():
    for kwargs in ({"membrane_size": MAX_MEMBRANE_SIZE + 2}, {"membrane_size": 2.0}, {"sigmas": (MAX_SIGMA * 2,)},
                   {"sigmas": tuple(range(1, MAX_SIGMAS + 2))}, {"sigmas": ("a",)}, {"membrane": 1}):
        with pytest.raises(ValueError):
            FeatureConfig(**kwargs)
    assert FeatureConfig(membrane_size=np.int64(21)).membrane_size == 21  # numpy integers are integers
    assert FeatureConfig(membrane_size=MAX_MEMBRANE_SIZE, sigmas=(0.1, MAX_SIGMA)).membrane_size == MAX_MEMBRANE_SIZE
    for kwargs in ({"augment": tuple(0.5 + 0.1 * i for i in range(MAX_AUGMENT + 1))}, {"seed": 2**32},
                   {"seed": True}, {"seed": 1.5}):
        with pytest.raises(ValueError):
            TrainConfig(**kwargs)
    for kwargs in ({"gaussian_sxy": 0.0}, {"bilateral_sxy": 0.05}, {"bilateral_srgb": 0.0}, {"gaussian_compat": -1}):
        with pytest.raises(ValueError):
            CRFConfig(**kwargs)
    assert CRFConfig(gaussian_sxy=MIN_CRF_WIDTH, gaussian_compat=0).gaussian_sxy == MIN_CRF_WIDTH


@pytest.mark.parametrize("kwargs, match", [
    ({"shifts": tuple(range(1, MAX_SHIFTS + 2))}, "at most"),
    ({"shifts": (15,)}, r"in 1\.\.14"),
    ({"shifts": (1.5,)}, "shifts must be"),
    ({"shifts": (True,)}, "shifts must be"),
    ({"stride": True}, "stride must be"),
    ({"tile": MAX_TILE + 1}, f"{MAX_TILE}"),
    ({"tile": 56, "stride": 14, "shifts": (7,), "flips": False}, "more than 84 px"),
])
def test_vit_values_are_bounded(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureConfig(kind="vit", **kwargs)


def test_vit_values_within_bounds_are_kept():
    config = FeatureConfig(kind="vit", stride=np.int64(14), shifts=(np.int64(3), 7), tile=128, flips=False)
    assert (config.stride, config.shifts, config.tile) == (14, (3, 7), 128)
    assert FeatureConfig(kind="vit", tile=MAX_TILE).tile == MAX_TILE


# ---- a device is the machine's choice ------------------------------------------------------------

def cuda_bundle(good, tmp_path) -> str:
    """A real bundle saved with ``FeatureConfig(device="cuda")`` (the device set after fitting, as on a
    GPU machine)."""
    seg = Segmenter.load(good[0])
    seg.features = dataclasses.replace(seg.features, device="cuda")
    path = str(seg.save(tmp_path / "cuda.dinoseg"))
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read("bundle.json"))["feature_config"]["device"] == "cuda"
    return path


def test_a_bundle_saved_for_cuda_applies_on_a_cpu_in_python(good, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the saved device is used")
    path = cuda_bundle(good, tmp_path)
    with pytest.warns(UserWarning, match="saved with device='cuda', which this machine lacks.*on the CPU"):
        contents = read_bundle(path)
    assert contents.features.device == "auto" and "CPU" in contents.notes[0]
    with pytest.warns(UserWarning, match="device='cuda'"):
        seg = Segmenter.load(path)
    reference = Segmenter.load(good[0])
    np.testing.assert_array_equal(seg.segment(good[1]), reference.segment(good[1]))


def test_a_bundle_saved_for_cuda_applies_on_a_cpu_through_dinoseg_apply(good, tmp_path, capsys):
    import tifffile
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the saved device is used")
    path = cuda_bundle(good, tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "a.tif", good[1])
    with pytest.warns(UserWarning, match="device='cuda'"):
        status = main(["apply", path, str(inputs), "-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    labels = tifffile.imread(tmp_path / "out" / "a_labels.tif")
    np.testing.assert_array_equal(labels, Segmenter.load(good[0]).segment(good[1]))


def test_a_saved_device_this_machine_has_is_kept(good, tmp_path):
    seg = Segmenter.load(good[0])
    seg.features = dataclasses.replace(seg.features, device="cpu")
    contents = read_bundle(seg.save(tmp_path / "cpu.dinoseg"))
    assert contents.features.device == "cpu" and contents.notes == ()
