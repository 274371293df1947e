"""ViT features of volumes (``FeatureConfig(dims=3)``): a 2-D backbone's features of planes
through a block, the volume methods of :class:`~.vit_featuriser.ViTFeaturiser` and
:class:`~.hybrid_featuriser.HybridFeaturiser`.

``volume_planes`` says which planes (:func:`vit_volume_features`):

- ``"xy"``: every z-slice of the block's core, featurised in 2-D as a plane is
  (:meth:`~.vit_featuriser.ViTFeaturiser.features`): a voxel's features are its slice's.
- ``"triplanar"``: the mean of the features of the xy slice, the xz plane (``Z x X``, one per y)
  and the yz plane (``Z x Y``, one per x) through each voxel, each featurised in 2-D with its
  context: the common way to use a 2-D foundation model on volumes. Three families of planes,
  most of them small (a block's depth by its width), each read with the ViT's margin: 16 times
  ``"xy"``'s time on a ``(16, 128, 128)`` volume on a CPU (``docs/volumes.md``).

Each plane is featurised on the window a plane's window would be
(:meth:`~.base.Featuriser.window`: the core grown by the ViT's margin, its start on the token
lattice, clipped to the plane), so that when the caller says where the block lies in the volume
(``place``) a core's features are the whole volume's planes' features there, block seams
included, and the volume's border is the plane's border (the mirrored halo is not shown to the
ViT). The halo is thus the margin plus a stride less one (:func:`vit_halo`), along z only for
``"triplanar"``. The spacing is not used: the ViT sees voxels as they are (an xz plane of
4 : 1 : 1 voxels is squeezed fourfold along z; resampling planes to cubes is not done).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..progress import ProgressCallback, within

#: Bytes a block's ``(z, y, x, F)`` float32 features may take (:func:`vit_volume_block`).
BLOCK_FEATURE_BYTES = 256 << 20
#: In-plane side of an ``"xy"`` block's core: the ViT's halo costs ``(1 + 2 halo / side)^2``
#: times the core's pixels per slice (1.9 at the CPU preset's halo of 48 voxels).
XY_SIDE = 256
#: Most z-slices of an ``"xy"`` block's core (the classical bank's block depth).
XY_DEPTH = 32
#: Smallest side of a ``"triplanar"`` block's cubic core.
MIN_CUBE = 32
#: Each family of planes: its two in-plane axes of ``(z, y, x)`` and its name.
PLANE_AXES = {"xy": ((1, 2), "xy"), "xz": ((0, 2), "xz"), "yz": ((0, 1), "yz")}
#: The families of planes of each ``volume_planes``.
FAMILIES = {"xy": ("xy",), "triplanar": ("xy", "xz", "yz")}

Place = tuple[tuple[slice, slice, slice], Sequence[int]]


def vit_halo(vit, planes: str) -> tuple[int, int, int]:
    """``(hz, hy, hx)`` voxels of context a block needs for a ViT's features of its core: the ViT's
    2-D margin plus its stride less one (a plane window's start moves back to the token lattice),
    along the axes of the planes featurised (none along z for ``"xy"``).

    ``vit`` is a :class:`~.vit_featuriser.ViTFeaturiser`; ``planes`` ``"xy"`` or ``"triplanar"``."""
    reach = vit.margin + vit.alignment - 1
    return (0 if planes == "xy" else reach, reach, reach)


def vit_volume_block(n_features: int, planes: str) -> tuple[int, int, int]:
    """Core ``(z, y, x)`` of the blocks a volume is cut into for ``n_features`` float32 channels:
    at most :data:`BLOCK_FEATURE_BYTES` of features. ``"xy"``: :data:`XY_SIDE` square slices, as
    many as fit (1 to :data:`XY_DEPTH`: there is no halo along z); ``"triplanar"``: a cube (each
    axis carries a halo, so a cube wastes least), at least :data:`MIN_CUBE` a side."""
    voxels = BLOCK_FEATURE_BYTES // (4 * max(1, int(n_features)))
    if planes == "xy":
        return (int(np.clip(voxels // XY_SIDE**2, 1, XY_DEPTH)), XY_SIDE, XY_SIDE)
    side = int(voxels ** (1 / 3))
    side += (side + 1) ** 3 <= voxels  # the float cube root may fall a voxel short
    return (max(MIN_CUBE, side),) * 3


def vit_volume_features(vit, block: np.ndarray, halo: Sequence[int], planes: str,
                        progress: Optional[ProgressCallback] = None, place: Optional[Place] = None,
                        out: Optional[np.ndarray] = None) -> np.ndarray:
    """A ViT's features of a block's core, from 2-D planes through it.

    Parameters
    ----------
    vit : ViTFeaturiser
        The 2-D featuriser whose :meth:`~.vit_featuriser.ViTFeaturiser.features` each plane goes through.
    block : (z + 2 hz, y + 2 hy, x + 2 hx) float32
        The core with ``halo`` voxels of context, normalised values, mirrored at the volume's border.
    halo
        ``(hz, hy, hx)``, at least :func:`vit_halo`'s.
    planes
        ``"xy"`` or ``"triplanar"`` (the module's note).
    progress
        ``progress(done, total, message)`` over every plane's views; may raise to cancel.
    place
        ``(core, shape)``: the block's core in the volume (three slices of step 1) and the
        volume's ``(Z, Y, X)``: the planes are then windows of the volume's planes (the core's
        features are the whole volume's; the mirrored halo unused). ``None``: the block is a
        volume of its own (its halo is its context).
    out : (z, y, x, D) float32, optional
        Written and returned (e.g. the ViT's channels of a hybrid stack).

    Returns
    -------
    (z, y, x, D) float32
        ``D = vit.n_features(1)`` channels; ``"triplanar"``: the mean over the three planes.
    """
    core, shape, origin = _placed(np.shape(block), halo, place)
    size = tuple(c.stop - c.start for c in core)
    width = vit.n_features(1)
    if out is None:
        out = np.empty((*size, width), np.float32)
    elif out.shape != (*size, width) or out.dtype != np.float32:
        raise ValueError(f"out must be a float32 array of shape {(*size, width)}, got {out.dtype} {out.shape}")
    families = FAMILIES[planes]
    total = sum(size[_across(name)] for name in families)
    done = 0
    for n, name in enumerate(families):
        window, inner = _plane_window(vit, name, core, shape, origin, np.shape(block))
        across = _across(name)
        for i in range(size[across]):
            index = list(window)
            index[across] = halo[across] + i
            plane = np.ascontiguousarray(block[tuple(index)], dtype=np.float32)[..., None]
            sub = within(progress, done / total, (done + 1) / total)
            features = vit.features(plane, sub).data[inner]
            target = out[(slice(None),) * across + (i,)]
            if n == 0:
                target[...] = features
            else:
                target += features
            done += 1
    if len(families) > 1:
        out /= len(families)
    return out


def _across(name: str) -> int:
    """The axis of ``(z, y, x)`` a family's planes are stacked along (the one not in them)."""
    return 3 - sum(PLANE_AXES[name][0])


def _placed(block_shape: Sequence[int], halo: Sequence[int], place: Optional[Place]):
    """``(core, shape, origin)`` in volume coordinates: the core's slices, the volume's shape, the
    volume coordinates of ``block[0, 0, 0]``; checked against the block's shape."""
    halo = tuple(int(h) for h in halo)
    if len(block_shape) != 3 or len(halo) != 3 or min(halo) < 0:
        raise ValueError(f"need a (z, y, x) block and 3 non-negative halos, got {tuple(block_shape)} and {halo}")
    if place is None:
        core = tuple(slice(h, n - h) for n, h in zip(block_shape, halo))
        shape = tuple(block_shape)
    else:
        core, shape = tuple(place[0]), tuple(int(n) for n in place[1])
    sizes = tuple(c.stop - c.start for c in core)
    if len(core) != 3 or min(sizes) < 1 or tuple(block_shape) != tuple(s + 2 * h for s, h in zip(sizes, halo)):
        raise ValueError(f"a block of {tuple(block_shape)} voxels is not a core of {sizes} with a halo of {halo}")
    return core, shape, tuple(c.start - h for c, h in zip(core, halo))


def _plane_window(vit, name: str, core, shape, origin, block_shape) -> tuple[list, tuple[slice, slice]]:
    """Where a family's planes are read in the block, and their core: ``(index, inner)``, ``index``
    the block's slices along the plane's two axes (the third filled per plane), ``inner`` the
    core's slices in the plane's window."""
    (a, b), label = PLANE_AXES[name]
    plane_shape = (shape[a], shape[b])
    window = vit.window((core[a], core[b]), plane_shape)
    patch = vit.spec.patch_size
    if min(w.stop - w.start for w in window) < patch:
        raise ValueError(f"the {label} planes of this volume are {plane_shape[0]}x{plane_shape[1]} voxels, smaller "
                         f"than one {patch}x{patch} patch of {vit.config.model}: use volume_planes='xy' or "
                         "classical features")
    index = [slice(None)] * 3
    for axis, w in zip((a, b), window):
        start, stop = w.start - origin[axis], w.stop - origin[axis]
        if start < 0 or stop > block_shape[axis]:
            raise ValueError(f"the block's halo along axis {'zyx'[axis]} is too small for the ViT's plane windows: "
                             "read it with the featuriser's halo(spacing)")
        index[axis] = slice(start, stop)
    inner = tuple(slice(core[axis].start - w.start, core[axis].stop - w.start) for axis, w in zip((a, b), window))
    return index, inner


def vit_volume_bytes(vit, core: Sequence[int], halo: Sequence[int], planes: str) -> int:
    """Peak bytes of :func:`vit_volume_features` for a core of ``core`` voxels: the ``(z, y, x, D)``
    output, the halo'd block and the largest plane's 2-D working set."""
    size = tuple(int(n) for n in core)
    block = int(np.prod([n + 2 * h for n, h in zip(size, halo)]))
    planes_shapes = [tuple(size[axis] + 2 * halo[axis] for axis in PLANE_AXES[name][0]) for name in FAMILIES[planes]]
    return 4 * int(np.prod(size)) * vit.n_features(1) + 4 * block + max(vit.working_bytes(s) for s in planes_shapes)
