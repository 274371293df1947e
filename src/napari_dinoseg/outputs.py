"""What an output of ``dinoseg apply`` is: its file names and the metadata it carries.

Used by :mod:`napari_dinoseg.batch`, which writes the outputs, and by
:mod:`napari_dinoseg.measure_report`, which measures them; imports neither.
"""

from __future__ import annotations

from pathlib import Path

#: ``<stem>_labels.tif``: an input's label image.
LABEL_SUFFIX = "_labels.tif"
#: ``<stem>_proba.tif``: its class probabilities, when asked for.
PROBA_SUFFIX = "_proba.tif"


def output_metadata(path: Path) -> dict:
    """What an output TIFF says of itself: classifier fingerprint, input, classes, the image's
    warnings, the axes given and the channel count the input was read with, the output's axes,
    its size in bytes and its pixel data's byte count and checksum ({} if nothing)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tif.shaped_metadata[0] if tif.shaped_metadata else {}
