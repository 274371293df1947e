"""Reading image files with their axes: metadata first; a short unnamed axis before the plane
(channels first, or a few slices?) is never decided in silence."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_dinoseg.reading import check_axes, read_image

H, W = 40, 48


@pytest.fixture
def chw(tmp_path, rng):
    """A (3, H, W) uint16 TIFF written as three greyscale pages with no axis metadata."""
    data = rng.integers(0, 4000, (3, H, W)).astype(np.uint16)
    path = tmp_path / "chw.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata=None)
    return path, data


def test_an_unnamed_leading_axis_of_3_is_read_as_channels_saying_so_and_how_to_override(chw):
    path, data = chw
    image = read_image(path)
    assert image.channels == 3 and image.lead_axes == "" and image.data.shape == (H, W, 3)
    np.testing.assert_array_equal(image.data, np.moveaxis(data, 0, -1))
    [note] = image.notes
    assert "read as 3 channels" in note and "does not say" in note and "--axes ZYX" in note


def test_a_classifier_with_that_many_channels_decides_without_a_word(chw):
    path, data = chw
    image = read_image(path, channels=3)
    assert image.channels == 3 and image.data.shape == (H, W, 3) and image.notes == ()


def test_for_a_greyscale_classifier_the_axis_is_read_as_planes_saying_so(chw):
    path, data = chw
    image = read_image(path, channels=1)
    assert image.channels == 1 and image.lead_axes in ("Q", "I") and len(image.planes) == 3
    np.testing.assert_array_equal(image.planes[2], data[2])
    [note] = image.notes
    assert "read as 3 planes" in note and "--axes CYX" in note


@pytest.mark.parametrize("axes, channels, lead", [("ZYX", None, "Z"), ("ZYX", 1, "Z"), ("CYX", None, ""),
                                                  ("CYX", 3, "")])
def test_the_axes_given_decide_and_silence_the_note(chw, axes, channels, lead):
    path, _ = chw
    image = read_image(path, channels, axes=axes)
    assert image.lead_axes == lead and image.notes == ()
    assert image.channels == (3 if axes == "CYX" else 1)


def test_the_axes_given_apply_only_to_files_with_that_many_axes_and_the_plane_there(tmp_path, rng):
    plane = rng.integers(0, 255, (H, W)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "plane.tif", plane)
    image = read_image(tmp_path / "plane.tif", axes="ZYX")
    assert image.data.shape == (H, W) and image.lead_axes == "" and image.notes == ()
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([plane] * 3, -1), photometric="rgb")  # (H, W, 3): YXS
    image = read_image(tmp_path / "rgb.tif", axes="ZYX")  # a folder of stacks and RGB images: RGB stays RGB
    assert image.data.shape == (H, W, 3) and image.channels == 3
    tifffile.imwrite(tmp_path / "planar.tif", np.stack([plane] * 3))  # tifffile's default: planar RGB, SYX
    assert read_image(tmp_path / "planar.tif").channels == 3
    image = read_image(tmp_path / "planar.tif", axes="ZYX")  # the photometric tag overridden
    assert image.channels == 1 and image.lead_axes == "Z" and len(image.planes) == 3


@pytest.mark.parametrize("write, axes", [
    (dict(imagej=True, metadata={"axes": "ZYX"}), "Z"),
    (dict(metadata={"axes": "ZYX"}), "Z"),
    (dict(ome=True, metadata={"axes": "TYX"}), "T"),
    (dict(metadata={"axes": "CYX"}), ""),
    (dict(imagej=True, metadata={"axes": "CYX"}), ""),
])
def test_metadata_decides_without_a_note(tmp_path, rng, write, axes):
    data = rng.integers(0, 255, (3, H, W)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "x.tif", data, **write)
    for channels in (None, 1) if axes else (None, 3):
        image = read_image(tmp_path / "x.tif", channels)
        assert image.lead_axes == axes and image.notes == ()


def test_four_unnamed_planes_are_rgba_or_four_slices_never_silently(tmp_path, rng):
    data = rng.integers(0, 255, (4, H, W)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "x.tif", data, photometric="minisblack", metadata=None)
    image = read_image(tmp_path / "x.tif")
    assert image.channels == 4 and "read as 4 channels" in image.notes[0]
    planes = read_image(tmp_path / "x.tif", 1)
    assert len(planes.planes) == 4 and "read as 4 planes" in planes.notes[0]


def test_a_time_series_of_unnamed_channels_first_planes(tmp_path, rng):
    data = rng.integers(0, 255, (5, 3, H, W)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "x.tif", data, photometric="minisblack")
    image = read_image(tmp_path / "x.tif")
    assert image.data.shape == (5, H, W, 3) and image.channels == 3 and "read as 3 channels" in image.notes[0]
    assert "--axes TZYX" in image.notes[0]
    assert "--axes TCYX" in read_image(tmp_path / "x.tif", 1).notes[0]
    assert read_image(tmp_path / "x.tif", axes="TZYX").data.shape == (5, 3, H, W)


def test_five_unnamed_planes_are_a_stack_as_before(tmp_path, rng):
    tifffile.imwrite(tmp_path / "x.tif", rng.integers(0, 255, (5, H, W)).astype(np.uint8))
    image = read_image(tmp_path / "x.tif")
    assert image.lead_axes == "Q" and len(image.planes) == 5 and image.notes == ()


@pytest.mark.parametrize("axes, match", [
    ("zyx", "upper-case letter"), ("ZY", "no Y and X|Y and X"), ("CSYX", "two channel axes"),
    ("ZZYX", "twice"), ("Z-YX", "upper-case letter"), ("", "upper-case letter"),
])
def test_bad_axes_are_refused_naming_them(axes, match):
    with pytest.raises(ValueError, match=match):
        check_axes(axes)
    assert check_axes("TZCYX") == "TZCYX"


def test_axes_of_the_wrong_type_are_a_type_error():
    with pytest.raises(TypeError, match="axes must be a string"):
        check_axes(3)


# ---- pixel sizes from the metadata --------------------------------------------------------------------


@pytest.mark.parametrize("unit, size, expected", [
    (None, 0.25, 0.25),  # OME's default unit: µm
    ("µm", 0.25, 0.25),
    ("nm", 125.0, 0.125),
    ("mm", 0.002, 2.0),
    ("Å", 50.0, 0.005),
])
def test_the_pixel_size_of_an_ome_tiff_in_its_unit(tmp_path, unit, size, expected):
    from napari_dinoseg.pixel_size import FROM_OME, pixel_size_of, read_pixel_size

    path = tmp_path / "ome.tif"
    meta = {"axes": "YX", "PhysicalSizeX": size, "PhysicalSizeY": size}
    if unit is not None:
        meta |= {"PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit}
    tifffile.imwrite(path, np.zeros((H, W), np.uint8), ome=True, metadata=meta)
    found = pixel_size_of(path)
    assert found.um == read_pixel_size(path) == pytest.approx(expected, rel=1e-12)
    assert found.source == FROM_OME and found.note == ""


@pytest.mark.parametrize("unit, factor", [("um", 1.0), ("micron", 1.0), ("\\u00B5m", 1.0),  # ImageJ's escape for µm
                                          ("nm", 1e-3), ("mm", 1e3)])
def test_the_pixel_size_of_an_imagej_tiff_from_its_unit_and_resolution(tmp_path, unit, factor):
    from napari_dinoseg.pixel_size import FROM_IMAGEJ, pixel_size_of

    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.zeros((3, H, W), np.uint16), imagej=True, resolution=(1 / 0.4, 1 / 0.4),
                     metadata={"axes": "ZYX", "unit": unit})
    found = pixel_size_of(path)
    assert found.um == pytest.approx(0.4 * factor, rel=1e-9) and found.source == FROM_IMAGEJ and not found.note


def test_an_imagej_tiff_without_a_unit_has_no_pixel_size(tmp_path):
    from napari_dinoseg.pixel_size import read_pixel_size

    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.zeros((H, W), np.uint8), imagej=True, resolution=(4.0, 4.0))
    assert read_pixel_size(path) is None


@pytest.mark.parametrize("resolution, unit, expected", [
    ((800.0, 800.0), "CENTIMETER", 12.5),       # 800 px/cm
    ((25400.0, 25400.0), "INCH", 1.0),          # 25400 dpi
    ((5000.0, 5000.0), "MILLIMETER", 0.2),
    ((72.0, 72.0), "INCH", None),               # a screen default
    ((96.0, 96.0), "INCH", None),
    ((72 / 2.54, 72 / 2.54), "CENTIMETER", None),  # 72 dpi given per cm
    ((1.0, 1.0), "CENTIMETER", None),           # one pixel per unit: a default
    ((1000.0, 1000.0), "NONE", None),           # no unit
    (None, None, None),                         # tifffile's own default (1, 1, none)
])
def test_the_pixel_size_from_the_tiff_resolution_tags(tmp_path, resolution, unit, expected):
    from napari_dinoseg.pixel_size import FROM_TIFF, pixel_size_of

    path = tmp_path / "plain.tif"
    extra = {} if resolution is None else {"resolution": resolution, "resolutionunit": unit}
    tifffile.imwrite(path, np.zeros((H, W), np.uint8), **extra)
    found = pixel_size_of(path)
    if expected is None:
        assert found is None
    else:
        assert found.um == pytest.approx(expected, rel=1e-9) and found.source == FROM_TIFF


def test_pixels_that_are_not_square_give_their_width_with_a_note(tmp_path):
    from napari_dinoseg.pixel_size import pixel_size_of

    path = tmp_path / "aniso.tif"
    tifffile.imwrite(path, np.zeros((H, W), np.uint8), resolution=(10000.0, 5000.0), resolutionunit="CENTIMETER")
    found = pixel_size_of(path)
    assert found.um == pytest.approx(1.0) and "not square" in found.note and "1 µm wide, 2 µm high" in found.note


@pytest.mark.parametrize("dpi, expected", [((50800, 50800), 0.5), ((72, 72), None), (None, None)])
def test_the_pixel_size_of_a_png_from_its_phys_chunk(tmp_path, dpi, expected):
    from PIL import Image

    from napari_dinoseg.pixel_size import FROM_PNG, pixel_size_of

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((H, W), np.uint8)).save(path, **({} if dpi is None else {"dpi": dpi}))
    found = pixel_size_of(path)
    if expected is None:
        assert found is None
    else:
        assert found.um == pytest.approx(expected, rel=1e-6) and found.source == FROM_PNG


def test_a_jpeg_has_no_pixel_size(tmp_path):
    from PIL import Image

    from napari_dinoseg.pixel_size import read_pixel_size

    path = tmp_path / "a.jpg"
    Image.fromarray(np.zeros((H, W), np.uint8)).save(path, dpi=(50800, 50800))
    assert read_pixel_size(path) is None
