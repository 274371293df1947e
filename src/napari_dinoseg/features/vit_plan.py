"""The ViT's plan and cost model: how an image is cut into tiles (:func:`choose_tiles`), how many
views run per forward pass, in which number format, and what it costs in time
(:func:`estimate_seconds`, behind the widget's plan line) and host memory
(:func:`vit_working_bytes`, behind the memory check).
"""

from __future__ import annotations

import functools
import time

import torch

from ..config import FeatureConfig
from .channels import vit_channel_groups
from .registry import model_spec
from .tiling import tiles
from .upsample import make_transforms, pixel_classes

#: Fraction of free memory the views of one forward pass may take.
BATCH_MEMORY_FRACTION = 0.3
MAX_VIEWS_PER_BATCH = 32
#: Estimated seconds one forward pass may take. Progress is reported, and a cancel honoured,
#: after every pass, so this bounds how late a cancel takes effect (a single view that takes
#: longer than this still runs as a batch of one).
BATCH_SECONDS = 1.0
#: Floats of activations one view holds per token and channel during a forward pass.
ACTIVATION_FLOATS = 16


def tile_margin(config: FeatureConfig) -> int:
    """Pixels hidden at each inner tile border: a patch, the largest shift and a stride."""
    return model_spec(config.model).patch_size + max(config.shifts, default=0) + config.stride


#: Smallest tile side the chooser considers, in patches: the 224 px crops (16 patches of 14 px)
#: DINOv2 and DINO were trained on, so that a tile sees at least what the model learnt from.
MIN_TILE_PATCHES = 16
#: Largest tile side of the chooser's fine range, in px: DINOv2's native input (37 patches).
NATIVE_TILE = 518
#: Larger tile sides the chooser also considers (wide models, where tile overlap costs more).
LARGE_TILES = (1036, 2072)
#: Fraction of the whole image's FLOPs tiles must save to be chosen: below it, the whole image's
#: context is worth more than the work saved.
MIN_TILE_SAVING = 0.1


def choose_tiles(config: FeatureConfig, shape: tuple[int, int]) -> tuple:
    """Tiles of ``config.tile`` px when set; otherwise the tiling of fewest FLOPs per view among
    the :func:`tile_candidates`, or the whole image where that saves less than
    :data:`MIN_TILE_SAVING`. Tiles pay off where attention (quadratic in the tokens of a tile)
    outweighs the overlap of their margins (linear), so that above one tile cost grows linearly
    with the pixel count (DINOv2-S at stride 14: 390-420 px tiles at 1024^2 to 4096^2).

    Planned once per (resolved) config and shape: the plan line, the memory check and the runner
    of one featurisation ask for the same plan, which is kept (:func:`_plan`)."""
    return _plan(config, (int(shape[0]), int(shape[1])))


@functools.lru_cache(maxsize=256)
def _plan(config: FeatureConfig, shape: tuple[int, int]) -> tuple:
    """:func:`choose_tiles`, computed: a tuple of ``((r0, r1, core_r0, core_r1), (c0, c1, core_c0, core_c1))``."""
    margin = tile_margin(config)
    if config.tile is not None:
        return tuple(tiles(shape, config.tile, margin, align=config.stride))
    whole, *options = [tiles(shape, t, margin, align=config.stride) for t in tile_candidates(config, shape)]
    best = min(options, key=lambda windows: _windows_flops(config, windows), default=whole)
    saves = _windows_flops(config, best) < (1 - MIN_TILE_SAVING) * _windows_flops(config, whole)
    return tuple(best if saves else whole)


