"""Segmentation quality on real micrographs: brush scribbles -> train -> mIoU on other images.

Usage::

    .venv/bin/python benchmarks/quality.py [--data ../shared/evaldata]
        [--protocol cross1 cross2 robust same] [--sets super ebc membranes ...]
        [--variants "dinoseg percentile" "gaussian+hgb" ... | all] [--budget 0.01] [--seed 0]
        [--repeats 3] [--out benchmarks/results/quality_cross.json] [--append] [--figures docs/images]
        [--weights PATH] [--list]

For each evaluation set (``../shared/evaldata``, see its README) the script simulates a user's
brush strokes from the ground truth of one or two training images -- thin (3 px) random-walk
strokes inside eroded class regions, seeds ``seed, seed + 1, ...`` (``--repeats``), and a fixed
budget of painted pixels (a fraction ``--budget`` of one training image, shared equally between
the training images and the classes) -- or takes the real human scribbles shipped with
``tldr_group``. Every method is trained on the same scribbles; the score of a row is the IoU of
every class over all its scored pixels pooled (ground-truth 255 ignored) and their mean (mIoU),
averaged over the seeds (± their standard deviation).

Protocols (``--protocol``), i.e. the rows of a set:

- ``cross1``: the folder use case. Train on ONE image of a multi-image set (super: 18 images,
  ebc: 22, membranes: 30), score on ALL the set's other images. The training image is the first
  of the set's training split (membranes: of the manifest) that shows every class.
- ``cross2``: the same with TWO training images (the ``cross1`` image and the next one showing
  every class), scored on all the others.
- ``robust``: train as ``cross1`` (single-image sets: on their one image), then score on the
  training image itself and on a copy of it with brightness and contrast changed
  (``x * 0.6 + 60`` grey levels in float, rounded, clipped to the dtype, cast back): the ratio of
  the two mIoUs (1 = insensitive to the change).
- ``same``: the earlier protocol: two training images -> the set's few test images (super,
  ebc, membranes), or the one image of nuclei / the human-scribble sets scored on itself.

Methods (``--variants``, see ``registry``; ``--list`` prints them):

- ``skimage+rf``: scikit-image ``multiscale_basic_features`` (sigma 1..16) + a 100-tree random
  forest (scikit-learn defaults otherwise), trained on the painted pixels;
- ``gaussian+hgb``: one Gaussian channel (sigma 3) of the image normalised per image (its 0.5 and
  99.5 % percentiles to 0 and 1) + scikit-learn's ``HistGradientBoostingClassifier`` (defaults,
  ``random_state=0``);
- ``dinoseg legacy`` / ``dinoseg percentile`` / ``dinoseg fixed``: napari-dinoseg
  (``featurise`` -> ``train`` -> ``predict``, ``TrainConfig()``) with
  ``FeatureConfig(normalise=...)``; ``dinoseg`` is ``FeatureConfig()`` as shipped;
- idea variants (other percentiles, feature channels dropped, ``TrainConfig`` options, other
  per-image normalisations) and the ablations of the earlier benchmark;
- ``dinoseg vit`` / ``dinoseg hybrid`` (DINOv2-S/14, the CPU preset): only with ``--weights``
  (a checkpoint file, or ``pretrained`` for the timm / Hugging Face cache); otherwise reported as
  "not run: no weights", never computed with random weights.

Each image is featurised once per feature configuration and predicted with the classifiers of
every seed and training set that score it; features are dropped before the next image (ebc's
1024^2 images take ~270 MB each). Outputs: the tables on stdout and in ``--out`` with a ``.md``
suffix, the JSON (``--append`` merges the methods of this run into an existing JSON), and with
``--figures`` one PNG per set.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import fnmatch
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Width of a simulated brush stroke (px) and the length (px) after which a stroke ends.
BRUSH_RADIUS = 1
MAX_STROKE_LENGTH = 80
#: Strokes per class and image at most (small regions give short strokes: more of them).
MAX_STROKES = 24
#: Erosion radii tried, largest first, so strokes stay inside class regions but thin
#: structures (membranes, cracks) still get painted.
EROSIONS = (3, 2, 1, 0)
#: The robustness row's brightness / contrast change: ``x * GAIN + OFFSET`` grey levels.
GAIN, OFFSET = 0.6, 60.0

PROTOCOLS = ("cross1", "cross2", "robust", "same")
SETS = ("super", "ebc", "membranes", "nuclei", "superalloy_human", "particles_human")
MAIN_VARIANTS = ("skimage+rf", "gaussian+hgb", "dinoseg legacy", "dinoseg percentile", "dinoseg fixed")
BASELINES = ("skimage+rf", "gaussian+hgb")


# ----------------------------------------------------------------------------- data

Item = tuple[str, np.ndarray, np.ndarray]  # (name, image, ground truth 0..K-1, 255 = ignore)


@dataclass
class Plan:
    """What one set's run trains and scores.

    ``trainings`` maps a training set (the tuple of its image names) to its images and their
    scribbles, one label image per seed; ``rows`` maps a row (``cross1``, ``cross2``, ``same``,
    ``robust:orig``, ``robust:bc``) to its training set and scored image names; ``targets`` are
    the images to score, each with the rows it counts for.
    """

    name: str
    description: str
    classes: list[str]
    scribbles: str  # "simulated" or "human"
    trainings: dict[tuple[str, ...], list[tuple[str, np.ndarray, list[np.ndarray]]]]
    rows: dict[str, dict]
    targets: list[tuple[str, np.ndarray, np.ndarray, list[str]]]
    notes: list[str] = field(default_factory=list)


def _read(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    import imageio.v3 as iio
    import tifffile

    return tifffile.imread(folder / "images" / f"{name}.tif"), iio.imread(folder / "masks" / f"{name}.png")


def _manifest(folder: Path) -> list[dict]:
    with open(folder / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _class_names(folder: Path, key: Optional[str] = None) -> list[str]:
    classes = json.loads((folder / "classes.json").read_text())["classes"]
    classes = classes[key] if key else classes
    return [classes[str(i)] for i in range(len(classes))]


def _pick_training(candidates: list[tuple[str, np.ndarray, np.ndarray]], n: int, k: int):
    """The first ``n`` candidates, extended until every one of the ``k`` classes occurs."""
    chosen = list(candidates[:n])
    for cand in candidates[n:]:
        present = set(np.unique(np.concatenate([m.ravel() for _, _, m in chosen])))
        if all(c in present for c in range(k)):
            break
        if set(np.unique(cand[2])) - present - {255}:
            chosen.append(cand)
    return chosen


def choose_training(candidates: list[Item], n: int, k: int) -> list[Item]:
    """``n`` training images for the cross-image rows: the first ``n`` candidates (in order)
    whose ground truth shows every one of the ``k`` classes; where fewer do, the first ``n``
    candidates extended until every class occurs (``_pick_training``)."""
    full = [c for c in candidates if all(np.any(c[2] == cls) for cls in range(k))]
    return full[:n] if len(full) >= n else _pick_training(candidates, n, k)


def brightness_contrast(image: np.ndarray, gain: float = GAIN, offset: float = OFFSET) -> np.ndarray:
    """``image * gain + offset`` computed in float, rounded, clipped to an integer dtype's range
    and cast back to the image's dtype."""
    x = image.astype(np.float64) * gain + offset
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        x = np.clip(np.rint(x), info.min, info.max)
    return x.astype(image.dtype)


