"""dinoseg apply / train with a 3-D classifier: one (Z, Y, X) volume per input, segmented at its
voxel spacing (given, or read from ImageJ, OME-XML or NGFF metadata), written as an ImageJ
hyperstack TIFF or an OME-Zarr carrying the run's record; reruns, warnings, and the inputs a
3-D classifier refuses."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig
from napari_dinoseg.batch import apply_bundle
from napari_dinoseg.cli import main
from napari_dinoseg.ngff import is_complete, metadata_of, open_ngff
from napari_dinoseg.ngff_write import create_ngff, mark_complete, write_pyramid
from napari_dinoseg.outputs import output_metadata
from napari_dinoseg.voxel_spacing import (
    FROM_IMAGEJ,
    FROM_NGFF,
    FROM_OME,
    parse_spacing,
    voxel_spacing_of,
)

SHAPE = (24, 48, 48)
SPACING = (2.0, 0.5, 0.5)  # µm, (dz, dy, dx): the training volume's


def two_phase(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 volume, truth in {1, 2}): blurred noise thresholded, each phase its own grey level."""
    rng = np.random.default_rng(seed)
    truth = np.where(ndimage.gaussian_filter(rng.normal(size=SHAPE), (1.5, 3, 3)) > 0, 2, 1).astype(np.uint8)
    volume = np.clip(np.where(truth == 2, 160, 80) + rng.normal(0, 15, SHAPE), 0, 255).astype(np.uint8)
    return volume, truth


def write_imagej(path, volume, spacing=SPACING):
    """A volume as Fiji saves it: an ImageJ hyperstack with its spacing and resolution in µm."""
    tifffile.imwrite(path, volume, imagej=True, resolution=(1 / spacing[2], 1 / spacing[1]),
                     metadata={"axes": "ZYX", "spacing": spacing[0], "unit": "micron"})
    return path


