"""ViT featurisation (DINOv2-S/B, random weights): time, peak memory, views/s, effective TFLOP/s.

Usage::

    .venv/bin/python benchmarks/bench_vit.py [--device cpu|cuda] [--sizes 512 1024] [--no-grid]
        [--budget 60] [--baseline-src DIR] [--repeat 1] [--out benchmarks/results/vit_<device>.json]
    .venv/bin/python benchmarks/bench_vit.py --precision [--data ../shared/evaldata] [--crop 224]

Rows: the device's default preset (DINOv2-S/14) at each of ``--sizes``, then (unless
``--no-grid``) DINOv2-S/14 and -B/14 at 518^2, 1036^2, 2072^2; stride 14 / 7 / 4; no transforms
(1 view), shifts (1, 2) (17 views), shifts (1, 2) + flips (68 views). Random weights: speed
does not depend on the weights.

Each row whose estimated time (``napari_dinoseg.features.vit.estimate_seconds``) is within
``--budget`` seconds runs in a fresh subprocess (one call after loading the model; peak memory =
growth of the peak resident set on CPU, ``torch.cuda.max_memory_allocated`` on GPU), which also
reports the tiles the package chose and its own time estimate. The others are listed with their
estimate and marked "not run".

``--baseline-src DIR`` runs every measurement a second time with ``PYTHONPATH=DIR``: the package
of an older checkout, e.g. ``git worktree add /tmp/baseline <commit>`` and ``DIR=/tmp/baseline/src``
(config fields the older package lacks are dropped). The two alternate, ``--repeat`` times each,
best kept, so that both see the same machine load; the table gains before / after columns.

``--precision`` compares bfloat16 with float32 features of the CPU preset on crops of real
micrographs (``--data``): per-channel and overall correlation, and a logistic classifier trained
on each from the same sparse labels (agreement of the two, mIoU against the ground truth). With
random weights: it says how much bfloat16 rounding moves features, nothing about DINOv2 quality.

Both write JSON and a markdown table beside it (``--out``, default ``benchmarks/results/vit_<device>.json``
or ``vit_precision_cpu.json``).

FLOPs: per view and tile, ``depth * (24 N D^2 + 4 N^2 D)`` for ``N`` tokens of width ``D``
(qkv, projection and 4x MLP matmuls, attention scores and weighted sum; multiply-add = 2),
summed over the tiles the package cuts the image into.
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
MODELS = ("dinov2_vits14", "dinov2_vitb14")
SIZES = (518, 1036, 2072)
STRIDES = (14, 7, 4)
VIEWS = {"1 view": ((), False), "shifts (1, 2): 17 views": ((1, 2), False), "shifts + flips: 68 views": ((1, 2), True)}

CHILD = r"""
import dataclasses, json, os, resource, sys, time
import numpy as np, torch
import napari_dinoseg
from napari_dinoseg import FeatureConfig, featurise
from napari_dinoseg.features.backbones import load_model
from napari_dinoseg.features.vit import choose_tiles, estimate_seconds
args = json.loads(sys.argv[1])
known = {f.name for f in dataclasses.fields(FeatureConfig)}
cfg = FeatureConfig(**{k: v for k, v in args["config"].items() if k in known})
device = torch.device(args["device"])
load_model(cfg.model, "random", device)
size = args["size"]
img = (np.random.default_rng(0).random((size, size)) * 255).astype(np.uint8)
estimate = estimate_seconds(cfg, (size, size), device)
windows = choose_tiles(cfg, (size, size))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if device.type == "cuda":
    featurise(img[:256, :256], cfg); torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
t, cpu = time.perf_counter(), time.process_time()
out = featurise(img, cfg)
if device.type == "cuda":
    torch.cuda.synchronize()
seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "load_average": os.getloadavg()[0], "peak_mib": peak, "channels": out.n_features, "estimate_seconds": estimate,
                  "tiles": len(windows), "tile_px": max(max(r[1] - r[0], c[1] - c[0]) for r, c in windows),
                  "package": napari_dinoseg.__file__}))
