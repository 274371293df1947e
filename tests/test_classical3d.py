"""The 3-D classical filter bank: every channel against a float64 scipy / numpy reference, blocks
against the whole volume, voxel spacing, the eigenvalue solver, array-likes and cancelling."""

import math
from itertools import combinations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_dinoseg import Cancelled, FeatureConfig
from napari_dinoseg.features.classical3d import (
    _hessian,
    block_grid,
    classical3d_channel_names,
    classical_features_3d,
    halo_3d,
    read_block,
    scaled_sigmas,
    volume_features_3d,
)


def reference_bank(volume, sigmas, spacing):
    """The bank in float64 from scipy's Gaussian (reflect mode, the bank's radius), central
    differences of the blur mirrored by a voxel, and numpy's eigvalsh."""
    v = volume.astype(np.float64)
    step = np.asarray(spacing, float) / min(spacing)
    inner = (slice(1, -1),) * 3
    channels, blurs = [v], []
    for s in sigmas:
        per_axis = [s / u for u in step]
        sigma = [a if a >= 0.3 else 0.0 for a in per_axis]  # scipy skips an axis of sigma 0
        radius = [math.ceil(4 * a) if a >= 0.3 else 0 for a in per_axis]
        g = ndimage.gaussian_filter(v, sigma, mode="reflect", radius=radius)
        g2 = ndimage.gaussian_filter(v**2, sigma, mode="reflect", radius=radius)
        gp = np.pad(g, 1, mode="symmetric")
        gradient = [np.gradient(gp, axis=a)[inner] / step[a] for a in range(3)]
        hessian = np.empty(v.shape + (3, 3))
        for a in range(3):
            up, down = list(inner), list(inner)
            up[a], down[a] = slice(2, None), slice(None, -2)
            hessian[..., a, a] = (gp[tuple(up)] + gp[tuple(down)] - 2 * g) / step[a] ** 2
        for a, b in combinations(range(3), 2):
            mixed = np.gradient(np.gradient(gp, axis=a), axis=b)[inner] / (step[a] * step[b])
            hessian[..., a, b] = hessian[..., b, a] = mixed
        eig = np.linalg.eigvalsh(hessian)[..., ::-1]
        channels += [g, np.sqrt(sum(d**2 for d in gradient)), eig[..., 0], eig[..., 1], eig[..., 2],
                     np.trace(hessian, axis1=-2, axis2=-1), np.linalg.det(hessian),
                     np.sqrt((hessian**2).sum((-2, -1))), np.sqrt(np.clip(g2 - g**2, 0, None))]
        blurs.append(g)
    channels += [blurs[j] - blurs[i] for i, j in combinations(range(len(sigmas)), 2)]
    return np.stack(channels, -1)


@pytest.fixture
def structured(rng):
    """(14, 19, 23) float32: noise, a Gaussian blob, a bright sheet (y = 4) and a tube along y:
    Hessians of every sign pattern, with repeated eigenvalues on the blob and the tube."""
    z, y, x = np.mgrid[:14, :19, :23].astype(float)
    volume = 0.3 * rng.random(z.shape)
    volume += np.exp(-((z - 7) ** 2 + (y - 9) ** 2 + (x - 11) ** 2) / 8)
    volume += 0.5 * (np.abs(y - 4) < 1.5)
    volume += 0.5 * ((z - 3) ** 2 + (x - 18) ** 2 < 3)
    return volume.astype(np.float32)


def test_default_bank_has_56_named_channels():
    names = classical3d_channel_names(FeatureConfig())
    assert len(names) == 56 == len(set(names)) == 1 + 5 * 9 + 10
    assert names[:3] == ["intensity", "gaussian_s1", "gradient_s1"] and names[-1] == "dog_s16-s8"
    assert classical3d_channel_names(FeatureConfig(membrane=False)) == names  # no membrane projections in 3-D
    assert len(classical3d_channel_names(FeatureConfig(sigmas=(2.0,)))) == 10


