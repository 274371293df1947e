"""Segmentation quality on real micrographs: brush scribbles -> train -> mIoU on held-out images.

Usage::

    .venv/bin/python benchmarks/quality.py [--data ../shared/evaldata] [--weights PATH]
        [--budget 0.01] [--sets super ebc ...] [--variants default lr ...]
        [--out benchmarks/results/quality.json] [--figures docs/images]

For each evaluation set (``../shared/evaldata``, see its README) the script simulates a user's
brush strokes from the ground truth of one or a few training images -- thin (3 px) random-walk
strokes inside eroded class regions, a fixed seed, and a fixed budget of painted pixels (a
fraction ``--budget`` of one training image, shared equally between the classes) -- or takes
the real human scribbles shipped with ``tldr_group``. Every method is trained on the same
scribbles and predicts the held-out images of the set; the score is the IoU of every class over
all held-out pixels (pixels marked 255 in the ground truth ignored) and their mean (mIoU).

Methods, all in the same run:

- ``baseline``: scikit-image ``multiscale_basic_features`` (sigma 1..16) + a 100-tree random
  forest (scikit-learn defaults otherwise), trained on the painted pixels;
- ``dinoseg``: napari-dinoseg with its defaults (``FeatureConfig()``, ``TrainConfig()``, and the
  widget's default post-processing);
- other ``--variants`` (see ``VARIANTS``) for choosing the defaults;
- ``vit`` / ``hybrid`` (DINOv2-S/14, the CPU preset): only with ``--weights`` (a checkpoint file,
  or ``pretrained`` for the timm / Hugging Face cache); otherwise reported as "not run: no
  weights", never computed with random weights.

Outputs: a markdown table on stdout (and next to the JSON), the JSON, and one PNG per set
(image / ground truth / ours / baseline) in ``--figures``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

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


# ----------------------------------------------------------------------------- data


@dataclass
class EvalSet:
    """One evaluation set: training images with scribbles, held-out images with ground truth."""

    name: str
    description: str
    classes: list[str]
    train: list[tuple[str, np.ndarray, np.ndarray]]  # (name, image, scribbles 0 / 1..K)
    test: list[tuple[str, np.ndarray, np.ndarray]]  # (name, image, ground truth 0..K-1, 255 ignore)
    scribbles: str  # "simulated" or "human"
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


def load_sets(data: Path, names: list[str], budget: float, seed: int) -> list[EvalSet]:
    """The evaluation sets of ``data`` (``../shared/evaldata``), with scribbles for training."""
    sets = []
    nasa = data / "nasa_micronet"
    rows = _manifest(nasa)

    def split(prefix: str, which: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
        names_ = sorted(r["name"] for r in rows if r["split"] == f"{prefix}_{which}")
        return [(n, *_read(nasa, n)) for n in names_]

    def simulated(name, description, classes, train_gt, test, n_train=2):
        train_gt = _pick_training(train_gt, n_train, len(classes))
        per_image = budget * train_gt[0][1].size / len(train_gt)
        train = [
            (n, img, simulate_scribbles(gt, per_image, seed=seed + i)) for i, (n, img, gt) in enumerate(train_gt)
        ]
        return EvalSet(name, description, classes, train, test, "simulated")

    if "super" in names:
        sets.append(simulated(
            "super", "Ni-superalloy SEM (NASA MicroNet Super): 2 train -> 4 test images",
            _class_names(nasa, "super_*"), split("super", "train"), split("super", "test"),
        ))
    if "ebc" in names:
        sets.append(simulated(
            "ebc", "EBC cross-section SEM (NASA MicroNet EBC), 1024^2: 2 train -> 3 test images",
            _class_names(nasa, "ebc_*"), split("ebc_EBC1", "train"), split("ebc_EBC1", "test"),
        ))
    if "membranes" in names:
        isbi = data / "isbi2012_em_membranes"
        all_ = [(r["name"], *_read(isbi, r["name"])) for r in _manifest(isbi)]
        sets.append(simulated(
            "membranes", "ssTEM membranes (ISBI 2012): 2 train -> 5 test images",
            _class_names(isbi), all_[:2], all_[-5:],
        ))
    if "nuclei" in names:
        dsb = data / "stardist_dsb2018_nuclei"
        one = [(r["name"], *_read(dsb, r["name"])) for r in _manifest(dsb)]
        s = simulated("nuclei", "fluorescence nuclei (DSB 2018): one image, scribbles and score on it",
                      _class_names(dsb), one, one, n_train=1)
        s.notes.append("scored on the training image itself (the set has one image)")
        sets.append(s)
    tldr = data / "tldr_group"
    for key, set_name, description in (
        ("isb0_superalloy_sem", "superalloy_human", "superalloy SEM with human scribbles (tldr_group)"),
        ("isb1_particles", "particles_human", "particle micrograph with human scribbles (tldr_group)"),
    ):
        if set_name not in names:
            continue
        import imageio.v3 as iio

        image, gt = _read(tldr, key)
        scribbles = iio.imread(tldr / "scribbles" / f"{key}.png").astype(np.int64)
        s = EvalSet(set_name, description + ": scored on the scribbled image", _class_names(tldr, key),
                    [(key, image, scribbles)], [(key, image, gt)], "human")
        s.notes.append(f"human scribbles: {100 * (scribbles > 0).mean():.1f} % of the pixels")
        sets.append(s)
    return sets


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


Method = Callable[[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]], list[np.ndarray]]


def baseline(train: list[tuple[np.ndarray, np.ndarray]], test: list[np.ndarray]) -> list[np.ndarray]:
    """scikit-image features (sigma 1..16) + 100-tree random forest: class ids 0..K-1 per image."""
    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    def feats(image):
        return multiscale_basic_features(image, sigma_min=1, sigma_max=16)

    x = np.concatenate([feats(img)[lab > 0] for img, lab in train])
    y = np.concatenate([lab[lab > 0] for _, lab in train])
    rf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=0).fit(x, y)
    return [rf.predict(feats(img).reshape(-1, x.shape[1])).reshape(img.shape[:2]) - 1 for img in test]


def dinoseg_method(feature_cfg=None, train_cfg=None, crf=None) -> Method:
    """napari-dinoseg's pipeline with the given configs (defaults when ``None``)."""

    def run(train, test):
        from napari_dinoseg import FeatureConfig, featurise, predict
        from napari_dinoseg import train as fit
        from napari_dinoseg.crf import crf_refine

        fcfg = feature_cfg or FeatureConfig()
        clf = fit([featurise(img, fcfg) for img, _ in train], [lab for _, lab in train], train_cfg)
        out = []
        for img in test:
            proba = predict(clf, featurise(img, fcfg))
            if crf is not None:
                proba = crf_refine(img, proba, crf)
            out.append(clf.to_labels(proba) - 1)
        return out

    return run


