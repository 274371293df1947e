"""Phase fractions on real superalloy micrographs (issue 25): paint one image, measure the others.

Usage::

    .venv/bin/python benchmarks/measure_fractions.py [--data ../shared/evaldata]
        [--variants default "normalise fixed" ... | all] [--seed 0] [--repeats 5]
        [--out benchmarks/results/measure_fractions.json] [--list]
    .venv/bin/python benchmarks/measure_fractions.py --tabulate OLD.json   # tables again, nothing run

The question of issue 25's "Useful" target: does a classifier painted on one superalloy image
and applied to the others give phase fractions within 0.05 (absolute, mean over images and
classes) of the ground truth's?

Sets (``../shared/evaldata``, see its README):

- ``super``: the 18 NASA MicroNet "Super" Ni-superalloy SEM images (γ matrix, secondary γ′,
  tertiary γ′), uint8, 512². Brush strokes are simulated from the ground truth with
  ``quality.py``'s simulator and its cross-image protocol: ``cross1`` paints the first image of
  the training split that shows every class and scores every other image of the set (17);
  ``cross2`` paints it and the next such image and scores the other 16; ``cross3`` paints three
  and scores 15. The stroke budget is a fraction of one image's pixels, shared between the
  training images and the classes, with seeds ``seed, seed + 1, ...`` (``--repeats``), as in
  ``quality.py``. For the default, ``itself`` scores the ``cross1`` classifiers on the image
  they were painted on: the error left without any image-to-image difference.
- ``superalloy_human``: tldr_group's superalloy SEM with its real human scribbles. One image
  (an etched specimen imaged with another contrast, not one of the 18), so it can only be
  scored on the image it was painted on: a same-image figure, not a folder figure.

Every classifier is napari-dinoseg's :class:`~napari_dinoseg.Segmenter` with classical features
(there are no DINOv2 weights on the benchmark machine), ``FeatureConfig()`` and
``TrainConfig()`` as shipped unless the variant says otherwise. For every scored image:

- the ground-truth fraction of each class, over the pixels that are not ignored (mask value
  255; the predictions' fractions leave the same pixels out);
- the predicted fraction: the hard labels' (``Segmenter.to_labels``) and the one expected from
  the probabilities (``expected_fraction``: the mean probability of each class), both from
  :func:`napari_dinoseg.measure.measure`;
- the absolute error of each class.

Reported per set, variant and row: the mean absolute error over images and classes (mean ± std
over the stroke seeds), the signed error of each class (prediction - truth: negative means
under-segmented), and the field-to-field mean with its 95 % interval
(:func:`napari_dinoseg.measure.summary_table`) of the ground truth and of the prediction, with
whether the ground truth's mean lies inside the prediction's interval.

Variants (``--list``): the shipped default; the normalisations of ``FeatureConfig`` (``fixed``,
which equals ``legacy`` on uint8 images, and other percentiles); one / two / three training
images; a larger stroke budget; tone-curve augmentation; the guided filter off; the dense CRF on.
Features of each image are computed once per feature configuration (a ``FeatureCache``) and
reused by every classifier that predicts it.

Outputs: the tables on stdout and in ``--out`` with a ``.md`` suffix, and the JSON (every
per-image fraction of every seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from machine import cpu_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import quality as Q  # noqa: E402

#: The issue's target: mean absolute fraction error over images and classes.
TARGET = 0.05
#: Ground-truth value of pixels left out of every fraction.
IGNORE = 255
SETS = ("super", "superalloy_human")
ESTIMATORS = ("hard", "expected")


# ----------------------------------------------------------------------------- fractions


def truth_fractions(gt: np.ndarray, k: int, ignore: int = IGNORE) -> np.ndarray:
    """Fraction of each class in a ground truth, ignored pixels left out.

    Parameters
    ----------
    gt : (H, W) integer array
        Class ids ``0..k-1``; ``ignore`` marks pixels left out.
    k
        Number of classes.

    Returns
    -------
    (k,) float64, summing to 1 (NaN everywhere when every pixel is ignored). Counted by
    :func:`napari_dinoseg.measure.measure`.
    """
    from napari_dinoseg.measure import measure

    gt = np.asarray(gt)
    table = measure(gt).fractions
    pixels = dict(zip(table["label"].tolist(), table["pixels"].tolist()))
    kept = gt.size - pixels.get(ignore, 0)
    if kept == 0:
        return np.full(k, np.nan)
    return np.array([pixels.get(c, 0) / kept for c in range(k)], np.float64)


def predicted_fractions(labels: np.ndarray, proba: np.ndarray, classes: Sequence[int], k: int,
                        keep: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Hard-label and expected fractions of each class, over the kept pixels.

    Parameters
    ----------
    labels : (H, W) integer array
        Painted label values (``classes[j]`` is class id ``classes[j] - 1``, the brush convention:
        label ``c + 1`` paints class ``c``).
    proba : (H, W, K) float array
        Column ``j`` is the probability of label ``classes[j]``.
    classes
        The label value of each column of ``proba`` (``Segmenter.classes``).
    k
        Number of classes of the ground truth (a class the classifier never saw gets 0).
    keep : (H, W) bool array, optional
        Pixels counted (the ground truth's non-ignored ones); default every pixel.

    Returns
    -------
    ``(hard, expected)``: two (k,) float64 arrays. Both come from
    :func:`napari_dinoseg.measure.measure` (``fraction`` and ``expected_fraction``), with the
    left-out pixels set to label 0 (no class) and zero probability, then rescaled to the kept
    pixels. ``measure`` reports ``expected_fraction`` only for label values the hard labels
    contain; for a class no pixel is labelled with, its mean probability is taken directly.
    """
    from napari_dinoseg.measure import measure

    labels = np.asarray(labels)
    proba = np.asarray(proba, dtype=np.float32)
    classes = [int(c) for c in classes]
    if 0 in classes:
        raise ValueError("label value 0 is 'no class' here: classes must be painted values >= 1")
    if keep is not None and not keep.all():
        labels = np.where(keep, labels, 0).astype(labels.dtype)
        proba = proba * keep[..., None]
    kept = labels.size if keep is None else int(np.count_nonzero(keep))
    if kept == 0:
        return np.full(k, np.nan), np.full(k, np.nan)
    table = measure(labels, proba=proba, classes=classes).fractions
    pixels = dict(zip(table["label"].tolist(), table["pixels"].tolist()))
    expected = dict(zip(table["label"].tolist(), table["expected_fraction"].tolist()))
    column_mean = proba.reshape(-1, proba.shape[-1]).mean(axis=0, dtype=np.float64)
    hard, soft = np.zeros(k), np.zeros(k)
    for j, value in enumerate(classes):
        c = value - 1
        if not 0 <= c < k:
            continue
        hard[c] = pixels.get(value, 0) / kept
        soft[c] = expected.get(value, column_mean[j]) * labels.size / kept
    return hard, soft


