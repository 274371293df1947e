"""ViT features at pixel resolution: normalise, tile, run the upsampler, stitch
(:func:`vit_features`, over one private runner).

The plan and cost model (tiles, views per pass, number format, time and memory estimates) are
:mod:`.vit_plan`'s, re-exported here; the token store is :mod:`.cache`'s.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..config import FeatureConfig
from ..progress import ProgressCallback, report
from .backbones import StridedViT, load_model
from .cache import TokenStore
from .channels import vit_channel_groups
from .registry import model_spec
from .upsample import gather_views, make_transforms, upsample_views
from .vit_plan import (ACTIVATION_FLOATS, BATCH_MEMORY_FRACTION, BATCH_SECONDS, EFFICIENCY,  # noqa: F401
                       LARGE_TILES, MAX_VIEWS_PER_BATCH, MIN_TILE_PATCHES, MIN_TILE_SAVING, NATIVE_TILE,
                       activation_bytes, choose_tiles, class_sums_bytes, compute_dtype, estimate_seconds,
                       free_memory, n_tokens, native_bf16_cpu, throughput, tile_candidates, tile_margin,
                       total_flops, view_flops, view_seconds, views_per_batch, vit_working_bytes)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vit_features(
    img: np.ndarray,
    config: FeatureConfig,
    device: torch.device,
    progress: Optional[ProgressCallback] = None,
    out: Optional[np.ndarray] = None,
    projection: Optional[tuple[np.ndarray, np.ndarray]] = None,
    pixels: Optional[tuple[np.ndarray, np.ndarray]] = None,
    store: Optional[TokenStore] = None,
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
        ``progress(done_views, total_views, message)``: once before the model is loaded, then
        after every forward pass (at most :data:`BATCH_SECONDS` of estimated work, one view at
        the least); may raise to cancel.
    out : (H, W, G * D) float32 array, optional
        Written with the features and returned (e.g. a slice of a larger stack, saving a copy);
        any strides whose last one is the item size.
    projection : ``(weights (P, G * D), bias (P,))`` float arrays, optional
        Return ``features @ weights.T + bias`` (``(H, W, P)``) instead of the features, computed
        on every view's token grid before the upsampler averages the views: the average is
        linear, so this equals projecting the ``(H, W, G * D)`` features (up to float rounding),
        which are never built. ``out`` must then have ``P`` channels.
    pixels : ``(rows (N,), cols (N,))`` int arrays, optional
        Only these pixels' features (:func:`~napari_dinoseg.features.upsample.gather_views`):
        the outputs are then ``(N, G * D)`` and ``(N, heads)``, equal to the full outputs at
        those pixels, and no ``(H, W, D)`` map is built; ``out`` is not allowed.
    store
        Forward passes are taken from / kept in it (one store per image and config): a second
        call, with or without ``projection`` or ``pixels``, runs no forward pass.

    Returns
    -------
    features : (H, W, G * D) float32, one block of D channels per channel group
        (see :func:`napari_dinoseg.features.channels.vit_channel_groups`); ``out`` when given.
    attention : (H, W, heads) float32, CLS attention averaged over the groups.
    """
    return _ViTRun(img, config, device, progress, store).outputs(out, projection, pixels)


