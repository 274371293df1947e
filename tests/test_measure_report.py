"""Measurements of files: ``dinoseg apply --measure`` and ``dinoseg measure``, their CSV files
against scikit-image's regionprops on the label images written, the interval against scipy,
reruns that keep the tables those of the label images in the folder, pixel sizes, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from scipy import stats
from skimage.measure import label as connected
from skimage.measure import regionprops_table

from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig, apply_bundle
from napari_dinoseg.batch import LABEL_SUFFIX, PROBA_SUFFIX
from napari_dinoseg.cli import main
from napari_dinoseg.measure import measure
from napari_dinoseg.measure_report import REPORT_FILES, MeasureOptions, measure_files, record_path
from napari_dinoseg.pixel_size import read_pixel_size

FAST = FeatureConfig(sigmas=(1, 2), membrane=False)
SIZE = 64
PROPS = ("label", "area", "equivalent_diameter_area", "perimeter", "eccentricity", "centroid", "intensity_mean")
#: objects.csv column <- regionprops_table column (the Feret diameters are measure()'s own, compared
#: with measure() on the label image read back).
SAME = {"object": "label", "area_px": "area", "equivalent_diameter_px": "equivalent_diameter_area",
        "perimeter_px": "perimeter", "eccentricity": "eccentricity", "centroid_y": "centroid-0",
        "centroid_x": "centroid-1", "mean_intensity": "intensity_mean"}


def discs(seed: int, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (SIZE, SIZE), truth {1, 2}): bright discs (2) of random size on a dark matrix (1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    truth = np.ones((SIZE, SIZE), np.uint8)
    for _ in range(n):
        cy, cx, r = rng.integers(6, SIZE - 6), rng.integers(6, SIZE - 6), rng.integers(3, 8)
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
    image = np.clip(np.where(truth == 2, 190, 60) + rng.normal(0, 12, truth.shape), 0, 255).astype(np.uint8)
    return image, truth


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    image, truth = discs(0)
    strokes = np.zeros_like(truth)
    strokes[::5, ::5] = truth[::5, ::5]  # a sparse grid of labelled pixels of both classes
    path = tmp_path_factory.mktemp("clf") / "clf.dinoseg"
    return Segmenter(FAST, TrainConfig(classifier="logistic")).fit(image, strokes).save(path)


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"img{i}.tif", discs(10 + i, n=4 + 2 * i)[0])
    return folder


def apply(bundle, inputs, out, *options) -> int:
    return main(["apply", str(bundle), str(inputs), "-o", str(out), *map(str, options)])


def tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return tuple(pd.read_csv(folder / name) for name in ("fractions.csv", "objects.csv", "summary.csv"))


def object_columns(**kwargs) -> list[str]:
    """The object columns measure() gives for a plane measured with ``kwargs``."""
    labels = np.ones((8, 8), np.uint8)
    labels[2:5, 2:5] = 2
    return list(measure(labels, classes=[1, 2], **kwargs).objects.columns)


def check_against_regionprops(out: Path, inputs: Path, pixel_size=None, proba: bool = False) -> None:
    """Every fraction and object number of ``out/measurements`` equals regionprops on the label
    images of ``out`` (and the probabilities of ``out``, the intensities of ``inputs``), and every
    object column equals measure()'s on the label image read back."""
    fractions, objects, _ = tables(out / "measurements")
    names = sorted(p.name for p in out.glob(f"*{LABEL_SUFFIX}"))
    assert sorted(fractions["image"].unique()) == [n.replace(LABEL_SUFFIX, ".tif") for n in names]
    for name in names:
        source = name.replace(LABEL_SUFFIX, ".tif")
        labels = tifffile.imread(out / name)
        image = tifffile.imread(inputs / source)
        values, counts = np.unique(labels, return_counts=True)
        mine = fractions[fractions["image"] == source]
        np.testing.assert_array_equal(mine["label"], values)
        np.testing.assert_array_equal(mine["pixels"], counts)
        np.testing.assert_allclose(mine["fraction"], counts / labels.size, rtol=1e-15)
        if pixel_size is not None:
            np.testing.assert_allclose(mine["area_um2"], counts * pixel_size**2, rtol=1e-12)
        probabilities = tifffile.imread(out / name.replace(LABEL_SUFFIX, PROBA_SUFFIX)) if proba else None
        if proba:
            np.testing.assert_allclose(mine["expected_fraction"],
                                       [probabilities[..., v - 1].mean(dtype=np.float64) for v in values], rtol=1e-9)
        again = measure(labels, image=image, proba=probabilities, pixel_size=pixel_size, classes=[1, 2]).objects
        theirs = objects[objects["image"] == source].drop(columns=["image", "plane"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(theirs[list(again.columns)], again, check_dtype=False, check_exact=False,
                                      rtol=1e-12)
        for value in values:
            components = connected(labels == value, connectivity=2)
            ref = regionprops_table(components, intensity_image=image, properties=PROPS)
            rows = objects[(objects["image"] == source) & (objects["label"] == value)].sort_values("object")
            assert len(rows) == len(ref["label"]) > 0
            for column, theirs in SAME.items():
                np.testing.assert_allclose(rows[column], ref[theirs], rtol=1e-9, err_msg=f"{name} {value} {column}")
            if pixel_size is not None:
                np.testing.assert_allclose(rows["area_um2"], ref["area"] * pixel_size**2, rtol=1e-12)
                np.testing.assert_allclose(rows["equivalent_diameter_um"], ref["equivalent_diameter_area"] * pixel_size,
                                           rtol=1e-12)
            if proba:
                top = probabilities.max(axis=-1)
                expected = [top[components == k].mean(dtype=np.float64) for k in ref["label"]]
                np.testing.assert_allclose(rows["mean_confidence"], expected, rtol=1e-6)


# ---- the tables: columns and numbers ------------------------------------------------------------------


def test_the_csv_files_have_exactly_these_columns(tmp_path, bundle, inputs):
    assert apply(bundle, inputs, tmp_path / "out", "--measure", "--probabilities", "--pixel-size", 0.5) == 0
    fractions, objects, summary = tables(tmp_path / "out" / "measurements")
    assert list(fractions.columns) == ["image", "plane", "label", "pixels", "fraction", "expected_fraction", "area_um2",
                                       "pixel_size_um", "pixel_size_from"]
    assert list(objects.columns) == ["image", "plane", *object_columns(image=np.zeros((8, 8)),
                                                                       proba=np.full((8, 8, 2), 0.5), pixel_size=0.5)]
    assert list(summary.columns) == ["label", "images", "mean_fraction", "sd_fraction", "ci95_low", "ci95_high",
                                     "objects", "objects_inside", "median_equivalent_diameter_px",
                                     "median_equivalent_diameter_um"]
    assert apply(bundle, inputs, tmp_path / "bare", "--measure") == 0  # no pixel size, no probabilities written
    fractions, objects, summary = tables(tmp_path / "bare" / "measurements")
    assert list(fractions.columns) == ["image", "plane", "label", "pixels", "fraction", "expected_fraction",
                                       "pixel_size_um", "pixel_size_from"]  # expected: measured where segmented
    assert list(objects.columns) == ["image", "plane", *object_columns(image=np.zeros((8, 8)),
                                                                       proba=np.full((8, 8, 2), 0.5))]
    assert fractions["pixel_size_um"].isna().all() and set(fractions["pixel_size_from"]) == {"none"}
    assert "median_equivalent_diameter_um" not in summary.columns
    assert not [c for c in objects.columns if c.endswith(("_um", "_um2"))]


def test_every_number_equals_regionprops_on_the_written_label_images(tmp_path, bundle, inputs):
    out = tmp_path / "out"
    assert apply(bundle, inputs, out, "--measure", "--probabilities", "--pixel-size", 0.5) == 0
    check_against_regionprops(out, inputs, pixel_size=0.5, proba=True)
    fractions = tables(out / "measurements")[0]
    assert (fractions["pixel_size_um"] == 0.5).all() and set(fractions["pixel_size_from"]) == {"given"}
    assert (fractions["plane"] == 0).all() and fractions.groupby("image")["fraction"].sum().tolist() == [1.0] * 3


def test_the_summary_interval_is_scipys_t_interval_of_the_per_image_fractions(tmp_path, bundle, inputs, capsys):
    out = tmp_path / "out"
    assert apply(bundle, inputs, out, "--measure") == 0
    printed = capsys.readouterr().out
    fractions, objects, summary = tables(out / "measurements")
    assert summary["label"].tolist() == [1, 2] and (summary["images"] == 3).all()
    for row in summary.itertuples():
        per_image = fractions.loc[fractions["label"] == row.label, "fraction"].to_numpy()
        assert len(per_image) == 3
        mean, sd = per_image.mean(), per_image.std(ddof=1)
        low, high = stats.t.interval(0.95, 2, loc=mean, scale=sd / np.sqrt(3))
        assert (row.mean_fraction, row.sd_fraction) == pytest.approx((mean, sd), rel=1e-12)
        assert (row.ci95_low, row.ci95_high) == pytest.approx((low, high), rel=1e-12) and low < mean < high
        assert row.objects == (objects["label"] == row.label).sum()
        assert f"{row.mean_fraction:.4f}  " in printed and f"{row.ci95_low:.4f} to {row.ci95_high:.4f}" in printed
    assert f"in {out / 'measurements'}: fractions.csv, objects.csv, summary.csv, fractions.png, sizes.png" in printed


def test_the_plots_are_non_trivial_png_images(tmp_path, bundle, inputs):
    assert apply(bundle, inputs, tmp_path / "out", "--measure", "--pixel-size", 0.5) == 0
    for name in ("fractions.png", "sizes.png"):
        with Image.open(tmp_path / "out" / "measurements" / name) as im:
            assert im.format == "PNG" and im.width >= 400 and im.height >= 300
            pixels = np.asarray(im.convert("RGB"))
        colours = np.unique(pixels.reshape(-1, 3), axis=0)
        assert len(colours) > 20  # text, bars, points: not a blank page
        assert (pixels == 255).all(axis=-1).mean() > 0.5  # a white page with a drawing on it


def test_each_plane_of_a_stack_is_a_field(tmp_path, bundle):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "stack.tif", np.stack([discs(20 + i)[0] for i in range(3)]), imagej=True,
                     metadata={"axes": "ZYX"})
    tifffile.imwrite(folder / "single.tif", discs(30)[0])
    assert apply(bundle, folder, tmp_path / "out", "--measure") == 0
    fractions, objects, summary = tables(tmp_path / "out" / "measurements")
    labels = tifffile.imread(tmp_path / "out" / f"stack{LABEL_SUFFIX}")
    stack = fractions[fractions["image"] == "stack.tif"]
    assert sorted(set(stack["plane"])) == [0, 1, 2]
    assert set(fractions.loc[fractions["image"] == "single.tif", "plane"]) == {0}
    for plane in range(3):
        rows = stack[stack["plane"] == plane]
        np.testing.assert_array_equal(rows["pixels"], np.unique(labels[plane], return_counts=True)[1])
        for value in (1, 2):
            n = connected(labels[plane] == value, connectivity=2).max()
            mine = (objects["image"] == "stack.tif") & (objects["plane"] == plane) & (objects["label"] == value)
            assert mine.sum() == n
    assert (summary["images"] == 4).all()  # 3 planes + 1 image: 4 fields


# ---- reruns: the tables are always those of the label images in the folder -------------------------------


def test_a_rerun_with_measure_after_a_run_without_gives_the_same_tables(tmp_path, bundle, inputs):
    assert apply(bundle, inputs, tmp_path / "at_once", "--measure", "--probabilities", "--pixel-size", 0.5) == 0
    later = tmp_path / "later"
    assert apply(bundle, inputs, later, "--probabilities") == 0
    assert not (later / "measurements").exists()
    summary = apply_bundle(bundle, inputs, later, probabilities=True, measure=MeasureOptions(pixel_size=0.5))
    assert not summary.done and len(summary.skipped) == 3  # nothing segmented again: measured from the files
    assert sorted(summary.measurements.measured) == sorted(str(p) for p in later.glob(f"*{LABEL_SUFFIX}"))
    for ours, theirs in zip(tables(later / "measurements"), tables(tmp_path / "at_once" / "measurements")):
        pd.testing.assert_frame_equal(ours, theirs, check_exact=False, rtol=1e-12)
    again = apply_bundle(bundle, inputs, later, probabilities=True, measure=MeasureOptions(pixel_size=0.5))
    assert again.measurements.measured == []  # the records written then are used now


def test_a_changed_input_replaces_its_rows_and_keeps_the_others(tmp_path, bundle, inputs):
    out = tmp_path / "out"
    options = MeasureOptions(min_size=2)
    apply_bundle(bundle, inputs, out, measure=options)
    before = tables(out / "measurements")[0]
    kept = {n: record_path(out, n).stat().st_mtime_ns for n in ("img0", "img2")}
    tifffile.imwrite(inputs / "img1.tif", discs(99, n=9)[0])
    summary = apply_bundle(bundle, inputs, out, measure=options)
    assert summary.done == [str(out / f"img1{LABEL_SUFFIX}")] and summary.measurements.measured == []
    after = tables(out / "measurements")[0]
    for name in ("img0.tif", "img2.tif"):
        pd.testing.assert_frame_equal(after[after["image"] == name], before[before["image"] == name])
    assert not np.array_equal(after.loc[after["image"] == "img1.tif", "pixels"],
                              before.loc[before["image"] == "img1.tif", "pixels"])
    assert {n: record_path(out, n).stat().st_mtime_ns for n in ("img0", "img2")} == kept
    check_against_regionprops(out, inputs)
    assert list(after["image"]) == sorted(after["image"])  # the images in the order of their outputs


def test_other_options_measure_again_and_overwrite_keeps_the_tables(tmp_path, bundle, inputs):
    out = tmp_path / "out"
    apply_bundle(bundle, inputs, out, measure=MeasureOptions())
    first = tables(out / "measurements")
    bigger = apply_bundle(bundle, inputs, out, measure=MeasureOptions(min_size=40))
    assert len(bigger.measurements.measured) == 3 and not bigger.done
    objects = tables(out / "measurements")[1]
    assert (objects["area_px"] >= 40).all() and len(objects) == (first[1]["area_px"] >= 40).sum() < len(first[1])
    pd.testing.assert_frame_equal(tables(out / "measurements")[0], first[0])  # min_size leaves the fractions alone
    assert apply(bundle, inputs, out, "--measure", "--overwrite") == 0
    for ours, theirs in zip(tables(out / "measurements"), first):
        pd.testing.assert_frame_equal(ours, theirs)
    assert {json.loads(record_path(out, f"img{i}").read_text())["options"]["min_size"] for i in range(3)} == {0}


def test_a_deleted_output_removes_its_rows_and_its_record(tmp_path, bundle, inputs):
    out = tmp_path / "out"
    apply_bundle(bundle, inputs, out, measure=MeasureOptions())
    (inputs / "img2.tif").unlink()
    (out / f"img2{LABEL_SUFFIX}").unlink()
    tifffile.imwrite(out / f"mine{LABEL_SUFFIX}", discs(5)[1])  # the user's, not an output of apply
    summary = apply_bundle(bundle, inputs, out, measure=MeasureOptions())
    assert (str(out / f"mine{LABEL_SUFFIX}"), "not an output of dinoseg apply (no classifier fingerprint in its "
            "metadata): not measured") in summary.measurements.notes
    fractions, objects, summary_csv = tables(out / "measurements")
    assert sorted(set(fractions["image"])) == sorted(set(objects["image"])) == ["img0.tif", "img1.tif"]
    assert (summary_csv["images"] == 2).all()
    assert not record_path(out, "img2").exists() and record_path(out, "img0").exists()
    assert (str(record_path(out, "img2")), "its label output is gone: its record was removed") in \
        summary.measurements.notes


def test_a_stopped_run_writes_no_tables_and_says_so(tmp_path, bundle, inputs, monkeypatch):
    from napari_dinoseg import batch

    def full(*args, **kwargs):
        return args[0], batch.NO_SPACE, "no space left", []

    monkeypatch.setattr(batch, "process_file", full)
    summary = apply_bundle(bundle, inputs, tmp_path / "out", measure=MeasureOptions())
    assert summary.stopped and summary.measurements is None
    assert not (tmp_path / "out" / "measurements" / "fractions.csv").exists()
    assert any("no measurements written: the run stopped early" in m for _, m in summary.notes)


# ---- pixel sizes -----------------------------------------------------------------------------------------


def test_the_pixel_size_given_beats_the_inputs_metadata_which_beats_none(tmp_path, bundle):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "calibrated.tif", discs(40)[0], imagej=True, resolution=(4.0, 4.0),
                     metadata={"unit": "um"})  # 0.25 µm per pixel
    tifffile.imwrite(folder / "plain.tif", discs(41)[0])
    tifffile.imwrite(folder / "oblong.tif", discs(42)[0], resolution=(1e4, 5e3), resolutionunit="CENTIMETER")
    summary = apply_bundle(bundle, folder, tmp_path / "meta", measure=MeasureOptions())
    fractions = tables(tmp_path / "meta" / "measurements")[0].drop_duplicates("image").set_index("image")
    assert fractions.loc["oblong.tif", "pixel_size_um"] == 1.0  # the width, said so
    assert fractions.loc["oblong.tif", "pixel_size_from"] == "input: TIFF resolution"
    assert [(Path(p).name, m) for p, m in summary.measurements.notes] == [
        (f"oblong{LABEL_SUFFIX}", "its pixels are not square (1 µm wide, 2 µm high): the width was used")]
    assert fractions.loc["calibrated.tif", "pixel_size_um"] == 0.25
    assert fractions.loc["calibrated.tif", "pixel_size_from"] == "input: ImageJ metadata"
    assert np.isnan(fractions.loc["plain.tif", "pixel_size_um"])
    assert fractions.loc["plain.tif", "pixel_size_from"] == "none"
    assert np.isnan(fractions.loc["plain.tif", "area_um2"])
    assert read_pixel_size(tmp_path / "meta" / f"calibrated{LABEL_SUFFIX}") == 0.25  # recorded with the output
    apply_bundle(bundle, folder, tmp_path / "given", measure=MeasureOptions(pixel_size=0.1))
    fractions = tables(tmp_path / "given" / "measurements")[0]
    assert (fractions["pixel_size_um"] == 0.1).all() and set(fractions["pixel_size_from"]) == {"given"}
    np.testing.assert_allclose(fractions["area_um2"], fractions["pixels"] * 0.01, rtol=1e-12)
    labels = tmp_path / "given" / f"plain{LABEL_SUFFIX}"
    with tifffile.TiffFile(labels) as tif:  # for other readers too: 1e5 pixels per cm
        assert tif.pages[0].resolution == pytest.approx((1e5, 1e5)) and tif.pages[0].resolutionunit == 3


