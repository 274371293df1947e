"""Classical featurisation and Train / Predict latency, against scikit-image in the same run.

Usage::

    .venv/bin/python benchmarks/bench_classical.py [--sizes 512 1024 2048] [--repeats 7]
        [--rounds 1] [--baseline-src DIR] [--out benchmarks/results/classical.json]

Each featurisation is measured in a fresh subprocess: one warm-up call, then the median
and the best of ``--repeats`` timed calls (the machine is shared and noisy: the best
is the steadier figure to compare); peak memory is the growth of the process's peak resident
set over its size after imports and image creation (so it covers the output, every
temporary and the warm-up call). scikit-image's ``multiscale_basic_features`` runs with
sigma 1..16 (its five octaves, 20 channels: intensity, edges, texture); ours computes the
full 65-channel Weka-style bank (``FeatureConfig()``). ``--baseline-src`` also measures the
package found in ``DIR`` (the ``src`` folder of another checkout, e.g. a ``git worktree`` of
the previous commit) the same way, for a before / after table from one run; ``--rounds``
repeats every measurement that many times, interleaved, keeping the best. Train / Predict is
measured with cached features at 1024^2, painted strokes covering ~1 % of the pixels over
three classes, as the widget does it. Writes the JSON to ``--out`` and the tables next to it
(``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
MIB = 2**20

CHILD = r"""
import json, os, resource, sys, time
import numpy as np
method, size, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
image = (rng.random((size, size)) * 255).astype(np.uint8)
if method == "dinoseg":
    import torch
    import napari_dinoseg
    from napari_dinoseg import FeatureConfig, featurise
    cfg = FeatureConfig()
    run = lambda: featurise(image, cfg).data
    source = os.path.dirname(os.path.dirname(os.path.abspath(napari_dinoseg.__file__)))
else:
    import skimage
    from skimage.feature import multiscale_basic_features
    run = lambda: multiscale_basic_features(image, sigma_min=1, sigma_max=16)
    source = "scikit-image " + skimage.__version__
def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = rss_mib()
out = run()
shape, nbytes = list(out.shape), out.nbytes
del out
times = []
for _ in range(repeats):
    t = time.perf_counter(); out = run(); times.append(time.perf_counter() - t); del out
print(json.dumps({"method": method, "size": size, "channels": shape[-1], "seconds": float(np.median(times)),
                  "best_seconds": float(np.min(times)), "seconds_all": times, "peak_mib": rss_mib() - base,
                  "output_mib": nbytes / 2**20, "source": source}))
"""

#: Row labels of the featurisers compared.
LABELS = {"dinoseg": "napari-dinoseg (torch)", "baseline": "napari-dinoseg baseline (torch)",
          "skimage": "scikit-image multiscale_basic_features"}


def featurisation(method: str, size: int, repeats: int, src: Optional[Path] = None) -> dict:
    """One fresh-process measurement; ``src`` first on the child's ``PYTHONPATH`` when given."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", CHILD, method, str(size), str(repeats)],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_of_rounds(rounds: list[dict], label: str) -> dict:
    """One row from the rounds of one measurement: the best time of all, the median of all
    timings, the highest peak (memory is the bound to check)."""
    import numpy as np

    times = [t for r in rounds for t in r["seconds_all"]]
    return {**rounds[0], "label": label, "seconds": float(np.median(times)),
            "best_seconds": min(r["best_seconds"] for r in rounds), "seconds_all": times,
            "peak_mib": max(r["peak_mib"] for r in rounds), "rounds": len(rounds)}


def measure_featurisation(sizes: list[int], repeats: int, rounds: int, baseline: Optional[Path]) -> list[dict]:
    """Rows for every size and featuriser (the baseline first when given), rounds interleaved."""
    methods = ([("baseline", "dinoseg", baseline)] if baseline is not None else []) + [
        ("dinoseg", "dinoseg", None), ("skimage", "skimage", None)]
    rows = []
    for size in sizes:
        done = {key: [] for key, _, _ in methods}
        for _ in range(rounds):
            for key, method, src in methods:
                done[key].append(featurisation(method, size, repeats, src))
        rows += [{**best_of_rounds(done[key], LABELS[key]), "method": key} for key, _, _ in methods]
    return rows


def comparison(rows: list[dict]) -> list[dict]:
    """Per size: ours against scikit-image (and the baseline), best seconds and peak memory."""
    out = []
    for size in sorted({r["size"] for r in rows}):
        by = {r["method"]: r for r in rows if r["size"] == size}
        new, ski, old = by["dinoseg"], by["skimage"], by.get("baseline")
        row = {"size": size, "new_best_seconds": new["best_seconds"], "skimage_best_seconds": ski["best_seconds"],
               "new_over_skimage": new["best_seconds"] / ski["best_seconds"], "new_peak_mib": new["peak_mib"],
               "skimage_peak_mib": ski["peak_mib"], "output_mib": new["output_mib"],
               "new_peak_over_output": new["peak_mib"] / new["output_mib"]}
        if old is not None:
            row.update(old_best_seconds=old["best_seconds"], new_over_old=new["best_seconds"] / old["best_seconds"],
                       old_peak_mib=old["peak_mib"])
        out.append(row)
    return out


