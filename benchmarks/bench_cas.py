"""CAS (unsupervised) pipeline time by stage at 518^2 and 1024^2 on CPU.

Usage::

    .venv/bin/python benchmarks/bench_cas.py [--out benchmarks/results/cas_cpu.json]

Features: DINOv2-S/14 with random weights (one view, stride 14) of the sample IHC
micrograph (resized to each size), computed once and not timed; speed of the stages does
not depend on the weights. Stages are timed from the pipeline's own progress reports:
k-means (fit on a 50 000-pixel subsample with k = 80, then every pixel assigned), merging
(semantic distance and complete linkage), dense CRF (10 iterations), foreground and boxes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("k-means", "merging", "dense CRF", "done")


def run(size: int) -> dict:
    import numpy as np
    from skimage.transform import resize

    from napari_dinoseg import CASConfig, FeatureConfig, featurise, segment_unsupervised
    from napari_dinoseg._sample_data import ihc_image

    image = (resize(ihc_image(), (size, size), preserve_range=True)).astype(np.uint8)
    features = featurise(image, FeatureConfig(kind="vit", weights="random", stride=14, shifts=(), flips=False))
    stamps = {}
    start = time.perf_counter()
    result = segment_unsupervised(features, CASConfig(k=80, crf=True), images=[image],
                                  progress=lambda d, t, m: stamps.setdefault(m, time.perf_counter()))
    end = time.perf_counter()
    marks = [start] + [stamps[s] for s in STAGES[:-1]] + [end]
    names = ["prepare (normalise)", "k-means", "merging", "dense CRF + foreground + boxes"]
    stages = {n: marks[i + 1] - marks[i] for i, n in enumerate(names)}
    # the CRF on its own, for the table
    from napari_dinoseg.crf import crf_refine

    m = int(result.labels.max())
    proba = np.full((*result.labels.shape, m), 0.1 / max(m - 1, 1), np.float32)
    np.put_along_axis(proba, (result.labels - 1)[..., None], 0.9, axis=-1)
    t = time.perf_counter()
    crf_refine(image, proba)
    stages["dense CRF alone"] = time.perf_counter() - t
    return {"size": size, "classes": m, "total_seconds": end - start, "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cas_cpu.json")
    args = parser.parse_args()
    rows = [run(s) for s in (518, 1024)]
    print("| image | k-means s | merging s | CRF + foreground + boxes s | CRF alone s | total s | classes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        st = r["stages"]
        print(f"| {r['size']}² | {st['k-means']:.2f} | {st['merging']:.3f} | {st['dense CRF + foreground + boxes']:.2f} | "
              f"{st['dense CRF alone']:.2f} | {r['total_seconds']:.2f} | {r['classes']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": "cpu (2 cores)", "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
