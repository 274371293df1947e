"""The physical pixel size of the training images: kept by the Segmenter and its bundle, named in
the shift report when an image's differs, and resampled to with ``dinoseg apply --resample``
(real files, a real viewer)."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_dinoseg import FeatureConfig, Segmenter
from napari_dinoseg.batch import apply_bundle
from napari_dinoseg.cli import main
from napari_dinoseg.outputs import LABEL_SUFFIX, PROBA_SUFFIX, output_metadata
from napari_dinoseg.pixel_scale import checked_pixel_size, common_pixel_size, pixel_size_warning, resample_factor
from napari_dinoseg.resampling import resample_labels_back, resample_plane, resample_proba_back

CFG = FeatureConfig(sigmas=(1, 2), membrane=False)
TRAINED, FINER = 0.02, 0.01  # µm per pixel


def scene(seed: int, size: int = 256, radius: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 image, bool truth)``: discs of a fine-grained texture on a coarse-grained one of
    the same mean and contrast (told apart by their grain alone, whose size in pixels is what a
    pixel size changes)."""
    rng = np.random.default_rng(seed)

    def texture(sigma: float) -> np.ndarray:
        t = ndi.gaussian_filter(rng.normal(size=(size, size)), sigma)
        return (t - t.mean()) / t.std()

    rr, cc = np.mgrid[:size, :size]
    truth = np.zeros((size, size), bool)
    for _ in range(12):
        r, c = rng.integers(radius, size - radius, 2)
        truth |= (rr - r) ** 2 + (cc - c) ** 2 <= radius ** 2
    image = np.where(truth, texture(1.4), texture(3.0))
    return np.clip(128 + 40 * image, 0, 255).astype(np.uint8), truth


def halved(image: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same scene at twice the pixel size (2 × 2 pixels averaged)."""
    h, w = image.shape
    blocks = lambda a: a.reshape(h // 2, 2, w // 2, 2).mean((1, 3))  # noqa: E731
    return blocks(image.astype(float)).round().astype(np.uint8), blocks(truth.astype(float)) > 0.5


def sparse_labels(truth: np.ndarray) -> np.ndarray:
    """Labels on a sparse grid away from the discs' edges: 1 background, 2 discs."""
    labels = np.zeros(truth.shape, np.uint8)
    grid = np.zeros(truth.shape, bool)
    grid[::4, ::4] = True
    labels[grid & ndi.binary_erosion(truth, iterations=2)] = 2
    labels[grid & ~ndi.binary_dilation(truth, iterations=2)] = 1
    return labels


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def training():
    """``(image, truth, labels)`` at :data:`TRAINED` µm per pixel."""
    image, truth = halved(*scene(2))
    return image, truth, sparse_labels(truth)


@pytest.fixture(scope="module")
def fitted(training):
    image, _, labels = training
    return Segmenter(CFG).fit(image, labels, pixel_size=TRAINED)


def rewrite(path, edit):
    """Rewrite the bundle's ``bundle.json`` with ``edit(meta)``, as an older or damaged file."""
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    meta = json.loads(members["bundle.json"])
    edit(meta)
    members["bundle.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# ---- the warning -----------------------------------------------------------------------------


def test_a_mismatch_names_both_sizes_the_ratio_and_what_to_do():
    assert pixel_size_warning(0.02, 0.005) == [
        "trained at 20.0 nm/px, this image is 5.00 nm/px (4.0× finer): its structures are 4.0× larger in pixels "
        "than the classifier learnt; resample it to the training pixel size (dinoseg apply --resample) or train on "
        "images at this pixel size"]
    coarser, = pixel_size_warning(0.25, 1.0)
    assert coarser.startswith("trained at 0.250 µm/px, this image is 1.00 µm/px (4.0× coarser): its structures "
                              "are 4.0× smaller in pixels")
    assert "(1.25× finer)" in pixel_size_warning(0.5, 0.4)[0] and "(12× coarser)" in pixel_size_warning(1, 12)[0]
    assert "trained at 150 µm/px" in pixel_size_warning(150, 15)[0]


@pytest.mark.parametrize("trained, image", [(0.02, 0.021), (0.02, 0.0185), (None, 0.005), (0.02, None), (None, None)])
def test_no_warning_within_ten_percent_or_when_a_size_is_unknown(trained, image):
    assert pixel_size_warning(trained, image) == []


def test_resampling_factor_and_the_training_images_common_size():
    assert resample_factor(0.005, 0.02) == pytest.approx(0.25) and resample_factor(0.04, 0.02) == pytest.approx(2)
    assert resample_factor(0.0201, 0.02) is None and resample_factor(None, 0.02) is None
    assert common_pixel_size([0.02, 0.0201]) == 0.02
    assert common_pixel_size([0.02, 0.03]) is None and common_pixel_size([0.02, None]) is None
    assert common_pixel_size([]) is None


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "0.02", True, [0.02]])
def test_a_pixel_size_that_is_not_a_positive_number_is_refused_before_fitting(bad, training):
    image, _, labels = training
    assert checked_pixel_size(np.float32(0.5)) == 0.5 and checked_pixel_size(None) is None
    seg = Segmenter(CFG)
    with pytest.raises(ValueError, match="is not a positive number of µm per pixel"):
        seg.fit(image, labels, pixel_size=bad)
    assert seg.classifier is None and seg.pixel_size is None


