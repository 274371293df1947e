"""The :class:`~napari_dinoseg.Segmenter`'s volume path (``FeatureConfig(dims=3)``), as a mixin:
fitting on ``(Z, Y, X)`` volumes (:mod:`napari_dinoseg.volume_training`) and predicting them block
by block (:mod:`napari_dinoseg.volume_prediction`), the findings kept for the shift report."""

from __future__ import annotations

from typing import Optional, Sequence


class VolumeSegmenting:
    """Volumes for :class:`~napari_dinoseg.Segmenter` (its ``features``, ``pixel_size``,
    ``_fitted`` and ``_keep_findings``)."""

    def _fit_volumes(self, images: list, labels: list, spacing: Optional[Sequence[float]], progress,
                     pixel_size: Optional[float], cache=None) -> bool:
        """Fit on volumes when the feature config is 3-D (then ``True``); ``False`` for planes,
        refusing a spacing given for them."""
        if not self._is_volume(spacing):
            return False
        from .volume_training import fit_volumes

        fit_volumes(self, images, labels, spacing, progress, cache)
        self.pixel_size = pixel_size
        return True

    def _is_volume(self, spacing) -> bool:
        """Whether this Segmenter predicts volumes (3-D features); for planes, a spacing is refused."""
        if self.features.dims != 3:
            no_spacing(spacing)
            return False
        return True

    def _predict_volume(self, volume, out, labels: bool, spacing, progress, cache=None):
        """:func:`~napari_dinoseg.volume_prediction.predict_volume`, its findings kept for ``check``."""
        from .volume_prediction import predict_volume

        self._fitted()
        out, findings = predict_volume(self, volume, out, labels, spacing, progress, cache=cache)
        self._keep_findings(out, findings)
        return out


def no_spacing(spacing) -> None:
    """Refuse a voxel spacing given for a plane (a classifier of 2-D features)."""
    if spacing is not None:
        raise ValueError("spacing is for volumes, and this classifier uses 2-D features (FeatureConfig(dims=2)); "
                         "train with FeatureConfig(dims=3) to segment volumes in 3-D")