# ---- dinoseg measure: label files made anywhere ---------------------------------------------------------


@pytest.fixture
def made_elsewhere(tmp_path):
    """A greyscale PNG and an ImageJ TIFF (0.2 µm per pixel) of label values, and their images."""
    folder = tmp_path / "labels"
    folder.mkdir()
    (a, truth_a), (b, truth_b) = discs(50), discs(51, n=7)
    Image.fromarray(truth_a).save(folder / "a.png")
    tifffile.imwrite(folder / "b.tif", truth_b, imagej=True, resolution=(5.0, 5.0), metadata={"unit": "micron"})
    tifffile.imwrite(tmp_path / "a_image.tif", a)
    tifffile.imwrite(tmp_path / "b_image.tif", b)
    return folder, [truth_a, truth_b], [a, b]


def test_dinoseg_measure_with_the_metadata_pixel_size_and_without(tmp_path, made_elsewhere, capsys):
    folder, truths, images = made_elsewhere
    out = tmp_path / "report"
    assert main(["measure", str(folder / "a.png"), str(folder / "b.tif"), "-o", str(out), "--images",
                 str(tmp_path / "a_image.tif"), str(tmp_path / "b_image.tif"), "--min-size", "3"]) == 0
    assert "measurements of 2 image(s)" in capsys.readouterr().out
    fractions, objects, _ = tables(out)
    by_image = fractions.drop_duplicates("image").set_index("image")
    assert by_image.loc["b.tif", "pixel_size_um"] == pytest.approx(0.2)
    assert by_image.loc["b.tif", "pixel_size_from"] == "labels: ImageJ metadata"
    assert np.isnan(by_image.loc["a.png", "pixel_size_um"]) and by_image.loc["a.png", "pixel_size_from"] == "none"
    assert "equivalent_diameter_um" in objects
    assert objects.loc[objects["image"] == "a.png", "equivalent_diameter_um"].isna().all()
    for name, truth, image in zip(("a.png", "b.tif"), truths, images):
        for value in (1, 2):
            ref = regionprops_table(connected(truth == value, connectivity=2), intensity_image=image, properties=PROPS)
            big = ref["area"] >= 3
            rows = objects[(objects["image"] == name) & (objects["label"] == value)].sort_values("object")
            for column, theirs in SAME.items():
                np.testing.assert_allclose(rows[column], ref[theirs][big], rtol=1e-9)