@pytest.mark.parametrize("sigmas, spacing", [((1.0, 2.0), (1, 1, 1)), ((0.5, 2.5), (2, 1, 1.5)), ((1.0,), (5, 1, 1))])
def test_every_channel_matches_the_float64_reference(structured, sigmas, spacing):
    cfg = FeatureConfig(sigmas=sigmas)
    got = volume_features_3d(structured, cfg, spacing)
    want = reference_bank(structured, sigmas, spacing)
    names = classical3d_channel_names(cfg)
    assert got.shape == want.shape == (*structured.shape, len(names)) and got.dtype == np.float32
    for i, name in enumerate(names):
        # float32 blurs of values up to ~1.5 are good to ~2e-7; differences of them to ~1e-6;
        # a determinant is a product of three Hessian entries: relative to its own range
        atol = 1e-4 * np.abs(want[..., i]).max() if name.startswith("hessian_det") else 5e-6
        np.testing.assert_allclose(got[..., i], want[..., i], rtol=0, atol=atol, err_msg=name)


def test_no_blur_along_an_axis_whose_sigma_is_under_a_third_of_a_voxel(structured):
    cfg = FeatureConfig(sigmas=(1.0,))
    assert halo_3d(cfg, (5, 1, 1)) == (1, 5, 5)  # sigma_z = 0.2 voxel: a kernel of [1]
    got = volume_features_3d(structured, cfg, (5, 1, 1))[..., 1]
    want = ndimage.gaussian_filter(structured.astype(np.float64), (0, 1, 1), mode="reflect", radius=(0, 4, 4))
    np.testing.assert_allclose(got, want, atol=3e-7)


def test_blocks_read_with_their_halo_equal_the_whole_volume(structured):
    cfg, spacing = FeatureConfig(sigmas=(1.0, 3.0)), (2, 1, 1)
    halo = halo_3d(cfg, spacing)
    whole = volume_features_3d(structured, cfg, spacing)
    grid = block_grid(structured.shape, (5, 8, 10))  # divides none of (14, 19, 23)
    assert len(grid) == 27 and grid[-1] == (slice(10, 14), slice(16, 19), slice(20, 23))
    got = np.full_like(whole, np.nan)
    for core in grid:
        block = read_block(structured, core, halo)
        assert block.shape == tuple(s.stop - s.start + 2 * h for s, h in zip(core, halo))
        got[core] = classical_features_3d(block, cfg, spacing, halo)
    np.testing.assert_allclose(got, whole, rtol=0, atol=2e-6)
    # more context than needed is skipped; out is filled and returned
    core, wider = grid[13], tuple(h + 2 for h in halo)
    out = np.full(whole[core].shape, np.nan, np.float32)
    assert classical_features_3d(read_block(structured, core, wider), cfg, spacing, wider, out=out) is out
    np.testing.assert_allclose(out, whole[core], rtol=0, atol=2e-6)


def test_block_grid_tiles_the_shape_once():
    grid = block_grid((5, 7, 3), (2, 4, 3))
    cover = np.zeros((5, 7, 3), int)
    for core in grid:
        cover[core] += 1
    assert len(grid) == 3 * 2 * 1 and np.all(cover == 1)
    with pytest.raises(ValueError, match="block"):
        block_grid((5, 7, 3), (0, 4, 4))


@pytest.mark.parametrize("halo", [(0, 0, 0), (1, 2, 3), (7, 2, 9)])
def test_read_block_mirrors_as_numpy_pads_symmetric(rng, halo):
    volume = rng.random((3, 5, 4)).astype(np.float32)  # halos longer than the axes reflect again
    padded = np.pad(volume, [(h, h) for h in halo], mode="symmetric")
    for core in block_grid(volume.shape, (2, 2, 3)):
        window = tuple(slice(s.start, s.stop + 2 * h) for s, h in zip(core, halo))
        block = read_block(volume, core, halo)
        assert block.dtype == np.float32 and block.flags.c_contiguous
        np.testing.assert_array_equal(block, padded[window])


