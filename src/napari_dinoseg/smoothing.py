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
"""

from __future__ import annotations

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
                  step: int = 1, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
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

    Returns
    -------
    (..., H, W, K) float32 probabilities in [0, 1], summing to 1 over the last axis.
    """
    g = guide.astype(np.float32)  # a copy: centred in place below
    g -= g.mean()  # centred: the variances below lose no precision in float32
    lattice = g[..., offset[0]::step, offset[1]::step]
    if lattice.shape != proba.shape[:-1]:
        raise ValueError(f"probabilities of shape {proba.shape} are not those of a {guide.shape} guide's "
                         f"lattice of step {step} from {offset}")
    k = proba.shape[-1]
    r = coarse_radius(radius, step)
    # every output is linear in p, and the K probabilities sum to 1, so the filtered ones do
    # too: filter K - 1 of them, the last is 1 - their sum
    p = np.moveaxis(proba[..., : k - 1], -1, 0).astype(np.float32)  # (K-1, ..., h, w)
    mean_g, mean_gg = _box(np.stack([lattice, lattice * lattice]), r)
    var_g = mean_gg - mean_g * mean_g
    mean_p, mean_gp = np.split(_box(np.concatenate([p, lattice * p]), r), 2)
    a = mean_gp - mean_g * mean_p
    a /= np.maximum(var_g, 0) + np.float32(eps)
    b = mean_p - a * mean_g
    box_ab = _box(np.concatenate([a, b]), r)
    if step > 1:
        box_ab = _upsampled(box_ab, g.shape[-2:], step, offset)
    box_a, box_b = np.split(box_ab, 2)
    out = np.empty((k, *g.shape), np.float32)
    np.multiply(box_a, g, out=out[: k - 1])
    out[: k - 1] += box_b
    out[k - 1] = 1 - out[: k - 1].sum(axis=0)
    return np.moveaxis(_renormalised(out, axis=0), 0, -1)


def _upsampled(planes: np.ndarray, shape: tuple[int, int], step: int, offset: tuple[int, int]) -> np.ndarray:
    """``(P, ..., h, w)`` values on the lattice ``offset + step * index`` -> ``(P, ..., H, W)``,
    bilinear between lattice points (constant beyond the outermost ones)."""
    rows = _lerp_axis(planes, shape[0], step, offset[0], axis=-2)
    return _lerp_axis(rows, shape[1], step, offset[1], axis=-1)


def _lerp_axis(values: np.ndarray, n: int, step: int, offset: int, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis`` from lattice points ``offset + step * i`` to ``range(n)``:
    one strided slice per phase, no gather."""
    v = np.moveaxis(values, axis, 0)
    m = v.shape[0]
    out = np.empty((n, *v.shape[1:]), np.float32)
    out[:offset] = v[0]  # before the first lattice point
    for phase in range(step):
        rows = out[offset + phase::step]  # pixels offset + step * i + phase, i = 0 .. len(rows) - 1
        count = len(rows)
        if count == 0:
            continue
        w = np.float32(phase / step)
        lower = v[:count]
        upper = v[np.minimum(np.arange(1, count + 1), m - 1)] if count >= m else v[1:count + 1]
        if phase == 0 or m == 1:
            rows[...] = lower
        else:
            np.multiply(lower, 1 - w, out=rows)
            rows += w * upper
    return np.moveaxis(out, 0, axis)


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

