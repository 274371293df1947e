"""Weka-style classical filter bank in torch (one code path for CPU and GPU).

Per image channel, in this order (``classical_channel_names`` gives the names):

- the intensity itself;
- for every sigma: Gaussian blur, Sobel gradient magnitude of the blur, and of the blur's
  Hessian (finite differences) its modulus, trace, determinant, both eigenvalues
  (``eig1 >= eig2``), the scale-normalised squared eigenvalue difference
  ``sigma**4 * (eig1 - eig2)**2`` and ``sigma**2 * (eig1**2 - eig2**2)``; and the local
  standard deviation ``sqrt(G(x**2) - G(x)**2)`` (Weka's variance filter, Gaussian-weighted),
  the texture channel a linear classifier cannot build from the others;
- differences of Gaussians ``G(sigma_j) - G(sigma_i)`` for every pair ``i < j``;
- membrane projections: the image convolved with a line kernel at 16 orientations,
  summarised per pixel by max, min, mean and standard deviation.

The image is mirrored (symmetric padding) once by the largest kernel radius, so
every filter sees the same border rule and images smaller than the filters' support
still work; all convolutions are then computed in "valid" mode.

Every channel is written straight into one channels-first output. The work is split into
tasks (a sigma each, strips of the membrane projections and of the differences of
Gaussians) that a CPU runs on threads of ours, torch's intra-op threads set to one
meanwhile: the bank is thousands of small operations, and torch's OpenMP threads meet at
the end of each, so on a CPU shared with other work one thread that is not scheduled holds
every operation up (at 1024^2 with another process busy on one of two cores: 3-4 s instead
of 0.4 s).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from contextlib import contextmanager
from functools import partial
from itertools import combinations
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from ..config import FeatureConfig

#: Gaussian kernels reach ``TRUNCATE * sigma`` pixels from their centre.
TRUNCATE = 4.0
#: Orientations of the membrane line kernel, evenly spaced over 180 degrees. Weka uses 30;
#: 16 (11.25 degrees apart) halve the cost, and the ends of neighbouring 19-px lines are
#: then < 2 px apart, within the anti-aliased line width, so the projections barely change.
MEMBRANE_ANGLES = 16
#: Block length of the blurs' banded matrix products: the fastest on CPUs for every sigma
#: (the products do ``BLOCK + 2r`` multiply-adds per output, against ``2r + 1`` taps).
BLOCK = 16
#: Pixels per strip of the filters derived from a blur, on a CPU: a strip's chain of about 40
#: operations then runs from cache, 2-3x faster than whole-image passes (measured at 1024^2).
STRIP_ELEMENTS = 2**18
#: Pixels per membrane projection task, on a CPU (a few per core at 512^2 and above).
MEMBRANE_STRIP_ELEMENTS = 2**17

_PER_SIGMA = ("gaussian", "sobel", "hessian_modulus", "hessian_trace", "hessian_det",
              "hessian_eig1", "hessian_eig2", "hessian_eigdiff_sq", "hessian_eigsq_diff", "local_std")
_MEMBRANE = ("membrane_max", "membrane_min", "membrane_mean", "membrane_std")


def classical_channel_names(cfg: FeatureConfig) -> list[str]:
    """Names of the channels one image channel produces, in output order."""
    names = ["intensity"]
    for s in cfg.sigmas:
        names += [f"{n}_s{s:g}" for n in _PER_SIGMA]
    names += [f"dog_s{b:g}-s{a:g}" for a, b in combinations(cfg.sigmas, 2)]
    if cfg.membrane:
        names += list(_MEMBRANE)
    return names


def support_radius(cfg: FeatureConfig) -> int:
    """Pixels of context the filter bank reads around each pixel."""
    radius = _radius(max(cfg.sigmas)) + 1
    if cfg.membrane:
        radius = max(radius, cfg.membrane_size // 2)
    return radius


def working_bytes(cfg: FeatureConfig, shape: tuple[int, int]) -> int:
    """Bytes :func:`classical_features` holds besides its output at its peak on a CPU, for an
    ``(H, W)`` image: the mirrored image channel being filtered and its centred square, and
    three planes of their size (two blurs and a blur's intermediate) for each sigma filtered
    at once, one per torch thread. Within 10 % of the peaks ``benchmarks/memory.py``
    measures (512^2 to 2048^2, one and two threads)."""
    h, w = shape
    r = support_radius(cfg)
    at_once = min(len(cfg.sigmas), torch.get_num_threads())
    return 4 * (2 + 3 * at_once) * (h + 2 * r + BLOCK) * (w + 2 * r)


def classical_features(
    image: np.ndarray,
    cfg: FeatureConfig,
    device: torch.device,
    step: Optional[Callable[[str], None]] = None,
) -> torch.Tensor:
    """Compute the filter bank of every channel of a normalised image.

    Parameters
    ----------
    image : (H, W, C) float32 array
        Normalised image (see :func:`napari_dinoseg.image.as_float_image`).
    cfg
        Feature configuration (``sigmas``, ``membrane``, ``membrane_size``).
    device
        Torch device to compute on.
    step
        Called with a short message after each unit of work (``n_classical_steps``
        units in all), from the calling thread; may raise to cancel.

    Returns
    -------
    (C * F, H, W) float32 tensor on ``device``, channels grouped by image channel.
    """
    h, w, n_channels = image.shape
    n = len(classical_channel_names(cfg))
    out = _empty((n_channels * n, h, w), device)
    with _bank_threads(device) as pool:
        for c in range(n_channels):
            _channel_bank(image[..., c], cfg, out[c * n:(c + 1) * n], pool,
                          lambda message, c=c: _notify(step, f"channel {c}: {message}"))
    return out


def n_classical_steps(cfg: FeatureConfig, n_channels: int) -> int:
    """Number of ``step`` calls :func:`classical_features` makes."""
    return n_channels * (len(cfg.sigmas) + int(cfg.membrane))


def _notify(step: Optional[Callable[[str], None]], message: str) -> None:
    if step is not None:
        step(message)


def _radius(sigma: float) -> int:
    return int(math.ceil(TRUNCATE * sigma))


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    r = _radius(sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).to(torch.float32).to(device)


def _line_kernels(size: int, device: torch.device) -> torch.Tensor:
    """(MEMBRANE_ANGLES, size, size) anti-aliased one-pixel-thick lines, each summing to 1."""
    r = size // 2
    y, x = torch.meshgrid(torch.arange(-r, r + 1.0), torch.arange(-r, r + 1.0), indexing="ij")
    theta = torch.arange(MEMBRANE_ANGLES, dtype=torch.float32) * (math.pi / MEMBRANE_ANGLES)
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    along = x * cos + y * sin
    across = -x * sin + y * cos
    k = torch.clamp(1 - across.abs(), min=0) * (along.abs() <= r + 0.5)
    return (k / k.sum(dim=(1, 2), keepdim=True)).to(device)


def _empty(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Uninitialised float32 tensor. On the CPU numpy allocates it: numpy asks Linux for
    transparent huge pages for large arrays, and where the kernel has them free the first
    write of a 65-channel output costs about a third of that into ``torch.empty``'s 4 KiB
    pages (0.05 s against 0.15 s at 1024^2 on one core)."""
    if device.type == "cpu":
        return torch.from_numpy(np.empty(shape, np.float32))
    return torch.empty(shape, dtype=torch.float32, device=device)


_threads_lock = threading.Lock()
_banks_running = 0  # banks between the first to set torch's threads to one and the last to restore them
_torch_threads = 1  # torch's intra-op threads before the first of them started


@contextmanager
def _bank_threads(device: torch.device) -> Iterator[Optional[ThreadPoolExecutor]]:
    """A pool of as many threads as torch had (``None`` for one, and off the CPU), with
    torch's intra-op threads set to one while any bank runs, restored after the last."""
    global _banks_running, _torch_threads
    if device.type != "cpu":
        yield None
        return
    with _threads_lock:
        if _banks_running == 0:
            _torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        _banks_running += 1
        threads = _torch_threads
    try:
        if threads == 1:
            yield None
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="classical") as pool:
                yield pool
    finally:
        with _threads_lock:
            _banks_running -= 1
            if _banks_running == 0:
                torch.set_num_threads(_torch_threads)


