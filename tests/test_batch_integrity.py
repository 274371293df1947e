"""The integrity of a ``dinoseg apply`` run: nothing lost, nothing mixed, nothing kept half-done.

Real processes for concurrency and kills (two runs at once into one folder, a bundle replaced
mid-run, ``kill -9`` at random moments then a rerun), real files for the rest: outputs cut short
or damaged, inputs rewritten while they are segmented, names too long for an output name, and
output folders that are the input folder through a link or a bind mount.

The runs in other processes are the real CLI, slowed by a sleep before each image (``SLOW``) so
that the moments under test (a second run starting, a bundle replaced, a kill) fall inside a run.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig, apply_bundle, batch, folder_lock
from napari_dinoseg.batch import LABEL_SUFFIX, PROBA_SUFFIX, fingerprint, output_metadata
from napari_dinoseg.cli import main
from napari_dinoseg.folder_lock import LOCK_NAME, FolderBusyError, FolderLock

FAST = FeatureConfig(sigmas=(1, 2), membrane=False)
N = 20
#: The CLI in a process of its own, sleeping ``argv[1]`` seconds before each image.
SLOW = """
import sys, time
from napari_dinoseg import batch
from napari_dinoseg.cli import main
delay, real = float(sys.argv[1]), batch.process_file
def slow(*args):
    time.sleep(delay)
    return real(*args)
batch.process_file = slow
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture
def bundles(tmp_path, two_textures):
    """Two tiny classical classifiers of different bytes (and fingerprints)."""
    image, _, scribbles = two_textures
    a = Segmenter(FAST, TrainConfig(classifier="logistic")).fit(image, scribbles).save(tmp_path / "a.dinoseg")
    b = Segmenter(FAST, TrainConfig(classifier="logistic", C=0.01)).fit(image, scribbles).save(tmp_path / "b.dinoseg")
    assert fingerprint(a) != fingerprint(b)
    return a, b


@pytest.fixture
def images(tmp_path, two_textures):
    """A folder of ``N`` small greyscale TIFFs."""
    image = two_textures[0]
    d = tmp_path / "in"
    d.mkdir()
    for i in range(N):
        tifffile.imwrite(d / f"img{i:02d}.tif", np.roll(image, 9 * i, axis=1)[:96, :96])
    return d


