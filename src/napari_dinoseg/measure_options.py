"""How label images are measured: :class:`MeasureOptions` (``dinoseg apply --measure``,
``dinoseg measure``, the apply-to-folder dock) and the names of where a pixel size came from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

#: ``pixel_size_from`` of a pixel size given (``--pixel-size``, ``pixel_size=``) and of none.
GIVEN, NO_PIXEL_SIZE = "given", "none"


@dataclass(frozen=True)
class MeasureOptions:
    """How label images are measured (``dinoseg apply --measure``,
    :func:`~napari_dinoseg.measure_report.measure_files`).

    Attributes
    ----------
    min_size : int
        Objects of fewer pixels are left out of the objects table (not of the fractions).
    split : bool
        Separate touching round objects (see :func:`napari_dinoseg.measure.measure`).
    pixel_size : float or None
        µm per pixel, replacing any the files' metadata give; ``None``: the metadata's.

    Raises
    ------
    ValueError
        A negative or fractional ``min_size``, a ``pixel_size`` that is not a positive finite
        number, a ``split`` that is not a bool.
    """

    min_size: int = 0
    split: bool = False
    pixel_size: Optional[float] = None

    def __post_init__(self) -> None:
        size = self.min_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise ValueError(f"the minimum object size (--min-size, min_size) must be a whole number of pixels >= 0, "
                             f"got {size!r}")
        object.__setattr__(self, "min_size", int(size))
        if not isinstance(self.split, (bool, np.bool_)):
            raise ValueError(f"split must be True or False, got {self.split!r}")
        object.__setattr__(self, "split", bool(self.split))
        if self.pixel_size is not None:
            try:
                value = float(self.pixel_size)
            except (TypeError, ValueError):
                value = float("nan")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"the pixel size (--pixel-size, pixel_size) must be a positive number of µm per "
                                 f"pixel, got {self.pixel_size!r}; leave it out to use the images' metadata")
            object.__setattr__(self, "pixel_size", value)

    def key(self) -> dict:
        """The options as a record stores them (a record of other options is measured again)."""
        return {"min_size": self.min_size, "split": self.split, "pixel_size": self.pixel_size}
