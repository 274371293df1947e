"""Spatial smoothing of per-pixel class probabilities over the image plane.

Two filters, applied by :func:`napari_dinoseg.classify.predict` in this order:

- the **guided filter** (He, Sun and Tang, ECCV 2010 / TPAMI 2013): in every
  ``(2r + 1)²`` window the probabilities of each class are fitted as a linear function of a
  guide image (the lightly blurred intensity), and the fits of all windows covering a pixel
  are averaged. Probabilities are smoothed inside regions of even intensity but not across
  intensity edges, and a class the classifier places on the intensity ramp between two
  regions (a "rim" of a third phase around precipitates, say), which no linear function of
  the intensity in the window can follow, is removed;
- a Gaussian of standard deviation ``sigma`` (not edge-aware).

Both work per plane on ``(..., H, W, K)`` probabilities, and both keep each pixel's
probabilities summing to 1.

The guided filter may take a second guide, the Laplacian of the blurred intensity (3-D features
only): the fits are then linear in both (He, Sun and Tang's multi-channel guide), and a linear
combination of a blur and its Laplacian is the blur sharpened, so the smoothed probabilities can
follow a boundary where the sharpened guide puts it rather than where one level of the blur does
(curved boundaries in blurred, noisy volumes: see ``docs/volumes.md``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

#: Regularisation of the guided filter, in squared guide-intensity units (guides in [0, 1]):
#: windows whose guide varies less than this (standard deviation 0.01) are simply averaged.
GUIDED_EPS = 1e-4
#: The Gaussian smoothing reaches this many standard deviations.
GAUSSIAN_TRUNCATE = 4.0


def reach(radius: int, sigma: float, step: int = 1) -> int:
    """Pixels of context the guided filter of ``radius`` on probabilities predicted every ``step``
    px (:func:`guided_filter`), followed by a Gaussian of ``sigma``, reads."""
    gaussian = int(np.ceil(GAUSSIAN_TRUNCATE * sigma)) if sigma > 0 else 0
    if radius <= 0:
        return gaussian
    # the filter averages window fits over a window, then interpolates between lattice points
    return 2 * step * coarse_radius(radius, step) + step - 1 + gaussian


def coarse_radius(radius: int, step: int) -> int:
    """The guided filter's window radius in lattice points when probabilities are known every ``step`` px."""
    return max(1, round(radius / step)) if radius > 0 else 0