def start(*args, delay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW, str(delay), "apply", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(condition, timeout: float = 60.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def labels_in(out: Path) -> list[Path]:
    return sorted(out.glob(f"*{LABEL_SUFFIX}"))


def whole(target: Path, bundle_id: str) -> bool:
    """An output is whole and this classifier's: its size and checksum as written."""
    meta = output_metadata(target)
    return (meta.get("dinoseg_bundle") == bundle_id and target.stat().st_size == int(meta["file_bytes"])
            and batch._checksum(tifffile.imread(target)) == meta["data_sha256"])


def lock_holder(out: Path):
    try:
        return json.loads((out / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


# ---- 2. one classifier per run and folder: the folder is locked ------------------------------------


def test_two_runs_at_once_with_two_classifiers_one_runs_the_other_is_refused_naming_it(tmp_path, bundles, images):
    a, b = bundles
    out = tmp_path / "out"
    procs = {bundle: start(bundle, images, "-o", out, delay=0.25) for bundle in (a, b)}
    results = {bundle: finish(proc) for bundle, proc in procs.items()}
    codes = sorted(code for code, _, _ in results.values())
    assert codes == [0, 2], results
    winner = next(bundle for bundle, (code, _, _) in results.items() if code == 0)
    loser = b if winner == a else a
    _, text, _ = results[winner]
    _, _, err = results[loser]
    assert f"done {N}, skipped 0" in text
    assert "is in use by another dinoseg run" in err and "with another classifier" in err and "refused" in err
    assert f"host {socket.gethostname()}, pid {procs[winner].pid}, classifier {str(winner)!r}" in err
    assert {output_metadata(p)["dinoseg_bundle"] for p in labels_in(out)} == {fingerprint(winner)}
    assert len(labels_in(out)) == N and not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("first", [0, 1])
def test_a_second_run_started_while_one_runs_is_refused_in_either_order(tmp_path, bundles, images, first):
    holder, second = bundles[first], bundles[1 - first]
    out = tmp_path / "out"
    proc = start(holder, images, "-o", out, delay=0.2)
    wait_for(lambda: (lock_holder(out) or {}).get("pid") == proc.pid, what="the first run to hold the folder")
    assert lock_holder(out) == {**lock_holder(out), "host": socket.gethostname(), "classifier": str(holder),
                                "fingerprint": fingerprint(holder)}
    code, _, err = finish(start(second, images, "-o", out))
    assert code == 2 and proc.poll() is None, "refused at once, while the first still runs"
    assert f"pid {proc.pid}, classifier {str(holder)!r}" in err and "with another classifier" in err
    code, text, _ = finish(proc)
    assert code == 0 and f"done {N}" in text
    assert {output_metadata(p)["dinoseg_bundle"] for p in labels_in(out)} == {fingerprint(holder)}


def test_a_second_run_with_the_same_classifier_is_refused_too_and_told_to_rerun(tmp_path, bundles, images):
    a, _ = bundles
    out = tmp_path / "out"
    proc = start(a, images, "-o", out, delay=0.2)
    wait_for(lambda: (lock_holder(out) or {}).get("pid") == proc.pid, what="the first run to hold the folder")
    code, _, err = finish(start(a, images, "-o", out))
    assert code == 2 and "with the same classifier" in err and "run again when that run has ended" in err
    assert finish(proc)[0] == 0
    code, text, _ = finish(start(a, images, "-o", out))
    assert code == 0 and text.startswith(f"done 0, skipped {N} ({N} already there)")


def test_a_bundle_replaced_mid_run_changes_nothing_in_that_run(tmp_path, bundles, images):
    a, b = bundles
    reference = apply_bundle(a, images, tmp_path / "ref")
    assert len(reference.done) == N
    out = tmp_path / "out"
    original = fingerprint(a)
    proc = start(a, images, "-o", out, delay=0.15)
    wait_for(lambda: len(labels_in(out)) >= 4, what="four outputs")
    os.replace(shutil.copy(b, tmp_path / "new.tmp"), a)  # as Segmenter.save replaces a file
    wait_for(lambda: len(labels_in(out)) >= 10, what="ten outputs")
    a.write_bytes(b.read_bytes()[: len(b.read_bytes()) // 2])  # rewritten in place, and cut short
    code, text, err = finish(proc)
    assert code == 0 and f"done {N}, skipped 0 (0 already there), failed 0" in text, err
    assert {output_metadata(p)["dinoseg_bundle"] for p in labels_in(out)} == {original}
    for p in labels_in(out):  # the labels of the classifier read at the start
        assert np.array_equal(tifffile.imread(p), tifffile.imread(tmp_path / "ref" / p.name))


def test_a_bundle_replaced_in_this_process_changes_nothing_either(tmp_path, bundles, images):
    a, b = bundles
    original = fingerprint(a)

    def replace_after_the_first(done, total, name):
        if done == 1:
            shutil.copy(b, a)

    summary = apply_bundle(a, images, tmp_path / "out", progress=replace_after_the_first)
    assert len(summary.done) == N and fingerprint(a) != original
    assert {output_metadata(Path(p))["dinoseg_bundle"] for p in summary.done} == {original}


def test_a_worker_never_segments_with_a_bundle_replaced_since_the_run_started(tmp_path, bundles, images):
    """What a dask worker does: it loads the bundle file itself, and checks it is the run's."""
    a, b = bundles
    original = fingerprint(a)
    shutil.copy(b, a)
    batch._SEGMENTERS.clear()
    _, status, detail, _ = batch.process_file(str(images / "img00.tif"), str(a), str(tmp_path), False, None, None,
                                                 original)
    assert status == "failed" and "was replaced during the run" in detail and original in detail
    assert not labels_in(tmp_path)


def test_an_output_of_another_classifier_written_meanwhile_is_not_replaced(tmp_path, bundles, images):
    """The fingerprint is checked when writing, too: a run that did not hold the lock (an older
    version) and wrote into the folder meanwhile keeps its output, and the image fails, saying so."""
    a, b = bundles
    other = tmp_path / "other"
    apply_bundle(b, images, other)
    out = tmp_path / "out"

    def intruder(done, total, name):
        if done == 1:
            shutil.copy(other / f"img05{LABEL_SUFFIX}", out / f"img05{LABEL_SUFFIX}")

    summary = apply_bundle(a, images, out, progress=intruder)
    assert len(summary.done) == N - 1
    [(path, reason)] = summary.failed
    assert path == str(images / "img05.tif") and "written meanwhile by another classifier" in reason
    assert output_metadata(out / f"img05{LABEL_SUFFIX}")["dinoseg_bundle"] == fingerprint(b)


# ---- the lock: released, taken over from killed runs, trusted on other hosts while touched ------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(out: Path, host: str, pid: int, age: float = 0.0) -> None:
    out.mkdir(exist_ok=True)
    (out / LOCK_NAME).write_text(json.dumps({"host": host, "pid": pid, "classifier": "/x/old.dinoseg",
                                             "fingerprint": "0123456789abcdef", "started": "2024-01-01 00:00:00"}))
    if age:
        then = time.time() - age
        os.utime(out / LOCK_NAME, (then, then))


def test_the_lock_names_the_run_while_it_runs_and_is_gone_after(tmp_path, bundles, images):
    a, _ = bundles
    out = tmp_path / "out"
    seen = []
    apply_bundle(a, images, out, progress=lambda done, total, name: seen.append(lock_holder(out)))
    assert seen and all(h == {**seen[0], "host": socket.gethostname(), "pid": os.getpid(), "classifier": str(a),
                              "fingerprint": fingerprint(a)} for h in seen)
    assert not (out / LOCK_NAME).exists()
    with pytest.raises(KeyboardInterrupt):  # interrupted: given back all the same
        apply_bundle(a, images, tmp_path / "out2", overwrite=True,
                     progress=lambda done, total, name: (_ for _ in ()).throw(KeyboardInterrupt))
    assert not (tmp_path / "out2" / LOCK_NAME).exists()


def test_a_run_in_this_process_holding_the_folder_refuses_another(tmp_path, bundles, images):
    a, b = bundles
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out, a, fingerprint(a)):
        with pytest.raises(FolderBusyError, match=f"pid {os.getpid()}, classifier {str(a)!r}") as caught:
            apply_bundle(b, images, out)
        assert caught.value.holder.fingerprint == fingerprint(a)
        assert main(["apply", str(b), str(images), "-o", str(out)]) == 2
    assert len(apply_bundle(b, images, out).done) == N


def test_a_killed_runs_lock_on_this_host_is_taken_over_and_said(tmp_path, bundles, images, capsys):
    a, _ = bundles
    out = tmp_path / "out"
    pid = dead_pid()
    write_lock(out, socket.gethostname(), pid)
    assert main(["apply", str(a), str(images), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"note: {out}: took over the folder's lock from a run that ended without giving it back (its process " \
           f"is gone; killed?): host {socket.gethostname()}, pid {pid}" in text
    assert not (out / LOCK_NAME).exists()


def test_another_hosts_lock_is_trusted_while_touched_and_taken_over_when_stale(tmp_path, bundles, images):
    a, _ = bundles
    out = tmp_path / "out"
    write_lock(out, "elsewhere.example", 4242, age=5)
    with pytest.raises(FolderBusyError, match=r"host elsewhere.example, pid 4242.*on another host and touched its "
                                              r"lock \d+ s ago"):
        apply_bundle(a, images, out)
    write_lock(out, "elsewhere.example", 4242, age=folder_lock.STALE_AFTER + 60)
    summary = apply_bundle(a, images, out)
    assert len(summary.done) == N
    assert any("its host has not touched it for a while" in message and "elsewhere.example" in message
               for _, message in summary.notes)


def test_without_flock_the_file_alone_locks(tmp_path, bundles, images, monkeypatch):
    import fcntl

    def refused(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refused)
    a, b = bundles
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out, a, fingerprint(a)):
        with pytest.raises(FolderBusyError, match=f"pid {os.getpid()}"):
            apply_bundle(b, images, out)
    assert not (out / LOCK_NAME).exists()
    write_lock(out, socket.gethostname(), dead_pid())
    summary = apply_bundle(b, images, out)
    assert len(summary.done) == N and "its process is gone" in summary.notes[0][1]
    assert not (out / LOCK_NAME).exists()


# ---- kill -9 at random moments, then a rerun -------------------------------------------------------------


def test_kill_9_at_random_moments_then_a_rerun_finishes_everything_whole(tmp_path, bundles, images):
    a, _ = bundles
    out = tmp_path / "out"
    bundle_id = fingerprint(a)
    rng = random.Random(24)
    for _ in range(4):
        proc = start(a, images, "-o", out, delay=0.05)
        time.sleep(rng.uniform(0.2, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode in (-signal.SIGKILL, 0)
        # at any moment: every output under its name is whole, never a partial one
        assert all(whole(p, bundle_id) for p in labels_in(out))
    left_locked = lock_holder(out) is not None  # (a kill between making the file and writing it leaves it empty)
    before = len(labels_in(out))
    code, text, err = finish(start(a, images, "-o", out))
    assert code == 0, err
    assert text.startswith(f"done {N - before}, skipped {before} ({before} already there), failed 0")
    assert ("took over the folder's lock" in text) == left_locked
    assert len(labels_in(out)) == N and all(whole(p, bundle_id) for p in labels_in(out))
    assert not list(out.glob(".*")) and not (out / LOCK_NAME).exists()


def test_a_run_killed_while_holding_the_folder_is_taken_over_by_the_rerun(tmp_path, bundles, images):
    a, _ = bundles
    out = tmp_path / "out"
    proc = start(a, images, "-o", out, delay=0.2)
    wait_for(lambda: len(labels_in(out)) >= 2, what="two outputs")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert lock_holder(out)["pid"] == proc.pid
    code, text, _ = finish(start(a, images, "-o", out))
    assert code == 0 and f"took over the folder's lock from a run that ended without giving it back (its process is " \
                          f"gone; killed?): host {socket.gethostname()}, pid {proc.pid}" in text
    assert len(labels_in(out)) == N and not (out / LOCK_NAME).exists()


# ---- 5. what "finished" means: the output is whole ---------------------------------------------------


@pytest.mark.parametrize("cut", ["half", "tail"])
def test_an_output_cut_short_is_recomputed_and_said(tmp_path, bundles, images, cut):
    a, _ = bundles
    out = tmp_path / "out"
    apply_bundle(a, images, out, probabilities=True)
    for name in (f"img03{LABEL_SUFFIX}", f"img07{PROBA_SUFFIX}"):
        data = (out / name).read_bytes()
        (out / name).write_bytes(data[: len(data) // 2] if cut == "half" else data[:-10])
        output_metadata(out / name)  # its metadata still reads: the old check kept it
    summary = apply_bundle(a, images, out, probabilities=True)
    assert sorted(summary.done) == [str(out / f"img03{LABEL_SUFFIX}"), str(out / f"img07{LABEL_SUFFIX}")]
    notes = dict(summary.notes)
    assert "cut short" in notes[str(images / "img03.tif")] and "recomputed" in notes[str(images / "img03.tif")]
    assert notes[str(images / "img07.tif")].startswith(f"its output img07{PROBA_SUFFIX} is ")
    assert "cut short" in str(summary)
    assert all(whole(p, fingerprint(a)) for p in [*labels_in(out), *out.glob(f"*{PROBA_SUFFIX}")])


def test_an_output_damaged_in_place_is_found_by_verify(tmp_path, bundles, images, capsys):
    a, _ = bundles
    out = tmp_path / "out"
    apply_bundle(a, images, out)
    target = out / f"img04{LABEL_SUFFIX}"
    with tifffile.TiffFile(target) as tif:
        offset = tif.series[0].dataoffset
    data = bytearray(target.read_bytes())
    data[offset: offset + 500] = bytes(500)  # the same size, other pixels
    target.write_bytes(bytes(data))
    assert not apply_bundle(a, images, out).done, "the size check is cheap, and does not read the pixels"
    assert main(["apply", str(a), str(images), "-o", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"done 1, skipped {N - 1}")
    assert f"note: {images / 'img04.tif'}: its output img04{LABEL_SUFFIX} does not hold the pixel data written" in text
    assert whole(target, fingerprint(a))


def test_outputs_of_the_previous_version_without_a_size_are_recomputed_and_said(tmp_path, bundles, images):
    a, _ = bundles
    out = tmp_path / "out"
    apply_bundle(a, images, out)
    for target in labels_in(out):  # as the version before wrote them: no size, no checksum
        meta = output_metadata(target)
        for key in ("file_bytes", "data_bytes", "data_sha256", "shape"):
            del meta[key]
        tifffile.imwrite(target, tifffile.imread(target), metadata=meta, photometric="minisblack")
    summary = apply_bundle(a, images, out)
    assert len(summary.done) == N
    assert summary.notes == [(str(p), f"its output {batch.OLDER}") for p in sorted(images.iterdir())]
    assert f"note: {N} inputs ({images / 'img00.tif'}, {images / 'img01.tif'}, ...): its output was written by an " \
           "older version" in str(summary), "one line for them all"
    assert all(whole(p, fingerprint(a)) for p in labels_in(out))
    assert not apply_bundle(a, images, out).done


def test_the_size_is_recorded_even_when_a_warning_holds_the_placeholder(tmp_path):
    array = np.arange(600, dtype=np.uint16).reshape(20, 30)
    target = tmp_path / f"x{LABEL_SUFFIX}"
    batch._write_tiff(target, array, {"warnings": ['"file_bytes": "000000000000"'], "dinoseg_bundle": "b"})
    meta = output_metadata(target)
    assert int(meta["file_bytes"]) == target.stat().st_size and meta["warnings"] == ['"file_bytes": "000000000000"']
    assert meta["data_bytes"] == 1200 and batch._damage(target, meta, verify=True) == ""


# ---- 6. an input rewritten while it is read or segmented --------------------------------------------


def test_an_input_rewritten_while_it_is_segmented_is_segmented_again(tmp_path, bundles, images, monkeypatch):
    a, _ = bundles
    target = images / "img02.tif"
    new = tifffile.imread(images / "img11.tif")[::-1]
    real, calls = Segmenter.predict_proba, []

    def rewrite_during_the_first(self, image, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            tifffile.imwrite(target, new)  # another tool saves the file meanwhile
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "predict_proba", rewrite_during_the_first)
    summary = apply_bundle(a, [target], tmp_path / "out")
    assert summary.done == [str(tmp_path / "out" / f"img02{LABEL_SUFFIX}")] and len(calls) == 2
    monkeypatch.setattr(Segmenter, "predict_proba", real)
    expected = tmp_path / "expected"
    expected.mkdir()
    tifffile.imwrite(expected / "img02.tif", new)
    apply_bundle(a, expected, tmp_path / "fresh")
    assert np.array_equal(tifffile.imread(summary.done[0]), tifffile.imread(tmp_path / "fresh" / f"img02{LABEL_SUFFIX}"))
    meta, info = output_metadata(Path(summary.done[0])), target.stat()
    assert (meta["source_size"], meta["source_mtime_ns"]) == (info.st_size, info.st_mtime_ns)
    assert apply_bundle(a, [target], tmp_path / "out").skipped == [(str(target), "already there")]


def test_an_input_that_keeps_changing_fails_saying_so_and_writes_nothing(tmp_path, bundles, images, monkeypatch):
    a, _ = bundles
    target = images / "img02.tif"
    real = Segmenter.predict_proba

    def rewrite_every_time(self, image, *args, **kwargs):
        tifffile.imwrite(target, tifffile.imread(target)[::-1])
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "predict_proba", rewrite_every_time)
    summary = apply_bundle(a, [target, images / "img03.tif"], tmp_path / "out")
    assert summary.failed == [(str(target), "the input changed while it was segmented, 3 times: it is being written; "
                                            "run again once it is")]
    assert [Path(p).name for p in summary.done] == [f"img03{LABEL_SUFFIX}"]


def test_an_input_caught_half_written_is_read_again(tmp_path, bundles, images, monkeypatch):
    a, _ = bundles
    target = images / "img02.tif"
    whole_bytes = target.read_bytes()
    real, calls = batch.read_image, []

    def half_written_at_first(path, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # caught while another tool writes it: a truncated file, then the whole one
            target.write_bytes(whole_bytes[:300])
            try:
                return real(path, *args, **kwargs)
            finally:
                target.write_bytes(whole_bytes)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(batch, "read_image", half_written_at_first)
    summary = apply_bundle(a, [target], tmp_path / "out")
    assert len(summary.done) == 1 and not summary.failed and len(calls) == 2


# ---- 9. names too long, and output folders that are the input folder -------------------------------------


@pytest.mark.parametrize("length", [244, 254, 255])
def test_a_long_input_name_is_segmented_under_a_shortened_output_name(tmp_path, bundles, images, length, capsys):
    a, _ = bundles
    name = "é" * ((length - 4) // 2) + "x" * ((length - 4) % 2) + ".tif"  # two bytes a character
    assert len(os.fsencode(name)) == length
    shutil.copy(images / "img01.tif", images / name)
    out = tmp_path / "out"
    assert main(["apply", str(a), str(images), "-o", str(out), "--probabilities"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"done {N + 1}, skipped 0 (0 already there), failed 0")
    [long_labels] = [p for p in labels_in(out) if len(os.fsencode(p.name)) > 200]
    assert len(os.fsencode(long_labels.name)) <= 255 and long_labels.name.startswith("éé")
    assert output_metadata(long_labels)["source"] == name
    assert np.array_equal(tifffile.imread(long_labels), tifffile.imread(out / f"img01{LABEL_SUFFIX}"))
    assert (f"its name is too long for an output name: written as {long_labels.name}" in text) == (length > 244)
    assert main(["apply", str(a), str(images), "-o", str(out), "--probabilities"]) == 0
    assert f"({N + 1} already there)" in capsys.readouterr().out


def test_long_names_sharing_their_start_get_distinct_outputs(tmp_path, bundles, images):
    a, _ = bundles
    for end in "ab":
        shutil.copy(images / "img01.tif", images / ("x" * 248 + end + ".tif"))
    summary = apply_bundle(a, images, tmp_path / "out")
    assert len(summary.done) == N + 2 and len(set(summary.done)) == N + 2
    assert sorted(output_metadata(Path(p))["source"] for p in summary.done if "xxx" in p) == \
           ["x" * 248 + "a.tif", "x" * 248 + "b.tif"]


def test_a_temporary_name_fits_the_name_limit_and_is_still_cleaned(tmp_path, monkeypatch):
    from napari_dinoseg.atomic import clean_stale, temp_path

    target = tmp_path / ("y" * 244 + LABEL_SUFFIX)
    tmp = temp_path(target)
    assert len(os.fsencode(tmp.name)) <= 255 and tmp.parent == target.parent
    tmp.write_bytes(b"")
    os.utime(tmp, (0, 0))
    assert clean_stale(tmp_path) == [], "a live process's (this one's) is kept"
    tmp.unlink()
    dead = dead_pid()  # its pid may have more digits than ours: the name it made is cut to fit too
    with monkeypatch.context() as patch:
        patch.setattr(os, "getpid", lambda: dead)
        stale = temp_path(target)
    assert f"-{dead}-" in stale.name and len(os.fsencode(stale.name)) <= 255
    stale.write_bytes(b"")
    os.utime(stale, (0, 0))
    assert clean_stale(tmp_path) == [stale]


def test_an_output_folder_that_is_a_link_to_the_input_folder_is_refused(tmp_path, bundles, images):
    a, _ = bundles
    (tmp_path / "link").symlink_to(images)
    with pytest.raises(ValueError, match="is the input folder .* outputs would be read as inputs"):
        apply_bundle(a, images, tmp_path / "link")
    with pytest.raises(ValueError, match="is inside the input folder"):
        apply_bundle(a, images, tmp_path / "link" / "sub")
    (images / "sub").mkdir()
    (tmp_path / "sublink").symlink_to(images / "sub")
    with pytest.raises(ValueError, match="is inside the input folder"):
        apply_bundle(a, images, tmp_path / "sublink")
    assert main(["apply", str(a), str(images), "-o", str(tmp_path / "link")]) == 2
    assert not labels_in(images) and not list((images / "sub").iterdir())


@pytest.fixture
def bind_mount(tmp_path, images):
    """``tmp_path/mnt``: the input folder, bind-mounted (skipped where mounting is refused)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if sys.platform != "linux" or shutil.which("mount") is None:
        pytest.skip("bind mounts are a Linux feature and need the mount command")
    done = subprocess.run(["mount", "--bind", str(images), str(mnt)], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount --bind was refused here ({done.stderr.strip() or done.returncode}): needs root on Linux")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_an_output_folder_that_is_a_bind_mount_of_the_input_folder_is_refused(tmp_path, bundles, images, bind_mount):
    a, _ = bundles
    assert os.path.realpath(bind_mount) != os.path.realpath(images), "paths alone cannot tell"
    with pytest.raises(ValueError, match=r"is the input folder .*through a link or a mount"):
        apply_bundle(a, images, bind_mount)
    with pytest.raises(ValueError, match=r"is inside the input folder .*through a link or a mount"):
        apply_bundle(a, images, bind_mount / "segmented")
    assert main(["apply", str(a), str(images), "-o", str(bind_mount)]) == 2
    assert sorted(p.name for p in images.iterdir()) == [f"img{i:02d}.tif" for i in range(N)]
