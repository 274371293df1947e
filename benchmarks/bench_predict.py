"""Train / Predict latency with cached classical features, this checkout against an older one.

Usage::

    .venv/bin/python benchmarks/bench_predict.py [--sizes 512 1024 2048] [--repeats 5]
        [--baseline-src /tmp/baseline/src] [--out benchmarks/results/predict.json]

The step a user repeats dozens of times: the features of the image are cached, a few strokes
change, Train / Predict runs again. For each size, a synthetic three-phase image with
horizontal 3-px strokes every 48 rows (about 1.2 % of the pixels, three classes), 65 classical
features. Measured in a fresh process per checkout and size (one warm-up, then ``--repeats``
timed runs; median and best):

- **train + predict**: :func:`napari_dinoseg.train` then :func:`napari_dinoseg.predict` and
  ``to_labels`` on the cached :class:`FeatureStack`;
- **click**: what the widget runs: ``Segmenter.fit`` then ``Segmenter.predict_proba`` and
  ``to_labels`` with a :class:`FeatureCache` holding the features (the first click is not
  timed).

``--baseline-src`` (a ``src`` folder of an older checkout, e.g. ``git worktree add
/tmp/baseline <commit>``) runs the same measurement with that code in the same run, and the
labels of both are compared pixel by pixel. Writes the JSON and a markdown table next to it.
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
import json, sys, time
import numpy as np
size, repeats, labels_out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
import napari_dinoseg
from napari_dinoseg import Segmenter, featurise, predict, train
from napari_dinoseg.features.featurise import FeatureCache
""" + SYNTHETIC + r"""

def timed(fn):
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out

feats = featurise(image)
parts = {"train": [], "predict": []}
def train_predict():
    t = time.perf_counter()
    clf = train(feats, labels)
    t1 = time.perf_counter()
    seg = clf.to_labels(predict(clf, feats))
    parts["train"].append(t1 - t)
    parts["predict"].append(time.perf_counter() - t1)
    return seg
total = timed(train_predict)
cache = FeatureCache()
def click():
    s = Segmenter().fit(image, labels, cache=cache)
    return s.segment(image, cache=cache)
clicks = timed(click)
np.save(labels_out, click())
print(json.dumps({"size": size, "painted_fraction": float((labels > 0).mean()), "features": feats.n_features,
                  "train": parts["train"][1:], "predict": parts["predict"][1:], "train_predict": total,
                  "click": clicks, "source": napari_dinoseg.__file__}))
"""


def measure(src: Path, size: int, repeats: int) -> tuple[dict, np.ndarray]:
    """One checkout's figures at one size, in a fresh process; and its click's labels."""
    return run_child(CHILD, src, size, repeats)


def summary(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "best": float(np.min(values))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="src folder of an older checkout, measured in the same run")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "predict.json")
    args = parser.parse_args()

    import torch

    def row(size: int, name: str, src: Path, raw: dict) -> dict:
        return {"size": size, "version": name, "src": str(src), "features": raw["features"],
                "painted_fraction": raw["painted_fraction"],
                **{k: summary(raw[k]) for k in ("train", "predict", "train_predict", "click")},
                "raw": {k: raw[k] for k in ("train", "predict", "train_predict", "click")}}

    rows = compare(args.sizes, args.baseline_src, lambda src, size: measure(src, size, args.repeats), row)
    load = os.getloadavg()
    lines = [f"Train / Predict with cached classical features, {rows[0]['features']} channels, three classes, "
             f"~{100 * rows[0]['painted_fraction']:.1f} % painted; {os.cpu_count()} CPU cores "
             f"({platform.machine()}), torch {torch.__version__} ({torch.get_num_threads()} threads); load average "
             f"{load[0]:.1f} after the run. Seconds, median (best) of {args.repeats}.", "",
             "| image | code | train | predict | **train + predict** | widget click (fit + predict, cache) | "
             "labels equal to baseline |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cell = {k: f"{r[k]['median']:.3f} ({r[k]['best']:.3f})" for k in ("train", "predict", "train_predict", "click")}
        agree = f"{100 * r['labels_agree_with_baseline']:.4f} %" if "labels_agree_with_baseline" in r else "–"
        lines.append(f"| {r['size']}² | {r['version']} | {cell['train']} | {cell['predict']} | "
                     f"**{cell['train_predict']}** | {cell['click']} | {agree} |")
    write(args.out, "\n".join(lines), rows, torch=torch.__version__, torch_threads=torch.get_num_threads(),
          load_average_after=load)


if __name__ == "__main__":
    main()