"""


def measure(config: dict, size: int, device: str, src: Path | None = None) -> dict:
    """One featurisation in a fresh process, with the package in ``src`` when given."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"config": config, "size": size, "device": device})],
                         check=True, capture_output=True, text=True, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if src is not None and not Path(result["package"]).resolve().is_relative_to(src.resolve()):
        raise RuntimeError(f"the baseline child imported {result['package']}, not the package in {src}")
    return result


def measure_pair(config: dict, size: int, device: str, baseline: Path | None, repeat: int) -> dict:
    """The best of ``repeat`` runs, alternating with the baseline's when given (same machine load)."""
    runs: dict[str, list[dict]] = {"after": [], "before": []}
    for _ in range(repeat):
        runs["after"].append(measure(config, size, device))
        if baseline is not None:
            runs["before"].append(measure(config, size, device, baseline))
    row = dict(min(runs["after"], key=lambda r: r["seconds"]))
    row["all_seconds"] = [r["seconds"] for r in runs["after"]]
    if baseline is not None:
        before = min(runs["before"], key=lambda r: r["seconds"])
        row.update({"baseline_seconds": before["seconds"], "baseline_cpu_seconds": before["cpu_seconds"],
                    "baseline_estimate_seconds": before["estimate_seconds"],
                    "baseline_tiles": before["tiles"], "baseline_tile_px": before["tile_px"],
                    "baseline_all_seconds": [r["seconds"] for r in runs["before"]],
                    "speedup": before["seconds"] / row["seconds"]})
    return row


def speed(args, device) -> None:
    import torch

    from napari_dinoseg import FeatureConfig
    from napari_dinoseg.features.upsample import make_transforms
    from napari_dinoseg.features.vit import choose_tiles, compute_dtype, estimate_seconds, throughput, tile_margin, total_flops

    preset = FeatureConfig(kind="vit", weights="random", device=device.type).resolved(device.type)
    label = f"preset: shifts {preset.shifts}, flips {preset.flips}"
    jobs = [("dinov2_vits14", size, preset.stride, label, preset.shifts, preset.flips) for size in args.sizes]
    if args.grid:
        jobs += [(m, s, st, v, *VIEWS[v]) for m in MODELS for s in SIZES for st in STRIDES for v in VIEWS]
    print(header(args.baseline_src is not None))
    rows = []
    for model, size, stride, setting, shifts, flips in jobs:
        cfg = FeatureConfig(kind="vit", model=model, weights="random", stride=stride, shifts=shifts, flips=flips,
                            device=device.type)
        flops = total_flops(cfg, (size, size))
        est = estimate_seconds(cfg, (size, size), device)
        views = len(make_transforms(shifts, flips))
        windows = choose_tiles(cfg, (size, size))
        row = {"model": model, "size": size, "stride": stride, "views": views, "setting": setting, "flops": flops,
               "tiles": len(windows), "tile_px": tile_side(windows), "context_px": tile_margin(cfg),
               "estimate_seconds": est, "ran": est <= args.budget}
        if row["ran"]:
            row.update(measure_pair(cfg.to_dict(), size, device.type, args.baseline_src, args.repeat))
            row["views_per_second"] = views / row["seconds"]
            row["tflops_per_second"] = flops / row["seconds"] / 1e12
            row["estimate_error"] = row["estimate_seconds"] / row["seconds"] - 1
        rows.append(row)
        print(fmt(row, args.baseline_src is not None), flush=True)

    dtype = compute_dtype(preset, device)
    machine = {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"CPU, {os.cpu_count()} cores ({platform.machine()}, {platform.processor() or 'unknown'})",
               "torch": torch.__version__, "compute_dtype": str(dtype), "block_tflops": throughput(device, dtype) / 1e12,
               "baseline_src": None if args.baseline_src is None else str(args.baseline_src)}
    out = args.out or HERE / "results" / f"vit_{device.type}.json"
    table = [header(args.baseline_src is not None), *(fmt(r, args.baseline_src is not None) for r in rows)]
    write(out, {"machine": machine, "rows": rows}, table, machine)


def tile_side(windows) -> int:
    """The longest side of the tile windows, px."""
    return max(max(r[1] - r[0], c[1] - c[0]) for r, c in windows)