def test_dinoseg_measure_with_a_pixel_size_given_and_a_folder(tmp_path, made_elsewhere):
    folder, truths, _ = made_elsewhere
    assert main(["measure", str(folder), "-o", str(folder / "report"), "--pixel-size", "0.25"]) == 0
    fractions, objects, summary = tables(folder / "report")
    assert sorted(set(fractions["image"])) == ["a.png", "b.tif"] and set(fractions["pixel_size_from"]) == {"given"}
    np.testing.assert_allclose(fractions["area_um2"], fractions["pixels"] * 0.0625, rtol=1e-12)
    np.testing.assert_allclose(objects["equivalent_diameter_um"], objects["equivalent_diameter_px"] * 0.25, rtol=1e-12)
    assert "mean_intensity" not in objects and "expected_fraction" not in fractions
    per_image = [np.mean(t == 2) for t in truths]
    row = summary[summary["label"] == 2].iloc[0]
    assert row["mean_fraction"] == pytest.approx(np.mean(per_image), rel=1e-12)
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx(
        stats.t.interval(0.95, 1, loc=np.mean(per_image), scale=np.std(per_image, ddof=1) / np.sqrt(2)), rel=1e-12)
    assert main(["measure", str(folder), "-o", str(folder / "report")]) == 0  # its own report is not read as labels