def _source(data: Path, name: str):
    """A set's images: ``(description, classes, pool, same_train, same_test, human scribbles)``;
    ``pool`` lists every image of the set, in the order training images are picked from."""
    if name in ("super", "ebc"):
        folder = data / "nasa_micronet"
        rows = _manifest(folder)
        prefix = "super" if name == "super" else "ebc_EBC1"

        def split(which: str) -> list[Item]:
            names = sorted(r["name"] for r in rows if r["split"] == f"{prefix}_{which}")
            return [(n, *_read(folder, n)) for n in names]

        train, val, test = split("train"), split("val"), split("test")
        classes = _class_names(folder, "super_*" if name == "super" else "ebc_*")
        description = ("Ni-superalloy SEM (NASA MicroNet Super)" if name == "super"
                       else "EBC cross-section SEM (NASA MicroNet EBC), 1024^2")
        return description, classes, train + val + test, _pick_training(train, 2, len(classes)), test, None
    if name == "membranes":
        folder = data / "isbi2012_em_membranes"
        pool = [(r["name"], *_read(folder, r["name"])) for r in _manifest(folder)]
        return "ssTEM membranes (ISBI 2012)", _class_names(folder), pool, pool[:2], pool[-5:], None
    if name == "nuclei":
        folder = data / "stardist_dsb2018_nuclei"
        pool = [(r["name"], *_read(folder, r["name"])) for r in _manifest(folder)]
        return "fluorescence nuclei (DSB 2018), one image", _class_names(folder), pool, pool, pool, None
    human = {"superalloy_human": ("isb0_superalloy_sem", "superalloy SEM with human scribbles (tldr_group)"),
             "particles_human": ("isb1_particles", "particle micrograph with human scribbles (tldr_group)")}
    if name in human:
        import imageio.v3 as iio

        key, description = human[name]
        folder = data / "tldr_group"
        pool = [(key, *_read(folder, key))]
        scribbles = iio.imread(folder / "scribbles" / f"{key}.png").astype(np.int64)
        return description, _class_names(folder, key), pool, pool, pool, scribbles
    raise ValueError(f"unknown set {name!r}; known: {', '.join(SETS)}")


def load_plan(data: Path, name: str, protocols: list[str], budget: float, seeds: list[int],
              max_scored: Optional[int] = None) -> Optional[Plan]:
    """The rows of set ``name`` that ``protocols`` ask for (``None`` when it has none of them)."""
    description, classes, pool, same_train, same_test, human = _source(data, name)
    return make_plan(name, description, classes, pool, same_train, same_test, human, protocols, budget, seeds,
                     max_scored)


def make_plan(name: str, description: str, classes: list[str], pool: list[Item], same_train: list[Item],
              same_test: list[Item], human: Optional[np.ndarray], protocols: list[str], budget: float,
              seeds: list[int], max_scored: Optional[int] = None) -> Optional[Plan]:
    """Trainings, rows and targets of one set (see :class:`Plan`); ``max_scored`` caps the images
    a cross-image row scores (the first ones of ``pool``; for quick looks only)."""
    k = len(classes)
    multi = len(pool) > 1
    trainings: dict[tuple[str, ...], list] = {}

    def training(items: list[Item]) -> tuple[str, ...]:
        names = tuple(n for n, _, _ in items)
        if names not in trainings:
            if human is not None:
                trainings[names] = [(n, img, [human]) for n, img, _ in items]
            else:
                per_image = budget * items[0][1].size / len(items)
                trainings[names] = [(n, img, [simulate_scribbles(gt, per_image, seed=s + i) for s in seeds])
                                    for i, (n, img, gt) in enumerate(items)]
        return names

    rows: dict[str, dict] = {}
    scored: dict[str, list[Item]] = {}
    notes = []
    one = choose_training(pool, 1, k) if multi else pool[:1]
    if multi:
        if "cross1" in protocols:
            t = training(one)
            scored["cross1"] = [it for it in pool if it[0] not in t][:max_scored]
            rows["cross1"] = {"protocol": "cross1", "training": t}
        if "cross2" in protocols:
            t = training(choose_training(pool, 2, k))
            scored["cross2"] = [it for it in pool if it[0] not in t][:max_scored]
            rows["cross2"] = {"protocol": "cross2", "training": t}
    if "same" in protocols:
        t = training(same_train)
        scored["same"] = same_test
        rows["same"] = {"protocol": "same", "training": t}
        if not multi:
            notes.append("same: scored on the training image itself (the set has one image)")
    if "robust" in protocols:
        t = training(one)
        n, img, gt = one[0]
        scored["robust:orig"] = [one[0]]
        scored["robust:bc"] = [(f"{n} (x{GAIN:g} + {OFFSET:g})", brightness_contrast(img), gt)]
        rows["robust:orig"] = {"protocol": "robust", "training": t}
        rows["robust:bc"] = {"protocol": "robust", "training": t}
    if not rows:
        return None
    targets: dict[str, list] = {}
    for row, items in scored.items():
        rows[row]["scored_images"] = [n for n, _, _ in items]
        rows[row]["train_images"] = list(rows[row]["training"])
        for n, img, gt in items:
            targets.setdefault(n, [n, img, gt, []])[3].append(row)
    return Plan(name, description, classes, "human" if human is not None else "simulated", trainings, rows,
                [tuple(t) for t in targets.values()], notes)


# ----------------------------------------------------------------------------- scribbles


