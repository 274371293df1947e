"""OME-Zarr (NGFF) images: written by napari_dinoseg.ngff and validated by ome-zarr-models,
NGFF 0.4 stores written by hand read back, lazy channels-last planes, clear refusals, pixel
sizes and inputs of zarr directories, and a pyramid written in bounded memory."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import zarr
from conftest import Recording

from napari_dinoseg.ngff import ChannelsLast, PlaneView, is_complete, is_ome_zarr, is_zarr_image, open_ngff, planes
from napari_dinoseg.ngff_write import create_ngff, mark_complete, write_pyramid

ome_v04 = pytest.importorskip("ome_zarr_models.v04")
ome_v05 = pytest.importorskip("ome_zarr_models.v05")


def validate_v04(group) -> None:
    """``ome_zarr_models.v04.Image.from_zarr``; its model names pydantic_zarr's v2 specs in
    annotations it leaves unresolved (ome-zarr-models 1.6), resolved here first."""
    from pydantic_zarr.v2 import ArraySpec, GroupSpec

    ome_v04.Image.model_rebuild(_types_namespace={"ArraySpec": ArraySpec, "GroupSpec": GroupSpec})
    ome_v04.Image.from_zarr(group)


def write_windows(array, data: np.ndarray, window: int) -> None:
    """Fill a 2-D zarr array window by window, as the segmentation writes its output."""
    for y in range(0, data.shape[0], window):
        for x in range(0, data.shape[1], window):
            array[y:y + window, x:x + window] = data[y:y + window, x:x + window]


def mean_2x2(data: np.ndarray) -> np.ndarray:
    """The reference 2 x 2 mean of the last two axes (an odd edge: the pixels inside only)."""
    h, w = data.shape[-2:]
    padded = np.full(data.shape[:-2] + (h + h % 2, w + w % 2), np.nan)
    padded[..., :h, :w] = data
    blocks = padded.reshape(data.shape[:-2] + (padded.shape[-2] // 2, 2, padded.shape[-1] // 2, 2))
    return np.nanmean(blocks, axis=(-3, -1))


def write_v04(path, levels, axes, scales, version="0.4", outer_scale=None):
    """An NGFF 0.4 image group written by hand with zarr's v2 format."""
    group = zarr.open_group(path, mode="w", zarr_format=2)
    for k, data in enumerate(levels):
        group.create_array(str(k), shape=data.shape, dtype=data.dtype, chunks=(1,) * (data.ndim - 2) + (64, 64))
        group[str(k)][...] = data
    multiscale = {"version": version, "name": "by hand", "axes": axes,
                  "datasets": [{"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": s}]}
                               for k, s in enumerate(scales)]}
    if outer_scale is not None:
        multiscale["coordinateTransformations"] = [{"type": "scale", "scale": outer_scale}]
    group.attrs["multiscales"] = [multiscale]
    return group


