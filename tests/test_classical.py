import numpy as np
import pytest
from scipy import ndimage

from napari_dinoseg import Cancelled, FeatureConfig, featurise
from napari_dinoseg.features.classical import classical_channel_names
from napari_dinoseg.features.featurise import n_features
from napari_dinoseg.image import as_float_image


def channel(stack, name):
    return stack.data[..., stack.channel_names.index(name)]


def test_default_bank_has_65_named_channels():
    names = classical_channel_names(FeatureConfig())
    assert len(names) == 65 == n_features(FeatureConfig())
    assert len(set(names)) == 65
    assert names[0] == "intensity" and "dog_s16-s1" in names and names[-1] == "membrane_std"
    assert len(classical_channel_names(FeatureConfig(sigmas=(1, 2), membrane=False))) == 1 + 2 * 10 + 1


def test_shapes_dtype_and_channel_count(rng):
    img = rng.integers(0, 255, (40, 56), dtype=np.uint8)
    stack = featurise(img)
    assert stack.data.shape == (40, 56, 65) and stack.data.dtype == np.float32
    assert stack.shape == (40, 56) and stack.attention is None
    assert np.isfinite(stack.data).all()
    np.testing.assert_allclose(channel(stack, "intensity"), as_unit(img), atol=1e-6)


def test_multichannel_is_featurised_per_channel(rng):
    rgb = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    stack = featurise(rgb, FeatureConfig(sigmas=(1, 2)))
    per = len(classical_channel_names(FeatureConfig(sigmas=(1, 2))))
    assert stack.n_features == 3 * per
    assert stack.channel_names[per] == "c1:intensity"
    single = featurise(rgb[..., 1], FeatureConfig(sigmas=(1, 2)))
    np.testing.assert_allclose(stack.data[..., per:2 * per], single.data, atol=1e-6)


def test_gaussian_of_a_delta_is_the_sampled_gaussian():
    img = np.zeros((65, 65), np.uint8)
    img[32, 32] = 255
    stack = featurise(img, FeatureConfig(sigmas=(2.0,), membrane=False))
    d = np.arange(-8, 9)
    k = np.exp(-(d**2) / (2 * 2.0**2))
    k /= k.sum()
    np.testing.assert_allclose(channel(stack, "gaussian_s2")[24:41, 24:41], np.outer(k, k), atol=1e-7)


