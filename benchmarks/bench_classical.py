"""Classical featurisation and Train / Predict latency, against scikit-image in the same run.

Usage::

    .venv/bin/python benchmarks/bench_classical.py [--sizes 512 1024 2048] [--repeats 3]
        [--out benchmarks/results/classical.json]

Each featurisation is measured in a fresh subprocess: one warm-up call, then the median
and the best of ``--repeats`` timed calls (the machine is shared and noisy: the best
is the steadier figure to compare); peak memory is the growth of the process's peak resident
set over its size after imports and image creation (so it covers the output and every
temporary). scikit-image's ``multiscale_basic_features`` runs with sigma 1..16 (its five
octaves, 20 channels: intensity, edges, texture); ours computes the full 60-channel
Weka-style bank. Train / Predict is measured with cached features at 1024^2, painted
strokes covering ~1 % of the pixels over three classes, as the widget does it.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
import numpy as np
method, size, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
image = (rng.random((size, size)) * 255).astype(np.uint8)
if method == "dinoseg":
    import torch
    from napari_dinoseg import FeatureConfig, featurise
    cfg = FeatureConfig()
    run = lambda: featurise(image, cfg).data
else:
    from skimage.feature import multiscale_basic_features
    run = lambda: multiscale_basic_features(image, sigma_min=1, sigma_max=16)
def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = rss_mib()
out = run()
shape = list(out.shape)
del out
times = []
for _ in range(repeats):
    t = time.perf_counter(); out = run(); times.append(time.perf_counter() - t); del out
print(json.dumps({"method": method, "size": size, "channels": shape[-1], "seconds": float(np.median(times)),
                  "best_seconds": float(np.min(times)), "seconds_all": times, "peak_mib": rss_mib() - base}))
"""


def featurisation(method: str, size: int, repeats: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(size), str(repeats)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_predict(size: int = 1024, repeats: int = 5) -> dict:
    """Median Train, Predict and Train + Predict seconds with cached features."""
    import numpy as np
    from scipy import ndimage

    from napari_dinoseg import featurise, predict, train

    rng = np.random.default_rng(0)
    phases = np.digitize(ndimage.gaussian_filter(rng.normal(size=(size, size)), 12), [-0.01, 0.01]) + 1
    image = (phases * 60 + rng.normal(0, 25, phases.shape)).clip(0, 255).astype(np.uint8)
    labels = np.zeros(phases.shape, np.uint8)
    for row in range(24, size, 48):  # horizontal 3-px strokes every 48 rows, kept inside each phase
        stroke = np.zeros_like(labels, bool)
        stroke[row:row + 3, 16:size - 16] = True
        inner = ndimage.binary_erosion(phases == 1 + (row // 48) % 3, iterations=4)
        labels[stroke & inner] = 1 + (row // 48) % 3
    feats = featurise(image)
    train(feats, labels)  # warm-up (imports, first allocations)
    t_train, t_pred = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        clf = train(feats, labels)
        t_train.append(time.perf_counter() - t)
        t = time.perf_counter()
        clf.to_labels(predict(clf, feats))
        t_pred.append(time.perf_counter() - t)
    return {
        "size": size,
        "features": feats.n_features,
        "painted_pixels": int((labels > 0).sum()),
        "painted_fraction": float((labels > 0).mean()),
        "classes": 3,
        "train_seconds": float(np.median(t_train)),
        "predict_seconds": float(np.median(t_pred)),
        "train_predict_seconds": float(np.median(np.add(t_train, t_pred))),
    }


def machine() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "classical.json")
    args = parser.parse_args()

    rows = [featurisation(m, s, args.repeats) for s in args.sizes for m in ("dinoseg", "skimage")]
    latency = train_predict()
    print("| image | method | channels | best s | median s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        name = "napari-dinoseg (torch)" if r["method"] == "dinoseg" else "scikit-image multiscale_basic_features"
        print(f"| {r['size']}² | {name} | {r['channels']} | {r['best_seconds']:.3f} | {r['seconds']:.3f} | "
              f"{r['peak_mib']:.0f} |")
    print()
    print("| Train / Predict, cached features | image | features | painted px | train s | predict s | total s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| TrainConfig() defaults, 3 classes | {latency['size']}² | {latency['features']} | "
          f"{latency['painted_pixels']} ({latency['painted_fraction']:.1%}) | {latency['train_seconds']:.3f} | "
          f"{latency['predict_seconds']:.3f} | {latency['train_predict_seconds']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "featurisation": rows, "train_predict": latency}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