def test_check_names_the_mismatch_last(fitted, training):
    image = training[0]
    assert fitted.pixel_size == TRAINED
    assert fitted.check(image, pixel_size=TRAINED) == fitted.check(image) == []
    warnings = fitted.check(image, pixel_size=0.005)
    assert warnings[-1].startswith("trained at 20.0 nm/px, this image is 5.00 nm/px (4.0× finer)")
    with pytest.raises(ValueError, match="pixel_size -1 is not a positive number"):
        fitted.check(image, pixel_size=-1)


# ---- the bundle ------------------------------------------------------------------------------


def test_the_training_pixel_size_survives_a_bundle_and_an_old_bundle_reads_as_unknown(fitted, training, tmp_path):
    path = fitted.save(tmp_path / "m.dinoseg")
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read("bundle.json"))["pixel_size_um"] == TRAINED
    loaded = Segmenter.load(path)
    assert loaded.pixel_size == TRAINED
    assert loaded.check(training[0], pixel_size=0.005)[-1].startswith("trained at 20.0 nm/px")
    old = rewrite(fitted.save(tmp_path / "old.dinoseg"), lambda meta: meta.pop("pixel_size_um"))
    assert Segmenter.load(old).pixel_size is None
    unknown = Segmenter(CFG).fit(training[0], training[2]).save(tmp_path / "unknown.dinoseg")
    assert Segmenter.load(unknown).pixel_size is None


@pytest.mark.parametrize("bad", [0, -0.02, "0.02", [0.02], {"um": 0.02}, True])
def test_a_bundle_with_a_bad_pixel_size_is_corrupt(fitted, tmp_path, bad):
    path = rewrite(fitted.save(tmp_path / "bad.dinoseg"), lambda meta: meta.update(pixel_size_um=bad))
    with pytest.raises(ValueError, match="is corrupt: its pixel_size_um .* is not a positive number of µm per pixel"):
        Segmenter.load(path)


# ---- resampling ------------------------------------------------------------------------------