def header(baseline: bool) -> str:
    cols = ["model", "image", "stride", "views", "tiles (px, margin)", "seconds", "estimate s", "peak MiB", "views/s",
            "TFLOP/s", "TFLOP"]
    if baseline:
        cols[5:5] = ["before s", "before tiles (px)", "speedup"]
    return "| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|"


def fmt(r: dict, baseline: bool) -> str:
    ran = r["ran"]
    cells = [r["model"], f"{r['size']}²", str(r["stride"]), r["setting"], f"{r['tiles']} ({r['tile_px']}, {r['context_px']})"]
    if baseline:
        cells += [f"{r['baseline_seconds']:.2f}", f"{r['baseline_tiles']} ({r['baseline_tile_px']})",
                  f"{r['speedup']:.2f}x"] if ran else ["", "", ""]
    if ran:
        cells += [f"{r['seconds']:.2f}", f"{r['estimate_seconds']:.1f} ({r['estimate_error']:+.0%})", f"{r['peak_mib']:.0f}",
                  f"{r['views_per_second']:.2f}", f"{r['tflops_per_second']:.3f}"]
    else:
        cells += ["not run", f"{r['estimate_seconds']:.0f}", "", "", ""]
    return "| " + " | ".join(cells + [f"{r['flops'] / 1e12:.2f}"]) + " |"


def precision(args) -> None:
    """bfloat16 against float32 features of the CPU preset, and logistic classifiers on each, for two
    sets of random weights: timm's initialisation, whose LayerScale of 1e-5 all but silences every
    block (the features are then little more than the patch embedding), and the same with LayerScale
    1, so that every block's rounding reaches the features (a harsher test than trained weights)."""
    import tempfile

    import imageio.v3 as iio
    import numpy as np
    import tifffile
    import torch

    from napari_dinoseg import FeatureConfig
    from napari_dinoseg.features.backbones import load_model
    from napari_dinoseg.features.vit import native_bf16_cpu

    torch.manual_seed(args.seed)  # the random weights, built once and cached by load_model
    base = FeatureConfig(kind="vit", weights="random", device="cpu").resolved("cpu")
    state = {k: v.clone() for k, v in load_model(base.model, "random").state_dict().items()}
    for k in state:
        if k.endswith((".ls1.gamma", ".ls2.gamma")):
            state[k].fill_(1.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / "layerscale1.pth")
        variants = {"timm init (LayerScale 1e-5)": "random", "LayerScale 1": str(Path(tmp) / "layerscale1.pth")}
        for name, prefix in {"isbi2012_em_membranes": "", "nasa_micronet": "super_", "tldr_group": ""}.items():
            images = sorted((args.data / name / "images").glob(f"{prefix}*.tif"))
            if not images:
                continue
            image, truth = tifffile.imread(images[0]), iio.imread(args.data / name / "masks" / f"{images[0].stem}.png")
            r0, c0 = (image.shape[0] - args.crop) // 2, (image.shape[1] - args.crop) // 2
            crop = (slice(r0, r0 + args.crop), slice(c0, c0 + args.crop))
            for variant, weights in variants.items():
                config = FeatureConfig(**{**base.to_dict(), "weights": weights})
                rng = np.random.default_rng(args.seed)
                row = {"image": f"{name}/{images[0].name}", "crop": args.crop, "weights": variant,
                       **compare_precision(image[crop], truth[crop], config, args.label_fraction, rng)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "native_bf16": native_bf16_cpu(),
               "torch": torch.__version__, "config": base.to_dict(), "weights": "random only (no DINOv2 weights here)"}
    table = precision_table(rows)
    write(args.out or HERE / "results" / "vit_precision_cpu.json", {"machine": machine, "rows": rows}, table, machine)


def precision_table(rows: list[dict]) -> list[str]:
    head = ("| image (crop) | random weights | corr. overall | per channel: min / 5 % / median | rel. error "
            "| classifier agreement | mIoU bf16 vs fp32 | mIoU vs truth fp32 / bf16 |\n|---|---|---|---|---|---|---|---|")
    return [head] + [
        f"| {r['image']} ({r['crop']}²) | {r['weights']} | {r['corr_overall']:.6f} | {r['corr_channel_min']:.6f} / "
        f"{r['corr_channel_p5']:.6f} / {r['corr_channel_median']:.6f} | {r['relative_error']:.4f} | "
        f"{r['agreement']:.4f} | {r['miou_bf16_vs_fp32']:.4f} | {r['miou_fp32_vs_truth']:.3f} / {r['miou_bf16_vs_truth']:.3f} |"
        for r in rows]