def fraction_errors(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Errors of predicted fractions against the truth's.

    Parameters
    ----------
    truth : (N, K) float array
        Per image and class.
    predicted : (N, K) or (S, N, K) float array
        The same for one classifier, or for S of them (seeds).

    Returns
    -------
    dict with ``mae`` (mean absolute error over images and classes; mean over seeds),
    ``mae_std`` (its standard deviation over seeds, 0 for one), ``mae_per_seed``,
    ``mae_per_class`` (K,), ``bias_per_class`` (K,: mean of prediction - truth, negative for
    under-segmented), ``under_segmented_images`` (K,: the share of image x seed pairs with a
    negative error) and ``max_abs_error``.
    """
    truth = np.asarray(truth, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.float64)
    if pred.ndim == 2:
        pred = pred[None]
    if pred.shape[1:] != truth.shape:
        raise ValueError(f"predicted fractions {pred.shape} do not match the truth's {truth.shape}")
    signed = pred - truth[None]
    per_seed = np.abs(signed).mean(axis=(1, 2))
    return {
        "mae": float(per_seed.mean()), "mae_std": float(per_seed.std()), "mae_per_seed": per_seed.tolist(),
        "mae_per_class": np.abs(signed).mean(axis=(0, 1)).tolist(),
        "bias_per_class": signed.mean(axis=(0, 1)).tolist(),
        "under_segmented_images": (signed < 0).mean(axis=(0, 1)).tolist(),
        "max_abs_error": float(np.abs(signed).max()),
    }


def field_summary(fractions: np.ndarray, names: Sequence[str]) -> list[dict]:
    """Per class: the field-to-field mean with its 95 % interval, by
    :func:`napari_dinoseg.measure.summary_table`.

    Parameters
    ----------
    fractions : (N, K) float array
        Per image and class (class ``c`` is label ``c`` in the table).
    names
        The N images' names.

    Returns
    -------
    K dicts: ``mean, sd, ci95_low, ci95_high``.
    """
    import pandas as pd
    from napari_dinoseg.measure import summary_table

    fractions = np.asarray(fractions, dtype=np.float64)
    long = pd.DataFrame([{"image": n, "label": c, "fraction": float(fractions[i, c])}
                         for i, n in enumerate(names) for c in range(fractions.shape[1])])
    objects = pd.DataFrame(columns=["image", "label", "equivalent_diameter_px"])
    table = summary_table(long, objects).set_index("label")
    return [{"mean": float(table.loc[c, "mean_fraction"]), "sd": float(table.loc[c, "sd_fraction"]),
             "ci95_low": float(table.loc[c, "ci95_low"]), "ci95_high": float(table.loc[c, "ci95_high"])}
            for c in range(fractions.shape[1])]


def interval_check(truth: np.ndarray, predicted: np.ndarray, names: Sequence[str]) -> list[dict]:
    """Per class: the ground truth's field mean and interval against the prediction's.

    Parameters
    ----------
    truth : (N, K); predicted : (S, N, K) float arrays
        Per-image fractions (S seeds).

    Returns
    -------
    K dicts: ``truth`` (:func:`field_summary`'s), ``predicted`` (means over the seeds of the
    prediction's mean and interval bounds), ``truth_mean_inside`` (seeds whose predicted
    interval holds the truth's mean) and ``seeds``.
    """
    gt = field_summary(truth, names)
    per_seed = [field_summary(p, names) for p in np.asarray(predicted)]
    out = []
    for c, g in enumerate(gt):
        mine = [s[c] for s in per_seed]
        inside = sum(s["ci95_low"] <= g["mean"] <= s["ci95_high"] for s in mine)
        out.append({"truth": g, "predicted": {key: float(np.mean([s[key] for s in mine]))
                                              for key in ("mean", "sd", "ci95_low", "ci95_high")},
                    "truth_mean_inside": int(inside), "seeds": len(mine)})
    return out


# ----------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One way of painting and classifying: a Segmenter's configs, the stroke budget, and the
    numbers of training images (rows) it is run with."""

    name: str
    description: str
    features: dict = field(default_factory=dict)  # FeatureConfig(**features)
    training: dict = field(default_factory=dict)  # TrainConfig(**training)
    crf: bool = False
    budget: float = 0.01
    n_train: tuple[int, ...] = (1, 2)
    human: bool = True  # also run on the human-scribble image (not for budget variants)
    itself: bool = False  # also score the cross1 classifier on its own training image (a reference)

    def segmenter(self):
        from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig
        from napari_dinoseg.config import CRFConfig

        return Segmenter(FeatureConfig(**self.features), TrainConfig(**self.training),
                         CRFConfig() if self.crf else None)

    @property
    def feature_key(self) -> str:
        from napari_dinoseg import FeatureConfig

        return FeatureConfig(**self.features).to_json()


def variants() -> dict[str, Variant]:
    """The variants this benchmark knows, by name."""
    out = [
        Variant("default", "FeatureConfig() and TrainConfig() as shipped: per-image percentile 5-95 "
                "normalisation, guided filter radius 4, no CRF; 1 % of one image painted", n_train=(1, 2, 3),
                itself=True),
        Variant("normalise fixed", "FeatureConfig(normalise='fixed'): the dtype's range (equals 'legacy' "
                "on these uint8 images)", features={"normalise": "fixed"}),
        Variant("percentile 25-75", "FeatureConfig(percentiles=(25, 75))", features={"percentiles": (25.0, 75.0)}),
        Variant("percentile 0.5-99.5", "FeatureConfig(percentiles=(0.5, 99.5))",
                features={"percentiles": (0.5, 99.5)}),
        Variant("budget 2 %", "2 % of one image painted (twice the default budget)", budget=0.02, human=False),
        Variant("budget 4 %", "4 % of one image painted", budget=0.04, human=False),
        Variant("augment 0.7/1.4", "TrainConfig(augment=(0.7, 1.4)): also trained on tone-curve copies",
                training={"augment": (0.7, 1.4)}),
        Variant("no guided filter", "TrainConfig(guided_radius=0): probabilities not smoothed",
                training={"guided_radius": 0}),
        Variant("dense CRF", "Segmenter(crf=CRFConfig()): dense CRF on the probabilities", crf=True),
    ]
    return {v.name: v for v in out}


# ----------------------------------------------------------------------------- running


@dataclass
class Row:
    """One (set, variant, row) result: per-image fractions of every seed."""

    set: str
    variant: str
    row: str
    train_images: list[str]
    scored_images: list[str]
    scribbles: str
    painted: list[list[int]] = field(default_factory=list)  # per seed, per class
    truth: list[list[float]] = field(default_factory=list)  # (N, K)
    hard: list[list[list[float]]] = field(default_factory=list)  # (S, N, K)
    expected: list[list[list[float]]] = field(default_factory=list)
    seconds: float = 0.0

    def result(self, classes: list[str]) -> dict:
        out = {k: getattr(self, k) for k in ("set", "variant", "row", "train_images", "scored_images", "scribbles",
                                             "painted", "truth", "hard", "expected")}
        out["seconds"] = round(self.seconds, 1)
        out["classes"] = classes
        return summarised(out)


def image_group(name: str) -> Optional[str]:
    """The group of a super image: ``"0d"`` / ``"180d"`` from ``super_spot3_180d_2``; ``None`` for
    names without such a part."""
    import re

    found = re.search(r"_(\d+d)_", name)
    return found.group(1) if found else None


def summarised(result: dict) -> dict:
    """``result`` (a row's per-image fractions) with its summaries (re)computed: ``painted_pixels``,
    ``<estimator>_errors`` (:func:`fraction_errors`), ``<estimator>_interval``
    (:func:`interval_check`, for several scored images) and ``hard_mae_by_group`` (the hard labels'
    MAE over the images of each :func:`image_group`)."""
    out = dict(result)
    truth = np.asarray(out["truth"])
    out["painted_pixels"] = float(np.mean([sum(p) for p in out["painted"]]))
    for est in ESTIMATORS:
        pred = np.asarray(out[est])
        out[est + "_errors"] = fraction_errors(truth, pred)
        if len(out["scored_images"]) > 1:
            out[est + "_interval"] = interval_check(truth, pred, out["scored_images"])
    groups = [image_group(n) for n in out["scored_images"]]
    if all(g is not None for g in groups):
        hard = np.asarray(out["hard"])
        out["hard_mae_by_group"] = {
            g: fraction_errors(truth[[x == g for x in groups]], hard[:, [x == g for x in groups]])["mae"]
            for g in sorted(set(groups), key=lambda g: int(g[:-1]))}
    return out


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_variant(variant: Variant, set_name: str, classes: list[str], pool: list, human: Optional[np.ndarray],
                truth: dict[str, np.ndarray], seeds: list[int], cache, scribble_memo: dict) -> list[Row]:
    """Every row of one variant on one set: fit one Segmenter per seed and training set, predict
    and measure every scored image (``truth``: each image's :func:`truth_fractions`)."""
    k = len(classes)
    rows = []
    if human is not None:
        plans = [("same: 1 → itself", pool[:1], pool[:1], [None])]
    else:
        plans = []
        for n in variant.n_train:
            items = Q.choose_training(pool, n, k)
            names = {m for m, _, _ in items}
            plans.append((f"cross{n}: {n} → {len(pool) - n}", items, [it for it in pool if it[0] not in names],
                          seeds))
            if n == 1 and variant.itself:
                plans.append(("itself: 1 → 1 (the painted image)", items, items, seeds))
    for label, items, scored, row_seeds in plans:
        t0 = time.perf_counter()
        row = Row(set_name, variant.name, label, [n for n, _, _ in items], [n for n, _, _ in scored],
                  "human" if human is not None else f"simulated ×{len(seeds)}",
                  truth=[truth[n].tolist() for n, _, _ in scored])
        for s in row_seeds:
            if human is not None:
                labels = [human]
            else:  # as quality.make_plan: the budget shared between the images, seed s + i for image i
                per_image = variant.budget * items[0][1].size / len(items)
                labels = []
                for i, (n, _, gt) in enumerate(items):
                    key = (n, per_image, s + i)
                    if key not in scribble_memo:
                        scribble_memo[key] = Q.simulate_scribbles(gt, per_image, seed=s + i)
                    labels.append(scribble_memo[key])
            row.painted.append([int(sum((lab == c + 1).sum() for lab in labels)) for c in range(k)])
            seg = variant.segmenter().fit([img for _, img, _ in items], labels, cache=cache)
            hard, soft = [], []
            for n, img, gt in scored:
                proba = seg.predict_proba(img, cache=cache)
                h, e = predicted_fractions(seg.to_labels(proba), proba, seg.classes, k, gt != IGNORE)
                hard.append(h.tolist())
                soft.append(e.tolist())
            row.hard.append(hard)
            row.expected.append(soft)
        row.seconds = time.perf_counter() - t0
        err = fraction_errors(np.asarray(row.truth), np.asarray(row.hard))["mae"]
        err_e = fraction_errors(np.asarray(row.truth), np.asarray(row.expected))["mae"]
        _log(f"  [{set_name}] {variant.name}, {label}: MAE hard {err:.3f}, expected {err_e:.3f} "
             f"({row.seconds:.0f} s)")
        rows.append(row)
    return rows


def load_set(data: Path, name: str):
    """``(description, classes, pool, human scribbles or None)`` of a set, by ``quality._source``."""
    description, classes, pool, _, _, human = Q._source(data, name)
    return description, classes, pool, human


# ----------------------------------------------------------------------------- tables


def _signed(v: float) -> str:
    return f"{v:+.3f}"


def _mae(errors: dict) -> str:
    mark = " ✓" if errors["mae"] <= TARGET else ""
    std = f" ± {errors['mae_std']:.3f}" if len(errors["mae_per_seed"]) > 1 else ""
    return f"{errors['mae']:.3f}{std}{mark}"


def error_table(results: list[dict]) -> str:
    """One line per variant and row: the MAE of both estimators, and per class of the hard labels
    the mean signed error (mean absolute error; share of image x seed pairs under-segmented)."""
    classes = results[0]["classes"]
    groups = list(dict.fromkeys(g for r in results for g in r.get("hard_mae_by_group", {})))
    by_group = f" | MAE hard: {' / '.join(groups)} images" if groups else ""
    lines = [f"| variant | row (train → scored) | painted px | MAE hard | MAE expected{by_group} | "
             + " | ".join(f"{_short(c)}: hard labels" for c in classes) + " |",
             "|---|---|---|---|---|" + "---|" * (len(classes) + bool(groups))]
    for r in results:
        h, e = r["hard_errors"], r["expected_errors"]
        cell = ""
        if groups:
            mine = r.get("hard_mae_by_group", {})
            cell = " | " + " / ".join(f"{mine[g]:.3f}" if g in mine else "–" for g in groups)
        lines.append(f"| {r['variant']} | {r['row']} | {r['painted_pixels']:.0f} | {_mae(h)} | {_mae(e)}{cell} | "
                     + " | ".join(_class_cell(h, c) for c in range(len(classes))) + " |")
    return "\n".join(lines)


def expected_class_table(results: list[dict]) -> str:
    """Per class, the fractions expected from the probabilities: as :func:`error_table`'s cells."""
    classes = results[0]["classes"]
    lines = ["| variant | row | " + " | ".join(f"{_short(c)}: expected" for c in classes) + " |",
             "|---|---|" + "---|" * len(classes)]
    for r in results:
        e = r["expected_errors"]
        lines.append(f"| {r['variant']} | {r['row']} | " + " | ".join(_class_cell(e, c) for c in range(len(classes)))
                     + " |")
    return "\n".join(lines)


def _class_cell(errors: dict, c: int) -> str:
    return (f"{_signed(errors['bias_per_class'][c])} ({errors['mae_per_class'][c]:.3f}, "
            f"{100 * errors['under_segmented_images'][c]:.0f} % under)")


def interval_table(results: list[dict], estimator: str = "hard") -> str:
    """Per row and class: the truth's field mean [95 % interval] against the prediction's."""
    classes = results[0]["classes"]
    lines = ["| variant | row | class | truth: mean [95 % interval] | predicted: mean [95 % interval] | "
             "truth's mean inside (seeds) |", "|---|---|---|---|---|---|"]
    for r in results:
        info = r.get(f"{estimator}_interval")
        if not info:
            continue
        for c, x in enumerate(info):
            g, p = x["truth"], x["predicted"]
            lines.append(f"| {r['variant']} | {r['row']} | {_short(classes[c])} | {g['mean']:.3f} "
                         f"[{g['ci95_low']:.3f}, {g['ci95_high']:.3f}] | {p['mean']:.3f} "
                         f"[{p['ci95_low']:.3f}, {p['ci95_high']:.3f}] | {x['truth_mean_inside']}/{x['seeds']} |")
    return "\n".join(lines)


def per_image_table(result: dict, grey: dict[str, float]) -> str:
    """One line per scored image of one row: its mean grey level, the truth's fractions, the hard
    labels' (mean over the seeds) and their signed errors."""
    classes = [_short(c) for c in result["classes"]]
    truth, hard = np.asarray(result["truth"]), np.asarray(result["hard"]).mean(axis=0)
    train = ", ".join(f"{n} ({grey[n]:.0f})" for n in result["train_images"])
    lines = [f"Trained on {train}; mean grey level of each image in brackets.", "",
             "| image | mean grey | truth " + " / ".join(classes) + " | hard labels (mean over seeds) | "
             + " | ".join(f"{c} error" for c in classes) + " |", "|---|---|---|---|" + "---|" * len(classes)]
    for i, n in enumerate(result["scored_images"]):
        lines.append(f"| {n} | {grey[n]:.0f} | " + " / ".join(f"{v:.3f}" for v in truth[i]) + " | "
                     + " / ".join(f"{v:.3f}" for v in hard[i]) + " | "
                     + " | ".join(_signed(v) for v in hard[i] - truth[i]) + " |")
    return "\n".join(lines)


def _short(name: str) -> str:
    return (name.replace("gamma matrix", "γ").replace("secondary gamma' precipitate", "γ′ sec.")
            .replace("tertiary gamma' precipitate", "γ′ tert.").replace("matrix", "γ"))


def report(sets: list[dict], meta: dict) -> str:
    """The Markdown of a run: per set, the error tables, the intervals, one row's images, the
    variants, then the machine."""
    parts = []
    for s in sets:
        parts += [f"## {s['set']}: {s['description']} ({s['scribbles']})",
                  "Mean absolute error (MAE) of the phase fractions over the scored images and the classes (mean "
                  f"± std over the stroke seeds; ✓ ≤ {TARGET}), for the hard labels and the fractions expected "
                  "from the probabilities; per class, the hard labels' mean signed error (prediction − truth: "
                  "negative = under-segmented), its mean absolute error, and the share of images (× seeds) "
                  "under-segmented.",
                  error_table(s["rows"]), "### Per class, the fractions expected from the probabilities",
                  expected_class_table(s["rows"])]
        if any(r.get("hard_interval") for r in s["rows"]):
            for est in ESTIMATORS:
                parts += [f"### Field-to-field mean and 95 % interval ({est} fractions; predicted bounds: mean over "
                          "the seeds)", interval_table(s["rows"], est)]
        first = next((r for r in s["rows"] if r["variant"] == "default" and r["row"].startswith("cross1")), None)
        if first is not None:
            parts += [f"### Per image: default, {first['row']}", per_image_table(first, s["mean_grey"])]
        parts += ["### Variants", "\n".join(f"- **{n}**: {d}" for n, d in s["descriptions"].items())]
    parts.append(f"Machine: {meta['cpu']}, {meta['cpus']} CPUs ({meta['machine']}); classical features only (no DINOv2 "
                 f"weights on this machine); wall time {meta['wall_seconds']:.0f} s.")
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = ROOT.parent / "shared" / "evaldata"
    parser.add_argument("--data", type=Path, default=default_data if default_data.exists() else None)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    known = variants()
    parser.add_argument("--variants", nargs="+", default=["all"], help="names (--list), or 'all'")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="stroke seeds: seed, seed + 1, ...")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "measure_fractions.json")
    parser.add_argument("--tabulate", type=Path, default=None, metavar="JSON",
                        help="run nothing: recompute the summaries and tables of an earlier run's JSON into --out")
    args = parser.parse_args(argv)
    if args.tabulate:
        doc = json.loads(args.tabulate.read_text())
        for s in doc["sets"]:
            s["rows"] = [summarised(r) for r in s["rows"]]
        return write(args.out, doc["sets"], doc["meta"])
    if args.list:
        for v in known.values():
            print(f"{v.name}: {v.description}")
        return 0
    if args.data is None or not args.data.exists():
        parser.error("no evaluation data: pass --data PATH (../shared/evaldata)")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    names = list(known) if args.variants == ["all"] else args.variants
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(known)}")
    from napari_dinoseg.features.featurise import FeatureCache

    seeds = [args.seed + i for i in range(args.repeats)]
    meta = {**Q._versions(), "cpu": cpu_name(), "seeds": seeds, "target": TARGET, "variants": names}
    t_start = time.perf_counter()
    sets = []
    for set_name in args.sets:
        description, classes, pool, human = load_set(args.data, set_name)
        chosen = [known[n] for n in names if human is None or known[n].human]
        _log(f"[{set_name}] {len(pool)} images; variants {', '.join(v.name for v in chosen)}")
        truth = {n: truth_fractions(gt, len(classes)) for n, _, gt in pool}
        rows: list[Row] = []
        memo: dict = {}
        for key in dict.fromkeys(v.feature_key for v in chosen):  # one feature configuration at a time
            cache = FeatureCache()
            for v in chosen:
                if v.feature_key == key:
                    rows += run_variant(v, set_name, classes, pool, human, truth, seeds, cache, memo)
            del cache
        order = {n: i for i, n in enumerate(names)}
        rows.sort(key=lambda r: (order[r.variant], r.row))
        sets.append({"set": set_name, "description": description, "classes": classes,
                     "scribbles": "human scribbles, scored on the painted image itself" if human is not None
                     else f"simulated strokes, {len(seeds)} seeds",
                     "images": [n for n, _, _ in pool], "mean_grey": {n: float(np.mean(img)) for n, img, _ in pool},
                     "descriptions": {v.name: v.description for v in chosen},
                     "rows": [r.result(classes) for r in rows]})
    meta["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    return write(args.out, sets, meta)


def write(out: Path, sets: list[dict], meta: dict) -> int:
    """Print the tables; write them to ``out`` with a ``.md`` suffix and the JSON to ``out``; 0."""
    md = report(sets, meta)
    print(md)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "sets": sets}, indent=1))
    out.with_suffix(".md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