def test_read_block_reads_zarr_and_dask_arrays(tmp_path, rng):
    zarr = pytest.importorskip("zarr")
    da = pytest.importorskip("dask.array")
    volume = rng.random((9, 12, 10)).astype(np.float32)
    stored = zarr.open_array(store=tmp_path / "volume.zarr", mode="w", shape=volume.shape, chunks=(4, 5, 5),
                             dtype="float32")
    stored[:] = volume
    lazy = da.from_array(volume, chunks=(4, 4, 4))
    halo = (3, 2, 4)
    for core in [(slice(0, 4), slice(5, 12), slice(3, 6)), (slice(5, 9), slice(0, 12), slice(0, 10))]:
        want = read_block(volume, core, halo)
        np.testing.assert_array_equal(read_block(stored, core, halo), want)
        np.testing.assert_array_equal(read_block(lazy, core, halo), want)


def test_scaled_sigmas_are_in_voxels_of_the_finest_axis():
    assert scaled_sigmas(2.0, (2, 1, 1)) == (1.0, 2.0, 2.0)
    assert scaled_sigmas(3.0, (0.5, 1.0, 1.5)) == pytest.approx((3.0, 1.5, 1.0))
    assert scaled_sigmas(1.0, (0.3, 0.3, 0.3)) == (1.0, 1.0, 1.0)  # only ratios matter
    cfg = FeatureConfig(sigmas=(1.0, 4.0))
    assert halo_3d(cfg) == (17, 17, 17)  # radius ceil(4 sigma), plus a voxel for the derivatives
    assert halo_3d(cfg, (4, 1, 1)) == (5, 17, 17)
    for bad in [(1, 1), (0, 1, 1), (-1, 1, 1), (float("nan"), 1, 1), "abc"]:
        with pytest.raises(ValueError, match="spacing"):
            scaled_sigmas(1.0, bad)


def test_an_anisotropic_volume_gives_the_features_of_the_isotropic_one():
    """Every 2nd slice of a smooth isotropic volume, spacing (2, 1, 1), against the isotropic
    volume's features at those slices, away from the Z borders (the two are mirrored about
    different planes there). The blobs are 6-7 voxels wide: the Gaussians then agree to 1e-5,
    and central differences of step 2 and 1 differ by up to 2 % (their errors are about
    h**2 f''' / 6), so each channel is compared to 3 % of its range; the same slices read as
    isotropic differ by 7 % (the blurs) to 240 % (the Hessian's determinant)."""
    z, y, x = np.mgrid[:48, :24, :24].astype(float)
    volume = (0.2 + np.exp(-((z - 22) ** 2 + (y - 11) ** 2 + (x - 13) ** 2) / (2 * 7.0**2))
              + 0.3 * np.exp(-((z - 28) ** 2 / 2 + (y - 16) ** 2 + (x - 6) ** 2) / (2 * 6.0**2))).astype(np.float32)
    cfg = FeatureConfig(sigmas=(2.0, 3.0))
    iso = volume_features_3d(volume, cfg)[14:34:2]
    aniso = volume_features_3d(volume[::2], cfg, (2, 1, 1))[7:17]
    naive = volume_features_3d(volume[::2], cfg)[7:17]
    for i, name in enumerate(classical3d_channel_names(cfg)):
        scale = np.abs(iso[..., i]).max()
        assert np.abs(aniso[..., i] - iso[..., i]).max() < 0.03 * scale, name
        if name.startswith(("hessian", "gradient", "local_std", "dog")):
            assert np.abs(naive[..., i] - iso[..., i]).max() > 0.1 * scale, name


