"""ViT features at pixel resolution: normalise, tile, run the upsampler, stitch.

Also the cost model behind the widget's time estimate and the benchmark's FLOP figures.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from ..config import FeatureConfig
from ..progress import ProgressCallback, report
from .backbones import StridedViT, load_model
from .registry import model_spec
from .tiling import tiles
from .upsample import make_transforms, upsample_views

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Fraction of free memory the views of one forward pass may take.
BATCH_MEMORY_FRACTION = 0.3
MAX_VIEWS_PER_BATCH = 32


def vit_features(
    img: np.ndarray, config: FeatureConfig, device: torch.device, progress: Optional[ProgressCallback] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Upsampled ViT features and CLS attention of a normalised image.

    Parameters
    ----------
    img : (H, W, C) float32 in [0, 1]
        See :func:`napari_dinoseg.image.as_float_image`.
    config
        A resolved config (stride, shifts and flips set).
    device
        Torch device to run the model on.
    progress
        ``progress(done_views, total_views, message)`` per batch of views; may raise to cancel.

    Returns
    -------
    features : (H, W, G * D) float32, one block of D channels per channel group
        (see :func:`napari_dinoseg.features.featurise.vit_channel_groups`).
    attention : (H, W, heads) float32, CLS attention averaged over the groups.
    """
    from .featurise import vit_channel_groups

    spec = model_spec(config.model)
    vit = StridedViT(load_model(config.model, config.weights, device))
    transforms = make_transforms(config.shifts, config.flips)
    h, w = img.shape[:2]
    windows = choose_tiles(config, (h, w))
    groups = vit_channel_groups(img.shape[-1])
    feats = np.empty((h, w, len(groups) * spec.embed_dim), dtype=np.float32)
    attention = np.zeros((h, w, spec.num_heads), dtype=np.float32)
    total = len(groups) * len(windows) * len(transforms)
    done = 0
    report(progress, 0, total, f"{config.model}: {len(transforms)} views x {len(windows)} tile(s)")
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    whole = len(windows) == 1 and device.type == "cpu"

    def run(views: torch.Tensor):
        with torch.inference_mode(), _autocast(device):
            return vit(views, config.stride)

    for g, channels in enumerate(groups):
        block = slice(g * spec.embed_dim, (g + 1) * spec.embed_dim)
        for (r0, r1, cr0, cr1), (c0, c1, cc0, cc1) in windows:
            tile = torch.from_numpy(np.ascontiguousarray(img[r0:r1, c0:c1][..., channels])).to(device)
            tile = (tile.permute(2, 0, 1) - mean) / std
            chunk = views_per_batch(config, tile.shape[1:], device)

            def step(views_done: int, _total: int, base=done) -> None:
                report(progress, base + views_done, total, f"{config.model}: views")

            # a single window on the CPU is written straight into the output arrays
            out = (torch.from_numpy(feats[..., block]), torch.empty(attention.shape)) if whole else None
            f, a = upsample_views(run, tile, transforms, spec.patch_size, config.stride, config.resize, chunk, step, out)
            done += len(transforms)
            core = (slice(cr0 - r0, cr1 - r0), slice(cc0 - c0, cc1 - c0))
            if not whole:
                feats[cr0:cr1, cc0:cc1, block] = f[core].cpu().numpy()
            attention[cr0:cr1, cc0:cc1] += a[core].cpu().numpy() / len(groups)
    return feats, attention


def tile_margin(config: FeatureConfig) -> int:
    """Pixels hidden at each inner tile border: a patch, the largest shift and a stride."""
    return model_spec(config.model).patch_size + max(config.shifts, default=0) + config.stride


def choose_tiles(config: FeatureConfig, shape: tuple[int, int]):
    """Tiles of ``config.tile`` px when set; otherwise the cheapest (in FLOPs) of 518, 1036 and
    2072 px tiles and the whole image: tiles pay off where attention dominates (small strides,
    large images), the whole image where tile overlap would cost more."""
    margin = tile_margin(config)
    if config.tile is not None:
        return tiles(shape, config.tile, margin, align=config.stride)
    candidates = [t for t in (518, 1036, 2072) if t < max(shape)] + [max(shape)]
    best = min(candidates, key=lambda t: _windows_flops(config, tiles(shape, t, margin, align=config.stride)))
    return tiles(shape, best, margin, align=config.stride)


def _windows_flops(config: FeatureConfig, windows) -> float:
    """FLOPs of one view over every tile window."""
    return sum(view_flops(config, (r1 - r0, c1 - c0)) for (r0, r1, _, _), (c0, c1, _, _) in windows)


def _autocast(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def n_tokens(shape: tuple[int, int], patch: int, stride: int) -> int:
    return (1 + (shape[0] - patch) // stride) * (1 + (shape[1] - patch) // stride)


def view_flops(config: FeatureConfig, shape: tuple[int, int]) -> float:
    """FLOPs of one forward pass over an ``(H, W)`` input (multiply-add = 2 FLOPs).

    Per block: ``24 N D^2`` for the qkv, projection and 4x MLP matmuls plus ``4 N^2 D``
    for attention (scores and weighted sum), with ``N`` tokens of width ``D``.
    """
    spec = model_spec(config.model)
    n, d = n_tokens(shape, spec.patch_size, config.stride), spec.embed_dim
    return spec.depth * (24 * n * d * d + 4 * n * n * d)


def total_flops(config: FeatureConfig, shape: tuple[int, int], n_channels: int = 1) -> float:
    """FLOPs of featurising an ``(H, W)`` image with a resolved config (all tiles and views)."""
    from .featurise import vit_channel_groups

    views = len(make_transforms(config.shifts, config.flips)) * len(vit_channel_groups(n_channels))
    return views * _windows_flops(config, choose_tiles(config, shape))


_THROUGHPUT: dict[str, float] = {}


def throughput(device: torch.device) -> float:
    """Measured matmul FLOP/s of ``device`` (once per session, ~0.1 s), for time estimates."""
    key = str(device)
    if key not in _THROUGHPUT:
        a = torch.randn(1024, 384, device=device)
        b = torch.randn(384, 1536, device=device)
        a @ b
        best = float("inf")
        for _ in range(5):  # best of 5: the first calls and a busy machine read slow
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            best = min(best, time.perf_counter() - start)
        _THROUGHPUT[key] = 2 * 1024 * 384 * 1536 / max(best, 1e-9)
    return _THROUGHPUT[key]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: Measured ratio of real featurisation time to FLOPs / matmul throughput on CPU (attention,
#: norms and the upsampler's gathers run below matmul speed).
EFFICIENCY = 0.5


def estimate_seconds(config: FeatureConfig, shape: tuple[int, int], device: torch.device, n_channels: int = 1) -> float:
    """Rough time to featurise an ``(H, W)`` image: FLOPs over measured matmul throughput."""
    return total_flops(config, shape, n_channels) / (throughput(device) * EFFICIENCY)


def views_per_batch(config: FeatureConfig, shape: tuple[int, int], device: torch.device) -> int:
    """Views per forward pass, sized to free memory (activations ~ 16 N D floats per view)."""
    spec = model_spec(config.model)
    per_view = 16 * n_tokens(shape, spec.patch_size, config.stride) * spec.embed_dim * 4
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    return int(max(1, min(MAX_VIEWS_PER_BATCH, BATCH_MEMORY_FRACTION * free // per_view)))