def test_labels_written_window_by_window_read_back_with_their_pyramid(tmp_path, rng):
    path = tmp_path / "labels.ome.zarr"
    data = rng.integers(1, 6, (2600, 2100), dtype=np.uint8)
    data[:700, :900] = 0  # whole chunks of the fill value are not stored by zarr: read back as 0
    image = create_ngff(path, data.shape, np.uint8, chunks=512, pixel_size_um=0.02,
                        metadata={"dinoseg_bundle": "abc"})
    assert [a.shape for a in image.levels] == [(2600, 2100), (1300, 1050), (650, 525)]  # 650 <= 1024
    write_windows(image.levels[0], data, 512)
    assert not is_complete(path)
    write_pyramid(image)
    mark_complete(image)

    read = open_ngff(path)
    assert is_ome_zarr(path) and is_complete(path)
    assert (read.version, read.axes, read.axis_types, read.name) == ("0.5", "yx", ("space", "space"), "labels")
    assert read.attrs == {"dinoseg_bundle": "abc", "kind": "labels", "complete": True}
    np.testing.assert_array_equal(read.data[...], data)
    for k in (1, 2):
        level = open_ngff(path, level=k)
        assert level.data.shape == tuple(-(-n // 2 ** k) for n in data.shape)
        assert level.pixel_size_um == pytest.approx(0.02 * 2 ** k)
        values = level.data[...]
        np.testing.assert_array_equal(values, data[::2 ** k, ::2 ** k])  # nearest: every 2**k-th pixel
        assert set(np.unique(values)) <= set(np.unique(data))
    group = zarr.open_group(path, mode="r")
    ome_v05.Image.from_zarr(group)
    ome_v05.ImageLabel.from_zarr(group)
    assert group["0"].metadata.dimension_names == ("y", "x")


def test_probabilities_pyramid_is_the_mean_of_2x2_pixels_with_odd_edges(tmp_path, rng):
    proba = rng.random((3, 301, 257)).astype(np.float32)
    image = create_ngff(tmp_path / "p.ome.zarr", proba.shape, np.float32, axes="cyx", chunks=64, levels=3,
                        kind="intensity", pixel_size_um=0.5)
    assert image.axis_types == ("channel", "space", "space") and image.units == (None, "micrometer", "micrometer")
    image.levels[0][...] = proba
    write_pyramid(tmp_path / "p.ome.zarr")  # the kind as recorded
    expected = proba.astype(np.float64)
    for k in (1, 2):
        expected = mean_2x2(expected)
        np.testing.assert_allclose(open_ngff(tmp_path / "p.ome.zarr", level=k).data[...], expected, rtol=1e-5)
    ome_v05.Image.from_zarr(zarr.open_group(tmp_path / "p.ome.zarr", mode="r"))
    read = open_ngff(tmp_path / "p.ome.zarr", level=2)
    assert read.scales[2] == (1.0, 2.0, 2.0) and read.pixel_size_um == 2.0 and read.lead_axes == ""


def test_an_intensity_pyramid_of_integers_is_rounded_and_a_labels_pyramid_never_averages(tmp_path):
    data = np.array([[0, 1, 200], [1, 1, 255], [7, 9, 10]], np.uint8)
    smooth = create_ngff(tmp_path / "i.zarr", data.shape, np.uint8, levels=2, kind="intensity")
    smooth.levels[0][...] = data
    write_pyramid(smooth)
    np.testing.assert_array_equal(smooth.levels[1][...], [[1, 228], [8, 10]])  # 0.75, 227.5, 8, 10
    labels = create_ngff(tmp_path / "l.zarr", data.shape, np.uint8, levels=2)
    labels.levels[0][...] = data
    write_pyramid(labels)
    np.testing.assert_array_equal(labels.levels[1][...], [[0, 200], [7, 10]])


def test_an_ngff_04_store_written_by_hand_is_read_with_its_units_and_both_transforms(tmp_path, rng):
    path = tmp_path / "old.zarr"
    level0 = rng.integers(0, 60000, (2, 128, 96), dtype=np.uint16)
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "nanometer"},
            {"name": "x", "type": "space", "unit": "nanometer"}]
    group = write_v04(path, [level0, level0[:, ::2, ::2]], axes, [[1, 20, 10], [1, 40, 20]], outer_scale=[1, 2, 2])
    validate_v04(group)  # the fixture is a real NGFF 0.4 image

    assert is_ome_zarr(path) and (path / ".zattrs").is_file() and not (path / "zarr.json").exists()
    image = open_ngff(path)
    assert (image.version, image.axes, image.name) == ("0.4", "cyx", "by hand")
    assert [a.shape for a in image.levels] == [(2, 128, 96), (2, 64, 48)]
    assert image.scales == ((1.0, 40.0, 20.0), (1.0, 80.0, 40.0))  # the dataset's, then the multiscale's
    assert image.pixel_size_um == pytest.approx(0.02) and image.pixel_size_y_um == pytest.approx(0.04)
    assert open_ngff(path, level=1).pixel_size_um == pytest.approx(0.04)
    plane = image.plane()
    assert plane.shape == (128, 96, 2) and plane.dtype == np.uint16 and plane.chunks == (64, 64, 1)
    np.testing.assert_array_equal(plane[10:20, 5:7], np.moveaxis(level0, 0, -1)[10:20, 5:7])


