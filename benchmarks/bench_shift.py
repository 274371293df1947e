"""The shift report on real micrographs: does a classifier flag the images it was not trained for?

Usage::

    .venv/bin/python benchmarks/bench_shift.py [--data ../shared/evaldata] [--out benchmarks/results/shift.json]
        [--classifiers super ebc membranes nuclei superalloy_human particles_human] [--overhead 3]

For each classifier (classical features, ``FeatureConfig()`` and ``TrainConfig()`` as shipped),
trained on ONE image of an evaluation set (``../shared/evaldata``) -- the ``cross1`` image of
``quality.py`` with its simulated brush strokes (1 % of the pixels, seed 0), or the real human
scribbles of the two ``tldr_group`` images -- every image of every set is predicted and checked
(:meth:`napari_dinoseg.Segmenter.predict_proba` then :meth:`~napari_dinoseg.Segmenter.check`, as
batch apply does), and so are contrast-inverted copies (``max - x`` in the image's dtype) of the
training image and of every image of its own set, and a brightness / contrast copy of the
training image (``x * 0.6 + 60``, which the percentile normalisation cancels: it should pass).

An image counts as flagged when ``check`` returns a shift warning (intensities, features,
inversion or confidence; a collapsed prediction too). Targets (issue 23): every image of another
set or modality and every inverted copy flagged; at most 1 in 10 images of the own set.

Also measured: the check's cost on batch apply (``predict_proba`` + ``check`` with the training
statistics of this version, against the same with the feature distribution removed: intensity
quantiles only, as before), and the fit's extra cost for the statistics.

Outputs: the tables on stdout and in ``--out`` with a ``.md`` suffix, and the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from machine import cpu_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import quality as Q  # noqa: E402

SETS = ("super", "ebc", "membranes", "nuclei", "superalloy_human", "particles_human")
LABELS = {"super": "NASA super (SEM)", "ebc": "NASA EBC (SEM)", "membranes": "ISBI membranes (ssTEM)",
          "nuclei": "DSB nuclei (fluorescence)", "superalloy_human": "tldr superalloy (SEM, etched)",
          "particles_human": "tldr particles"}
#: What each warning says first, and the signal it stands for.
SIGNALS = (("unlike the training images: its", "intensity"), ("unlike the training images:", "features"),
           ("its contrast looks inverted", "inversion"), ("the classifier is unsure", "confidence"),
           ("collapsed prediction", "collapse"))


def invert(image: np.ndarray) -> np.ndarray:
    """The contrast-inverted copy: ``max - x`` for integer dtypes (their largest value), else ``max(x) - x``."""
    top = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else float(np.max(image))
    return (top - image.astype(np.float64)).astype(image.dtype)


def signals(warnings: list[str]) -> list[str]:
    """The signals (``SIGNALS``) that raised these warnings."""
    out = []
    for message in warnings:
        for prefix, name in SIGNALS:
            if message.startswith(prefix):
                out.append(name)
                break
    return out


def load_sets(data: Path) -> dict:
    """``{set: (pool of (name, image, ground truth), human scribbles or None, class count)}``."""
    out = {}
    for name in SETS:
        _, classes, pool, _, _, human = Q._source(data, name)
        out[name] = (pool, human, len(classes))
    return out


def train(name: str, sets: dict):
    """The classifier of one set: ``(training image name, Segmenter, image)``."""
    from napari_dinoseg import Segmenter

    n, img, labels = training_image(name, sets)
    return n, Segmenter().fit(img, labels), img


def training_image(name: str, sets: dict) -> tuple[str, np.ndarray, np.ndarray]:
    """``(name, image, brush labels)`` a set's classifier is trained on: the human scribbles where
    the set has them, else strokes simulated from the ground truth (1 % of the pixels, seed 0)."""
    pool, human, k = sets[name]
    if human is not None:
        return pool[0][0], pool[0][1], human
    n, img, gt = (Q.choose_training(pool, 1, k) if len(pool) > 1 else pool)[0]
    return n, img, Q.simulate_scribbles(gt, 0.01 * img.size, seed=0)


def check(seg, image: np.ndarray) -> tuple[list[str], float, np.ndarray]:
    """``(signals, seconds, probabilities)`` of one image, predicted and checked as batch apply does."""
    t = time.perf_counter()
    proba = seg.predict_proba(image)
    warnings = seg.check(image, proba)
    return signals(warnings), time.perf_counter() - t, proba


def measures(seg, image: np.ndarray, proba: np.ndarray) -> dict:
    """What each signal measured on one image (its sample kept by ``predict_proba``): the intensity
    quantiles' largest shift (fraction of the training range), the feature mix's total variation
    distance to the training images' and to the inverted ones', the mean top probability against
    the training pixels'."""
    stats = seg.statistics
    sample, confidence = seg._kept_sample(proba)
    distance, inverted = stats.features.distances(sample)
    return {"intensity_shift": round(float(stats.shift(seg.normalise(image)).max()), 3),
            "feature_distance": round(distance, 3),
            "inverted_distance": None if inverted is None else round(inverted, 3),
            "confidence_ratio": round(confidence / stats.features.confidence, 3)}


