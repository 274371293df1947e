"""Smoothing of class probabilities: the guided filter and the Gaussian."""

import numpy as np
import pytest

from napari_dinoseg.smoothing import GUIDED_EPS, gaussian_smooth, guided_filter, reach


def naive_guided(guide, proba, r, eps):
    """He et al.'s filter written out window by window (interior pixels only, no clipping)."""
    h, w, k = proba.shape
    a = np.zeros((h, w, k))
    b = np.zeros((h, w, k))
    for y in range(r, h - r):
        for x in range(r, w - r):
            g = guide[y - r:y + r + 1, x - r:x + r + 1].ravel()
            p = proba[y - r:y + r + 1, x - r:x + r + 1].reshape(-1, k)
            for c in range(k):  # ridge regression p ~ a g + b in the window
                cov = np.mean(g * p[:, c]) - g.mean() * p[:, c].mean()
                a[y, x, c] = cov / (g.var() + eps)
                b[y, x, c] = p[:, c].mean() - a[y, x, c] * g.mean()
    out = np.full((h, w, k), np.nan)
    for y in range(2 * r, h - 2 * r):
        for x in range(2 * r, w - 2 * r):
            wa = a[y - r:y + r + 1, x - r:x + r + 1].reshape(-1, k).mean(0)
            wb = b[y - r:y + r + 1, x - r:x + r + 1].reshape(-1, k).mean(0)
            out[y, x] = wa * guide[y, x] + wb
    return out


def test_guided_filter_matches_its_definition(rng):
    h, w, k, r = 20, 24, 3, 2
    guide = rng.random((h, w))
    logits = rng.normal(0, 0.3, (h, w, k))  # mild: the fits do not overshoot [0, 1]
    proba = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = naive_guided(guide, proba, r, GUIDED_EPS)
    got = guided_filter(guide, proba.astype(np.float32), r)
    inner = (slice(2 * r, h - 2 * r), slice(2 * r, w - 2 * r))
    assert np.all((expected[inner] > 0) & (expected[inner] < 1))
    np.testing.assert_allclose(got[inner], expected[inner], atol=2e-5)
    assert got.dtype == np.float32 and np.all(np.isfinite(got))


def naive_two_guides(guide, second, proba, r, eps):
    """The filter with two guides written out window by window: a ridge regression of each class's
    probabilities on both guides in every window (interior pixels only, no clipping)."""
    h, w, k = proba.shape
    fits = np.zeros((h, w, k, 3))
    for y in range(r, h - r):
        for x in range(r, w - r):
            window = (slice(y - r, y + r + 1), slice(x - r, x + r + 1))
            g = np.stack([guide[window].ravel(), second[window].ravel()], 1)
            gc = g - g.mean(0)
            p = proba[window].reshape(-1, k)
            slopes = np.linalg.solve(gc.T @ gc / len(g) + eps * np.eye(2), gc.T @ (p - p.mean(0)) / len(g))  # (2, k)
            fits[y, x, :, :2] = slopes.T
            fits[y, x, :, 2] = p.mean(0) - g.mean(0) @ slopes
    out = np.full((h, w, k), np.nan)
    for y in range(2 * r, h - 2 * r):
        for x in range(2 * r, w - 2 * r):
            mean = fits[y - r:y + r + 1, x - r:x + r + 1].reshape(-1, k, 3).mean(0)
            out[y, x] = mean[:, 0] * guide[y, x] + mean[:, 1] * second[y, x] + mean[:, 2]
    return out


def test_two_guides_match_their_definition(rng):
    h, w, k, r = 18, 20, 3, 2
    guide, second = rng.random((h, w)), rng.normal(0, 0.2, (h, w))
    logits = rng.normal(0, 0.3, (h, w, k))
    proba = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = naive_two_guides(guide, second, proba, r, GUIDED_EPS)
    got = guided_filter(guide, proba.astype(np.float32), r, second=second)
    inner = (slice(2 * r, h - 2 * r), slice(2 * r, w - 2 * r))
    assert np.all((expected[inner] > 0) & (expected[inner] < 1))
    np.testing.assert_allclose(got[inner], expected[inner], atol=5e-5)
    np.testing.assert_allclose(got.sum(-1), 1, atol=1e-5)
    assert not np.allclose(got[inner], guided_filter(guide, proba.astype(np.float32), r)[inner], atol=1e-3)


