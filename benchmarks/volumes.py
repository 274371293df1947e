"""Volumes (issue 28): strokes on 3 slices -> a whole 3-D volume segmented; quality, time, memory.

Usage::

    .venv/bin/python benchmarks/volumes.py [--data ../shared/evaldata]
        [--volumes lucchi lucchi-z4 lucchi-x2 blobs2 blobs3] [--methods skimage-3d dinoseg-3d ...]
        [--budget 0.01] [--seed 0] [--shape 128 256 256] [--lucchi-crop Z Y X]
        [--max-gib 16] [--reserve-gib 4] [--timeout 3600] [--quick]
        [--out benchmarks/results/volumes.json] [--append]

Protocol. A user paints brush strokes on 3 slices of a (Z, Y, X) uint8 volume, at z = depth // 4,
depth // 2 and 3 * depth // 4, and every method segments the whole volume from those same
strokes. The strokes are ``quality.simulate_scribbles`` run on each painted slice's ground truth
(thin random-walk strokes inside eroded class regions, seed ``--seed + i`` on the i-th slice),
with a budget of ``--budget`` (default 0.01) of a slice's pixels on each painted slice, shared
equally between the classes the slice shows (lucchi: 1,310 px per class and slice, 7,860 in all).
The score is the IoU of every class over all scored voxels pooled, and their mean (mIoU); the
scored voxels are every labelled voxel of the volume **except the 3 painted slices** (the JSON
gives their count and the confusion matrix).

Volumes (``--volumes``):

- ``lucchi``: the EPFL hippocampus FIB-SEM volume with Lucchi++ mitochondria labels,
  165 x 512 x 512, isotropic ~5 nm voxels, read from ``--data`` (never copied anywhere);
- ``lucchi-z4``: anisotropy. Every 4th slice of lucchi kept (42 x 512 x 512, voxels 4:1:1),
  strokes on 3 of the kept slices, scored on the kept volume;
- ``lucchi-x2``: memory. Lucchi concatenated with its z-mirror along z (330 x 512 x 512), the
  lucchi strokes (the mirrored half unpainted), to show the peak grows with the block, not the
  volume;
- ``blobs2``, ``blobs3``: synthetic volumes with exact ground truth (PoreSpy 3.2 generators,
  seeded by ``--seed``), ``--shape`` (default 128 x 256 x 256): ``blobs2`` a two-phase porous
  medium (``porespy.generators.blobs``, porosity 0.5), ``blobs3`` three phases (a ``blobs`` pore
  network and ``overlapping_spheres`` particles, r = 5 voxels, 15 %); each phase mapped to a
  grey level close to the others', blurred by an anisotropic Gaussian PSF (sigma z, y, x =
  1.5, 1, 1 voxels), Gaussian noise added, rounded to uint8 (:data:`SYNTHETIC`).

Methods (``--methods``), each row in its own subprocess so that its peak resident set (the
child's ``VmHWM``, not ``ru_maxrss``, which Linux carries over from the parent through the spawn)
and its times are its own:

- ``skimage-3d`` "skimage 3-D + RF": ``skimage.feature.multiscale_basic_features(volume,
  sigma_min=1, sigma_max=16, channel_axis=None)`` (25 float32 channels in 3-D) + scikit-learn
  ``RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=0)`` trained on the painted
  voxels, predicting every voxel (in chunks of 2^20 voxels). Fit = the volume's features + the
  forest; predict = the forest on every voxel. Before it runs, its peak is estimated from
  :data:`BYTES_PER_VOXEL`; where that exceeds the memory limit (``--max-gib``, and the memory
  available less ``--reserve-gib`` for other work) it is not run: it is run on a centred crop
  instead to measure its bytes per voxel, and the row says what the whole volume needs;
- ``skimage-3d-per-sigma`` "skimage 3-D + RF (one σ at a time)": the same features, equal to
  the last bit (tested), built by scikit-image's per-scale function one sigma after the other into
  one float32 array (about a third of the one-call peak; the 5 scales run one after the other
  instead of on ``workers`` threads, so its features take longer). Run where ``skimage-3d`` is
  skipped for memory, or when named;
- ``skimage-2d`` "skimage 2-D per slice + RF": the same features and forest per z-slice (fit:
  the 3 painted slices' features + the forest; predict: every slice's features + the forest);
- ``dinoseg-2d`` "dinoseg 2-D per slice": the product on planes, ``Segmenter(features=
  FeatureConfig(kind="classical"), training=TrainConfig()).fit([3 painted slices], [their
  strokes])``, then ``segment(plane)`` for every slice;
- ``dinoseg-3d`` "dinoseg 3-D": ``Segmenter(features=FeatureConfig(kind="classical", dims=3),
  training=TrainConfig()).fit(volume, labels, spacing=(dz, dy, dx))`` with the (Z, Y, X) uint8
  volume and (Z, Y, X) uint8 labels (0 = unpainted, k + 1 = class k), then ``segment(volume,
  spacing=...)`` -> (Z, Y, X) label values. The volume's own spacing (lucchi-z4: (4, 1, 1)).
  Where ``FeatureConfig`` refuses ``dims=3`` (TypeError / ValueError) the row says "not available
  yet" and the rest runs;
- ``dinoseg-3d-isotropic`` "dinoseg 3-D, spacing (1, 1, 1)": the same, told the voxels are
  isotropic (the anisotropy row's comparison; lucchi-z4 only by default).

Rows by volume (default): lucchi, blobs2, blobs3: skimage-3d (per-sigma where skipped),
skimage-2d, dinoseg-2d, dinoseg-3d; lucchi-z4: skimage-3d, dinoseg-3d (4, 1, 1),
dinoseg-3d-isotropic; lucchi-x2: dinoseg-3d. ``--methods`` keeps those of each volume's rows it
names (and adds ``skimage-3d-per-sigma`` where ``skimage-3d`` is a row).

Targets (issue 28), checked in the report: dinoseg 3-D >= dinoseg 2-D per slice + 0.02 mIoU and >
skimage 3-D on every volume; dinoseg 3-D total time <= 1.0x skimage 3-D's on the same volume;
dinoseg 3-D peak RSS on lucchi <= 4 GiB and about the same on lucchi-x2; on lucchi-z4 spacing
(4, 1, 1) better than (1, 1, 1).

Peak RSS is the whole child process: interpreter, libraries, the volume, the labels and the
output; ``base`` is its resident set before the fit (data loaded, libraries loaded by a tiny
warm-up fit on a 32 x 32 plane, which the times leave out too). Times are wall-clock seconds on a
shared machine (other work may run at the same time: the load average at the start is recorded).
The table gives each row's mIoU difference and time ratio to the volume's scikit-image 3-D row
(the one call, else one sigma at a time). ``--quick`` runs small crops (lucchi 48 x 160 x 160,
synthetic 32 x 96 x 96) for a smoke run of a minute or two (and writes
``volumes_quick.{json,md}`` unless ``--out``). ``--append`` merges this run's rows into an
existing ``--out`` (e.g. the product's rows again after a change, without the slow baselines);
each row then says which run it came from, and a time ratio across runs is flagged.
Outputs: the markdown tables on stdout and in ``--out`` with a ``.md`` suffix, and the JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import quality as Q  # noqa: E402
from machine import cpu_name  # noqa: E402

GIB = float(1 << 30)
LUCCHI = "lucchi_pp_mito_train"
VOLUMES = ("lucchi", "lucchi-z4", "lucchi-x2", "blobs2", "blobs3")
#: Every ``ANISOTROPY``-th slice is kept in ``lucchi-z4``.
ANISOTROPY = 4
#: Method id -> row label.
METHODS = {
    "skimage-3d": "skimage 3-D + RF",
    "skimage-3d-per-sigma": "skimage 3-D + RF (one σ at a time)",
    "skimage-2d": "skimage 2-D per slice + RF",
    "dinoseg-2d": "dinoseg 2-D per slice",
    "dinoseg-3d": "dinoseg 3-D",
    "dinoseg-3d-isotropic": "dinoseg 3-D, spacing (1, 1, 1)",
    "dinoseg-3d-unsmoothed": "dinoseg 3-D, no edge-aware smoothing",
}
#: What each method is, for the report.
DESCRIPTIONS = {
    "skimage-3d": "multiscale_basic_features(volume, sigma_min=1, sigma_max=16) in one call (25 float32 channels) + "
                  "RandomForestClassifier(100 trees, n_jobs=-1, random_state=0) on the painted voxels, predicting "
                  "every voxel (2^20 per call)",
    "skimage-3d-per-sigma": "the same features, identical values, built one sigma after the other into one float32 "
                            "array (the 5 scales one after the other, not on scikit-image's worker threads: slower)",
    "skimage-2d": "the same features and forest per z-slice (fit: the 3 painted slices)",
    "dinoseg-2d": "Segmenter(FeatureConfig(kind='classical'), TrainConfig()) fitted on the 3 painted slices, "
                  "segment() on every slice",
    "dinoseg-3d": "Segmenter(FeatureConfig(kind='classical', dims=3), TrainConfig()).fit(volume, labels, spacing), "
                  "segment(volume, spacing), with the volume's voxel spacing",
    "dinoseg-3d-isotropic": "the same, told spacing (1, 1, 1)",
    "dinoseg-3d-unsmoothed": "the same with TrainConfig(guided_radius=0): the probabilities not smoothed by the "
                             "per-slice guided filter (the dock's 'edge-aware smoothing' unticked)",
}
#: The rows each volume runs by default (``--methods`` keeps those it names).
DEFAULT_METHODS = {
    "lucchi": ("skimage-3d", "skimage-2d", "dinoseg-2d", "dinoseg-3d", "dinoseg-3d-unsmoothed"),
    "blobs2": ("skimage-3d", "skimage-2d", "dinoseg-2d", "dinoseg-3d", "dinoseg-3d-unsmoothed"),
    "blobs3": ("skimage-3d", "skimage-2d", "dinoseg-2d", "dinoseg-3d", "dinoseg-3d-unsmoothed"),
    "lucchi-z4": ("skimage-3d", "dinoseg-3d", "dinoseg-3d-isotropic"),
    "lucchi-x2": ("dinoseg-3d",),
}
#: scikit-image's features: sigma range; the forest's trees; voxels per ``predict`` call.
SIGMA_MIN, SIGMA_MAX, N_TREES, PREDICT_CHUNK = 1, 16, 100, 1 << 20
#: Peak resident bytes per voxel above the process's base, measured here on lucchi crops
#: (165 x 96^2, 165 x 173^2, 165 x 192^2: 820, 864, 836 for the one call; 165 x 96^2 and 165 x
#: 192^2: 327 and 288 one sigma at a time); used to decide whether a row can run (the one call
#: is then measured on a crop), never reported as a measurement.
BYTES_PER_VOXEL = {"skimage-3d": 870, "skimage-3d-per-sigma": 340}
#: ``--quick`` shapes: lucchi centre crop and synthetic volumes.
QUICK_LUCCHI, QUICK_SHAPE = (48, 160, 160), (32, 96, 96)
DEFAULT_SHAPE = (128, 256, 256)


@dataclass(frozen=True)
class Synthetic:
    """How a synthetic volume is made: phases, grey levels and imaging.

    ``levels[k]`` is class ``k``'s grey level before blur and noise; ``psf`` the Gaussian's
    sigmas (z, y, x) in voxels; ``noise`` the standard deviation of the added Gaussian noise in
    grey levels; ``blob_size`` the sigma (voxels) of the noise field ``blobs`` thresholds (its
    ``blobiness`` is set from it so the structure's scale does not depend on the shape).
    """

    description: str
    classes: tuple[str, ...]
    levels: tuple[float, ...]
    porosity: float = 0.5
    particles: float = 0.0  # volume fraction of overlapping spheres (class 2), 0: none
    radius: int = 5
    blob_size: float = 4.0
    psf: tuple[float, float, float] = (1.5, 1.0, 1.0)
    noise: float = 22.0


SYNTHETIC = {
    "blobs2": Synthetic("two-phase porous medium (porespy blobs, porosity 0.5): solid 128, pore 104 grey "
                        "levels, PSF sigma (1.5, 1, 1), noise sd 22", ("solid", "pore"), (128.0, 104.0)),
    "blobs3": Synthetic("three phases: porespy blobs pores (porosity 0.35) and overlapping_spheres particles "
                        "(r 5, 15 %) in a matrix: matrix 120, pore 96, particle 144 grey levels, PSF sigma "
                        "(1.5, 1, 1), noise sd 22", ("matrix", "pore", "particle"), (120.0, 96.0, 144.0),
                        porosity=0.35, particles=0.15),
}


# ----------------------------------------------------------------------------- volumes


def centre_crop(array: np.ndarray, shape: Optional[Sequence[int]]) -> np.ndarray:
    """The centred ``shape`` box of ``array`` (each side at most the array's); ``None``: all of it."""
    if shape is None:
        return array
    starts = [max(0, (n - min(n, s)) // 2) for n, s in zip(array.shape, shape)]
    return array[tuple(slice(a, a + min(n, s)) for a, n, s in zip(starts, array.shape, shape))]


def lucchi_array(data: Path, what: str, crop: Optional[Sequence[int]] = None, every: int = 1,
                 mirror: bool = False) -> np.ndarray:
    """The lucchi volume (``what="images"``) or its mitochondria mask (``"masks"``), (Z, Y, X) uint8.

    ``crop`` a centred box first, then every ``every``-th slice kept, then (``mirror``) the
    z-mirror appended along z (2x the slices)."""
    import tifffile

    path = Path(data) / LUCCHI / what / "lucchi_train.tif"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --data PATH (the shared evaldata folder)")
    vol = centre_crop(tifffile.imread(path), crop)[::every]
    if mirror:
        vol = np.concatenate([vol, vol[::-1]])
    return np.ascontiguousarray(vol)


def phase_map(name: str, shape: Sequence[int], seed: int) -> np.ndarray:
    """Exact ground truth of a synthetic volume: ``(Z, Y, X)`` uint8 class ids 0..K-1.

    PoreSpy's generators seed NumPy's global generator; its state is restored afterwards.
    """
    from porespy.generators import blobs, overlapping_spheres

    spec = SYNTHETIC[name]
    shape = tuple(int(n) for n in shape)
    state = np.random.get_state()
    try:
        blobiness = float(np.mean(shape)) / (40.0 * spec.blob_size)  # blobs' sigma = mean(shape) / (40 b)
        pores = blobs(shape, porosity=spec.porosity, blobiness=blobiness, seed=seed, periodic=False)
        gt = pores.astype(np.uint8)  # 0 solid / matrix, 1 pore
        if spec.particles:
            solid_spheres = ~overlapping_spheres(shape, r=spec.radius, porosity=1.0 - spec.particles,
                                                 seed=seed + 1)
            gt[solid_spheres] = 2
    finally:
        np.random.set_state(state)
    return gt


def render(gt: np.ndarray, levels: Sequence[float], psf: Sequence[float], noise: float, seed: int) -> np.ndarray:
    """A micrograph of phase map ``gt``: class ``k`` at grey level ``levels[k]``, blurred by a
    Gaussian of sigmas ``psf`` (voxels, per axis), Gaussian noise of sd ``noise`` added (seed
    ``seed``), rounded and clipped to uint8. Returns ``gt``'s shape, uint8."""
    from scipy.ndimage import gaussian_filter

    image = np.asarray(levels, np.float32)[gt]
    image = gaussian_filter(image, sigma=tuple(psf), mode="reflect")
    image += np.random.default_rng(seed).normal(0.0, noise, gt.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def synthetic_volume(name: str, shape: Sequence[int] = DEFAULT_SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic volume and its exact ground truth, both ``shape`` uint8.

    Parameters
    ----------
    name
        ``"blobs2"`` or ``"blobs3"`` (:data:`SYNTHETIC`).
    shape
        ``(Z, Y, X)`` voxels.
    seed
        The phases' and the noise's seed: the same seed gives the same volume.

    Returns
    -------
    image : (Z, Y, X) uint8
    gt : (Z, Y, X) uint8, class ids 0..K-1 (K = len(SYNTHETIC[name].classes))
    """
    if name not in SYNTHETIC:
        raise ValueError(f"unknown synthetic volume {name!r}; known: {', '.join(SYNTHETIC)}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be (Z, Y, X) with every side >= 8 voxels, got {tuple(shape)}")
    spec = SYNTHETIC[name]
    gt = phase_map(name, shape, seed)
    return render(gt, spec.levels, spec.psf, spec.noise, seed + 1000), gt


@dataclass
class Volume:
    """One volume of the benchmark as the parent process holds it (the image stays with the children).

    ``source`` says how a child gets the image (``{"kind": "lucchi", ...}``: read and cut from
    ``--data``; ``{"kind": "npy", "path": ...}``: a generated volume saved in the run's temporary
    folder); ``labels`` are the strokes (Z, Y, X) uint8, 0 unpainted, k + 1 class k.
    """

    name: str
    description: str
    classes: list[str]
    gt: np.ndarray
    labels: np.ndarray
    painted_z: tuple[int, ...]
    spacing: tuple[float, float, float]
    source: dict
    methods: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


def stroke_slices(depth: int) -> tuple[int, int, int]:
    """The painted slices of a volume ``depth`` slices deep: z = depth // 4, depth // 2, 3 * depth // 4."""
    if depth < 4:
        raise ValueError(f"a volume needs at least 4 slices for strokes on 3 of them, got {depth}")
    return depth // 4, depth // 2, 3 * depth // 4


def volume_scribbles(gt: np.ndarray, zs: Sequence[int], budget: float, seed: int = 0) -> np.ndarray:
    """Simulated brush strokes on slices ``zs`` of a volume (``quality.simulate_scribbles`` per slice).

    Parameters
    ----------
    gt : (Z, Y, X) uint8
        Class ids 0..K-1 (255 = ignore).
    zs
        The painted slices.
    budget
        Painted pixels per slice, as a fraction of a slice's pixels, shared equally between the
        classes the slice shows.
    seed
        Slice ``zs[i]`` gets strokes seeded ``seed + i``.

    Returns
    -------
    (Z, Y, X) uint8 labels: 0 unpainted (every slice not in ``zs``), k + 1 for class k.
    """
    if gt.ndim != 3:
        raise ValueError(f"gt must be (Z, Y, X), got shape {gt.shape}")
    labels = np.zeros(gt.shape, np.uint8)
    per_slice = budget * gt.shape[1] * gt.shape[2]
    for i, z in enumerate(zs):
        labels[z] = Q.simulate_scribbles(gt[z], per_slice, seed=seed + i)
    return labels


def score(gt: np.ndarray, pred: np.ndarray, k: int, exclude_z: Sequence[int] = ()) -> dict:
    """IoU per class and mIoU of ``pred`` against ``gt`` over every slice not in ``exclude_z``.

    Parameters
    ----------
    gt, pred : (Z, Y, X) integer arrays
        Class ids 0..K-1 (``gt`` 255 = ignored).
    k
        Number of classes.
    exclude_z
        Slices left out (the painted ones).

    Returns
    -------
    ``{"miou", "iou" (list of K), "scored_voxels", "confusion" (K x K, rows true, columns
    predicted)}``; a class absent from both truth and prediction has IoU ``None`` and is left out
    of the mean (``None`` where no class is scored).
    """
    if gt.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the ground truth's {gt.shape}")
    if pred.size and int(pred.max()) >= k:
        raise ValueError(f"the prediction holds class {int(pred.max())}, but there are {k} classes")
    skip = {int(z) for z in exclude_z}
    conf = np.zeros((k, k), np.int64)
    for z in range(gt.shape[0]):  # slice by slice: no volume-sized int64 copies
        if z not in skip:
            conf += Q.confusion(gt[z], pred[z], k)
    ious = Q.iou(conf)
    miou = float(np.nanmean(ious)) if np.any(np.isfinite(ious)) else None
    return {"miou": miou, "iou": [float(v) if np.isfinite(v) else None for v in ious],
            "scored_voxels": int(conf.sum()),
            "confusion": conf.tolist()}


def lucchi_volume(args, name: str, strokes: Optional[tuple[np.ndarray, np.ndarray]] = None) -> Volume:
    """``lucchi``, ``lucchi-z4`` or ``lucchi-x2`` with its strokes (``lucchi-x2``: ``strokes``, lucchi's
    ``(gt, labels)``, on its first half, when given; else drawn as for ``lucchi``)."""
    crop = tuple(args.lucchi_crop) if args.lucchi_crop else None
    every = ANISOTROPY if name == "lucchi-z4" else 1
    source = {"kind": "lucchi", "data": str(args.data), "crop": crop, "every": every, "mirror": name == "lucchi-x2"}
    notes = [f"every {every}th slice kept (voxels {every}:1:1)"] if every > 1 else []
    if name == "lucchi-x2":  # the lucchi strokes, the mirrored half unpainted
        if strokes is None:
            gt = lucchi_array(args.data, "masks", crop)
            strokes = gt, volume_scribbles(gt, stroke_slices(len(gt)), args.budget, args.seed)
        gt, labels = strokes
        zs = stroke_slices(len(gt))
        gt, labels = np.concatenate([gt, gt[::-1]]), np.concatenate([labels, np.zeros_like(labels)])
        notes.append("the lucchi strokes; the mirrored half is unpainted and scored too (with the mirrored "
                     "copies of the painted slices)")
    else:
        gt = lucchi_array(args.data, "masks", crop, every)
        zs = stroke_slices(len(gt))
        labels = volume_scribbles(gt, zs, args.budget, args.seed)
    what = {"lucchi": "FIB-SEM mouse hippocampus, Lucchi++ mitochondria",
            "lucchi-z4": f"lucchi, every {every}th slice (anisotropy)",
            "lucchi-x2": "lucchi + its z-mirror (memory)"}[name]
    return Volume(name, f"{what}, {'x'.join(map(str, gt.shape))}", ["background", "mitochondrion"], gt, labels, zs,
                  (float(every), 1.0, 1.0), source, DEFAULT_METHODS[name], notes)


def generated_volume(args, name: str, workdir: Path) -> Volume:
    """A synthetic volume (:func:`synthetic_volume`) with its strokes, the image saved to ``workdir``
    for the children."""
    image, gt = synthetic_volume(name, QUICK_SHAPE if args.quick else tuple(args.shape), args.seed)
    path = workdir / f"{name}.npy"
    np.save(path, image)
    del image
    zs = stroke_slices(len(gt))
    spec = SYNTHETIC[name]
    return Volume(name, f"{spec.description}, {'x'.join(map(str, gt.shape))}, seed {args.seed}", list(spec.classes),
                  gt, volume_scribbles(gt, zs, args.budget, args.seed), zs, (1.0, 1.0, 1.0),
                  {"kind": "npy", "path": str(path)}, DEFAULT_METHODS[name])


def build_volumes(args, names: Sequence[str], workdir: Path) -> list[Volume]:
    """The volumes ``names`` with their strokes; refused where the strokes miss a class."""
    out: list[Volume] = []
    for name in names:
        if name.startswith("lucchi"):
            lucchi = next(((v.gt, v.labels) for v in out if v.name == "lucchi"), None)
            out.append(lucchi_volume(args, name, lucchi))
        else:
            out.append(generated_volume(args, name, workdir))
    for vol in out:
        present = {int(v) - 1 for v in np.unique(vol.labels) if v}
        missing = [c for i, c in enumerate(vol.classes) if i not in present]
        if missing:
            raise ValueError(f"{vol.name}: the strokes on slices {vol.painted_z} paint no {', '.join(missing)}; "
                             "use another --seed or a larger --lucchi-crop")
    return out


# ----------------------------------------------------------------------------- methods (in the child)


class NotAvailable(Exception):
    """The product does not offer this method yet."""


def dinoseg_3d_config():
    """``FeatureConfig(kind="classical", dims=3)``, or :class:`NotAvailable` where it is refused."""
    from napari_dinoseg import FeatureConfig

    try:
        return FeatureConfig(kind="classical", dims=3)
    except (TypeError, ValueError) as err:
        raise NotAvailable(f"{type(err).__name__}: {err}") from None


def skimage_features_3d(image: np.ndarray, per_sigma: bool = False) -> np.ndarray:
    """scikit-image's ``multiscale_basic_features`` (sigma 1..16) of a volume: ``(Z, Y, X, 25)`` float32.

    ``per_sigma``: the same values built by scikit-image's per-scale function, one sigma after the
    other, into one preallocated array (no list of every channel next to the stacked copy)."""
    from skimage.feature import multiscale_basic_features

    if not per_sigma:
        return multiscale_basic_features(image, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, channel_axis=None)
    from skimage.feature._basic_features import _singlescale_basic_features_singlechannel
    from skimage.util import img_as_float32

    img = np.ascontiguousarray(img_as_float32(image))
    num_sigma = int(np.log2(SIGMA_MAX) - np.log2(SIGMA_MIN) + 1)  # as scikit-image picks them
    sigmas = np.logspace(np.log2(SIGMA_MIN), np.log2(SIGMA_MAX), num=num_sigma, base=2, endpoint=True)
    per_scale = 2 + image.ndim  # intensity, edges, ndim Hessian eigenvalues
    out = np.empty((*image.shape, num_sigma * per_scale), np.float32)
    for i, sigma in enumerate(sigmas):
        for j, channel in enumerate(_singlescale_basic_features_singlechannel(img, sigma)):
            out[..., i * per_scale + j] = channel
    return out


def _forest(x: np.ndarray, y: np.ndarray):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=N_TREES, n_jobs=-1, random_state=0).fit(x, y)


def _forest_predict(rf, feats: np.ndarray) -> np.ndarray:
    """Class ids (painted value - 1) of ``(..., F)`` features, ``PREDICT_CHUNK`` voxels per call."""
    flat = feats.reshape(-1, feats.shape[-1])
    out = np.empty(len(flat), np.uint8)
    for i in range(0, len(flat), PREDICT_CHUNK):
        out[i:i + PREDICT_CHUNK] = rf.predict(flat[i:i + PREDICT_CHUNK]) - 1
    return out.reshape(feats.shape[:-1])


def run_method(method: str, image: np.ndarray, labels: np.ndarray, spacing: Sequence[float],
               painted_z: Sequence[int]) -> tuple[np.ndarray, float, float]:
    """Fit on the strokes and segment the whole volume: ``(pred (Z, Y, X) uint8 class ids, fit s, predict s)``."""
    t0 = time.perf_counter()
    if method in ("skimage-3d", "skimage-3d-per-sigma"):
        feats = skimage_features_3d(image, per_sigma=method == "skimage-3d-per-sigma")
        painted = labels > 0
        rf = _forest(feats[painted], labels[painted])
        t1 = time.perf_counter()
        pred = _forest_predict(rf, feats)
    elif method == "skimage-2d":
        from skimage.feature import multiscale_basic_features

        def feats2d(plane):
            return multiscale_basic_features(plane, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, channel_axis=None)

        painted = {z: feats2d(image[z]) for z in painted_z}
        rf = _forest(np.concatenate([painted[z][labels[z] > 0] for z in painted_z]),
                     np.concatenate([labels[z][labels[z] > 0] for z in painted_z]))
        del painted
        t1 = time.perf_counter()
        pred = np.empty(image.shape, np.uint8)
        for z in range(len(image)):
            pred[z] = _forest_predict(rf, feats2d(image[z]))
    elif method == "dinoseg-2d":
        from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig

        seg = Segmenter(features=FeatureConfig(kind="classical"), training=TrainConfig())
        seg.fit([image[z] for z in painted_z], [labels[z] for z in painted_z])
        t1 = time.perf_counter()
        pred = np.empty(image.shape, np.uint8)
        for z in range(len(image)):
            pred[z] = seg.segment(image[z]) - 1
    elif method in ("dinoseg-3d", "dinoseg-3d-isotropic", "dinoseg-3d-unsmoothed"):
        from napari_dinoseg import Segmenter, TrainConfig

        config = dinoseg_3d_config()
        t0 = time.perf_counter()
        spacing = (1.0, 1.0, 1.0) if method == "dinoseg-3d-isotropic" else tuple(spacing)
        training = TrainConfig(guided_radius=0) if method == "dinoseg-3d-unsmoothed" else TrainConfig()
        seg = Segmenter(features=config, training=training)
        seg.fit(image, labels, spacing=spacing)
        t1 = time.perf_counter()
        values = np.asarray(seg.segment(image, spacing=spacing))
        if values.shape != image.shape:
            raise ValueError(f"segment returned shape {values.shape} for a volume of shape {image.shape}")
        pred = (values - 1).astype(np.uint8)
    else:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    return pred, t1 - t0, time.perf_counter() - t1


def _rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / GIB


def _peak_rss_gib() -> float:
    """This process's peak resident set (``VmHWM``), in GiB.

    Not ``ru_maxrss``: Linux keeps that across ``fork`` / ``vfork`` + ``execve``, so a child's
    would be at least the parent's peak at the spawn. ``VmHWM`` belongs to the process image
    started by ``execve``."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def _warm_up(method: str) -> None:
    """A tiny fit and predict on a 32 x 32 plane, so that the libraries ``method`` runs are loaded
    (torch, scikit-image's lazily loaded modules, joblib's threads) before the base resident set
    is read and the clock starts: the base counts them, the times and the peak above it the
    method's own work. ``dinoseg-3d`` warms up on a plane too (the 2-D API loads the same
    libraries), after checking that ``dims=3`` is accepted."""
    rng = np.random.default_rng(0)
    plane = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    labels = np.zeros((32, 32), np.uint8)
    labels[4:8, 4:28], labels[24:28, 4:28] = 1, 2
    if method.startswith("dinoseg"):
        from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig

        if method.startswith("dinoseg-3d"):
            dinoseg_3d_config()
        Segmenter(features=FeatureConfig(kind="classical"), training=TrainConfig()).fit(plane, labels).segment(plane)
    else:
        from skimage.feature import multiscale_basic_features

        feats = multiscale_basic_features(np.stack([plane] * 8), sigma_min=SIGMA_MIN, sigma_max=2)[0]
        _forest_predict(_forest(feats[labels > 0], labels[labels > 0]), feats)


def child(job_path: Path) -> int:
    """Run one row (the ``--child`` entry point): read the job, segment, write the prediction and
    the row's figures beside the job."""
    job = json.loads(Path(job_path).read_text())
    result: dict = {"status": "ok"}
    try:
        src = job["source"]
        if src["kind"] == "lucchi":
            image = lucchi_array(Path(src["data"]), "images", src["crop"], src["every"], src["mirror"])
        else:
            image = np.load(src["path"])
        _warm_up(job["method"])
        if job.get("probe_crop"):  # features only, on a crop: the row's bytes per voxel
            image = np.ascontiguousarray(centre_crop(image, job["probe_crop"]))
            result["probe_base_gib"] = _rss_gib()
            t = time.perf_counter()
            feats = skimage_features_3d(image, per_sigma=job["method"] == "skimage-3d-per-sigma")
            result["probe_seconds"] = time.perf_counter() - t
            result["probe_voxels"] = int(image.size)
            del feats
        else:
            labels = np.load(job["labels"])
            result["base_rss_gib"] = _rss_gib()
            pred, fit_s, predict_s = run_method(job["method"], image, labels, job["spacing"], job["painted_z"])
            np.save(job["pred"], pred)
            result.update(fit_s=fit_s, predict_s=predict_s, total_s=fit_s + predict_s)
    except NotAvailable as err:
        result = {"status": "not available yet", "reason": str(err)}
    result["peak_rss_gib"] = _peak_rss_gib()
    Path(job["result"]).write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- the parent


def memory_limit(args) -> float:
    """GiB a row may use now: ``--max-gib``, and no more than what is available less ``--reserve-gib``."""
    import psutil

    return min(args.max_gib, psutil.virtual_memory().available / GIB - args.reserve_gib)


def run_child(job: dict, workdir: Path, limit_gib: float, timeout: float) -> dict:
    """One row in a fresh process: its result (``peak_rss_gib``: the child's own ``VmHWM``), with
    its resident set sampled every 0.2 s (``sampled_peak_gib``; the peak of a killed child);
    killed past ``limit_gib`` or ``timeout`` seconds."""
    import psutil

    tag = job["tag"]
    job = {**job, "result": str(workdir / f"{tag}.result.json"), "pred": str(workdir / f"{tag}.pred.npy")}
    job_path = workdir / f"{tag}.job.json"
    job_path.write_text(json.dumps(job))
    log_path = workdir / f"{tag}.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(job_path)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    sampled, killed = 0.0, None
    while True:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            sampled = max(sampled, psutil.Process(proc.pid).memory_info().rss / GIB)
        except psutil.NoSuchProcess:
            pass
        if killed is None and sampled > limit_gib:
            killed = f"killed: resident set over the {limit_gib:.1f} GiB limit"
        elif killed is None and time.perf_counter() - t0 > timeout:
            killed = f"killed: over the {timeout:.0f} s timeout"
        if killed:
            proc.kill()
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = {"wall_s": time.perf_counter() - t0, "sampled_peak_gib": sampled}
    result_path = Path(job["result"])
    if killed:
        out.update(status=killed, peak_rss_gib=sampled)
    elif proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text()[-1500:]
        out["status"] = f"failed (exit {proc.returncode}): {tail.strip().splitlines()[-1] if tail.strip() else ''}"
        out["log_tail"] = tail
    else:
        out.update(json.loads(result_path.read_text()))
        if Path(job["pred"]).exists():
            out["pred_path"] = job["pred"]
    return out


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _probe_crop(shape: Sequence[int], budget_gib: float, per_voxel: float) -> tuple[int, int, int]:
    """A centred crop (every slice, a square in y, x) whose estimated peak fits ``budget_gib``."""
    z, y, x = shape
    side = int(np.sqrt(budget_gib * GIB / per_voxel / z))
    return z, max(32, min(y, side)), max(32, min(x, side))


def run_row(args, vol: Volume, method: str, workdir: Path, skipped_for_memory: set) -> dict:
    """One (volume, method) row: estimated, run in a child, scored."""
    spacing = None if not method.startswith("dinoseg-3d") else (1.0, 1.0, 1.0) if method.endswith("isotropic") \
        else vol.spacing
    row = {"volume": vol.name, "method": method, "label": METHODS[method], "shape": list(vol.gt.shape),
           "voxels": int(vol.gt.size), "spacing": None if spacing is None else list(spacing)}
    base = {"source": vol.source, "labels": str(workdir / f"{vol.name}.labels.npy"), "spacing": vol.spacing,
            "painted_z": list(vol.painted_z), "method": method, "tag": f"{vol.name}.{method}"}
    if method.startswith("dinoseg-3d"):
        reason = _dinoseg_3d_missing()
        if reason:
            row.update(status="not available yet", reason=f"FeatureConfig(kind='classical', dims=3) raised {reason}")
            return row
    limit = memory_limit(args)
    row["limit_gib"] = round(limit, 2)
    if method in BYTES_PER_VOXEL:
        estimate = 0.3 + BYTES_PER_VOXEL[method] * vol.gt.size / GIB
        row["estimated_gib"] = round(estimate, 1)
        if estimate > limit:
            crop = _probe_crop(vol.gt.shape, min(4.0, limit / 4), BYTES_PER_VOXEL[method])
            _log(f"  {vol.name} / {method}: estimated {estimate:.1f} GiB > limit {limit:.1f} GiB: measuring its "
                 f"bytes per voxel on a centred {'x'.join(map(str, crop))} crop first")
            probe = run_child({**base, "probe_crop": list(crop), "tag": base["tag"] + ".probe"}, workdir, limit,
                              args.timeout)
            row["probe"] = {k: v for k, v in probe.items() if k != "log_tail"}
            if probe.get("status") == "ok":
                per_voxel = (probe["peak_rss_gib"] - probe["probe_base_gib"]) * GIB / probe["probe_voxels"]
                needs = probe["probe_base_gib"] + per_voxel * vol.gt.size / GIB
                row["probe"].update(crop=list(crop), bytes_per_voxel=round(per_voxel))
                row["needs_gib"] = round(needs, 1)
                if needs > limit:
                    row["status"] = (f"not run: needs ~{needs:.1f} GiB ({per_voxel:.0f} B/voxel measured on a "
                                     f"{'x'.join(map(str, crop))} crop), over the {limit:.1f} GiB limit")
            else:
                row["status"] = f"not run: estimated {estimate:.1f} GiB > {limit:.1f} GiB; probe {probe.get('status')}"
            if "status" in row:
                skipped_for_memory.add(vol.name)
                return row
    _log(f"  {vol.name} / {METHODS[method]} ...")
    res = run_child(base, workdir, limit, args.timeout)
    pred_path = res.pop("pred_path", None)
    row.update({k: v for k, v in res.items() if k != "log_tail"})
    if res.get("log_tail"):
        row["log_tail"] = res["log_tail"]
    if pred_path is not None:
        pred = np.load(pred_path)
        row.update(score(vol.gt, pred, len(vol.classes), vol.painted_z))
        row["iou"] = dict(zip(vol.classes, row["iou"]))
        row["class_fraction_predicted"] = [float(np.mean(pred == c)) for c in range(len(vol.classes))]
        del pred
        os.unlink(pred_path)
    return row


@functools.cache
def _dinoseg_3d_missing() -> Optional[str]:
    """Why ``dinoseg 3-D`` cannot run here (``None`` where ``FeatureConfig(dims=3)`` is accepted), asked once."""
    try:
        dinoseg_3d_config()
    except NotAvailable as err:
        return str(err)
    return None


def plan_methods(vol: Volume, requested: Optional[Sequence[str]]) -> list[str]:
    """The methods a volume runs: its defaults (:data:`DEFAULT_METHODS`), those of them in
    ``requested`` when given; ``skimage-3d-per-sigma`` where it is requested and ``skimage-3d`` is
    one of the volume's defaults."""
    if requested is None:
        return list(vol.methods)
    allowed = set(vol.methods) | ({"skimage-3d-per-sigma"} if "skimage-3d" in vol.methods else set())
    return [m for m in requested if m in allowed]


# ----------------------------------------------------------------------------- report


def _f(v, fmt: str = ".3f", none: str = "–") -> str:
    return none if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def reference(rows: list[dict], volume: str) -> Optional[dict]:
    """The scikit-image 3-D row a volume's ratios refer to: the one call, else one sigma at a time."""
    for m in ("skimage-3d", "skimage-3d-per-sigma"):
        r = next((r for r in rows if r["volume"] == volume and r["method"] == m and "miou" in r), None)
        if r is not None:
            return r
    return None


def volume_table(vol: dict, rows: list[dict]) -> str:
    """One volume's markdown table: a row per method with mIoU, IoU per class, times, memory and the
    ratios to the scikit-image 3-D row."""
    classes = vol["classes"]
    ref = reference(rows, vol["name"])
    several = len({r.get("run", 0) for r in rows}) > 1
    head = (["method", "spacing given", "mIoU", *[f"IoU {c}" for c in classes], "fit s", "predict s", "total s",
             "peak RSS GiB", "base GiB", "Δ mIoU vs sk 3-D", "time / sk 3-D", "status"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["volume"] != vol["name"]:
            continue
        ok = "miou" in r
        d = r["miou"] - ref["miou"] if ok and ref is not None and r is not ref else None
        ratio = r["total_s"] / ref["total_s"] if ok and ref is not None and r is not ref else None
        status = "" if r.get("status") == "ok" else r.get("status", "")
        if several:
            status = f"run {r.get('run', 0) + 1}" + (f": {status}" if status else "")
        spacing = "–" if r.get("spacing") is None else "(" + ", ".join(f"{s:g}" for s in r["spacing"]) + ")"
        cells = [r["label"], spacing, _f(r.get("miou")),
                 *[_f(r.get("iou", {}).get(c)) for c in classes], _f(r.get("fit_s"), ".1f"),
                 _f(r.get("predict_s"), ".1f"), _f(r.get("total_s"), ".1f"), _f(r.get("peak_rss_gib"), ".2f"),
                 _f(r.get("base_rss_gib"), ".2f"), _f(d, "+.3f"), _f(ratio, ".2f"), status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _row(rows: list[dict], volume: str, method: str) -> Optional[dict]:
    return next((r for r in rows if r["volume"] == volume and r["method"] == method and "miou" in r), None)


def target_checks(rows: list[dict], volumes: list[dict]) -> list[str]:
    """Issue 28's targets, each with ✓ / ✗ and its figures, or why it could not be checked."""
    out = []
    names = [v["name"] for v in volumes]
    for name in (n for n in names if n in ("lucchi", "blobs2", "blobs3")):
        d3, d2, ref = _row(rows, name, "dinoseg-3d"), _row(rows, name, "dinoseg-2d"), reference(rows, name)
        if d3 is None:
            out.append(f"– {name}: dinoseg 3-D not run ({_status(rows, name, 'dinoseg-3d')}): its targets unchecked"
                       + (f"; references: dinoseg 2-D per slice {d2['miou']:.3f}" if d2 else "")
                       + (f", {ref['label']} {ref['miou']:.3f} in {ref['total_s']:.0f} s" if ref else ""))
            continue
        if d2 is not None:
            diff = d3["miou"] - d2["miou"]
            out.append(f"{'✓' if diff >= 0.02 else '✗'} {name}: dinoseg 3-D {d3['miou']:.3f} vs dinoseg 2-D per "
                       f"slice {d2['miou']:.3f} ({diff:+.3f}; target >= +0.02)")
        if ref is not None:
            diff, ratio = d3["miou"] - ref["miou"], d3["total_s"] / ref["total_s"]
            out.append(f"{'✓' if diff > 0 else '✗'} {name}: dinoseg 3-D {d3['miou']:.3f} vs {ref['label']} "
                       f"{ref['miou']:.3f} ({diff:+.3f}; target > 0)")
            apart = "" if d3.get("run") == ref.get("run") else "; rows of different runs"
            out.append(f"{'✓' if ratio <= 1.0 else '✗'} {name}: time dinoseg 3-D / {ref['label']} = "
                       f"{d3['total_s']:.1f} / {ref['total_s']:.1f} s = {ratio:.2f} (target <= 1.0{apart})")
    one, two = _row(rows, "lucchi", "dinoseg-3d"), _row(rows, "lucchi-x2", "dinoseg-3d")
    if one is not None:
        out.append(f"{'✓' if one['peak_rss_gib'] <= 4 else '✗'} lucchi: dinoseg 3-D peak RSS "
                   f"{one['peak_rss_gib']:.2f} GiB (target <= 4 GiB)")
        if two is not None:
            out.append(f"{'✓' if two['peak_rss_gib'] <= 1.25 * one['peak_rss_gib'] else '✗'} lucchi-x2 (2x the "
                       f"voxels): dinoseg 3-D peak RSS {two['peak_rss_gib']:.2f} GiB vs {one['peak_rss_gib']:.2f} "
                       f"({two['peak_rss_gib'] / one['peak_rss_gib']:.2f}x; about the same: <= 1.25x)")
    elif "lucchi" in names or "lucchi-x2" in names:
        out.append(f"– memory: dinoseg 3-D not run ({_status(rows, 'lucchi', 'dinoseg-3d')})")
    aniso, iso = _row(rows, "lucchi-z4", "dinoseg-3d"), _row(rows, "lucchi-z4", "dinoseg-3d-isotropic")
    if aniso is not None and iso is not None:
        diff = aniso["miou"] - iso["miou"]
        out.append(f"{'✓' if diff > 0 else '✗'} lucchi-z4: spacing (4, 1, 1) {aniso['miou']:.3f} vs (1, 1, 1) "
                   f"{iso['miou']:.3f} ({diff:+.3f}; target > 0)")
    elif "lucchi-z4" in names:
        out.append(f"– lucchi-z4: anisotropy unchecked ({_status(rows, 'lucchi-z4', 'dinoseg-3d')})")
    return out


def _status(rows: list[dict], volume: str, method: str) -> str:
    r = next((r for r in rows if r["volume"] == volume and r["method"] == method), None)
    return "not in this run" if r is None else r.get("status", "?")


def report(meta: dict, volumes: list[dict], rows: list[dict]) -> str:
    """The markdown report: one table per volume, the targets, the volumes, the machine."""
    runs = meta["runs"]
    loads = ", ".join(f"{r['load_average'][0]:.2f}" for r in runs)
    parts = [f"# Volumes (issue 28){' — quick crops, not comparable' if meta['quick'] else ''}",
             (f"Strokes on 3 slices per volume ({meta['budget']:g} of a slice's pixels on each, seed "
              f"{meta['seed']}), the same for every method; mIoU over every labelled voxel except the 3 painted "
              f"slices. Machine: {meta['cpu']}, {meta['cpus']} CPUs, {meta['memory_gib']:.0f} GiB, shared with "
              f"other work (load average at the start: {loads}): times are noisy.")]
    if len(runs) > 1:
        parts.append("Rows from several runs (status column): " + "; ".join(
            f"run {i + 1} {r['started']}, commit {str(r.get('git_commit'))[:8]}"
            f"{' + uncommitted src changes' if r.get('git_dirty') else ''}: {' '.join(r['argv']) or '(defaults)'}"
            for i, r in enumerate(runs)) + ".")
    for vol in volumes:
        painted = ", ".join(f"{c} {n}" for c, n in zip(vol["classes"], vol["painted_per_class"]))
        fractions = ", ".join(f"{c} {f:.3f}" for c, f in zip(vol["classes"], vol["fractions"]))
        parts += [f"## {vol['name']}: {vol['description']}",
                  (f"Painted slices z = {', '.join(map(str, vol['painted_z']))}; painted voxels per class {painted}; "
                   f"ground-truth fractions {fractions}" + "".join(f"; {n}" for n in vol["notes"]) + "."),
                  volume_table(vol, rows)]
    checks = target_checks(rows, volumes)
    if checks:
        parts += ["## Targets (issue 28)", "\n".join(f"- {c}" for c in checks)]
    reasons = {r["reason"] for r in rows if r.get("reason")}
    if reasons:
        parts += ["Not available yet: " + "; ".join(sorted(reasons)) + "."]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    parts += ["## Methods", "\n".join(f"- **{METHODS[m]}** (`{m}`): {DESCRIPTIONS[m]}" for m in methods),
              ("Peak RSS: the row's whole process (interpreter, libraries, volume, labels, output); base: its "
               "resident set before the fit (data and libraries loaded, after a warm-up fit on a 32 x 32 plane). "
               "Times: wall-clock seconds, fit (features + classifier) and predict (every voxel), on a machine "
               "shared with other work.")]
    return "\n\n".join(parts)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("numpy", "scipy", "scikit-image", "scikit-learn", "porespy", "napari-dinoseg", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    try:
        out["git_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=10, check=False).stdout.strip()
        out["git_dirty"] = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"],
                                               capture_output=True, text=True, timeout=10,
                                               check=False).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = ROOT.parent / "shared" / "evaldata"
    parser.add_argument("--data", type=Path, default=default_data if default_data.exists() else None)
    parser.add_argument("--volumes", nargs="+", default=list(VOLUMES), choices=VOLUMES)
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS),
                        help="rows to run on every volume (default: each volume's own set, see the docstring)")
    parser.add_argument("--budget", type=float, default=0.01,
                        help="painted pixels per painted slice, as a fraction of a slice's pixels (<= 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="the strokes' and the synthetic volumes' seed")
    parser.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE), metavar=("Z", "Y", "X"),
                        help="synthetic volumes' shape")
    parser.add_argument("--lucchi-crop", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="a centred crop of lucchi (default: the whole 165 x 512 x 512)")
    parser.add_argument("--max-gib", type=float, default=16.0, help="no row may use more (GiB)")
    parser.add_argument("--reserve-gib", type=float, default=4.0,
                        help="memory left to other work: a row gets at most what is available less this")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per row")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: lucchi cropped to {QUICK_LUCCHI}, synthetic volumes {QUICK_SHAPE}")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (.md beside it); default results/volumes.json (--quick: volumes_quick.json)")
    parser.add_argument("--append", action="store_true",
                        help="merge this run's rows into --out (same budget, seed, shapes), replacing rows of the "
                             "same volume and method; each row keeps the run it came from")
    args = parser.parse_args(argv)
    if not 0 < args.budget <= 0.05:
        parser.error("--budget must be in (0, 0.05]")
    if any(v.startswith("lucchi") for v in args.volumes) and (args.data is None or not args.data.exists()):
        parser.error("the lucchi volumes need the evaluation data: pass --data PATH (../shared/evaldata)")
    if args.quick and args.lucchi_crop is None:
        args.lucchi_crop = list(QUICK_LUCCHI)
    if args.out is None:
        args.out = HERE / "results" / ("volumes_quick.json" if args.quick else "volumes.json")
    if args.append and args.out.exists():
        old = json.loads(args.out.read_text())["meta"]
        for key in SAME_IN_APPENDED_RUNS:
            if old.get(key) != _setting(args, key):
                parser.error(f"--append: {args.out} has {key}={old.get(key)!r}, this run {_setting(args, key)!r}")
    return args


#: The settings every run merged into one result file shares.
SAME_IN_APPENDED_RUNS = ("budget", "seed", "quick", "shape", "lucchi_crop")


def _setting(args, key: str):
    return list(getattr(args, key)) if key in ("shape", "lucchi_crop") and getattr(args, key) else getattr(args, key)


def run_volumes(args, run: int) -> tuple[list[dict], list[dict]]:
    """Every row of every volume ``args`` asks for: ``(volumes' descriptions, rows)``, each row
    stamped with ``run`` (its run's index in the result file)."""
    rows: list[dict] = []
    volumes_meta: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dinoseg-volumes-") as tmp:
        workdir = Path(tmp)
        for vol in build_volumes(args, args.volumes, workdir):
            np.save(workdir / f"{vol.name}.labels.npy", vol.labels)
            volumes_meta.append(describe(vol))
            _log(f"[{vol.name}] {vol.description}; painted z {vol.painted_z}, "
                 f"{sum(volumes_meta[-1]['painted_per_class'])} voxels")
            skipped: set = set()
            methods = plan_methods(vol, args.methods)
            for method in methods:
                rows.append({**run_row(args, vol, method, workdir, skipped), "run": run})
                _log_row(rows[-1])
                if method == "skimage-3d" and vol.name in skipped and "skimage-3d-per-sigma" not in methods:
                    rows.append({**run_row(args, vol, "skimage-3d-per-sigma", workdir, skipped), "run": run})
                    _log_row(rows[-1])
    return volumes_meta, rows


def _log_row(row: dict) -> None:
    _log(f"    -> {row.get('status')}; mIoU {_f(row.get('miou'))}, total {_f(row.get('total_s'), '.1f')} s, "
         f"peak {_f(row.get('peak_rss_gib'), '.2f')} GiB")


def describe(vol: Volume) -> dict:
    """A volume's entry in the result file: shape, spacing, classes, strokes, class fractions."""
    k = len(vol.classes)
    return {"name": vol.name, "description": vol.description, "classes": vol.classes, "shape": list(vol.gt.shape),
            "spacing": list(vol.spacing), "painted_z": list(vol.painted_z),
            "painted_per_class": np.bincount(vol.labels.ravel(), minlength=k + 1)[1:k + 1].tolist(),
            "fractions": (np.bincount(vol.gt.ravel(), minlength=k)[:k] / vol.gt.size).tolist(), "notes": vol.notes,
            "source": {key: v for key, v in vol.source.items() if key != "path"}}


def merge(old: dict, volumes_meta: list[dict], rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """An earlier result file's volumes and rows with this run's: a row of the same volume and
    method, and a volume of the same name, replaced; volumes in :data:`VOLUMES` order, rows in
    :data:`METHODS` order."""
    new = {(r["volume"], r["method"]) for r in rows}
    names = {v["name"] for v in volumes_meta}
    volumes = [v for v in old["volumes"] if v["name"] not in names] + volumes_meta
    merged = [r for r in old["rows"] if (r["volume"], r["method"]) not in new] + rows
    volumes.sort(key=lambda v: VOLUMES.index(v["name"]))
    merged.sort(key=lambda r: (VOLUMES.index(r["volume"]), list(METHODS).index(r["method"])))
    return volumes, merged


def main(argv: Optional[list[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--child"]:
        return child(Path(argv[1]))
    import psutil

    args = parse_args(argv)
    old = json.loads(args.out.read_text()) if args.append and args.out.exists() else None
    runs = old["meta"].get("runs", []) if old else []
    mem = psutil.virtual_memory()
    this_run = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": argv, "load_average": list(os.getloadavg()),
                "available_gib_at_start": mem.available / GIB, **_versions()}
    meta = {"cpu": cpu_name(), "cpus": os.cpu_count(), "memory_gib": mem.total / GIB,
            "platform": platform.platform(), "python": platform.python_version(),
            **{key: _setting(args, key) for key in SAME_IN_APPENDED_RUNS},
            "max_gib": args.max_gib, "reserve_gib": args.reserve_gib, "sigma": [SIGMA_MIN, SIGMA_MAX],
            "trees": N_TREES}
    t_start = time.perf_counter()
    volumes_meta, rows = run_volumes(args, len(runs))
    this_run["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    meta["runs"] = runs + [this_run]
    if old:
        volumes_meta, rows = merge(old, volumes_meta, rows)
    meta["targets"] = target_checks(rows, volumes_meta)
    md = report(meta, volumes_meta, rows)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "volumes": volumes_meta, "rows": rows}, indent=1))
    args.out.with_suffix(".md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