def test_dinoseg_measure_finds_the_pixel_size_our_outputs_record(tmp_path, bundle, inputs):
    assert apply(bundle, inputs, tmp_path / "out", "--measure", "--pixel-size", 0.3) == 0
    report = measure_files(tmp_path / "out", tmp_path / "report")
    assert set(report.fractions["image"]) == {f"img{i}{LABEL_SUFFIX}" for i in range(3)}  # no _proba, no CSV
    assert (report.fractions["pixel_size_um"] == 0.3).all()
    assert set(report.fractions["pixel_size_from"]) == {"labels: dinoseg output metadata (given)"}
    ours = tables(tmp_path / "out" / "measurements")[0]
    np.testing.assert_array_equal(report.fractions["fraction"], ours["fraction"])


# ---- refused up front: exit status 2, nothing written ----------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (["--min-size", "3"], "--min-size without --measure"),
    (["--pixel-size", "0.5", "--split"], "--pixel-size, --split without --measure"),
    (["--measure", "--min-size", "-1"], "must be a whole number of pixels >= 0, got -1"),
    (["--measure", "--pixel-size", "0"], "must be a positive number of µm per pixel, got 0.0"),
    (["--measure", "--pixel-size", "-2"], "must be a positive number of µm per pixel, got -2.0"),
    (["--measure", "--pixel-size", "nan"], "must be a positive number of µm per pixel, got nan"),
])
def test_bad_apply_options_are_refused_with_status_2_and_nothing_written(tmp_path, bundle, inputs, capsys, options,
                                                                         message):
    assert apply(bundle, inputs, tmp_path / "out", *options) == 2
    err = capsys.readouterr().err
    assert err.startswith("dinoseg: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, message", [
    ("pixel size", "must be a positive number of µm per pixel, got 0.0"),
    ("images", "1 image(s) for 2 label files"),
    ("colour", "an RGB colour image, not label values"),
    ("same folder", "holds the label file"),
    ("jpeg", "cannot be read from a JPEG"),
    ("missing", "nowhere.png' is neither a folder, a file nor a glob pattern that matches"),
])
def test_bad_measure_input_is_refused_with_status_2_and_nothing_written(tmp_path, made_elsewhere, capsys, case,
                                                                        message):
    folder, _, _ = made_elsewhere
    out = tmp_path / "report"
    labels = [str(folder / "a.png"), str(folder / "b.tif")]
    extra = {"pixel size": ["--pixel-size", "0"], "images": ["--images", str(tmp_path / "a_image.tif")]}.get(case, [])
    if case == "colour":
        Image.fromarray(np.dstack([discs(3)[1] * 100] * 2 + [np.zeros((SIZE, SIZE), np.uint8)])).save(folder / "c.png")
        labels.append(str(folder / "c.png"))
    elif case == "same folder":
        out = folder
    elif case == "jpeg":
        Image.fromarray(discs(3)[1]).save(tmp_path / "d.jpg")
        labels.append(str(tmp_path / "d.jpg"))
    elif case == "missing":
        labels.append(str(tmp_path / "nowhere.png"))
    before = sorted(folder.iterdir())
    assert main(["measure", *labels, "-o", str(out), *extra]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar where a file read is refused
    assert last.startswith("dinoseg: error: ") and message in last, last
    assert sorted(folder.iterdir()) == before and not [name for name in REPORT_FILES if (out / name).exists()]


def test_measure_options_are_checked_when_made():
    assert MeasureOptions(min_size=np.int64(3), pixel_size="0.5") == MeasureOptions(min_size=3, pixel_size=0.5)
    for bad in ({"min_size": 2.5}, {"min_size": True}, {"pixel_size": float("inf")}, {"pixel_size": "x"},
                {"split": "yes"}):
        with pytest.raises(ValueError):
            MeasureOptions(**bad)
    with pytest.raises(TypeError, match="measure must be a MeasureOptions"):
        apply_bundle("x.dinoseg", "in", "out", measure={"min_size": 3})


# ---- on a dask cluster -------------------------------------------------------------------------------------


def test_a_dask_local_cluster_gives_the_tables_of_a_local_run(tmp_path, bundle, inputs):
    from dask.distributed import Client, LocalCluster

    options = MeasureOptions(min_size=2, pixel_size=0.5)
    apply_bundle(bundle, inputs, tmp_path / "local", measure=options)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        summary = apply_bundle(bundle, inputs, tmp_path / "dask", scheduler=client, measure=options)
    assert len(summary.done) == 3 and summary.measurements.measured == []  # measured on the workers
    for ours, theirs in zip(tables(tmp_path / "dask" / "measurements"), tables(tmp_path / "local" / "measurements")):
        pd.testing.assert_frame_equal(ours, theirs)
    check_against_regionprops(tmp_path / "dask", inputs, pixel_size=0.5)
