"""Batch apply and the CLI as a careless or hostile user meets them: nothing lost, nothing silent.

One test (or parametrised family) per finding of the reliability audit: colliding output names,
half-finished runs, leftovers of killed writes, a full disk, class ids that would wrap, channels
and axes read from the file, inputs that are not files, an unreachable scheduler, dicts passed as
configs, and file permissions.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from conftest import iou
from napari_dinoseg import CASConfig, FeatureConfig, Segmenter, TrainConfig, apply_bundle
from napari_dinoseg import batch
from napari_dinoseg.batch import LABEL_SUFFIX, PROBA_SUFFIX
from napari_dinoseg.cli import main

FAST = FeatureConfig(sigmas=(1, 2), membrane=False)


@pytest.fixture
def seg(two_textures):
    image, _, scribbles = two_textures
    return Segmenter(FAST, TrainConfig(classifier="logistic")).fit(image, scribbles)


@pytest.fixture
def bundle(tmp_path, seg):
    path = tmp_path / "clf.dinoseg"
    seg.save(path)
    return path


@pytest.fixture
def images(tmp_path, two_textures):
    """A folder of three greyscale TIFFs (the texture image rolled)."""
    image, _, _ = two_textures
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        tifffile.imwrite(d / f"img{i}.tif", np.roll(image, 30 * i, axis=1))
    return d


def names(folder):
    return sorted(p.name for p in folder.iterdir())


# ---- 1. colliding output names -------------------------------------------------------


def test_inputs_with_one_stem_get_distinct_outputs(tmp_path, bundle, two_textures):
    image, truth, _ = two_textures
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", image)
    imsave(d / "A.png", image[:, ::-1], check_contrast=False)  # same stem up to case: one name on macOS
    tifffile.imwrite(d / "b.tif", image)
    out = tmp_path / "out"
    summary = apply_bundle(bundle, d, out)
    assert len(summary.done) == 3 and not summary.failed
    assert names(out) == ["A_png_labels.tif", "a_tif_labels.tif", "b_labels.tif"]
    assert iou(tifffile.imread(out / "a_tif_labels.tif"), truth, 2) > 0.9
    assert iou(tifffile.imread(out / "A_png_labels.tif"), truth[:, ::-1], 2) > 0.9  # each its own result
    again = apply_bundle(bundle, d, out)
    assert not again.done and [r for _, r in again.skipped] == ["already there"] * 3


def test_one_name_in_two_folders_is_refused_naming_both(tmp_path, bundle, two_textures):
    image = two_textures[0]
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        tifffile.imwrite(tmp_path / sub / "a.tif", image)
    with pytest.raises(ValueError, match=r"x/a.tif' and '.*y/a.tif' have the same name: their outputs would overwrite"):
        apply_bundle(bundle, [tmp_path / "x" / "a.tif", tmp_path / "y" / "a.tif"], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not names(tmp_path / "out")


# ---- 2. an image is finished only when every output asked for is there -------------------


def test_a_rerun_with_probabilities_writes_the_missing_ones(tmp_path, bundle, images):
    out = tmp_path / "out"
    assert len(apply_bundle(bundle, images, out).done) == 3
    summary = apply_bundle(bundle, images, out, probabilities=True)
    assert len(summary.done) == 3, "labels alone do not finish an image when probabilities are asked for"
    assert len(list(out.glob(f"*{PROBA_SUFFIX}"))) == 3
    (out / f"img1{PROBA_SUFFIX}").unlink()  # a run killed between the two writes
    summary = apply_bundle(bundle, images, out, probabilities=True)
    assert summary.done == [str(out / f"img1{LABEL_SUFFIX}")] and len(summary.skipped) == 2
    proba = tifffile.imread(out / f"img1{PROBA_SUFFIX}")
    assert proba.shape == (192, 192, 2) and np.allclose(proba.sum(-1), 1, atol=1e-5)


def test_outputs_are_recomputed_when_the_input_changed_or_the_output_is_truncated(tmp_path, bundle, images):
    out = tmp_path / "out"
    apply_bundle(bundle, images, out)
    tifffile.imwrite(images / "img0.tif", tifffile.imread(images / "img0.tif")[:, ::-1])  # edited input
    (out / f"img2{LABEL_SUFFIX}").write_bytes((out / f"img2{LABEL_SUFFIX}").read_bytes()[:50])  # cut short
    summary = apply_bundle(bundle, images, out)
    assert sorted(summary.done) == [str(out / f"img0{LABEL_SUFFIX}"), str(out / f"img2{LABEL_SUFFIX}")]
    assert summary.skipped == [(str(images / "img1.tif"), "already there")]


def test_outputs_of_another_classifier_are_never_mixed_in(tmp_path, bundle, images, two_textures):
    out = tmp_path / "out"
    apply_bundle(bundle, images, out)
    image, _, scribbles = two_textures
    other = Segmenter(FAST, TrainConfig(classifier="logistic", C=1.0)).fit(image, scribbles).save(tmp_path / "o.dinoseg")
    with pytest.raises(ValueError, match="3 output.*made by another classifier"):
        apply_bundle(other, images, out)
    assert main(["apply", str(other), str(images), "-o", str(out)]) == 2
    apply_bundle(bundle, images, tmp_path / "with_proba", probabilities=True)
    assert len(apply_bundle(other, images, tmp_path / "with_proba", overwrite=True).done) == 3
    assert not list((tmp_path / "with_proba").glob(f"*{PROBA_SUFFIX}")), "no probabilities of the old classifier"
    assert len(apply_bundle(other, images, out, overwrite=True).done) == 3
    assert not apply_bundle(other, images, out).done


# ---- 3. leftovers of a killed write ----------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_runs_temporary_files_are_removed_and_nothing_else(tmp_path, bundle, images):
    out = tmp_path / "out"
    out.mkdir()
    host = socket.gethostname()
    stale = [out / f".img0_labels.tif.dinoseg-{host}-{dead_pid()}-0a1b2c3d.tmp",
             out / ".img1_labels.tif.x8k2_q9z.tmp"]  # an older version's name, an hour old
    live = out / f".img2_labels.tif.dinoseg-{host}-{os.getpid()}-0a1b2c3d.tmp"  # a running writer's
    kept = [live, out / ".notes.tmp", out / "mine.tmp", out / ".img1_labels.tif.x8k2_q9z.tmp.bak"]
    for path in stale + kept:
        path.write_bytes(b"")
    os.utime(stale[1], (0, 0))
    summary = apply_bundle(bundle, images, out)
    assert sorted(summary.cleaned) == sorted(map(str, stale))
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    assert "removed 2 temporary file(s) left by an interrupted run" in str(summary)


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path, bundle, images, monkeypatch):
    def broken(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"II*\x00partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", broken)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        apply_bundle(bundle, images, out)
    assert names(out) == []


# ---- 4. a full disk ----------------------------------------------------------------------------


def test_a_full_disk_stops_the_run_and_says_so(tmp_path, bundle, images, monkeypatch, capsys):
    calls = []

    def full(path, *args, **kwargs):
        calls.append(path)
        with open(path, "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full)
    out = tmp_path / "out"
    assert main(["apply", str(bundle), str(images), "-o", str(out)]) == 1
    text = capsys.readouterr().out
    assert len(calls) == 1, "the run stops at the first full write"
    assert "stopped early: no space left in" in text and "free" in text
    assert text.count("not run: the run stopped early (no space left)") == 2
    assert names(out) == []


def test_too_little_space_is_refused_before_writing(tmp_path, bundle, images, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    summary = apply_bundle(bundle, images, tmp_path / "out")
    assert "1000 bytes free, the next output needs about 36.0 KiB" in summary.stopped
    assert len(summary.failed) == 3 and not summary.done


# ---- 6. class ids that would wrap ---------------------------------------------------------------


@pytest.mark.parametrize("value, error, match", [
    (-1, ValueError, "negative value -1"),
    (2**32, ValueError, "too large for a class id"),
    (2**63 + 5, ValueError, "too large for a class id"),
    (1.5, TypeError, "integer array"),
])
def test_label_values_that_cannot_be_class_ids_are_refused(two_textures, value, error, match):
    from napari_dinoseg import featurise, train

    image, _, scribbles = two_textures
    dtype = np.uint64 if value > 2**62 else np.float32 if isinstance(value, float) else np.int64
    labels = scribbles.astype(dtype)
    labels[scribbles == 2] = value
    with pytest.raises(error, match=match):
        train(featurise(image, FAST), labels)
    with pytest.raises(error, match=match):
        Segmenter(FAST).fit(image, labels)


def test_large_class_ids_are_written_without_wrapping(tmp_path, two_textures):
    image, truth, scribbles = two_textures
    labels = np.where(scribbles == 2, 70000, scribbles.astype(np.uint32))
    seg = Segmenter(FAST, TrainConfig(classifier="logistic")).fit(image, labels)
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "x.tif", image)
    apply_bundle(seg.save(tmp_path / "c.dinoseg"), d, tmp_path / "out")
    written = tifffile.imread(tmp_path / "out" / f"x{LABEL_SUFFIX}")
    assert written.dtype == np.uint32 and set(np.unique(written)) == {1, 70000}
    assert iou(np.where(written == 70000, 2, 1), truth, 2) > 0.9


# ---- 7. channels and axes from the file ------------------------------------------------------------


@pytest.mark.parametrize("name, data, kwargs, count", [
    ("twelve.tif", lambda im: np.stack([im] * 12, -1), {}, "12 channels"),
    ("rgb.tif", lambda im: np.stack([im] * 3, -1), {"photometric": "rgb"}, "3 channels"),
    ("two.tif", lambda im: np.stack([im] * 2, -1), {}, "2 channels"),
    ("hyper.ome.tif", lambda im: np.stack([im] * 2)[None, None], {"metadata": {"axes": "TZCYX"}}, "2 channels"),
])
def test_a_channel_count_other_than_the_classifiers_fails_naming_both(tmp_path, bundle, two_textures, name, data,
                                                                      kwargs, count):
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / name, data(two_textures[0]), **kwargs)
    summary = apply_bundle(bundle, d, tmp_path / "out")
    assert not summary.done and len(summary.failed) == 1
    assert f"has {count} but the classifier was trained on greyscale (1 channel)" in summary.failed[0][1]


@pytest.mark.parametrize("name, shape, kwargs, axes", [
    ("series.ome.tif", (2, 3, 1), {"metadata": {"axes": "TZCYX"}}, "TZYX"),
    ("hyper.tif", (2, 3), {"imagej": True, "metadata": {"axes": "TZYX"}}, "TZYX"),
    ("stack.tif", (5,), {}, "QYX"),
])
def test_leading_axes_are_kept_in_the_output(tmp_path, bundle, two_textures, name, shape, kwargs, axes):
    image, truth, _ = two_textures
    planes = np.stack([np.roll(image, 16 * i, axis=1) for i in range(int(np.prod(shape)))])
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / name, planes.reshape(*shape, *image.shape), **kwargs)
    summary = apply_bundle(bundle, d, tmp_path / "out", probabilities=True)
    assert len(summary.done) == 1, summary
    stem = name.split(".")[0] if name.count(".") == 1 else name.rsplit(".", 1)[0]
    with tifffile.TiffFile(tmp_path / "out" / f"{stem}{LABEL_SUFFIX}") as tif:
        labels, written_axes = tif.series[0].asarray(), tif.series[0].axes
    lead = tuple(s for s in shape if s > 1 or len(shape) == 1)
    assert labels.shape == (*lead, *image.shape) and written_axes == axes
    flat = labels.reshape(-1, *image.shape)
    for i in (0, len(flat) - 1):  # the planes stay in order
        assert iou(flat[i], np.roll(truth, 16 * i, axis=1), 2) > 0.9
    assert tifffile.imread(tmp_path / "out" / f"{stem}{PROBA_SUFFIX}").shape == (*lead, *image.shape, 2)


def test_rgba_png_and_grey_alpha_png_drop_alpha_with_a_warning(tmp_path, two_textures):
    from PIL import Image

    image, truth, scribbles = two_textures
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(np.stack([image, np.full_like(image, 255)], -1), "LA").save(d / "grey_alpha.png")
    summary = apply_bundle(Segmenter(FAST).fit(image, scribbles).save(tmp_path / "g.dinoseg"), d, tmp_path / "out")
    assert len(summary.done) == 1 and summary.warnings == [(str(d / "grey_alpha.png"), "its alpha channel was left out")]
    assert iou(tifffile.imread(summary.done[0]), truth, 2) > 0.9


# ---- 8. inputs that are not image files ------------------------------------------------------------


def test_links_loops_and_folders_are_listed_as_skipped(tmp_path, bundle, images):
    (images / "gone.tif").symlink_to(images / "missing.tif")
    (images / "loop.tif").symlink_to(images / "loop.tif")
    (images / "dir.tif").mkdir()
    (images / "readme.txt").write_text("notes")
    (images / "alias.tif").symlink_to(images / "img0.tif")
    summary = apply_bundle(bundle, images, tmp_path / "out")
    assert len(summary.done) == 3 and not summary.failed
    reasons = dict(summary.skipped)
    assert reasons[str(images / "gone.tif")].startswith("a broken symbolic link")
    assert reasons[str(images / "loop.tif")] == "a symbolic link loop"
    assert reasons[str(images / "dir.tif")].startswith("a folder, not an image file")
    assert reasons[str(images / "readme.txt")].startswith("not an image file")
    assert reasons[str(images / "img0.tif")] == f"the same file as {images / 'alias.tif'}, listed twice"
    text = str(summary)
    assert text.startswith("done 3, skipped 5 (0 already there), failed 0")
    assert all(f"skipped: {path}" in text for path in reasons)
    glob_summary = apply_bundle(bundle, str(images / "*.tif"), tmp_path / "out2")
    assert str(images / "gone.tif") in dict(glob_summary.skipped)
    listed = apply_bundle(bundle, [images / "img1.tif", images / "nope.tif"], tmp_path / "out3")
    assert listed.failed == [(str(images / "nope.tif"), "no such file")]


# ---- 9. the bundle is loaded once per process -------------------------------------------------------


def test_the_bundle_is_loaded_once_per_process_and_again_when_it_changes(tmp_path, bundle, images, monkeypatch,
                                                                         two_textures):
    loads = []
    original = Segmenter.load.__func__
    monkeypatch.setattr(Segmenter, "load", classmethod(lambda cls, path: loads.append(path) or original(cls, path)))
    batch._SEGMENTERS.clear()
    apply_bundle(bundle, images, tmp_path / "out")
    assert len(loads) == 1
    image, _, scribbles = two_textures
    Segmenter(FAST, TrainConfig(classifier="logistic", C=1.0)).fit(image, scribbles).save(bundle)  # same path
    apply_bundle(bundle, images, tmp_path / "out2")
    assert len(loads) == 2, "a bundle rewritten under the same name is not taken from the cache"


# ---- 11. an unreachable scheduler -------------------------------------------------------------------


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path, bundle, images, capsys):
    code = main(["apply", str(bundle), str(images), "-o", str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot reach a dask scheduler at 'tcp://127.0.0.1:1' within 5 s" in err and "Traceback" not in err


# ---- 12. a dict where a config belongs ------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda im, lab: __import__("napari_dinoseg").segment_unsupervised(im, {"k": 5}),
    lambda im, lab: __import__("napari_dinoseg").featurise(im, {"kind": "classical"}),
    lambda im, lab: __import__("napari_dinoseg").train(__import__("napari_dinoseg").featurise(im, FAST), lab, {"C": 1}),
    lambda im, lab: __import__("napari_dinoseg.crf", fromlist=["x"]).crf_refine(im, np.full((*im.shape, 2), 0.5),
                                                                               {"iterations": 3}),
    lambda im, lab: Segmenter(features={"kind": "classical"}),
    lambda im, lab: Segmenter(crf={}),
    lambda im, lab: CASConfig(features={"kind": "classical"}),
    lambda im, lab: __import__("napari_dinoseg").save_bundle("x.dinoseg", Segmenter(FAST).fit(im, lab).classifier,
                                                             FAST.to_dict()),
    lambda im, lab: FeatureConfig.from_dict([("kind", "classical")]),
])
def test_a_dict_as_config_is_a_type_error_naming_the_type(two_textures, call):
    image, _, scribbles = two_textures
    with pytest.raises(TypeError, match=r"must be a \w+Config|is read from a dict|must be the FeatureConfig"):
        call(image, scribbles)


# ---- 13. permissions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_and_bundles_get_the_users_umask(tmp_path, seg, images, mask, mode):
    old = os.umask(mask)
    try:
        path = seg.save(tmp_path / "clf.dinoseg")
        summary = apply_bundle(path, images, tmp_path / "out", probabilities=True)
    finally:
        os.umask(old)
    written = [path, *map(type(path), summary.done), *(tmp_path / "out").glob(f"*{PROBA_SUFFIX}")]
    assert len(written) == 7
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {mode}


# ---- siblings: what else a file or a command line can hide -----------------------------------------


def test_a_tiff_with_several_series_segments_the_first_and_says_so(tmp_path, bundle, two_textures):
    image, truth, _ = two_textures
    d = tmp_path / "in"
    d.mkdir()
    with tifffile.TiffWriter(d / "two_series.tif") as tif:
        tif.write(image)
        tif.write(image[:64, :64])  # e.g. a thumbnail
    summary = apply_bundle(bundle, d, tmp_path / "out")
    assert len(summary.done) == 1 and iou(tifffile.imread(summary.done[0]), truth, 2) > 0.9
    [(path, message)] = summary.warnings
    assert "holds 2 image series; only the first, of shape (192, 192), was segmented" in message


def test_cli_train_takes_whole_float_labels_and_refuses_fractions(tmp_path, two_textures, capsys):
    image, _, scribbles = two_textures
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", scribbles.astype(np.float32))  # as Fiji saves them
    args = ["train", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif")]
    assert main([*args, "-o", str(tmp_path / "m.dinoseg")]) == 0
    assert Segmenter.load(tmp_path / "m.dinoseg").classes.tolist() == [1, 2]
    tifffile.imwrite(tmp_path / "lab.tif", scribbles * np.float32(0.5))
    assert main([*args, "-o", str(tmp_path / "n.dinoseg")]) == 2
    assert "holds fractions, NaN or inf" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "img.tif"), "-o", str(tmp_path / "no" / "m.dinoseg")]) == 2
    assert "the folder" in capsys.readouterr().err and not (tmp_path / "n.dinoseg").exists()


def test_cli_interrupted_exits_130_keeping_finished_outputs(tmp_path, bundle, images, monkeypatch, capsys):
    real = batch.process_file
    calls = []

    def interrupt_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(batch, "process_file", interrupt_second)
    assert main(["apply", str(bundle), str(images), "-o", str(tmp_path / "out")]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert names(tmp_path / "out") == [f"img0{LABEL_SUFFIX}"]


def test_nothing_to_segment_is_an_error_not_an_empty_success(tmp_path, bundle, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["apply", str(bundle), str(empty), "-o", str(tmp_path / "out")]) == 2
    assert "no image files to segment" in capsys.readouterr().err
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt: not an image file"):
        apply_bundle(bundle, empty, tmp_path / "out")
    with pytest.raises(ValueError, match="no image files"):
        apply_bundle(bundle, [], tmp_path / "out")


# ---- 5. non-finite probabilities are never written --------------------------------------------------


def test_non_finite_probabilities_fail_the_image_and_write_nothing(tmp_path, bundle, images, monkeypatch, capsys):
    import napari_dinoseg.plane_parts as plane_parts  # where the Segmenter's windows are predicted

    real, calls = plane_parts.predict, []

    def nan_after_the_first_image(clf, stack, scaled=None, origin=(0, 0)):  # one window per 192-px image
        calls.append(1)
        proba = real(clf, stack, scaled, origin)
        return proba if len(calls) == 1 else np.full_like(proba, np.nan)

    monkeypatch.setattr(plane_parts, "predict", nan_after_the_first_image)
    assert main(["apply", str(bundle), str(images), "-o", str(tmp_path / "out")]) == 1
    text = capsys.readouterr().out
    assert text.count("non-finite probabilities (NaN or inf)") == 2
    assert names(tmp_path / "out") == [f"img0{LABEL_SUFFIX}"]


# ---- warnings are kept with the outputs: a rerun that skips them reports them again --------------


def test_a_rerun_reports_the_warnings_recorded_with_the_outputs_it_skips(tmp_path, bundle, images, monkeypatch,
                                                                         capsys):
    message = "unlike the training images: its intensity differs by 31 % … (test)"
    calls = []

    def warn_on_the_first_image(self, image, proba=None, cache=None, pixel_size=None):
        calls.append(1)
        return [message] if len(calls) == 1 else []

    monkeypatch.setattr(Segmenter, "check", warn_on_the_first_image)
    out = tmp_path / "out"
    args = ["apply", str(bundle), str(images), "-o", str(out), "--strict"]
    assert main(args) == 1
    first = capsys.readouterr().out
    assert f"warning: {images / 'img0.tif'}: {message}" in first
    assert main(args) == 1, "--strict passes a rerun that skipped the doubtful output"
    text = capsys.readouterr().out
    assert text.startswith("done 0, skipped 3 (3 already there), failed 0; 1 with warnings")
    assert f"warning: {images / 'img0.tif'}: {message} (recorded with its output by an earlier run)" in text
    assert len(calls) == 3  # nothing recomputed
    assert main(args[:-1]) == 0  # without --strict a warning is not a failure
    summary = apply_bundle(bundle, images, out)
    assert not summary.done and summary.warnings == [(str(images / "img0.tif"), message)]
    # --overwrite recomputes, and the record follows the new result (no warning now)
    assert apply_bundle(bundle, images, out, overwrite=True).warnings == []
    assert apply_bundle(bundle, images, out).warnings == []


def test_an_output_without_a_record_of_its_warnings_is_recomputed(tmp_path, bundle, images):
    """Outputs of an older version say nothing of their warnings: a rerun cannot vouch for them."""
    out = tmp_path / "out"
    apply_bundle(bundle, images, out)
    target = out / f"img1{LABEL_SUFFIX}"
    meta = batch.output_metadata(target)
    assert meta["warnings"] == []
    del meta["warnings"], meta["shape"]
    tifffile.imwrite(target, tifffile.imread(target), metadata=meta, photometric="minisblack")
    summary = apply_bundle(bundle, images, out)
    assert summary.done == [str(target)] and len(summary.skipped) == 2
    assert batch.output_metadata(target)["warnings"] == []


# ---- channels first or slices? an unnamed (3, H, W) TIFF is never decided in silence ----------------


def _channels_first(path, planes):
    """Three greyscale pages and no axis metadata, as many tools write a 3-slice stack or RGB."""
    tifffile.imwrite(path, np.stack(planes), photometric="minisblack", metadata=None)
    return path


def test_cli_train_reads_an_unnamed_leading_3_as_channels_and_says_how_to_read_slices(tmp_path, two_textures,
                                                                                     capsys):
    image, _, scribbles = two_textures
    img = _channels_first(tmp_path / "img.tif", [image, image[:, ::-1], image[::-1]])
    labels = np.zeros((3, *image.shape), np.uint8)
    labels[0] = scribbles
    tifffile.imwrite(tmp_path / "lab3.tif", labels, photometric="minisblack", metadata=None)
    tifffile.imwrite(tmp_path / "lab.tif", scribbles)
    out = tmp_path / "m.dinoseg"
    # with one label plane: trained on one 3-channel image, with a warning
    assert main(["train", str(img), "--labels", str(tmp_path / "lab.tif"), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"dinoseg: warning: {img}: read as 3 channels" in err and "--axes ZYX" in err
    assert Segmenter.load(out).n_channels == 3
    # with three label planes (slices): refused, not trained on what the user did not mean
    assert main(["train", str(img), "--labels", str(tmp_path / "lab3.tif"), "-o", str(tmp_path / "n.dinoseg")]) == 2
    err = capsys.readouterr().err
    assert "--axes ZYX" in err and "has 1 plane(s) but" in err and not (tmp_path / "n.dinoseg").exists()
    # the axes given: three slices, no warning
    assert main(["train", str(img), "--labels", str(tmp_path / "lab3.tif"), "-o", str(out), "--axes", "ZYX"]) == 0
    assert "warning" not in capsys.readouterr().err and Segmenter.load(out).n_channels == 1
    assert main(["train", str(img), "--labels", str(tmp_path / "lab.tif"), "-o", str(out), "--axes", "zyx"]) == 2
    assert "upper-case letter" in capsys.readouterr().err


def test_apply_decides_an_unnamed_leading_3_by_the_classifier_and_warns_when_it_cannot(tmp_path, bundle, two_textures,
                                                                                      capsys):
    image, truth, scribbles = two_textures
    d = tmp_path / "in"
    d.mkdir()
    path = _channels_first(d / "x.tif", [image, np.roll(image, 16, axis=1), image])
    out = tmp_path / "out"
    args = ["apply", str(bundle), str(d), "-o", str(out), "--strict"]
    assert main(args) == 1  # greyscale classifier: three planes, with a warning
    text = capsys.readouterr().out
    assert f"warning: {path}: read as 3 planes, for a greyscale classifier" in text and "--axes CYX" in text
    labels = tifffile.imread(out / f"x{LABEL_SUFFIX}")
    assert labels.shape == (3, *image.shape) and iou(labels[1], np.roll(truth, 16, axis=1), 2) > 0.9
    assert main([*args, "--axes", "ZYX"]) == 0  # said so: no warning, and recomputed (read with other axes)
    assert capsys.readouterr().out.startswith("done 1, skipped 0 (0 already there), failed 0\n")
    assert main([*args, "--axes", "ZYX"]) == 0 and "1 already there" in capsys.readouterr().out
    rgb = Segmenter(FAST, TrainConfig(classifier="logistic")).fit(np.stack([image] * 3, -1), scribbles)
    summary = apply_bundle(rgb.save(tmp_path / "rgb.dinoseg"), d, tmp_path / "out_rgb")
    assert len(summary.done) == 1 and summary.warnings == []  # a 3-channel classifier decides
    assert tifffile.imread(summary.done[0]).shape == image.shape


def test_the_first_result_reopens_an_unnamed_stack_as_it_was_segmented(tmp_path, bundle, two_textures):
    """The apply-to-folder widget opens the first input under its labels: read as the run read it."""
    from napari_dinoseg._widgets.batch_widget import read_first_result

    image = two_textures[0]
    d = tmp_path / "in"
    d.mkdir()
    _channels_first(d / "x.tif", [image, image[::-1], image])
    summary = apply_bundle(bundle, d, tmp_path / "out")
    first = read_first_result(summary.done[0], d)
    assert first.labels.shape == (3, *image.shape) and first.image.data.shape == (3, *image.shape)
    assert batch.output_metadata(tmp_path / "out" / f"x{LABEL_SUFFIX}")["channels"] == 1


# ---- a ViT classifier without its weights here is refused before work starts --------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_vit_classifier_without_weights_here_is_refused_up_front(tmp_path, images, phases, monkeypatch, capsys):
    import json
    import zipfile

    from napari_dinoseg.features.registry import WEIGHTS_ENV

    image, _, scribbles = (a[:120, :72] for a in phases)  # small: one ViT tile, three classes painted
    hybrid = FeatureConfig(kind="hybrid", weights="random", stride=14, shifts=(), flips=False, device="cpu",
                           sigmas=(1.0,), membrane=False)
    trained = Segmenter(hybrid, TrainConfig(classifier="logistic")).fit(image, scribbles).save(tmp_path / "r.dinoseg")
    with zipfile.ZipFile(trained) as z:  # the same classifier, as if trained on the released weights
        members = {name: z.read(name) for name in z.namelist()}
    meta = json.loads(members["bundle.json"])
    meta["feature_config"]["weights"] = None
    members["bundle.json"] = json.dumps(meta).encode()
    bundle = tmp_path / "vit.dinoseg"
    with zipfile.ZipFile(bundle, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["apply", str(bundle), str(images), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "the classifier's hybrid features need dinov2_vits14 weights" in err and str(tmp_path / "weights") in err
    assert "image/s" not in err and not list((tmp_path / "out").glob("*.tif"))
