"""The ``dinoseg`` command line itself: version, what it prints before work starts, and the
messages of its own options (the batch behind ``dinoseg apply`` is tested in test_batch*.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_dinoseg
from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig
from napari_dinoseg.cli import main
from napari_dinoseg.features.registry import WEIGHTS_ENV

FAST = FeatureConfig(sigmas=(1, 2), membrane=False)
BAR = "image/s"  # in every tqdm line of the apply progress bar


@pytest.fixture
def bundle(tmp_path, two_textures):
    image, _, scribbles = two_textures
    return Segmenter(FAST, TrainConfig(classifier="logistic")).fit(image, scribbles).save(tmp_path / "clf.dinoseg")


@pytest.fixture
def images(tmp_path, two_textures):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):
        tifffile.imwrite(d / f"img{i}.tif", np.roll(two_textures[0], 30 * i, axis=1))
    return d


def test_version_prints_the_package_version_and_exits_0(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dinoseg {napari_dinoseg.__version__}"


def test_bad_options_exit_2_without_raising(capsys):
    assert main(["apply", "--no-such-option"]) == 2
    assert "usage: dinoseg apply" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing bundle", "missing folder", "empty folder", "output inside input"])
def test_no_progress_bar_before_a_start_up_error(tmp_path, bundle, images, capsys, case):
    (tmp_path / "empty").mkdir()
    args = {
        "missing bundle": [str(tmp_path / "missing.dinoseg"), str(images), "-o", str(tmp_path / "out")],
        "missing folder": [str(bundle), str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")],
        "empty folder": [str(bundle), str(tmp_path / "empty"), "-o", str(tmp_path / "out")],
        "output inside input": [str(bundle), str(images), "-o", str(images / "out")],
    }[case]
    assert main(["apply", *args]) == 2
    err = capsys.readouterr().err
    assert BAR not in err and err.count("\n") == 1 and err.startswith("dinoseg: error: "), err


def test_the_progress_bar_shows_once_work_starts_and_not_when_nothing_is_left(tmp_path, bundle, images, capsys):
    out = tmp_path / "out"
    assert main(["apply", str(bundle), str(images), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert BAR in captured.err and "2/2" in captured.err
    assert captured.out.startswith("done 2, skipped 0")
    assert main(["apply", str(bundle), str(images), "-o", str(out)]) == 0  # all there: no work, no bar
    captured = capsys.readouterr()
    assert BAR not in captured.err and captured.out.startswith("done 0, skipped 2 (2 already there)")


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """No ViT weights anywhere, and offline."""
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "weights"


@pytest.mark.parametrize("kind", ["vit", "hybrid"])
def test_train_without_weights_names_the_weights_option_and_folder(tmp_path, two_textures, no_weights, capsys, kind):
    image, _, scribbles = two_textures
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", scribbles)
    code = main(["train", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"),
                 "-o", str(tmp_path / "m.dinoseg"), "--features", kind])
    captured = capsys.readouterr()
    assert code == 2 and not (tmp_path / "m.dinoseg").exists()
    assert "--weights PATH" in captured.err and str(no_weights) in captured.err
    assert "dinov2_vits14_pretrain.pth" in captured.err and "weights=" not in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_train_with_a_weights_file_that_does_not_exist_names_it(tmp_path, two_textures, capsys):
    image, _, scribbles = two_textures
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", scribbles)
    code = main(["train", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"),
                 "-o", str(tmp_path / "m.dinoseg"), "--features", "vit", "--weights", str(tmp_path / "nope.pth")])
    err = capsys.readouterr().err
    assert code == 2 and "--weights" in err and str(tmp_path / "nope.pth") in err and "does not exist" in err


def test_train_percentiles_go_into_the_bundle_and_bad_ones_are_refused(tmp_path, two_textures, capsys):
    image, _, scribbles = two_textures
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", scribbles)
    args = ["train", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif")]
    assert main(args + ["-o", str(tmp_path / "a.dinoseg"), "--percentiles", "25", "75"]) == 0
    assert Segmenter.load(tmp_path / "a.dinoseg").features.percentiles == (25.0, 75.0)
    assert main(args + ["-o", str(tmp_path / "b.dinoseg")]) == 0
    assert Segmenter.load(tmp_path / "b.dinoseg").features.percentiles == (5.0, 95.0)
    assert main(args + ["-o", str(tmp_path / "c.dinoseg"), "--percentiles", "75", "25"]) == 2
    assert "percentiles must be (low, high)" in capsys.readouterr().err and not (tmp_path / "c.dinoseg").exists()