@pytest.mark.parametrize("step, offset", [(1, (0, 0)), (2, (1, 0)), (3, (2, 1))])
def test_probabilities_linear_in_both_guides_come_back_on_every_pixel(step, offset):
    """A blurred disc's probabilities that are a linear function of the blur and its Laplacian (the
    disc sharpened) are kept by the two-guide filter, and not by one guide."""
    from scipy.ndimage import gaussian_filter, gaussian_laplace

    yy, xx = np.mgrid[:40, :44]
    disc = ((yy - 20.0) ** 2 + (xx - 21.0) ** 2 < 8.0**2).astype(float)
    blur, laplacian = gaussian_filter(disc, 2.0), gaussian_laplace(disc, 2.0)
    fg = np.clip(0.5 + 0.3 * (blur - 0.5) - 0.5 * laplacian, 0, 1)
    assert fg.min() > 0 and fg.max() < 1  # not clipped: exactly linear in the two guides
    proba = np.stack([1 - fg, fg], -1).astype(np.float32)
    lattice = proba[offset[0]::step, offset[1]::step]
    both = guided_filter(blur, lattice, 4, eps=1e-7, step=step, offset=offset, second=laplacian)
    one = guided_filter(blur, lattice, 4, eps=1e-7, step=step, offset=offset)
    if step == 1:
        np.testing.assert_allclose(both, proba, atol=1e-4)
    # from a lattice the window fits are interpolated, not exact: still several times closer
    assert np.abs(both - proba).max() < 0.15 * np.abs(one - proba).max()
    assert np.abs(one - proba).max() > 0.015


def test_a_second_guide_of_another_shape_is_refused(rng):
    with pytest.raises(ValueError, match="second guide's shape"):
        guided_filter(rng.random((10, 12)), np.full((10, 12, 2), 0.5, np.float32), 2, second=rng.random((10, 11)))


def fast_reference(guide, proba, r, eps, step, offset):
    """He and Sun's fast guided filter written out: window fits on the lattice (mirrored box means),
    averaged, interpolated linearly along each axis (``np.interp``: constant beyond the ends), applied
    to the full-resolution guide."""
    from scipy.ndimage import uniform_filter

    def box(x):
        return uniform_filter(x, 2 * r + 1, mode="reflect")

    g = guide[offset[0]::step, offset[1]::step]
    out = []
    for c in range(proba.shape[-1]):
        p = proba[..., c].astype(np.float64)
        a = (box(g * p) - box(g) * box(p)) / (box(g * g) - box(g) ** 2 + eps)
        b = box(p) - a * box(g)
        full = []
        for coef in (box(a), box(b)):
            rows_at = offset[0] + step * np.arange(coef.shape[0])
            cols_at = offset[1] + step * np.arange(coef.shape[1])
            cols = np.stack([np.interp(np.arange(guide.shape[1]), cols_at, row) for row in coef])
            full.append(np.stack([np.interp(np.arange(guide.shape[0]), rows_at, col) for col in cols.T], axis=1))
        out.append(full[0] * guide + full[1])
    return np.stack(out, axis=-1)


@pytest.mark.parametrize("shape, step, offset, radius", [((40, 48), 2, (0, 0), 4), ((41, 37), 2, (1, 0), 4),
                                                          ((45, 50), 3, (2, 1), 4), ((33, 30), 3, (0, 2), 2)])
