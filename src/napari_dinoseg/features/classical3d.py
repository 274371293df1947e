"""The classical filter bank of volumes: 3-D analogues of :mod:`.classical`'s filters, in torch.

Channels, per volume channel, in this order (:func:`classical3d_channel_names` names them): the
intensity; for every sigma of ``cfg.sigmas`` the Gaussian blur ``G``, the gradient magnitude of
``G`` (central differences), the eigenvalues ``eig1 >= eig2 >= eig3`` (closed form), trace (the
Laplacian), determinant and Frobenius modulus of the Hessian of ``G`` (second differences), and
the Gaussian-weighted local standard deviation ``sqrt(G(x**2) - G(x)**2)``; then the differences
of Gaussians ``G(sigma_j) - G(sigma_i)`` for every pair ``i < j``. The default sigmas (1, 2, 4,
8, 16) give ``1 + 5 * 9 + 10 = 56`` channels. Membrane projections are a 2-D filter (line
kernels in the image plane): this bank has none, and reads ``cfg.sigmas`` only (``membrane``
and ``membrane_size`` are ignored).

Spacing: voxels are ``spacing = (dz, dy, dx)`` apart (any unit; only ratios matter). Sigmas are
in voxels of the finest axis, as Labkit scales them: along axis ``a`` the Gaussian has ``sigma *
min(spacing) / spacing[a]`` voxels (:func:`scaled_sigmas`), with :mod:`.classical`'s kernel (a
normalised sampled Gaussian reaching ``TRUNCATE * sigma``); under ``MIN_AXIS_SIGMA`` voxel an
axis is not blurred (a kernel of ``[1]``). Derivatives are in units of the finest axis too: a
difference along axis ``a`` is divided by ``spacing[a] / min(spacing)`` per order. A volume and
the same volume resampled isotropically thus give the same features, up to the sampling's error.

Blocks: the bank computes a core of ``(Z, Y, X)`` voxels from a block holding :func:`halo_3d`
voxels of context on each side (the largest kernel radius plus 1 for the derivatives), mirrored
as numpy's ``"symmetric"`` pad where the block passes the volume's border (:func:`read_block`
reads one from any array-like, :func:`block_grid` tiles a volume). Every convolution is in
"valid" mode, so a block's features equal the whole volume's in its core (to float32 rounding).
First, per sigma, the blur and the blur of the centred square: a Z pass over the halo'd extent
(the square taken a Y row at a time), then Y, then X, each a banded-matrix product (:func:`_band`)
into a smaller buffer, stored Y-major. Then the channels derived from them, a strip of Y rows at
a time: each channel into a ``(Z, F, rows, X)`` strip buffer (in cache), then the strip copied
into the ``(Z, Y, X, F)`` output once. Blurs run one a thread and strips one a thread on
:mod:`.classical`'s pool (torch's intra-op threads at one meanwhile).

Memory (:func:`working_bytes_3d`), besides the output and the block: the blurs (two core-sized
buffers per sigma, a fraction ``2 S / F`` of the output for ``S`` sigmas and ``F`` channels),
while they are computed a Z and a Y pass of at most the halo'd block's size for each running
thread, then a strip buffer and its temporaries per thread. Never channels times the block.
"""

from __future__ import annotations

import math
from functools import partial
from itertools import combinations
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..config import FeatureConfig
from .classical import _bank_threads, _empty, _gaussian_kernel, _notify, _radius, _run, _toeplitz

#: An axis whose scaled sigma is below this many voxels is not blurred (a kernel of ``[1]``).
MIN_AXIS_SIGMA = 0.3
#: Voxels per strip of the derived channels (whole Y rows, at least one), on a CPU: a strip's
#: temporaries then stay in cache; on other devices, ``DEVICE_STRIP_VOXELS``.
STRIP_VOXELS = 2**15
DEVICE_STRIP_VOXELS = 2**20

_PER_SIGMA_3D = ("gaussian", "gradient", "hessian_eig1", "hessian_eig2", "hessian_eig3", "hessian_trace",
                 "hessian_det", "hessian_modulus", "local_std")

