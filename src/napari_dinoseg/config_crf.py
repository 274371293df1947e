"""The dense CRF's config, :class:`CRFConfig`, and the bounds of its parameters. Imported from
:mod:`napari_dinoseg.config`, which re-exports them."""

from __future__ import annotations

from dataclasses import dataclass

from .config_checks import _is_int, _is_number, _JSONConfig

#: Mean-field iterations of the dense CRF; more changes nothing (it converges in about 10).
MAX_CRF_ITERATIONS = 100
#: Smallest kernel width (px, or intensity levels of 0..255 for ``bilateral_srgb``) of the dense CRF.
#: pydensecrf's lattice coordinates are pixel positions over the width: at zero it crashes the
#: process (a segmentation fault), near 1e-5 it corrupts its heap on a 1024 px image; below about
#: 0.5 every pixel is its own lattice point already (the most memory and time a CRF takes).
MIN_CRF_WIDTH = 0.1
#: Largest CRF kernel width or compatibility weight.
MAX_CRF_PARAMETER = 1e4


@dataclass(frozen=True)
class CRFConfig(_JSONConfig):
    """Fully connected CRF refinement (Krähenbühl and Koltun) of per-pixel probabilities.

    Unary ``-log p``; a Gaussian (smoothness) kernel of spatial width ``gaussian_sxy`` px and
    weight ``gaussian_compat``; a bilateral (appearance) kernel of spatial width
    ``bilateral_sxy`` px, intensity width ``bilateral_srgb`` (0..255 scale) and weight
    ``bilateral_compat``; ``iterations`` of mean-field inference. Defaults as the reference.
    Widths lie in ``MIN_CRF_WIDTH``..``MAX_CRF_PARAMETER`` (pydensecrf crashes at zero width),
    weights in 0..``MAX_CRF_PARAMETER``, iterations in 1..``MAX_CRF_ITERATIONS``.
    """

    gaussian_sxy: float = 3.0
    gaussian_compat: float = 10.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    iterations: int = 10

    def __post_init__(self) -> None:
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):  # widths: 0 crashes pydensecrf
            value = getattr(self, name)
            if not (_is_number(value) and MIN_CRF_WIDTH <= value <= MAX_CRF_PARAMETER):
                raise ValueError(f"{name} must be a number in [{MIN_CRF_WIDTH:g}, {MAX_CRF_PARAMETER:g}], got {value!r}")
        for name in ("gaussian_compat", "bilateral_compat"):
            value = getattr(self, name)
            if not (_is_number(value) and 0 <= value <= MAX_CRF_PARAMETER):
                raise ValueError(f"{name} must be a number in [0, {MAX_CRF_PARAMETER:g}], got {value!r}")
        if not _is_int(self.iterations) or not 1 <= self.iterations <= MAX_CRF_ITERATIONS:
            raise ValueError(f"iterations must be an integer in [1, {MAX_CRF_ITERATIONS}], got {self.iterations!r}")
