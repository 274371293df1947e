"""The train dock's clicks on a volume with 3-D features, with and without the feature cache (issue 28).

Usage::

    .venv/bin/python benchmarks/volume_clicks.py [--data ../shared/evaldata] [--repeats 3]
        [--out benchmarks/results/volume_clicks.json]

What a click does in the dock (``_train_volume.run_volume_job``), timed step by step on the
Lucchi++ FIB-SEM volume (165 x 512 x 512 uint8, read from ``--data``, never copied; a synthetic
PoreSpy volume of 128 x 256 x 256 when it is absent) with the strokes of ``benchmarks/volumes.py``
(3 slices): ``Segmenter.fit(volume, strokes, cache=...)`` then
``predict_volume(..., planes=<the middle slice>, cache=...)``, for three clicks in a row:

1. **first**: the strokes painted (nothing kept yet);
2. **more strokes**: a few more pixels painted on a slice already painted;
3. **new slice**: strokes on a slice not painted before.

``cache`` is a ``FeatureCache`` (the dock's) or ``None`` (what the dock did before it kept 3-D
features). Each sequence runs ``--repeats`` times in this process (after one warm-up fit on a small
volume); the table gives the median seconds of each step and the bytes the cache holds at the end.
The predictions of both are compared voxel for voxel.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import volumes as V  # noqa: E402  (the volumes benchmark's data and strokes)
from machine import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def load(data: Path | None):
    """``(name, image, strokes)`` of the Lucchi volume, or of a synthetic one without the data."""
    args = argparse.Namespace(data=data, lucchi_crop=None, budget=0.01, seed=0, quick=False,
                              shape=list(V.DEFAULT_SHAPE))
    if data is not None and (data / "lucchi_pp_mito_train").exists():
        vol = V.lucchi_volume(args, "lucchi")
        return "lucchi 165x512x512", V.lucchi_array(data, "images", None, 1), vol.labels
    image, gt = V.synthetic_volume("blobs2", V.DEFAULT_SHAPE, 0)
    zs = V.stroke_slices(len(gt))
    return "blobs2 128x256x256", image, V.volume_scribbles(gt, zs, 0.01, 0)


def clicks(image: np.ndarray, strokes: np.ndarray, cached: bool) -> tuple[dict, list, int]:
    """One sequence of the three clicks: ``({step: seconds}, [slice labels of each click], cache bytes)``."""
    from napari_dinoseg import Segmenter, TrainConfig
    from napari_dinoseg.features.cache import FeatureCache
    from napari_dinoseg.volume_prediction import predict_volume

    cache = FeatureCache() if cached else None
    painted = [int(z) for z in np.flatnonzero(strokes.reshape(len(strokes), -1).any(axis=1))]
    z = len(image) // 2
    more = strokes.copy()
    more[painted[0], :4, :4] = more[painted[0]][more[painted[0]] > 0][0]
    new = more.copy()
    fresh = max(0, painted[0] - 8)
    new[fresh, :4, :4], new[fresh, -4:, -4:] = 1, 2
    seconds, labels = {}, []
    seg = Segmenter(V.dinoseg_3d_config(), TrainConfig())
    for name, painted_now in (("first", strokes), ("more strokes", more), ("new slice", new)):
        start = time.perf_counter()
        seg.fit(image, painted_now, cache=cache)
        fitted = time.perf_counter()
        out, _ = predict_volume(seg, image, None, True, None, None, slice(z, z + 1), cache)
        seconds[f"{name}: fit"] = fitted - start
        seconds[f"{name}: predict slice"] = time.perf_counter() - fitted
        labels.append(out)
    return seconds, labels, 0 if cache is None else cache.nbytes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ROOT.parent / "shared" / "evaldata"
    parser.add_argument("--data", type=Path, default=default if default.exists() else None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "volume_clicks.json")
    args = parser.parse_args(argv)
    from napari_dinoseg import Segmenter, TrainConfig

    name, image, strokes = load(args.data)
    warm = np.random.default_rng(0).integers(0, 255, (8, 32, 32), dtype=np.uint8)
    warm_labels = np.zeros_like(warm)
    warm_labels[4, :2, :2], warm_labels[4, -2:, -2:] = 1, 2
    Segmenter(V.dinoseg_3d_config(), TrainConfig()).fit(warm, warm_labels)
    load_before = os.getloadavg()[0]
    runs = {False: [], True: []}
    equal = True
    kept = 0
    for _ in range(args.repeats):
        plain, plain_labels, _ = clicks(image, strokes, False)
        cached, cached_labels, kept = clicks(image, strokes, True)
        runs[False].append(plain)
        runs[True].append(cached)
        equal &= all(np.array_equal(a, b) for a, b in zip(plain_labels, cached_labels))
    steps = list(runs[False][0])
    median = {c: {s: statistics.median(r[s] for r in runs[c]) for s in steps} for c in runs}
    lines = [f"# The dock's clicks on a volume ({name}), median of {args.repeats}", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} CPUs; load average {load_before:.2f} before, "
             f"{os.getloadavg()[0]:.2f} after. Labels of every click equal with and without the cache: {equal}. "
             f"Cache held at the end: {kept / 2**20:.0f} MiB.", "",
             "| step | without cache, s | with the dock's cache, s | ratio |", "|---|---|---|---|"]
    for step in steps:
        a, b = median[False][step], median[True][step]
        lines.append(f"| {step} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"volume": name, "repeats": args.repeats, "cpu": cpu_name(),
                                    "cpus": os.cpu_count(), "load_average_before": load_before,
                                    "load_average_after": os.getloadavg()[0], "labels_equal": equal,
                                    "cache_bytes": kept, "median_seconds": {str(k): v for k, v in median.items()},
                                    "runs": {str(k): v for k, v in runs.items()}}, indent=2))
    args.out.with_suffix(".md").write_text(text)
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