def guided_filter(guide: np.ndarray, proba: np.ndarray, radius: int, eps: float = GUIDED_EPS,
                  step: int = 1, offset: tuple[int, int] = (0, 0), second: Optional[np.ndarray] = None) -> np.ndarray:
    """Edge-preserving smoothing of ``proba`` steered by ``guide``.

    With ``step > 1`` the probabilities are known only on a lattice (every ``step``-th pixel of
    each row and column, from ``offset``): the window fits are computed on the lattice, with the
    guide sampled there and a window of :func:`coarse_radius` lattice points, interpolated
    bilinearly to every pixel and applied to the full-resolution guide (He and Sun's "fast guided
    filter", 2015), so edges still follow the guide pixel by pixel.

    Parameters
    ----------
    guide : (..., H, W) float array
        Guide image, intensities of order [0, 1].
    proba : (..., h, w, K) float array
        Class probabilities at pixels ``(offset[0] + step i, offset[1] + step j)``: the whole
        ``(H, W)`` plane when ``step == 1``.
    radius
        Window radius (px); windows are ``(2 radius + 1)²``, mirrored at the borders.
    eps
        Regularisation (see ``GUIDED_EPS``).
    step, offset
        The lattice of ``proba`` (``0 <= offset < step``).
    second : (..., H, W) float array, optional
        A second guide (the Laplacian of ``guide``): each window's fit is then linear in both
        guides, regularised by ``eps`` on each (``None``: in ``guide`` alone, the classic filter).

    Returns
    -------
    (..., H, W, K) float32 probabilities in [0, 1], summing to 1 over the last axis.
    """
    g = _centred(guide)
    lattice = g[..., offset[0]::step, offset[1]::step]
    if lattice.shape != proba.shape[:-1]:
        raise ValueError(f"probabilities of shape {proba.shape} are not those of a {guide.shape} guide's "
                         f"lattice of step {step} from {offset}")
    if second is not None and np.shape(second) != guide.shape:
        raise ValueError(f"the second guide's shape {np.shape(second)} is not the guide's {guide.shape}")
    k = proba.shape[-1]
    r = coarse_radius(radius, step)
    # every output is linear in p, and the K probabilities sum to 1, so the filtered ones do
    # too: filter K - 1 of them, the last is 1 - their sum
    p = np.moveaxis(proba[..., : k - 1], -1, 0).astype(np.float32, order="C")  # (K-1, ..., h, w)
    if second is None:
        fits, guides = _fits_one(lattice, p, r, eps), [g]
    else:
        l2 = _centred(second)
        fits, guides = _fits_two(lattice, l2[..., offset[0]::step, offset[1]::step], p, r, eps), [g, l2]
    box_fits = _box(fits, r)  # (n_guides + 1) (K - 1) planes: the slopes on each guide, then the offsets
    if step > 1:
        box_fits = _upsampled(box_fits, g.shape[-2:], step, offset)
    *box_slopes, box_b = np.split(box_fits, len(guides) + 1)
    out = np.empty((k, *g.shape), np.float32)
    np.multiply(box_slopes[0], guides[0], out=out[: k - 1])
    for slope, other in zip(box_slopes[1:], guides[1:]):
        out[: k - 1] += slope * other
    out[: k - 1] += box_b
    out[k - 1] = 1 - out[: k - 1].sum(axis=0)
    return np.moveaxis(_renormalised(out, axis=0), 0, -1)


def _centred(guide: np.ndarray) -> np.ndarray:
    """A float32 copy of ``guide`` less its mean: the variances of the fits lose no precision in float32."""
    g = guide.astype(np.float32)
    g -= g.mean()
    return g