def test_channels_last_equals_moveaxis_on_every_kind_of_key(tmp_path, rng):
    data = rng.integers(0, 255, (3, 50, 40), dtype=np.uint8)
    array = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, dtype=data.dtype, chunks=(1, 16, 16))
    array[...] = data
    view, moved = ChannelsLast(array), np.moveaxis(data, 0, -1)
    assert (view.shape, view.ndim, view.dtype, view.chunks, len(view)) == ((50, 40, 3), 3, np.uint8, (16, 16, 1), 50)
    keys = [np.s_[...], np.s_[3:17], np.s_[3:17, 5:9], np.s_[3:17, 5:9, 1:], np.s_[4], np.s_[4, :, 2],
            np.s_[:, 7], np.s_[..., 0], np.s_[-1, -2], np.s_[2, 3, 1], np.s_[::3, 1::4], np.s_[10:20, ..., 0:2]]
    for key in keys:
        np.testing.assert_array_equal(view[key], moved[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(view), moved)
    with pytest.raises(TypeError, match="ints and slices"):
        view[[1, 2]]
    with pytest.raises(IndexError, match="too many indices"):
        view[1, 2, 0, 0]


def test_a_plane_view_reads_only_the_region_asked_for(rng):
    data = rng.random((2, 3, 4, 30, 20))  # t c z y x
    recording = Recording(data)
    view = PlaneView(recording, "tczyx", (1, 2))
    np.testing.assert_array_equal(view[5:9, 2:4], np.moveaxis(data[1, :, 2, 5:9, 2:4], 0, -1))
    assert recording.keys == [(1, slice(None), 2, slice(5, 9), slice(2, 4))]
    assert view.shape == (30, 20, 3) and view.chunks is None  # no chunks to tell


def test_a_plane_view_of_a_dask_array_has_its_chunk_sizes(rng):
    import dask.array as da

    data = rng.random((2, 30, 20))
    view = PlaneView(da.from_array(data, chunks=(1, 16, 8)), "cyx")
    assert view.chunks == (16, 8, 1)
    np.testing.assert_array_equal(view[3:20, 4], data[:, 3:20, 4].T)


def test_planes_of_a_time_and_z_series_are_each_index_of_the_lead_axes(tmp_path, rng):
    data = rng.integers(0, 9, (2, 3, 2, 32, 24), dtype=np.uint8)
    image = create_ngff(tmp_path / "s.ome.zarr", data.shape, np.uint8, axes="tczyx", chunks=16, levels=2,
                        pixel_size_um={"z": 0.5, "y": 0.1, "x": 0.1}, kind="intensity")
    image.levels[0][...] = data
    write_pyramid(image)
    ome_v05.Image.from_zarr(zarr.open_group(tmp_path / "s.ome.zarr", mode="r"))
    read = open_ngff(tmp_path / "s.ome.zarr")
    assert (read.lead_axes, read.lead_shape, read.channel_axis) == ("tz", (2, 2), 1)
    assert read.size_um("z") == 0.5 and read.levels[1].shape == (2, 3, 2, 16, 12)  # z is not halved
    found = list(planes(read))
    assert [index for index, _ in found] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for (t, z), plane in found:
        np.testing.assert_array_equal(plane[...], np.moveaxis(data[t, :, z], 0, -1))


def test_a_plain_zarr_array_is_one_level_with_its_dimension_names_or_the_axes_given(tmp_path, rng):
    flat = zarr.create_array(tmp_path / "flat.zarr", shape=(40, 30), dtype=np.uint8)
    zarr.create_array(tmp_path / "named.zarr", shape=(2, 40, 30), dtype=np.uint8, dimension_names=["c", "y", "x"])
    zarr.create_array(tmp_path / "bare.zarr", shape=(2, 40, 30), dtype=np.uint8)
    flat[...] = 5
    assert is_zarr_image(tmp_path / "flat.zarr") and not is_ome_zarr(tmp_path / "flat.zarr")
    image = open_ngff(tmp_path / "flat.zarr")
    assert (image.axes, len(image.levels), image.version, image.pixel_size_um) == ("yx", 1, None, None)
    assert open_ngff(tmp_path / "named.zarr").axes == "cyx"
    with pytest.raises(ValueError, match=r"without axis names: give its axes \(axes='cyx'"):
        open_ngff(tmp_path / "bare.zarr")
    assert open_ngff(tmp_path / "bare.zarr", axes="zyx").lead_axes == "z"


def test_a_bioformats2raw_layout_opens_its_first_image(tmp_path, rng):
    root = zarr.open_group(tmp_path / "converted.zarr", mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    axes = [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]
    write_v04(tmp_path / "converted.zarr" / "0", [rng.integers(0, 9, (64, 64), dtype=np.uint8)], axes, [[0.3, 0.3]])
    assert is_ome_zarr(tmp_path / "converted.zarr")
    image = open_ngff(tmp_path / "converted.zarr")
    assert image.path == tmp_path / "converted.zarr" / "0" and image.pixel_size_um == pytest.approx(0.3)


def test_what_cannot_be_read_is_refused_with_what_to_do(tmp_path, rng):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.tif").write_bytes(b"II*\x00")
    with pytest.raises(ValueError, match="is not a zarr store .*give an OME-Zarr image directory"):
        open_ngff(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a zarr store \\(not a directory\\)"):
        open_ngff(tmp_path / "file.tif")
    image = create_ngff(tmp_path / "img.ome.zarr", (2100, 900), np.uint8, levels=4)
    with pytest.raises(ValueError, match=r"there is no level 4: the image has levels 0..3; ask for one of them"):
        open_ngff(tmp_path / "img.ome.zarr", level=4)
    with pytest.raises(ValueError, match="no level -1"):
        open_ngff(tmp_path / "img.ome.zarr", level=-1)
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    write_v04(tmp_path / "old.zarr", [np.zeros((8, 8), np.uint8)], axes, [[1, 1]], version="0.3")
    with pytest.raises(ValueError, match="is OME-Zarr version 0.3; versions 0.4 and 0.5 are supported"):
        open_ngff(tmp_path / "old.zarr")
    assert is_ome_zarr(tmp_path / "old.zarr")  # listed as an input, so that the refusal is reported
    group = zarr.open_group(tmp_path / "future.zarr", mode="w")
    group.attrs["ome"] = {"version": "0.6", "multiscales": [{"axes": axes, "datasets": []}]}
    with pytest.raises(ValueError, match="version 0.6; versions 0.4 and 0.5"):
        open_ngff(tmp_path / "future.zarr")
    zarr.open_group(tmp_path / "plate.zarr", mode="w").attrs["ome"] = {"version": "0.5", "plate": {}}
    with pytest.raises(ValueError, match="without 'multiscales': not an OME-Zarr image"):
        open_ngff(tmp_path / "plate.zarr")
    with pytest.raises(ValueError, match="exists: remove it, write elsewhere, or pass overwrite=True"):
        create_ngff(tmp_path / "img.ome.zarr", (10, 10), np.uint8)
    assert len(open_ngff(tmp_path / "img.ome.zarr").levels) == 4 and image.levels[0].shape == (2100, 900)
    with pytest.raises(ValueError, match="axes 'xy' are not supported"):
        create_ngff(tmp_path / "new.zarr", (10, 10), np.uint8, axes="xy")
    with pytest.raises(ValueError, match="pixel size -1 µm along y: give a positive number"):
        create_ngff(tmp_path / "new.zarr", (10, 10), np.uint8, pixel_size_um=-1)
    with pytest.raises(ValueError, match="metadata must be JSON-able"):
        create_ngff(tmp_path / "new.zarr", (10, 10), np.uint8, metadata={"a": object()})
    assert not (tmp_path / "new.zarr").exists()
    assert not is_complete(tmp_path / "empty") and not is_complete(tmp_path / "nothing")


def test_pixel_size_of_a_zarr_directory(tmp_path):
    from napari_dinoseg.pixel_size import FROM_DINOSEG, FROM_NGFF, pixel_size_of

    create_ngff(tmp_path / "a.ome.zarr", (64, 64), np.uint8, pixel_size_um=0.25)
    found = pixel_size_of(tmp_path / "a.ome.zarr")
    assert (found.um, found.source, found.note) == (0.25, FROM_NGFF, "")
    create_ngff(tmp_path / "b.ome.zarr", (64, 64), np.uint8, pixel_size_um={"y": 0.5, "x": 0.25})
    found = pixel_size_of(tmp_path / "b.ome.zarr")
    assert found.um == 0.25 and "not square (0.25 µm wide, 0.5 µm high): the width was used" in found.note
    create_ngff(tmp_path / "c.ome.zarr", (64, 64), np.uint8)  # scales in pixels, no unit
    assert pixel_size_of(tmp_path / "c.ome.zarr") is None
    create_ngff(tmp_path / "d.ome.zarr", (64, 64), np.uint8, pixel_size_um=0.1,
                metadata={"dinoseg_bundle": "abc", "pixel_size_um": 0.1, "pixel_size_from": "given"})
    found = pixel_size_of(tmp_path / "d.ome.zarr")
    assert (found.um, found.source) == (0.1, f"{FROM_DINOSEG} (given)")
    (tmp_path / "folder").mkdir()
    assert pixel_size_of(tmp_path / "folder") is None


def test_find_inputs_lists_ome_zarr_directories_among_tiffs(tmp_path):
    import tifffile

    from napari_dinoseg.inputs import file_identity, find_inputs, input_stat, source_record

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((8, 8), np.uint8))
    create_ngff(tmp_path / "b.ome.zarr", (2100, 64), np.uint8, chunks=512)
    (tmp_path / "notes").mkdir()
    files, unusable = find_inputs(tmp_path)
    assert [p.name for p in files] == ["a.tif", "b.ome.zarr", "c.tif"]
    assert unusable == [(str(tmp_path / "notes"),
                         "a folder, not an image file nor an OME-Zarr image (sub-folders are not searched)")]
    assert find_inputs(tmp_path / "b.ome.zarr") == ([tmp_path / "b.ome.zarr"], [])  # itself, not its entries

    store = tmp_path / "b.ome.zarr"
    before = input_stat(store)
    metadata = [store / "zarr.json"] + [store / str(k) / "zarr.json" for k in range(3)]
    assert before.st_size == sum(p.stat().st_size for p in metadata)  # the metadata, not the chunks
    assert source_record(store)["source_size"] == before.st_size
    open_ngff(store).levels[0]  # reading changes nothing
    assert file_identity(input_stat(store)) == file_identity(before)
    zarr.open_group(store, mode="r+")["0"][:512, :] = 3  # chunks written in place: not seen
    assert file_identity(input_stat(store)) == file_identity(before)
    mark_complete(store)
    after = input_stat(store)
    assert file_identity(after) != file_identity(before) and after.st_mtime_ns >= before.st_mtime_ns
    assert json.loads((store / "zarr.json").read_text())["attributes"]["dinoseg"]["complete"] is True


def test_write_pyramid_memory_is_bounded_by_a_few_chunks_not_the_image(tmp_path, rng):
    chunk = 1024
    image = create_ngff(tmp_path / "big.ome.zarr", (8192, 8192), np.uint8, chunks=chunk, kind="intensity")
    assert len(image.levels) == 4  # 8192 -> 1024
    for y in range(0, 8192, chunk):
        image.levels[0][y:y + chunk, :] = rng.integers(0, 255, (chunk, 8192), dtype=np.uint8)
    for kind in ("intensity", "labels"):
        tracemalloc.start()
        try:
            write_pyramid(image, kind=kind)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 24 * 2 ** 20, (kind, peak / 2 ** 20)  # level 0 is 64 MiB; a 2x2 block of chunks 4 MiB
    corner = image.levels[0][:2048, :2048]
    np.testing.assert_array_equal(image.levels[1][:1024, :1024], corner[::2, ::2])  # labels, written last