def simulate_scribbles(gt: np.ndarray, budget: float, seed: int = 0) -> np.ndarray:
    """Brush strokes a user might paint, from a dense ground truth.

    Parameters
    ----------
    gt : (H, W) uint8
        Class ids 0..K-1 (255 = ignore).
    budget
        Painted pixels in all, shared equally between the classes present.
    seed
        Seed of the strokes' starts and turns.

    Returns
    -------
    (H, W) int64 labels: 0 unlabelled, k + 1 for class k.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    rng = np.random.default_rng(seed)
    classes = [c for c in np.unique(gt) if c != 255]
    out = np.zeros(gt.shape, np.int64)
    per_class = budget / len(classes)
    brush = disk(BRUSH_RADIUS).astype(bool)
    for c in classes:
        region = gt == c
        for r in EROSIONS:
            inside = ndi.binary_erosion(region, disk(r)) if r else region
            if inside.sum() >= 10:
                break
        painted = np.zeros(gt.shape, bool)
        for _ in range(MAX_STROKES):
            if painted.sum() >= per_class:
                break
            free = np.flatnonzero(inside & ~painted)
            if free.size == 0:
                break
            path = _random_walk(inside, np.unravel_index(rng.choice(free), gt.shape), rng)
            stroke = np.zeros(gt.shape, bool)
            stroke[tuple(np.array(path).T)] = True
            stroke = ndi.binary_dilation(stroke, brush) & region
            room = int(per_class - painted.sum())
            new = np.flatnonzero(stroke & ~painted)
            painted.ravel()[new[:room]] = True  # the stroke ends when the budget is spent
        out[painted] = c + 1
    return out


def _random_walk(inside: np.ndarray, start: tuple[int, int], rng) -> list[tuple[int, int]]:
    """A smooth random path from ``start`` that stays on ``inside``, up to MAX_STROKE_LENGTH px."""
    h, w = inside.shape
    y, x = float(start[0]), float(start[1])
    angle = rng.uniform(0, 2 * np.pi)
    path = [start]
    for _ in range(MAX_STROKE_LENGTH):
        for turn in (0, 0.5, -0.5, 1.0, -1.0, 1.6, -1.6):
            a = angle + rng.normal(0, 0.15) + turn
            ny, nx = y + np.sin(a), x + np.cos(a)
            iy, ix = int(round(ny)), int(round(nx))
            if 0 <= iy < h and 0 <= ix < w and inside[iy, ix]:
                y, x, angle = ny, nx, a
                if (iy, ix) != path[-1]:
                    path.append((iy, ix))
                break
        else:
            break
    return path


# ----------------------------------------------------------------------------- methods


@dataclass
class Method:
    """A segmentation method as the benchmark drives it.

    ``features(image)`` runs once per image and is shared by every method of the same ``key``;
    ``fit(features, labels)`` trains on a list of feature objects and scribble images (0
    unlabelled, k + 1 = class k); ``predict(model, features, image)`` gives class ids 0..K-1.
    """

    key: Hashable
    features: Callable[[np.ndarray], Any]
    fit: Callable[[list, list[np.ndarray]], Any]
    predict: Callable[[Any, Any, np.ndarray], np.ndarray]
    description: str = ""
    #: ``identity(dtypes)``: methods with equal (non-None) identities for a set's image dtypes
    #: give the same predictions there; only the first of them is run.
    identity: Optional[Callable[[frozenset], Hashable]] = None


def _painted(feats: list[np.ndarray], labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([f[lab > 0] for f, lab in zip(feats, labels)])
    y = np.concatenate([lab[lab > 0] for lab in labels])
    return x, y


def skimage_rf() -> Method:
    """scikit-image features (sigma 1..16) + 100-tree random forest (the earlier ``baseline``)."""

    def features(image):
        from skimage.feature import multiscale_basic_features

        return multiscale_basic_features(image, sigma_min=1, sigma_max=16).astype(np.float32)

    def fit(feats, labels):
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=0).fit(*_painted(feats, labels))

    def predict(rf, f, image):
        return rf.predict(f.reshape(-1, f.shape[-1])).reshape(f.shape[:2]) - 1

    return Method("skimage", features, fit, predict, "multiscale_basic_features sigma 1..16 + RF(100)")


def percentile_normalised(image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """``(H, W)`` float64 image with its ``percentiles`` mapped linearly to 0 and 1 (not clipped)."""
    x = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(x, percentiles)
    return (x - lo) / (hi - lo) if hi > lo else x - lo


def hgb_predict_1d(model, x: np.ndarray) -> np.ndarray:
    """``model.predict(x)`` for a one-feature ``HistGradientBoostingClassifier``, ~100x faster.

    Every split of the trees is ``x <= t`` for a bin threshold ``t`` of the model's binning, so
    the prediction is constant on the intervals between consecutive thresholds: predict one
    value per interval (the threshold closing it) and look the pixels up. Exact; falls back to
    ``model.predict`` where the binning is not reachable.
    """
    thresholds = getattr(getattr(model, "_bin_mapper", None), "bin_thresholds_", None)
    if x.shape[-1] != 1 or thresholds is None or len(thresholds) != 1:
        return model.predict(x)
    t = np.asarray(thresholds[0], dtype=np.float64)
    if t.size == 0:
        return model.predict(x)
    reps = np.concatenate([t, [np.nextafter(t[-1], np.inf)]])
    return model.predict(reps[:, None])[np.searchsorted(t, x[:, 0].astype(np.float64), side="left")]


def gaussian_hgb(sigma: float = 3.0) -> Method:
    """One Gaussian channel (``sigma``) of per-image percentile-normalised intensities +
    ``HistGradientBoostingClassifier`` (defaults, ``random_state=0``)."""

    def features(image):
        from scipy.ndimage import gaussian_filter

        return gaussian_filter(percentile_normalised(image), sigma)[..., None].astype(np.float32)

    def fit(feats, labels):
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(random_state=0).fit(*_painted(feats, labels))

    def predict(model, f, image):
        return hgb_predict_1d(model, f.reshape(-1, f.shape[-1])).reshape(f.shape[:2]) - 1

    return Method(("gaussian", sigma), features, fit, predict, f"Gaussian sigma {sigma:g} of percentile-normalised "
                                                                 "intensities + HistGradientBoosting")


def _dropped(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name.split(":")[-1], p) for p in patterns)


def select_channels(fs, drop: tuple[str, ...]):
    """A FeatureStack without the channels whose names match a pattern of ``drop`` (fnmatch)."""
    from napari_dinoseg import FeatureStack

    keep = [i for i, n in enumerate(fs.channel_names) if not _dropped(n, drop)]
    planes = np.moveaxis(fs.data, -1, 0)[keep]  # (F', H, W): copies whole planes of a channels-first buffer
    return FeatureStack(np.moveaxis(planes, 0, -1), fs.config, tuple(fs.channel_names[i] for i in keep))


def dinoseg(feature_cfg=None, train_cfg=None, drop: tuple[str, ...] = (), crf=None,
            prenorm: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> Method:
    """napari-dinoseg's pipeline: ``featurise`` -> ``train`` -> ``predict`` -> ``to_labels``.

    ``drop``: feature channel name patterns left out of training and prediction (an ablation;
    the guided filter then runs here, steered by the full stack's guide channels, as in the
    product). ``prenorm``: a function normalising the image before ``featurise(...,
    normalised=True)`` (to try a normalisation the core does not have).
    """
    from napari_dinoseg import FeatureConfig, TrainConfig

    fcfg = feature_cfg or FeatureConfig()
    tcfg = train_cfg or TrainConfig()
    fit_cfg = dataclasses.replace(tcfg, guided_radius=0) if drop else tcfg

    def features(image):
        from napari_dinoseg import featurise

        if prenorm is None:
            return featurise(image, fcfg)
        return featurise(prenorm(image), fcfg, normalised=True)

    def fit(feats, labels):
        from napari_dinoseg import train

        return train([select_channels(f, drop) if drop else f for f in feats], labels, fit_cfg)

    def predict(clf, fs, image):
        from napari_dinoseg import predict as predict_

        proba = predict_(clf, select_channels(fs, drop) if drop else fs)
        if drop and tcfg.guided_radius:
            from napari_dinoseg.classify import guide_channels
            from napari_dinoseg.smoothing import guided_filter

            guide = fs.data[..., list(guide_channels(fs))].mean(axis=-1, dtype=np.float32)
            proba = guided_filter(guide, proba, tcfg.guided_radius)
        if crf is not None:
            from napari_dinoseg.crf import crf_refine

            proba = crf_refine(image, proba, crf)
        return clf.to_labels(proba) - 1

    parts = [f"normalise={fcfg.normalise}"]
    if fcfg.normalise == "percentile":
        parts.append(f"percentiles={fcfg.percentiles}")
    if prenorm is not None:
        parts = [f"image pre-normalised by {getattr(prenorm, '__name__', prenorm)}"]
    if tcfg != TrainConfig():
        parts.append(", ".join(f"{f.name}={getattr(tcfg, f.name)!r}" for f in dataclasses.fields(tcfg)
                               if getattr(tcfg, f.name) != getattr(TrainConfig(), f.name)))
    if drop:
        parts.append(f"channels dropped: {', '.join(drop)}")
    def identity(dtypes: frozenset) -> Hashable:
        f = fcfg
        if f.normalise == "fixed" and f.intensity_range is None and dtypes == {np.dtype(np.uint8)}:
            f = dataclasses.replace(f, normalise="legacy")  # both divide uint8 by 255
        if f.normalise != "percentile" or prenorm is not None:
            f = dataclasses.replace(f, percentiles=FeatureConfig().percentiles)  # unused
        return ("dinoseg", f, prenorm, tcfg, drop, crf)

    return Method(("dinoseg", fcfg, prenorm), features, fit, predict, "; ".join(parts), identity)


def smoothed_percentiles(image: np.ndarray, sigma: float = 2.0, percentiles=(0.5, 99.5)) -> np.ndarray:
    """Image mapped linearly so the ``percentiles`` of its Gaussian-smoothed (``sigma``) copy go
    to 0 and 1: percentiles of structure, not of pixel noise."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(gaussian_filter(x, sigma)[::2, ::2], percentiles)
    return ((x - lo) / (hi - lo) if hi > lo else x - lo).astype(np.float32)