def _fits_one(g: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Each window's least-squares fit ``p ~ a g + b`` (ridge ``eps`` on ``a``).

    ``g``: the guide on the lattice, ``(..., h, w)`` float32; ``p``: ``(K-1, ..., h, w)``.
    Returns ``(2 (K-1), ..., h, w)`` float32: ``a`` of every class, then ``b``.
    """
    mean_g, mean_gg = _box(np.stack([g, g * g]), r)
    var_g = mean_gg - mean_g * mean_g
    mean_p, mean_gp = np.split(_box(np.concatenate([p, g * p]), r), 2)
    a = mean_gp - mean_g * mean_p
    a /= np.maximum(var_g, 0) + np.float32(eps)
    b = mean_p - a * mean_g
    return np.concatenate([a, b])


def _fits_two(g: np.ndarray, l: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Each window's least-squares fit ``p ~ a g + c l + b`` (ridge ``eps`` on ``a`` and ``c``).

    ``g``, ``l``: the two guides on the lattice, ``(..., h, w)`` float32; ``p``: ``(K-1, ..., h, w)``.
    Returns ``(3 (K-1), ..., h, w)`` float32: ``a`` of every class, then ``c``, then ``b``.
    """
    mean_g, mean_l, mean_gg, mean_gl, mean_ll = _box(np.stack([g, l, g * g, g * l, l * l]), r)
    var_g = np.maximum(mean_gg - mean_g * mean_g, 0) + np.float32(eps)
    var_l = np.maximum(mean_ll - mean_l * mean_l, 0) + np.float32(eps)
    cov_gl = mean_gl - mean_g * mean_l
    det = var_g * var_l - cov_gl * cov_gl  # > 0: the ridge makes the 2 x 2 covariance positive definite
    mean_p, mean_gp, mean_lp = np.split(_box(np.concatenate([p, g * p, l * p]), r), 3)
    cov_gp = mean_gp - mean_g * mean_p
    cov_lp = mean_lp - mean_l * mean_p
    a = (var_l * cov_gp - cov_gl * cov_lp) / det
    c = (var_g * cov_lp - cov_gl * cov_gp) / det
    b = mean_p - a * mean_g - c * mean_l
    return np.concatenate([a, c, b])


def _upsampled(planes: np.ndarray, shape: tuple[int, int], step: int, offset: tuple[int, int]) -> np.ndarray:
    """``(P, ..., h, w)`` values on the lattice ``offset + step * index`` -> ``(P, ..., H, W)``
    C-contiguous, bilinear between lattice points (constant beyond the outermost ones)."""
    import torch

    values = torch.from_numpy(np.ascontiguousarray(planes, np.float32))
    rows = _lerp_axis(values, shape[0], step, offset[0], values.ndim - 2)
    return _lerp_axis(rows, shape[1], step, offset[1], values.ndim - 1).numpy()


def _lerp_axis(values, n: int, step: int, offset: int, dim: int):
    """Linear interpolation of a torch tensor along ``dim`` from lattice points ``offset + step * i``
    to ``range(n)``: one strided slice of the (contiguous) output per phase, no gather."""
    import torch

    m = values.shape[dim]
    shape = list(values.shape)
    shape[dim] = n
    out = torch.empty(shape, dtype=torch.float32)

    def fill(target, row: int) -> None:  # every pixel of ``target`` takes lattice point ``row``
        target.copy_(values.narrow(dim, row, 1).expand_as(target))

    fill(out.narrow(dim, 0, min(offset, n)), 0)  # before the first lattice point
    every_step = (slice(None),) * dim + (slice(None, None, step),)
    for phase in range(step):
        if offset + phase >= n:
            break
        pixels = out.narrow(dim, offset + phase, n - offset - phase)[every_step]  # offset + step * i + phase
        count = pixels.shape[dim]
        inner = count if phase == 0 else min(count, m - 1)  # pixels with a lattice point on each side
        if phase == 0:
            pixels.copy_(values.narrow(dim, 0, count))
        elif inner > 0:
            pixels.narrow(dim, 0, inner).copy_(
                torch.lerp(values.narrow(dim, 0, inner), values.narrow(dim, 1, inner), phase / step))
        if count > inner:  # beyond the last lattice point
            fill(pixels.narrow(dim, inner, count - inner), m - 1)
    return out


def _box(planes: np.ndarray, radius: int) -> np.ndarray:
    """``(P, ..., H, W)`` float32 -> the mean over each ``(2 radius + 1)²`` window of every
    ``(H, W)`` plane (mirrored borders), planes filtered on parallel threads (scipy releases the GIL)."""
    from scipy.ndimage import uniform_filter1d

    from .parallel import map_threads

    size = 2 * radius + 1
    flat = planes.reshape(-1, *planes.shape[-2:])
    out = np.empty_like(flat)

    def one(i: int) -> None:
        uniform_filter1d(flat[i], size, axis=-1, mode="reflect", output=out[i])
        uniform_filter1d(out[i], size, axis=-2, mode="reflect", output=out[i])

    map_threads(one, range(len(flat)))
    return out.reshape(planes.shape)


def gaussian_smooth(proba: np.ndarray, sigma: float) -> np.ndarray:
    """``(..., H, W, K)`` probabilities blurred by a Gaussian of ``sigma`` px over each ``(H, W)`` plane."""
    from scipy.ndimage import gaussian_filter

    sigmas = (0,) * (proba.ndim - 3) + (sigma, sigma, 0)
    return gaussian_filter(proba, sigmas, mode="reflect", truncate=GAUSSIAN_TRUNCATE, output=np.float32)


def _renormalised(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Clip to [0, 1] and rescale to sum 1 over ``axis``: the linear fits may overshoot at strong edges."""
    np.clip(p, 0, 1, out=p)
    p /= np.maximum(p.sum(axis=axis, keepdims=True), np.float32(1e-12))
    return p