def run_classifier(name: str, sets: dict) -> dict:
    """Every target of one classifier: ``{column: [{image, signals}]}``."""
    train_name, seg, train_img = train(name, sets)
    columns: dict[str, list] = {}

    def add(column: str, image_name: str, image: np.ndarray) -> None:
        found, seconds, proba = check(seg, image)
        columns.setdefault(column, []).append({"image": image_name, "signals": found, "seconds": round(seconds, 3),
                                               **measures(seg, image, proba)})

    add("training image", train_name, train_img)
    add("training image inverted", train_name, invert(train_img))
    add("training image x0.6+60", train_name, Q.brightness_contrast(train_img))
    for target in SETS:
        pool = sets[target][0]
        for n, img, _ in pool:
            if target == name and n == train_name:
                continue
            add("own set" if target == name else target, n, img)
            if target == name:
                add("own set inverted", n, invert(img))
        _log(f"  {name} -> {target}: done")
    stats = seg.statistics.features
    return {"training_image": train_name, "columns": columns,
            "training_confidence": None if stats is None else stats.confidence}


def overhead(sets: dict, repeats: int) -> dict:
    """Seconds of predict_proba + check per image with the new statistics and with the intensity
    quantiles only (the feature distribution removed), best of ``repeats``, on the super classifier
    (512^2 images) and the EBC one (1024^2); and the fit's time for the feature distribution."""
    import dataclasses

    out = {}
    for name, n_images in (("super", 6), ("ebc", 3)):
        _, seg, img = train(name, sets)
        images = [im for _, im, _ in sets[name][0][:n_images]]
        new, old = [], []
        full = seg.statistics
        for _ in range(repeats):
            seg.statistics = full
            new.append(sum(check(seg, im)[1] for im in images) / len(images))
            seg.statistics = dataclasses.replace(full, features=None)
            old.append(sum(check(seg, im)[1] for im in images) / len(images))
        seg.statistics = full
        norm = [seg.normalise(img)]
        from napari_dinoseg.classify import grid_step
        from napari_dinoseg.features.featurise import featurise

        data = featurise(norm[0], seg.features, normalised=True).data
        step = grid_step([data.shape[:2]])
        grid = data[::step, ::step].reshape(-1, data.shape[-1])
        fit_extra = []
        for _ in range(repeats):
            t = time.perf_counter()
            seg._feature_distribution(grid, norm, None)
            fit_extra.append(time.perf_counter() - t)
        t = time.perf_counter()
        from napari_dinoseg import Segmenter

        Segmenter().fit(img, training_image(name, sets)[2])
        fit_total = time.perf_counter() - t
        out[name] = {"image_shape": list(img.shape), "images": len(images),
                     "predict_check_s": round(min(new), 3), "predict_check_quantiles_only_s": round(min(old), 3),
                     "overhead_s": round(min(new) - min(old), 3),
                     "overhead_percent": round(100 * (min(new) - min(old)) / min(old), 1),
                     "fit_statistics_s": round(min(fit_extra), 3), "fit_total_s": round(fit_total, 3)}
        _log(f"  overhead {name}: {out[name]}")
    return out


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _count(entries: list[dict]) -> tuple[int, int]:
    return sum(bool(e["signals"]) for e in entries), len(entries)


def verdict(name: str, columns: dict) -> tuple[bool, list[str]]:
    """Whether one classifier meets the targets, and the misses in words."""
    misses = []
    for column, entries in columns.items():
        flagged, total = _count(entries)
        if column == "own set":
            if flagged * 10 > total:
                misses.append(f"own set: {flagged}/{total} flagged (more than 1 in 10)")
        elif column in ("training image", "training image x0.6+60"):
            continue
        elif flagged < total:
            names = [e["image"] for e in entries if not e["signals"]]
            misses.append(f"{column}: {total - flagged} not flagged ({', '.join(names[:3])})")
    return not misses, misses


def table(results: dict) -> str:
    """The markdown table: flagged / images per classifier and target."""
    columns = ["own set", "own set inverted", "training image inverted", "training image x0.6+60",
               *[s for s in SETS]]
    head = ("| classifier trained on | own set (≤ 1 in 10) | own set inverted | training image inverted "
            "| training image ×0.6+60 (info) | " + " | ".join(LABELS[s] for s in SETS) + " | targets met |")
    lines = [head, "|" + "---|" * (len(columns) + 2)]
    for name, res in results.items():
        cells = []
        for column in columns:
            if column == name:
                cells.append("(own)")
                continue
            entries = res["columns"].get(column)
            if not entries:
                cells.append("–")
                continue
            flagged, total = _count(entries)
            cells.append(f"{flagged}/{total}")
        ok, misses = verdict(name, res["columns"])
        lines.append(f"| {LABELS[name]}: `{res['training_image']}` | " + " | ".join(cells)
                     + f" | {'yes' if ok else 'no: ' + '; '.join(misses)} |")
    return "\n".join(lines)


