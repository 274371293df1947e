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
Rows (columns) that take the same token row (column) in every view share their features:
the views are summed on that smaller grid of classes and spread to the pixels once
(:func:`pixel_classes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..config import Resize  # the one list of resize rules: config validates it, token_index applies it

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
    nearest. ``"stretch"``: a plain nearest-neighbour resize of the token grid to the image,
    ``floor((pixel + 1/2) * n_tokens / n_pixels)`` (torch's ``nearest-exact``, the HR-Dv2
    reference's choice; misaligned by up to half a patch at the borders). ``"stretch-floor"``:
    ``floor(pixel * n_tokens / n_pixels)`` (torch's legacy ``nearest``).
    """
    pixels = torch.arange(n_pixels, dtype=torch.float64)
    if resize == "stretch":
        idx = torch.floor((pixels + 0.5) * n_tokens / n_pixels)
    elif resize == "stretch-floor":
        idx = torch.floor(pixels * n_tokens / n_pixels)
    elif resize == "nearest":
        # ties (pixels halfway between two centres) go to the later token: floor(x + 1/2), not
        # round-half-to-even, whose choice would depend on the token's parity and so on the tiling
        idx = torch.floor((pixels - (patch - 1) / 2) / stride + 0.5)
    else:
        raise ValueError(f"resize={resize!r} is not valid; choose 'nearest', 'stretch' or 'stretch-floor'")
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
    sums = None  # features and attention summed over the views: per pixel class, or the outputs
    for start in range(0, len(transforms), max(1, chunk)):
        batch = transforms[start:start + max(1, chunk)]
        tokens, attention = run(torch.stack([t.apply(image) for t in batch]))
        grids = (tokens.float(), attention.permute(0, 2, 3, 1).float())  # (B, gh, gw, D), (B, gh, gw, heads)
        if sums is None:
            classes = pixel_classes(transforms, (height, width), tokens.shape[1:3], patch, stride, resize)
            (row_tokens, row_class), (col_tokens, col_class) = ((t.to(image.device), c.to(image.device)) for t, c in classes)
            grouped = len(row_class) > row_tokens.shape[1] or len(col_class) > col_tokens.shape[1]
            if out is None or grouped:
                shape = (row_tokens.shape[1], col_tokens.shape[1])
                sums = tuple(torch.empty((*shape, g.shape[-1]), dtype=torch.float32, device=image.device) for g in grids)
            else:
                sums = out
        for b in range(len(batch)):
            for grid, total in zip(grids, sums):
                gather = _gather_block if grouped else _gather_rows
                gather(grid[b], row_tokens[start + b], col_tokens[start + b], total, accumulate=start + b > 0)
        if step is not None:
            step(min(start + len(batch), len(transforms)), len(transforms))
    if len(transforms) > 1:
        for total in sums:
            total /= len(transforms)
    if not grouped:
        return sums
    if out is None:
        out = tuple(torch.empty((height, width, total.shape[-1]), dtype=torch.float32, device=image.device)
                    for total in sums)
    for total, dest in zip(sums, out):
        _gather_rows(total, row_class, col_class, dest, accumulate=False)
    return out


def gather_views(
    run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    image: torch.Tensor,
    transforms: Sequence[Transform],
    patch: int,
    stride: int,
    resize: Resize = "nearest",
    chunk: int = 1,
    step: Optional[Callable[[int, int], None]] = None,
    pixels: tuple[torch.Tensor, torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`upsample_views` at ``N`` pixels only: the average over the views of the token each
    of them takes, with no ``(H, W, D)`` output (training reads the painted pixels and a sample).

    Parameters
    ----------
    run, image, transforms, patch, stride, resize, chunk, step
        As for :func:`upsample_views`.
    pixels : ``(rows (N,), cols (N,))`` int64 tensors
        The pixels, in the image's coordinates.

    Returns
    -------
    features : (N, D) float32 tensor, attention : (N, heads) float32 tensor.
    """
    _, height, width = image.shape
    rows, cols = (p.to(image.device) for p in pixels)
    sums = None
    for start in range(0, len(transforms), max(1, chunk)):
        batch = transforms[start:start + max(1, chunk)]
        tokens, attention = run(torch.stack([t.apply(image) for t in batch]))
        iy = token_index(height, tokens.shape[1], patch, stride, resize).to(image.device)
        ix = token_index(width, tokens.shape[2], patch, stride, resize).to(image.device)
        attention = attention.permute(0, 2, 3, 1)  # (B, gh, gw, heads)
        for b, t in enumerate(batch):
            source_rows, source_cols = t.source_rows_cols(height, width, device=image.device)
            ty, tx = iy[source_rows[rows]], ix[source_cols[cols]]
            taken = (tokens[b][ty, tx].float(), attention[b][ty, tx].float())
            sums = taken if sums is None else tuple(s.add_(x) for s, x in zip(sums, taken))
        if step is not None:
            step(min(start + len(batch), len(transforms)), len(transforms))
    return tuple(s.div_(len(transforms)) for s in sums)


#: The upsampler averages per pixel class (see :func:`pixel_classes`) where there are at most
#: 1 / CLASS_SAVING as many classes as pixels, else per pixel.
CLASS_SAVING = 4


def pixel_classes(transforms: Sequence[Transform], shape: tuple[int, int], grid: tuple[int, int], patch: int,
                  stride: int, resize: Resize = "nearest") -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Rows (columns) of the output that take the same token row (column) in every view.

    Such rows get the same features, so the upsampler sums every view on a grid of classes
    (about ``gh * |row offsets|`` rows: 5 per token for the CPU preset) and spreads the average
    to the pixels once, instead of adding every view into the ``(H, W, D)`` output: the same
    sums, in the same order, on several times less memory traffic. Where the classes are not
    :data:`CLASS_SAVING` times fewer than the pixels, each pixel is its own class.

    Parameters
    ----------
    transforms, shape, grid
        The views, the image ``(H, W)`` and the token grid ``(gh, gw)`` of a view.
    patch, stride, resize
        See :func:`token_index`.

    Returns
    -------
    For the rows, then the columns: ``tokens (T, K)`` int64, the token row (column) each class
    takes in each view, and ``classes (H,)`` (``(W,)``) int64, each pixel's class.
    """
    axes = []
    for axis, (n, g) in enumerate(zip(shape, grid)):
        index = token_index(n, g, patch, stride, resize)
        # a 1-pixel-wide image: rolls and flips along the other axis do nothing
        views = torch.stack([index[t.source_rows_cols(*((n, 1) if axis == 0 else (1, n)))[axis]] for t in transforms])
        axes.append(torch.unique(views, dim=1, return_inverse=True))
    (row_tokens, row_class), (col_tokens, col_class) = axes
    if CLASS_SAVING * row_tokens.shape[1] * col_tokens.shape[1] > shape[0] * shape[1]:
        return (row_tokens[:, row_class], torch.arange(shape[0])), (col_tokens[:, col_class], torch.arange(shape[1]))
    return (row_tokens, row_class), (col_tokens, col_class)


def _gather_block(grid: torch.Tensor, ry: torch.Tensor, cx: torch.Tensor, out: torch.Tensor, accumulate: bool) -> None:
    """:func:`_gather_rows` for a small ``out`` (a grid of pixel classes): in three operations."""
    block = grid.index_select(0, ry).index_select(1, cx)
    if accumulate:
        out += block
    else:
        out.copy_(block)


def _gather_rows(grid: torch.Tensor, ry: torch.Tensor, cx: torch.Tensor, out: torch.Tensor, accumulate: bool) -> None:
    """``out[y, x] (+)= grid[ry[y], cx[x]]`` for ``grid (gh, gw, C)``, ``out (H, W, C)``.

    One run of equal ``ry`` at a time: the run's grid row is gathered to a ``(W, C)`` row (one
    buffer, reused), which is added to (or written into) all the run's output rows at once (a
    fresh ``(rows, W, C)`` block per call would be allocated, and page-faulted, every time).
    """
    row = torch.empty((len(cx), grid.shape[-1]), dtype=grid.dtype, device=grid.device)
    starts = [0] + (torch.nonzero(ry[1:] != ry[:-1]).flatten() + 1).tolist()
    for start, stop, token_row in zip(starts, starts[1:] + [len(ry)], ry[starts].tolist()):
        torch.index_select(grid[token_row], 0, cx, out=row)
        if accumulate:
            out[start:stop] += row
        else:
            out[start:stop] = row
