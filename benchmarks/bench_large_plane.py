"""Train / Predict clicks on large planes through the feature cache (issue 23 item 6), no viewer.

Usage::

    .venv/bin/python benchmarks/bench_large_plane.py [--sizes 4096 8192] [--clicks 3]
        [--compare 4096] [--baseline-src /tmp/baseline/src] [--baseline-sizes 4096]
        [--out benchmarks/results/large_plane.json]

For each size, in a fresh process (so that its peak resident memory is its own): the two-texture
image of ``live_update.py`` (classical features, 65 channels) with four strokes, and a
``FeatureCache()`` with its default budget (a quarter of the machine's memory). Click 1 is
``Segmenter.fit`` + ``predict_proba`` through the cache, as the train widget's job runs them
(it featurises); each later click adds a stroke and clicks again. Recorded: each click's seconds
(fit, predict), how the cache keeps the plane (``float32`` / ``float16`` / ``none``, and the
line the dock shows), the cache's bytes, and the peak resident memory of the clicks (a thread
samples it every 10 ms). For the sizes in ``--compare``, the last click's labels are compared
with the uncached path's (a fresh ``Segmenter`` fitted and predicting without a cache, after
the peak is taken): the share of pixels with equal labels and the largest probability difference.
``--baseline-src``: the same clicks with an older checkout's ``src`` (its own default cache) at
``--baseline-sizes``, in the same run. Writes a markdown table next to the JSON. The real-viewer click and live-update timings at
4096² come from ``live_update.py --sizes 4096``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, sys, threading, time
import numpy as np
import psutil
sys.path.insert(0, sys.argv[4])
from live_update import random_stroke, two_textures
from napari_dinoseg import Segmenter
from napari_dinoseg.features.featurise import FeatureCache

size, clicks, compare = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
image, boundary = two_textures(size)
rng = np.random.default_rng(0)
labels = np.zeros((size, size), np.uint8)
whole = (slice(0, size), slice(0, size))

def stroke(label, length):
    (r, c0), (_, c1) = random_stroke(rng, whole, boundary, label, length)
    labels[r - 2:r + 3, c0:c1] = label

for label in (1, 2, 1, 2):
    stroke(label, size // 4)

process = psutil.Process()
peak, running = [process.memory_info().rss], [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()

cache, seg, rows = FeatureCache(), Segmenter(), []
for k in range(clicks):
    if k:
        stroke(1 + k % 2, size // 16)
    t0 = time.perf_counter()
    seg.fit(image, labels, cache=cache)
    t1 = time.perf_counter()
    proba = seg.predict_proba(image, cache=cache)
    t2 = time.perf_counter()
    rows.append({"click": k + 1, "fit": t1 - t0, "predict": t2 - t1, "total": t2 - t0,
                 "cache_gib": cache.nbytes / 2**30})
running[0] = False
if hasattr(seg, "feature_storage"):
    from napari_dinoseg.features.featurise import storage_note
    storage = seg.feature_storage((size, size), 1, cache)
    float32 = seg.feature_bytes((size, size), 1)
    note = storage_note(storage, float32, cache.max_bytes)
else:  # an older checkout
    storage, float32, note = "float32 (before)", float("nan"), ""
out = {"size": size, "clicks": rows, "storage": storage, "note": note, "budget_gib": cache.max_bytes / 2**30,
       "float32_gib": float32 / 2**30, "peak_rss_gib": peak[0] / 2**30}
if compare:
    cached = seg.to_labels(proba)
    del cache
    plain = Segmenter().fit(image, labels)
    reference = plain.predict_proba(image)
    out["labels_equal"] = float((plain.to_labels(reference) == cached).mean())
    out["max_proba_difference"] = float(np.abs(reference - proba).max())
print("RESULT" + json.dumps(out))
"""


def run(size: int, clicks: int, compare: bool, src: Path = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src)) if src is not None else None
    done = subprocess.run([sys.executable, "-c", CHILD, str(size), str(clicks), "1" if compare else "0", str(HERE)],
                          capture_output=True, text=True, check=False, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    if done.returncode or not lines:
        raise RuntimeError(f"{size}^2 failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT"):])


def gib(value: float) -> str:
    return "–" if value != value else f"{value:.1f}"  # NaN: not known (an older checkout)


def to_markdown(results: list[dict], machine: str) -> str:
    lines = [f"Train / Predict clicks through the feature cache (default budget), classical features "
             f"(65 channels), no viewer; {machine}. Seconds.", "",
             "| image | kept as | float32 windows GiB | cache budget GiB | click 1 (featurises) | later clicks | "
             "later / first | cache GiB | peak RSS GiB | labels equal to uncached |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        first, later = r["clicks"][0]["total"], [c["total"] for c in r["clicks"][1:]]
        ratio = ", ".join(f"{t / first:.2f}" for t in later)
        equal = f"{100 * r['labels_equal']:.4f} % (max Δp {r['max_proba_difference']:.3f})" if "labels_equal" in r \
            else "–"
        lines.append(f"| {r['size']}²{' (before)' if r.get('before') else ''} | {r['storage']} | {gib(r['float32_gib'])} | {r['budget_gib']:.1f} | "
                     f"{first:.1f} (fit {r['clicks'][0]['fit']:.1f}) | {', '.join(f'{t:.1f}' for t in later)} | "
                     f"{ratio} | {r['clicks'][-1]['cache_gib']:.2f} | {r['peak_rss_gib']:.1f} | {equal} |")
    lines += [""] + [f"- {r['size']}²: the dock's note: \"{r['note']}\"" for r in results if r["note"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--compare", type=int, nargs="*", default=[4096])
    parser.add_argument("--baseline-src", type=Path, default=None, help="an older checkout's src folder")
    parser.add_argument("--baseline-sizes", type=int, nargs="*", default=[4096])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "large_plane.json")
    args = parser.parse_args()

    import psutil
    import torch

    from machine import cpu_name

    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    results = []
    for n in args.sizes:
        if args.baseline_src is not None and n in args.baseline_sizes:
            results.append({**run(n, args.clicks, False, args.baseline_src), "before": True})
        results.append(run(n, args.clicks, n in args.compare))
    machine = (f"{os.cpu_count()} CPU cores ({cpu_name()}, {platform.machine()}), "
               f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}; load average "
               f"{load_before} before, {', '.join(f'{x:.1f}' for x in os.getloadavg())} after")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    table = to_markdown(results, machine)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