def test_resampling_keeps_dtype_range_and_channels_and_comes_back_to_the_shape():
    rng = np.random.default_rng(0)
    plane = rng.integers(0, 65535, (101, 66), dtype=np.uint16)
    small = resample_plane(plane, 0.25)
    assert small.shape == (25, 16) and small.dtype == np.uint16
    assert abs(float(small.mean()) - float(plane.mean())) < 0.02 * 65535  # anti-aliased: the mean kept
    rgb = resample_plane(rng.random((40, 30, 3)).astype(np.float32), 2.0)
    assert rgb.shape == (80, 60, 3) and rgb.dtype == np.float32
    labels = rng.choice(np.array([1, 2, 7], np.uint8), (25, 16))
    back = resample_labels_back(labels, plane.shape)
    assert back.shape == plane.shape and back.dtype == np.uint8 and set(np.unique(back)) <= {1, 2, 7}
    proba = rng.dirichlet(np.ones(3), (25, 16)).astype(np.float32)
    up = resample_proba_back(proba, plane.shape)
    assert up.shape == (101, 66, 3) and up.dtype == np.float32
    np.testing.assert_allclose(up.sum(-1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="resampling factor 0 is not a positive number"):
        resample_plane(plane, 0)


def test_a_finer_image_resampled_to_the_training_pixel_size_is_segmented_as_trained(fitted):
    """Its discs' grain is twice as many pixels as the training discs' (like the training
    background's): as it is, they are missed; resampled, they are found."""
    image, truth = scene(1)
    plain = fitted.segment(image) == 2
    resampled = fitted.to_labels(resample_proba_back(fitted.predict_proba(resample_plane(image, 0.5)), image.shape))
    assert iou(resampled == 2, truth) > 0.5 > 0.2 > iou(plain, truth)


# ---- dinoseg train / apply --resample on ImageJ TIFFs ------------------------------------------


def imagej(path, data, um: float):
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / um, 1 / um), metadata={"unit": "micron"})
    return path


def test_dinoseg_apply_resample_segments_a_finer_image_at_the_training_pixel_size(tmp_path, training, capsys):
    image, _, labels = training
    train = imagej(tmp_path / "train.tif", image, TRAINED)
    tifffile.imwrite(tmp_path / "train_labels.tif", labels)
    bundle = tmp_path / "model.dinoseg"
    assert main(["train", str(train), "--labels", str(tmp_path / "train_labels.tif"), "-o", str(bundle)]) == 0
    assert Segmenter.load(bundle).pixel_size == pytest.approx(TRAINED)  # read from the ImageJ metadata
    folder = tmp_path / "in"
    folder.mkdir()
    fine, truth = scene(1)
    imagej(folder / "fine.tif", fine, FINER)

    assert main(["apply", str(bundle), str(folder), "-o", str(tmp_path / "plain")]) == 0
    said = capsys.readouterr().out
    assert "trained at 20.0 nm/px, this image is 10.0 nm/px (2.0× finer)" in said
    plain = tifffile.imread(tmp_path / "plain" / f"fine{LABEL_SUFFIX}")

    assert main(["apply", str(bundle), str(folder), "-o", str(tmp_path / "resampled"), "--resample",
                 "--probabilities"]) == 0
    assert "trained at" not in capsys.readouterr().out
    out = tmp_path / "resampled" / f"fine{LABEL_SUFFIX}"
    resampled = tifffile.imread(out)
    assert resampled.shape == fine.shape and set(np.unique(resampled)) <= {1, 2}
    assert tifffile.imread(tmp_path / "resampled" / f"fine{PROBA_SUFFIX}").shape == (*fine.shape, 2)
    meta = output_metadata(out)
    assert meta["pixel_size_um"] == pytest.approx(FINER) and meta["resampled_from_um"] == pytest.approx(FINER)
    assert meta["resampled_to_um"] == pytest.approx(TRAINED)
    assert "resampled_from_um" not in output_metadata(tmp_path / "plain" / f"fine{LABEL_SUFFIX}")
    assert iou(resampled == 2, truth) > iou(plain == 2, truth) + 0.3

    # the pixel size given beats the metadata: said to be the training one, nothing is resampled
    assert main(["apply", str(bundle), str(folder), "-o", str(tmp_path / "given"), "--resample",
                 "--pixel-size", str(TRAINED)]) == 0
    meta = output_metadata(tmp_path / "given" / f"fine{LABEL_SUFFIX}")
    assert meta["pixel_size_um"] == TRAINED and meta["pixel_size_from"] == "given" and "resampled_to_um" not in meta


