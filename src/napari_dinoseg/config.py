"""Configuration dataclasses: the vocabulary shared by the core, the widgets and bundles.

Each config is frozen, validated once in ``__post_init__`` and serialisable to JSON
(``to_dict`` / ``from_dict``), so the object the widget builds is the one the core
uses and a saved classifier stores.

This module is the public face (every name below imports from here) and holds the feature
config (:class:`FeatureConfig`, its bounds and upsampler presets) and :class:`CASConfig`; the
rest lives in one module per job:

- :mod:`napari_dinoseg.config_checks`: the checks of field values and the JSON round trip
  every config shares, ``config_or_default``;
- :mod:`napari_dinoseg.config_train`: :class:`TrainConfig`;
- :mod:`napari_dinoseg.config_crf`: :class:`CRFConfig` and the bounds of its parameters.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Optional, get_args

from .config_checks import _choice, _integer, _is_int, _is_number, _JSONConfig, _pair, config_or_default
from .config_crf import MAX_CRF_ITERATIONS, MAX_CRF_PARAMETER, MIN_CRF_WIDTH, CRFConfig
from .config_train import MAX_AUGMENT, ClassifierKind, ScalingKind, TrainConfig
from .feature_kinds import BUILT_IN, KINDS
from .models import model_spec

__all__ = ["DEVICES", "FEATURE_KINDS", "MAX_AUGMENT", "MAX_CRF_ITERATIONS", "MAX_CRF_PARAMETER", "MAX_MEMBRANE_SIZE",
           "MAX_SHIFTS", "MAX_SIGMA", "MAX_SIGMAS", "MAX_TILE", "MIN_CRF_WIDTH", "MIN_SIGMA", "CASConfig",
           "ClassifierKind", "CRFConfig", "Device", "Facet", "FeatureConfig", "FeatureKind", "Normalisation",
           "PosEmbed", "Precision", "Resize", "ScalingKind", "TrainConfig", "config_or_default", "preset"]

#: The built-in feature kinds (a registered featuriser adds its own: :data:`napari_dinoseg.feature_kinds.KINDS`).
FeatureKind = Literal["classical", "vit", "hybrid"]
Resize = Literal["nearest", "stretch", "stretch-floor"]
Facet = Literal["token", "key", "query", "value"]
PosEmbed = Literal["timm", "scale"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Normalisation = Literal["percentile", "fixed", "legacy"]
Precision = Literal["auto", "float32", "bfloat16"]
VolumePlanes = Literal["xy", "triplanar"]

FEATURE_KINDS: tuple[str, ...] = BUILT_IN
DEVICES: tuple[str, ...] = get_args(Device)


# Bounds of the classical filter bank: what it can run in the memory and time the estimates say
# (a bundle carries these values; a larger one is refused when the bundle is read).
#: Most Gaussian scales (each adds 10 channels, each pair a difference of Gaussians: 16 scales
#: make 285 channels per image channel).
MAX_SIGMAS = 16
#: Smallest and largest Gaussian scale, px. A scale's kernel reaches ``4 sigma`` px: the image is
#: mirrored by that much around every tile, and tiles of large planes grow by twice that.
MIN_SIGMA, MAX_SIGMA = 0.1, 64.0
#: Longest membrane line kernel, px (odd; Weka's default is 19). Its 16 orientations are built as
#: ``(16, size, size)`` grids: 4001 px took 5.7 GiB on a 64 x 64 image.
MAX_MEMBRANE_SIZE = 101
#: Largest ViT tile, px (attention is quadratic in a tile's tokens); the chooser's largest is 2072.
MAX_TILE = 4096
#: Most shift distances of the ViT upsampler (each adds 8 views, 4 times as many with flips); each
#: is at most the model's patch size (a shift by a whole patch and more repeats the token lattice).
MAX_SHIFTS = 8


@dataclass(frozen=True)
class FeatureConfig(_JSONConfig):
    """How an image is turned into per-pixel features.

    Parameters
    ----------
    kind
        Featuriser: ``"classical"`` (Weka-style filter bank), ``"vit"`` (ViT features
        upsampled to pixel resolution; "DINOv2" in the widget) or ``"hybrid"`` (both,
        concatenated).
    model
        ViT backbone, a name of :data:`napari_dinoseg.models.MODELS`.
    stride
        Patch-embedding stride (1..patch size); ``None``: the device preset.
    shifts
        Shift distances of the upsampler, in pixels (each adds 8 views; at most ``MAX_SHIFTS``
        distinct ones, each at most the patch size); ``None``: preset.
    flips
        Add the flip group {id, h, v, hv} to the upsampler's views; ``None``: preset.
    resize
        Token grid to pixels: ``"nearest"`` receptive-field centre; ``"stretch"``, a plain
        nearest resize of the token grid to the image, as torch's ``nearest-exact`` (the HR-Dv2
        reference's choice); ``"stretch-floor"``, torch's legacy ``nearest``
        (``floor(pixel * tokens / pixels)``: what ``"stretch"`` meant in bundles before format 7).
    facet
        Which descriptor of block ``layer`` the ViT gives (Amir et al.): ``"token"`` (the block's
        output; after the final norm for the last block), or its attention's ``"key"``,
        ``"query"`` or ``"value"`` (heads concatenated, ``D`` channels; keys are the paper's
        best descriptors for correspondences and co-segmentation).
    layer
        The block the facet is taken from: ``-1`` the last, ``0`` the first (negative counts from
        the end). Blocks after it are not run. The CLS attention is that block's.
    pos_embed
        How absolute positional embeddings are resampled to the token grid of a stride: ``"timm"``
        (timm's bicubic resize to the grid's size) or ``"scale"`` (bicubic with scale factor
        ``(grid + 0.1) / side``, ``align_corners=False``, as DINO and dino-vit-features, whose
        features it reproduces). Models with rotary embeddings have none to resample.
    weights
        ``None`` (released weights from the weights folder or the Hugging Face cache),
        a checkpoint path, or ``"random"``.
    tile
        ViT input tile size in pixels: larger images are featurised in overlapping tiles;
        ``None`` picks the whole image or the tile size of fewest FLOPs, 16 patches (224 px
        for DINOv2) at the least (see :func:`napari_dinoseg.features.vit.choose_tiles`); when
        set, 4 patches..``MAX_TILE`` px and more than twice the tile margin (a patch, the
        largest shift and the stride) plus the stride.
    precision
        Number format of the ViT's matrix products (by autocast; the upsampler averages in
        float32): ``"auto"`` is bfloat16 on CUDA GPUs (float16 where they lack it) and on CPUs
        with native bfloat16 instructions (AVX512-BF16, AMX, Arm BF16), float32 elsewhere;
        ``"float32"``; ``"bfloat16"`` (emulated, and several times slower, on other CPUs).
        DINOv2-S features in bfloat16 (random weights) correlate with float32 ones at 0.9998 or
        more in every channel (``benchmarks/bench_vit.py --precision``).
    sigmas
        Gaussian scales of the classical filter bank, in pixels, strictly increasing: 1 to
        ``MAX_SIGMAS`` of them, each in ``MIN_SIGMA``..``MAX_SIGMA`` and distinct in 6 significant
        digits (their channels are named by them).
    membrane
        Add membrane projections (a line kernel at 16 orientations summarised by
        max / min / mean / std).
    membrane_size
        Length of the membrane line kernel in pixels (odd, 3..``MAX_MEMBRANE_SIZE``).
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"`` or ``"mps"``. The machine's
        choice, not the classifier's: a bundle saved with a device this machine lacks is applied
        on the device ``"auto"`` finds (see :func:`napari_dinoseg.bundle.read_bundle`).
    normalise
        How intensities are brought to about [0, 1] before any featuriser (see
        :mod:`napari_dinoseg.image`): ``"percentile"`` per image and channel (brightness and
        contrast changes between images cancel), ``"fixed"`` (``intensity_range``, or the
        integer dtype's range: calibrated data), ``"legacy"`` (uint8 / 255, other dtypes by their
        own min / max: bundles before format 4).
    percentiles
        The low and high percentiles that ``"percentile"`` maps to 0 and 1.
    intensity_range
        ``(low, high)`` intensities that ``"fixed"`` maps to 0 and 1; ``None``: the dtype's range.
    dims
        ``2``: images are planes, each featurised in 2-D (a stack is a set of planes). ``3``: the
        image is a ``(Z, Y, X)`` volume and the classical filters are computed in 3-D, with sigmas
        scaled per axis by the voxel spacing (:mod:`napari_dinoseg.features.classical3d`; membrane
        projections are 2-D only and left out); with a ViT (``"vit"``, ``"hybrid"``) its features
        are computed on 2-D planes of the volume (``volume_planes``), the classical channels in 3-D.
    volume_planes
        The planes a ViT sees in a volume (``dims=3``; :mod:`napari_dinoseg.features.vit_volume`):
        ``"xy"`` every z-slice; ``"triplanar"`` the mean of the features of the xy, xz and yz
        planes through each voxel (three families of planes, each read with the ViT's margin: on a CPU
        16 times xy's time, ``docs/volumes.md``). Voxels are seen as they are, not
        resampled to cubes. Ignored by kinds without a ViT (as every ViT field is); refused with
        ``dims=2`` (a stack of planes is featurised plane by plane).
    """

    kind: FeatureKind = "classical"
    model: str = "dinov2_vits14"
    stride: Optional[int] = None
    shifts: Optional[tuple[int, ...]] = None
    flips: Optional[bool] = None
    resize: Resize = "nearest"
    facet: Facet = "token"
    layer: int = -1
    pos_embed: PosEmbed = "timm"
    weights: Optional[str] = None
    tile: Optional[int] = None
    precision: Precision = "auto"
    sigmas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
    membrane: bool = True
    membrane_size: int = 19
    device: Device = "auto"
    normalise: Normalisation = "percentile"
    percentiles: tuple[float, float] = (5.0, 95.0)
    intensity_range: Optional[tuple[float, float]] = None
    dims: int = 2
    volume_planes: VolumePlanes = "xy"

    def __post_init__(self) -> None:
        _choice("kind", self.kind, tuple(KINDS))
        self._check_dims()
        _choice("normalise", self.normalise, get_args(Normalisation))
        self._check_intensities()
        _choice("device", self.device, DEVICES)
        _choice("resize", self.resize, get_args(Resize))
        _choice("facet", self.facet, get_args(Facet))
        _choice("pos_embed", self.pos_embed, get_args(PosEmbed))
        _choice("precision", self.precision, get_args(Precision))
        if self.uses_vit:
            self._check_vit()
        self._check_sigmas()
        if not isinstance(self.membrane, bool):
            raise ValueError(f"membrane must be True or False, got {self.membrane!r}")
        size = _integer(self.membrane_size)
        if size is None or not 3 <= size <= MAX_MEMBRANE_SIZE or size % 2 == 0:
            raise ValueError(f"membrane_size must be an odd integer in 3..{MAX_MEMBRANE_SIZE} (px), "
                             f"got {self.membrane_size!r}")
        object.__setattr__(self, "membrane_size", size)
        if self.weights is not None and not (isinstance(self.weights, str) and self.weights
                                             and "\0" not in self.weights):
            raise ValueError(f"weights must be None, 'random' or a checkpoint's path, got {self.weights!r}")

    def to_dict(self) -> dict:
        """The fields as JSON values, ``dims`` and ``volume_planes`` left out at their defaults (2,
        ``"xy"``): a plane classifier's bundle then reads in versions from before volumes, which
        refuse fields they do not know."""
        data = super().to_dict()
        if self.dims == 2:
            del data["dims"]
        if self.volume_planes == "xy":
            del data["volume_planes"]
        return data

    @property
    def uses_vit(self) -> bool:
        """Whether this kind runs a ViT (:class:`~napari_dinoseg.feature_kinds.KindTraits`)."""
        return KINDS[self.kind].vit

    @property
    def uses_classical(self) -> bool:
        """Whether this kind computes the classical filter bank."""
        return KINDS[self.kind].classical

    @property
    def is_resolved(self) -> bool:
        """Whether stride, shifts and flips are all set (no preset left to choose)."""
        return not self.uses_vit or None not in (self.stride, self.shifts, self.flips)

    def resolved(self, device_type: str) -> "FeatureConfig":
        """This config with unset ``stride`` / ``shifts`` / ``flips`` taken from the preset of
        ``device_type`` (``"cuda"``, ``"mps"`` or ``"cpu"``): see :func:`preset`."""
        if self.is_resolved:
            return self
        fill = preset(self.model, device_type)
        return dataclasses.replace(
            self,
            stride=fill["stride"] if self.stride is None else self.stride,
            shifts=fill["shifts"] if self.shifts is None else self.shifts,
            flips=fill["flips"] if self.flips is None else self.flips,
        )

    def _check_dims(self) -> None:
        dims = _integer(self.dims)
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 (planes) or 3 (volumes), got {self.dims!r}")
        if dims == 3 and not KINDS[self.kind].volumes:
            kinds = sorted(name for name, traits in KINDS.items() if traits.volumes)
            raise ValueError(f"dims=3 (features of volumes) needs a kind that featurises volumes ({kinds}), got "
                             f"kind={self.kind!r}; with dims=2 a stack is featurised plane by plane")
        object.__setattr__(self, "dims", dims)
        _choice("volume_planes", self.volume_planes, get_args(VolumePlanes))
        if dims == 2 and self.volume_planes != "xy":
            raise ValueError(f"volume_planes={self.volume_planes!r} is for volumes: use it with dims=3, or leave it "
                             "at 'xy' for planes (dims=2 featurises each plane on its own)")

    def _check_sigmas(self) -> None:
        try:
            sigmas = tuple(float(s) for s in self.sigmas)
        except (TypeError, ValueError):
            raise ValueError(f"sigmas must be a tuple of numbers (px), e.g. (1, 2, 4, 8, 16), got {self.sigmas!r}") \
                from None
        if not sigmas:
            raise ValueError("sigmas must hold at least one scale, e.g. (1, 2, 4, 8, 16)")
        if len(sigmas) > MAX_SIGMAS:
            raise ValueError(f"sigmas must hold at most {MAX_SIGMAS} scales, got {len(sigmas)}")
        if any(not math.isfinite(s) or s <= 0 for s in sigmas):
            raise ValueError(f"sigmas must be positive and finite, got {self.sigmas!r}")
        if any(not MIN_SIGMA <= s <= MAX_SIGMA for s in sigmas):
            raise ValueError(f"sigmas must lie in {MIN_SIGMA:g}..{MAX_SIGMA:g} px, got {self.sigmas!r}")
        if any(b <= a for a, b in zip(sigmas, sigmas[1:])):
            raise ValueError(f"sigmas must be strictly increasing, got {self.sigmas!r}")
        if len({f"{s:g}" for s in sigmas}) != len(sigmas):  # the channels are named by them
            raise ValueError(f"sigmas must differ in their first 6 significant digits, got {self.sigmas!r}")
        object.__setattr__(self, "sigmas", sigmas)

    def _check_intensities(self) -> None:
        lo, hi = _pair("percentiles", self.percentiles)
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, got {self.percentiles!r}")
        object.__setattr__(self, "percentiles", (lo, hi))
        if self.intensity_range is not None:
            lo, hi = _pair("intensity_range", self.intensity_range)
            if not hi > lo:
                raise ValueError(f"intensity_range must be (low, high) with high > low, got {self.intensity_range!r}")
            object.__setattr__(self, "intensity_range", (lo, hi))

    def _check_vit(self) -> None:
        patch = model_spec(self.model).patch_size  # raises, listing the valid names
        if self.stride is not None:
            stride = _integer(self.stride)
            if stride is None or not 1 <= stride <= patch:
                raise ValueError(f"stride must be an integer in 1..{patch} (the patch size of {self.model}), "
                                 f"got {self.stride!r}")
            object.__setattr__(self, "stride", stride)
        if self.shifts is not None:
            try:
                shifts = tuple(_integer(s) for s in self.shifts)
            except TypeError:
                shifts = (None,)
            if None in shifts or any(not 1 <= s <= patch for s in shifts) or len(set(shifts)) != len(shifts) \
                    or len(shifts) > MAX_SHIFTS:
                raise ValueError(f"shifts must be at most {MAX_SHIFTS} distinct pixel distances in 1..{patch} (the "
                                 f"patch size of {self.model}), got {self.shifts!r}")
            object.__setattr__(self, "shifts", shifts)
        if self.flips is not None and not isinstance(self.flips, bool):
            raise ValueError(f"flips must be True, False or None, got {self.flips!r}")
        depth = model_spec(self.model).depth
        if not _is_int(self.layer) or not -depth <= self.layer < depth:
            raise ValueError(f"layer must be an integer block index in {-depth}..{depth - 1} for {self.model} "
                             f"({depth} blocks), got {self.layer!r}")
        if self.tile is not None:
            tile = _integer(self.tile)
            if tile is None or not 4 * patch <= tile <= MAX_TILE:
                raise ValueError(f"tile must be an integer in {4 * patch}..{MAX_TILE} px for {self.model}, "
                                 f"got {self.tile!r}")
            if self.stride is not None and self.shifts is not None:  # tiles must leave a core inside their margins
                margin = patch + max(self.shifts, default=0) + self.stride
                if tile <= 2 * margin + self.stride:
                    raise ValueError(f"tile must be more than {2 * margin + self.stride} px with stride {self.stride} "
                                     f"and shifts {self.shifts} (twice the tile margin of {margin} px, plus the "
                                     f"stride), got {self.tile!r}")
            object.__setattr__(self, "tile", tile)


def preset(model: str, device_type: str) -> dict:
    """Upsampler preset for a device type.

    GPU (``"cuda"`` / ``"mps"``): the paper's setting, stride 4, shifts (1, 2), flips
    (68 views). CPU: stride = patch size with shifts of a quarter and half the patch
    (the paper's shift-to-stride ratios), no flips: 17 views, ~12 s for a 512^2 image
    with ViT-S/14 on 2 cores (measured, see docs/benchmarks.md).
    """
    patch = model_spec(model).patch_size
    if device_type in ("cuda", "mps"):
        return {"stride": 4, "shifts": (1, 2), "flips": True}
    return {"stride": patch, "shifts": (max(1, round(patch / 4)), patch // 2), "flips": False}


@dataclass(frozen=True)
class CASConfig(_JSONConfig):
    """Unsupervised class-agnostic segmentation (CAS).

    Parameters
    ----------
    features
        How images are featurised (ignored when features are passed in); DINOv2 by default,
        whose CLS attention finds the foreground. Classical features have no attention: their
        classes come from the smoothed intensity, 2..min(k, 6) of them chosen by silhouette,
        and every class but the one with the largest connected region (the matrix) is
        foreground (see :mod:`napari_dinoseg.unsupervised`).
    k
        k-means clusters before merging (features with attention); without attention, the
        most classes tried (at most 6).
    granularity
        Factor on the semantic-distance threshold (about 0.95..1.1): larger merges more
        (features with attention only).
    crf
        Refine the merged classes with a dense CRF (``crf_config``).
    sample
        Pixels (seeded subsample over all images) k-means is fitted on; every pixel is then assigned.
    min_area
        Smallest connected component, in pixels, that gets an object box; ``None``: 0.2 %
        of the image, at least 64 px.
    seed
        Seed of the subsample and of k-means.
    """

    features: FeatureConfig = dataclasses.field(default_factory=lambda: FeatureConfig(kind="vit"))
    k: int = 80
    granularity: float = 1.0
    crf: bool = False
    crf_config: CRFConfig = dataclasses.field(default_factory=CRFConfig)
    sample: int = 50_000
    min_area: Optional[int] = None
    seed: int = 0

    def __post_init__(self) -> None:
        config_or_default(self.features, FeatureConfig, "features")
        config_or_default(self.crf_config, CRFConfig, "crf_config")
        if not _is_int(self.k) or not 2 <= self.k <= 1000:
            raise ValueError(f"k must be an integer in [2, 1000], got {self.k!r}")
        if not (_is_number(self.granularity) and 0 < self.granularity < 10):
            raise ValueError(f"granularity must be a positive factor (about 0.95..1.1), got {self.granularity!r}")
        for name in ("sample", "min_area"):
            value = getattr(self, name)
            if (value is not None or name == "sample") and (not _is_int(value) or not 1 <= value <= 10**9):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
