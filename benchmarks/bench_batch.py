"""Batch apply throughput: images per second, locally and on a 2-worker dask LocalCluster.

Usage::

    .venv/bin/python benchmarks/bench_batch.py [--count 8] [--out benchmarks/results/batch_cpu.json]

Bundles: classical (default sigmas, 60 features) and hybrid (classical + DINOv2-S/14 with
random weights, CPU preset reduced to one view so the run stays short; speed only).
Images: ``--count`` synthetic uint8 images at 512^2 (a quarter of that, at least 2, at
2048^2) written as tif. Each
setting runs once into an empty output folder; the time includes reading, featurising,
predicting and writing, and on the cluster the workers' start-up of the model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    import numpy as np
    import tifffile
    from dask.distributed import Client, LocalCluster

    from napari_dinoseg import FeatureConfig, apply_bundle, featurise, save_bundle, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "batch_cpu.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        tmp = Path(tmp)
        train_img = (rng.random((256, 256)) * 255).astype(np.uint8)
        labels = np.zeros(train_img.shape, np.uint8)
        labels[10:14, 10:240], labels[200:204, 10:240] = 1, 2
        bundles = {}
        for kind, cfg in {
            "classical": FeatureConfig(),
            "hybrid": FeatureConfig(kind="hybrid", weights="random", stride=14, shifts=(), flips=False),
        }.items():
            feats = featurise(train_img, cfg)
            bundles[kind] = save_bundle(tmp / f"{kind}.dinoseg", train(feats, labels), feats.config)
        for size in (512, 2048):
            src = tmp / f"in{size}"
            src.mkdir()
            count = args.count if size <= 512 else max(2, args.count // 4)
            for i in range(count):
                tifffile.imwrite(src / f"img{i}.tif", (rng.random((size, size)) * 255).astype(np.uint8))
            for kind, bundle in bundles.items():
                for where, scheduler in (("local", None), ("LocalCluster, 2 workers", client)):
                    out = tmp / f"out-{size}-{kind}-{where[:5]}"
                    start = time.perf_counter()
                    summary = apply_bundle(bundle, src, out, scheduler=scheduler)
                    seconds = time.perf_counter() - start
                    assert len(summary.done) == count, summary
                    row = {"size": size, "bundle": kind, "where": where, "images": count,
                           "seconds": seconds, "images_per_second": count / seconds}
                    rows.append(row)
                    print(f"| {size}² | {kind} | {where} | {count} | {seconds:.1f} | {row['images_per_second']:.2f} |",
                          flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": "cpu (2 cores)", "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    print("| image | bundle | where | images | seconds | images/s |\n|---|---|---|---|---|---|")
    main()