def test_resample_needs_the_training_pixel_size_and_says_when_an_image_has_none(tmp_path, training, capsys):
    image, _, labels = training
    unknown = Segmenter(CFG).fit(image, labels).save(tmp_path / "unknown.dinoseg")
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "plain.tif", image)  # no pixel size
    assert main(["apply", str(unknown), str(folder), "-o", str(tmp_path / "out"), "--resample"]) == 2
    assert "cannot resample to the training pixel size" in capsys.readouterr().err
    known = Segmenter(CFG).fit(image, labels, pixel_size=TRAINED).save(tmp_path / "known.dinoseg")
    summary = apply_bundle(known, folder, tmp_path / "out", resample=True)
    assert len(summary.done) == 1
    assert any("not resampled to the training pixel size: this image's pixel size is unknown" in m
               for _, m in summary.warnings)
    with pytest.raises(ValueError, match="the pixel size 0 is not a positive number"):
        apply_bundle(known, folder, tmp_path / "out2", pixel_size=0)


# ---- the train widget: the layer's scale --------------------------------------------------------


def test_the_layer_scale_is_the_training_pixel_size_and_a_finer_layer_is_named(make_napari_viewer, qtbot, training):
    pytest.importorskip("napari")
    from napari_dinoseg._widgets._feature_controls import SHARED_CACHE
    from napari_dinoseg._widgets.train_widget import TRAIN_ALL, TrainWidget, layer_pixel_size

    image, _, labels = training
    SHARED_CACHE.clear()
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="img", scale=(TRAINED, TRAINED))
    viewer.add_labels(labels, name="img labels", scale=(TRAINED, TRAINED))  # the image's own strokes
    fine, _ = scene(1)
    other = viewer.add_image(fine, name="fine", scale=(0.005, 0.005))
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: train")
    widget._train_on.value = TRAIN_ALL
    widget._image.value = layer
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.segmenter.pixel_size == pytest.approx(TRAINED)
    assert "trained on 1 image(s)" in widget._status.value and "trained at" not in widget._status.value

    assert layer_pixel_size(other) == pytest.approx(0.005) and layer_pixel_size(layer) == pytest.approx(TRAINED)
    in_nm = viewer.add_image(fine, name="in nm", scale=(20, 20), units=("nm", "nm"))
    timed = viewer.add_image(fine, name="timed", scale=(2, 2), units=("s", "s"))
    assert layer_pixel_size(in_nm) == pytest.approx(0.02) and layer_pixel_size(timed) is None
    assert layer_pixel_size(viewer.add_image(fine, name="plain")) is None  # napari's default scale: unknown
    widget._image.value = other  # predicted by the classifier of img's strokes
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.segmenter.pixel_size == pytest.approx(TRAINED)
    assert "predicted 1 slice(s) of 'fine'" in widget._status.value
    assert "trained at 20.0 nm/px, this image is 5.00 nm/px (4.0× finer)" in widget._status.value


def test_the_apply_dock_resamples_when_ticked(make_napari_viewer, qtbot, tmp_path, fitted):
    pytest.importorskip("napari")
    from napari_dinoseg._widgets import batch_widget
    from napari_dinoseg._widgets.batch_widget import BatchWidget

    batch_widget._LAST.clear()
    bundle = fitted.save(tmp_path / "m.dinoseg")
    folder = tmp_path / "in"
    folder.mkdir()
    imagej(folder / "fine.tif", scene(1)[0], FINER)
    widget = BatchWidget(make_napari_viewer())
    widget._bundle.value, widget._inputs.value, widget._out.value = bundle, folder, tmp_path / "out"
    widget._open_first.value, widget._resample.value = False, True
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    batch_widget._LAST.clear()
    assert len(widget.summary.done) == 1 and not widget.summary.warnings, widget._report.value
    meta = output_metadata(tmp_path / "out" / f"fine{LABEL_SUFFIX}")
    assert meta["resampled_from_um"] == pytest.approx(FINER) and meta["resampled_to_um"] == TRAINED
