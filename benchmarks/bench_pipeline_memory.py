"""Peak memory of the whole pipeline on large images: featurise + train + predict, hybrid features.

Usage::

    .venv/bin/python benchmarks/bench_pipeline_memory.py [--sizes 2048 4096]
        [--baseline-src /tmp/baseline/src] [--baseline-sizes 2048] [--views 1]
        [--out benchmarks/results/pipeline_memory.json]

What a user runs on a large micrograph: ``Segmenter.fit`` on the image with brush strokes
(about 1.2 % of the pixels, three classes), then ``Segmenter.segment`` of the same image, no
feature cache (the CLI and batch path). Hybrid features: 65 classical channels and DINOv2-S
(random weights: memory and time do not depend on the weights' values). Each variant runs in a
fresh process; a thread samples its resident memory every 10 ms, so the peaks of the fit and of
the prediction are reported separately.

Variants:

- **before**: an older checkout (``--baseline-src``), default configs;
- **pixel space**: this checkout with ``TrainConfig(vit_components=0)``, the classifier of
  before (the trees read every ViT channel): prediction builds each tile's ``(h, w, 384)`` map;
- **logit space**: this checkout's defaults: the classifier is linear in the ViT channels and
  prediction upsamples ``K + 8`` projected channels instead of 384.

``--views 1`` (the default here) runs one view per tile instead of the CPU preset's 17, to keep
4096^2 within minutes on 2 cores: the views are processed in batches whose buffers are small
next to the feature maps, so the peaks barely depend on their number (``--views 17``: the preset).
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
from scipy import ndimage
size, variant, views = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig

rng = np.random.default_rng(0)
phases = np.digitize(ndimage.zoom(rng.normal(size=(size // 16, size // 16)), 16, order=1), [-0.3, 0.3]) + 1
image = (phases * 60 + rng.normal(0, 25, phases.shape)).clip(0, 255).astype(np.uint8)
labels = np.zeros(phases.shape, np.uint8)
for row in range(24, size, 48):  # horizontal 3-px strokes every 48 rows, kept inside each phase
    stroke = np.zeros_like(labels, bool)
    stroke[row:row + 3, 16:size - 16] = True
    labels[stroke & (phases == 1 + (row // 48) % 3)] = 1 + (row // 48) % 3
del stroke

process = psutil.Process()
peaks, phase = {"fit": 0, "predict": 0}, ["fit"]
def sample():
    while phase[0] != "done":
        now = process.memory_info().rss
        peaks[phase[0]] = max(peaks[phase[0]], now)
        time.sleep(0.01)

shifts = {1: (), 17: (4, 7)}[views]
features = FeatureConfig(kind="hybrid", weights="random", shifts=shifts, flips=False, device="cpu")
training = TrainConfig(vit_components=0) if variant == "pixel space" else TrainConfig()
start_rss = process.memory_info().rss
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
seg = Segmenter(features, training).fit(image, labels)
fit_s = time.perf_counter() - t
phase[0] = "predict"
time.sleep(0.05)
t = time.perf_counter()
out = seg.segment(image)
predict_s = time.perf_counter() - t
time.sleep(0.05)
phase[0] = "done"
fit_peak, predict_peak = peaks["fit"], peaks["predict"]
accuracy = float(np.mean(out == phases))
logit = getattr(seg, "logit_space", lambda: None)() is not None
print(json.dumps({"start_mib": start_rss / 2**20, "fit_peak_mib": fit_peak / 2**20, "predict_peak_mib": predict_peak / 2**20,
                  "fit_s": fit_s, "predict_s": predict_s, "pixel_accuracy": accuracy, "logit_space": logit,
                  "painted_fraction": float(np.mean(labels > 0))}))
"""


def run(size: int, variant: str, views: int, src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(size), variant, str(views)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"],
                "returncode": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--baseline-src", type=Path, default=None)
    parser.add_argument("--baseline-sizes", type=int, nargs="*", default=[2048],
                        help="sizes the baseline runs at (it holds every tile's features while it trains)")
    parser.add_argument("--views", type=int, choices=(1, 17), default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pipeline_memory.json")
    args = parser.parse_args()
    here = HERE.parent / "src"
    rows = []
    for size in args.sizes:
        variants = [("pixel space", here), ("logit space", here)]
        if args.baseline_src is not None and size in args.baseline_sizes:
            variants.insert(0, ("before", args.baseline_src))
        for variant, src in variants:
            row = {"size": size, "variant": variant, **run(size, variant, args.views, src)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "views": args.views,
               "baseline_src": None if args.baseline_src is None else str(args.baseline_src)}
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    lines = [f"`benchmarks/bench_pipeline_memory.py` ({machine['cores']} cores, {args.views} view(s) per tile; "
             "hybrid DINOv2-S + 65 classical channels, random weights; Segmenter.fit then segment, no cache)", "",
             "| image | variant | fit peak GiB | predict peak GiB | fit s | predict s | pixel accuracy |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']}² | {r['variant']} | failed: {r['error']} | | | | |")
            continue
        lines.append(f"| {r['size']}² | {r['variant']} | {r['fit_peak_mib'] / 1024:.2f} | "
                     f"{r['predict_peak_mib'] / 1024:.2f} | {r['fit_s']:.0f} | {r['predict_s']:.0f} | "
                     f"{r['pixel_accuracy']:.3f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
