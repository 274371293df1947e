"""``dinoseg train`` reads label files as label files: palette indices, colours as classes, one
channel, pages as planes; every refusal names the file (and, for a mismatch, both files).

Real files written with PIL and tifffile, through the real entry point (``main``), and once
through a subprocess (``python -m napari_dinoseg.cli``)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import iou
from PIL import Image

from napari_dinoseg import Segmenter
from napari_dinoseg.cli import main
from napari_dinoseg.label_files import LabelFile, read_label_file

FAST = ["--features", "classical", "--classifier", "logistic"]
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _palette_png(path, values: np.ndarray, transparency: bool = False):
    """A palette ("P") PNG whose indices are ``values``, shown in colours unrelated to them."""
    im = Image.fromarray(values.astype(np.uint8), "P")
    im.putpalette([0, 0, 0, 230, 25, 75, 60, 180, 75, 0, 130, 200] + [128] * (3 * 252))
    im.save(path, transparency=0) if transparency else im.save(path)
    return path


def _colours(scribbles: np.ndarray, table: dict, alpha: bool = False, background=(0, 0, 0)) -> np.ndarray:
    """``(H, W, 3)`` (or 4 with ``alpha``, transparent where unpainted) colours of ``scribbles``."""
    out = np.zeros((*scribbles.shape, 4 if alpha else 3), np.uint8)
    out[..., :3] = background
    for value, colour in table.items():
        out[scribbles == value, :3] = colour
        if alpha:
            out[scribbles == value, 3] = 255
    return out


def _train(tmp_path, image_paths, label_paths, name="m.dinoseg", extra=()):
    return main(["train", *map(str, image_paths), "--labels", *map(str, label_paths),
                 "-o", str(tmp_path / name), *FAST, *extra])


@pytest.fixture
def img(tmp_path, two_textures):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, two_textures[0])
    return path


@pytest.fixture
def reference(tmp_path, img, two_textures):
    """The classifier trained on the scribbles as a plain greyscale TIFF: the answer to match."""
    tifffile.imwrite(tmp_path / "plain.tif", two_textures[2])
    assert _train(tmp_path, [img], [tmp_path / "plain.tif"], "plain.dinoseg") == 0
    return Segmenter.load(tmp_path / "plain.dinoseg").segment(two_textures[0])


# ---- palette, greyscale -----------------------------------------------------------------

@pytest.mark.parametrize("transparency", [False, True])
def test_a_palette_png_trains_on_its_indices(tmp_path, img, two_textures, reference, capsys, transparency):
    image, _, scribbles = two_textures
    labels = _palette_png(tmp_path / "lab.png", scribbles, transparency)
    assert Image.open(labels).mode == "P"
    capsys.readouterr()
    assert _train(tmp_path, [img], [labels]) == 0
    out = capsys.readouterr().out
    assert f"label 1: {(scribbles == 1).sum()} px, label 2: {(scribbles == 2).sum()} px" in out
    seg = Segmenter.load(tmp_path / "m.dinoseg")
    assert seg.classes.tolist() == [1, 2]
    np.testing.assert_array_equal(seg.segment(image), reference)


def test_palette_indices_are_the_label_values_whatever_they_are(tmp_path, img, two_textures):
    scribbles = two_textures[2]
    labels = _palette_png(tmp_path / "lab.png", np.where(scribbles == 1, 3, np.where(scribbles == 2, 7, 0)))
    assert _train(tmp_path, [img], [labels]) == 0
    assert Segmenter.load(tmp_path / "m.dinoseg").classes.tolist() == [3, 7]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64, bool])
def test_greyscale_tiffs_of_any_dtype_are_label_values(tmp_path, two_textures, dtype):
    scribbles = two_textures[2]
    values = (scribbles == 1) if dtype is bool else scribbles.astype(dtype)
    tifffile.imwrite(tmp_path / "lab.tif", values)
    read = read_label_file(tmp_path / "lab.tif")
    [plane] = read.planes
    assert read.colours is None and read.notes == () and plane.shape == scribbles.shape
    assert np.issubdtype(plane.dtype, np.integer)
    np.testing.assert_array_equal(plane, values.astype(np.uint8))


def test_a_16_bit_greyscale_png_keeps_large_label_values(tmp_path, two_textures):
    scribbles = two_textures[2].astype(np.uint16) * 1000
    Image.fromarray(scribbles).save(tmp_path / "lab.png")
    [plane] = read_label_file(tmp_path / "lab.png").planes
    assert plane.dtype == np.uint16
    np.testing.assert_array_equal(plane, scribbles)


def test_grey_with_alpha_is_unlabelled_where_transparent(tmp_path, two_textures):
    scribbles = two_textures[2]
    la = np.stack([np.where(scribbles > 0, scribbles, 9), np.where(scribbles > 0, 255, 0)], -1).astype(np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "lab.png")
    np.testing.assert_array_equal(read_label_file(tmp_path / "lab.png").planes[0], scribbles)


# ---- colours ----------------------------------------------------------------------------

def test_an_rgb_png_maps_each_colour_to_a_class_and_prints_the_mapping(tmp_path, img, two_textures, capsys):
    image, truth, scribbles = two_textures
    Image.fromarray(_colours(scribbles, {1: RED, 2: GREEN})).save(tmp_path / "lab.png")
    capsys.readouterr()
    assert _train(tmp_path, [img], [tmp_path / "lab.png"]) == 0
    out = capsys.readouterr().out
    # ascending (r, g, b): green (0, 255, 0) is class 1, red (255, 0, 0) class 2
    assert "black and transparent = unlabelled" in out
    assert "#00ff00 (0, 255, 0) -> 1" in out and "#ff0000 (255, 0, 0) -> 2" in out
    assert f"label 1: {(scribbles == 2).sum()} px, label 2: {(scribbles == 1).sum()} px" in out
    pred = Segmenter.load(tmp_path / "m.dinoseg").segment(image)
    assert iou(pred, np.where(truth == 1, 2, 1), 2) > 0.9  # red strokes (truth 1) -> class 2


def test_an_rgba_png_is_unlabelled_where_transparent_whatever_its_colour(tmp_path, two_textures):
    scribbles = two_textures[2]
    Image.fromarray(_colours(scribbles, {1: RED, 2: BLUE}, alpha=True, background=(255, 255, 255)),
                    "RGBA").save(tmp_path / "lab.png")
    read = read_label_file(tmp_path / "lab.png")
    assert read.colours == (BLUE, RED)
    np.testing.assert_array_equal(read.planes[0], np.choose(scribbles, [0, 2, 1]))


def test_an_rgb_tiff_is_read_as_colours_too(tmp_path, two_textures):
    scribbles = two_textures[2]
    tifffile.imwrite(tmp_path / "lab.tif", _colours(scribbles, {1: RED, 2: GREEN}), photometric="rgb")
    read = read_label_file(tmp_path / "lab.tif")
    assert read.colours == (GREEN, RED)
    np.testing.assert_array_equal(read.planes[0], np.choose(scribbles, [0, 2, 1]))


def test_colour_files_share_one_class_per_colour(tmp_path, two_textures, capsys):
    """Classes are numbered over all colour files: red is one class in both though the first
    file has no blue."""
    image, _, scribbles = two_textures
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "b.tif", np.ascontiguousarray(image[:, ::-1]))
    Image.fromarray(_colours(scribbles, {1: RED, 2: GREEN})).save(tmp_path / "a.png")
    b = np.ascontiguousarray(scribbles[:, ::-1])
    Image.fromarray(_colours(b, {1: BLUE, 2: RED})).save(tmp_path / "b.png")
    capsys.readouterr()
    assert _train(tmp_path, [tmp_path / "a.tif", tmp_path / "b.tif"], [tmp_path / "a.png", tmp_path / "b.png"]) == 0
    out = capsys.readouterr().out
    assert "(0, 0, 255) -> 1" in out and "(0, 255, 0) -> 2" in out and "(255, 0, 0) -> 3" in out
    n1, n2 = (scribbles == 1).sum(), (scribbles == 2).sum()
    assert f"label 1: {n1} px, label 2: {n2} px, label 3: {n1 + n2} px" in out
    assert Segmenter.load(tmp_path / "m.dinoseg").classes.tolist() == [1, 2, 3]


def test_colour_and_value_label_files_together_are_refused_naming_both(tmp_path, two_textures, capsys):
    image, _, scribbles = two_textures
    tifffile.imwrite(tmp_path / "a.tif", image)
    Image.fromarray(_colours(scribbles, {1: RED, 2: GREEN})).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", scribbles)
    capsys.readouterr()
    assert _train(tmp_path, [tmp_path / "a.tif", tmp_path / "a.tif"], [tmp_path / "a.png", tmp_path / "b.tif"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "a.png") in err and str(tmp_path / "b.tif") in err and "one way" in err
    assert not (tmp_path / "m.dinoseg").exists()


def test_an_rgb_file_of_greys_is_read_as_grey_values(tmp_path, img, two_textures, reference, capsys):
    image, _, scribbles = two_textures
    Image.fromarray(np.repeat(scribbles[..., None], 3, -1)).save(tmp_path / "lab.png")
    capsys.readouterr()
    assert _train(tmp_path, [img], [tmp_path / "lab.png"]) == 0
    captured = capsys.readouterr()
    assert f"dinoseg: note: {tmp_path / 'lab.png'}: its red, green and blue are equal" in captured.err
    assert "label colours" not in captured.out
    np.testing.assert_array_equal(Segmenter.load(tmp_path / "m.dinoseg").segment(image), reference)


def test_blurred_colours_and_jpegs_are_refused_naming_the_file(tmp_path, img, rng, capsys):
    Image.fromarray(rng.integers(0, 256, (192, 192, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    assert _train(tmp_path, [img], [tmp_path / "noise.png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dinoseg: error: {tmp_path / 'noise.png'}: it holds ") and "distinct colours" in err
    assert "antialias" in err
    Image.fromarray(np.zeros((192, 192), np.uint8)).save(tmp_path / "lab.jpg")
    assert _train(tmp_path, [img], [tmp_path / "lab.jpg"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'lab.jpg'}: brush labels cannot be read from a JPEG" in err and "PNG or TIFF" in err


# ---- channels ---------------------------------------------------------------------------

def test_a_2_channel_tiff_with_one_empty_channel_trains_on_the_other_saying_so(tmp_path, img, two_textures,
                                                                             reference, capsys):
    image, _, scribbles = two_textures
    tifffile.imwrite(tmp_path / "lab.tif", np.stack([scribbles, np.zeros_like(scribbles)], -1))
    capsys.readouterr()
    assert _train(tmp_path, [img], [tmp_path / "lab.tif"]) == 0
    err = capsys.readouterr().err
    assert f"dinoseg: note: {tmp_path / 'lab.tif'}: of its 2 channels only channel 1 holds labels" in err
    np.testing.assert_array_equal(Segmenter.load(tmp_path / "m.dinoseg").segment(image), reference)


def test_a_2_channel_imagej_tiff_of_equal_channels_takes_the_first(tmp_path, two_textures):
    scribbles = two_textures[2]
    tifffile.imwrite(tmp_path / "lab.tif", np.stack([scribbles, scribbles]), imagej=True, metadata={"axes": "CYX"})
    read = read_label_file(tmp_path / "lab.tif")
    assert read.notes == ("its 2 channels are equal: the first was read",)
    np.testing.assert_array_equal(read.planes[0], scribbles)


def test_a_2_channel_tiff_of_different_channels_is_refused_naming_the_file(tmp_path, img, two_textures, capsys):
    scribbles = two_textures[2]
    tifffile.imwrite(tmp_path / "lab.tif", np.stack([scribbles, (scribbles == 1).astype(np.uint8)], -1))
    assert _train(tmp_path, [img], [tmp_path / "lab.tif"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dinoseg: error: {tmp_path / 'lab.tif'}: a label file holds one label value per pixel")
    assert "2 channels" in err and "one channel" in err and "greyscale" not in err.split("one channel")[0]
    assert "trained on greyscale" not in err and not (tmp_path / "m.dinoseg").exists()


# ---- pages as planes --------------------------------------------------------------------

@pytest.fixture
def stack(tmp_path, two_textures):
    """A 3-slice ZYX image and its labels, one page per slice."""
    image, _, scribbles = two_textures
    planes = [image, np.ascontiguousarray(image[::-1]), np.ascontiguousarray(image[:, ::-1])]
    labels = [scribbles, np.ascontiguousarray(scribbles[::-1]), np.ascontiguousarray(scribbles[:, ::-1])]
    tifffile.imwrite(tmp_path / "zyx.tif", np.stack(planes), imagej=True, metadata={"axes": "ZYX"})
    return tmp_path / "zyx.tif", np.stack(labels)


def test_a_3_page_label_stack_labels_a_3_plane_image_page_by_page(tmp_path, stack, capsys):
    path, labels = stack
    tifffile.imwrite(tmp_path / "lab.tif", labels, photometric="minisblack")
    capsys.readouterr()
    assert _train(tmp_path, [path], [tmp_path / "lab.tif"]) == 0
    out = capsys.readouterr().out
    assert "on 3 image plane(s)" in out and f"label 1: {(labels == 1).sum()} px" in out


def test_a_3_plane_stack_that_tifffile_stored_as_rgb_is_read_as_planes(tmp_path, stack, capsys):
    """tifffile writes a (3, H, W) uint8 array as one RGB page of separate planes: for a
    3-plane image those are its label planes, with a note."""
    path, labels = stack
    with pytest.warns(DeprecationWarning):
        tifffile.imwrite(tmp_path / "lab.tif", labels)
    with tifffile.TiffFile(tmp_path / "lab.tif") as tif:
        assert tif.series[0].axes == "SYX"
    capsys.readouterr()
    assert _train(tmp_path, [path], [tmp_path / "lab.tif"]) == 0
    captured = capsys.readouterr()
    assert "on 3 image plane(s)" in captured.out and "were read as 3 planes" in captured.err
    for n, plane in enumerate(read_label_file(tmp_path / "lab.tif", planes=3).planes):
        np.testing.assert_array_equal(plane, labels[n])


def test_a_page_count_mismatch_names_both_files_and_counts(tmp_path, stack, capsys):
    path, labels = stack
    tifffile.imwrite(tmp_path / "lab.tif", labels[:2], photometric="minisblack")
    assert _train(tmp_path, [path], [tmp_path / "lab.tif"]) == 2
    err = capsys.readouterr().err
    assert f"{path} has 3 plane(s) but its label file {tmp_path / 'lab.tif'} has 2" in err
    assert "one plane (page) per image plane" in err


def test_read_label_file_returns_one_integer_plane_per_page(tmp_path, two_textures):
    scribbles = two_textures[2]
    data = np.stack([scribbles, scribbles * 2, scribbles * 3]).astype(np.float32).reshape(3, 1, *scribbles.shape)
    tifffile.imwrite(tmp_path / "lab.tif", data, imagej=True, metadata={"axes": "ZCYX"})
    read = read_label_file(tmp_path / "lab.tif")
    assert isinstance(read, LabelFile) and len(read.planes) == 3
    for k, plane in enumerate(read.planes, 1):
        assert plane.dtype == np.uint8 and plane.shape == scribbles.shape
        np.testing.assert_array_equal(plane, scribbles * k)


# ---- values and shapes ------------------------------------------------------------------

@pytest.mark.parametrize("value, dtype, says", [
    (1e20, np.float32, "the value 1e+20 at row 20, column 30, too large for a class id"),
    (np.nan, np.float32, "the value nan at row 20, column 30"),
    (np.inf, np.float64, "the value inf at row 20, column 30"),
    (0.5, np.float32, "the fraction 0.5 at row 20, column 30"),
    (-1.0, np.float32, "the negative value -1.0 at row 20, column 30"),
    (-3, np.int16, "the negative value -3 at row 20, column 30"),
    (2**40, np.uint64, f"the value {2**40} at row 20, column 30, too large for a class id"),
])
def test_a_label_value_that_cannot_be_a_class_is_refused_with_the_value_and_file(tmp_path, img, two_textures,
                                                                                capsys, value, dtype, says):
    scribbles = two_textures[2].astype(dtype)
    scribbles[20, 30] = value
    tifffile.imwrite(tmp_path / "lab.tif", scribbles)
    assert _train(tmp_path, [img], [tmp_path / "lab.tif"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dinoseg: error: {tmp_path / 'lab.tif'}: it holds {says}"), err
    assert "9223372036854775808" not in err and err.count("\n") == 1
    assert not (tmp_path / "m.dinoseg").exists()


def test_a_value_in_a_later_page_says_which_plane(tmp_path, two_textures):
    data = np.zeros((3, 20, 30), np.float32)
    data[2, 4, 5] = 2.25
    tifffile.imwrite(tmp_path / "lab.tif", data, photometric="minisblack")
    with pytest.raises(ValueError, match=r"the fraction 2.25 at row 4, column 5 \(plane 3 of 3\)"):
        read_label_file(tmp_path / "lab.tif")


def test_a_shape_mismatch_in_a_later_pair_names_both_files_and_shapes(tmp_path, img, two_textures, capsys):
    scribbles = two_textures[2]
    tifffile.imwrite(tmp_path / "a.tif", scribbles)
    tifffile.imwrite(tmp_path / "b.tif", scribbles[:100])
    assert _train(tmp_path, [img, img], [tmp_path / "a.tif", tmp_path / "b.tif"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'b.tif'} is 100x192 px (height x width) but its image {img} is 192x192 px" in err
    assert "image 1" not in err and "image 0" not in err


def test_images_of_different_channel_counts_are_refused_naming_both(tmp_path, img, two_textures, capsys):
    image, _, scribbles = two_textures
    Image.fromarray(np.repeat(image[..., None], 3, -1)).save(tmp_path / "rgb.png")
    tifffile.imwrite(tmp_path / "lab.tif", scribbles)
    assert _train(tmp_path, [img, tmp_path / "rgb.png"], [tmp_path / "lab.tif"] * 2) == 2
    err = capsys.readouterr().err
    assert f"{img} has 1 channel (greyscale) but {tmp_path / 'rgb.png'} has 3 channels" in err


def test_one_class_painted_is_refused_naming_the_files(tmp_path, img, two_textures, capsys):
    tifffile.imwrite(tmp_path / "lab.tif", (two_textures[2] == 1).astype(np.uint8))
    assert _train(tmp_path, [img], [tmp_path / "lab.tif"]) == 2
    err = capsys.readouterr().err
    assert f"only label 1 is painted in the label files ({tmp_path / 'lab.tif'})" in err


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "suffix"])
def test_unreadable_label_files_are_refused_naming_them(tmp_path, img, capsys, case):
    name = {"missing": "no.png", "empty": "empty.png", "corrupt": "bad.tif", "suffix": "lab.bmp"}[case]
    path = tmp_path / name
    if case == "empty":
        path.write_bytes(b"")
    elif case in ("corrupt", "suffix"):
        path.write_bytes(b"II*\x00 not a tiff at all")
    assert _train(tmp_path, [img], [path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dinoseg: error: {path}: ") and err.count("\n") == 1 and "Traceback" not in err
    assert {"missing": "no such file", "empty": "empty file", "corrupt": "cannot read the label file",
            "suffix": "not a label file"}[case] in err


def test_a_missing_output_folder_is_refused_before_anything_is_read(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nothing.tif"), "--labels", str(tmp_path / "nothing.png"),
                 "-o", str(tmp_path / "no" / "m.dinoseg")]) == 2
    assert "cannot save the bundle: the folder" in capsys.readouterr().err


# ---- the console command ----------------------------------------------------------------

def test_the_command_trains_on_a_palette_png(tmp_path, img, two_textures):
    labels = _palette_png(tmp_path / "lab.png", two_textures[2])
    run = subprocess.run([sys.executable, "-m", "napari_dinoseg.cli", "train", str(img), "--labels", str(labels),
                          "-o", str(tmp_path / "m.dinoseg"), *FAST], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "trained Segmenter" in run.stdout and (tmp_path / "m.dinoseg").is_file()
    assert Segmenter.load(tmp_path / "m.dinoseg").classes.tolist() == [1, 2]
