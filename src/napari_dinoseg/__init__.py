"""napari-dinoseg: interactive segmentation of micrographs with classical and ViT features.

Importing the package is cheap: it imports neither torch nor napari. The public names
below are resolved lazily on first access.
"""

__version__ = "0.1.0"

__all__ = [
    "CASConfig",
    "apply_bundle",
    "correspondences",
    "CRFConfig",
    "Cancelled",
    "FeatureConfig",
    "FeatureStack",
    "PixelClassifier",
    "Segmenter",
    "TrainConfig",
    "featurise",
    "load_bundle",
    "save_bundle",
    "predict",
    "segment_parts",
    "segment_unsupervised",
    "segment_volume_unsupervised",
    "similar_mask",
    "similarity_map",
    "train",
]

_LAZY = {
    "Cancelled": "napari_dinoseg.progress",
    "FeatureConfig": "napari_dinoseg.config",
    "CASConfig": "napari_dinoseg.config",
    "CRFConfig": "napari_dinoseg.config",
    "segment_unsupervised": "napari_dinoseg.unsupervised",
    "segment_volume_unsupervised": "napari_dinoseg.unsupervised_volume",
    "segment_parts": "napari_dinoseg.parts",
    "correspondences": "napari_dinoseg.correspondence",
    "TrainConfig": "napari_dinoseg.config",
    "FeatureStack": "napari_dinoseg.features.featurise",
    "featurise": "napari_dinoseg.features.featurise",
    "PixelClassifier": "napari_dinoseg.classify",
    "Segmenter": "napari_dinoseg.segmenter",
    "save_bundle": "napari_dinoseg.bundle",
    "apply_bundle": "napari_dinoseg.batch",
    "load_bundle": "napari_dinoseg.bundle",
    "train": "napari_dinoseg.classify",
    "predict": "napari_dinoseg.classify",
    "similarity_map": "napari_dinoseg.similarity",
    "similar_mask": "napari_dinoseg.similarity",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_dinoseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