@pytest.mark.parametrize("sigma", [1.0, 4.0, 16.0])
def test_gaussian_matches_scipy_reflect_mode(rng, sigma):
    img = rng.random((70, 90)).astype(np.float32)
    stack = featurise(img, FeatureConfig(sigmas=(sigma,), membrane=False))
    ref = ndimage.gaussian_filter(as_unit(img), sigma, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(channel(stack, f"gaussian_s{sigma:g}"), ref, atol=2e-6)


def as_unit(x):
    """The normalised image the filters see (the default rule: 5 / 95 percentiles to 0 / 1)."""
    return as_float_image(x)[..., 0]


def test_sobel_of_a_ramp_is_its_slope():
    ramp = np.tile(np.arange(64, dtype=np.float32), (64, 1))
    slope = 1 / np.diff(np.percentile(ramp, (5, 95)))[0]  # the 5 / 95 percentiles go to 0 / 1
    stack = featurise(ramp, FeatureConfig(sigmas=(1.0,), membrane=False))
    interior = channel(stack, "sobel_s1")[8:-8, 8:-8]
    np.testing.assert_allclose(interior, slope, rtol=1e-4)
    np.testing.assert_allclose(channel(stack, "hessian_trace_s1")[8:-8, 8:-8], 0, atol=1e-6)


def test_hessian_of_a_bright_ridge():
    img = np.zeros((64, 64), np.uint8)
    img[:, 31:33] = 255  # a bright vertical ridge
    stack = featurise(img, FeatureConfig(sigmas=(2.0,), membrane=False))
    on = (slice(16, 48), slice(31, 33))
    assert np.all(channel(stack, "hessian_trace_s2")[on] < 0)  # bright: negative curvature
    assert np.all(channel(stack, "hessian_eig2_s2")[on] < -0.01)  # strong across the ridge
    np.testing.assert_allclose(channel(stack, "hessian_eig1_s2")[on], 0, atol=1e-6)  # flat along it
    assert np.all(channel(stack, "hessian_eig1_s2") >= channel(stack, "hessian_eig2_s2"))
    far = (slice(16, 48), slice(0, 10))
    np.testing.assert_allclose(channel(stack, "hessian_modulus_s2")[far], 0, atol=1e-7)


def test_difference_of_gaussians_is_the_difference():
    img = np.random.default_rng(1).random((48, 48))
    stack = featurise(img, FeatureConfig(sigmas=(1, 4), membrane=False))
    np.testing.assert_allclose(
        channel(stack, "dog_s4-s1"), channel(stack, "gaussian_s4") - channel(stack, "gaussian_s1"), atol=1e-7
    )


def test_membrane_projection_responds_to_a_thin_line():
    img = np.zeros((80, 80), np.uint8)
    rr = np.arange(10, 70)
    img[rr, rr] = 255  # a thin diagonal line
    stack = featurise(img, FeatureConfig(sigmas=(1.0,)))
    mmax, mmean = channel(stack, "membrane_max"), channel(stack, "membrane_mean")
    on, off = mmax[rr[20:40], rr[20:40]], mmax[60:70, 5:15]
    assert on.min() > 0.45  # the diagonal kernel lies along the line (anti-aliased: ~half its weight)
    assert np.all(on > 3 * mmean[rr[20:40], rr[20:40]])  # other orientations cross it at one pixel
    assert off.max() < 1e-6
    assert np.all(mmax >= mmean) and np.all(channel(stack, "membrane_std") >= 0)


def test_images_smaller_than_the_filter_support_still_work():
    img = np.random.default_rng(2).integers(0, 255, (12, 20), dtype=np.uint8)
    stack = featurise(img)  # sigma 16 needs 65 px of support: mirrored padding
    assert stack.data.shape == (12, 20, 65) and np.isfinite(stack.data).all()


def test_progress_is_reported_and_cancellation_stops(rng):
    img = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    calls = []
    featurise(img, progress=lambda d, t, m: calls.append((d, t, m)))
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1] == 6
    assert [c[0] for c in calls] == list(range(7))

    def cancel(done, total, message):
        if done == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        featurise(img, progress=cancel)


def test_featurise_checks_its_input():
    with pytest.raises(TypeError, match="FeatureConfig"):
        featurise(np.zeros((16, 16)), {"kind": "classical"})
    with pytest.raises(ValueError, match="stack"):
        featurise(np.zeros((20, 64, 64)))


def test_missing_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        featurise(np.zeros((16, 16)), FeatureConfig(device="cuda"))


def test_local_std_matches_scipy_and_is_zero_on_flat_regions(rng):
    img = rng.integers(0, 255, (70, 90), dtype=np.uint8)
    img[:, :30] = 250  # flat and bright: float32 cancellation must not leave noise
    stack = featurise(img)
    x = as_unit(img).astype(np.float64)
    for s in (1, 2, 4, 8, 16):
        mean = ndimage.gaussian_filter(x, s, mode="reflect", truncate=4)
        ref = np.sqrt(np.maximum(ndimage.gaussian_filter(x * x, s, mode="reflect", truncate=4) - mean**2, 0))
        got = channel(stack, f"local_std_s{s:g}")
        np.testing.assert_allclose(got, ref, atol=2e-3)
    assert channel(stack, "local_std_s1")[:, :20].max() < 2e-3