def featurisation_tables(rows: list[dict], compared: list[dict]) -> str:
    """The markdown tables of the featurisation rows and of the comparison."""
    lines = ["| image | method | channels | best s | median s | peak memory (MiB) | output (MiB) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['size']}² | {r['label']} | {r['channels']} | {r['best_seconds']:.3f} | {r['seconds']:.3f} | "
              f"{r['peak_mib']:.0f} | {r['output_mib']:.0f} |" for r in rows]
    with_old = all("old_best_seconds" in c for c in compared)
    columns = [("image", lambda c: f"{c['size']}²")]
    columns += [("before s", lambda c: f"{c['old_best_seconds']:.3f}")] if with_old else []
    columns += [("after s", lambda c: f"{c['new_best_seconds']:.3f}"),
                ("scikit-image s", lambda c: f"{c['skimage_best_seconds']:.3f}"),
                ("after / scikit-image", lambda c: f"{c['new_over_skimage']:.2f}")]
    columns += [("after / before", lambda c: f"{c['new_over_old']:.2f}"),
                ("before peak MiB", lambda c: f"{c['old_peak_mib']:.0f}")] if with_old else []
    columns += [("after peak MiB", lambda c: f"{c['new_peak_mib']:.0f}"),
                ("after peak / output", lambda c: f"{c['new_peak_over_output']:.2f}")]
    lines += ["", "| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c) for _, cell in columns) + " |" for c in compared]
    return "\n".join(lines)


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


def commit(folder: Path) -> Optional[str]:
    """The git commit checked out in ``folder`` (``None`` outside a git checkout)."""
    done = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def dirty(folder: Path) -> Optional[bool]:
    """Whether the git checkout of ``folder`` has uncommitted changes (``None`` outside one)."""
    done = subprocess.run(["git", "--no-optional-locks", "-C", str(folder), "status", "--porcelain"], capture_output=True, text=True)
    return bool(done.stdout.strip()) if done.returncode == 0 else None


def machine() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=1, help="measure each featuriser this many times, interleaved")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="also measure the napari_dinoseg package in this folder (another checkout's src)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "classical.json")
    args = parser.parse_args()
    if args.baseline_src is not None and not (args.baseline_src / "napari_dinoseg").is_dir():
        parser.error(f"--baseline-src {args.baseline_src} holds no napari_dinoseg package")

    load_before = os.getloadavg()
    rows = measure_featurisation(args.sizes, args.repeats, args.rounds, args.baseline_src)
    compared = comparison(rows)
    load_after = os.getloadavg()
    latency = train_predict()
    tables = [featurisation_tables(rows, compared), "",
              "| Train / Predict, cached features | image | features | painted px | train s | predict s | total s |",
              "|---|---|---|---|---|---|---|",
              f"| TrainConfig() defaults, 3 classes | {latency['size']}² | {latency['features']} | "
              f"{latency['painted_pixels']} ({latency['painted_fraction']:.1%}) | {latency['train_seconds']:.3f} | "
              f"{latency['predict_seconds']:.3f} | {latency['train_predict_seconds']:.3f} |"]
    info = machine()
    baseline = None if args.baseline_src is None else {"src": str(args.baseline_src), "commit": commit(args.baseline_src)}
    note = (f"{info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads); load average "
            f"{load_before[0]:.2f} before the featurisation runs, {load_after[0]:.2f} after; best of "
            f"{args.repeats} calls x {args.rounds} round(s) per row, each round in a fresh process"
            + ("" if baseline is None else f"; before: {baseline['src']} at commit {baseline['commit']}") + ".")
    print("\n".join(tables) + "\n\n" + note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": info, "featurisation": rows, "train_predict": latency, "comparison": compared,
        "baseline": baseline, "after_commit": commit(HERE), "after_has_uncommitted_changes": dirty(HERE),
        "repeats": args.repeats, "rounds": args.rounds, "load_average_before": load_before,
        "load_average_after": load_after}, indent=2))
    md = args.out.with_suffix(".md")
    md.write_text("# Classical featurisation and Train / Predict\n\nWritten by `benchmarks/bench_classical.py`. "
                  + note + "\n\n" + "\n".join(tables) + "\n")
    print(f"\nwrote {args.out} and {md}")


if __name__ == "__main__":
    main()
