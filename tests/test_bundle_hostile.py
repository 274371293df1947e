"""Malformed and hostile bundles: each is refused with a ValueError that names the file and says
why, without reading more than the bundle may hold (zip bombs, huge array headers), hanging on
special files, or any other exception type."""

import io
import json
import os
import re
import struct
import threading
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

from napari_dinoseg import CRFConfig, FeatureConfig, Segmenter, TrainConfig, load_bundle
from napari_dinoseg import bundle_archive  # the bounded reader, whose limits a test lowers
from napari_dinoseg.bundle import MAX_BUNDLE_BYTES, MAX_JSON_BYTES, MAX_MEMBERS, bundle_channels, read_bundle
from napari_dinoseg.cli import main

MiB = 1 << 20


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """(path, bundle.json as a dict, arrays) of a real small bundle with trees, a CRF and statistics."""
    rng = np.random.default_rng(0)
    image = np.where(np.arange(32)[None, :] < 16, 40, 200) + rng.normal(0, 10, (32, 32))
    labels = np.zeros((32, 32), np.uint8)
    labels[4:28, 4:7], labels[4:28, 25:28] = 1, 2
    seg = Segmenter(FeatureConfig(sigmas=(1.0,), membrane=False), TrainConfig(n_trees=2), CRFConfig())
    path = seg.fit(np.clip(image, 0, 255).astype(np.uint8), labels).save(tmp_path_factory.mktemp("good") / "good.dinoseg")
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("bundle.json"))
        with zf.open("arrays.npz") as fh:
            arrays = dict(np.load(fh, allow_pickle=False))
    return path, meta, arrays


# ---- building bad bundles ------------------------------------------------------------------------

def npz(arrays: dict, raw: dict | None = None, compression: int = zipfile.ZIP_STORED) -> bytes:
    """An ``arrays.npz``: ``.npy`` members of ``arrays`` plus members of hand-written bytes ``raw``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, value in arrays.items():
            member = io.BytesIO()
            np.save(member, value, allow_pickle=True)
            zf.writestr(name + ".npy", member.getvalue())
        for name, data in (raw or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def write(path, meta_bytes: bytes, arrays_bytes: bytes, extra: dict | None = None) -> str:
    """A bundle file of the given ``bundle.json`` and ``arrays.npz`` bytes (and ``extra`` members)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bundle.json", meta_bytes)
        zf.writestr("arrays.npz", arrays_bytes)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return str(path)


def npy_header(shape, descr="<f8", version=(1, 0)) -> bytes:
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    (np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0)(buf, header)
    return buf.getvalue()


def patch_directory(data: bytes, name: str, file_size=None, flag_bits=None) -> bytes:
    """A zip archive with the central-directory entry of ``name`` edited by hand."""
    out, at = bytearray(data), data.find(b"PK\x01\x02")
    while at >= 0:
        length = struct.unpack_from("<H", out, at + 28)[0]
        if out[at + 46:at + 46 + length] == name.encode():
            if file_size is not None:
                struct.pack_into("<I", out, at + 24, file_size)
            if flag_bits is not None:
                struct.pack_into("<H", out, at + 8, flag_bits)
            return bytes(out)
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"no directory entry {name}")


def zeros_member(zf: zipfile.ZipFile, name: str, size: int) -> None:
    """A deflated member of ``size`` zero bytes, written 1 MiB at a time (the test stays light)."""
    with zf.open(name, "w", force_zip64=size > 1 << 31) as fh:
        for start in range(0, size, MiB):
            fh.write(bytes(min(MiB, size - start)))


def refused(path, *reasons, reader=load_bundle) -> str:
    """The ValueError message of reading ``path``: it names the file, says bundle, and matches ``reasons``."""
    with pytest.raises(ValueError) as info:
        reader(path)
    message = str(info.value)
    assert "napari-dinoseg bundle" in message and str(path) in message, message
    for reason in reasons:
        assert re.search(reason, message), message
    return message


# ---- bundle.json -----------------------------------------------------------------------------------

def text_edit(old: str, new: str):
    return lambda text: text.replace(old, new)


def nested(depth: int):
    value = "x"
    for _ in range(depth):
        value = [value]
    return value


