"""Unsupervised CAS with classical features on real micrographs: classes, mIoU, boxes, before / after.

Usage::

    .venv/bin/python benchmarks/cas_quality.py [--data ../shared/evaldata] [--sets super isb0 ...]
        [--limit N] [--out benchmarks/results/cas_quality.json]

For every image of the chosen evaluation sets (``../shared/evaldata``, see its README) the
image is featurised once with the classical filter bank (``FeatureConfig(kind="classical")``,
the defaults) and segmented, without labels, by two rules on those same features:

- ``before``: the previous classical rule, rebuilt here from the module's building blocks:
  k-means (k = 80, the ``CASConfig`` default) on all standardised, L2-normalised channels; the
  largest cluster is background; clusters merged by the semantic distance (the modal
  foreground-background centroid distance); every merged class but the largest is foreground;
- ``after``: ``segment_unsupervised`` as shipped (``CASConfig(features=FeatureConfig(kind="classical"))``):
  the smoothed-intensity classes, their number chosen by per-class silhouette, the class with
  the largest connected region as background.

Scores per image: the number of classes produced against the number of ground-truth classes in
the image; the mIoU after the best one-to-one (Hungarian) matching of predicted to true classes
(a true class left unmatched scores 0; ground-truth 255 ignored); the number of object boxes
(superbox included) against the number of true objects, i.e. 8-connected components of the
ground truth's object classes at least ``min_area`` large (the pipeline's default, 0.2 % of the
image, at least 64 px) where objects are meaningful (not for the membrane and coating sets);
and the time of each rule (featurisation excluded, reported once). Without ViT weights, the
DINOv2 path (CLS attention) is not measured: it is unchanged by the classical rule.
Outputs: a markdown table on stdout and beside ``--out`` (``.md``), per-image rows in the JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: set name -> (folder, image-name prefix, manifest split or None, object classes or None, description);
#: the objects of the membrane set are the cells (the interiors between membranes).
SETS = {
    "super": ("nasa_micronet", "super_", None, (1, 2),
              "Ni-superalloy SEM (NASA Super): matrix, secondary, tertiary γ′"),
    "isb0": ("tldr_group", "isb0_", None, (1, 2), "superalloy SEM (tldr group): matrix, secondary, tertiary γ′"),
    "particles": ("tldr_group", "isb1_", None, (1,), "particles (tldr group): background, dark discs"),
    "nuclei": ("stardist_dsb2018_nuclei", "dsb_", None, (1,), "fluorescence nuclei (DSB 2018): background, nuclei"),
    "membranes": ("isbi2012_em_membranes", "isbi_", None, (0,), "ssTEM (ISBI 2012): cell interior, membrane"),
    "ebc": ("nasa_micronet", "ebc_", "ebc_EBC1_test", None, "coating SEM (NASA EBC): background, oxide layer, crack"),
}
#: Images per set unless --limit says otherwise (the first ones of the manifest).
DEFAULT_LIMIT = {"membranes": 8}


def read_set(data: Path, name: str, limit: int | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(image name, image, ground truth)`` of the set's images, in manifest order."""
    import imageio.v3 as iio
    import tifffile

    folder, prefix, split, _, _ = SETS[name]
    with open(data / folder / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh)
                if r["name"].startswith(prefix) and (split is None or r["split"] == split)]
    rows = rows[:limit] if limit else rows
    return [(r["name"], tifffile.imread(data / folder / "images" / f"{r['name']}.tif"),
             iio.imread(data / folder / "masks" / f"{r['name']}.png")) for r in rows]


def matched_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, list[float]]:
    """mIoU over the true classes after the best one-to-one matching of predicted to true
    classes (Hungarian, maximising the summed IoU); truth 255 ignored, unmatched classes 0."""
    from scipy.optimize import linear_sum_assignment

    keep = truth != 255
    p, t = np.unique(pred[keep], return_inverse=True)[1], np.unique(truth[keep], return_inverse=True)[1]
    n_p, n_t = int(p.max()) + 1, int(t.max()) + 1
    conf = np.bincount(t * n_p + p, minlength=n_t * n_p).reshape(n_t, n_p).astype(float)
    union = conf.sum(1)[:, None] + conf.sum(0)[None, :] - conf
    iou = np.where(union > 0, conf / np.maximum(union, 1), 0.0)
    rows, cols = linear_sum_assignment(-iou)
    per_class = np.zeros(n_t)
    per_class[rows] = iou[rows, cols]
    return float(per_class.mean()), per_class.round(4).tolist()


def true_objects(truth: np.ndarray, classes: tuple[int, ...], min_area: int) -> int:
    """8-connected components of the object classes at least ``min_area`` pixels large."""
    from skimage.measure import label, regionprops

    return int(sum(r.area >= min_area for r in regionprops(label(np.isin(truth, classes), connectivity=2))))