def signal_table(results: dict) -> str:
    """Which signals flagged the images: counts per classifier (an image may raise several)."""
    names = [n for _, n in SIGNALS]
    lines = ["| classifier | " + " | ".join(names) + " | images checked |", "|" + "---|" * (len(names) + 2)]
    for name, res in results.items():
        entries = [e for col in res["columns"].values() for e in col]
        counts = [sum(n in e["signals"] for e in entries) for n in names]
        lines.append(f"| {LABELS[name]} | " + " | ".join(map(str, counts)) + f" | {len(entries)} |")
    return "\n".join(lines)


def margin_table(results: dict) -> str:
    """How far each signal's threshold is from the images it must pass and those it must flag."""
    from napari_dinoseg.distribution_shift import CONFIDENCE_RATIO, FEATURE_THRESHOLD

    lines = [f"| classifier | feature distance: own set, max (median) | other sets, min | inverted copies: "
             f"inverted distance < distance | confidence ratio: own set, min (flag < {CONFIDENCE_RATIO}) |",
             "|---|---|---|---|---|"]
    for name, res in results.items():
        cols = res["columns"]
        own = [e["feature_distance"] for e in cols.get("own set", [])]
        others = [e["feature_distance"] for c in SETS if c != name for e in cols.get(c, [])]
        inverted = [e for c in ("own set inverted", "training image inverted") for e in cols.get(c, [])]
        closer = sum(e["inverted_distance"] is not None and e["inverted_distance"] < e["feature_distance"]
                     for e in inverted)
        conf = [e["confidence_ratio"] for e in cols.get("own set", [])]
        lines.append(f"| {LABELS[name]} | " + (f"{max(own):.2f} ({np.median(own):.2f})" if own else "–")
                     + f" | {min(others):.2f} | {closer}/{len(inverted)} | " + (f"{min(conf):.2f}" if conf else "–")
                     + " |")
    return "\n".join(lines) + f"\n\nFeature threshold: {FEATURE_THRESHOLD} (total variation distance)."


def overhead_table(over: dict) -> str:
    lines = ["| classifier | image | predict + check, this version (s) | predict + check, intensity quantiles only (s) "
             "| overhead | fit: feature statistics (s) | fit in all (s) |", "|---|---|---|---|---|---|---|"]
    for name, o in over.items():
        lines.append(f"| {LABELS[name]} | {o['image_shape'][0]}×{o['image_shape'][1]} | {o['predict_check_s']} "
                     f"| {o['predict_check_quantiles_only_s']} | {o['overhead_s']:+.3f} s ({o['overhead_percent']:+.1f} %) "
                     f"| {o['fit_statistics_s']} | {o['fit_total_s']} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = ROOT.parent / "shared" / "evaldata"
    parser.add_argument("--data", type=Path, default=default if default.exists() else None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "shift.json")
    parser.add_argument("--classifiers", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--overhead", type=int, default=3, help="repeats of the overhead timing (0: skip)")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md tables from --out's JSON")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(args.out.read_text())
        text = report(saved["meta"], saved["thresholds"], saved["results"], saved["overhead"])
        print(text)
        args.out.with_suffix(".md").write_text(text + "\n")
        return 0
    if args.data is None or not args.data.exists():
        parser.error("no evaluation data: pass --data (see ../shared/evaldata/README.md)")
    from napari_dinoseg import distribution_shift as shift

    sets = load_sets(args.data)
    results = {}
    for name in args.classifiers:
        _log(f"classifier {name}")
        results[name] = run_classifier(name, sets)
    over = overhead(sets, args.overhead) if args.overhead else {}
    meta = {**Q._versions(), "cpu": cpu_name()}
    thresholds = {k: getattr(shift, k) for k in ("SHIFT_THRESHOLD", "FEATURE_THRESHOLD", "INVERSION_MARGIN",
                                                 "CONFIDENCE_RATIO", "FEATURE_COMPONENTS", "FEATURE_CLUSTERS",
                                                 "FEATURE_SAMPLE", "COLLAPSE_FRACTION")}
    text = report(meta, thresholds, results, over)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "thresholds": thresholds, "results": results, "overhead": over},
                                   indent=1))
    args.out.with_suffix(".md").write_text(text + "\n")
    return 0


def report(meta: dict, thresholds: dict, results: dict, over: dict) -> str:
    """All the tables, in markdown."""
    return "\n\n".join([
        f"Machine: {meta.get('cpu') or meta['processor']}, {meta['cpus']} CPUs ({meta['machine']}); no GPU. "
        f"Thresholds: {thresholds}.",
        "Flagged / images (an image is flagged when `Segmenter.check` warns):", table(results),
        "Signals that fired:", signal_table(results),
        "Margins (what the signals measured):", margin_table(results),
        *(["Cost on batch apply (mean per image, best of runs):", overhead_table(over)] if over else [])])


if __name__ == "__main__":
    raise SystemExit(main())
