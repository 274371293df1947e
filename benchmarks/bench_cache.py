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
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
import numpy as np
from scipy import ndimage
size, kind, labels_out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
from napari_dinoseg import FeatureConfig, Segmenter
from napari_dinoseg.features.featurise import FeatureCache

rng = np.random.default_rng(0)
phases = np.digitize(ndimage.gaussian_filter(rng.normal(size=(size, size)), 12), [-0.01, 0.01]) + 1
image = (phases * 60 + rng.normal(0, 25, phases.shape)).clip(0, 255).astype(np.uint8)
labels = np.zeros(phases.shape, np.uint8)
for row in range(24, size, 48):
    stroke = np.zeros_like(labels, bool)
    stroke[row:row + 3, 16:size - 16] = True
    inner = ndimage.binary_erosion(phases == 1 + (row // 48) % 3, iterations=4)
    labels[stroke & inner] = 1 + (row // 48) % 3
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
    with tempfile.TemporaryDirectory() as tmp:
        labels = Path(tmp) / "labels.npy"
        env = dict(os.environ, PYTHONPATH=str(src))
        out = subprocess.run([sys.executable, "-c", CHILD, str(size), kind, str(labels)],
                             check=True, capture_output=True, text=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1]), np.load(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--kind", default="hybrid", choices=["vit", "hybrid"])
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="src folder of an older checkout, measured in the same run")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cache.json")
    args = parser.parse_args()

    versions = {"this checkout": HERE.parent / "src"}
    if args.baseline_src is not None:
        versions = {"baseline": args.baseline_src, **versions}
    rows = []
    for size in args.sizes:
        labels = {}
        for name, src in versions.items():
            row, labels[name] = measure(src, size, args.kind)
            rows.append({"version": name, "src": str(src), **row})
            print(f"{size}² {name}: {row['first_click']:.1f} s, then {row['second_click']:.2f} s; cache "
                  f"{row['cache_bytes'] / 2**20:.0f} MiB, peak {row['peak_rss'] / 2**30:.2f} GiB", flush=True)
        if len(labels) == 2:
            a, b = labels.values()
            rows[-1]["labels_agree_with_baseline"] = float((a == b).mean())
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
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "load_average_after": load}
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    args.out.with_suffix(".md").write_text(table + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
