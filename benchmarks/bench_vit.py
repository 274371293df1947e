"""ViT featurisation (DINOv2-S/B, random weights): time, peak memory, views/s, effective TFLOP/s.

Usage::

    .venv/bin/python benchmarks/bench_vit.py [--device cpu|cuda] [--budget 60]
        [--out benchmarks/results/vit_<device>.json]

Grid: DINOv2-S/14 and -B/14 at 518^2, 1036^2, 2072^2; stride 14 / 7 / 4; no transforms
(1 view), shifts (1, 2) (17 views), shifts (1, 2) + flips (68 views); plus the device's
default preset at 512^2. Random weights: speed does not depend on the weights.

Each combination whose estimated time (FLOP count / measured matmul throughput, see
``napari_dinoseg.features.vit.estimate_seconds``) is within ``--budget`` seconds runs in a
fresh subprocess (one call after loading the model; peak memory = growth of the peak
resident set on CPU, ``torch.cuda.max_memory_allocated`` on GPU). The others are listed
with their estimate and marked "not run": a 2-core CPU would need hours for them.

FLOPs: per view and tile, ``depth * (24 N D^2 + 4 N^2 D)`` for ``N`` tokens of width ``D``
(qkv, projection and 4x MLP matmuls, attention scores and weighted sum; multiply-add = 2),
summed over the 518-px tiles larger images are cut into.
"""

from __future__ import annotations

import argparse
import json
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
import json, resource, sys, time
import numpy as np, torch
from napari_dinoseg import FeatureConfig, featurise
from napari_dinoseg.features.backbones import load_model
args = json.loads(sys.argv[1])
cfg = FeatureConfig(**args["config"])
device = torch.device(args["device"])
load_model(cfg.model, "random", device)
img = (np.random.default_rng(0).random((args["size"], args["size"])) * 255).astype(np.uint8)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if device.type == "cuda":
    featurise(img[:256, :256], cfg); torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
out = featurise(img, cfg)
if device.type == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - t
peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)
print(json.dumps({"seconds": seconds, "peak_mib": peak, "channels": out.n_features}))
"""


def measure(config: dict, size: int, device: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"config": config, "size": size, "device": device})],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import torch

    from napari_dinoseg import FeatureConfig
    from napari_dinoseg.features.upsample import make_transforms
    from napari_dinoseg.features.vit import estimate_seconds, throughput, total_flops

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=float, default=60.0, help="largest estimated seconds to run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    out_path = args.out or HERE / "results" / f"vit_{device.type}.json"

    combos = [(m, s, st, label) for m in MODELS for s in SIZES for st in STRIDES for label in VIEWS]
    rows = []
    preset_cfg = FeatureConfig(kind="vit", weights="random", device=device.type).resolved(device.type)
    jobs = [("dinov2_vits14", 512, preset_cfg.stride, f"preset: shifts {preset_cfg.shifts}, flips {preset_cfg.flips}",
             preset_cfg.shifts, preset_cfg.flips)]
    jobs += [(m, s, st, label, *VIEWS[label]) for m, s, st, label in combos]
    for model, size, stride, label, shifts, flips in jobs:
        cfg = FeatureConfig(kind="vit", model=model, weights="random", stride=stride, shifts=shifts, flips=flips,
                            device=device.type)
        flops = total_flops(cfg, (size, size))
        est = estimate_seconds(cfg, (size, size), device)
        views = len(make_transforms(shifts, flips))
        row = {"model": model, "size": size, "stride": stride, "views": views, "setting": label,
               "flops": flops, "estimate_seconds": est, "ran": est <= args.budget}
        if row["ran"]:
            row.update(measure(cfg.to_dict(), size, device.type))
            row["views_per_second"] = views / row["seconds"]
            row["tflops_per_second"] = flops / row["seconds"] / 1e12
        rows.append(row)
        print(_fmt(row), flush=True)

    machine = {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"CPU, {__import__('os').cpu_count()} cores ({platform.machine()})",
               "torch": torch.__version__, "matmul_tflops": throughput(device) / 1e12}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"\n{machine}\nwrote {out_path}")


HEADER = ("| model | image | stride | views | seconds | peak MiB | views/s | TFLOP/s | TFLOP |\n"
          "|---|---|---|---|---|---|---|---|---|")


def _fmt(r: dict) -> str:
    if r["ran"]:
        cells = f"{r['seconds']:.2f} | {r['peak_mib']:.0f} | {r['views_per_second']:.2f} | {r['tflops_per_second']:.3f}"
    else:
        cells = f"not run (est. {r['estimate_seconds']:.0f} s) | | |"
    return f"| {r['model']} | {r['size']}² | {r['stride']} | {r['setting']} | {cells} | {r['flops'] / 1e12:.2f} |"


if __name__ == "__main__":
    print(HEADER)
    main()