def median_iqr(image: np.ndarray) -> np.ndarray:
    """Image mapped linearly so its 25 and 75 % quartiles go to 0.25 and 0.75 (robust z-score)."""
    x = np.asarray(image, dtype=np.float64)
    q1, q3 = np.percentile(x, (25, 75))
    return (0.25 + 0.5 * (x - q1) / (q3 - q1) if q3 > q1 else x - q1).astype(np.float32)


def mean_std(image: np.ndarray) -> np.ndarray:
    """Image mapped linearly so its mean goes to 0.5 and mean +- 3 std to 0 and 1."""
    x = np.asarray(image, dtype=np.float64)
    sd = x.std()
    return (0.5 + (x - x.mean()) / (6 * sd) if sd > 0 else x - x.mean()).astype(np.float32)


#: Channels whose values follow the absolute intensity (not only its local differences).
LEVEL_CHANNELS = ("intensity", "gaussian_s*", "membrane_max", "membrane_min", "membrane_mean")


def registry(weights: Optional[str] = None) -> dict[str, Optional[Method]]:
    """Named methods; ``None`` marks a method that cannot run here (no weights)."""
    from napari_dinoseg import FeatureConfig, TrainConfig
    from napari_dinoseg.config import CRFConfig

    pct = FeatureConfig(normalise="percentile")
    out: dict[str, Optional[Method]] = {
        "skimage+rf": skimage_rf(),
        "gaussian+hgb": gaussian_hgb(),
        "dinoseg legacy": dinoseg(FeatureConfig(normalise="legacy")),
        "dinoseg percentile": dinoseg(pct),
        "dinoseg fixed": dinoseg(FeatureConfig(normalise="fixed")),
        "dinoseg": dinoseg(),  # FeatureConfig() as shipped
        # ideas for the folder use case
        "percentile 1-99": dinoseg(FeatureConfig(normalise="percentile", percentiles=(1, 99))),
        "percentile 2-98": dinoseg(FeatureConfig(normalise="percentile", percentiles=(2, 98))),
        "percentile 5-95": dinoseg(FeatureConfig(normalise="percentile", percentiles=(5, 95))),
        "percentile 25-75": dinoseg(FeatureConfig(normalise="percentile", percentiles=(25, 75))),
        "percentile 0-100 (min-max)": dinoseg(FeatureConfig(normalise="percentile", percentiles=(0, 100))),
        "smoothed percentiles (σ 2)": dinoseg(pct, prenorm=smoothed_percentiles),
        "median/IQR": dinoseg(pct, prenorm=median_iqr),
        "mean/std": dinoseg(pct, prenorm=mean_std),
        "percentile, no intensity/gaussian": dinoseg(pct, drop=("intensity", "gaussian_s*")),
        "percentile, no level channels": dinoseg(pct, drop=LEVEL_CHANNELS),
        "legacy, no level channels": dinoseg(FeatureConfig(normalise="legacy"), drop=LEVEL_CHANNELS),
        "percentile, logistic": dinoseg(pct, TrainConfig(classifier="logistic")),
        "percentile, standard scaling": dinoseg(pct, TrainConfig(scaling="standard")),
        "percentile, C=1": dinoseg(pct, TrainConfig(C=1.0)),
        "percentile, C=0.01": dinoseg(pct, TrainConfig(C=0.01)),
        "percentile, 30 trees": dinoseg(pct, TrainConfig(n_trees=30)),
        "percentile, no guided filter": dinoseg(pct, TrainConfig(guided_radius=0)),
        "percentile, guided radius 8": dinoseg(pct, TrainConfig(guided_radius=8)),
        "percentile, no membrane projections": dinoseg(FeatureConfig(normalise="percentile", membrane=False)),
        # ablations of the shipped default (the earlier benchmark)
        "logistic only": dinoseg(train_cfg=TrainConfig(classifier="logistic")),
        "standard scaling": dinoseg(train_cfg=TrainConfig(scaling="standard")),
        "C=1": dinoseg(train_cfg=TrainConfig(C=1.0)),
        "Gaussian smoothing (σ 1) instead of guided": dinoseg(train_cfg=TrainConfig(guided_radius=0, smooth=1.0)),
        "no smoothing": dinoseg(train_cfg=TrainConfig(guided_radius=0)),
        "logistic, standard, C=1, no smoothing": dinoseg(
            train_cfg=TrainConfig(classifier="logistic", scaling="standard", C=1.0, guided_radius=0)),
        "dinoseg+crf": dinoseg(crf=CRFConfig()),
        # the lattice the classifier reads (TrainConfig.predict_step; the shipped default is 2)
        "predict every pixel": dinoseg(train_cfg=TrainConfig(predict_step=1)),
        "predict every 3rd pixel": dinoseg(train_cfg=TrainConfig(predict_step=3)),
    }
    for kind in ("vit", "hybrid"):
        out[f"dinoseg {kind}"] = (
            dinoseg(FeatureConfig(kind=kind, weights=None if weights == "pretrained" else weights))
            if weights else None
        )
    return out


