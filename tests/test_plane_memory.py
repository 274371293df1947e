"""Whole planes against memory: a plane, a training set or a file that would not fit is refused up
front with the estimate (never killed by the kernel), the estimates follow the measured peaks, and
image normalisation takes any finite image (extreme floats, masked arrays) without calling it corrupt.

The refusals run in a subprocess whose address space is limited (``RLIMIT_AS``) to what it holds
plus 1 GiB: the answer does not depend on this machine's memory, and a refusal that came too late
would fail there with a ``MemoryError`` instead of being killed."""

import json
import os
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib

import numpy as np
import psutil
import pytest

from napari_dinoseg import CRFConfig, FeatureConfig, Segmenter, TrainConfig
from napari_dinoseg.features.featurise import check_memory
from napari_dinoseg.image import MAX_NORMALISED, as_float_image
from napari_dinoseg.memory import (PLANE_MEMORY_FRACTION, NotEnoughMemory, available_memory, check_fit_memory,
                                   check_plane_memory, file_memory, plane_memory)

GiB = 1 << 30
#: What a refusal may take, in seconds and bytes of resident memory over what the process held.
SECONDS, PEAK = 10.0, GiB


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A real small bundle: default features and classifier, 3 classes (so, greyscale)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    labels = np.zeros((64, 64), np.uint8)
    labels[5:9, 5:60], labels[30:34, 5:60], labels[50:54, 5:60] = 1, 2, 3
    return str(Segmenter().fit(image, labels).save(tmp_path_factory.mktemp("plane") / "three.dinoseg"))


def huge_tiff(path, side=40000, tile=4096, dtype="uint8") -> str:
    """A TIFF of 1.6 MB declaring a ``side`` x ``side`` image: zlib tiles of zeros, one compressed once
    and written for every tile (nothing of the image's size is ever allocated)."""
    import tifffile

    n = -(-side // tile)
    chunk = zlib.compress(bytes(tile * tile * np.dtype(dtype).itemsize))
    tifffile.imwrite(path, (chunk for _ in range(n * n)), shape=(side, side), dtype=dtype, tile=(tile, tile),
                     compression="zlib")
    return str(path)


def huge_png(path, side=40000) -> str:
    """A PNG of a few hundred bytes whose header declares a ``side`` x ``side`` greyscale image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(bytes(side + 1) * 4)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return str(path)


def limited(body: str, bundle: str, headroom: int = GiB) -> dict:
    """Run ``body`` (Python defining ``result``) in a subprocess that has loaded ``bundle`` as ``seg``
    and predicted a small image, then limited its address space to what it holds plus ``headroom``.
    Returns ``result`` with ``seconds`` and ``peak`` (resident bytes over those held before ``body``)."""
    script = textwrap.dedent("""
        import json, resource, sys, time, warnings
        import numpy as np, psutil
        from napari_dinoseg import Segmenter
        warnings.simplefilter("ignore")
        seg = Segmenter.load(sys.argv[1])
        small = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
        seg.check(small, seg.predict_proba(small))
        process = psutil.Process()
        limit = process.memory_info().vms + int(sys.argv[2])
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))

        def reset_peak():  # the peak resident size (VmHWM) starts again from the current one
            import ctypes
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed memory the allocator kept goes back first
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return process.memory_info().rss

        def peak():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

        before, start = reset_peak(), time.perf_counter()
        result = {}
        try:
        %s
        except Exception as err:
            result["error"], result["message"] = type(err).__name__, str(err)
        result["seconds"] = time.perf_counter() - start
        result["peak"] = peak() - before
        print("RESULT" + json.dumps(result))
    """) % textwrap.indent(textwrap.dedent(body), "    ")
    done = subprocess.run([sys.executable, "-c", script, bundle, str(headroom)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "2"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT"):])


def refused_quickly(result: dict, *words: str) -> str:
    assert result.get("error") == "NotEnoughMemory", result
    for word in words:
        assert word.lower() in result["message"].lower(), result["message"]
    assert result["seconds"] < SECONDS and result["peak"] < PEAK, result
    return result["message"]


# ---- planes that do not fit -----------------------------------------------------------------------

def test_a_plane_that_does_not_fit_is_refused_before_anything_is_allocated(bundle):
    """16384² uint8 (the image itself: 256 MiB) needs about 7 GiB: refused with the estimate."""
    result = limited("""
        image = np.zeros((16384, 16384), np.uint8)
        seg.predict_proba(image)
    """, bundle)
    message = refused_quickly(result, "16384x16384", "GiB", "this process can still use", "crop",
                              "more memory", "nothing was allocated")
    assert "corrupt" not in message


def test_a_tiff_declaring_a_huge_image_is_refused_before_it_is_decoded(bundle, tmp_path):
    path = huge_tiff(tmp_path / "huge.tif")
    assert os.path.getsize(path) < 2 << 20
    result = limited(f"""
        from napari_dinoseg.reading import read_image
        read_image({path!r}, 1)
    """, bundle)
    refused_quickly(result, "40000x40000 uint8", "1.5 GiB of pixels", "nothing was decoded", "crop")


def test_a_png_declaring_a_huge_image_is_refused_by_memory_not_by_pil(bundle, tmp_path):
    """PIL's decompression-bomb limit gives way to the memory check (and a bomb error never escapes)."""
    path = huge_png(tmp_path / "huge.png")
    result = limited(f"""
        from napari_dinoseg.reading import read_image
        read_image({path!r})
    """, bundle)
    refused_quickly(result, "40000x40000 uint8", "nothing was decoded")