def test_fast_guided_filter_matches_its_definition(rng, shape, step, offset, radius):
    """With probabilities known every ``step`` px from ``offset``, the filter is the fast guided
    filter: fits on the lattice with a window of ``round(radius / step)`` points, interpolated."""
    from napari_dinoseg.smoothing import coarse_radius

    guide = rng.random(shape)
    lattice_shape = (len(range(offset[0], shape[0], step)), len(range(offset[1], shape[1], step)))
    logits = rng.normal(0, 0.3, (*lattice_shape, 3))
    proba = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    got = guided_filter(guide, proba.astype(np.float32), radius, step=step, offset=offset)
    expected = fast_reference(guide, proba, coarse_radius(radius, step), GUIDED_EPS, step, offset)
    assert got.shape == (*shape, 3) and got.dtype == np.float32
    assert np.all((expected > 0) & (expected < 1))  # no clipping: the formula holds everywhere
    np.testing.assert_allclose(got, expected, atol=3e-5)
    with pytest.raises(ValueError, match="lattice"):
        guided_filter(guide, proba[1:], radius, step=step, offset=offset)


def test_guided_filter_removes_rims_on_edges_but_keeps_small_objects():
    """A third class painted on the intensity ramp between two phases (a "rim", confidently
    wrong) goes; a small object of the same class with its own intensity stays; the edge
    itself does not move."""
    h, w = 64, 64
    guide = np.full((h, w), 0.2)
    guide[:, 32:] = 0.8
    guide[:, 31:33] = [0.4, 0.6]  # a 2-px ramp between the phases
    yy, xx = np.mgrid[:h, :w]
    dot = (yy - 16) ** 2 + (xx - 12) ** 2 <= 4  # a small object of intermediate intensity
    guide[dot] = 0.5
    truth = np.where(xx < 32, 0, 1)
    truth[dot] = 2
    proba = np.full((h, w, 3), 0.05)
    proba[..., 0][xx < 31], proba[..., 1][xx >= 33] = 0.9, 0.9
    proba[:, 31:33] = [0.2, 0.2, 0.6]  # the classifier's rim: class 2 on the ramp
    proba[dot] = [0.05, 0.05, 0.9]
    assert np.any(proba.argmax(-1) != truth)
    labels = guided_filter(guide, proba, 4).argmax(-1)
    np.testing.assert_array_equal(labels, truth)  # rim gone, object kept, edge in place
    blurred = gaussian_smooth(proba.astype(np.float32), 4).argmax(-1)
    assert blurred[dot].mean() < 1  # a Gaussian of the same reach erodes the object


def test_guided_filter_keeps_probabilities_and_works_per_plane(rng):
    guide = rng.random((2, 32, 40))
    proba = rng.dirichlet([0.3, 0.3, 0.3], (2, 32, 40)).astype(np.float32)  # peaked: fits overshoot
    out = guided_filter(guide, proba, 3)
    assert out.shape == proba.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out.sum(-1), 1, atol=1e-5)
    for z in range(2):  # each plane alone
        np.testing.assert_allclose(out[z], guided_filter(guide[z], proba[z], 3), atol=1e-6)
    const = np.broadcast_to(np.float32([0.2, 0.3, 0.5]), proba.shape)
    np.testing.assert_allclose(guided_filter(guide, const, 3), const, atol=1e-6)


def test_flat_guide_makes_the_guided_filter_a_box_average(rng):
    from scipy.ndimage import uniform_filter

    proba = rng.dirichlet([1, 1], (30, 30)).astype(np.float32)
    out = guided_filter(np.full((30, 30), 0.4), proba, 2)
    expected = uniform_filter(uniform_filter(proba, (5, 5, 1), mode="reflect"), (5, 5, 1), mode="reflect")
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("radius, sigma, step, expected", [(0, 0, 1, 0), (4, 0, 1, 8), (0, 1.5, 1, 6), (2, 1.0, 1, 8),
                                                           (4, 0, 2, 9), (4, 0, 3, 8), (0, 1.5, 2, 6), (1, 0, 3, 8)])
def test_reach(radius, sigma, step, expected):
    """Window fits averaged over a window (2 windows of coarse radius, in lattice points) plus the
    interpolation between lattice points, plus the Gaussian."""
    assert reach(radius, sigma, step) == expected
