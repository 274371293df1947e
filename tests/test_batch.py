"""Batch apply: real files, the CLI, reruns, a real dask LocalCluster."""

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from conftest import iou
from napari_dinoseg import FeatureConfig, TrainConfig, apply_bundle, featurise, save_bundle, train
from napari_dinoseg.batch import LABEL_SUFFIX, PROBA_SUFFIX
from napari_dinoseg.cli import main


@pytest.fixture
def bundle(tmp_path, two_textures):
    image, _, scribbles = two_textures
    cfg = FeatureConfig(sigmas=(1, 2), membrane=False)
    return save_bundle(tmp_path / "clf.dinoseg", train(featurise(image, cfg), scribbles), cfg)


@pytest.fixture
def folder(tmp_path, two_textures):
    """6 good images (tif, png, a 2-page tif stack) and 2 bad files."""
    image, truth, _ = two_textures
    d = tmp_path / "in"
    d.mkdir()
    for i in range(4):
        tifffile.imwrite(d / f"img{i}.tif", np.roll(image, 20 * i, axis=0))
    imsave(d / "img4.png", image, check_contrast=False)
    tifffile.imwrite(d / "stack5.tif", np.stack([image, image[:, ::-1]]))
    (d / "corrupt.tif").write_bytes(b"II*\x00garbage")
    (d / "notes.txt").write_text("not an image")
    return d, truth


def outputs(out):
    return sorted(p.name for p in out.glob(f"*{LABEL_SUFFIX}"))


def test_cli_six_good_two_bad_exit_code_1(tmp_path, bundle, folder, capsys):
    d, truth = folder
    out = tmp_path / "out"
    code = main(["apply", str(bundle), str(d), "-o", str(out), "--probabilities"])
    assert code == 1
    assert len(outputs(out)) == 6
    text = capsys.readouterr().out
    assert "done 6, skipped 1 (0 already there), failed 1" in text
    assert "corrupt.tif: ValueError: cannot read the image" in text
    assert f"skipped: {d / 'notes.txt'}: not an image file" in text
    labels = tifffile.imread(out / f"img0{LABEL_SUFFIX}")
    assert labels.dtype == np.uint8 and iou(labels, truth, 2) > 0.95
    assert tifffile.imread(out / f"stack5{LABEL_SUFFIX}").shape == (2, *truth.shape)
    assert tifffile.imread(out / f"img4{PROBA_SUFFIX}").shape == (*truth.shape, 2)
    assert main(["apply", str(bundle), str(d), "-o", str(out)]) == 1  # rerun: skips the 6, same failure
    assert "done 0, skipped 7 (6 already there), failed 1" in capsys.readouterr().out


def test_a_killed_run_resumes_and_never_leaves_partial_files(tmp_path, bundle, folder):
    d, _ = folder
    out = tmp_path / "out"
    good = sorted(p for p in d.iterdir() if p.name.startswith(("img", "stack")))

    def kill_after_two(done, total, name):
        assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))  # no partial file at any point
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        apply_bundle(bundle, good, out, progress=kill_after_two)
    assert len(outputs(out)) == 2
    summary = apply_bundle(bundle, good, out, progress=lambda *a: None)
    assert len(summary.done) == 4 and len(summary.skipped) == 2 and not summary.failed
    assert len(outputs(out)) == 6 and not list(out.glob(".*"))


def test_dask_local_cluster_gives_the_local_results(tmp_path, bundle, folder):
    from dask.distributed import Client, LocalCluster

    d, _ = folder
    local, remote = tmp_path / "local", tmp_path / "dask"
    apply_bundle(bundle, d, local)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        summary = apply_bundle(bundle, d, remote, scheduler=client)
    assert len(summary.done) == 6 and len(summary.failed) == 1 and len(summary.skipped) == 1
    assert outputs(local) == outputs(remote)
    for name in outputs(local):
        np.testing.assert_array_equal(tifffile.imread(local / name), tifffile.imread(remote / name))


def test_bad_inputs_and_folders(tmp_path, bundle, folder):
    d, _ = folder
    with pytest.raises(ValueError, match="inside the input folder"):
        apply_bundle(bundle, d, d / "out")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot be written"):  # a file where the folder should be
        apply_bundle(bundle, d, blocker)
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    imsave(rgb / "colour.png", np.zeros((64, 64, 3), np.uint8), check_contrast=False)
    (rgb / "empty.tif").write_bytes(b"")
    summary = apply_bundle(bundle, rgb, tmp_path / "o2")
    reasons = dict(summary.failed)
    assert "has 3 channels but the classifier was trained on greyscale" in reasons[str(rgb / "colour.png")]
    assert "empty file" in reasons[str(rgb / "empty.tif")]
    with pytest.raises(ValueError, match="no input files"):
        apply_bundle(bundle, str(tmp_path / "nothing*.tif"), tmp_path / "o3")
    assert main(["apply", str(tmp_path / "missing.dinoseg"), str(d), "-o", str(tmp_path / "o4")]) == 2


def test_large_planes_are_predicted_tile_by_tile_with_the_same_result(two_textures):
    """Classical features are local: with the context margin, tiles reproduce the whole plane."""
    from napari_dinoseg import Segmenter
    from napari_dinoseg.classify import predict
    from napari_dinoseg.image import as_float_image

    image, _, scribbles = two_textures
    cfg = FeatureConfig(sigmas=(1, 2, 4))
    big = np.tile(image, (3, 4))[:500, :700].astype(np.uint16) * 7  # uint16: normalised over the whole plane
    big_feats = featurise(as_float_image(big, cfg), cfg, normalised=True)
    linear = Segmenter(cfg, TrainConfig(classifier="logistic")).fit(image, scribbles)
    linear.tile = 160
    tiled = linear.predict_proba(big)
    np.testing.assert_allclose(tiled, predict(linear.classifier, big_feats), atol=1e-3)  # float32 rounding of blurs
    # trees: that rounding can flip a split right at a threshold, moving a probability by
    # 1 / (2 n_trees) at a few pixels, never the segmentation
    seg = Segmenter(cfg).fit(image, scribbles)
    whole = predict(seg.classifier, big_feats)
    seg.tile = 160
    tiled = seg.predict_proba(big)
    assert np.abs(tiled - whole).mean() < 1e-4 and np.abs(tiled - whole).max() < 1 / seg.classifier.forest.n_trees
    assert (seg.to_labels(tiled) == seg.to_labels(whole)).mean() > 0.9999