def compare_precision(image, truth, config, label_fraction: float, rng) -> dict:
    """Correlation of bfloat16 with float32 features of ``image``, and logistic classifiers trained on
    each from the same sparse labels (drawn from ``truth``): agreement and mIoU."""
    import numpy as np

    from napari_dinoseg import FeatureConfig, TrainConfig, featurise, predict, train

    feats = {p: featurise(image, FeatureConfig(**{**config.to_dict(), "precision": p})) for p in ("float32", "bfloat16")}
    a, b = (feats[p].data.reshape(-1, feats[p].n_features).astype(np.float64) for p in ("float32", "bfloat16"))
    per_channel = np.array([np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(a.shape[1])])
    labels = sparse_labels(truth, label_fraction, rng)
    pred = {p: predict(train(feats[p], labels, TrainConfig(classifier="logistic")), feats[p]).argmax(-1) for p in feats}
    valid, k = truth != 255, int(labels.max())
    return {
        "classes": k, "labelled_pixels": int((labels > 0).sum()),
        "corr_overall": float(np.corrcoef(a.ravel(), b.ravel())[0, 1]),
        "corr_channel_min": float(per_channel.min()), "corr_channel_p5": float(np.percentile(per_channel, 5)),
        "corr_channel_median": float(np.median(per_channel)),
        "relative_error": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
        "agreement": float((pred["float32"] == pred["bfloat16"])[valid].mean()),
        "miou_bf16_vs_fp32": miou(pred["bfloat16"], pred["float32"], valid, k),
        "miou_fp32_vs_truth": miou(pred["float32"], truth, valid, k),
        "miou_bf16_vs_truth": miou(pred["bfloat16"], truth, valid, k),
    }


def sparse_labels(truth, fraction: float, rng):
    """Labels 1..K at a random ``fraction`` of each class's pixels (ground truth ``0..K-1``, 255 ignored), 0 elsewhere."""
    import numpy as np

    labels = np.zeros(truth.shape, np.int32)
    for k in np.unique(truth[truth != 255]):
        where = np.flatnonzero(truth == k)
        pick = rng.choice(where, max(1, int(fraction * where.size)), replace=False)
        labels.flat[pick] = k + 1
    return labels


def miou(pred, ref, valid, n_classes: int) -> float:
    """Mean IoU of ``pred`` (0-based) against ``ref`` over ``valid`` pixels and the classes present in either."""
    import numpy as np

    ious = []
    for k in range(n_classes):
        p, r = (pred == k) & valid, (ref == k) & valid
        if (p | r).any():
            ious.append((p & r).sum() / (p | r).sum())
    return float(np.mean(ious))


def write(out: Path, payload: dict, table: list[str], machine: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    md = out.with_suffix(".md")
    md.write_text(f"`benchmarks/bench_vit.py {' '.join(sys.argv[1:])}`\n\n{json.dumps(machine)}\n\n" + "\n".join(table) + "\n")
    print(f"\n{machine}\nwrote {out} and {md}")


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512], help="image sizes of the preset rows")
    parser.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True,
                        help="also the model x size x stride x views grid")
    parser.add_argument("--budget", type=float, default=60.0, help="largest estimated seconds to run")
    parser.add_argument("--baseline-src", type=Path, default=None, help="src folder of an older checkout to compare with")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row and package; the best is kept")
    parser.add_argument("--precision", action="store_true", help="compare bfloat16 with float32 features instead")
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "evaldata")
    parser.add_argument("--crop", type=int, default=224, help="--precision: central crop of each image, px")
    parser.add_argument("--label-fraction", type=float, default=0.02, help="--precision: labelled pixels per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.precision:
        precision(args)
    else:
        speed(args, torch.device(args.device))


if __name__ == "__main__":
    main()