def tile_candidates(config: FeatureConfig, shape: tuple[int, int]) -> list[int]:
    """Tile sides in px the chooser weighs for an ``(H, W)`` image, largest first: the whole image,
    then those of :data:`LARGE_TILES` and of the token lattice (``patch + k * stride``, at least a
    patch apart, from :data:`MIN_TILE_PATCHES` patches to :data:`NATIVE_TILE`) below its longer side."""
    patch, stride = model_spec(config.model).patch_size, config.stride
    first = patch + stride * -(-(MIN_TILE_PATCHES - 1) * patch // stride)
    fine = range(first, NATIVE_TILE + 1, stride * -(-patch // stride))
    return [max(shape)] + sorted((t for t in (*fine, *LARGE_TILES) if t < max(shape)), reverse=True)


def _windows_flops(config: FeatureConfig, windows) -> float:
    """FLOPs of one view over every tile window."""
    return sum(view_flops(config, (r1 - r0, c1 - c0)) for (r0, r1, _, _), (c0, c1, _, _) in windows)


def compute_dtype(config: FeatureConfig, device: torch.device) -> torch.dtype:
    """The dtype the ViT's matrix products run in (by autocast) for ``config.precision`` on ``device``.

    ``"auto"``: bfloat16 on a CUDA GPU that has it (else float16), bfloat16 on a CPU with native
    bfloat16 instructions (:func:`native_bf16_cpu`), float32 elsewhere (MPS, other CPUs).
    """
    if config.precision != "auto":
        return getattr(torch, config.precision)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and native_bf16_cpu():
        return torch.bfloat16
    return torch.float32


#: CPU capabilities (names of ``torch.cpu.get_capabilities()``) that run bfloat16 products natively.
BF16_CAPABILITIES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def native_bf16_cpu() -> bool:
    """Whether this CPU has bfloat16 instructions (x86 AVX512-BF16 or AMX, Arm BF16). Without
    them torch emulates bfloat16 products, several times slower than float32 (a DINOv2-S forward
    pass 5.6x slower on an AVX2-only AMD EPYC). ``False`` where
    torch cannot tell (``torch.cpu.get_capabilities`` is new in torch 2.8)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    return capabilities is not None and any(capabilities().get(name) is True for name in BF16_CAPABILITIES)


def n_tokens(shape: tuple[int, int], patch: int, stride: int) -> int:
    return (1 + (shape[0] - patch) // stride) * (1 + (shape[1] - patch) // stride)


def view_flops(config: FeatureConfig, shape: tuple[int, int]) -> float:
    """FLOPs of one forward pass over an ``(H, W)`` input (multiply-add = 2 FLOPs).

    Per block: ``24 N D^2`` for the qkv, projection and 4x MLP matmuls plus ``4 N^2 D``
    for attention (scores and weighted sum), with ``N`` tokens of width ``D``; the blocks up to
    ``config.layer`` (a key / query / value facet stops at that block's qkv, ``6 N D^2``).
    """
    spec = model_spec(config.model)
    n, d = n_tokens(shape, spec.patch_size, config.stride), spec.embed_dim
    blocks = range(spec.depth)[config.layer] + 1
    full = blocks if config.facet == "token" else blocks - 1
    return full * (24 * n * d * d + 4 * n * n * d) + (blocks - full) * 6 * n * d * d


def total_flops(config: FeatureConfig, shape: tuple[int, int], n_channels: int = 1) -> float:
    """FLOPs of featurising an ``(H, W)`` image with a resolved config (all tiles and views)."""
    views = len(make_transforms(config.shifts, config.flips)) * len(vit_channel_groups(n_channels))
    return views * _windows_flops(config, choose_tiles(config, shape))


_THROUGHPUT: dict[tuple[str, str], float] = {}


def throughput(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """Measured FLOP/s of a ViT-S-sized transformer block (576 tokens, width 384: layer norms, qkv,
    fused attention, MLP) on ``device`` under ``dtype`` autocast, once per session (~0.1 s), for
    time estimates. A block, not a bare matmul: on CPUs with bfloat16 matrix units (AMX) matmuls
    run 8x faster than float32 ones but a block only about 2.5x, the rest of it does not speed up."""
    import torch.nn.functional as F

    key = (str(device), str(dtype).removeprefix("torch."))
    if key not in _THROUGHPUT:
        n, d, heads = 576, 384, 6
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, n, d, generator=gen).to(device)
        w_qkv, w_out, w_up, w_down = (0.02 * torch.randn(a, b, generator=gen).to(device)
                                      for a, b in ((3 * d, d), (d, d), (4 * d, d), (d, 4 * d)))

        def block() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                h = F.layer_norm(x, (d,))
                q, k, v = F.linear(h, w_qkv).reshape(2, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
                y = x + F.linear(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, n, d), w_out)
                y + F.linear(F.gelu(F.linear(F.layer_norm(y, (d,)), w_up)), w_down)

        block()
        best = float("inf")
        for _ in range(5):  # best of 5: the first calls and a busy machine read slow
            _sync(device)
            start = time.perf_counter()
            block()
            _sync(device)
            best = min(best, time.perf_counter() - start)
        _THROUGHPUT[key] = 2 * (24 * n * d * d + 4 * n * n * d) / max(best, 1e-9)
    return _THROUGHPUT[key]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: Measured ratio of featurisation FLOP/s to the block probe's (:func:`throughput`; the upsampler's
#: gathers and the tiles' overlaps run outside the blocks): DINOv2-S CPU preset at 512^2 and 1024^2
#: on 2 cores with AMX, 0.57-0.61 in bfloat16 and 0.77-0.81 in float32 (``benchmarks/bench_vit.py``).
EFFICIENCY = 0.65


def estimate_seconds(config: FeatureConfig, shape: tuple[int, int], device: torch.device, n_channels: int = 1) -> float:
    """Rough time to featurise an ``(H, W)`` image: FLOPs over measured matmul throughput."""
    return total_flops(config, shape, n_channels) / (throughput(device, compute_dtype(config, device)) * EFFICIENCY)


def view_seconds(config: FeatureConfig, shape: tuple[int, int], device: torch.device) -> float:
    """Rough time of one forward pass over an ``(H, W)`` input on ``device``."""
    return view_flops(config, shape) / (throughput(device, compute_dtype(config, device)) * EFFICIENCY)


def activation_bytes(config: FeatureConfig, shape: tuple[int, int]) -> int:
    """Bytes of activations one view of an ``(H, W)`` input holds: ``ACTIVATION_FLOATS * N * D`` floats."""
    spec = model_spec(config.model)
    return ACTIVATION_FLOATS * n_tokens(shape, spec.patch_size, config.stride) * spec.embed_dim * 4


def views_per_batch(config: FeatureConfig, shape: tuple[int, int], device: torch.device) -> int:
    """Views per forward pass over an ``(H, W)`` input, 1 to :data:`MAX_VIEWS_PER_BATCH` and no more
    than the config's views: as many as fit in :data:`BATCH_MEMORY_FRACTION` of free memory and in
    :data:`BATCH_SECONDS` of estimated time (so that progress, and a cancel, comes at least that often)."""
    by_memory = BATCH_MEMORY_FRACTION * free_memory(device) // activation_bytes(config, shape)
    by_time = BATCH_SECONDS // view_seconds(config, shape, device)
    n_views = len(make_transforms(config.shifts or (), bool(config.flips)))
    return int(max(1, min(MAX_VIEWS_PER_BATCH, n_views, by_memory, by_time)))


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: the GPU's free memory, else the system's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def vit_working_bytes(config: FeatureConfig, shape: tuple[int, int], device: torch.device) -> int:
    """Host bytes :func:`vit_features` holds besides its outputs at its peak.

    For the largest tile window ``(h, w)``: the window's normalised copy; on the CPU also its
    transformed views, the model's weights (``12 depth D^2`` floats), a batch's activations
    (:func:`activation_bytes`), the upsampler's sums (:func:`class_sums_bytes`) and the
    attention buffer (features of a whole-image window go straight to the output); with
    several windows, or off the CPU, the window's features and attention (a host copy).
    """
    spec = model_spec(config.model)
    windows = choose_tiles(config, shape)
    h, w = max(((r1 - r0, c1 - c0) for (r0, r1, _, _), (c0, c1, _, _) in windows), key=lambda s: s[0] * s[1])
    plane = 4 * h * w
    buffers = (spec.embed_dim + spec.num_heads) * plane
    if device.type != "cpu":
        return 3 * plane + buffers  # the sums live on the device
    if len(windows) == 1:
        buffers = spec.num_heads * plane
    batch = views_per_batch(config, (h, w), device)
    views = 3 * plane * (3 + 2 * batch)  # normalised window and its temporary; the views and their stack
    model = 4 * 12 * spec.depth * spec.embed_dim**2
    forward = batch * activation_bytes(config, (h, w))
    return model + views + forward + buffers + class_sums_bytes(config, (h, w))


def class_sums_bytes(config: FeatureConfig, shape: tuple[int, int]) -> int:
    """Bytes of the upsampler's per-class sums for an ``(H, W)`` window (0 where it sums per pixel,
    into the output; see :func:`napari_dinoseg.features.upsample.pixel_classes`)."""
    spec = model_spec(config.model)
    grid = tuple(1 + (n - spec.patch_size) // config.stride for n in shape)
    transforms = make_transforms(config.shifts, config.flips)
    (rows, _), (cols, _) = pixel_classes(transforms, shape, grid, spec.patch_size, config.stride, config.resize)
    if (rows.shape[1], cols.shape[1]) == tuple(shape):
        return 0
    return 4 * rows.shape[1] * cols.shape[1] * (spec.embed_dim + spec.num_heads)
