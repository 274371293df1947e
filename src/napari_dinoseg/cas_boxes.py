"""Object boxes of unsupervised segmentation (CAS) and whether they describe objects.

Steps 6 and 7 of :mod:`napari_dinoseg.unsupervised`: one box per connected component of every
foreground class plus a superbox around the largest foreground component, duplicates dropped
(:func:`object_boxes`); and whether those boxes describe separate objects or the clutter of a
continuous microstructure (:func:`boxes_are_meaningful`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Boxes overlapping more than this (IoU) are duplicates: the later one is dropped.
BOX_IOU = 0.8
#: Boxes: hidden when the largest foreground region holds more than this share of the foreground
#: and touches two opposite borders of the image (a network spanning the image).
NETWORK_SHARE = 0.5
#: Boxes: hidden when the gaps between foreground regions are narrower than this times the regions
#: (mean distance of a background pixel to the foreground over the mean distance of a foreground
#: pixel to the background). Measured with classical CAS: NASA superalloy SEM 0.48-0.96 (18
#: images), ssTEM cells 0.83-1.08 (10 slices); random discs at 40 % cover 1.13-1.22, nuclei 3.4.
PACKED_GAP = 1.1
#: Boxes: the same, for irregular regions (area-weighted mean solidity below
#: :data:`CONVEX_SOLIDITY`): interlocking regions this close are a microstructure (the tldr
#: superalloy SEM: 1.21, solidity 0.81), while convex ones (packed beads, discs) stay objects.
#: Particles 2.4, nuclei 3.4; thresholded smoothed noise at 30 % cover 1.8.
PACKED_GAP_IRREGULAR = 1.5
#: Boxes: regions with an area-weighted mean solidity at least this are convex (discs 0.97,
#: particles 0.95; superalloy 0.71-0.83, ssTEM cells 0.74-0.79, nuclei with clumps 0.83).
CONVEX_SOLIDITY = 0.9
#: Boxes: hidden when the area-weighted mean solidity of the foreground regions is below this
#: (nuclei 0.83, particles 0.95; thresholded smoothed noise at 30 % cover 0.50-0.71).
IRREGULAR_SOLIDITY = 0.7


def object_boxes(labels: np.ndarray, foreground: np.ndarray, classes: Sequence[int], min_area: int):
    """Boxes ``(N, 4)`` ``(row0, col0, row1, col1)`` of every connected component (area >=
    ``min_area``) of each foreground class, then the superbox around the largest connected
    component of ``foreground``; duplicates (IoU > 0.8 with an earlier box) dropped.
    Returns ``(boxes, index of the superbox or None)``."""
    from skimage.measure import label as connected, regionprops

    boxes = []
    for cls in classes:
        for region in regionprops(connected(labels == cls, connectivity=2)):
            if region.area >= min_area:
                boxes.append(region.bbox)
    super_index = None
    regions = regionprops(connected(foreground, connectivity=2))
    if regions:
        largest = max(regions, key=lambda r: r.area)
        if largest.area >= min_area:
            boxes.append(largest.bbox)
            super_index = len(boxes) - 1
    kept: list = []
    for i, box in enumerate(boxes):
        if all(box_iou(box, boxes[j]) <= BOX_IOU for j in kept):
            kept.append(i)
        elif i == super_index:  # the superbox duplicates an object box: that box is the superbox
            super_index = next(j for j in kept if box_iou(box, boxes[j]) > BOX_IOU)
    out = np.array([boxes[i] for i in kept], dtype=np.int64).reshape(-1, 4)
    return out, (None if super_index is None else kept.index(super_index))


def box_iou(a, b) -> float:
    """IoU of two ``(row0, col0, row1, col1)`` end-exclusive boxes."""
    r0, c0 = max(a[0], b[0]), max(a[1], b[1])
    r1, c1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, r1 - r0) * max(0, c1 - c0)
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    return inter / float(area(a) + area(b) - inter)


def boxes_are_meaningful(foreground: np.ndarray, min_area: int = 64) -> tuple[bool, str]:
    """Whether object boxes describe the foreground: separate, compact objects on a background.

    On a continuous microstructure the boxes are clutter (dozens of overlapping rectangles that
    say nothing the foreground layer does not). A slice's boxes are hidden, for the first of
    these that holds:

    1. *network*: the largest foreground region (8-connected) holds more than
       :data:`NETWORK_SHARE` of the foreground and touches two opposite borders of the image;
    2. *packed*: the gaps between foreground regions are narrower than :data:`PACKED_GAP` times
       the regions themselves (the mean distance of a background pixel to the foreground over
       the mean distance of a foreground pixel to the background; for two phases sharing their
       boundaries this is about the ratio of their mean widths), or than
       :data:`PACKED_GAP_IRREGULAR` times when the regions are not convex (their area-weighted
       mean solidity below :data:`CONVEX_SOLIDITY`): grains or cells separated by thin
       boundaries, as in a superalloy or ssTEM of tissue;
    3. *irregular*: the solidity (area / convex hull area) of the regions of ``min_area`` px or
       more, averaged with their areas as weights, is below :data:`IRREGULAR_SOLIDITY`.

    Parameters
    ----------
    foreground : (H, W) or (Z, H, W) bool
        The foreground mask of one image, or of each slice of a stack.
    min_area : int
        Regions smaller than this (px) get no box and do not count for the solidity.

    Returns
    -------
    shown : bool
        For a stack, True when the boxes are meaningful in at least half of the slices.
    note : str
        In plain words why, e.g. ``"boxes hidden: the foreground is one connected network
        touching opposite borders of the image, not separate objects"``; for a stack, the most
        common reason and in how many slices it held.
    """
    foreground = np.asarray(foreground, bool)
    if foreground.ndim == 2:
        return _slice_boxes_verdict(foreground, min_area)
    if foreground.ndim != 3:
        raise ValueError(f"foreground must be (H, W) or (Z, H, W); got shape {foreground.shape}")
    verdicts = [_slice_boxes_verdict(f, min_area) for f in foreground]
    hidden = [note for shown, note in verdicts if not shown]
    n = len(verdicts)
    if 2 * len(hidden) <= n:
        return True, f"boxes shown: separate objects in {n - len(hidden)} of {n} slices"
    reason = max(dict.fromkeys(hidden), key=hidden.count)  # the most common; ties: the first slice's
    return False, f"{reason} (in {len(hidden)} of {n} slices)"


def _slice_boxes_verdict(foreground: np.ndarray, min_area: int) -> tuple[bool, str]:
    """:func:`boxes_are_meaningful` for one ``(H, W)`` bool slice; the notes of hidden boxes carry no
    numbers, so that a stack's slices can be counted by reason."""
    from scipy.ndimage import distance_transform_edt
    from skimage.measure import label as connected, regionprops

    total = int(foreground.sum())
    if total == 0:
        return True, "boxes shown: no foreground, no boxes"
    if total == foreground.size:
        return False, "boxes hidden: the whole image is foreground, there are no separate objects"
    regions = regionprops(connected(foreground, connectivity=2))
    largest = max(regions, key=lambda r: r.area)
    r0, c0, r1, c1 = largest.bbox
    h, w = foreground.shape
    if largest.area > NETWORK_SHARE * total and ((r0 == 0 and r1 == h) or (c0 == 0 and c1 == w)):
        return False, ("boxes hidden: the foreground is one connected network touching opposite borders of the "
                       "image, not separate objects")
    objects = [r for r in regions if r.area >= min_area]
    if not objects:
        return True, f"boxes shown: no foreground region of {min_area} px or more, no boxes"
    solidity = float(np.average([r.solidity for r in objects], weights=[r.area for r in objects]))
    gap = distance_transform_edt(~foreground)[~foreground].mean()
    width = distance_transform_edt(foreground)[foreground].mean()
    if gap < (PACKED_GAP if solidity >= CONVEX_SOLIDITY else PACKED_GAP_IRREGULAR) * width:
        return False, ("boxes hidden: the foreground regions are packed close together, the gaps between them "
                       "hardly wider than the regions (grains or cells of a continuous microstructure), not "
                       "separate objects on a background")
    if solidity < IRREGULAR_SOLIDITY:
        return False, ("boxes hidden: the foreground regions are irregular, branching shapes, not compact "
                       "objects")
    return True, "boxes shown: the foreground is separate, compact objects"