def variants(weights: Optional[str]) -> dict[str, Optional[Method]]:
    """Named methods; ``None`` marks a method that cannot run here (no weights)."""
    from napari_dinoseg import FeatureConfig
    from napari_dinoseg.config import CRFConfig

    from napari_dinoseg import TrainConfig

    out: dict[str, Optional[Method]] = {
        "baseline": baseline,
        "dinoseg": dinoseg_method(),
        # ablations: each default choice undone in turn
        "logistic only": dinoseg_method(train_cfg=TrainConfig(classifier="logistic")),
        "standard scaling": dinoseg_method(train_cfg=TrainConfig(scaling="standard")),
        "C=1": dinoseg_method(train_cfg=TrainConfig(C=1.0)),
        "Gaussian smoothing (σ 1) instead of guided": dinoseg_method(
            train_cfg=TrainConfig(guided_radius=0, smooth=1.0)),
        "no smoothing": dinoseg_method(train_cfg=TrainConfig(guided_radius=0)),
        "logistic, standard, C=1, no smoothing": dinoseg_method(
            train_cfg=TrainConfig(classifier="logistic", scaling="standard", C=1.0, guided_radius=0)),
        "dinoseg+crf": dinoseg_method(crf=CRFConfig()),
    }
    for kind in ("vit", "hybrid"):
        out[f"dinoseg {kind}"] = (
            dinoseg_method(FeatureConfig(kind=kind, weights=None if weights == "pretrained" else weights))
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

    grey = (as_float_image(image)[..., 0] * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, -1)


def _colour(seg: np.ndarray) -> np.ndarray:
    rgb = PALETTE[np.clip(seg, 0, len(PALETTE) - 1)]
    rgb[seg == 255] = 255
    return rgb


# ----------------------------------------------------------------------------- main


def evaluate(s: EvalSet, methods: dict[str, Optional[Method]]) -> dict:
    k = len(s.classes)
    train = [(img, lab) for _, img, lab in s.train]
    test_images = [img for _, img, _ in s.test]
    result = {
        "set": s.name, "description": s.description, "classes": s.classes, "scribbles": s.scribbles,
        "train_images": [n for n, _, _ in s.train], "test_images": [n for n, _, _ in s.test],
        "painted_pixels": int(sum((lab > 0).sum() for _, lab in train)),
        "painted_fraction_of_one_image": float(sum((lab > 0).sum() for _, lab in train) / train[0][1].size),
        "painted_per_class": [int(sum((lab == c + 1).sum() for _, lab in train)) for c in range(k)],
        "notes": s.notes, "methods": {},
    }
    preds = {}
    for name, method in methods.items():
        if method is None:
            result["methods"][name] = {"status": "not run: no weights"}
            continue
        t = time.perf_counter()
        pred = method(train, test_images)
        seconds = time.perf_counter() - t
        conf = sum(confusion(gt, p, k) for p, (_, _, gt) in zip(pred, s.test))
        per_class = iou(conf)
        result["methods"][name] = {
            "miou": float(np.nanmean(per_class)), "iou": [None if np.isnan(v) else float(v) for v in per_class],
            "seconds": seconds,
        }
        preds[name] = pred[0]
        print(f"  {s.name:18s} {name:22s} mIoU {np.nanmean(per_class):.3f}  "
              f"IoU {np.round(per_class, 3).tolist()}  {seconds:.1f} s", file=sys.stderr, flush=True)
    result["_first_prediction"] = preds
    return result


def _merge(runs: list[dict]) -> dict:
    """One result per set: scores averaged over the scribble seeds, each seed's mIoU kept."""
    out = dict(runs[0])
    out["seeds"] = len(runs)
    out["painted_pixels"] = int(np.mean([r["painted_pixels"] for r in runs]))
    out["painted_fraction_of_one_image"] = float(np.mean([r["painted_fraction_of_one_image"] for r in runs]))
    out["methods"] = {}
    for name, first in runs[0]["methods"].items():
        if "miou" not in first:
            out["methods"][name] = first
            continue
        per_seed = [r["methods"][name] for r in runs]
        ious = np.array([[np.nan if v is None else v for v in m["iou"]] for m in per_seed])
        mean_iou = np.nanmean(ious, axis=0)
        out["methods"][name] = {
            "miou": float(np.mean([m["miou"] for m in per_seed])),
            "miou_per_seed": [m["miou"] for m in per_seed],
            "iou": [None if np.isnan(v) else float(v) for v in mean_iou],
            "seconds": float(np.mean([m["seconds"] for m in per_seed])),
        }
    return out


def table(results: list[dict], method_names: list[str]) -> str:
    lines = ["| set | scribbles | painted px | " + " | ".join(method_names) + " |",
             "|---|---|---|" + "---|" * len(method_names)]
    def cell(res: dict) -> str:
        if "miou" not in res:
            return res.get("status", "-")
        seeds = res.get("miou_per_seed", [])
        spread = f" ± {np.std(seeds):.3f}" if len(seeds) > 1 else ""
        return f"{res['miou']:.3f}{spread}"

    for r in results:
        cells = [cell(r["methods"].get(m, {})) for m in method_names]
        pct = 100 * r["painted_fraction_of_one_image"]
        kind = f"{r['scribbles']} ×{r['seeds']}" if r["seeds"] > 1 else r["scribbles"]
        lines.append(f"| {r['set']} | {kind} | {r['painted_pixels']} ({pct:.1f} %) | " + " | ".join(cells) + " |")
    means = []
    for m in method_names:
        vals = [r["methods"][m]["miou"] for r in results if "miou" in r["methods"].get(m, {})]
        means.append(f"**{np.mean(vals):.3f}**" if len(vals) == len(results) and vals else "-")
    lines.append("| **mean** | | | " + " | ".join(means) + " |")
    return "\n".join(lines)


def per_class_table(results: list[dict], method_names: list[str]) -> str:
    lines = ["| set | class | " + " | ".join(method_names) + " |", "|---|---|" + "---|" * len(method_names)]
    for r in results:
        for c, cname in enumerate(r["classes"]):
            cells = []
            for m in method_names:
                res = r["methods"].get(m, {})
                v = res.get("iou", [None] * len(r["classes"]))[c] if "iou" in res else None
                cells.append("-" if v is None else f"{v:.3f}")
            lines.append(f"| {r['set']} | {cname} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = ROOT.parent / "shared" / "evaldata"
    parser.add_argument("--data", type=Path, default=default_data if default_data.exists() else None)
    parser.add_argument("--sets", nargs="+", default=["super", "ebc", "membranes", "nuclei", "superalloy_human",
                                                      "particles_human"])
    parser.add_argument("--variants", nargs="+", default=None, help="methods to run (default: all)")
    parser.add_argument("--weights", default=None,
                        help="DINOv2-S/14 checkpoint for the vit / hybrid rows, or 'pretrained' for the timm cache")
    parser.add_argument("--budget", type=float, default=0.01,
                        help="simulated painted pixels, as a fraction of one training image (<= 0.02)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="simulated scribbles drawn with this many seeds (seed, seed + 1, ...); scores averaged")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "quality.json")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    if args.data is None or not args.data.exists():
        parser.error("no evaluation data: pass --data PATH (../shared/evaldata)")
    if not 0 < args.budget <= 0.02:
        parser.error("--budget must be in (0, 0.02]")
    if args.weights == "random":
        parser.error("--weights random would report random features as ViT quality; give a checkpoint file")
    if args.weights not in (None, "pretrained") and not Path(args.weights).is_file():
        parser.error(f"--weights {args.weights!r} is not a file")

    methods = variants(args.weights)
    if args.variants:
        unknown = set(args.variants) - set(methods)
        if unknown:
            parser.error(f"unknown variants {sorted(unknown)}; known: {sorted(methods)}")
        methods = {k: v for k, v in methods.items() if k in args.variants}
    results = []
    for name in args.sets:
        runs = []
        for rep in range(args.repeats):
            (s,) = load_sets(args.data, [name], args.budget, args.seed + rep)
            if rep and s.scribbles == "human":
                break  # human scribbles are fixed: one run
            runs.append((s, evaluate(s, methods)))
        s, r = runs[0]
        r = _merge([run for _, run in runs])
        preds = r.pop("_first_prediction")
        if args.figures and "baseline" in preds and "dinoseg" in preds:
            name, image, gt = s.test[0]
            figure(args.figures / f"quality_{s.name}.png", s.train[0][1:], image, gt,
                   {f"napari-dinoseg ({r['methods']['dinoseg']['miou']:.2f})": preds["dinoseg"],
                    f"baseline ({r['methods']['baseline']['miou']:.2f})": preds["baseline"]},
                   f"{s.name}: {name} (held-out)" if s.scribbles == "simulated" else f"{s.name}: {name}")
        results.append(r)
    names = list(methods)
    md = "\n\n".join([table(results, names), per_class_table(results, names)])
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import sklearn
    import skimage
    import torch

    meta = {"machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "scikit-learn": sklearn.__version__, "scikit-image": skimage.__version__, "budget": args.budget,
            "seed": args.seed, "weights": args.weights}
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    args.out.with_suffix(".md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