Spacing = Sequence[float]
Device = Union[str, torch.device, None]
Step = Optional[Callable[[str], None]]


def classical3d_channel_names(cfg: FeatureConfig) -> list[str]:
    """Names of the ``1 + 9 S + S (S - 1) / 2`` channels one volume channel gives for ``S``
    sigmas (``cfg.sigmas``), in output order."""
    per_sigma = [f"{n}_s{s:g}" for s in cfg.sigmas for n in _PER_SIGMA_3D]
    return ["intensity", *per_sigma, *(f"dog_s{b:g}-s{a:g}" for a, b in combinations(cfg.sigmas, 2))]


def scaled_sigmas(sigma: float, spacing: Spacing) -> tuple[float, float, float]:
    """``(sigma_z, sigma_y, sigma_x)``, each in voxels of its axis, of a Gaussian of ``sigma``
    voxels of the finest axis: ``sigma * min(spacing) / spacing[axis]``; ``spacing`` is
    ``(dz, dy, dx)``, positive."""
    spacing = _check_spacing(spacing)
    return tuple(float(sigma) * min(spacing) / d for d in spacing)


def halo_3d(cfg: FeatureConfig, spacing: Spacing = (1.0, 1.0, 1.0)) -> tuple[int, int, int]:
    """``(hz, hy, hx)`` voxels of context the bank reads around each voxel: along each axis the
    radius of the largest sigma's kernel (:func:`scaled_sigmas`), plus one for the derivatives."""
    return tuple(max(_axis_radius(sa) for sa in axis) + 1
                 for axis in zip(*(scaled_sigmas(s, spacing) for s in cfg.sigmas)))


def block_grid(shape: Sequence[int], block: Sequence[int] = (32, 256, 256)) -> list[tuple[slice, slice, slice]]:
    """The cores of ``block = (bz, by, bx)`` voxels (smaller at the far ends) tiling a volume of
    ``shape = (Z, Y, X)``, in C order: each voxel in one core. Slices have start and stop set."""
    shape, block = tuple(int(n) for n in shape), tuple(int(n) for n in block)
    if len(shape) != 3 or len(block) != 3 or min(block) < 1 or min(shape) < 0:
        raise ValueError(f"shape and block must be 3 sizes (Z, Y, X), block positive; got {shape}, {block}")
    ranges = [[slice(a, min(a + b, n)) for a in range(0, n, b)] for n, b in zip(shape, block)]
    return [(z, y, x) for z in ranges[0] for y in ranges[1] for x in ranges[2]]


def read_block(volume, core: tuple[slice, slice, slice], halo: Sequence[int]) -> np.ndarray:
    """Read a core and its halo from a volume, mirrored where the halo passes the border.

    Parameters
    ----------
    volume : (Z, Y, X) array-like
        Anything sliceable whose slices ``np.asarray`` takes (numpy, zarr, dask); one box is read.
    core
        Three slices (step 1) of the volume.
    halo
        ``(hz, hy, hx)`` voxels of context, non-negative.

    Returns
    -------
    (Z + 2 hz, Y + 2 hy, X + 2 hx) float32 array
        C-contiguous; outside the volume, numpy's ``"symmetric"`` pad of it (the edge voxel
        repeated, then reflected; periodically for halos longer than the volume).
    """
    shape, halo = tuple(volume.shape), tuple(int(h) for h in halo)
    if len(shape) != 3 or len(core) != 3 or len(halo) != 3 or min(halo) < 0:
        raise ValueError(f"need a (Z, Y, X) volume, 3 slices and 3 non-negative halos; got shape {shape}, "
                         f"core {core}, halo {halo}")
    indices = []
    for s, n, h in zip(core, shape, halo):
        start, stop, step = s.indices(n)
        if step != 1 or stop <= start:
            raise ValueError(f"core slices must be non-empty with step 1, got {s} for an axis of {n}")
        period = np.arange(start - h, stop + h) % (2 * n)
        indices.append(np.where(period < n, period, 2 * n - 1 - period))
    data = np.asarray(volume[tuple(slice(i.min(), i.max() + 1) for i in indices)], dtype=np.float32)
    for axis, i in enumerate(indices):
        if np.any(np.diff(i) != 1):
            data = np.take(data, i - i.min(), axis=axis)
    return np.ascontiguousarray(data)