def _solve(matrices):
    """Eigenvalues, trace, determinant and modulus of ``(N, 3, 3)`` matrices, in float32."""
    m = torch.from_numpy(matrices.astype(np.float32))
    entries = [m[:, i, j].clone() for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))]
    out = torch.empty(6, len(matrices))
    _hessian(*entries, out)
    return out.T.numpy()


def test_eigenvalues_and_invariants_of_random_symmetric_matrices(rng):
    a = rng.normal(size=(2000, 3, 3))
    a = (a + a.transpose(0, 2, 1)) * rng.uniform(1e-6, 1e3, (2000, 1, 1))
    got = _solve(a)
    scale = np.abs(a).max((1, 2))
    assert np.all(got[:, 0] >= got[:, 1]) and np.all(got[:, 1] >= got[:, 2])
    assert np.all(np.abs(got[:, :3] - np.linalg.eigvalsh(a)[:, ::-1]) < 5e-5 * scale[:, None])
    np.testing.assert_allclose(got[:, 3], np.trace(a, axis1=1, axis2=2), rtol=0, atol=1e-6 * scale.max())
    assert np.all(np.abs(got[:, 4] - np.linalg.det(a)) < 1e-5 * scale**3)
    np.testing.assert_allclose(got[:, 5], np.sqrt((a**2).sum((1, 2))), rtol=1e-5)


@pytest.mark.parametrize("diagonal", [(1, 1, 2), (2, 1, 1), (1, 1, 1), (0, 0, 0), (-3, -3, -3), (1e-3, 1e-3, -5),
                                      (3, 3, 3 + 1e-4), (-1, 0, 1)])
def test_eigenvalues_with_repeated_roots(rng, diagonal):
    q, _ = np.linalg.qr(rng.normal(size=(500, 3, 3)))  # random rotations (and reflections)
    a = q @ np.diag(diagonal).astype(float) @ q.transpose(0, 2, 1)
    got = _solve(a)[:, :3]
    assert np.isfinite(got).all() and np.all(got[:, :-1] >= got[:, 1:])
    # acos is ill-conditioned where two roots meet: ~sqrt(float32 eps) of the scale
    np.testing.assert_allclose(got, np.broadcast_to(sorted(diagonal, reverse=True), got.shape), rtol=0,
                               atol=1e-3 * max(np.abs(diagonal).max(), 1e-30))


@pytest.mark.parametrize("threads", [1, 2])  # here, or on a pool of two threads
def test_step_reports_each_sigma_and_raising_cancels(structured, threads):
    cfg = FeatureConfig(sigmas=(1.0, 2.0, 4.0))
    messages, calls = [], []

    def cancel(message):
        calls.append(message)
        raise Cancelled

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        volume_features_3d(structured, cfg, step=messages.append)
        with pytest.raises(Cancelled):
            volume_features_3d(structured, cfg, step=cancel)
        assert torch.get_num_threads() == threads  # restored after the cancel
    finally:
        torch.set_num_threads(before)
    assert sorted(messages) == sorted(["sigma 1", "sigma 2", "sigma 4", "derived channels"])
    assert len(calls) == 1


def test_bad_blocks_and_halos_are_refused(structured):
    cfg = FeatureConfig(sigmas=(1.0, 2.0))
    with pytest.raises(ValueError, match="halo"):
        classical_features_3d(structured, cfg, halo=(1, 1, 1))
    with pytest.raises(ValueError, match="no core"):
        classical_features_3d(structured, cfg, halo=(9, 9, 9))
    with pytest.raises(ValueError, match="block"):
        classical_features_3d(structured[0], cfg)
    with pytest.raises(ValueError, match="out must be"):
        classical_features_3d(structured, FeatureConfig(sigmas=(1.0,)), out=np.empty((4, 9, 13, 10)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(structured):
    cfg = FeatureConfig(sigmas=(1.0, 2.0))
    np.testing.assert_allclose(volume_features_3d(structured, cfg, device="cuda"),
                               volume_features_3d(structured, cfg), rtol=0, atol=2e-5)