def scipy_bank(x, cfg):
    """Every channel of the bank, by name, computed in float64 with scipy.ndimage from its
    definition (``"reflect"`` is scipy's name for the symmetric mirror the bank uses)."""
    import torch

    from napari_dinoseg.features.classical import _line_kernels

    x = x.astype(np.float64)
    bank, blurs = {"intensity": x}, {}
    for s in cfg.sigmas:
        g = blurs[s] = ndimage.gaussian_filter(x, s, mode="reflect", truncate=4.0)
        hxx = ndimage.correlate1d(g, [1, -2, 1], axis=1, mode="reflect")
        hyy = ndimage.correlate1d(g, [1, -2, 1], axis=0, mode="reflect")
        hxy = ndimage.correlate(g, np.array([[1, 0, -1], [0, 0, 0], [-1, 0, 1]]) / 4, mode="reflect")
        trace, root = hxx + hyy, np.sqrt(((hxx - hyy) / 2) ** 2 + hxy**2)
        eig1, eig2 = trace / 2 + root, trace / 2 - root
        sobel = np.hypot(ndimage.sobel(g, axis=1, mode="reflect"), ndimage.sobel(g, axis=0, mode="reflect")) / 8
        variance = ndimage.gaussian_filter(x * x, s, mode="reflect", truncate=4.0) - g * g
        channels = dict(gaussian=g, sobel=sobel, hessian_modulus=np.sqrt(hxx**2 + hyy**2 + 2 * hxy**2),
                        hessian_trace=trace, hessian_det=hxx * hyy - hxy**2, hessian_eig1=eig1, hessian_eig2=eig2,
                        hessian_eigdiff_sq=s**4 * (eig1 - eig2) ** 2, hessian_eigsq_diff=s**2 * (eig1**2 - eig2**2),
                        local_std=np.sqrt(np.maximum(variance, 0)))
        bank.update({f"{name}_s{s:g}": v for name, v in channels.items()})
    for i, a in enumerate(cfg.sigmas):
        bank.update({f"dog_s{b:g}-s{a:g}": blurs[b] - blurs[a] for b in cfg.sigmas[i + 1:]})
    if cfg.membrane:
        lines = _line_kernels(cfg.membrane_size, torch.device("cpu")).double().numpy()
        responses = np.stack([ndimage.correlate(x, line, mode="reflect") for line in lines])
        bank.update(membrane_max=responses.max(0), membrane_min=responses.min(0),
                    membrane_mean=responses.mean(0), membrane_std=responses.std(0))
    return bank


@pytest.mark.parametrize("shape, cfg", [
    ((45, 70), FeatureConfig(sigmas=(1.0, 2.5, 6.0), membrane_size=9)),
    ((33, 200), FeatureConfig(sigmas=(0.7, 3.0))),
    ((12, 20), FeatureConfig(sigmas=(1.0, 2.0, 4.0))),  # smaller than the support: mirrored several times
    ((96, 80), FeatureConfig()),
])
def test_every_channel_matches_a_float64_scipy_reference(rng, shape, cfg):
    """Each channel, found by its name, against its definition: catches a filter written to
    the wrong channel, a shifted tap, a strip or block boundary computed twice or skipped."""
    img = rng.integers(0, 256, shape).astype(np.uint8)
    stack = featurise(img, cfg)
    reference = scipy_bank(as_unit(img), cfg)
    assert list(reference) == [n for n in classical_channel_names(cfg) if n in reference]
    assert set(reference) == set(stack.channel_names)
    for name, ref in reference.items():
        # at sigma >= 8 the Hessian is a second difference of a blur that changes by ~1e-4 per
        # pixel: float32 keeps about 1 % of it
        loose = name.startswith("hessian") and float(name.rsplit("_s", 1)[1]) >= 8
        tol = (3e-2 if loose else 1e-3) * np.abs(ref).max() + 1e-6
        np.testing.assert_allclose(channel(stack, name), ref, rtol=0, atol=tol, err_msg=name)


def test_strips_and_threads_leave_the_bank_unchanged(rng, monkeypatch):
    import torch

    from napari_dinoseg.features import classical

    img = rng.integers(0, 256, (70, 90)).astype(np.uint8)
    cpu = FeatureConfig(device="cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = featurise(img, cpu).data  # in the calling thread, one strip (as on a GPU)
        torch.set_num_threads(3)
        monkeypatch.setattr(classical, "STRIP_ELEMENTS", 8 * 90)  # 70 rows: 8 + ... + 8 + 6
        monkeypatch.setattr(classical, "MEMBRANE_STRIP_ELEMENTS", 3 * 90)  # 3 + ... + 3 + 1
        many = featurise(img, cpu).data  # on three threads, many strips
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(many, one, rtol=0, atol=1e-6)


def test_torch_threads_are_restored_after_a_run_and_after_a_cancel(rng):
    import torch

    img = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    cpu = FeatureConfig(device="cpu")
    threads = torch.get_num_threads()
    featurise(img, cpu)
    assert torch.get_num_threads() == threads

    def cancel(done, total, message):
        if done == 3:
            assert torch.get_num_threads() == 1  # the bank runs its own threads meanwhile
            raise Cancelled()

    with pytest.raises(Cancelled):
        featurise(img, cpu, progress=cancel)
    assert torch.get_num_threads() == threads
