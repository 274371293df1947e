"""Sample data: a micrograph bundled with scikit-image, with example brush strokes.

Nothing is downloaded: ``skimage.data.immunohistochemistry`` ships inside scikit-image.
Returns napari ``LayerData`` tuples without importing napari.
"""

from __future__ import annotations

import numpy as np

#: Example strokes on the 512x512 IHC image, as (label, [(row, col), ...] polyline, width).
#: 1 = DAB-stained epithelium (brown), 2 = stroma and nuclei (blue), 3 = lumen (white).
IHC_STROKES: tuple[tuple[int, tuple[tuple[int, int], ...], int], ...] = (
    (1, ((60, 40), (120, 110), (190, 170)), 3),
    (1, ((60, 330), (130, 400), (220, 380)), 3),
    (1, ((330, 290), (420, 330)), 3),
    (1, ((300, 30), (440, 90)), 3),
    (2, ((250, 180), (300, 240), (370, 230)), 3),
    (2, ((200, 470), (330, 440), (450, 470)), 3),
    (2, ((470, 200), (500, 260)), 3),
    (3, ((300, 5), (420, 10)), 3),
    (3, ((30, 297), (100, 325), (160, 355)), 2),
    (3, ((480, 430), (410, 450)), 3),
)


def ihc_image() -> np.ndarray:
    """(512, 512, 3) uint8 immunohistochemistry (IHC) micrograph of colon tissue."""
    from skimage import data

    return data.immunohistochemistry()


def strokes_to_labels(shape: tuple[int, int], strokes) -> np.ndarray:
    """Rasterise ``(label, polyline, width)`` strokes into a ``shape`` uint8 label image."""
    from scipy import ndimage
    from skimage.draw import line

    labels = np.zeros(shape, dtype=np.uint8)
    for value, points, width in strokes:
        mask = np.zeros(shape, dtype=bool)
        for (r0, c0), (r1, c1) in zip(points, points[1:]):
            rr, cc = line(r0, c0, r1, c1)
            mask[rr, cc] = True
        if width > 1:
            mask = ndimage.binary_dilation(mask, iterations=width // 2)
        labels[mask] = value
    return labels


def sample_ihc() -> list[tuple]:
    """napari sample: the IHC micrograph and a Labels layer of example strokes."""
    image = ihc_image()
    strokes = strokes_to_labels(image.shape[:2], IHC_STROKES)
    return [
        (image, {"name": "ihc micrograph", "rgb": True}, "image"),
        (strokes, {"name": "ihc strokes", "opacity": 0.9}, "labels"),
    ]