#: (id, edit of the JSON text, reason, whether the JSON itself is broken: bundle_channels refuses it too)
RAW_JSON = [
    ("list", lambda text: "[1]", "JSON array, not an object", True),
    ("string", lambda text: '"x"', "JSON string, not an object", True),
    ("null", lambda text: "null", "JSON null, not an object", True),
    ("deeply nested", lambda text: "[" * 100_000 + "]" * 100_000, "more than 32 deep", True),
    ("nested 40 deep", lambda text: text.replace('"versions": {', f'"versions": {{"x": {json.dumps(nested(40))}, '),
     "more than 32 deep", True),
    ("not UTF-8", lambda text: text.replace("napari-dinoseg-bundle", "napari-dinoseg-bundl\xe9"), "not UTF-8", True),
    ("truncated", lambda text: text[: len(text) // 2], "not valid JSON", True),
    ("NaN", text_edit('"smooth": 0.0', '"smooth": NaN'), "NaN is not a JSON number", True),
    ("5000-digit integer", text_edit('"n_channels": 1', '"n_channels": ' + "9" * 5000), "not valid JSON", True),
    ("infinite shift", lambda text: text.replace('"kind": "classical"', '"kind": "hybrid"').replace(
        '"shifts": null', '"shifts": [1e999]'), "feature config is not valid", False),
    ("infinite CRF width", text_edit('"gaussian_sxy": 3.0', '"gaussian_sxy": 1e999'), "gaussian_sxy", False),
    ("infinite quantile", lambda text: re.sub(r'"quantiles": \[\[\[\[[-0-9.e]+', '"quantiles": [[[[1e999', text),
     "non-finite", False),
    ("infinite radius", text_edit('"guided_radius": 4', '"guided_radius": 1e999'), "guided_radius", False),
]


@pytest.mark.parametrize("edit, reason, broken", [case[1:] for case in RAW_JSON], ids=[case[0] for case in RAW_JSON])
def test_malformed_json_is_refused(tmp_path, good, edit, reason, broken):
    path, meta, arrays = good
    text = edit(json.dumps(meta))
    assert text != json.dumps(meta)
    bad = write(tmp_path / "bad.dinoseg", text.encode("latin-1"), npz(arrays))
    refused(bad, reason)
    if broken:
        refused(bad, reason, reader=bundle_channels)


def features(**change):
    return lambda meta: meta["feature_config"].update(change)


def training(**change):
    return lambda meta: meta["training_config"].update(change)


def crf(**change):
    return lambda meta: meta["crf_config"].update(change)


def statistics(**change):
    return lambda meta: meta["statistics"].update(change)


def drop(key):
    return lambda meta: meta.pop(key)


def setting(**change):
    return lambda meta: meta.update(change)


META = [
    ("no feature_config", drop("feature_config"), "feature_config is a JSON null, not an object"),
    ("feature_config a list", setting(feature_config=[1, 2]), "feature_config is a JSON array"),
    ("sigmas nested", features(sigmas=[[1]]), "feature config is not valid"),
    ("percentiles null", features(percentiles=None), "percentiles"),
    ("unknown feature field", features(bogus=1), "unknown FeatureConfig field"),
    ("foreign format", setting(format="other"), "is not a napari-dinoseg bundle"),
    ("format_version a string", setting(format_version="4"), "format_version"),
    ("format_version negative", setting(format_version=-1), "format_version"),
    ("format_version a float", setting(format_version=4.0), "format_version"),
    ("format_version newer", setting(format_version=99), "newer"),
    ("n_channels -1", setting(n_channels=-1), "n_channels -1 is not an integer in 1..16"),
    ("n_channels a string", setting(n_channels="3"), "n_channels '3'"),
    ("n_channels 10**9", setting(n_channels=10**9), "n_channels 1000000000"),
    ("n_channels a float", setting(n_channels=1.0), "n_channels 1.0"),
    ("n_channels true", setting(n_channels=True), "n_channels True"),
    ("no n_channels", drop("n_channels"), "n_channels None"),
    ("n_features a string", setting(n_features="5"), "n_features '5' is not a positive integer"),
    ("n_features zero", setting(n_features=0), "n_features 0"),
    ("classes floats", setting(classes=[1.0, 2.0]), "classes .* are not the integers of its arrays"),
    ("classes others", setting(classes=[1, 3]), "classes .* are not the integers of its arrays"),
    ("guide huge", setting(guide=[10**30]), "guide channels"),
    ("guide a dict", setting(guide={"a": 1}), "guide channels"),
    ("second guide huge", setting(guide_laplacian=[10**30]), "second guide channels"),
    ("second guide a string", setting(guide_laplacian="1"), "second guide channels"),
    ("second guide without a guide", setting(guide=[], guide_laplacian=[0]), "no guide"),
    ("smooth a string", setting(smooth="1"), "disagrees"),
    ("scaling null", setting(scaling=None), "disagrees"),
    ("classifier other", setting(classifier="svm"), "disagrees"),
    ("no training_config", drop("training_config"), "training_config is a JSON null"),
    ("training_config a string", setting(training_config="x"), "training_config is a JSON string"),
    ("n_trees 10**9", training(n_trees=10**9), "n_trees"),
    ("radius 10**9", training(guided_radius=10**9), "guided_radius"),
    ("scaling weird", training(scaling="weird"), "scaling"),
    ("augment a number", training(augment=3), "augment"),
    ("crf_config a list", setting(crf_config=[1]), "crf_config is a JSON array"),
    ("crf iterations a string", crf(iterations="10"), "iterations"),
    ("crf width negative", crf(bilateral_sxy=-1), "bilateral_sxy"),
    ("crf unknown field", crf(bogus=1), "unknown CRFConfig field"),
    ("statistics a list", setting(statistics=[1]), "statistics is a JSON array"),
    ("statistics levels a number", statistics(levels=3), "quantile levels or signals"),
    ("statistics of strings", statistics(quantiles=[[[["1"] * 9] * 2]]), "other than numbers"),
    ("statistics ragged", statistics(quantiles=[[1], [1, 2]]), "unreadable"),
    ("statistics of nulls", statistics(class_fractions=[None, None]), "other than numbers"),
    ("class fractions too few", statistics(class_fractions=[1.0]), "shapes"),
    ("channel_names a number", setting(channel_names=5), "channel_names"),
    ("channel_names numbers", setting(channel_names=[1, 2]), "channel_names"),
    ("versions a list", setting(versions=[1]), "versions"),
]


@pytest.mark.parametrize("edit, reason", [case[1:] for case in META], ids=[case[0] for case in META])
def test_bundles_with_bad_values_in_bundle_json_are_refused(tmp_path, good, edit, reason):
    path, meta, arrays = good
    meta = json.loads(json.dumps(meta))
    edit(meta)
    refused(write(tmp_path / "bad.dinoseg", json.dumps(meta).encode(), npz(arrays)), reason)


@pytest.mark.parametrize("value", [-1, "3", 10**9, 0, 2.0, None, [1]])
def test_bundle_channels_refuses_bad_channel_counts(tmp_path, good, value):
    path, meta, arrays = good
    bad = write(tmp_path / "bad.dinoseg", json.dumps(dict(meta, n_channels=value)).encode(), npz(arrays))
    refused(bad, "it is corrupt: its n_channels", reader=bundle_channels)
    assert bundle_channels(path) == 1


# ---- arrays.npz ------------------------------------------------------------------------------------

def replaced(name, value):
    return lambda arrays: arrays.update({name: value})


def forest(name, edit):
    return lambda arrays: arrays.update({"forest_" + name: edit(arrays["forest_" + name])})


def first_set(value):
    def edit(a):
        a = a.copy()
        a.flat[0] = value
        return a
    return edit


ARRAYS = [
    ("coef of objects", lambda a: a.update(coef=np.array([object()] * 2, dtype=object)), "object arrays are refused"),
    ("coef of strings", lambda a: a.update(coef=a["coef"].astype(str)), "coef array holds <U.* values, not floating"),
    ("coef complex", lambda a: a.update(coef=a["coef"].astype(complex)), "not floating-point"),
    ("coef 3-D", lambda a: a.update(coef=a["coef"][None]), "coef array has the shape"),
    ("coef NaN", lambda a: a.update(coef=first_set(np.nan)(a["coef"])), "coef array holds non-finite"),
    ("coef empty", lambda a: a.update(coef=a["coef"][:0]), "shape"),
    ("intercept short", lambda a: a.update(intercept=a["intercept"][:1]), "intercept array has the shape"),
    ("mean of ints", lambda a: a.update(mean=a["mean"].astype(np.int64)), "mean array holds int64"),
    ("scale zero", lambda a: a.update(scale=first_set(0)(a["scale"])), "zero or negative"),
    ("classes floats", lambda a: a.update(classes=a["classes"].astype(float)), "classes are not distinct integers"),
    ("classes 0-d", lambda a: a.update(classes=np.array(1)), "classes array has the shape"),
    ("classes 2**40", lambda a: a.update(classes=a["classes"] * 2**40), "classes are not distinct integers"),
    ("classes repeated", lambda a: a.update(classes=np.ones_like(a["classes"])), "classes are not distinct"),
    ("classes zero", lambda a: a.update(classes=a["classes"] - 1), "classes are not distinct"),
    ("coef missing", lambda a: a.pop("coef"), r"lacks the array\(s\) \['coef'\]"),
    ("forest missing", lambda a: a.pop("forest_left"), "forest array 'left' is missing"),
    ("threshold NaN", forest("threshold", first_set(np.nan)), "forest arrays do not describe valid trees"),
    ("threshold strings", forest("threshold", lambda t: t.astype(str)), "forest arrays do not describe valid trees"),
    ("values above 1", forest("values", first_set(5.0)), "forest arrays do not describe valid trees"),
    ("values of bools", forest("values", lambda v: v > 0.5), "forest arrays do not describe valid trees"),
    ("offsets of bools", forest("offsets", lambda o: o > 0), "forest arrays do not describe valid trees"),
    ("depths huge", forest("depths", first_set(10**9)), "forest arrays do not describe valid trees"),
    ("left floats", forest("left", lambda a: a.astype(float)), "forest arrays do not describe valid trees"),
    ("left 2-D", forest("left", lambda a: a[None]), "forest arrays do not describe valid trees"),
    ("feature out of range", forest("feature", lambda f: np.where(f >= 0, 10**6, f)), "valid trees"),
]


@pytest.mark.parametrize("edit, reason", [case[1:] for case in ARRAYS], ids=[case[0] for case in ARRAYS])
def test_bundles_with_bad_arrays_are_refused(tmp_path, good, edit, reason):
    path, meta, arrays = good
    arrays = dict(arrays)
    edit(arrays)
    refused(write(tmp_path / "bad.dinoseg", json.dumps(meta).encode(), npz(arrays)), reason)


def deflated_and_damaged(arrays: dict) -> bytes:
    raw = bytearray(npz(arrays, compression=zipfile.ZIP_DEFLATED))
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        info = zf.getinfo("coef.npy")
    start = info.header_offset + 30 + len(info.filename)
    raw[start + 2:start + 12] = b"\xff" * 10
    return bytes(raw)


NPZ = [
    ("not a zip", lambda arrays: b"not a zip at all", "its arrays.npz is not a zip archive"),
    ("truncated", lambda arrays: npz(arrays)[: len(npz(arrays)) // 2], "its arrays.npz is not a zip archive"),
    ("head cut off", lambda arrays: npz(arrays)[200:], "its arrays.npz is corrupt"),
    ("inflating fails", deflated_and_damaged, "its arrays.npz is corrupt"),
    ("member not .npy", lambda arrays: npz({k: v for k, v in arrays.items() if k != "coef"}, {"coef.npy": b"hello"}),
     "its arrays.npz is corrupt"),
    ("7 TiB header", lambda arrays: npz({k: v for k, v in arrays.items() if k != "coef"},
                                        {"coef.npy": npy_header((7 * 2**37,))}),
     r"coef.npy declares a \(962072674304,\) float64 array of 7.0 TiB, more than the 0 bytes it holds"),
    ("header beyond its data", lambda arrays: npz({k: v for k, v in arrays.items() if k != "coef"},
                                                  {"coef.npy": npy_header((1000, 1000)) + bytes(200)}),
     "7.6 MiB, more than the 200 bytes it holds"),
    ("negative shape", lambda arrays: npz({k: v for k, v in arrays.items() if k != "coef"},
                                          {"coef.npy": npy_header((-1, 5))}), "declares the shape"),
    ("header of version 2", lambda arrays: npz({k: v for k, v in arrays.items() if k != "coef"},
                                               {"coef.npy": npy_header((2, 2), version=(2, 0)) + bytes(32)}),
     "coef array has the shape"),
    ("two coef members", lambda arrays: npz(arrays, {"coef.npy": npz({})}), "two members named 'coef.npy'"),
    ("many members", lambda arrays: npz(arrays, {f"x{i}": b"" for i in range(MAX_MEMBERS)}),
     f"holds {MAX_MEMBERS + 12} members"),
]


@pytest.mark.parametrize("make, reason", [case[1:] for case in NPZ], ids=[case[0] for case in NPZ])
def test_malformed_arrays_npz_is_refused(tmp_path, good, make, reason):
    path, meta, arrays = good
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns of the duplicate member
        raw = make(dict(arrays))
    tracemalloc.start()
    try:
        refused(write(tmp_path / "bad.dinoseg", json.dumps(meta).encode(), raw), reason)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB  # never allocates what a header declares


# ---- zip bombs and hand-edited zip directories -----------------------------------------------------

def test_zip_bombs_are_refused_from_the_directory_before_inflating(tmp_path, good, monkeypatch):
    path, meta, arrays = good
    big = tmp_path / "json-bomb.dinoseg"  # bundle.json of 5 MiB deflated to 5 KiB
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zeros_member(zf, "bundle.json", MAX_JSON_BYTES + MiB)
        zf.writestr("arrays.npz", npz(arrays))
    assert big.stat().st_size < MiB and MAX_JSON_BYTES == 4 * MiB
    refused(big, r"bundle.json inflates to 5.0 MiB, more than the 4.0 MiB a bundle's may \(MAX_JSON_BYTES\)")
    refused(big, "bundle.json inflates to 5.0 MiB", reader=bundle_channels)

    monkeypatch.setattr(bundle_archive, "MAX_BUNDLE_BYTES", MiB)  # real bombs under a small cap
    outer = tmp_path / "outer-bomb.dinoseg"
    with zipfile.ZipFile(outer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bundle.json", json.dumps(meta))
        zeros_member(zf, "arrays.npz", 4 * MiB)
    refused(outer, r"it inflates to 4.0 MiB, more than the 1.0 MiB a bundle may \(MAX_BUNDLE_BYTES\)")
    member = io.BytesIO()
    with zipfile.ZipFile(member, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("coef.npy", npy_header((MiB // 2,)) + bytes(4 * MiB))
    inner = write(tmp_path / "inner-bomb.dinoseg", json.dumps(meta).encode(), member.getvalue())
    refused(inner, r"its arrays.npz inflates to 4.0 MiB, more than the 1.0 MiB a bundle may \(MAX_BUNDLE_BYTES\)")


def test_declared_sizes_bound_what_is_read(tmp_path, good):
    path, meta, arrays = good
    data = open(write(tmp_path / "x.dinoseg", json.dumps(meta).encode(), npz(arrays)), "rb").read()
    huge = tmp_path / "declared-huge.dinoseg"  # the directory claims 3.8 GiB: refused, nothing inflated
    huge.write_bytes(patch_directory(data, "arrays.npz", file_size=0xF000_0000))
    assert 0xF000_0000 > MAX_BUNDLE_BYTES
    refused(huge, r"it inflates to 3.8 GiB, more than the 1.0 GiB")

    lying = tmp_path / "declared-small.dinoseg"  # claims 1000 bytes, inflates to 64 MiB
    with zipfile.ZipFile(lying, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bundle.json", json.dumps(meta))
        zeros_member(zf, "arrays.npz", 64 * MiB)
    lying.write_bytes(patch_directory(lying.read_bytes(), "arrays.npz", file_size=1000))
    tracemalloc.start()
    try:
        refused(lying, "its zip archive is corrupt")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB  # reads what the directory declares, not what the stream inflates to

    encrypted = tmp_path / "encrypted.dinoseg"
    encrypted.write_bytes(patch_directory(data, "arrays.npz", flag_bits=0x1))
    refused(encrypted, "holds 'arrays.npz' encrypted")

    directory = tmp_path / "big-directory.dinoseg"  # the end record claims a 2 MiB directory
    end = bytearray(data[-22:])
    struct.pack_into("<I", end, 12, 2 * MiB)
    directory.write_bytes(data[:-22] + bytes(end))
    refused(directory, "zip directory of 2.0 MiB, more than the 1.0 MiB")

    zip64 = tmp_path / "zip64.dinoseg"
    zip64.write_bytes(data[:-22] + b"PK\x06\x07" + bytes(16) + data[-22:])
    refused(zip64, "ZIP64")


def test_odd_zip_members_are_refused(tmp_path, good):
    path, meta, arrays = good
    raw = npz(arrays)
    with pytest.warns(UserWarning, match="Duplicate name"):
        twice = write(tmp_path / "twice.dinoseg", json.dumps(meta).encode(), raw, {"bundle.json": b"{}"})
    refused(twice, "two members named 'bundle.json'")
    refused(twice, "two members named 'bundle.json'", reader=bundle_channels)
    many = write(tmp_path / "many.dinoseg", json.dumps(meta).encode(), raw, {f"x{i}": b"" for i in range(100)})
    refused(many, f"holds 102 members, more than a bundle's {MAX_MEMBERS}")
    lzma = tmp_path / "lzma.dinoseg"
    with zipfile.ZipFile(lzma, "w", compression=zipfile.ZIP_LZMA) as zf:
        zf.writestr("bundle.json", json.dumps(meta))
        zf.writestr("arrays.npz", raw)
    refused(lzma, "compressed with method 14; bundles are stored or deflated")
    missing = tmp_path / "missing.dinoseg"
    with zipfile.ZipFile(missing, "w") as zf:
        zf.writestr("bundle.json", json.dumps(meta))
    refused(missing, r"is not a napari-dinoseg bundle \(it holds \['bundle.json'\]")


# ---- paths that are not bundle files ---------------------------------------------------------------

def finishes(call, seconds=30.0):
    """``call()``'s exception, asserting that it returns within ``seconds`` (never hangs)."""
    box = []

    def run():
        try:
            call()
        except Exception as err:  # handed to the test thread
            box.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "reading the bundle hung"
    return box[0] if box else None


def test_directories_special_files_and_huge_files_are_refused_without_reading(tmp_path):
    folder = tmp_path / "folder.dinoseg"
    folder.mkdir()
    refused(folder, "it is a directory")
    refused(folder, "it is a directory", reader=bundle_channels)
    huge = tmp_path / "huge.dinoseg"  # sparse: 4 GiB on paper, nothing on disk
    with open(huge, "wb") as f:
        f.truncate(4 << 30)
    tracemalloc.start()
    try:
        refused(huge, "it is not a zip archive")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="POSIX special files")
def test_pipes_and_devices_are_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.dinoseg"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.dinoseg"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        for reader in (load_bundle, bundle_channels):
            err = finishes(lambda: reader(path))
            assert isinstance(err, ValueError) and "is not a valid napari-dinoseg bundle: it is not a regular file" \
                in str(err), err


def test_a_real_bundle_passes_every_check(tmp_path, good):
    path, meta, arrays = good
    contents = read_bundle(path)
    assert contents.n_channels == 1 and bundle_channels(path) == 1
    assert contents.crf == CRFConfig() and contents.statistics is not None and contents.classifier.forest is not None
    assert contents.classifier.classes.tolist() == meta["classes"] == [1, 2]
    names = ["[" * 100 + '\\"{' * 50] * meta["n_features"]  # brackets in strings are no nesting
    odd = write(tmp_path / "names.dinoseg", json.dumps(dict(meta, channel_names=names)).encode(), npz(arrays))
    assert read_bundle(odd).channel_names == tuple(names)


# ---- the command line ------------------------------------------------------------------------------

def test_the_cli_reports_bad_bundles_without_a_traceback(tmp_path, good, capsys):
    import tifffile

    path, meta, arrays = good
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "a.tif", np.zeros((16, 16), np.uint8))
    folder = tmp_path / "folder.dinoseg"
    folder.mkdir()
    bad = {
        "JSON array": (write(tmp_path / "list.dinoseg", b"[1]", npz(arrays)), "JSON array, not an object"),
        "deep": (write(tmp_path / "deep.dinoseg", b"[" * 100_000 + b"]" * 100_000, npz(arrays)), "32 deep"),
        "7 TiB": (write(tmp_path / "tib.dinoseg", json.dumps(meta).encode(),
                        npz({k: v for k, v in arrays.items() if k != "coef"}, {"coef.npy": npy_header((7 * 2**37,))})),
                  "7.0 TiB"),
        "n_channels": (write(tmp_path / "channels.dinoseg", json.dumps(dict(meta, n_channels="3")).encode(),
                             npz(arrays)), "n_channels '3'"),
        "directory": (str(folder), "it is a directory"),
    }
    for name, (path, reason) in bad.items():
        assert main(["apply", path, str(inputs), "-o", str(tmp_path / "out")]) == 2, name
        err = capsys.readouterr().err
        assert "Traceback" not in err and "dinoseg: error:" in err and "napari-dinoseg bundle" in err, err
        assert re.search(reason, err), err
    assert not (tmp_path / "out" / "a_labels.tif").exists()
