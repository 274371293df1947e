"""Peak memory of featurisation against the estimate ``check_memory`` refuses on.

Usage::

    .venv/bin/python benchmarks/memory.py [--kinds classical vit hybrid] [--sizes 512 1024]
        [--views preset|one] [--out benchmarks/results/memory_cpu]

Each (kind, size) runs in a fresh subprocess on the CPU: torch and timm imported and a tiny
classical featurisation run first (library start-up is not the featuriser's), then one
``featurise`` call of a seeded uint8 noise image. ViT kinds use DINOv2-S/14 with random
weights, loaded inside the measured call (the estimate counts the weights). The peak is the
growth of the resident set over the call: the kernel's high-water mark (``VmHWM``) is reset
through ``/proc/self/clear_refs`` just before it, and the resting ``VmRSS`` subtracted (where
that reset is not allowed, the growth of ``ru_maxrss`` is used and the row says so).

``--views one`` runs ViT kinds with the CPU preset's stride (14) but a single view: memory
does not depend on the number of views (they are accumulated in place, one forward pass at a
time on a CPU), time does. Writes ``<out>.md`` (the table) and ``<out>.json``.
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
MIB = 2**20
KINDS = ("classical", "vit", "hybrid")

CHILD = r"""
import gc, json, resource, sys, time
import numpy as np, timm, torch  # noqa: F401  (imports are not the featuriser's memory)
from napari_dinoseg import FeatureConfig, featurise
from napari_dinoseg.features.featurise import estimate_memory

args = json.loads(sys.argv[1])
cfg = FeatureConfig(**args["config"])
size = args["size"]
featurise(np.zeros((64, 64), np.uint8), FeatureConfig(sigmas=(1.0,), device="cpu"))  # start-up
img = (np.random.default_rng(0).random((size, size)) * 255).astype(np.uint8)
estimate = estimate_memory(cfg.resolved("cpu"), (size, size), 1, torch.device("cpu"))

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

gc.collect()
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    method, base = "VmHWM", status("VmRSS")
except OSError:
    method, base = "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
stack = featurise(img, cfg)
seconds = time.perf_counter() - start
top = status("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak": top - base, "estimate": estimate, "output": stack.nbytes, "seconds": seconds,
                  "channels": stack.n_features, "method": method}))
"""


def measure(config: dict, size: int) -> dict:
    """Run one featurisation in a fresh interpreter; its JSON line as a dict."""
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"config": config, "size": size})],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def config_for(kind: str, views: str) -> dict:
    """The FeatureConfig fields of one row: defaults, CPU, random DINOv2-S/14 weights."""
    config = {"kind": kind, "device": "cpu"}
    if kind != "classical":
        config.update(model="dinov2_vits14", weights="random")
        if views == "one":
            config.update(stride=14, shifts=[], flips=False)
    return config


HEADER = ("| kind | image | views | channels | output MiB | measured peak MiB | estimate MiB | estimate / peak | seconds |\n"
          "|---|---|---|---|---|---|---|---|---|")


def fmt(row: dict) -> str:
    return (f"| {row['kind']} | {row['size']}² | {row['views']} | {row['channels']} | {row['output'] / MIB:.0f} | "
            f"{row['peak'] / MIB:.0f} | {row['estimate'] / MIB:.0f} | {row['estimate'] / row['peak']:.2f} | "
            f"{row['seconds']:.1f} |")


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--views", choices=("preset", "one"), default="preset",
                        help="ViT views: the CPU preset (17), or one view at the preset's stride")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "memory_cpu")
    args = parser.parse_args()

    print(HEADER, flush=True)
    rows = []
    for size in args.sizes:
        for kind in args.kinds:
            views = "-" if kind == "classical" else ("preset (17)" if args.views == "preset" else "1")
            row = {"kind": kind, "size": size, "views": views, **measure(config_for(kind, args.views), size)}
            rows.append(row)
            print(fmt(row), flush=True)

    machine = {"cpu": f"{os.cpu_count()} cores ({platform.machine()})", "torch": torch.__version__,
               "python": platform.python_version()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    key = lambda r: (r["size"], KINDS.index(r["kind"]), r["views"])  # noqa: E731
    path = args.out.with_suffix(".json")
    old = json.loads(path.read_text())["rows"] if path.exists() else []  # rows of earlier runs are kept
    merged = sorted([r for r in old if key(r) not in {key(n) for n in rows}] + rows, key=key)
    path.write_text(json.dumps({"machine": machine, "rows": merged}, indent=2))
    args.out.with_suffix(".md").write_text(
        f"Peak memory of `featurise` against its estimate ({machine['cpu']}, torch {machine['torch']}); "
        "`benchmarks/memory.py`.\n\n" + HEADER + "\n" + "\n".join(fmt(r) for r in merged) + "\n")
    print(f"\nwrote {args.out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