def before(stack, config):
    """The previous classical rule on ``stack``: ``(labels, number of boxes)``."""
    from napari_dinoseg.descriptors import standardise, unit_rows
    from napari_dinoseg.unsupervised import _kmeans, merge_centroids, object_boxes, semantic_distance

    feats = [unit_rows(f) for f in standardise([stack.data])]
    clusters, centroids = _kmeans(feats, config)
    sizes = np.bincount(clusters[0].ravel(), minlength=len(centroids))
    fg = np.flatnonzero((sizes > 0) & (np.arange(len(sizes)) != np.argmax(sizes)))
    merge = merge_centroids(centroids, semantic_distance(centroids, fg, config.granularity))
    labels = merge[clusters[0]].astype(np.int32)
    merged_sizes = np.bincount(labels.ravel())
    merged_sizes[0] = 0
    fg_merged = np.setdiff1d(np.flatnonzero(merged_sizes), [np.argmax(merged_sizes)])
    boxes, _ = object_boxes(labels, np.isin(labels, fg_merged), fg_merged, _min_area(labels))
    return labels, len(boxes)


def after(stack, config):
    """``segment_unsupervised`` as shipped: ``(labels, number of boxes)``."""
    from napari_dinoseg import segment_unsupervised

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no attention": expected here
        result = segment_unsupervised(stack, config)
    return result.labels, len(result.boxes[0])


def _min_area(labels: np.ndarray) -> int:
    return max(64, round(0.002 * labels.size))


def run_set(data: Path, name: str, limit: int | None) -> dict:
    from napari_dinoseg import CASConfig, FeatureConfig, featurise

    config = CASConfig(features=FeatureConfig(kind="classical"))
    objects = SETS[name][3]
    rows = []
    for image_name, image, truth in read_set(data, name, limit):
        t0 = time.perf_counter()
        stack = featurise(image, config.features)
        row = {"image": image_name, "shape": list(image.shape), "featurise_s": time.perf_counter() - t0,
               "true_classes": int(len(np.unique(truth[truth != 255]))),
               "true_objects": None if objects is None else true_objects(truth, objects, _min_area(truth))}
        for rule, fn in (("before", before), ("after", after)):
            t0 = time.perf_counter()
            labels, n_boxes = fn(stack, config)
            seconds = time.perf_counter() - t0
            miou, per_class = matched_iou(labels, truth)
            row[rule] = {"classes": int(len(np.unique(labels))), "miou": miou, "per_class_iou": per_class,
                         "boxes": n_boxes, "seconds": seconds}
        rows.append(row)
        print(f"  {name} {image_name}: before {row['before']['classes']} classes, mIoU {row['before']['miou']:.3f}, "
              f"{row['before']['boxes']} boxes; after {row['after']['classes']} classes, mIoU "
              f"{row['after']['miou']:.3f}, {row['after']['boxes']} boxes; true {row['true_classes']} classes, "
              f"{row['true_objects']} objects", flush=True)
    return {"set": name, "description": SETS[name][4], "images": rows}


def summary(result: dict) -> dict:
    """Means (and ranges of class counts) over a set's images."""
    rows = result["images"]

    def stats(rule: str) -> dict:
        classes = [r[rule]["classes"] for r in rows]
        return {"classes_mean": float(np.mean(classes)), "classes_min": min(classes), "classes_max": max(classes),
                "miou": float(np.mean([r[rule]["miou"] for r in rows])),
                "boxes": float(np.mean([r[rule]["boxes"] for r in rows])),
                "seconds": float(np.mean([r[rule]["seconds"] for r in rows]))}

    objects = [r["true_objects"] for r in rows if r["true_objects"] is not None]
    return {"set": result["set"], "n_images": len(rows), "true_classes": sorted({r["true_classes"] for r in rows}),
            "true_objects": float(np.mean(objects)) if objects else None,
            "featurise_s": float(np.mean([r["featurise_s"] for r in rows])),
            "before": stats("before"), "after": stats("after")}


def table(summaries: list[dict]) -> str:
    def classes(s: dict) -> str:
        lo, hi, mean = s["classes_min"], s["classes_max"], s["classes_mean"]
        return f"{lo}" if lo == hi else f"{mean:.1f} ({lo}–{hi})"

    lines = ["| set | images | true classes | classes before → after | mIoU before → after | "
             "boxes before → after | true objects | CAS s before → after | featurise s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        b, a = s["before"], s["after"]
        objects = "n/a" if s["true_objects"] is None else f"{s['true_objects']:.0f}"
        truth = "/".join(map(str, s["true_classes"]))
        lines.append(f"| {s['set']} | {s['n_images']} | {truth} | {classes(b)} → {classes(a)} | "
                     f"{b['miou']:.3f} → {a['miou']:.3f} | {b['boxes']:.0f} → {a['boxes']:.0f} | {objects} | "
                     f"{b['seconds']:.1f} → {a['seconds']:.1f} | {s['featurise_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "evaldata")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--limit", type=int, default=None, help="images per set (default: all; membranes 8)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cas_quality.json")
    args = parser.parse_args()
    if not args.data.is_dir():
        parser.error(f"no evaluation data at {args.data}: pass --data")
    results = []
    for name in args.sets:
        print(f"{name}: {SETS[name][4]}", flush=True)
        results.append(run_set(args.data, name, args.limit or DEFAULT_LIMIT.get(name)))
    summaries = [summary(r) for r in results]
    text = table(summaries)
    print("\n" + text)
    machine = {"machine": platform.platform(), "cpus": os.cpu_count(), "numpy": np.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "summary": summaries, "sets": results}, indent=1))
    args.out.with_suffix(".md").write_text(
        "# CAS with classical features: before / after\n\n" + text + "\n\nMachine: "
        f"{machine['machine']}, {machine['cpus']} CPUs (shared with other jobs: times are indicative).\n")
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
