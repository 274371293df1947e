"""The shift/flip-and-average upsampler: ViT token grids -> per-pixel features.

For every transform ``t`` of a set ``T`` (the identity, pixel shifts in the 8 Moore
directions at each distance of ``shifts``, optionally composed with the flip group
{id, h, v, hv}): transform the image, run the ViT, give each pixel of the view its token
(the token whose receptive-field centre is nearest, or a plain nearest resize with
``resize="stretch"``), apply the inverse transform, and average over ``T``.

A transform is *flip, then roll*; its inverse is *unroll, then unflip* (inverses in
reverse order). Rolls wrap around, so every inverse is exact. Because flips and rolls act
on rows and columns separately, "resize then inverse-transform" is one separable gather:
the row (column) each output pixel reads is found by inverting a ramp of coordinates
with the very same :meth:`Transform.invert`, so the fast path cannot drift from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional, Sequence

import torch

Resize = Literal["nearest", "stretch"]
FLIPS: tuple[str, ...] = ("", "h", "v", "hv")


@dataclass(frozen=True)
class Transform:
    """``flip`` (``""``, ``"h"``, ``"v"`` or ``"hv"``) followed by a roll of ``shift = (dy, dx)`` pixels."""

    flip: str = ""
    shift: tuple[int, int] = (0, 0)

    def _flip_dims(self) -> list[int]:
        return [d for c, d in (("v", -2), ("h", -1)) if c in self.flip]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Transform ``(..., H, W)``: flip, then roll."""
        dims = self._flip_dims()
        if dims:
            x = torch.flip(x, dims)
        if self.shift != (0, 0):
            x = torch.roll(x, self.shift, dims=(-2, -1))
        return x

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`apply` on ``(..., H, W)``: unroll, then unflip."""
        if self.shift != (0, 0):
            x = torch.roll(x, (-self.shift[0], -self.shift[1]), dims=(-2, -1))
        dims = self._flip_dims()
        if dims:
            x = torch.flip(x, dims)
        return x

    def source_rows_cols(self, height: int, width: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """For each output row / column, the row / column of the transformed view it reads.

        ``invert(view)[y, x] == view[rows[y], cols[x]]`` for any view of shape ``(H, W)``.
        """
        rows = torch.arange(height, device=device)[:, None].expand(height, width)
        cols = torch.arange(width, device=device)[None, :].expand(height, width)
        return self.invert(rows)[:, 0].contiguous(), self.invert(cols)[0, :].contiguous()


def make_transforms(shifts: Sequence[int] = (), flips: bool = False) -> list[Transform]:
    """The identity, the 8 Moore-neighbourhood shifts at each distance, times the flip group if asked.

    ``make_transforms((1, 2), True)`` has ``4 * (1 + 8 * 2) = 68`` elements.
    """
    offsets = [(0, 0)]
    for d in shifts:
        offsets += [(d * dy, d * dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    return [Transform(f, o) for f in (FLIPS if flips else ("",)) for o in offsets]


def token_index(n_pixels: int, n_tokens: int, patch: int, stride: int, resize: Resize = "nearest") -> torch.Tensor:
    """For each pixel along one axis, the token it takes: ``(n_pixels,)`` int64.

    ``"nearest"``: the token whose receptive-field centre ``i * stride + (patch - 1) / 2`` is
    nearest. ``"stretch"``: a plain nearest-neighbour resize of the token grid to the image
    (the reference implementation's choice; misaligned by up to half a patch at the borders).
    """
    pixels = torch.arange(n_pixels, dtype=torch.float64)
    if resize == "stretch":
        idx = torch.floor(pixels * n_tokens / n_pixels)
    elif resize == "nearest":
        # ties (pixels halfway between two centres) go to the later token: floor(x + 1/2), not
        # round-half-to-even, whose choice would depend on the token's parity and so on the tiling
        idx = torch.floor((pixels - (patch - 1) / 2) / stride + 0.5)
    else:
        raise ValueError(f"resize={resize!r} is not valid; choose 'nearest' or 'stretch'")
    return idx.clamp(0, n_tokens - 1).long()


def upsample_views(
    run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    image: torch.Tensor,
    transforms: Sequence[Transform],
    patch: int,
    stride: int,
    resize: Resize = "nearest",
    chunk: int = 1,
    step: Optional[Callable[[int, int], None]] = None,
    out: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the per-pixel features of every transformed view of one image.

    Parameters
    ----------
    run
        ``run(views (B, 3, H, W)) -> (tokens (B, gh, gw, D), attention (B, heads, gh, gw))``.
    image : (3, H, W) float tensor
        Normalised image on the model's device.
    transforms
        The set ``T`` (see :func:`make_transforms`).
    patch, stride, resize
        Geometry of the token grid (see :func:`token_index`).
    chunk
        Views per forward pass.
    step
        ``step(done_views, total_views)`` after each chunk (its forward pass and gathers); may
        raise to cancel.
    out
        Optional ``(features (H, W, D), attention (H, W, heads))`` float32 tensors to write
        the result into (e.g. views of the caller's output array, any strides), saving a copy.

    Returns
    -------
    features : (H, W, D) float32 tensor, attention : (H, W, heads) float32 tensor.
    """
    _, height, width = image.shape
    feats, attn = out if out is not None else (None, None)
    first = True
    for start in range(0, len(transforms), max(1, chunk)):
        batch = transforms[start:start + max(1, chunk)]
        tokens, attention = run(torch.stack([t.apply(image) for t in batch]))
        gh, gw = tokens.shape[1:3]
        iy = token_index(height, gh, patch, stride, resize).to(image.device)
        ix = token_index(width, gw, patch, stride, resize).to(image.device)
        attention = attention.permute(0, 2, 3, 1).float()  # (B, gh, gw, heads)
        tokens = tokens.float()
        if feats is None:
            feats = torch.empty((height, width, tokens.shape[-1]), dtype=torch.float32, device=image.device)
            attn = torch.empty((height, width, attention.shape[-1]), dtype=torch.float32, device=image.device)
        for b, t in enumerate(batch):
            rows, cols = t.source_rows_cols(height, width, device=image.device)
            ry, cx = iy[rows], ix[cols]  # token row / column of every output pixel
            _gather_rows(tokens[b], ry, cx, feats, accumulate=not first)
            _gather_rows(attention[b], ry, cx, attn, accumulate=not first)
            first = False
        if step is not None:
            step(min(start + len(batch), len(transforms)), len(transforms))
    if len(transforms) > 1:
        feats /= len(transforms)
        attn /= len(transforms)
    return feats, attn


#: Output rows gathered at once: bounds the temporary to ``ROWS * W * D`` floats.
ROWS = 64


def _gather_rows(grid: torch.Tensor, ry: torch.Tensor, cx: torch.Tensor, out: torch.Tensor, accumulate: bool) -> None:
    """``out[y, x] (+)= grid[ry[y], cx[x]]`` for ``grid (gh, gw, C)``, ``ROWS`` output rows at a time
    (the token rows first, then their columns: no temporary larger than ``ROWS * W * C``)."""
    for r0 in range(0, len(ry), ROWS):
        block = grid.index_select(0, ry[r0:r0 + ROWS]).index_select(1, cx)
        if accumulate:
            out[r0:r0 + ROWS] += block
        else:
            out[r0:r0 + ROWS] = block