class _ViTRun:
    """One call of :func:`vit_features`: the plan (tiles, views, channel groups), the model loaded
    on the first forward pass not found in the store, progress counted over every view."""

    def __init__(self, img: np.ndarray, config: FeatureConfig, device: torch.device,
                 progress: Optional[ProgressCallback], store: Optional[TokenStore]) -> None:
        self.img, self.config, self.device, self.progress, self.store = img, config, device, progress, store
        self.spec = model_spec(config.model)
        self.transforms = make_transforms(config.shifts, config.flips)
        self.windows = choose_tiles(config, img.shape[:2])
        self.groups = vit_channel_groups(img.shape[-1])
        self.total = len(self.groups) * len(self.windows) * len(self.transforms)
        self.dtype = compute_dtype(config, device)
        self.model: Optional[StridedViT] = None  # loaded on the first forward pass (none when the store holds them all)
        self.reported = 0  # the last progress value: repeated between blocks, where a cancel is honoured
        self.weights = self.bias = None
        report(progress, 0, self.total, f"{config.model}: {len(self.transforms)} views x {len(self.windows)} tile(s)")

    def outputs(self, out, projection, pixels) -> tuple[np.ndarray, np.ndarray]:
        """Check the arguments, make the output arrays, run every group and tile, return them."""
        h, w = self.img.shape[:2]
        if projection is not None:
            self._set_projection(projection)
        width = len(self.groups) * self.spec.embed_dim if self.weights is None else len(self.weights)
        points = None
        if pixels is not None:
            if out is not None:
                raise ValueError("out cannot be given with pixels")
            points = tuple(np.asarray(p, np.int64).ravel() for p in pixels)
            py, px = points
            if len(py) != len(px) or (len(py) and (py.min() < 0 or py.max() >= h or px.min() < 0 or px.max() >= w)):
                raise ValueError(f"pixels must be rows and columns of equal length inside the {h}x{w} image")
        plane = (h, w) if points is None else (len(points[0]),)
        feats = _output_array(out, (*plane, width))
        if self.weights is not None:
            feats[...] = self.bias.cpu().numpy()
        attention = np.zeros((*plane, self.spec.num_heads), dtype=np.float32)
        done = 0
        for g, channels in enumerate(self.groups):
            for window in self.windows:
                self._window(g, channels, window, done, feats, attention, points)
                done += len(self.transforms)
        return feats, attention

    def _set_projection(self, projection) -> None:
        weights, bias = (torch.as_tensor(np.asarray(a, np.float32), device=self.device) for a in projection)
        width = len(self.groups) * self.spec.embed_dim
        if weights.ndim != 2 or weights.shape[1] != width or bias.shape != weights.shape[:1]:
            raise ValueError(f"the projection must be weights (P, {width}) and bias (P,), "
                             f"got {tuple(weights.shape)} and {tuple(bias.shape)}")
        self.weights, self.bias = weights, bias

    def _forward(self, views: torch.Tensor):
        """The model's ``(tokens, attention)`` of a batch of views."""
        config = self.config
        if self.model is None:
            self.model = StridedViT(load_model(config.model, config.weights, self.device))
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype,
                                                    enabled=self.dtype != torch.float32):
            return self.model(views, config.stride,
                              lambda: report(self.progress, self.reported, self.total, f"{config.model}: views"),
                              facet=config.facet, layer=config.layer, pos_embed=config.pos_embed)

    def _run(self, views: torch.Tensor, group: slice, place: list):
        """A batch of views through the store (``place``: group, tile, views run so far in the
        tile), projected when there is a projection: ``(B, gh, gw, D or P)`` tokens and attention."""
        if self.store is None:
            tokens, attn = self._forward(views)
        else:
            key = (*place[:2], place[2], len(views))
            tokens, attn = self.store.run(key, lambda: self._forward(views), self.device)
        place[2] += len(views)
        if self.weights is None:
            return tokens, attn
        return tokens.float() @ self.weights[:, group].T, attn  # the views' projected tokens

    def _window(self, g: int, channels: list[int], window, done: int, feats: np.ndarray, attention: np.ndarray,
                points) -> None:
        """One channel group's views of one tile window, upsampled (or gathered at ``points``)
        and added to the outputs at the window's core."""
        (r0, r1, cr0, cr1), (c0, c1, cc0, cc1) = window
        block = slice(g * self.spec.embed_dim, (g + 1) * self.spec.embed_dim)
        tile = _normalised_tile(self.img[r0:r1, c0:c1], channels, self.device)
        place = [g, (r0, r1, c0, c1), 0]

        def step(views_done: int, _total: int) -> None:
            self.reported = done + views_done
            report(self.progress, done + views_done, self.total, f"{self.config.model}: views")

        geometry = (tile, self.transforms, self.spec.patch_size, self.config.stride, self.config.resize,
                    views_per_batch(self.config, tile.shape[1:], self.device), step)
        forward = lambda views: self._run(views, block, place)  # noqa: E731
        # a single window on the CPU is written straight into the output arrays
        whole = (len(self.windows) == 1 and self.device.type == "cpu" and self.weights is None and points is None)
        if points is not None:
            py, px = points
            inside = np.flatnonzero((py >= cr0) & (py < cr1) & (px >= cc0) & (px < cc1))
            if len(inside) == 0:  # no pixel of this tile is asked for: no forward pass
                step(len(self.transforms), len(self.transforms))
                return
            local = (torch.from_numpy(py[inside] - r0), torch.from_numpy(px[inside] - c0))
            f, a = gather_views(forward, *geometry, pixels=local)
            target = (inside,)
        else:
            dest = (torch.from_numpy(feats[..., block]), torch.empty(attention.shape)) if whole else None
            f, a = upsample_views(forward, *geometry, dest)
            core = (slice(cr0 - r0, cr1 - r0), slice(cc0 - c0, cc1 - c0))
            f, a = f[core], a[core]
            target = (slice(cr0, cr1), slice(cc0, cc1))
        if self.weights is not None:  # the groups' projections add up
            feats[target] += f.cpu().numpy()
        elif not whole:
            feats[(*target, block)] = f.cpu().numpy()
        attention[target] += a.div_(len(self.groups)).cpu().numpy()


def _output_array(out: Optional[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """``out`` checked against ``shape`` (float32, writeable), or a new empty array."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.writeable:
        raise ValueError(f"out must be a writeable float32 array of shape {shape}, "
                         f"got {out.dtype} {out.shape}{'' if out.flags.writeable else ' (read-only)'}")
    return out


def _normalised_tile(window: np.ndarray, channels: list[int], device: torch.device) -> torch.Tensor:
    """``(3, h, w)`` ImageNet-normalised tensor on ``device`` of ``channels`` of an ``(h, w, C)`` window."""
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    tile = torch.from_numpy(np.ascontiguousarray(window[..., channels])).to(device).permute(2, 0, 1)
    return tile.sub(mean).div_(std)
