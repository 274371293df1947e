"""dinoseg apply on OME-Zarr inputs: OME-Zarr outputs with a pyramid and the pixel size, a rerun
that skips them, a kill -9 mid-image finished by a rerun, one image's tiles spread over a dask
LocalCluster, another classifier's output refused."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig
from napari_dinoseg.batch import apply_bundle
from napari_dinoseg.ngff import is_complete, metadata_of, open_ngff
from napari_dinoseg.ngff_write import create_ngff, mark_complete, write_pyramid

SMALL = FeatureConfig(sigmas=(1, 2, 4))
SIDE = 700  # with tile 256: 9 tiles


def write_store(path, image, pixel_size=0.02, chunks=128, levels=None):
    made = create_ngff(path, image.shape, image.dtype, chunks=chunks, pixel_size_um=pixel_size, kind="intensity",
                       levels=levels)
    made.levels[0][:] = image
    write_pyramid(made)
    mark_complete(made)
    return path


@pytest.fixture
def scene(two_textures, tmp_path):
    """(input folder with one OME-Zarr image, bundle path with tile 256, the image, its truth)."""
    image, truth, scribbles = two_textures
    plane = (np.tile(image, (4, 4))[:SIDE, :SIDE].astype(np.uint16) * 50)
    seg = Segmenter(SMALL, TrainConfig(n_trees=20)).fit(image.astype(np.uint16) * 50, scribbles, pixel_size=0.02)
    bundle = tmp_path / "model.dinoseg"
    seg.save(bundle)
    folder = tmp_path / "in"
    folder.mkdir()
    write_store(folder / "mosaic.ome.zarr", plane, levels=2)
    return folder, bundle, plane, np.tile(truth, (4, 4))[:SIDE, :SIDE]


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(Segmenter, "tile", 256)


def reference(bundle, plane):
    seg = Segmenter.load(bundle)
    seg.tile = 256
    return seg


def test_an_ome_zarr_input_gets_ome_zarr_labels_with_its_pixel_size(scene, tmp_path, small_tiles):
    folder, bundle, plane, truth = scene
    out = tmp_path / "out"
    summary = apply_bundle(bundle, folder, out, probabilities=True)
    assert summary.done == [str(out / "mosaic_labels.ome.zarr")] and not summary.failed and not summary.notes
    labels = open_ngff(out / "mosaic_labels.ome.zarr")
    assert labels.version == "0.5" and labels.axes == "yx" and labels.pixel_size_um == pytest.approx(0.02)
    assert len(labels.levels) == 1 or labels.levels[1].shape == (350, 350)
    assert is_complete(out / "mosaic_labels.ome.zarr")
    got = labels.data[:]
    assert (got == truth).mean() > 0.9
    seg = reference(bundle, plane)
    assert (got == seg.segment(plane)).mean() > 0.999  # the grid's windows: float rounding only
    meta = metadata_of(out / "mosaic_labels.ome.zarr")
    assert meta["dinoseg_bundle"] and meta["pixel_size_um"] == pytest.approx(0.02) and meta["warnings"] == []
    proba = open_ngff(out / "mosaic_proba.ome.zarr")
    assert proba.axes == "cyx" and proba.data.shape == (2, SIDE, SIDE)
    np.testing.assert_array_equal(np.argmax(proba.data[:], axis=0) + 1, got)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".dinoseg")) == [
        "mosaic_labels.ome.zarr", "mosaic_proba.ome.zarr"]  # no partial store left
    again = apply_bundle(bundle, folder, out, probabilities=True)
    assert not again.done and len(again.skipped) == 1


def test_the_metadata_written_is_valid_ngff(scene, tmp_path, small_tiles):
    from ome_zarr_models.v05 import Image, ImageLabel  # noqa: F401

    folder, bundle, _, _ = scene
    apply_bundle(bundle, folder, tmp_path / "out", probabilities=True)
    for name in ("mosaic_labels.ome.zarr", "mosaic_proba.ome.zarr"):
        group = zarr.open_group(str(tmp_path / "out" / name), mode="r")
        Image.from_zarr(group)  # raises on a missing or wrong required key


def test_a_pixel_size_mismatch_is_a_warning(two_textures, tmp_path, small_tiles):
    image, _, scribbles = two_textures
    seg = Segmenter(SMALL, TrainConfig(n_trees=10)).fit(image, scribbles, pixel_size=0.02)
    seg.save(tmp_path / "m.dinoseg")
    (tmp_path / "in").mkdir()
    write_store(tmp_path / "in" / "fine.ome.zarr", np.tile(image, (2, 2)), pixel_size=0.005)
    summary = apply_bundle(tmp_path / "m.dinoseg", tmp_path / "in", tmp_path / "out")
    assert any("trained at 20.0 nm/px, this image is 5.00 nm/px" in w for _, w in summary.warnings)


def test_kill_9_mid_image_then_a_rerun_finishes_it(scene, tmp_path, monkeypatch):
    """A run killed after some tiles leaves a partial store (never a final one); the rerun
    predicts only the tiles not recorded and gives the same labels as a run never stopped."""
    import napari_dinoseg.batch_zarr as batch_zarr

    folder, bundle, plane, _ = scene
    out = tmp_path / "out"
    script = ("import sys, napari_dinoseg.segmenter as s; s.Segmenter.tile = 256\n"
              "from napari_dinoseg.cli import main; sys.exit(main(sys.argv[1:]))")
    run = subprocess.Popen([sys.executable, "-c", script, "apply", str(bundle), str(folder), "-o", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    records = out / ".mosaic_labels.ome.zarr.partial" / "tiles"
    deadline = time.monotonic() + 120
    while not (records.is_dir() and len(list(records.glob("*.npz"))) >= 2) and time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    written = len(list(records.glob("*.npz")))
    assert 2 <= written < 9, "killed too late to test the resume"
    assert not (out / "mosaic_labels.ome.zarr").exists()  # no final store from a run that did not finish
    monkeypatch.setattr(Segmenter, "tile", 256)
    done = []
    real = batch_zarr.run_tiles
    monkeypatch.setattr(batch_zarr, "run_tiles", lambda *args: done.append(len(args[-1])) or real(*args))
    summary = apply_bundle(bundle, folder, out)
    assert summary.done and not summary.failed
    assert sum(done) <= 9 - written + 1  # a tile being written when killed is done again
    resumed = open_ngff(out / "mosaic_labels.ome.zarr").data[:]
    clean = apply_bundle(bundle, folder, tmp_path / "clean")
    assert clean.done
    np.testing.assert_array_equal(resumed, open_ngff(tmp_path / "clean" / "mosaic_labels.ome.zarr").data[:])


def test_the_tiles_of_one_image_are_spread_over_a_local_cluster(scene, tmp_path, small_tiles):
    from dask.distributed import Client, LocalCluster

    folder, bundle, plane, _ = scene
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as local, \
            Client(local, set_as_default=False) as client:
        summary = apply_bundle(bundle, folder, tmp_path / "out", scheduler=client)
        tasks = [key for key in client.run_on_scheduler(
            lambda dask_scheduler: [str(k) for k in dask_scheduler.task_prefixes])]
    assert summary.done and not summary.failed, summary.failed
    assert "run_tiles" in tasks  # tiles ran as tasks of their own, not one task for the image
    assert apply_bundle(bundle, folder, tmp_path / "here").done
    np.testing.assert_array_equal(open_ngff(tmp_path / "out" / "mosaic_labels.ome.zarr").data[:],
                                  open_ngff(tmp_path / "here" / "mosaic_labels.ome.zarr").data[:])


def test_another_classifiers_output_is_not_overwritten(scene, two_textures, tmp_path, small_tiles):
    folder, bundle, _, _ = scene
    out = tmp_path / "out"
    apply_bundle(bundle, folder, out)
    first = metadata_of(out / "mosaic_labels.ome.zarr")["dinoseg_bundle"]
    image, _, scribbles = two_textures
    other = tmp_path / "other.dinoseg"
    Segmenter(SMALL, TrainConfig(n_trees=5, seed=3)).fit(image, scribbles).save(other)
    with pytest.raises(ValueError, match="made by another classifier"):
        apply_bundle(other, folder, out)
    assert metadata_of(out / "mosaic_labels.ome.zarr")["dinoseg_bundle"] == first  # refused: untouched
    assert apply_bundle(other, folder, out, overwrite=True).done
    assert metadata_of(out / "mosaic_labels.ome.zarr")["dinoseg_bundle"] not in (first, None)


def test_format_zarr_writes_ome_zarr_for_a_tiff_input_from_the_command_line(scene, tmp_path, capsys):
    import tifffile

    from napari_dinoseg.cli import main

    folder, bundle, plane, truth = scene
    tiffs = tmp_path / "tiffs"
    tiffs.mkdir()
    tifffile.imwrite(tiffs / "mosaic.tif", plane, resolution=(1e4 / 0.02, 1e4 / 0.02), resolutionunit="CENTIMETER")
    tifffile.imwrite(tiffs / "stack.tif", np.stack([plane[:300, :300]] * 2), metadata={"axes": "ZYX"})
    assert main(["apply", str(bundle), str(tiffs), "-o", str(tmp_path / "out"), "--format", "zarr"]) == 0
    assert "done 2" in capsys.readouterr().out
    labels = open_ngff(tmp_path / "out" / "mosaic_labels.ome.zarr")
    assert labels.pixel_size_um == pytest.approx(0.02) and labels.axes == "yx"
    assert (labels.data[:] == truth).mean() > 0.9
    stack = open_ngff(tmp_path / "out" / "stack_labels.ome.zarr")
    assert stack.axes == "zyx" and stack.data.shape == (2, 300, 300)
    np.testing.assert_array_equal(stack.data[0], stack.data[1])
    with pytest.raises(ValueError, match="output_format is 'png'"):
        apply_bundle(bundle, tiffs, tmp_path / "out2", output_format="png")


def test_an_ngff_04_input_with_channels_is_segmented_with_its_nanometre_pixel_size(two_textures, tmp_path,
                                                                                   small_tiles):
    """A 0.4 store (zarr v2) of a 2-channel image, axes cyx in nanometres: channels read last, the
    pixel size in µm in the output, the labels those of the in-memory channels-last image."""
    from test_ngff import write_v04

    image, _, scribbles = two_textures
    two = np.stack([image, 255 - image], axis=-1)
    seg = Segmenter(SMALL, TrainConfig(n_trees=10)).fit(two, scribbles)
    seg.save(tmp_path / "m.dinoseg")
    plane = np.tile(two, (3, 3, 1))
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "nanometer"},
            {"name": "x", "type": "space", "unit": "nanometer"}]
    (tmp_path / "in").mkdir()
    write_v04(tmp_path / "in" / "two.zarr", [np.moveaxis(plane, -1, 0)], axes, [[1, 40, 40]])
    summary = apply_bundle(tmp_path / "m.dinoseg", tmp_path / "in", tmp_path / "out")
    assert summary.done == [str(tmp_path / "out" / "two_labels.ome.zarr")], summary.failed
    labels = open_ngff(tmp_path / "out" / "two_labels.ome.zarr")
    assert labels.pixel_size_um == pytest.approx(0.04)
    seg.tile = 256
    assert (labels.data[:] == seg.segment(plane)).mean() > 0.999


def test_a_coarser_level_is_segmented_when_asked_with_its_pixel_size(scene, tmp_path, small_tiles, capsys):
    from napari_dinoseg.cli import main

    folder, bundle, plane, _ = scene
    summary = apply_bundle(bundle, folder, tmp_path / "out", level=1)
    assert summary.done and not summary.failed, summary.failed
    labels = open_ngff(tmp_path / "out" / "mosaic_labels.ome.zarr")
    assert labels.data.shape == (350, 350) and labels.pixel_size_um == pytest.approx(0.04)
    assert metadata_of(tmp_path / "out" / "mosaic_labels.ome.zarr")["level"] == 1
    assert any("trained at 20.0 nm/px, this image is 40.0 nm/px" in w for _, w in summary.warnings)
    assert main(["apply", str(bundle), str(folder), "-o", str(tmp_path / "out"), "--level", "0"]) == 0
    assert "done 1" in capsys.readouterr().out  # level 0 is not level 1's output: segmented again
    assert main(["apply", str(bundle), str(folder), "-o", str(tmp_path / "out5"), "--level", "5"]) == 1
    assert "there is no level 5" in capsys.readouterr().out
    with pytest.raises(ValueError, match="level is -1"):
        apply_bundle(bundle, folder, tmp_path / "out", level=-1)