def volume_features_3d(volume, cfg: FeatureConfig, spacing: Spacing = (1.0, 1.0, 1.0), device: Device = None,
                       step: Step = None) -> np.ndarray:
    """The bank of a whole ``(Z, Y, X)`` volume (array-like, normalised) at once, mirrored by
    its halo: a ``(Z, Y, X, F)`` float32 array. For small volumes and tests; other arguments as
    :func:`classical_features_3d`'s."""
    halo = halo_3d(cfg, spacing)
    return classical_features_3d(read_block(volume, (slice(None),) * 3, halo), cfg, spacing, halo, device, step)


def classical_features_3d(block: np.ndarray, cfg: FeatureConfig, spacing: Spacing = (1.0, 1.0, 1.0),
                          halo: Optional[Sequence[int]] = None, device: Device = None, step: Step = None, *,
                          out: Optional[np.ndarray] = None) -> np.ndarray:
    """The bank of a block's core.

    Parameters
    ----------
    block : (Z + 2 hz, Y + 2 hy, X + 2 hx) float array
        The core with ``halo`` voxels of context on each side, mirrored where it passes the
        volume's border (:func:`read_block`); normalised intensities (about ``[0, 1]``).
    cfg
        Feature configuration; only ``sigmas`` is read.
    spacing
        ``(dz, dy, dx)`` voxel spacing, positive (only ratios matter).
    halo
        ``(hz, hy, hx)`` of ``block``, at least :func:`halo_3d`'s; ``None``: :func:`halo_3d`.
    device
        Torch device to compute on; ``None``: the CPU.
    step
        Called with a short message after each sigma's blurs and after the derived channels
        (``len(cfg.sigmas) + 1`` calls), from the calling thread; may raise to cancel.
    out : (Z, Y, X, F) float32 C-contiguous array, optional
        Written and returned instead of a new array: a buffer reused block after block saves
        the page faults of a new output's first writes (0.7-1.8 s of system time for a
        64 x 256 x 256 core on a 2-core EPYC, against 1.9 s of computing).

    Returns
    -------
    (Z, Y, X, F) float32 array
        The core's channels, in :func:`classical3d_channel_names` order.
    """
    spacing = _check_spacing(spacing)
    halo, core = _check_block(block, cfg, spacing, halo)
    n_channels = len(classical3d_channel_names(cfg))
    if out is not None and (not isinstance(out, np.ndarray) or out.shape != (*core, n_channels)
                            or out.dtype != np.float32 or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(*core, n_channels)}")
    device = torch.device("cpu" if device is None else device)
    x = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)
    on_cpu = out is not None and device.type == "cpu"
    result = torch.from_numpy(out) if on_cpu else _empty((*core, n_channels), device)
    offset = x.mean()  # variance is shift-invariant; centring keeps float32 cancellation small
    blurs = [[None, None] for _ in cfg.sigmas]  # per sigma: G with a voxel of margin, G of the centred square
    units = []
    for k, s in reversed(list(enumerate(cfg.sigmas))):  # the costliest first: the threads finish together
        kernels = [_axis_kernel(sa, device) for sa in scaled_sigmas(s, spacing)]
        units.append((f"sigma {s:g}", [partial(_blur_core, blurs[k], 0, x, halo, core, kernels, 1, None),
                                       partial(_blur_core, blurs[k], 1, x, halo, core, kernels, 0, offset)]))
    rows = max(1, (STRIP_VOXELS if device.type == "cpu" else DEVICE_STRIP_VOXELS) // (core[0] * core[2]))
    derived = [partial(_strip_features, x, halo, blurs, offset, _units(spacing), result, y0, min(y0 + rows, core[1]))
               for y0 in range(0, core[1], rows)]
    with _bank_threads(device) as pool:
        _run(units, pool, lambda message: _notify(step, message))
        _run([("derived channels", derived)], pool, lambda message: _notify(step, message))
    if out is None:
        return result.cpu().numpy()
    if not on_cpu:
        out[...] = result.cpu().numpy()
    return out


def working_bytes_3d(cfg: FeatureConfig, core_shape: Sequence[int], spacing: Spacing = (1.0, 1.0, 1.0)) -> int:
    """Peak bytes :func:`classical_features_3d` holds on a CPU besides its output and the block
    it is given (copied too if not C-contiguous float32), for a core of ``(Z, Y, X)`` voxels.

    The larger of: the blurs done and the passes of the ``torch.get_num_threads()`` running
    (largest sigma first); all blurs, a strip buffer and its temporaries per thread, and per
    thread one of the largest Z passes, which the allocator keeps resident once freed.
    Against the growth of the resident set over a call less the output (2-core EPYC; cores of
    64 x 256 x 256, 32 x 256 x 256 and 32 x 128 x 128, sigmas (1, 2, 4, 8, 16) or (1, 2), one
    or two threads, spacing (1, 1, 1) or (3, 1, 1)), the estimate is 1.04-1.21 times the peak.
    """
    z, y, x = (int(n) for n in core_shape)
    threads = max(1, torch.get_num_threads())
    blurs, peaks, along_z = [], [], []
    for s in reversed(cfg.sigmas):  # the order the blurs start in
        rz, ry, rx = (_axis_radius(sa) for sa in scaled_sigmas(s, spacing))
        for m in (1, 0):  # the blur with a voxel of margin, then the centred square's
            zo, yo, xo = z + 2 * m, y + 2 * m, x + 2 * m
            blurs.append(yo * zo * xo)
            along_z.append((yo + 2 * ry) * zo * (xo + 2 * rx))
            peaks.append(yo * zo * (xo + 2 * rx) + max(along_z[-1] + (zo + 2 * rz) * (xo + 2 * rx), blurs[-1]))
    blurring = max(sum(blurs[:max(0, i + 1 - threads)]) + sum(peaks[max(0, i + 1 - threads):i + 1])
                   for i in range(len(blurs)))
    rows = min(y, max(1, STRIP_VOXELS // (z * x)))
    strips = min(threads, -(-y // rows)) * (len(classical3d_channel_names(cfg)) + 16) * rows * z * x
    return 4 * max(blurring, sum(blurs) + strips + sum(sorted(along_z)[-threads:]))


def _check_spacing(spacing: Spacing) -> tuple[float, float, float]:
    try:
        spacing = tuple(float(d) for d in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be 3 positive numbers (dz, dy, dx), got {spacing!r}") from None
    if len(spacing) != 3 or not all(math.isfinite(d) and d > 0 for d in spacing):
        raise ValueError(f"spacing must be 3 positive numbers (dz, dy, dx), got {spacing!r}")
    return spacing


def _check_block(block, cfg: FeatureConfig, spacing: tuple[float, ...], halo) -> tuple[tuple[int, ...], ...]:
    """``(halo, core shape)`` of a block, or a ValueError saying what is wrong."""
    need = halo_3d(cfg, spacing)
    halo = need if halo is None else tuple(int(h) for h in halo)
    if np.ndim(block) != 3 or len(halo) != 3:
        raise ValueError(f"block must be (Z, Y, X) and halo 3 ints, got shape {np.shape(block)} and halo {halo}")
    if any(h < n for h, n in zip(halo, need)):
        raise ValueError(f"halo {halo} is smaller than the {need} voxels these sigmas and spacing read: "
                         "read the block with halo_3d(cfg, spacing)")
    core = tuple(n - 2 * h for n, h in zip(np.shape(block), halo))
    if min(core) < 1:
        raise ValueError(f"block {np.shape(block)} leaves no core inside a halo of {halo}")
    return halo, core


def _units(spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """Each axis's voxel length in voxels of the finest axis (the derivatives' step)."""
    finest = min(spacing)
    return tuple(d / finest for d in spacing)


def _axis_radius(sigma: float) -> int:
    return 0 if sigma < MIN_AXIS_SIGMA else _radius(sigma)


def _axis_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    if sigma < MIN_AXIS_SIGMA:
        return torch.ones(1, device=device)
    return _gaussian_kernel(sigma, device)


def _band(kernel: torch.Tensor) -> torch.Tensor:
    """The ``(b, b + 2r)`` transpose of the kernel's ``_toeplitz`` matrix: ``b`` outputs of a
    correlation per product, ``b`` the power of 2 nearest ``r`` within 16..64 (each output
    costs ``b + 2r`` multiply-adds, and larger products run faster: on a CPU, at radius 64
    blocks of 64 take ~0.65 the time of blocks of 16; at radius 4, 16 is the fastest)."""
    block = min(64, max(16, 2 ** round(math.log2(max(len(kernel) // 2, 1)))))
    return _toeplitz(kernel, block).T.contiguous()


def _correlate(x: torch.Tensor, band: torch.Tensor, out: torch.Tensor) -> None:
    """Correlate the columns of ``x (n + 2r, Q)`` with a kernel, into ``out (n, Q)`` (both 2-D
    views, any strides), by its :func:`_band`: a block of output rows is one product with it
    (all blocks one batched product over overlapping views of ``x``, no copy), the rows left
    one more."""
    block, q = band.shape[0], out.shape[1]
    reach = band.shape[1] - block
    full = out.shape[0] // block
    if full:
        (xr, xc), (orow, ocol) = x.stride(), out.stride()
        rows = x.as_strided((full, block + reach, q), (block * xr, xr, xc))
        blocks = out.as_strided((full, block, q), (block * orow, orow, ocol))
        torch.bmm(band.expand(full, block, block + reach), rows, out=blocks)
    left = out.shape[0] - full * block
    if left:
        torch.mm(band[:left, :left + reach], x[full * block:], out=out[full * block:])


def _blur(x: torch.Tensor, kernels: list[torch.Tensor], offset: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Separable correlation of ``x (Z, Y, X)`` (any strides, unit X stride) with the ``(z, y, x)``
    ``kernels`` in valid mode; of ``(x - offset)**2`` where ``offset`` is given.

    Returns the ``(Z - 2rz, Y - 2ry, X - 2rx)`` result stored Y-major: a contiguous
    ``(Y', Z', X')`` tensor (the Z pass writes one Y row at a time, so the Y pass then runs on
    the outermost axis).
    """
    (zi, yi, xi), (rz, ry, rx) = x.shape, [(len(k) - 1) // 2 for k in kernels]
    zo, yo, xo = zi - 2 * rz, yi - 2 * ry, xi - 2 * rx
    bands = [_band(k) for k in kernels]
    along_z = x.new_empty((yi, zo, xi))
    for row in range(yi):
        plane = x[:, row]
        if offset is not None:
            plane = torch.sub(plane, offset).square_()
        _correlate(plane, bands[0], along_z[row])
    along_y = x.new_empty((yo, zo, xi))
    _correlate(along_z.view(yi, zo * xi), bands[1], along_y.view(yo, zo * xi))
    del along_z
    out = x.new_empty((yo, zo, xo)).view(yo * zo, xo)
    _correlate(along_y.view(yo * zo, xi).T, bands[2], out.T)
    return out.view(yo, zo, xo)


def _blur_core(into: list, i: int, x: torch.Tensor, halo: tuple[int, ...], core: tuple[int, ...],
               kernels: list[torch.Tensor], margin: int, offset: Optional[torch.Tensor]) -> None:
    """``into[i] =`` :func:`_blur` of the core of ``x`` with ``margin`` voxels more each side."""
    reach = [(len(k) - 1) // 2 for k in kernels]
    into[i] = _blur(x[tuple(slice(h - r - margin, h + n + r + margin) for h, r, n in zip(halo, reach, core))],
                    kernels, offset)


def _strip_features(x: torch.Tensor, halo: tuple[int, ...], blurs: list, offset: torch.Tensor,
                    units: tuple[float, ...], out: torch.Tensor, y0: int, y1: int) -> None:
    """Every channel of Y rows ``y0:y1`` of ``out (Z, Y, X, F)``: the intensity, each sigma's
    channels from its ``blurs`` (stored Y-major, :func:`_blur`) and the differences of
    Gaussians, into a ``(Z, F, n, X)`` strip buffer, then copied a Y row at a time (a Z plane of
    a row's buffer, ``F * X`` values, is read from cache while its voxels are written whole)."""
    z, _, w, f = out.shape
    (hz, hy, hx), per, n_sigmas = halo, len(_PER_SIGMA_3D), len(blurs)
    strip = x.new_empty((z, f, y1 - y0, w))
    strip[:, 0].copy_(x[hz:hz + z, hy + y0:hy + y1, hx:hx + w])
    for k, (g, g2) in enumerate(blurs):
        channels = strip[:, 1 + k * per:1 + (k + 1) * per].permute(1, 2, 0, 3)  # (9, n, Z, X), as the blurs
        _derivatives(g[y0:y1 + 2], g2[y0:y1], offset, units, channels)
    gaussians, d = strip[:, 1:1 + n_sigmas * per:per], 1 + n_sigmas * per
    for i in range(n_sigmas - 1):  # the pairs (i, j > i), consecutive channels
        torch.sub(gaussians[:, i + 1:], gaussians[:, i:i + 1], out=strip[:, d:d + n_sigmas - 1 - i])
        d += n_sigmas - 1 - i
    for row in range(y1 - y0):
        out[:, y0 + row].copy_(strip[:, :, row].transpose(1, 2))


def _derivatives(g: torch.Tensor, g2: torch.Tensor, offset: torch.Tensor, units: tuple[float, ...],
                 s: torch.Tensor) -> None:
    """One sigma's channels of a strip of ``n`` Y rows, stored Y-major like :func:`_blur`'s
    results: ``g (n + 2, Z + 2, X + 2)`` the blur with a voxel of margin, ``g2 (n, Z, X)`` the
    blur of the centred square; into ``s (9, n, Z, X)`` (any strides)."""
    uz, uy, ux = units
    row = g[1:-1, 1:-1]  # (n, z, x + 2)
    centre = row[..., 1:-1]
    s[0].copy_(centre)
    along_z = torch.sub(g[:, 2:], g[:, :-2])  # (n + 2, z, x + 2): twice dG/dz, in voxels
    along_y = torch.sub(g[2:, 1:-1], g[:-2, 1:-1])  # (n, z, x + 2)
    dx = torch.sub(row[..., 2:], row[..., :-2]).mul_(0.5 / ux)
    dz = along_z[1:-1, :, 1:-1].mul(0.5 / uz)
    dy = along_y[..., 1:-1].mul(0.5 / uy)
    torch.mul(dx, dx, out=s[1]).addcmul_(dy, dy).addcmul_(dz, dz).sqrt_()
    del dx, dy, dz
    hzy = torch.sub(along_z[2:, :, 1:-1], along_z[:-2, :, 1:-1]).mul_(0.25 / (uz * uy))
    hzx = torch.sub(along_z[1:-1, :, 2:], along_z[1:-1, :, :-2]).mul_(0.25 / (uz * ux))
    hyx = torch.sub(along_y[..., 2:], along_y[..., :-2]).mul_(0.25 / (uy * ux))
    del along_z, along_y
    hzz = torch.add(g[1:-1, 2:, 1:-1], g[1:-1, :-2, 1:-1]).add_(centre, alpha=-2).mul_(1 / uz**2)
    hyy = torch.add(g[2:, 1:-1, 1:-1], g[:-2, 1:-1, 1:-1]).add_(centre, alpha=-2).mul_(1 / uy**2)
    hxx = torch.add(row[..., 2:], row[..., :-2]).add_(centre, alpha=-2).mul_(1 / ux**2)
    _hessian(hzz, hyy, hxx, hzy, hzx, hyx, s[2:8])
    mean = centre.sub(offset)
    torch.sqrt(g2.addcmul(mean, mean, value=-1).clamp_(min=0), out=s[8])


def _det(a, b, c, ab, ac, bc, out: torch.Tensor) -> torch.Tensor:
    """``out =`` the determinants of symmetric 3 x 3 matrices ``[[a, ab, ac], [ab, b, bc], [ac, bc, c]]``."""
    torch.mul(b, c, out=out).addcmul_(bc, bc, value=-1).mul_(a)
    out.addcmul_(ab, torch.mul(ab, c).addcmul_(bc, ac, value=-1), value=-1)
    return out.addcmul_(ac, torch.mul(ab, bc).addcmul_(b, ac, value=-1))


def _hessian(a, b, c, ab, ac, bc, out: torch.Tensor) -> None:
    """Eigenvalues (sorted, ``eig1 >= eig2 >= eig3``), trace, determinant and Frobenius norm of
    symmetric 3 x 3 matrices, into ``out (6, ...)`` in that order.

    The eigenvalues by the trigonometric solution (Smith 1961): with ``q = trace / 3``, ``B =
    A - q I`` and ``p = sqrt(trace(B @ B) / 6)``, they are ``q + 2 p cos(phi + 2 pi k / 3)``,
    ``phi = acos(det(B / p) / 2) / 3``. ``B`` is divided by ``p`` before its determinant (no
    under- or overflow of ``p**3``); the cosine's argument is clamped to ``[-1, 1]`` and is 0
    where ``p = 0`` (a multiple of the identity); the middle eigenvalue is the trace minus the
    others, clamped between them. Where two eigenvalues meet ``acos`` is ill-conditioned: in
    float32 the error is then up to ~5e-4 of the matrix's largest entry (against
    ``numpy.linalg.eigvalsh``), ~1e-6 away from that.

    Parameters
    ----------
    a, b, c, ab, ac, bc : float tensors of one shape
        The diagonal and the upper off-diagonal entries; all six are overwritten.
    out : (6, ...) float tensor
        Receives ``eig1, eig2, eig3, trace, det, modulus``.
    """
    trace = torch.add(a, b, out=out[3]).add_(c)
    _det(a, b, c, ab, ac, bc, out=out[4])
    q = trace * (1 / 3)
    a.sub_(q), b.sub_(q), c.sub_(q)
    p = torch.mul(a, a).addcmul_(b, b).addcmul_(c, c)
    p.addcmul_(ab, ab, value=2).addcmul_(ac, ac, value=2).addcmul_(bc, bc, value=2)  # trace(B @ B)
    torch.addcmul(p, q, q, value=3, out=out[5]).sqrt_()  # |A|^2 = trace(B @ B) + 3 q^2
    p.mul_(1 / 6).sqrt_()
    inverse = p.clamp(min=torch.finfo(p.dtype).tiny).reciprocal_()  # B = 0 where p = 0: phi = pi / 6
    for entry in (a, b, c, ab, ac, bc):
        entry.mul_(inverse)
    phi = _det(a, b, c, ab, ac, bc, out=inverse).mul_(0.5).clamp_(-1, 1).acos_().mul_(1 / 3)
    two_p = p.mul_(2)
    torch.addcmul(q, two_p, torch.cos(phi), out=out[0])
    torch.addcmul(q, two_p, phi.add_(2 * math.pi / 3).cos_(), out=out[2])
    torch.sub(trace, out[0], out=out[1]).sub_(out[2])
    torch.maximum(out[1], out[2], out=out[1])
    torch.minimum(out[1], out[0], out=out[1])
