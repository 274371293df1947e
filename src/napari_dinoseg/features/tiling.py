"""Overlapping tiles for images larger than a model's comfortable input.

Each tile is featurised on its own and only its core (the tile minus a margin wide
enough to hide its borders: rolled-in pixels and edge tokens) is kept, so cost grows
linearly with the pixel count and the stitched result has no seams. Tile starts are
multiples of the stride, so every tile's token lattice is the whole image's.
"""

from __future__ import annotations

Window = tuple[int, int, int, int]  # (window start, window stop, core start, core stop)


def axis_windows(n: int, tile: int, margin: int, align: int = 1) -> list[Window]:
    """Windows of ``tile`` pixels (the last up to ``align - 1`` more) covering ``range(n)``, cores partitioning it.

    Cores touch the image border where the window does; elsewhere each core stays at
    least ``margin`` pixels inside its window. Window starts are multiples of ``align``.

    Raises ``ValueError`` when ``tile <= 2 * margin + align`` (no progress possible).
    """
    if n <= tile:
        return [(0, n, 0, n)]
    if tile <= 2 * margin + align:
        raise ValueError(f"tile of {tile} px is too small for a margin of {margin} px (aligned to {align})")
    windows: list[Window] = []
    core_start = 0
    while core_start < n:
        start = ((core_start - margin) // align) * align if core_start else 0
        if start + tile >= n:  # last window: reach the end, starting on the lattice
            start = min(start, max(0, ((n - tile) // align) * align))
            stop = n
        else:
            stop = start + tile
        core_stop = n if stop == n else stop - margin
        windows.append((start, stop, core_start, core_stop))
        core_start = core_stop
    return windows


def tiles(shape: tuple[int, int], tile: int, margin: int, align: int = 1) -> list[tuple[Window, Window]]:
    """2-D tiles: every ``(row window, column window)`` pair of :func:`axis_windows`."""
    rows = axis_windows(shape[0], tile, margin, align)
    cols = axis_windows(shape[1], tile, margin, align)
    return [(r, c) for r in rows for c in cols]