def _run(units: list[tuple[Optional[str], list[Callable[[], None]]]], pool: Optional[ThreadPoolExecutor],
         notify: Callable[[str], None]) -> None:
    """Run every task of ``units`` (``(message, tasks)``) on ``pool``, or here when it is
    ``None``; ``notify(message)`` from this thread once a unit's tasks are all done."""
    if pool is None:
        for message, tasks in units:
            for task in tasks:
                task()
            if message is not None:
                notify(message)
        return
    left = [len(tasks) for _, tasks in units]
    futures = {pool.submit(task): u for u, (_, tasks) in enumerate(units) for task in tasks}
    try:
        for future in as_completed(futures):
            future.result()
            u = futures[future]
            left[u] -= 1
            if left[u] == 0 and units[u][0] is not None:
                notify(units[u][0])
    except BaseException:  # an error, or a cancel from notify: stop, after the running tasks' writes
        for future in futures:
            future.cancel()
        wait(futures)
        raise


def _strips(h: int, w: int, elements: int, device: torch.device) -> list[tuple[int, int]]:
    """``(r0, r1)`` row ranges of about ``elements`` pixels on a CPU; the whole image elsewhere
    (fewer kernel launches)."""
    rows = max(1, elements // w) if device.type == "cpu" else h
    return [(r0, min(r0 + rows, h)) for r0 in range(0, h, rows)]


def _channel_bank(channel: np.ndarray, cfg: FeatureConfig, o: torch.Tensor, pool: Optional[ThreadPoolExecutor],
                  notify: Callable[[str], None]) -> None:
    """Write one image channel's bank, ``channel (H, W)``, into ``o (F, H, W)``."""
    h, w = channel.shape
    margin = support_radius(cfg)
    padded = _mirror(channel, margin, o.device)
    offset = padded[:h + 2 * margin].mean()  # variance is shift-invariant; centring keeps float32 cancellation small
    squared = (padded - offset).square_()
    o[0] = padded[margin:margin + h, margin:margin + w]
    index = {name: i for i, name in enumerate(classical_channel_names(cfg))}
    units = []
    if cfg.membrane:
        taps = _line_taps(cfg.membrane_size, padded.stride(0))
        strips = _strips(h, w, MEMBRANE_STRIP_ELEMENTS, o.device)
        units.append(("membrane projections", [partial(_membrane_projections, padded, margin, taps, o[-len(_MEMBRANE):],
                                                        r0, r1) for r0, r1 in strips]))
    for s in reversed(cfg.sigmas):  # the costliest first: the threads finish together
        i = index[f"gaussian_s{s:g}"]
        units.append((f"sigma {s:g}", [partial(_scale_features, padded, squared, offset, margin, s,
                                               o[i:i + len(_PER_SIGMA)])]))
    _run(units, pool, notify)
    pairs = [(o[index[f"gaussian_s{a:g}"]], o[index[f"gaussian_s{b:g}"]], o[index[f"dog_s{b:g}-s{a:g}"]])
             for a, b in combinations(cfg.sigmas, 2)]
    _run([(None, [partial(_differences, pairs, r0, r1) for r0, r1 in _strips(h, w, STRIP_ELEMENTS, o.device)])],
         pool, notify)


def _mirror(channel: np.ndarray, margin: int, device: torch.device) -> torch.Tensor:
    """``(H + 2 margin + BLOCK, W + 2 margin)`` float32: the channel mirrored (symmetric) by
    ``margin``, then the zero rows that :func:`_blur`'s last block of rows reads past its end."""
    h, w = channel.shape
    padded = np.zeros((h + 2 * margin + BLOCK, w + 2 * margin), np.float32)
    padded[:h + 2 * margin] = np.pad(channel, margin, mode="symmetric")
    return torch.from_numpy(padded).to(device)


def _toeplitz(kernel: torch.Tensor, block: int) -> torch.Tensor:
    """``(block + 2r, block)`` banded matrix ``T[i, j] = kernel[i - j]``: ``x @ T`` correlates
    ``block + 2r`` samples with the kernel, giving ``block`` outputs."""
    width = kernel.numel()
    offset = torch.arange(block + width - 1, device=kernel.device)[:, None] - torch.arange(block, device=kernel.device)
    inside = (offset >= 0) & (offset < width)
    return torch.where(inside, kernel[offset.clamp(0, width - 1)], 0.0)


def _blur(x: torch.Tensor, top: int, kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Gaussian blur of the ``(h, w)`` window of ``x`` whose corner is at ``(top, top)``.

    ``x`` is a contiguous 2-D tensor with the kernel's radius of context around the window
    and ``BLOCK`` spare rows below (see :func:`_mirror`). Returns an ``(h, w)`` view.

    Two passes of products with the banded matrix ``T`` (:func:`_toeplitz`), with no copy of
    the input: down the columns, each block of ``BLOCK`` output rows is ``T.T @`` the
    ``BLOCK + 2r`` input rows it reads (overlapping views, one batched product); along the
    flattened rows, output block ``j`` is ``sum_k X_{j+k} @ T[k BLOCK:(k+1) BLOCK]`` (each row
    keeps ``2r`` columns of context, so no output reads into the next row). Several times
    faster on CPUs than a single-channel ``conv2d``, and as fast on GPUs.
    """
    r = (kernel.numel() - 1) // 2
    toeplitz = _toeplitz(kernel, BLOCK)
    n_blocks = -(-h // BLOCK)
    cols = w + 2 * r
    stride = x.stride(0)
    rows = x[top - r:, top - r:].as_strided((n_blocks, BLOCK + 2 * r, cols), (BLOCK * stride, stride, 1))
    chunks = -(-(BLOCK + 2 * r) // BLOCK)
    size = n_blocks * BLOCK * cols
    down = x.new_empty(size + chunks * BLOCK)
    down[size:].zero_()  # read past the last row's end, into outputs that are dropped
    torch.bmm(toeplitz.T.expand(n_blocks, BLOCK, BLOCK + 2 * r), rows, out=down[:size].view(n_blocks, BLOCK, cols))
    down = down.view(-1, BLOCK)
    n = len(down) - chunks + 1
    out = torch.mm(down[:n], toeplitz[:BLOCK])
    for k in range(1, chunks):
        part = toeplitz[k * BLOCK:(k + 1) * BLOCK]
        out.addmm_(down[k:k + n, :len(part)], part)
    return out.view(-1)[:size].view(n_blocks * BLOCK, cols)[:h, :w]


def _scale_features(padded: torch.Tensor, squared: torch.Tensor, offset: torch.Tensor, margin: int, sigma: float,
                    o: torch.Tensor) -> None:
    """Write one sigma's channels into ``o (len(_PER_SIGMA), h, w)``: the blurs of the mirrored
    image and of its centred square, then the filters derived from them a strip at a time."""
    h, w = o.shape[1:]
    kernel = _gaussian_kernel(sigma, o.device)
    g = _blur(padded, margin - 1, kernel, h + 2, w + 2)  # one pixel more each side for the derivatives
    g2 = _blur(squared, margin, kernel, h, w)
    for r0, r1 in _strips(h, w, STRIP_ELEMENTS, o.device):
        _derivatives(g[r0:r1 + 2], g2[r0:r1], offset, sigma, o[:, r0:r1])


def _derivatives(g, g2, offset, sigma, o) -> None:
    """The per-sigma channels of one strip, with fused in-place ops (most of the bank's
    elementwise cost): ``g (n + 2, w + 2)``, ``g2 (n, w)``, ``o (len(_PER_SIGMA), n, w)``."""
    h, w = o.shape[1:]

    def at(dy: int, dx: int) -> torch.Tensor:
        return g[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    centre = at(0, 0)
    o[0].copy_(centre)
    # Sobel = central difference along x (y), smoothed [1, 2, 1] across; the x differences
    # also give the cross derivative
    across = torch.sub(g[:, 2:], g[:, :-2])  # (h + 2, w)
    down = torch.sub(g[2:], g[:-2])  # (h, w + 2)
    gx = torch.add(across[:-2], across[2:]).add_(across[1:-1], alpha=2)
    gy = torch.add(down[:, :-2], down[:, 2:]).add_(down[:, 1:-1], alpha=2)
    torch.mul(gx, gx, out=o[1]).addcmul_(gy, gy).sqrt_().mul_(1 / 8)  # torch.hypot is 2x slower on CPUs
    hxy4 = torch.sub(across[2:], across[:-2])  # 4 * Hxy
    del across, down, gx, gy
    hxx = torch.add(at(0, 1), at(0, -1)).add_(centre, alpha=-2)
    hyy = torch.add(at(1, 0), at(-1, 0)).add_(centre, alpha=-2)
    torch.mul(hxx, hxx, out=o[2]).addcmul_(hyy, hyy).addcmul_(hxy4, hxy4, value=2 / 16).sqrt_()
    trace = torch.add(hxx, hyy, out=o[3])
    torch.mul(hxx, hyy, out=o[4]).addcmul_(hxy4, hxy4, value=-1 / 16)
    half_diff = hxx.sub_(hyy).mul_(0.5)
    root = half_diff.mul_(half_diff).addcmul_(hxy4, hxy4, value=1 / 16).sqrt_()  # (eig1 - eig2) / 2
    eig1 = torch.add(root, trace, alpha=0.5, out=o[5])
    torch.sub(trace, eig1, out=o[6])
    torch.mul(root, root, out=o[7]).mul_(4 * sigma**4)  # sigma^4 (eig1 - eig2)^2
    torch.mul(root, trace, out=o[8]).mul_(2 * sigma**2)  # sigma^2 (eig1^2 - eig2^2)
    del hxx, hyy, hxy4, root
    local_mean = centre - offset
    local_var = g2.addcmul_(local_mean, local_mean, value=-1)
    torch.sqrt(local_var.clamp_(min=0), out=o[9])


def _differences(pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], r0: int, r1: int) -> None:
    """Rows ``r0:r1`` of the differences of Gaussians: ``out = later - earlier`` for each
    ``(earlier, later, out)`` of ``pairs``."""
    for earlier, later, out in pairs:
        torch.sub(later[r0:r1], earlier[r0:r1], out=out[r0:r1])


def _line_taps(size: int, stride: int) -> list[list[tuple[int, float]]]:
    """Per orientation, the ``(offset, weight)`` of each non-zero pixel of the line kernel, the
    offset from the kernel's centre counted in a flattened image of rows ``stride`` long."""
    r = size // 2
    taps = []
    for line in _line_kernels(size, torch.device("cpu")):
        where, weights = line.nonzero().tolist(), line[line > 0].tolist()  # both in row-major order
        taps.append([((dy - r) * stride + dx - r, weight) for (dy, dx), weight in zip(where, weights)])
    return taps


def _membrane_projections(padded: torch.Tensor, margin: int, taps: list[list[tuple[int, float]]], o: torch.Tensor,
                          r0: int, r1: int) -> None:
    """Rows ``r0:r1`` of the max, min, mean and standard deviation over orientations of the
    line responses: ``o (4, h, w)``.

    Each response is the sum of the line's few non-zero taps (:func:`_line_taps`, about
    ``2 * size`` of ``size**2``), each added as one shifted slice of the flattened
    ``padded`` (rows overhang into the next by ``size - 1`` ignored columns): a tenth of a
    ``conv2d``'s work, and no ``(angles, h, w)`` stack of responses.
    """
    w = o.shape[2]
    stride = padded.stride(0)
    flat = padded.view(-1)
    start = (margin + r0) * stride + margin
    length = (r1 - r0 - 1) * stride + w
    response = padded.new_empty(length)
    rows = response.as_strided((r1 - r0, w), (stride, 1))
    top, low, mean, spread = o[:, r0:r1]
    for a, line in enumerate(taps):
        (offset, weight), *rest = line
        torch.mul(flat[start + offset:start + offset + length], weight, out=response)
        for offset, weight in rest:
            response.add_(flat[start + offset:start + offset + length], alpha=weight)
        if a == 0:
            for channel in (top, low, mean):
                channel.copy_(rows)
            torch.mul(rows, rows, out=spread)
        else:
            torch.maximum(top, rows, out=top)
            torch.minimum(low, rows, out=low)
            mean.add_(rows)
            spread.addcmul_(rows, rows)
    mean.mul_(1 / len(taps))
    spread.mul_(1 / len(taps)).addcmul_(mean, mean, value=-1).clamp_(min=0).sqrt_()