def test_apply_refuses_a_huge_file_up_front_and_goes_on(bundle, tmp_path):
    """Through the batch path: the file fails with the estimate (of reading and segmenting it), the run
    goes on with the next file."""
    import tifffile

    folder = tmp_path / "in"
    folder.mkdir()
    huge_tiff(folder / "a_huge.tif")
    tifffile.imwrite(folder / "b_small.tif", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    result = limited(f"""
        from napari_dinoseg.batch import apply_bundle
        summary = apply_bundle(sys.argv[1], {str(folder)!r}, {str(tmp_path / 'out')!r})
        result["failed"], result["done"] = summary.failed, summary.done
    """, bundle)
    assert result["seconds"] < SECONDS and result["peak"] < PEAK, result
    assert len(result["done"]) == 1 and len(result["failed"]) == 1, result
    reason = result["failed"][0][1]
    assert "NotEnoughMemory" in reason and "reading and segmenting it would need" in reason, reason
    assert "nothing was decoded" in reason


def test_many_classes_are_refused_by_their_probabilities(bundle, tmp_path):
    """6000 classes on one 512² image (tens of GiB of probabilities and smoothing): refused, saying the
    classes are the cause."""
    import dataclasses

    seg = Segmenter.load(bundle)
    k = 6000
    rng = np.random.default_rng(0)
    clf = seg.classifier
    seg.classifier = dataclasses.replace(clf, coef=rng.normal(0, 1, (k, clf.n_features)).astype(np.float32),
                                         intercept=np.zeros(k, np.float32), classes=np.arange(1, k + 1), forest=None)
    seg.training = dataclasses.replace(seg.training, classifier="logistic")
    seg.statistics = None
    path = str(seg.save(tmp_path / "many.dinoseg"))
    result = limited("seg.predict_proba(np.zeros((512, 512), np.uint8))", path)
    refused_quickly(result, "6000 classes take most of it", "fewer classes")


def test_check_plane_memory_counts_classes_channels_and_the_crf():
    base = Segmenter()  # the estimate needs no fitted classifier
    small, large = (plane_memory(base, (2048, 2048), c, n_classes=k).total for c, k in ((1, 2), (3, 2)))
    assert large > small
    assert plane_memory(base, (2048, 2048), 1, n_classes=64).total > plane_memory(base, (2048, 2048), 1, 2).total
    crf = Segmenter(crf=CRFConfig())
    assert plane_memory(crf, (2048, 2048), 1).total > plane_memory(base, (2048, 2048), 1).total
    with pytest.raises(NotEnoughMemory, match=r"2048x2048 image .* GiB") as err:
        check_plane_memory(base, (2048, 2048), available=256 << 20)
    assert isinstance(err.value, ValueError) and isinstance(err.value, MemoryError)
    assert check_plane_memory(base, (64, 64), available=64 * GiB) > 0


def test_the_plane_estimate_is_at_or_above_the_measured_peak(bundle):
    """predict_proba, labels and the shift report of a 1024² plane and of a tiled 1536² one: the estimate
    is above the resident peak measured (by 10 to 60 % here; twice at most, as what the allocator
    reuses varies)."""
    result = limited("""
        from napari_dinoseg.memory import plane_memory
        out = []
        for side in (1024, 1536):
            image = np.random.default_rng(1).integers(0, 255, (side, side), dtype=np.uint8)
            base = reset_peak()
            proba = seg.predict_proba(image)
            seg.check(image, proba)
            labels = seg.to_labels(proba)
            out.append((plane_memory(seg, (side, side), 1).total, peak() - base))
            del proba, labels
        result["pairs"] = out
    """, bundle, headroom=8 * GiB)
    for estimate, peak in result["pairs"]:
        assert peak < estimate < 2 * peak, result


def test_training_that_does_not_fit_is_refused_with_the_estimate():
    image = np.zeros((4096, 4096), np.uint8)
    labels = np.ones((4096, 4096), np.uint8)  # every pixel painted: their features are gathered
    labels[:, 2048:] = 2
    seg = Segmenter()
    with pytest.raises(NotEnoughMemory, match=r"training on 4096x4096 px would need about .* GiB.*painted pixels"):
        check_fit_memory(seg, [image], [labels], seg.features.resolved("cpu"), available=2 * GiB)


def test_file_memory_counts_every_planes_outputs(bundle):
    seg = Segmenter.load(bundle)
    one = file_memory(seg, (512, 512), 1)
    many = file_memory(seg, (512, 512), 100)
    assert many - one == 2 * 99 * 512 * 512  # uint8 labels, kept then stacked
    assert file_memory(seg, (512, 512), 100, probabilities=True) - many == 2 * 100 * 512 * 512 * 4 * 3


def test_available_memory_sees_the_address_space_limit():
    result = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import resource, psutil
        from napari_dinoseg.memory import available_memory
        vms = psutil.Process().memory_info().vms
        resource.setrlimit(resource.RLIMIT_AS, (vms + (512 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
        print(available_memory())
    """)], capture_output=True, text=True, timeout=60)
    assert 0 < int(result.stdout.strip().splitlines()[-1]) < 600 << 20, result.stderr
    assert 0 < available_memory() <= psutil.virtual_memory().available


def test_feature_refusals_blame_the_config_when_even_a_small_image_would_not_fit():
    with pytest.raises(ValueError, match="the feature config is the cause, not the image"):
        check_memory(FeatureConfig(), (64, 64), available=1 << 20)
    with pytest.raises(ValueError, match="crop or downsample the image"):
        check_memory(FeatureConfig(), (8192, 8192), available=1 << 30)


def test_to_labels_in_blocks_equals_the_classifiers_labels(bundle):
    seg = Segmenter.load(bundle)
    proba = np.random.default_rng(0).random((300, 200, 3)).astype(np.float32)
    expected = seg.classifier.to_labels(proba).astype(np.uint8)
    np.testing.assert_array_equal(seg.to_labels(proba), expected)
    chw = np.moveaxis(np.ascontiguousarray(np.moveaxis(proba, -1, 0)), 0, -1)  # channels-first memory
    np.testing.assert_array_equal(seg.to_labels(chw), expected)
    assert seg.to_labels(proba).dtype == np.uint8 and seg.to_labels(proba[0, 0]).shape == ()


# ---- images that are valid, however extreme -------------------------------------------------------

F32 = np.finfo(np.float32).max
F64 = np.finfo(np.float64).max


def extreme(name: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.random((64, 64))
    spikes = rng.random((64, 64)) > 0.99
    return {
        "float32 near +-3.4e38": ((base * 2 - 1) * F32).astype(np.float32),
        "float32 of range 1e-30": (base * 1e-30).astype(np.float32),
        "float32 subnormal": (base * 1e-44).astype(np.float32),
        "float64 near +-1.8e308": (base * 2 - 1) * F64,
        "float64 two values +-max": np.where(base > 0.5, F64, -F64),
        "float64 of range 1e-310": base * 1e-310,
        "float32 narrow range and 3e38 spikes": np.where(spikes, 3e38, base * 1e-30).astype(np.float32),
        "float64 with 1e300 spikes": np.where(spikes, 1e300, base),
    }[name]


EXTREMES = ["float32 near +-3.4e38", "float32 of range 1e-30", "float32 subnormal", "float64 near +-1.8e308",
            "float64 two values +-max", "float64 of range 1e-310", "float32 narrow range and 3e38 spikes",
            "float64 with 1e300 spikes"]


@pytest.mark.parametrize("name", EXTREMES)
@pytest.mark.parametrize("rule", ["percentile", "legacy"])
def test_valid_extreme_float_images_normalise_to_finite_values(name, rule):
    out = as_float_image(extreme(name), FeatureConfig(normalise=rule))
    assert np.isfinite(out).all() and np.abs(out).max() <= MAX_NORMALISED
    assert out.max() > out.min()  # their contrast is kept


@pytest.mark.parametrize("name", ["float64 near +-1.8e308", "float64 of range 1e-310",
                                  "float32 narrow range and 3e38 spikes"])
def test_valid_extreme_float_images_are_segmented_not_called_corrupt(name):
    image = extreme(name)
    labels = np.zeros((64, 64), np.uint8)
    labels[5:9, 5:60], labels[40:44, 5:60] = 1, 2
    seg = Segmenter(FeatureConfig(sigmas=(1.0, 2.0), membrane=False), TrainConfig(n_trees=2)).fit(image, labels)
    proba = seg.predict_proba(image)
    assert np.isfinite(proba).all()
    seg.check(image, proba)


def test_fixed_ranges_beyond_the_float_range_or_near_zero_give_finite_values():
    image = np.linspace(-1, 1, 64 * 64).reshape(64, 64)
    wide = as_float_image(image * 1e308, FeatureConfig(normalise="fixed", intensity_range=(-1e308, 1e308)))
    narrow = as_float_image(image * 1e-310, FeatureConfig(normalise="fixed", intensity_range=(-1e-310, 1e-310)))
    for out in (wide, narrow):
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out[..., 0], (image + 1) / 2, atol=1e-6)


@pytest.mark.parametrize("dtype, word", [("timedelta64[s]", "durations"), ("timedelta64[ns]", "durations"),
                                         ("datetime64[D]", "dates")])
def test_durations_and_dates_are_refused_with_a_clear_message(dtype, word):
    image = np.arange(64 * 64).reshape(64, 64).astype(dtype)
    with pytest.raises(TypeError, match=f"holds {word}, not intensities"):
        as_float_image(image)
    with pytest.raises(TypeError, match=word):
        Segmenter().fit(image, np.ones((64, 64), np.uint8))


# ---- masked arrays ------------------------------------------------------------------------------

def test_masked_pixels_are_left_out_of_the_statistics_and_given_the_minimum():
    rng = np.random.default_rng(0)
    data = rng.normal(100, 10, (64, 64))
    data[:16] = 1e9  # garbage under the mask
    image = np.ma.masked_array(data, mask=np.zeros((64, 64), bool))
    image.mask[:16] = True
    with pytest.warns(UserWarning, match="1024 masked pixel"):
        out = as_float_image(image)
    reference = as_float_image(data[16:])  # the unmasked pixels alone
    np.testing.assert_allclose(out[16:], reference, rtol=1e-6)
    assert np.all(out[:16] == out[16:].min())


def test_a_mask_that_hides_nothing_changes_nothing_and_a_full_mask_is_refused():
    data = np.random.default_rng(0).random((32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(as_float_image(np.ma.masked_array(data)), as_float_image(data))
    with pytest.raises(ValueError, match="no finite value"):
        as_float_image(np.ma.masked_all((32, 32)))


def test_the_segmenter_honours_masks_with_and_without_a_cache():
    from napari_dinoseg.features.featurise import FeatureCache

    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (64, 64)).astype(np.float64)
    labels = np.zeros((64, 64), np.uint8)
    labels[20:24, 5:60], labels[40:44, 5:60] = 1, 2
    seg = Segmenter(FeatureConfig(sigmas=(1.0,), membrane=False), TrainConfig(n_trees=2)).fit(data, labels)
    masked = np.ma.masked_array(data.copy(), mask=np.zeros((64, 64), bool))
    masked.data[:2], masked.mask[:2] = 1e12, True
    cache = FeatureCache()
    with pytest.warns(UserWarning, match="masked pixel"):
        plain = seg.normalise(masked)
    with pytest.warns(UserWarning, match="masked pixel"):
        cached = seg.normalise(masked, cache)
    np.testing.assert_array_equal(plain, cached)
    assert plain.max() < 10  # the garbage under the mask does not reach the normalised plane
    unmasked = seg.normalise(masked.data, cache)  # same data, no mask: another plane
    assert unmasked.max() == MAX_NORMALISED and not np.array_equal(unmasked, cached)


def test_plane_fraction_is_a_fraction():
    assert 0 < PLANE_MEMORY_FRACTION < 1
