"""The train widget's feature cache with ViT features: what two clicks cost and what the cache holds.

Usage::

    .venv/bin/python benchmarks/bench_cache.py [--sizes 512 1024] [--kind hybrid]
        [--baseline-src /tmp/baseline/src] [--out benchmarks/results/cache.json]

What the widget does, on a synthetic three-phase image with strokes on about 1 % of the pixels,
DINOv2-S with random weights at the CPU preset (stride 14, shifts 4 and 7: 17 views), in a fresh
process per checkout and size:

- **first click**: ``Segmenter.fit`` then ``predict_proba`` with an empty ``FeatureCache``
  (the features are computed);
- **second click**: a new ``Segmenter`` fitted on half of the strokes, then ``predict_proba``,
  through the same cache (the features are reused);
- the cache's bytes after both, and the process's peak resident memory.

``--baseline-src`` runs an older checkout (e.g. one whose cache held pixel-level ViT maps) in the
same run, and the second clicks' labels of both are compared pixel by pixel. Random weights:
the timings and memory are those of DINOv2-S; the labels say nothing about its quality.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np

from checkouts import SYNTHETIC, compare, run_child, write

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
import numpy as np
size, kind = int(sys.argv[1]), sys.argv[2]
labels_out = sys.argv[3]
from napari_dinoseg import FeatureConfig, Segmenter
from napari_dinoseg.features.featurise import FeatureCache
""" + SYNTHETIC + r"""
half = np.where(np.arange(size)[None, :] < size // 2, labels, 0)
config = FeatureConfig(kind=kind, weights="random", device="cpu")
cache = FeatureCache()
t = time.perf_counter()
Segmenter(config).fit(image, labels, cache=cache).predict_proba(image, cache=cache)
first = time.perf_counter() - t
t = time.perf_counter()
seg = Segmenter(config).fit(image, half, cache=cache)
proba = seg.predict_proba(image, cache=cache)
second = time.perf_counter() - t
np.save(labels_out, seg.to_labels(proba))
print(json.dumps({"size": size, "kind": kind, "first_click": first, "second_click": second,
                  "cache_bytes": cache.nbytes, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "painted_fraction": float((labels > 0).mean()), "config": seg.features.to_dict()}))
"""


def measure(src: Path, size: int, kind: str) -> tuple[dict, np.ndarray]:
    """One checkout's figures at one size, in a fresh process; and its second click's labels."""
    return run_child(CHILD, src, size, kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--kind", default="hybrid", choices=["vit", "hybrid"])
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="src folder of an older checkout, measured in the same run")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cache.json")
    args = parser.parse_args()

    def row(size: int, name: str, src: Path, raw: dict) -> dict:
        print(f"{size}² {name}: {raw['first_click']:.1f} s, then {raw['second_click']:.2f} s; cache "
              f"{raw['cache_bytes'] / 2**20:.0f} MiB, peak {raw['peak_rss'] / 2**30:.2f} GiB", flush=True)
        return {"version": name, "src": str(src), **raw}

    rows = compare(args.sizes, args.baseline_src, lambda src, size: measure(src, size, args.kind), row)
    load = os.getloadavg()
    lines = [f"The train widget's two clicks with a feature cache, {args.kind} DINOv2-S (random weights), CPU "
             f"preset (17 views), ~{100 * rows[0]['painted_fraction']:.1f} % painted; {os.cpu_count()} CPU cores "
             f"({platform.machine()}); load average {load[0]:.1f} after the run.", "",
             "| image | code | first click s | second click s | cache MiB | peak RSS GiB | labels equal to baseline |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = f"{100 * r['labels_agree_with_baseline']:.2f} %" if "labels_agree_with_baseline" in r else "–"
        lines.append(f"| {r['size']}² | {r['version']} | {r['first_click']:.1f} | {r['second_click']:.2f} | "
                     f"{r['cache_bytes'] / 2**20:.0f} | {r['peak_rss'] / 2**30:.2f} | {agree} |")
    write(args.out, "\n".join(lines), rows, load_average_after=load)


if __name__ == "__main__":
    main()
