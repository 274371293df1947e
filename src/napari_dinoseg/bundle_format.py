"""The on-disk format of a classifier bundle: its name and version (with what each version
added), the arrays it holds, the library versions it records, and :class:`BundleContents`, what
reading one gives.

Below the reader (:mod:`napari_dinoseg.bundle_archive`, :mod:`napari_dinoseg.bundle_checks`)
and the writer (:mod:`napari_dinoseg.bundle_write`); :mod:`napari_dinoseg.bundle` re-exports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

from .classify import PixelClassifier
from .config import CRFConfig, FeatureConfig, TrainConfig
from .distribution_shift import TrainingStatistics

FORMAT = "napari-dinoseg-bundle"
#: 2: the classifier's feature scaling, probability smoothing and trees are stored (format 1
#: bundles load as a standard-scaled logistic regression without smoothing, as they were trained).
#: 3: the guided filter's radius and guide channels (format 2 bundles load without it).
#: 4: the whole :class:`~napari_dinoseg.Segmenter`: training and CRF configs, training statistics,
#: and the feature config's intensity normalisation (older bundles load with ``"legacy"``, the
#: rule they were trained with).
#: 5: the classifier's linear (ViT) channels, the trees' own channels and their ViT components
#: (older bundles: none; their trees read every channel, ``vit_components=0``).
#: 6: the lattice step of the classifier's prediction (``predict_step``; older bundles: 1, every pixel).
#: 7: ``resize="stretch"`` is torch's ``nearest-exact`` (older bundles' ``"stretch"`` loads as
#: ``"stretch-floor"``, the rule they were trained with); the ViT facet, layer and positional
#: embedding rule (older bundles: the last block's tokens, timm's resampling).
#: 8: the training statistics hold the training pixels' feature distribution, that of the
#: contrast-inverted training images and the classifier's confidence on them (the shift report's
#: feature, inversion and confidence checks; older bundles load without them and check intensities only).
#: 9: the guided filter's second guide channels (``guide_laplacian``, 3-D classifiers; older bundles:
#: none, the one-guide filter they were trained with).
#:
#: A version is for what a reader must know to use the classifier as it was trained: a key an
#: older reader may ignore without misreading the classifier does not make one. So
#: ``pixel_size_um`` (µm per pixel of the training images, or null; for the shift report's
#: pixel-size check and ``dinoseg apply --resample``) is in format 8 bundles written since it was
#: added, and bundles without it read with ``pixel_size=None`` (unknown); ``spacing`` likewise
#: (the training volumes' voxel spacing). A classifier of 3-D features has ``"dims": 3`` in its
#: feature config, which readers from before volumes refuse as an unknown field, as they must.
FORMAT_VERSION = 9
ARRAYS = ("coef", "intercept", "classes", "mean", "scale")
#: Arrays only some classifiers have.
OPTIONAL_ARRAYS = ("tree_components",)
FOREST_PREFIX = "forest_"
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class BundleContents:
    """Everything a bundle holds (see :meth:`napari_dinoseg.Segmenter.load`)."""

    classifier: PixelClassifier
    features: FeatureConfig
    training: TrainConfig
    crf: Optional[CRFConfig]
    statistics: Optional[TrainingStatistics]
    n_channels: int
    channel_names: Optional[tuple[str, ...]]
    #: What was decided in reading it, for the user (a device this machine lacks replaced).
    notes: tuple = ()
    #: µm per pixel of the training images (``pixel_size_um``); ``None``: unknown, or not recorded.
    pixel_size: Optional[float] = None
    #: ``(dz, dy, dx)`` of the training volumes of a 3-D classifier (``spacing``); ``None``: unknown.
    spacing: Optional[tuple] = None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("napari-dinoseg", "numpy", "scikit-learn", "torch", "timm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