def write_store(path, volume, spacing=SPACING, axes="zyx"):
    """A volume as an NGFF 0.5 image (``czyx``: a channel axis of 1 before it)."""
    data = volume if axes == "zyx" else volume[None]
    made = create_ngff(path, data.shape, data.dtype, axes=axes, chunks=(1,) * (len(axes) - 3) + (8, 32, 32),
                       pixel_size_um=dict(zip("zyx", spacing)), kind="intensity")
    made.levels[0][:] = data
    write_pyramid(made)
    mark_complete(made)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(bundle path, Segmenter): a 3-D classifier fitted on a sparsely painted volume at SPACING."""
    volume, truth = two_phase(0)
    painted = np.zeros_like(truth)
    painted[::4, ::6, ::6] = truth[::4, ::6, ::6]
    seg = Segmenter(FeatureConfig(dims=3, sigmas=(1, 2)), TrainConfig(n_trees=20)).fit(volume, painted,
                                                                                        spacing=SPACING)
    bundle = tmp_path_factory.mktemp("model") / "volume.dinoseg"
    seg.save(bundle)
    return bundle, seg


@pytest.fixture
def volume():
    return two_phase(1)


def test_a_tiff_volume_gives_one_zyx_labels_tiff_at_its_spacing(trained, volume, tmp_path):
    bundle, seg = trained
    image, truth = volume
    (tmp_path / "in").mkdir()
    write_imagej(tmp_path / "in" / "vol.tif", image)
    summary = apply_bundle(bundle, tmp_path / "in", tmp_path / "out", probabilities=True)
    target = tmp_path / "out" / "vol_labels.tif"
    assert summary.done == [str(target)] and not summary.failed and summary.warnings == []
    got = tifffile.imread(target)
    assert got.shape == SHAPE and got.dtype == np.uint8
    np.testing.assert_array_equal(got, seg.segment(image, spacing=SPACING))
    assert (got == truth).mean() > 0.95
    with tifffile.TiffFile(target) as tif:
        page = tif.pages[0]
        assert len(page.tags.getall(270)) == 1  # one description: the record
        assert page.resolution == pytest.approx((2e4, 2e4))  # pixels per cm, as plane outputs
    record = output_metadata(target)
    assert record["spacing_um"] == list(SPACING) and record["spacing_from"] == f"input: {FROM_IMAGEJ}"
    assert record["dims"] == 3 and record["axes"] == "ZYX" and record["warnings"] == []
    assert record["pixel_size_um"] == pytest.approx(0.5) and record["classes"] == [1, 2]
    proba = tifffile.imread(tmp_path / "out" / "vol_proba.tif")
    assert proba.shape == (*SHAPE, 2) and proba.dtype == np.float32
    np.testing.assert_allclose(proba, seg.predict_proba(image, spacing=SPACING), atol=1e-6)
    np.testing.assert_array_equal(np.argmax(proba, axis=-1) + 1, got)
    assert voxel_spacing_of(target).zyx_um == SPACING  # an output gives the spacing it records


def test_a_rerun_skips_a_done_volume_and_reports_its_warnings_again(trained, volume, tmp_path):
    bundle, _ = trained
    (tmp_path / "in").mkdir()
    write_imagej(tmp_path / "in" / "vol.tif", volume[0], spacing=(4.0, 0.5, 0.5))
    first = apply_bundle(bundle, tmp_path / "in", tmp_path / "out")
    assert len(first.done) == 1 and len(first.warnings) == 1
    path, message = first.warnings[0]
    assert path.endswith("vol.tif") and "trained on voxels of (2, 0.5, 0.5)" in message and "(4, 0.5, 0.5)" in message
    again = apply_bundle(bundle, tmp_path / "in", tmp_path / "out", verify=True)
    assert not again.done and len(again.skipped) == 1 and again.warnings == first.warnings


def test_the_spacing_given_replaces_the_files_and_a_mismatch_reaches_the_summary(trained, volume, tmp_path):
    bundle, seg = trained
    (tmp_path / "in").mkdir()
    write_imagej(tmp_path / "in" / "vol.tif", volume[0])
    summary = apply_bundle(bundle, tmp_path / "in", tmp_path / "out", spacing=(1.0, 0.5, 0.5))
    assert [m for _, m in summary.warnings] == [m for m in seg.check(volume[0], spacing=(1.0, 0.5, 0.5))]
    assert "this volume's are (1, 0.5, 0.5)" in summary.warnings[0][1]
    target = tmp_path / "out" / "vol_labels.tif"
    np.testing.assert_array_equal(tifffile.imread(target), seg.segment(volume[0], spacing=(1.0, 0.5, 0.5)))
    record = output_metadata(target)
    assert record["spacing_um"] == [1.0, 0.5, 0.5] and record["spacing_from"] == "given"
    assert record["warnings"] == [m for _, m in summary.warnings]
    assert voxel_spacing_of(target).zyx_um == (1.0, 0.5, 0.5)


def test_a_volume_of_unknown_spacing_is_segmented_isotropic_with_a_warning(trained, volume, tmp_path):
    bundle, seg = trained
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "vol.tif", volume[0], metadata={"axes": "ZYX"})
    summary = apply_bundle(bundle, tmp_path / "in", tmp_path / "out")
    assert len(summary.done) == 1
    assert any("segmented as isotropic voxels" in m and "--spacing" in m for _, m in summary.warnings)
    target = tmp_path / "out" / "vol_labels.tif"
    np.testing.assert_array_equal(tifffile.imread(target), seg.segment(volume[0]))
    assert output_metadata(target)["spacing_um"] is None and voxel_spacing_of(target) is None


def test_an_ome_zarr_volume_gives_an_ome_zarr_labels_volume(trained, volume, tmp_path):
    ome_v05 = pytest.importorskip("ome_zarr_models.v05")
    bundle, seg = trained
    (tmp_path / "in").mkdir()
    write_store(tmp_path / "in" / "vol.ome.zarr", volume[0], axes="czyx")  # read lazily, its c of 1 dropped
    summary = apply_bundle(bundle, tmp_path / "in", tmp_path / "out", probabilities=True)
    target = tmp_path / "out" / "vol_labels.ome.zarr"
    assert summary.done == [str(target)] and not summary.failed and summary.warnings == []
    labels = open_ngff(target)
    assert labels.version == "0.5" and labels.axes == "zyx" and labels.data.shape == SHAPE
    assert [labels.size_um(a) for a in "zyx"] == pytest.approx(list(SPACING))
    assert is_complete(target)
    np.testing.assert_array_equal(labels.data[:], seg.segment(volume[0], spacing=SPACING))
    group = zarr.open_group(target, mode="r")
    ome_v05.Image.from_zarr(group)
    ome_v05.ImageLabel.from_zarr(group)
    meta = metadata_of(target)
    assert meta["spacing_um"] == list(SPACING) and meta["spacing_from"] == f"input: {FROM_NGFF}"
    assert meta["dims"] == 3 and meta["warnings"] == []
    proba = open_ngff(tmp_path / "out" / "vol_proba.ome.zarr")
    assert proba.axes == "czyx" and proba.data.shape == (2, *SHAPE)
    np.testing.assert_allclose(np.moveaxis(proba.data[:], 0, -1), seg.predict_proba(volume[0], spacing=SPACING),
                               atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".dinoseg")) == [
        "vol_labels.ome.zarr", "vol_proba.ome.zarr"]  # no partial store left
    again = apply_bundle(bundle, tmp_path / "in", tmp_path / "out", probabilities=True)
    assert not again.done and len(again.skipped) == 1


def test_voxel_spacing_read_from_imagej_ome_xml_and_ngff(tmp_path, volume):
    image = volume[0][:4]
    found = voxel_spacing_of(write_imagej(tmp_path / "ij.tif", image, spacing=(3.0, 0.25, 0.5)))
    assert found.zyx_um == pytest.approx((3.0, 0.25, 0.5)) and found.source == FROM_IMAGEJ
    tifffile.imwrite(tmp_path / "ome.ome.tif", image, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 1.5, "PhysicalSizeY": 200, "PhysicalSizeYUnit": "nm", "PhysicalSizeX": 0.2})
    found = voxel_spacing_of(tmp_path / "ome.ome.tif")
    assert found.zyx_um == pytest.approx((1.5, 0.2, 0.2)) and found.source == FROM_OME
    found = voxel_spacing_of(write_store(tmp_path / "v.ome.zarr", image, spacing=(1.0, 0.3, 0.3)))
    assert found.zyx_um == pytest.approx((1.0, 0.3, 0.3)) and found.source == FROM_NGFF
    group = zarr.open_group(tmp_path / "v04.zarr", mode="w", zarr_format=2)  # NGFF 0.4, in nm
    group.create_array("0", shape=image.shape, dtype=image.dtype)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [800, 100, 100]}]}]}]
    assert voxel_spacing_of(tmp_path / "v04.zarr").zyx_um == pytest.approx((0.8, 0.1, 0.1))


def test_files_that_say_nothing_about_z_have_no_spacing(tmp_path, volume):
    image = volume[0][:4]
    tifffile.imwrite(tmp_path / "plain.tif", image, resolution=(2, 2), resolutionunit="CENTIMETER",
                     photometric="minisblack")
    tifffile.imwrite(tmp_path / "plane.tif", image[0], imagej=True, resolution=(2, 2), metadata={"unit": "micron"})
    tifffile.imwrite(tmp_path / "pixels.tif", image, imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})
    made = create_ngff(tmp_path / "yx.ome.zarr", image[0].shape, image.dtype, pixel_size_um=0.5)
    for path in ("plain.tif", "plane.tif", "pixels.tif", "yx.ome.zarr"):
        assert voxel_spacing_of(tmp_path / path) is None, path
    assert made.pixel_size_um == 0.5


@pytest.mark.parametrize("text", ["1,2", "0,1,1", "a,b,c", "1,-1,1", "1,nan,1", ""])
def test_a_malformed_spacing_is_refused_naming_it(text):
    with pytest.raises(ValueError, match=f"--spacing {text}: give the voxel size as three positive numbers"):
        parse_spacing(text)


def test_inputs_a_3d_classifier_cannot_segment_fail_and_the_others_are_done(trained, volume, tmp_path):
    bundle, _ = trained
    (tmp_path / "in").mkdir()
    write_imagej(tmp_path / "in" / "good.tif", volume[0])
    tifffile.imwrite(tmp_path / "in" / "series.tif", np.stack([volume[0][:4]] * 2), imagej=True,
                     metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "in" / "plane.tif", volume[0][0])
    tifffile.imwrite(tmp_path / "in" / "rgb.tif", np.stack([volume[0][:4]] * 3, axis=-1), photometric="rgb")
    summary = apply_bundle(bundle, tmp_path / "in", tmp_path / "out")
    assert summary.done == [str(tmp_path / "out" / "good_labels.tif")]
    failed = {p.split("/")[-1]: reason for p, reason in summary.failed}
    assert "its axes are TZYX" in failed["series.tif"] and "a 3-D classifier segments one (Z, Y, X)" in failed[
        "series.tif"] and "--axes" in failed["series.tif"]
    assert "single plane" in failed["plane.tif"] and "not a volume" in failed["plane.tif"]
    assert "3 channels" in failed["rgb.tif"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".dinoseg")) == [
        "good_labels.tif"]


def test_an_ome_zarr_of_several_time_points_is_refused_naming_its_axes(trained, volume, tmp_path):
    bundle, _ = trained
    (tmp_path / "in").mkdir()
    data = np.stack([volume[0][:4]] * 2)
    made = create_ngff(tmp_path / "in" / "t.ome.zarr", data.shape, data.dtype, axes="tzyx", chunks=(1, 4, 48, 48))
    made.levels[0][:] = data
    mark_complete(made)
    summary = apply_bundle(bundle, tmp_path / "in", tmp_path / "out")
    assert not summary.done and "its axes are 'tzyx' (shape (2, 4, 48, 48))" in summary.failed[0][1]


def test_another_classifiers_volume_output_is_refused_and_kept(trained, volume, tmp_path):
    bundle, _ = trained
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    write_imagej(tmp_path / "in" / "vol.tif", volume[0])
    theirs = tmp_path / "out" / "vol_labels.tif"
    tifffile.imwrite(theirs, volume[1], metadata={"dinoseg_bundle": "another", "axes": "ZYX"})
    before = theirs.read_bytes()
    with pytest.raises(ValueError, match="made by another classifier"):
        apply_bundle(bundle, tmp_path / "in", tmp_path / "out")
    assert theirs.read_bytes() == before


def test_a_2d_classifier_given_a_spacing_is_refused(tmp_path, two_textures):
    image, _, scribbles = two_textures
    bundle = Segmenter(FeatureConfig(sigmas=(1, 2))).fit(image, scribbles).save(tmp_path / "planes.dinoseg")
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", image)
    with pytest.raises(ValueError, match="--spacing.* is for a 3-D classifier"):
        apply_bundle(bundle, tmp_path / "in", tmp_path / "out", spacing=(1, 1, 1))
    assert not (tmp_path / "out").exists()


def test_cli_train_dims_3_then_apply_round_trip(tmp_path, volume, capsys):
    image, truth = volume
    painted = np.zeros_like(truth)
    painted[::4, ::6, ::6] = truth[::4, ::6, ::6]
    (tmp_path / "in").mkdir()
    write_imagej(tmp_path / "in" / "vol.tif", image)
    tifffile.imwrite(tmp_path / "painted.tif", painted)
    bundle = tmp_path / "model.dinoseg"
    assert main(["train", str(tmp_path / "in" / "vol.tif"), "--labels", str(tmp_path / "painted.tif"),
                 "-o", str(bundle), "--dims", "3", "--classifier", "logistic"]) == 0
    out = capsys.readouterr().out
    assert "on 1 volume(s)" in out and "voxel spacing 2, 0.5, 0.5 µm" in out
    seg = Segmenter.load(bundle)
    assert seg.features.dims == 3 and seg.spacing == SPACING and seg.pixel_size == 0.5
    assert main(["apply", str(bundle), str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                 "--spacing", "2,0.5,0.5"]) == 0
    got = tifffile.imread(tmp_path / "out" / "vol_labels.tif")
    np.testing.assert_array_equal(got, seg.segment(image, spacing=SPACING))
    assert (got == truth).mean() > 0.9
    assert output_metadata(tmp_path / "out" / "vol_labels.tif")["spacing_from"] == "given"


@pytest.mark.parametrize("command", ["apply", "train"])
@pytest.mark.parametrize("text", ["1,2", "0,1,1", "a,b,c"])
def test_cli_refuses_a_malformed_spacing_before_reading_anything(tmp_path, trained, capsys, command, text):
    bundle, _ = trained
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "vol.tif", np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    args = {"apply": ["apply", str(bundle), str(tmp_path / "in"), "-o", str(tmp_path / "out")],
            "train": ["train", str(tmp_path / "in" / "vol.tif"), "--labels", str(tmp_path / "in" / "vol.tif"),
                      "-o", str(tmp_path / "m.dinoseg"), "--dims", "3"]}[command]
    assert main([*args, f"--spacing={text}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dinoseg: error: --spacing {text}: give the voxel size as three positive numbers")
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.dinoseg").exists()


def test_cli_train_dims_3_refuses_labels_of_another_shape(tmp_path, volume, capsys):
    (tmp_path / "in").mkdir()
    write_imagej(tmp_path / "in" / "vol.tif", volume[0])
    tifffile.imwrite(tmp_path / "painted.tif", volume[1][:20])
    assert main(["train", str(tmp_path / "in" / "vol.tif"), "--labels", str(tmp_path / "painted.tif"),
                 "-o", str(tmp_path / "m.dinoseg"), "--dims", "3"]) == 2
    err = capsys.readouterr().err
    assert "painted.tif holds labels of shape (20, 48, 48)" in err and "is of shape (24, 48, 48)" in err
    assert not (tmp_path / "m.dinoseg").exists()


def test_cli_train_refuses_a_spacing_without_dims_3_and_a_4d_volume(tmp_path, volume, capsys):
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "series.tif", np.stack([volume[0][:4]] * 2), imagej=True,
                     metadata={"axes": "TZYX"})
    base = ["train", str(tmp_path / "in" / "series.tif"), "--labels", str(tmp_path / "in" / "series.tif"),
            "-o", str(tmp_path / "m.dinoseg")]
    assert main([*base, "--spacing", "1,1,1"]) == 2
    assert "--spacing is the voxel size of training volumes: add --dims 3" in capsys.readouterr().err
    assert main([*base, "--volume-planes", "triplanar"]) == 2
    assert "--volume-planes is for volumes: add --dims 3" in capsys.readouterr().err
    assert main([*base, "--dims", "3"]) == 2
    assert "series.tif: its axes are TZYX" in capsys.readouterr().err
    assert not (tmp_path / "m.dinoseg").exists()
