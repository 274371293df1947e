"""Speed and memory of measuring a label image: ``napari_dinoseg.measure`` against scikit-image.

Usage::

    .venv/bin/python benchmarks/bench_measure.py [--sizes 1024 4096] [--objects 10000] [--repeats 3]
        [--reference] [--out benchmarks/results/measure.json]

For each size, a two-phase label image of round precipitates of both phases (radius 3..14 px,
some overlapping, some touching the border) in a matrix, with about ``--objects`` objects, is
measured by :func:`napari_dinoseg.measure.measure` (fractions, and every object's area,
equivalent diameter, Feret diameters, perimeter, eccentricity, centroid, border contact), with an
intensity image and with probabilities (mean intensity, mean confidence, expected fractions), and
with ``split=True``. ``--reference`` also runs what it replaces, in the same run:
``skimage.measure.label`` per phase + ``regionprops_table`` with the same properties.

Times are the median of ``--repeats`` runs after one warm-up; peak memory is what
``tracemalloc`` sees numpy allocate (above the inputs). Outputs: the table on stdout and in
``--out`` with a ``.md`` suffix, and the JSON.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np

from machine import cpu_name

ROOT = Path(__file__).resolve().parent.parent
PROPERTIES = ("label", "area", "equivalent_diameter_area", "feret_diameter_max", "perimeter", "eccentricity",
              "centroid", "bbox")


def precipitates(size: int, objects: int, seed: int = 0) -> np.ndarray:
    """(size, size) uint8: matrix 1, disks of phase 2 and 3 drawn until about ``objects``
    connected objects of phases 2 and 3 are there."""
    from skimage.draw import disk
    from skimage.measure import label

    rng = np.random.default_rng(seed)
    labels = np.ones((size, size), np.uint8)
    drawn = 0
    while True:
        for _ in range(max(1, objects // 4)):
            r = rng.uniform(3, 14)
            rr, cc = disk(tuple(rng.uniform(0, size, 2)), r, shape=labels.shape)
            labels[rr, cc] = rng.integers(2, 4)
            drawn += 1
        found = sum(label(labels == v, connectivity=2).max() for v in (2, 3))
        if found >= objects or drawn > 4 * objects:
            return labels


def timed(call, repeats: int) -> tuple[float, int]:
    """Median seconds over ``repeats`` runs after a warm-up, and the peak bytes traced in one run."""
    call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    tracemalloc.start()
    call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return float(np.median(seconds)), int(peak)


def reference(labels: np.ndarray) -> int:
    from skimage.measure import label, regionprops_table

    return sum(len(regionprops_table(label(labels == v, connectivity=2), properties=PROPERTIES)["label"])
               for v in (1, 2, 3))


def main() -> None:
    from napari_dinoseg.measure import measure

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--objects", type=int, default=10000, help="objects in the largest size (scaled by area below)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="also time label + regionprops_table")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "measure.json"))
    args = parser.parse_args()

    rows = []
    for size in args.sizes:
        wanted = max(10, int(args.objects * (size / max(args.sizes)) ** 2))
        labels = precipitates(size, wanted)
        rng = np.random.default_rng(1)
        image = rng.random(labels.shape, dtype=np.float32)
        proba = rng.random((*labels.shape, 3), dtype=np.float32)
        proba /= proba.sum(axis=-1, keepdims=True)
        found = len(measure(labels).objects)
        row = {"size": size, "objects": found}
        cases = {"labels": lambda: measure(labels),
                 "labels + image + probabilities": lambda: measure(labels, image=image, proba=proba),
                 "labels, split": lambda: measure(labels, split=True)}
        if args.reference:
            cases["skimage label + regionprops_table"] = lambda: reference(labels)
        for name, call in cases.items():
            seconds, peak = timed(call, args.repeats if "skimage" not in name else 1)
            row[name] = {"seconds": seconds, "peak_bytes": peak}
            print(f"{size}² {found} objects  {name:36s} {seconds:7.2f} s  peak {peak / 2**20:7.0f} MiB", flush=True)
        rows.append(row)

    result = {"machine": cpu_name(), "repeats": args.repeats, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    names = [k for k in rows[0] if k not in ("size", "objects")]
    lines = [f"Machine: {cpu_name()}; median of {args.repeats} runs after a warm-up (the reference: one run); "
             "peak: numpy allocations seen by tracemalloc during one run, inputs not counted.", "",
             "| image | objects | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for row in rows:
        cells = []
        for name in names:
            ratio = row[name]["seconds"] / row["labels"]["seconds"]
            cells.append(f"{row[name]['seconds']:.2f} s ({ratio:.1f}×), {row[name]['peak_bytes'] / 2**20:.0f} MiB")
        lines.append(f"| {row['size']}² | {row['objects']} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