# ----------------------------------------------------------------------------- scoring


def confusion(gt: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """``(k, k)`` counts of (true, predicted) class pairs, ground-truth 255 ignored."""
    keep = gt != 255
    return np.bincount(gt[keep].astype(np.int64) * k + pred[keep].astype(np.int64), minlength=k * k).reshape(k, k)


def iou(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU from a confusion matrix (NaN for a class absent from truth and prediction)."""
    tp = np.diag(conf).astype(float)
    denom = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


# ----------------------------------------------------------------------------- figures

PALETTE = np.array([[40, 40, 40], [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66]], np.uint8)
SCRIBBLE_PALETTE = np.array([[204, 121, 167], [230, 159, 0], [86, 180, 233], [0, 158, 115]], np.uint8)


def figure(path: Path, scribbled: tuple[np.ndarray, np.ndarray], image: np.ndarray, gt: np.ndarray,
           panels: dict[str, np.ndarray], title: str) -> None:
    """A PNG row: training image with its scribbles | image | ground truth | one panel per method."""
    from PIL import Image, ImageDraw

    train_rgb = _grey(scribbled[0])
    painted = scribbled[1] > 0
    train_rgb[painted] = SCRIBBLE_PALETTE[np.clip(scribbled[1][painted] - 1, 0, len(SCRIBBLE_PALETTE) - 1)]
    tiles = [("training image + scribbles", train_rgb), ("image", _grey(image)), ("ground truth", _colour(gt))]
    tiles += [(name, _colour(seg)) for name, seg in panels.items()]
    side = 320
    pad, top = 8, 22
    canvas = Image.new("RGB", (len(tiles) * (side + pad) + pad, side + top + pad + 18), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), title, fill="black")
    for i, (name, rgb) in enumerate(tiles):
        tile = Image.fromarray(rgb).resize((side, side), Image.NEAREST)
        x = pad + i * (side + pad)
        canvas.paste(tile, (x, top))
        draw.text((x, top + side + 3), name, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def _grey(image: np.ndarray) -> np.ndarray:
    from napari_dinoseg.image import as_float_image

    grey = (np.clip(as_float_image(image)[..., 0], 0, 1) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, -1)


def _colour(seg: np.ndarray) -> np.ndarray:
    rgb = PALETTE[np.clip(seg, 0, len(PALETTE) - 1)]
    rgb[seg == 255] = 255
    return rgb


# ----------------------------------------------------------------------------- running


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_plan(plan: Plan, methods: dict[str, Method], keep_first: tuple[str, ...] = ()) -> dict:
    """``_run_unique`` on the methods that differ on this set's dtypes (see ``Method.identity``);
    the results of a method equal to an earlier one are copied from it (``same_as``)."""
    dtypes = frozenset({np.dtype(t[1].dtype) for t in plan.targets}
                       | {np.dtype(img.dtype) for items in plan.trainings.values() for _, img, _ in items})
    first_of: dict[Hashable, str] = {}
    alias: dict[str, str] = {}
    for name, m in methods.items():
        ident = m.identity(dtypes) if m.identity else None
        if ident is not None and ident in first_of:
            alias[name] = first_of[ident]
        elif ident is not None:
            first_of[ident] = name
    if alias:
        _log(f"  [{plan.name}] same predictions on {sorted(str(d) for d in dtypes)} images, not run twice: "
             + ", ".join(f"{a} = {b}" for a, b in alias.items()))
    result = _run_unique(plan, {n: m for n, m in methods.items() if n not in alias}, keep_first)
    tables = [e["methods"] for e in result["rows"].values()]
    if "robust" in result:
        tables.append(result["robust"]["methods"])
    for table_ in tables:
        done = dict(table_)
        table_.clear()
        for name in methods:
            table_[name] = done[name] if name not in alias else {**done[alias[name]], "same_as": alias[name]}
    result["descriptions"] = {n: methods[n].description for n in methods}
    for (row, name), v in list(result["_first"].items()):
        for a, b in alias.items():
            if b == name:
                result["_first"][(row, a)] = v
    return result


def _run_unique(plan: Plan, methods: dict[str, Method], keep_first: tuple[str, ...] = ()) -> dict:
    """Train every method on every training set of ``plan`` (one classifier per seed) and score
    every target; each target is featurised once per feature key and its features dropped before
    the next. Returns the set's result (see ``summarise``)."""
    k = len(plan.classes)
    groups: dict[Hashable, list[str]] = {}
    for name, m in methods.items():
        groups.setdefault(m.key, []).append(name)
    n_seeds = {t: len(items[0][2]) for t, items in plan.trainings.items()}
    models: dict[tuple[str, tuple], list] = {}
    failed: dict[str, str] = {}
    seconds = {name: {"features": 0.0, "fit": 0.0, "predict": 0.0} for name in methods}
    conf = {(row, name): np.zeros((n_seeds[info["training"]], k, k), np.int64)
            for row, info in plan.rows.items() for name in methods}
    first: dict[str, np.ndarray] = {}

    def timed(name: str, what: str, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        seconds[name][what] += time.perf_counter() - t
        return out

    # training: one feature key at a time, so at most one key's training features are held
    for key, names in groups.items():
        lead = names[0]
        cache: dict[str, Any] = {}
        for t, items in plan.trainings.items():
            try:
                feats = []
                for n, img, _ in items:
                    if n not in cache:
                        cache[n] = timed(lead, "features", methods[lead].features, img)
                    feats.append(cache[n])
            except Exception as exc:  # e.g. normalise="fixed" on a float image: record, go on
                failed.update({n: f"error: {type(exc).__name__}: {exc}" for n in names})
                break
            for name in names:
                if name in failed:
                    continue
                try:
                    models[(name, t)] = [timed(name, "fit", methods[name].fit, feats, [lab[s] for _, _, lab in items])
                                         for s in range(n_seeds[t])]
                except Exception as exc:
                    failed[name] = f"error: {type(exc).__name__}: {exc}"
        del cache
        _log(f"  [{plan.name}] trained {', '.join(names)} on {len(plan.trainings)} training set(s)")

    # scoring
    started = time.perf_counter()
    for i, (tname, img, gt, rows) in enumerate(plan.targets):
        t0 = time.perf_counter()
        trainings = list(dict.fromkeys(plan.rows[r]["training"] for r in rows))
        n_pred = 0
        for key, names in groups.items():
            names = [n for n in names if n not in failed]
            if not names:
                continue
            f = timed(names[0], "features", methods[names[0]].features, img)
            for name in names:
                for t in trainings:
                    for s, model in enumerate(models[(name, t)]):
                        pred = timed(name, "predict", methods[name].predict, model, f, img)
                        c = confusion(gt, pred, k)
                        n_pred += 1
                        for r in rows:
                            if plan.rows[r]["training"] == t:
                                conf[(r, name)][s] += c
                                if s == 0 and r in keep_first and (r, name) not in first:
                                    first[(r, name)] = (tname, pred)
            del f
        elapsed = time.perf_counter() - started
        _log(f"  [{plan.name}] {i + 1}/{len(plan.targets)} {tname}: {n_pred} predictions in "
             f"{time.perf_counter() - t0:.1f} s (rows {', '.join(rows)}; {elapsed:.0f} s so far)")
    return summarise(plan, methods, conf, failed, seconds, first)


def summarise(plan: Plan, methods: dict[str, Method], conf: dict, failed: dict, seconds: dict, first: dict) -> dict:
    """The JSON result of one set: per row and method the mIoU (mean over seeds), its per-seed
    values and standard deviation, and per-class IoU (mean over seeds); for ``robust`` the two
    mIoUs and their ratio per seed."""
    out_rows = {}
    for row, info in plan.rows.items():
        training = plan.trainings[info["training"]]
        painted = [int(sum((lab[s] > 0).sum() for _, _, lab in training)) for s in range(len(training[0][2]))]
        entry = {
            "protocol": info["protocol"], "train_images": info["train_images"],
            "scored_images": info["scored_images"], "n_scored": len(info["scored_images"]),
            "painted_pixels": float(np.mean(painted)),
            "painted_fraction_of_one_image": float(np.mean(painted) / training[0][1].size),
            "methods": {},
        }
        for name in methods:
            if name in failed:
                entry["methods"][name] = {"status": failed[name]}
                continue
            per_seed = np.array([iou(c) for c in conf[(row, name)]])  # (seeds, K)
            mious = np.nanmean(per_seed, axis=1)
            entry["methods"][name] = {
                "miou": float(mious.mean()), "std": float(mious.std()), "miou_per_seed": mious.tolist(),
                "iou": [None if np.isnan(v) else float(v) for v in np.nanmean(per_seed, axis=0)],
                "iou_per_seed": [[None if np.isnan(v) else float(v) for v in r] for r in per_seed],
            }
        out_rows[row] = entry
    result = {
        "set": plan.name, "description": plan.description, "classes": plan.classes, "scribbles": plan.scribbles,
        "seeds": max(len(items[0][2]) for items in plan.trainings.values()), "notes": plan.notes,
        "rows": {r: e for r, e in out_rows.items() if not r.startswith("robust:")},
        "seconds": {n: {k: round(v, 2) for k, v in s.items()} for n, s in seconds.items() if n not in failed},
        "descriptions": {n: methods[n].description for n in methods},
    }
    if "robust:orig" in out_rows:
        orig, bc = out_rows["robust:orig"], out_rows["robust:bc"]
        robust = {"train_images": orig["train_images"], "scored_images": orig["scored_images"] + bc["scored_images"],
                  "gain": GAIN, "offset": OFFSET, "painted_pixels": orig["painted_pixels"], "methods": {}}
        for name in methods:
            a, b = orig["methods"][name], bc["methods"][name]
            if "miou" not in a:
                robust["methods"][name] = a
                continue
            ratios = np.array(b["miou_per_seed"]) / np.array(a["miou_per_seed"])
            robust["methods"][name] = {
                "miou_orig": a["miou"], "miou_bc": b["miou"], "ratio": float(ratios.mean()),
                "std": float(ratios.std()), "ratio_per_seed": ratios.tolist(),
                "miou_orig_per_seed": a["miou_per_seed"], "miou_bc_per_seed": b["miou_per_seed"],
                "iou_orig": a["iou"], "iou_bc": b["iou"],
            }
        result["robust"] = robust
    result["_first"] = first
    return result


def merge_results(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` results with the rows / methods of ``new`` added (``new`` wins on a clash); a row
    whose training or scored images differ is replaced whole."""
    by_set = {r["set"]: r for r in old}
    for r in new:
        if r["set"] not in by_set:
            by_set[r["set"]] = r
            continue
        o = by_set[r["set"]]
        for row, entry in r["rows"].items():
            prev = o["rows"].get(row)
            if prev is None or (prev["train_images"], prev["scored_images"]) != (entry["train_images"],
                                                                                 entry["scored_images"]):
                o["rows"][row] = entry
            else:
                prev["methods"].update(entry["methods"])
        if "robust" in r:
            if "robust" not in o or o["robust"]["train_images"] != r["robust"]["train_images"]:
                o["robust"] = r["robust"]
            else:
                o["robust"]["methods"].update(r["robust"]["methods"])
        o.setdefault("seconds", {}).update(r.get("seconds", {}))
        o.setdefault("descriptions", {}).update(r.get("descriptions", {}))
    order = {s: i for i, s in enumerate(SETS)}
    return sorted(by_set.values(), key=lambda r: order.get(r["set"], len(order)))


# ----------------------------------------------------------------------------- tables


def _cell(res: dict, key: str = "miou") -> str:
    if key not in res:
        return res.get("status", "-")
    return f"{res[key]:.3f} ± {res['std']:.3f}" if len(res.get(f"{key}_per_seed", [])) > 1 else f"{res[key]:.3f}"


def _row_label(row: str, entry: dict) -> str:
    n_train = len(entry["train_images"])
    if row == "same" and entry["scored_images"] == entry["train_images"]:
        return f"same: {n_train} → itself"
    return f"{row}: {n_train} → {entry['n_scored']}"


def _rows(results: list[dict]):
    for r in results:
        for row, entry in r["rows"].items():
            yield r, row, entry


def table(results: list[dict], method_names: list[str]) -> str:
    """mIoU (mean ± std over seeds): a line per set and protocol row, a column per method, and mean lines."""
    lines = ["| set | row (train → scored images) | scribbles | painted px | " + " | ".join(method_names) + " |",
             "|---|---|---|---|" + "---|" * len(method_names)]
    for r, row, e in _rows(results):
        kind = f"{r['scribbles']} ×{r['seeds']}" if r["seeds"] > 1 else r["scribbles"]
        cells = [_cell(e["methods"].get(m, {})) for m in method_names]
        pct = 100 * e["painted_fraction_of_one_image"]
        lines.append(f"| {r['set']} | {_row_label(row, e)} | {kind} | {e['painted_pixels']:.0f} ({pct:.1f} %) | "
                     + " | ".join(cells) + " |")
    for label, keep in (("mean, cross-image rows", lambda row: row.startswith("cross")),
                        ("mean, all rows", lambda row: True)):
        entries = [e for _, row, e in _rows(results) if keep(row)]
        if not entries:
            continue
        cells = []
        for m in method_names:
            vals = [e["methods"][m]["miou"] for e in entries if "miou" in e["methods"].get(m, {})]
            cells.append(f"**{np.mean(vals):.3f}**" if vals and len(vals) == len(entries) else "-")
        lines.append(f"| **{label}** ({len(entries)} rows) | | | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def robust_table(results: list[dict], method_names: list[str]) -> str:
    """Brightness / contrast robustness: mIoU on the altered copy / on the image itself, per method."""
    lines = ["| set | training image | " + " | ".join(method_names) + " |",
             "|---|---|" + "---|" * len(method_names)]
    for r in results:
        rb = r.get("robust")
        if not rb:
            continue
        cells = []
        for m in method_names:
            res = rb["methods"].get(m, {})
            cells.append(f"{_cell(res, 'ratio')} ({res['miou_orig']:.3f} → {res['miou_bc']:.3f})"
                         if "ratio" in res else res.get("status", "-"))
        lines.append(f"| {r['set']} | {rb['train_images'][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_table(results: list[dict], method_names: list[str]) -> str:
    lines = ["| set | row | class | " + " | ".join(method_names) + " |",
             "|---|---|---|" + "---|" * len(method_names)]
    for r, row, e in _rows(results):
        for c, cname in enumerate(r["classes"]):
            cells = []
            for m in method_names:
                v = e["methods"].get(m, {}).get("iou", [None] * len(r["classes"]))[c]
                cells.append("-" if v is None else f"{v:.3f}")
            lines.append(f"| {r['set']} | {_row_label(row, e)} | {cname} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_table(results: list[dict]) -> str:
    lines = ["| set | row | training image(s) | scored images |", "|---|---|---|---|"]
    for r, row, e in _rows(results):
        scored = e["scored_images"]
        shown = ", ".join(scored) if len(scored) <= 5 else f"{len(scored)} images: all the set's others"
        lines.append(f"| {r['set']} | {row} | {', '.join(e['train_images'])} | {shown} |")
    for r in results:
        if r.get("robust"):
            lines.append(f"| {r['set']} | robust | {r['robust']['train_images'][0]} | "
                         f"{', '.join(r['robust']['scored_images'])} |")
    return "\n".join(lines)


def target_checks(results: list[dict], default: str, legacy: str = "dinoseg legacy") -> list[str]:
    """The targets for the product default ``default``, each with ✓ / ✗ and the figures."""
    out = []

    def miou(r, row, m):
        return r["rows"].get(row, {}).get("methods", {}).get(m, {}).get("miou")

    for r in results:
        if r["set"] == "super" and miou(r, "cross1", default) is not None:
            v = miou(r, "cross1", default)
            out.append(f"{'✓' if v >= 0.60 else '✗'} super, 1 image → {r['rows']['cross1']['n_scored']} others: "
                       f"{default} {v:.3f} (target >= 0.60; legacy {miou(r, 'cross1', legacy) or float('nan'):.3f})")
    for r, row, e in _rows(results):
        if (r["set"], row) == ("super", "cross1") or not (row.startswith("cross") or e["scored_images"] ==
                                                          e["train_images"]):
            continue
        d, l = miou(r, row, default), miou(r, row, legacy)
        if d is None or l is None:
            continue
        out.append(f"{'✓' if d >= l else '✗'} {r['set']} {_row_label(row, e)}: {default} {d:.3f} vs legacy {l:.3f} "
                   f"({d - l:+.3f})")
    entries = [e for _, _, e in _rows(results)]
    for label, keep in (("cross-image rows", lambda row: row.startswith("cross")), ("all rows", lambda row: True)):
        sel = [e for _, row, e in _rows(results) if keep(row)]
        means = {}
        for m in (default, *BASELINES):
            vals = [e["methods"].get(m, {}).get("miou") for e in sel]
            if sel and all(v is not None for v in vals):
                means[m] = float(np.mean(vals))
        if default in means and len(means) > 1:
            ok = all(means[default] > means[b] for b in BASELINES if b in means)
            out.append(f"{'✓' if ok else '✗'} mean over {label} ({len(sel)}): {default} {means[default]:.3f} vs "
                       + ", ".join(f"{b} {means[b]:.3f}" for b in BASELINES if b in means))
    del entries
    for r in results:
        res = r.get("robust", {}).get("methods", {}).get(default, {})
        if "ratio" in res:
            out.append(f"{'✓' if res['ratio'] >= 0.90 else '✗'} {r['set']} brightness/contrast copy: ratio "
                       f"{res['ratio']:.3f} ({res['miou_orig']:.3f} → {res['miou_bc']:.3f}; target >= 0.90)")
    return out


def report(results: list[dict], method_names: list[str], default: str) -> str:
    names = [m for m in method_names if any(m in e["methods"] for _, _, e in _rows(results))
             or any(m in r.get("robust", {}).get("methods", {}) for r in results)]
    parts = ["## mIoU (mean ± std over the scribble seeds)", table(results, names)]
    same: dict[tuple[str, str], list[str]] = {}
    for r, _, e in _rows(results):
        for m, res in e["methods"].items():
            if "same_as" in res and r["set"] not in same.setdefault((m, res["same_as"]), []):
                same[(m, res["same_as"])].append(r["set"])
    if same:
        parts.append("\n".join(f"{m} gives the same predictions as {b} on {', '.join(sets)} (identical configuration "
                               "for these images' dtype): copied, not run twice." for (m, b), sets in same.items()))
    if any(r.get("robust") for r in results):
        parts += [f"## Brightness / contrast robustness: mIoU on the image x{GAIN:g} + {OFFSET:g} / mIoU on the "
                  "image itself, trained on it (ratio ± std over seeds; mIoUs in brackets)",
                  robust_table(results, names)]
    checks = target_checks(results, default)
    if checks:
        parts += [f"## Targets for the product default ({default})", "\n".join(f"- {c}" for c in checks)]
    parts += ["## Per-class IoU (mean over seeds)", per_class_table(results, names),
              "## Training and scored images", training_table(results)]
    descriptions = {}
    for r in results:
        descriptions.update(r.get("descriptions", {}))
    parts += ["## Methods", "\n".join(f"- **{m}**: {descriptions.get(m, '')}" for m in names)]
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------- main


def _versions() -> dict:
    import napari_dinoseg
    import scipy
    import sklearn
    import skimage
    import torch

    import subprocess

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except Exception:
        commit = ""
    import os

    return {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "scikit-learn": sklearn.__version__, "scikit-image": skimage.__version__,
            "napari_dinoseg": napari_dinoseg.__version__, "git_commit": commit}


def _figure(args, plan: Plan, result: dict, default: str) -> None:
    first = result.get("_first", {})
    row = "cross1" if "cross1" in plan.rows else "same"
    panels, shown = {}, None
    for m in (default, "dinoseg legacy", *BASELINES):
        if (row, m) in first:
            shown, pred = first[(row, m)]
            panels[f"{m} ({result['rows'][row]['methods'][m]['miou']:.2f})"] = pred
    if not panels:
        return
    name, image, gt, _ = next(t for t in plan.targets if t[0] == shown)
    tname, timg, labels = plan.trainings[plan.rows[row]["training"]][0]
    figure(args.figures / f"quality_cross_{plan.name}.png", (timg, labels[0]), image, gt, panels,
           f"{plan.name} {row}: trained on {tname}, shown {name}")


def write_report(args, meta: dict, results: list[dict], names: list[str]) -> int:
    """Print the markdown tables and write them, and the JSON, next to ``args.out``; returns 0."""
    md = report(results, names, args.default_method)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    args.out.with_suffix(".md").write_text(md + "\n")
    return 0


def merge_files(parser, args) -> int:
    """``--merge``: one JSON / markdown from several runs' JSONs (later files win on a clash)."""
    docs = [json.loads(p.read_text()) for p in args.merge]
    keys = ("budget", "seed", "repeats", "max_scored")
    for p, d in zip(args.merge[1:], docs[1:]):
        if any(d["meta"].get(k) != docs[0]["meta"].get(k) for k in keys):
            parser.error(f"--merge: {p} was run with other {'/'.join(keys)} than {args.merge[0]}")
    results, names, runs = [], [], []
    for d in docs:
        results = merge_results(results, d["results"])
        names = list(dict.fromkeys(names + d["meta"].get("methods", [])))
        runs += d["meta"].get("runs", [d["meta"]])
    meta = {**{k: v for k, v in docs[0]["meta"].items() if k != "runs"}, "methods": names, "runs": runs,
            "merged_from": [str(p) for p in args.merge], "default_method": args.default_method}
    return write_report(args, meta, results, names)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = ROOT.parent / "shared" / "evaldata"
    parser.add_argument("--data", type=Path, default=default_data if default_data.exists() else None)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--protocol", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS,
                        help="rows to run: cross1 / cross2 (train on 1 / 2 images, score all others), robust "
                             "(brightness / contrast copy of the training image), same (the earlier protocol)")
    parser.add_argument("--variants", nargs="+", default=list(MAIN_VARIANTS),
                        help="methods to run ('all' for every one; --list names them)")
    parser.add_argument("--list", action="store_true", help="list the methods and exit")
    parser.add_argument("--default-method", default="dinoseg percentile",
                        help="the method the targets are checked for (the product default)")
    parser.add_argument("--weights", default=None,
                        help="DINOv2-S/14 checkpoint for the vit / hybrid rows, or 'pretrained' for the timm cache")
    parser.add_argument("--budget", type=float, default=0.01,
                        help="simulated painted pixels, as a fraction of one training image (<= 0.02)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="simulated scribbles drawn with this many seeds (seed, seed + 1, ...); scores averaged")
    parser.add_argument("--max-scored", type=int, default=None,
                        help="score at most this many images per cross-image row (quick looks; not comparable)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "quality_cross.json")
    parser.add_argument("--append", action="store_true",
                        help="merge this run's methods / rows into an existing --out JSON (same budget, seeds)")
    parser.add_argument("--figures", type=Path, default=None, help="folder for one PNG per set (none if omitted)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="run nothing: merge these result JSONs (same budget, seeds) into --out (.json and .md)")
    args = parser.parse_args(argv)
    if args.merge:
        return merge_files(parser, args)
    if args.weights == "random":
        parser.error("--weights random would report random features as ViT quality; give a checkpoint file")
    if args.weights not in (None, "pretrained") and not Path(args.weights).is_file():
        parser.error(f"--weights {args.weights!r} is not a file")
    methods_all = registry(args.weights)
    if args.list:
        for name, m in methods_all.items():
            print(f"{name}: {m.description if m else 'needs --weights'}")
        return 0
    if args.data is None or not args.data.exists():
        parser.error("no evaluation data: pass --data PATH (../shared/evaldata)")
    if not 0 < args.budget <= 0.02:
        parser.error("--budget must be in (0, 0.02]")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    names = list(methods_all) if args.variants == ["all"] else args.variants
    unknown = set(names) - set(methods_all)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {sorted(methods_all)}")
    methods = {n: methods_all[n] for n in names if methods_all[n] is not None}
    skipped = [n for n in names if methods_all[n] is None]

    meta = {**_versions(), "budget": args.budget, "seed": args.seed, "repeats": args.repeats,
            "weights": args.weights, "gain": GAIN, "offset": OFFSET, "max_scored": args.max_scored,
            "default_method": args.default_method}
    seeds = [args.seed + i for i in range(args.repeats)]
    results = []
    t_start = time.perf_counter()
    for set_name in args.sets:
        t = time.perf_counter()
        plan = load_plan(args.data, set_name, args.protocol, args.budget, seeds, args.max_scored)
        if plan is None:
            _log(f"[{set_name}] no rows for protocols {args.protocol} (a single-image set has same / robust only)")
            continue
        _log(f"[{set_name}] rows {', '.join(plan.rows)}; {len(plan.targets)} images to score; "
             f"methods {', '.join(methods)}")
        result = run_plan(plan, methods, keep_first=("cross1", "same") if args.figures else ())
        for n in skipped:
            for e in result["rows"].values():
                e["methods"][n] = {"status": "not run: no weights"}
            if "robust" in result:
                result["robust"]["methods"][n] = {"status": "not run: no weights"}
        if args.figures:
            _figure(args, plan, result, args.default_method)
        result.pop("_first", None)
        result["wall_seconds"] = round(time.perf_counter() - t, 1)
        results.append(result)
        md = report([result], names, args.default_method)
        _log(md.split("## Per-class")[0])
    meta["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    if args.append and args.out.exists():
        old = json.loads(args.out.read_text())
        for key in ("budget", "seed", "repeats", "max_scored"):
            if old["meta"].get(key) != meta[key]:
                parser.error(f"--append: {args.out} has {key}={old['meta'].get(key)!r}, this run {meta[key]!r}")
        results = merge_results(old["results"], results)
        meta["runs"] = old["meta"].get("runs", [old["meta"]]) + [{k: v for k, v in meta.items() if k != "runs"}]
        seen = list(dict.fromkeys(old["meta"].get("methods", []) + names))
        names = seen
    meta["methods"] = names
    return write_report(args, meta, results, names)


if __name__ == "__main__":
    sys.exit(main())
